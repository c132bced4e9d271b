//! The progress bar: steps, loss, learning rates of groups A and B, samples/s and ETA. With the
//! `progress` feature off, a bar that draws nothing.

#[cfg(feature = "progress")]
pub use indicatif::ProgressBar;

/// A bar over `total` optimizer steps starting at `done`; hidden when `show` is false or
/// stderr is not a terminal.
#[cfg(feature = "progress")]
pub fn bar(total: usize, done: usize, show: bool) -> ProgressBar {
    use indicatif::{ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::new(total as u64);
    if !show {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} steps | {msg} | ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_position(done as u64);
    bar
}

/// Without the `progress` feature: a bar that draws nothing.
#[cfg(not(feature = "progress"))]
#[derive(Debug, Clone, Copy)]
pub struct ProgressBar;

#[cfg(not(feature = "progress"))]
impl ProgressBar {
    /// Does nothing.
    pub fn set_position(&self, _pos: u64) {}
    /// Does nothing.
    pub fn set_message(&self, _msg: String) {}
    /// Does nothing.
    pub fn finish_and_clear(&self) {}
}

/// Without the `progress` feature: a bar that draws nothing.
#[cfg(not(feature = "progress"))]
pub fn bar(_total: usize, _done: usize, _show: bool) -> ProgressBar {
    ProgressBar
}
