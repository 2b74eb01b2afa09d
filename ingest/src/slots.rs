//! How many long requests (uploads, status streams) may be in progress at once: all clients
//! together (a semaphore), and each client (a count per client, kept only while it has one in
//! progress). A slot is held from admission until the request ends, so the memory and
//! connections they hold are bounded whatever the clients send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::IngestError;

pub struct Slots {
    total: Arc<Semaphore>,
    per_client: usize,
    /// The answer to a client that has its most in progress.
    too_many: fn(usize) -> IngestError,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request's place; dropping it frees the place.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    client: String,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
}

impl Slots {
    /// `too_many` is what a client over `per_client` is answered (a 429 naming the limit).
    pub fn new(total: usize, per_client: usize, too_many: fn(usize) -> IngestError) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_client,
            too_many,
            in_progress: Arc::default(),
        }
    }

    /// A place for one more request of `client`: `too_many` when the client has its most in
    /// progress, 503 `server-busy` when the server has.
    pub fn take(&self, client: &str) -> Result<Slot, IngestError> {
        let mut in_progress = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = in_progress.get(client).copied().unwrap_or(0);
        if count >= self.per_client {
            return Err((self.too_many)(self.per_client));
        }
        let permit = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| IngestError::ServerBusy)?;
        in_progress.insert(client.to_string(), count + 1);
        Ok(Slot {
            _total: permit,
            client: client.to_string(),
            in_progress: Arc::clone(&self.in_progress),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_progress = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_progress.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                in_progress.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_and_the_server_each_have_a_cap() {
        let slots = Slots::new(3, 2, |limit| IngestError::TooManyUploads { limit });
        let a1 = slots.take("a").unwrap();
        let _a2 = slots.take("a").unwrap();
        assert!(matches!(
            slots.take("a"),
            Err(IngestError::TooManyUploads { limit: 2 })
        ));
        let _b1 = slots.take("b").unwrap();
        assert!(matches!(slots.take("c"), Err(IngestError::ServerBusy)));
        drop(a1);
        assert!(slots.take("a").is_ok(), "a freed place is taken again");
        assert!(
            !slots.in_progress.lock().unwrap().contains_key("c"),
            "a refused client leaves nothing behind"
        );
    }
}
