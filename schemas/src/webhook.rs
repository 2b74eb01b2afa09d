//! The webhook words of the contract: which messages an endpoint can subscribe to, and why the
//! delivering service disables one.

use crate::events::Payload;

words! {
    /// A message a webhook endpoint can subscribe to (`event_types` of an endpoint, the `type`
    /// of a delivery's body).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum WebhookEventType ("webhook event type") {
        /// The image's variants are ready (`ImageProcessed`).
        Ready = "image.ready",
        /// Processing ended for good (`ImageFailed`).
        Failed = "image.failed",
        /// The owner deleted the image (`ImageDeleted`).
        Deleted = "image.deleted",
    }
}

impl WebhookEventType {
    /// The message an event of an image makes, if any.
    pub fn of(payload: &Payload) -> Option<WebhookEventType> {
        match payload {
            Payload::ImageProcessed(_) => Some(WebhookEventType::Ready),
            Payload::ImageFailed(_) => Some(WebhookEventType::Failed),
            Payload::ImageDeleted(_) => Some(WebhookEventType::Deleted),
            _ => None,
        }
    }
}

words! {
    /// Why the delivering service disabled an endpoint (`WebhookEndpointDisabled.reason`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DisableReason ("webhook disable reason") {
        /// Every attempt failed for longer than the deployment allows.
        Failing = "failing",
    }
}

words! {
    /// Why a webhook delivery attempt did not deliver (`WebhookDeliveryAttempted.error_class`,
    /// the deliveries listing). Never rename one.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum WebhookErrorClass ("webhook error class") {
        /// No complete answer within the timeout (connecting included).
        Timeout = "timeout",
        /// The connection could not be made (refused, reset, unreachable, unresolvable).
        Connect = "connect",
        /// Every address of the target is refused by the address policy; nothing was sent.
        AddressRefused = "address-refused",
        /// The TLS handshake failed (certificate, protocol).
        Tls = "tls",
        /// The receiver answered 3xx; redirects are not followed.
        Redirect = "redirect",
        /// The receiver answered with another non-2xx status.
        Status = "status",
        /// Anything else (an invalid header value, a URL the policy no longer allows).
        Request = "request",
    }
}
