//! How many uploads may be in progress at once: all clients together (a semaphore), and each
//! client (a count per client, kept only while it has one in progress). A slot is held from
//! admission until the handler ends, so the memory and connections uploads hold are bounded
//! whatever the clients send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::IngestError;

pub struct UploadSlots {
    total: Arc<Semaphore>,
    per_client: usize,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
}

/// One upload's place; dropping it frees the place.
pub struct UploadSlot {
    _total: OwnedSemaphorePermit,
    client: String,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
}

impl UploadSlots {
    pub fn new(total: usize, per_client: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_client,
            in_progress: Arc::default(),
        }
    }

    /// A place for one more upload of `client`: 429 `too-many-uploads` when the client has
    /// its most in progress, 503 `server-busy` when the server has.
    pub fn take(&self, client: &str) -> Result<UploadSlot, IngestError> {
        let mut in_progress = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = in_progress.get(client).copied().unwrap_or(0);
        if count >= self.per_client {
            return Err(IngestError::TooManyUploads {
                limit: self.per_client,
            });
        }
        let permit = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| IngestError::ServerBusy)?;
        in_progress.insert(client.to_string(), count + 1);
        Ok(UploadSlot {
            _total: permit,
            client: client.to_string(),
            in_progress: Arc::clone(&self.in_progress),
        })
    }
}

impl Drop for UploadSlot {
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
        let slots = UploadSlots::new(3, 2);
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
