// `sqlx::migrate!` embeds projector/migrations at compile time, but on stable Rust it cannot
// tell cargo to watch the folder: without this, a new migration file is missed by an
// incremental build (as sqlx's documentation says).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
