//! Who is signed in to the console: the API key itself, in an HttpOnly, SameSite=Strict cookie
//! (hex, so any visible-ASCII key is cookie-safe). No server-side session: many instances just
//! work, and removing a key from `IMGPIPE_INGEST_API_KEYS` ends its sessions. The key is checked
//! on every request through the same `ApiKeys` as the API's Bearer header.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use crate::auth::Scope;
use crate::state::AppState;

/// The session cookie's name.
pub(super) const COOKIE_NAME: &str = "imgpipe_console";
/// How long a sign-in lasts (12 hours).
const MAX_AGE_SECS: u64 = 12 * 3600;

/// A signed-in client; without a valid session, a redirect to the sign-in page (back here
/// afterwards).
pub(super) struct ConsoleClient {
    pub(super) client: Arc<str>,
    pub(super) scope: Scope,
}

impl FromRequestParts<AppState> for ConsoleClient {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let grant = session_key(&parts.headers).and_then(|key| state.api_keys.grant_for(&key));
        match grant {
            Some(grant) => Ok(Self {
                client: grant.client.clone(),
                scope: grant.scope,
            }),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/console", |p| p.as_str());
                Err(
                    Redirect::to(&format!("/console/sign-in?next={}", encode(next)))
                        .into_response(),
                )
            }
        }
    }
}

/// The key the session cookie holds, if there is one that decodes.
pub(super) fn session_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .and_then(|(_, value)| hex::decode(value).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The `Set-Cookie` value that signs `key` in (`secure` when the console is reached over https).
pub(super) fn sign_in_cookie(key: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={MAX_AGE_SECS}{}",
        hex::encode(key),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that signs out.
pub(super) fn sign_out_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a state-changing request comes from the console's own pages: an `Origin` header, when
/// the browser sends one, must name this host. (SameSite=Strict keeps the cookie off other
/// sites' requests; this also refuses a forged sign-in, which needs no cookie.)
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && origin_host == host
}

/// `next` as a query value: only what a path needs escaped.
fn encode(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after signing in: a console path, never another site.
pub(super) fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with("/console") && !next.starts_with("//") => next,
        _ => "/console",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_cookie_holds_the_key_and_reads_back() {
        let cookie = sign_in_cookie("key; with=odd chars", false);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        let value = cookie.split(';').next().unwrap().to_string();
        let mut headers = HeaderMap::new();
        let sent = format!("other=1; {value}");
        headers.insert(COOKIE, HeaderValue::from_str(&sent).unwrap());
        assert_eq!(
            session_key(&headers).as_deref(),
            Some("key; with=odd chars")
        );
        assert!(sign_in_cookie("k", true).ends_with("; Secure"));
    }

    #[test]
    fn only_the_consoles_own_origin_may_change_things_and_next_stays_on_the_console() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:18080"));
        assert!(
            same_origin(&headers),
            "no Origin: not a cross-site browser request"
        );
        headers.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:18080"));
        assert!(same_origin(&headers));
        headers.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
        assert_eq!(safe_next(Some("/console/images/x")), "/console/images/x");
        assert_eq!(safe_next(Some("https://evil.example")), "/console");
        assert_eq!(safe_next(Some("//evil.example")), "/console");
        assert_eq!(
            encode("/console?status=ready&x=é"),
            "/console%3Fstatus%3Dready%26x%3D%C3%A9"
        );
    }
}
