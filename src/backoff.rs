//! The reconnect schedule with exponential backoff, for anything that must come back after a
//! failure: the camera and the MQTT connection. Pure: no I/O, the caller passes the time, so
//! the schedule is tested without waiting and shared by a blocking thread and a tokio task.

use std::fmt;
use std::time::{Duration, Instant};

/// Keeps `Instant + delay` far from overflow whatever the caller configures.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// Where a link (the camera, the broker) stands, for status reports.
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

    /// The wait the last failure scheduled; zero when connected or never tried. For a caller
    /// that sleeps rather than polls [`Reconnect::ready`].
    pub fn retry_in(&self) -> Duration {
        match self.state {
            LinkState::Waiting { retry_in, .. } => retry_in,
            LinkState::NeverTried | LinkState::Connected => Duration::ZERO,
        }
    }

    fn delay_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_caps_and_resets() {
        let start = Instant::now();
        let mut link = Reconnect::new(Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(link.state(), LinkState::NeverTried);
        assert!(link.ready(start));

        let mut delays = Vec::new();
        for _ in 0..6 {
            link.on_failure(start);
            if let LinkState::Waiting { retry_in, .. } = link.state() {
                delays.push(retry_in.as_secs());
            }
        }
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(
            link.state(),
            LinkState::Waiting {
                attempt: 6,
                retry_in: Duration::from_secs(10)
            }
        );

        link.on_success();
        assert_eq!(link.state(), LinkState::Connected);
        assert!(link.ready(start));
        link.on_failure(start);
        assert_eq!(
            link.state(),
            LinkState::Waiting {
                attempt: 1,
                retry_in: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn reconnect_ready_only_after_the_delay() {
        let start = Instant::now();
        let mut link = Reconnect::new(Duration::from_millis(500), Duration::from_secs(30));
        link.on_failure(start);
        assert!(!link.ready(start));
        assert!(!link.ready(start + Duration::from_millis(499)));
        assert!(link.ready(start + Duration::from_millis(500)));
        let later = start + Duration::from_secs(5);
        link.on_failure(later);
        assert!(!link.ready(later + Duration::from_millis(999)));
        assert!(link.ready(later + Duration::from_secs(1)));
    }

    #[test]
    fn reconnect_survives_extreme_settings() {
        let start = Instant::now();
        let mut link = Reconnect::new(Duration::MAX, Duration::MAX);
        for _ in 0..100 {
            link.on_failure(start);
        }
        assert!(!link.ready(start));
        let mut zero = Reconnect::new(Duration::ZERO, Duration::ZERO);
        zero.on_failure(start);
        assert!(zero.ready(start));
    }

    /// The MQTT publisher's schedule: 1 s, doubling to 30 s, from 1 s again after a session
    /// that had connected.
    #[test]
    fn mqtt_schedule_starts_at_1_s_caps_at_30_s_and_resets_after_a_connection() {
        let now = Instant::now();
        let mut link = Reconnect::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(link.retry_in(), Duration::ZERO);
        let delays: Vec<u64> = (0..7)
            .map(|_| {
                link.on_failure(now);
                link.retry_in().as_secs()
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);

        link.on_success();
        assert_eq!(link.retry_in(), Duration::ZERO);
        link.on_failure(now);
        assert_eq!(link.retry_in(), Duration::from_secs(1));
    }
}
