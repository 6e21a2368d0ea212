//! Backpressure while a batch commits: keep polling, then hold, then pause.
//!
//! While batch N is in its PostgreSQL transaction the loop keeps polling and
//! collects batch N+1. Once N+1 is full, polling stops and librdkafka's bounded
//! queue holds what arrives ("hold"). Only a write that outlasts the hold pauses the
//! partitions so that polling, and the group membership it keeps alive, can go on.
//! Pausing is the exception because librdkafka drops what it prefetched when a
//! partition is paused and fetches it again on resume.

use std::time::{Duration, Instant};

/// How long a write may go on with the next batch full and nobody polling before
/// the partitions are paused and polling resumes. Well under `max.poll.interval.ms`
/// and short enough that a rebalance waits at most this long for us.
pub const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(3);

/// The hold-then-pause state of one commit.
#[derive(Debug, Clone)]
pub struct Backpressure {
    hold: Duration,
    /// When the next batch became full (`None`: it is not full).
    full_since: Option<Instant>,
    /// Pausing was attempted for the current assignment, whether it worked or not:
    /// a failed pause goes back to polling rather than spinning.
    pause_tried: bool,
}

impl Backpressure {
    /// A commit just started; the next batch is not full.
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            full_since: None,
            pause_tried: false,
        }
    }

    /// Whether to poll now: always, except while holding.
    pub fn should_poll(&self) -> bool {
        !self.holding()
    }

    /// Holding: the next batch is full and pausing was not tried yet.
    fn holding(&self) -> bool {
        !self.pause_tried && self.full_since.is_some()
    }

    /// When to pause, while holding.
    pub fn pause_at(&self) -> Option<Instant> {
        self.full_since
            .filter(|_| self.holding())
            .map(|since| since + self.hold)
    }

    /// A record was taken; `full` says whether the next batch is now full.
    pub fn on_taken(&mut self, full: bool, now: Instant) {
        if full && self.full_since.is_none() {
            self.full_since = Some(now);
        }
    }

    /// The pause was attempted.
    pub fn on_pause_tried(&mut self) {
        self.pause_tried = true;
    }

    /// A rebalance: the next batch was dropped and the new assignment is not
    /// paused; hold (and pause) afresh when it fills.
    pub fn on_rebalance(&mut self) {
        self.full_since = None;
        self.pause_tried = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_the_next_batch_is_full_then_holds_then_pauses() {
        let t0 = Instant::now();
        let mut b = Backpressure::new(HOLD_BEFORE_PAUSE);
        assert!(b.should_poll());
        assert_eq!(b.pause_at(), None);
        b.on_taken(false, t0);
        assert!(b.should_poll());
        b.on_taken(true, t0);
        assert!(!b.should_poll(), "holding: librdkafka's queue buffers");
        assert_eq!(b.pause_at(), Some(t0 + HOLD_BEFORE_PAUSE));
        // A later record does not move the hold's start.
        b.on_taken(true, t0 + Duration::from_secs(1));
        assert_eq!(b.pause_at(), Some(t0 + HOLD_BEFORE_PAUSE));
        b.on_pause_tried();
        assert!(
            b.should_poll(),
            "paused: polling keeps the membership alive"
        );
        assert_eq!(b.pause_at(), None, "a pause is tried once");
    }

    #[test]
    fn a_rebalance_starts_the_hold_afresh() {
        let t0 = Instant::now();
        let mut b = Backpressure::new(Duration::from_millis(10));
        b.on_taken(true, t0);
        b.on_pause_tried();
        b.on_rebalance();
        assert!(b.should_poll());
        b.on_taken(true, t0 + Duration::from_secs(5));
        assert_eq!(
            b.pause_at(),
            Some(t0 + Duration::from_secs(5) + Duration::from_millis(10))
        );
    }
}
