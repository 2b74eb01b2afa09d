//! The README's receiver examples verify what the deliverer signs: the Python one is run with
//! python3, the Rust one is this file's `verify`, which must be the README's text exactly.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use imgpipe_webhooks::signature::{signature_header, SigningSecret};

const README: &str = include_str!("../../README.md");

/// The body of the first fenced block of `lang` after the Webhooks heading.
fn readme_block(lang: &str) -> String {
    let section = &README[README.find("## Webhooks").unwrap()..];
    let start = section.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_string()
}

// README-RUST-START
use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: i64,
) -> bool {
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() <= 300);
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    fresh
        && signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .any(|signature| {
                let Ok(signature) = STANDARD.decode(signature) else {
                    return false;
                };
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
                    return false;
                };
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body);
                mac.verify_slice(&signature).is_ok() // constant-time
            })
}
// README-RUST-END

/// A delivery as the deliverer signs it: two secrets (a rotation's overlap), now.
fn signed() -> (String, String, i64, Vec<u8>, String) {
    let current = SigningSecret::generate();
    let previous = SigningSecret::generate();
    let id = "0193a0b4-0000-7000-8000-000000000001".to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = br#"{"type":"image.ready","data":{"image_id":"x"}}"#.to_vec();
    let header = signature_header(&[&current, &previous], &id, now, &body);
    (previous.to_whsec(), id, now, body, header)
}

#[test]
fn the_readme_rust_verifier_is_this_one_and_accepts_only_what_was_signed() {
    let source = include_str!("readme.rs");
    let start = source.find("// README-RUST-START\n").unwrap() + "// README-RUST-START\n".len();
    let end = source.find("// README-RUST-END").unwrap();
    assert_eq!(
        readme_block("rust"),
        source[start..end],
        "README and test differ"
    );

    let (secret, id, now, body, header) = signed();
    let timestamp = now.to_string();
    assert!(verify(&secret, &id, &timestamp, &body, &header, now));
    assert!(
        !verify(&secret, &id, &timestamp, b"{}", &header, now),
        "another body"
    );
    assert!(
        !verify(&secret, &id, &timestamp, &body, &header, now + 301),
        "too old"
    );
    let stranger = SigningSecret::generate().to_whsec();
    assert!(!verify(&stranger, &id, &timestamp, &body, &header, now));
}

#[test]
fn the_readme_python_verifier_accepts_only_what_was_signed() {
    let (secret, id, now, body, header) = signed();
    let run = |body: &[u8]| {
        let script = format!(
            "{}\nimport sys\nheaders = {{'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], \
             'webhook-signature': sys.argv[4]}}\nprint(verify(sys.argv[1], headers, sys.argv[5].encode()))\n",
            readme_block("python")
        );
        let output = Command::new("python3")
            .args(["-c", &script, &secret, &id, &now.to_string(), &header])
            .arg(String::from_utf8(body.to_vec()).unwrap())
            .output()
            .expect("python3 runs (the machine's CPython)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    assert_eq!(run(&body), "True");
    assert_eq!(run(b"{\"type\":\"image.failed\"}"), "False");
}
