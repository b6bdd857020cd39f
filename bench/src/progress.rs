//! Progress while a benchmark runs: a bar on a terminal, one line per step otherwise (so that a
//! log of the run says what it was doing). The measurements are counted up front, so the bar
//! shows how many remain; every module reports through [`step`].

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn bar() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    BAR.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_bar(steps: u64) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(250));
    progress
}

/// Adds `steps` measurements to the bar, starting one if there is none (`all` adds each
/// subcommand's before running it).
pub fn add(steps: u64) {
    let mut guard = bar();
    match guard.as_ref() {
        Some(progress) => progress.inc_length(steps),
        None => *guard = Some(new_bar(steps)),
    }
}

/// Says what is measured now (the bar counts the measurements begun).
pub fn step(what: &str) {
    let guard = bar();
    match guard.as_ref() {
        Some(progress) => {
            if progress.is_hidden() {
                eprintln!("tandem-bench: {what}");
            }
            progress.set_message(what.to_string());
            progress.inc(1);
        }
        None => eprintln!("tandem-bench: {what}"),
    }
}

/// The measurements begun so far.
pub fn position() -> u64 {
    bar().as_ref().map_or(0, ProgressBar::position)
}

/// Counts the measurements up to `position` as begun (those a failed part did not reach).
pub fn skip_to(position: u64) {
    if let Some(progress) = bar().as_ref() {
        progress.set_position(position.max(progress.position()));
    }
}

/// Prints a line above the bar (or on standard error without one).
pub fn note(line: &str) {
    match bar().as_ref() {
        Some(progress) if !progress.is_hidden() => progress.println(line),
        _ => eprintln!("{line}"),
    }
}

/// Removes the bar.
pub fn finish() {
    if let Some(progress) = bar().take() {
        progress.finish_and_clear();
    }
}
