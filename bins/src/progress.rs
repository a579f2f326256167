//! Progress bars for long transfers, on stderr, shown only when stderr is a terminal and the
//! user did not ask for quiet (`Ctx::progress`).

use dfs_core::client::Progress;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(label: &str, enabled: bool) -> Self {
        let bar = if enabled { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Bar(bar)
    }

    /// One bar for many files (`put -r`, `get -r`): `total_bytes` across all of them; each
    /// file reports through `Bar::file`.
    pub fn tree(label: &str, total_bytes: u64, enabled: bool) -> Self {
        let bar = Bar::new(label, enabled);
        bar.0.set_length(total_bytes);
        bar
    }

    /// What one file of a tree reports through: its bytes add to the tree's bar, its start and
    /// finish do not reset it.
    pub fn file(&self) -> FileProgress<'_> {
        FileProgress(&self.0)
    }

    pub fn set_message(&self, message: String) {
        self.0.set_message(message);
    }

    /// Prints a line on stderr without tearing the bar.
    pub fn eprintln(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Prints a line on stdout without tearing the bar (a reader gone is not an error).
    pub fn println(&self, line: &str) {
        self.0.suspend(|| {
            let _ = crate::cli::emit(&format!("{line}\n"));
        });
    }
}

impl Progress for Bar {
    fn start(&self, total_bytes: u64) {
        self.0.set_length(total_bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
    /// Always shown, bar or not: it tells the user what the command is doing.
    fn message(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

pub struct FileProgress<'a>(&'a ProgressBar);

impl Progress for FileProgress<'_> {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}
