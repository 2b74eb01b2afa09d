//! The tools the offline checks run, which the project installs itself: the Python venv
//! `scripts/venv` makes (schemathesis, kubernetes-validate, kubectl).

use std::path::{Path, PathBuf};
use std::process::Command;

use imgpipe_infra::FromEnv;
use imgpipe_webhooks::config::DeliverySettings;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the workspace")
        .to_path_buf()
}

/// Runs one of the scripts that install a test tool once (`scripts/venv`, `scripts/browser`)
/// and gives the path it prints; `needs` says what the install needs, should it fail.
fn installed(script: &str, needs: &str) -> PathBuf {
    let script = workspace_root().join(script);
    let output = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} could not install {needs}:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).expect("a path").trim())
}

/// The venv's bin directory: `scripts/venv` creates it (once) and names it.
pub fn venv_bin() -> PathBuf {
    installed(
        "scripts/venv",
        "the test tools' venv (python3 with venv and pip, and PyPI, are needed)",
    )
}

/// The system chromedriver (with Debian's chromium beside it): `scripts/browser` installs both
/// where they are missing and names the driver.
pub fn chromedriver() -> PathBuf {
    installed(
        "scripts/browser",
        "chromium and chromium-driver (Debian's packages, as root or with sudo)",
    )
}

/// A program installed in the venv (`st`, `kubectl`, `python`).
pub fn venv_tool(name: &str) -> PathBuf {
    let tool = venv_bin().join(name);
    assert!(
        tool.is_file(),
        "{} is missing: scripts/venv installs it (delete the venv's imgpipe-requirements.txt \
         to make it install again)",
        tool.display()
    );
    tool
}

/// The variables among `given` that none of `read` names. `RUST_LOG` is the log filter, read
/// by tracing rather than by a config struct, so it is always allowed.
pub fn unread_vars<'a>(
    given: impl IntoIterator<Item = &'a String>,
    read: &[String],
) -> Vec<&'a String> {
    given
        .into_iter()
        .filter(|var| *var != "RUST_LOG" && !read.contains(var))
        .collect()
}

/// The variable holding a service's ops address (`/healthz`, `/readyz`, `/metrics`):
/// `IMGPIPE_<SERVICE>_OPS_ADDR`, but the webhooks service's is one of its delivery settings
/// (`IMGPIPE_WEBHOOKS_DELIVERY_OPS_ADDR`).
pub fn ops_addr_var(service: &str) -> String {
    match service {
        "webhooks" => format!("{}OPS_ADDR", DeliverySettings::PREFIX),
        _ => format!("IMGPIPE_{}_OPS_ADDR", service.to_uppercase()),
    }
}
