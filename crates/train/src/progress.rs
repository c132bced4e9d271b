//! The progress bar: steps, loss, learning rates of groups A and B, samples/s and ETA.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` optimizer steps starting at `done`; hidden when `show` is false or
/// stderr is not a terminal.
pub fn bar(total: usize, done: usize, show: bool) -> ProgressBar {
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
