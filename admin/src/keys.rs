//! `imgpipe api-key`: a new API key for a client and its IMGPIPE_INGEST_API_KEYS entry.

use std::io::Write;

use imgpipe_ingest::auth::{ApiKeys, ClientLimits, Scope};
use rand::RngCore;

use crate::error::AdminError;

/// A new key and its IMGPIPE_INGEST_API_KEYS entry. A client id ingest would misread is
/// refused here rather than at ingest's next start, and the entry is parsed back before it
/// is shown.
pub fn mint_api_key(
    client: &str,
    scope: Scope,
    limits: ClientLimits,
) -> Result<(String, String), AdminError> {
    if client.is_empty() || client.trim() != client || client.contains([',', ';', '=']) {
        return Err(AdminError::ClientId {
            client: client.to_string(),
        });
    }
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("imgpipe_{}", hex::encode(secret));
    let entry = ApiKeys::entry_with(client, &key, scope, limits);
    let parsed = ApiKeys::parse(&entry).map_err(|source| AdminError::KeyEntryUnreadable {
        entry: entry.clone(),
        source,
    })?;
    if parsed.client_for(&key) != Some(client) {
        return Err(AdminError::KeyEntryMismatch {
            entry,
            client: client.to_string(),
        });
    }
    Ok((key, entry))
}

/// Mints a key and prints it with its entry: `key entry` on one line when `plain` (for
/// scripts), else for a person, with a note when the client has limits of its own.
pub fn run(
    client: &str,
    scope: Scope,
    limits: ClientLimits,
    plain: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let (key, entry) = mint_api_key(client, scope, limits)?;
    if plain {
        writeln!(out, "{key} {entry}")?;
        return Ok(());
    }
    writeln!(out, "API key for {client} (shown once): {key}")?;
    writeln!(out, "add to IMGPIPE_INGEST_API_KEYS: {entry}")?;
    if limits != ClientLimits::default() {
        writeln!(
            out,
            "the limits hold for every key of {client}: its other entries must state the same \
             limits or none"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_entry_carries_its_options_and_authenticates_its_key() {
        let limits = ClientLimits {
            uploads_per_minute: Some(120),
            bytes_per_minute: Some(500_000_000),
        };
        let (key, entry) = mint_api_key("reports", Scope::Read, limits).unwrap();
        assert!(
            entry.ends_with(";scope=read;uploads_per_minute=120;bytes_per_minute=500000000"),
            "{entry}"
        );
        let keys = ApiKeys::parse(&entry).unwrap();
        let grant = keys.grant_for(&key).unwrap();
        assert_eq!((&*grant.client, grant.scope), ("reports", Scope::Read));
        assert_eq!(
            keys.client_limits().collect::<Vec<_>>(),
            vec![("reports", limits)]
        );

        let (_, plain) = mint_api_key("app", Scope::ReadWrite, ClientLimits::default()).unwrap();
        assert!(!plain.contains(';'), "defaults add no options: {plain}");
    }

    #[test]
    fn an_admin_key_says_so_in_its_entry() {
        let (key, entry) = mint_api_key("ops", Scope::Admin, ClientLimits::default()).unwrap();
        assert!(entry.ends_with(";scope=admin"), "{entry}");
        let keys = ApiKeys::parse(&entry).unwrap();
        let grant = keys.grant_for(&key).unwrap();
        assert_eq!((&*grant.client, grant.scope), ("ops", Scope::Admin));
    }

    #[test]
    fn a_client_id_ingest_would_misread_is_refused() {
        for client in ["a,b", "a;b", "a=b", " a", ""] {
            assert!(
                matches!(
                    mint_api_key(client, Scope::ReadWrite, ClientLimits::default()),
                    Err(AdminError::ClientId { .. })
                ),
                "{client:?}"
            );
        }
    }

    #[test]
    fn plain_output_is_the_key_and_its_entry_on_one_line() {
        let mut out = Vec::new();
        run(
            "app",
            Scope::ReadWrite,
            ClientLimits::default(),
            true,
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        let (key, entry) = out.trim_end().split_once(' ').unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        let keys = ApiKeys::parse(entry).unwrap();
        assert_eq!(keys.client_for(key), Some("app"));

        let mut out = Vec::new();
        let limits = ClientLimits {
            uploads_per_minute: Some(1),
            bytes_per_minute: None,
        };
        run("app", Scope::Read, limits, false, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("API key for app (shown once): imgpipe_"),
            "{out}"
        );
        assert!(
            out.contains("the limits hold for every key of app"),
            "{out}"
        );
    }
}
