//! Where a webhook may be sent: the defence against server-side request forgery.
//!
//! A client chooses the URL, and the delivering service runs inside our network; without a check
//! a client could make it POST to the cloud metadata service, a database's HTTP port or any other
//! internal address. Two checks, at two moments:
//!
//! - `AddressPolicy::check_url`, literal only: the scheme (https, http only where the deployment
//!   allows it), no credentials, and a host that is an IP literal must be allowed. Ingest calls it
//!   when an endpoint is registered (a 400 with a code), and `attempt::post` calls it again before
//!   every attempt, because reqwest does not call the resolver for an IP-literal host.
//! - `GuardedResolver`, at delivery time: every address a host name resolves to is checked and
//!   the refused ones are dropped. reqwest connects to exactly the addresses its resolver returns,
//!   so a name that resolves to a public address when registered and to 127.0.0.1 later (DNS
//!   rebinding) still never gets a connection to a refused address.
//!
//! Private networks can be allowed explicitly (`IMGPIPE_WEBHOOK_ALLOW_PRIVATE`, a list of CIDRs),
//! for tests and for deployments whose receivers are internal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::error::WebhookError;

/// The longest URL accepted; longer ones are `Malformed` (no legitimate receiver needs more, and
/// the URL is stored in every endpoint event).
pub const MAX_URL_LEN: usize = 2048;

/// IPv4 networks that are not publicly routable, as (network, prefix length).
const REFUSED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network", includes 0.0.0.0
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // CGNAT, includes Alibaba's metadata 100.100.100.200
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, includes the metadata 169.254.169.254
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, includes the broadcast 255.255.255.255
];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// The IPv4 address an IPv6 address carries, for the forms that reach an IPv4 host: mapped
/// `::ffff:0:0/96`, compatible `::/96` (deprecated, but still routed by some stacks), NAT64
/// `64:ff9b::/96` and 6to4 `2002::/16`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let join = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(join(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(join(hi, lo)),
        [0x2002, hi, lo, ..] => Some(join(hi, lo)),
        _ => None,
    }
}

/// Whether `ip` is a publicly routable unicast address a webhook may reach without an
/// allow-list. IPv6 must be global unicast (2000::/3, so ULA fc00::/7 such as AWS's
/// fd00:ec2::254, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, the unspecified
/// and the loopback address are all outside), and an IPv6 address embedding an IPv4 address is
/// judged by that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !REFUSED_V4
            .iter()
            .any(|&(net, prefix)| in_v4(v4, net, prefix)),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let global_unicast = s[0] & 0xe000 == 0x2000;
            // Inside 2000::/3 but refused: Teredo 2001::/32 (embeds an obfuscated IPv4 address),
            // documentation 2001:db8::/32 and 3fff::/20 (RFC 9637).
            let refused = matches!((s[0], s[1]), (0x2001, 0) | (0x2001, 0xdb8))
                || (s[0] == 0x3fff && s[1] < 0x1000);
            global_unicast && !refused
        }
    }
}

/// Why a webhook URL is refused. The texts are meant for the API's error messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    #[error("the webhook URL is not a valid absolute URL of at most 2048 characters")]
    Malformed,
    #[error("the webhook URL must use https")]
    Insecure,
    #[error("the webhook URL must not contain a user name or password")]
    Credentials,
    #[error("the webhook URL's host {0} is not a public address (private, loopback, link-local, metadata or reserved)")]
    Address(IpAddr),
}

impl TargetRefused {
    /// A stable kebab-case code for the API's error body.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetRefused::Malformed => "malformed-url",
            TargetRefused::Insecure => "insecure-url",
            TargetRefused::Credentials => "url-credentials",
            TargetRefused::Address(_) => "address-refused",
        }
    }
}

/// Which targets a deployment may send webhooks to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow_http: bool,
    allow_private: Vec<IpNet>,
}

impl AddressPolicy {
    /// `allow_http`: plain http URLs too (development only); `allow_private`: networks allowed
    /// although `is_public` refuses them.
    pub fn new(allow_http: bool, allow_private: Vec<IpNet>) -> Self {
        AddressPolicy {
            allow_http,
            allow_private,
        }
    }

    pub fn allow_http(&self) -> bool {
        self.allow_http
    }

    /// Whether a webhook may connect to `ip`: a public address, or one in the allow-list. An
    /// IPv4-mapped IPv6 address is matched against the list as its IPv4 address too.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let listed = |ip: IpAddr| self.allow_private.iter().any(|net| net.contains(&ip));
        is_public(ip) || listed(ip) || listed(ip.to_canonical())
    }

    /// The URL parsed, if it may be registered and called: https (or http where allowed), no
    /// credentials, at most `MAX_URL_LEN` characters, and an IP-literal host must be allowed.
    /// A host name is not resolved here; `GuardedResolver` checks its addresses at delivery.
    pub fn check_url(&self, url: &str) -> Result<url::Url, TargetRefused> {
        if url.len() > MAX_URL_LEN {
            return Err(TargetRefused::Malformed);
        }
        let parsed = url::Url::parse(url).map_err(|_| TargetRefused::Malformed)?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(TargetRefused::Insecure),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetRefused::Credentials);
        }
        let ip = match parsed.host() {
            None => return Err(TargetRefused::Malformed),
            Some(url::Host::Domain(_)) => return Ok(parsed),
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        if !self.allows(ip) {
            return Err(TargetRefused::Address(ip));
        }
        Ok(parsed)
    }
}

/// Parses the allow-list setting: comma-separated CIDRs or bare IP addresses (a bare address is
/// that one address); blanks around entries and empty entries are ignored.
pub fn parse_allow_list(text: &str) -> Result<Vec<IpNet>, WebhookError> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|err| entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| err))
                .map_err(|source| WebhookError::AllowListEntry {
                    entry: entry.to_owned(),
                    source,
                })
        })
        .collect()
}

/// Resolves a host name (the port is filled in by reqwest).
pub type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system resolver, through tokio.
fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

/// reqwest's resolver for webhook deliveries: resolves, then drops every address the policy
/// refuses. If none is left, it fails with `WebhookError::AddressRefused`, which stays in the
/// reqwest error's source chain (`is_address_refused` finds it).
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    lookup: Lookup,
}

impl GuardedResolver {
    /// With the system resolver.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self::with_lookup(policy, system_lookup())
    }

    /// With another lookup (tests).
    pub fn with_lookup(policy: Arc<AddressPolicy>, lookup: Lookup) -> Self {
        GuardedResolver { policy, lookup }
    }

    /// The allowed addresses of `host`.
    pub async fn resolve_allowed(&self, host: &str) -> Result<Vec<SocketAddr>, WebhookError> {
        let lookup = (self.lookup)(host.to_owned()).await;
        let resolved = lookup.map_err(|source| WebhookError::Resolve {
            host: host.to_owned(),
            source,
        })?;
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
            .into_iter()
            .partition(|addr| self.policy.allows(addr.ip()));
        for addr in &refused {
            tracing::warn!(host = %host, address = %addr.ip(), "webhook target address refused");
        }
        if allowed.is_empty() {
            return Err(WebhookError::AddressRefused {
                host: host.to_owned(),
                refused: refused.len(),
            });
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.resolve_allowed(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether `err` or any error in its source chain is the guarded resolver's refusal.
pub fn is_address_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| {
        matches!(
            err.downcast_ref(),
            Some(WebhookError::AddressRefused { .. })
        )
    })
}

/// The HTTP client for deliveries: no redirects followed (a redirect could lead anywhere, and
/// the receiver must answer itself), no proxy from the environment (it would connect for us to
/// addresses the resolver never saw), https only unless the policy allows http, the guarded
/// resolver, a total timeout and a connect timeout of at most 10 s.
pub fn http_client(
    policy: Arc<AddressPolicy>,
    timeout: Duration,
) -> Result<reqwest::Client, WebhookError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(!policy.allow_http())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("imgpipe-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver::new(policy)))
        .build()
        .map_err(WebhookError::HttpClient)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Each refused range from inside and, where it has one, the public address next to it.
    #[test]
    fn the_address_table() {
        let refused = "0.0.0.0 0.255.255.255 10.0.0.0 10.255.255.255 100.64.0.0 100.100.100.200 \
            100.127.255.255 127.0.0.1 127.255.255.254 169.254.0.1 169.254.169.254 172.16.0.0 \
            172.31.255.255 192.0.0.1 192.0.0.255 192.0.2.1 192.168.0.1 192.168.255.255 198.18.0.0 \
            198.19.255.255 198.51.100.7 203.0.113.9 224.0.0.1 239.255.255.255 240.0.0.1 \
            255.255.255.255 :: ::1 fc00::1 fd00:ec2::254 fdff:ffff::1 fe80::1 febf::1 fec0::1 \
            feff::1 ff02::1 ff0e::1 2001:db8::1 2001:db8:ffff::1 3fff::1 2001::1 100::1 \
            64:ff9b:1::1 ::ffff:127.0.0.1 ::ffff:169.254.169.254 ::ffff:10.0.0.1 ::127.0.0.1 \
            ::10.1.2.3 64:ff9b::a9fe:a9fe 64:ff9b::7f00:1 2002:7f00:1::1 2002:a9fe:a9fe::1 \
            2002:c0a8:101::";
        let public = "8.8.8.8 1.1.1.1 9.255.255.255 11.0.0.0 100.63.255.255 100.128.0.0 \
            126.255.255.255 128.0.0.0 169.253.255.255 169.255.0.0 172.15.255.255 172.32.0.0 \
            192.0.1.0 192.0.3.0 192.167.255.255 192.169.0.0 198.17.255.255 198.20.0.0 \
            198.51.99.255 203.0.112.255 223.255.255.255 93.184.216.34 2606:4700::1111 \
            2001:4860:4860::8888 2001:db9::1 2001:1::1 ::ffff:8.8.8.8 64:ff9b::808:808 \
            2002:808:808::1";
        for a in refused.split_whitespace() {
            assert!(!is_public(ip(a)), "{a} must be refused");
        }
        for a in public.split_whitespace() {
            assert!(is_public(ip(a)), "{a} must be public");
        }
    }

    #[test]
    fn the_allow_list_lets_exactly_its_networks_through() {
        let policy = AddressPolicy::new(true, parse_allow_list("127.0.0.1/32").unwrap());
        assert!(policy.allows(ip("127.0.0.1")));
        assert!(policy.allows(ip("::ffff:127.0.0.1")));
        assert!(!policy.allows(ip("127.0.0.2")));
        assert!(!policy.allows(ip("::1")));
        assert!(policy.allows(ip("8.8.8.8")));
        let list = parse_allow_list(" 10.0.0.0/8, ::1 ,192.168.1.5,").unwrap();
        let nets: Vec<IpNet> = ["10.0.0.0/8", "::1/128", "192.168.1.5/32"]
            .map(|n| n.parse().unwrap())
            .into();
        assert_eq!(list, nets);
        for bad in ["10.0.0.0/33", "localhost", "1.2.3"] {
            let err = parse_allow_list(&format!("10.0.0.0/8,{bad}")).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn check_url_cases() {
        let strict = AddressPolicy::default();
        let dev = AddressPolicy::new(true, parse_allow_list("127.0.0.1").unwrap());
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        // The expected outcome: "ok", a refusal's code, or the refused address.
        let cases = [
            (&strict, "https://example.com/hook?x=1", "ok"),
            (&strict, "https://8.8.8.8:8443/hook", "ok"),
            (&strict, "https://[2606:4700::1111]/", "ok"),
            (&strict, "https://localhost/", "ok"), // names are checked when resolved
            (&strict, "http://example.com/", "insecure-url"),
            (&strict, "ftp://example.com/", "insecure-url"),
            (&dev, "ftp://example.com/", "insecure-url"),
            (&dev, "http://example.com/", "ok"),
            (&strict, "not a url", "malformed-url"),
            (&strict, "/relative", "malformed-url"),
            (&strict, &long, "malformed-url"),
            (&strict, "https://u:p@example.com/", "url-credentials"),
            (&strict, "https://u@example.com/", "url-credentials"),
            (&strict, "https://169.254.169.254/latest", "169.254.169.254"),
            (&strict, "https://0x7f.1/", "127.0.0.1"),
            (&strict, "https://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1"),
            (&strict, "https://[fd00:ec2::254]/", "fd00:ec2::254"),
            (&dev, "http://127.0.0.1:8080/", "ok"),
            (&dev, "http://127.0.0.2:8080/", "127.0.0.2"),
        ];
        for (policy, url, expected) in cases {
            let outcome = match policy.check_url(url) {
                Ok(_) => "ok".to_owned(),
                Err(TargetRefused::Address(ip)) => ip.to_string(),
                Err(refused) => refused.as_str().to_owned(),
            };
            assert_eq!(outcome, expected, "{url}");
        }
    }

    fn fake(addrs: &'static [&'static str]) -> Lookup {
        Arc::new(move |_host| {
            Box::pin(async move { Ok(addrs.iter().map(|a| SocketAddr::new(ip(a), 0)).collect()) })
        })
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let resolver = |addrs| GuardedResolver::with_lookup(Arc::default(), fake(addrs));
        let name = || "hook.example".parse().unwrap();
        let err = resolver(&["10.0.0.1"]).resolve(name()).await.err().unwrap();
        assert!(is_address_refused(&*err), "{err}");
        let mixed = resolver(&["10.0.0.1", "93.184.216.34"]).resolve(name());
        let addrs: Vec<_> = mixed.await.unwrap().collect();
        assert_eq!(addrs, [SocketAddr::new(ip("93.184.216.34"), 0)]);
        // And the client that uses it builds.
        http_client(Arc::default(), Duration::from_secs(15)).unwrap();
    }
}
