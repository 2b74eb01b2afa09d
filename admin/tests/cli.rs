//! The `imgpipe` binary itself, for what needs no stack: main.rs parses and dispatches into the
//! library, and its errors reach the operator. (The commands that read the log or the store
//! are tested against the real stack in `e2e/tests/admin_*.rs` and `e2e/tests/replay.rs`.)

use std::process::{Command, Output, Stdio};

use imgpipe_ingest::auth::{ApiKeys, Scope};

fn imgpipe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("imgpipe runs")
}

#[test]
fn api_key_prints_a_key_its_entry_authenticates() {
    let output = imgpipe(&["api-key", "reports", "--plain", "--read-only"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let (key, entry) = stdout.trim_end().split_once(' ').expect("`key entry`");
    let keys = ApiKeys::parse(entry).expect("ingest reads the entry");
    let grant = keys.grant_for(key).expect("the key authenticates");
    assert_eq!((&*grant.client, grant.scope), ("reports", Scope::Read));
}

#[test]
fn api_key_admin_mints_an_admin_key_and_refuses_read_only_with_it() {
    let output = imgpipe(&["api-key", "ops", "--plain", "--admin"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let (key, entry) = stdout.trim_end().split_once(' ').expect("`key entry`");
    assert!(entry.ends_with(";scope=admin"), "{entry}");
    let keys = ApiKeys::parse(entry).expect("ingest reads the entry");
    let grant = keys.grant_for(key).expect("the key authenticates");
    assert_eq!((&*grant.client, grant.scope), ("ops", Scope::Admin));

    let output = imgpipe(&["api-key", "ops", "--admin", "--read-only"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn refusals_exit_non_zero_with_the_reason() {
    let output = imgpipe(&["api-key", "a,b"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be a client id"), "{stderr}");

    // Refused before any connection is made: no stack is needed to see it.
    let output = imgpipe(&["orphans", "--delete", "--grace", "5m"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
}
