//! The console as a browser without JavaScript sees it: signing in, then pages and forms with
//! the session cookie.

use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use crate::Pipeline;

/// A browser-like client of the console: no redirects followed, the session cookie sent.
pub struct Console {
    pub http: reqwest::Client,
    /// The session cookie's `name=value`.
    pub cookie: String,
}

impl Console {
    /// A browser that has not signed in (it follows no redirect, so a test sees each one).
    pub fn signed_out() -> Self {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .expect("an HTTP client");
        Self {
            http,
            cookie: String::new(),
        }
    }

    /// Signs in with `key` (which must be one the pipeline knows): back to `/console`, with an
    /// HttpOnly, SameSite=Strict cookie that does not hold the key as typed.
    pub async fn sign_in(pipeline: &Pipeline, key: &str) -> Self {
        let mut console = Self::signed_out();
        let response = console
            .http
            .post(pipeline.url("/console/sign-in"))
            .form(&[("key", key), ("next", "/console")])
            .send()
            .await
            .expect("the console answers");
        assert_eq!(response.status(), 303, "signing in");
        assert_eq!(response.headers()[LOCATION], "/console");
        let cookie = response.headers()[SET_COOKIE]
            .to_str()
            .expect("a cookie of visible ASCII");
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(
            !cookie.contains(key),
            "the key is not in the cookie as typed: {cookie}"
        );
        console.cookie = cookie.split(';').next().unwrap_or_default().to_string();
        console
    }

    /// A page: its status and HTML. Every console answer carries a Content-Security-Policy.
    pub async fn get(&self, pipeline: &Pipeline, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(pipeline.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("the console answers");
        assert!(
            response.headers().contains_key(CONTENT_SECURITY_POLICY),
            "{path} has a Content-Security-Policy"
        );
        (
            response.status().as_u16(),
            response.text().await.expect("the console answers"),
        )
    }

    /// A form sent from the console's own pages.
    pub async fn post(
        &self,
        pipeline: &Pipeline,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String) {
        let response = self
            .http
            .post(pipeline.url(path))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .expect("the console answers");
        (
            response.status().as_u16(),
            response.text().await.expect("the console answers"),
        )
    }
}
