//! Exponential backoff: the one schedule every retry loop of the workspace follows.
//!
//! Loops differ in what they retry and when they give up; the schedule (a first
//! delay, doubling, capped) and the attempt count are the same everywhere, so they
//! live here and are tested once.

use std::time::Duration;

/// Delays between attempts: `first`, then doubling, never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// Failed attempts so far.
    failures: u32,
}

impl Backoff {
    /// A schedule starting at `first` and capped at `max` (at least `first`).
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            max: max.max(first),
            failures: 0,
        }
    }

    /// Records a failed attempt and returns how long to wait before the next one.
    pub fn fail(&mut self) -> Duration {
        let delay = self.next;
        self.failures += 1;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Failed attempts so far (the number of the attempt that just failed).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_counts_failures() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| b.fail().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 5);
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.fail(), Duration::from_secs(2));
        assert_eq!(b.fail(), Duration::from_secs(2));
    }
}
