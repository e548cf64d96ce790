//! The reconnect schedule with exponential backoff, for anything that must come back after a
//! failure (the camera, today). Pure: no I/O, the caller passes the time.

use std::fmt;
use std::time::{Duration, Instant};

/// Keeps `Instant + delay` far from overflow whatever the caller configures.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// Where the camera link stands, for status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    NeverTried,
    Connected,
    /// `attempt` attempts in a row have failed; the next waits `retry_in` after the last.
    Waiting {
        attempt: u32,
        retry_in: Duration,
    },
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::NeverTried => f.write_str("not connected yet"),
            LinkState::Connected => f.write_str("connected"),
            LinkState::Waiting { attempt, retry_in } => write!(
                f,
                "{attempt} failed attempt(s), retrying {:.1} s after the last",
                retry_in.as_secs_f32()
            ),
        }
    }
}

/// Reconnect schedule with exponential backoff. Pure: no I/O, the caller passes the time.
#[derive(Debug, Clone)]
pub struct Reconnect {
    initial: Duration,
    max: Duration,
    state: LinkState,
    not_before: Option<Instant>,
}

impl Reconnect {
    /// Delays go `initial`, 2x, 4x ... up to `max` (itself capped at a day; `initial` at `max`).
    pub fn new(initial: Duration, max: Duration) -> Reconnect {
        let max = max.min(MAX_BACKOFF);
        Reconnect {
            initial: initial.min(max),
            max,
            state: LinkState::NeverTried,
            not_before: None,
        }
    }

    /// Records a failed attempt (or a lost connection) and schedules the next attempt.
    pub fn on_failure(&mut self, now: Instant) {
        let attempt = match self.state {
            LinkState::Waiting { attempt, .. } => attempt.saturating_add(1),
            LinkState::NeverTried | LinkState::Connected => 1,
        };
        let retry_in = self.delay_after(attempt);
        self.state = LinkState::Waiting { attempt, retry_in };
        // Cannot overflow with delays capped at a day; if it did, retrying now beats never.
        self.not_before = now.checked_add(retry_in);
    }

    /// Connected: the next failure starts the backoff from `initial` again.
    pub fn on_success(&mut self) {
        self.state = LinkState::Connected;
        self.not_before = None;
    }

    /// May we try to connect now? True unless a backoff delay is still running.
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    fn delay_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}
