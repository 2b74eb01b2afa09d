//! Progress bars on stderr (stdout carries the summary, so it stays clean for `--json`).
//! indicatif draws nothing when stderr is not a terminal, so logs and tests get no bar noise.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `total` steps of `what`, or a hidden one.
pub fn bar(total: u64, what: &str, visible: bool) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>9} [{bar:32}] {pos}/{len} {per_sec} eta {eta} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}

/// Turns progress lines written by a step that reports in text (the dead-letter redrive) into
/// a spinner showing the latest line.
pub struct LineSpinner {
    spinner: ProgressBar,
    pending: Vec<u8>,
}

impl LineSpinner {
    pub fn new(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let spinner = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            spinner.set_style(style);
        }
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        Self {
            spinner,
            pending: Vec::new(),
        }
    }

    pub fn finish(self) {
        self.spinner.finish();
    }
}

impl Write for LineSpinner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.spinner
                .set_message(String::from_utf8_lossy(&line).trim().to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
