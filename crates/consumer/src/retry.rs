//! Retrying: which failures a retry can heal, and the one backoff loop that does it.
//!
//! Whether an error is worth retrying is decided by the error type itself
//! ([`Retriable`], for PostgreSQL by SQLSTATE in `sink::postgres`), never by the
//! loop: a loop only waits, logs and counts. Every mid-run loop of the consumer
//! (writing a batch, reading stored offsets, staging and promoting part files,
//! asking whether a batch committed) goes through [`Retry::run`].

use std::fmt::Display;
use std::time::Duration;

use common::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The first delay after a failure; it doubles up to the loop's maximum.
pub const FIRST_DELAY: Duration = Duration::from_millis(200);

/// An error that knows whether trying the same thing again can succeed.
pub trait Retriable {
    /// True for conditions that heal by waiting (a connection lost, a server
    /// restarting, a lock timeout, a full disk); false for anything that would fail
    /// the same way again.
    fn retriable(&self) -> bool;
}

/// A retry loop: what it does (for the log), when to give up, how long to wait.
pub struct Retry<'a> {
    what: &'static str,
    stop: &'a CancellationToken,
    backoff: Backoff,
    grace: Option<Duration>,
    counter: Option<metrics::Counter>,
}

impl<'a> Retry<'a> {
    /// Retries `what` until it succeeds, fails for good, or `stop` is cancelled;
    /// waits from [`FIRST_DELAY`] doubling up to `max`.
    pub fn new(what: &'static str, stop: &'a CancellationToken, max: Duration) -> Self {
        Self {
            what,
            stop,
            backoff: Backoff::new(FIRST_DELAY, max),
            grace: None,
            counter: None,
        }
    }

    /// Starts from `first` instead of [`FIRST_DELAY`] (tests).
    #[cfg(test)]
    pub fn first_delay(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(first, max);
        self
    }

    /// Lets an attempt under way when `stop` fires finish within `grace` (a
    /// transaction about to commit); without it the attempt is abandoned at once.
    pub fn grace_on_stop(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Counts each retry in `counter`.
    pub fn counting(mut self, counter: metrics::Counter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Runs `op` until it succeeds (`Ok(Some)`), fails with an error that is not
    /// [`Retriable`] (`Err`), or the consumer stops (`Ok(None)`).
    pub async fn run<T, E: Retriable + Display>(
        mut self,
        mut op: impl AsyncFnMut() -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        loop {
            // An attempt, once started, runs to its end (promoting a committed
            // batch's file must happen even when stopping), unless it was given a
            // grace: then it is abandoned that long after `stop`.
            let attempt = async {
                match self.grace {
                    Some(grace) => tokio::select! {
                        biased;
                        r = op() => Some(r),
                        () = async { self.stop.cancelled().await; tokio::time::sleep(grace).await } => None,
                    },
                    None => Some(op().await),
                }
            };
            let error = match attempt.await {
                None => return Ok(None),
                Some(Ok(v)) => return Ok(Some(v)),
                Some(Err(e)) if !e.retriable() => return Err(e),
                Some(Err(e)) => e,
            };
            let delay = self.backoff.fail();
            if let Some(c) = &self.counter {
                c.increment(1);
            }
            warn!(
                message = "Attempt failed, retrying.",
                what = self.what,
                error = %error,
                attempt = self.backoff.failures(),
                retry_in = ?delay
            );
            tokio::select! {
                () = self.stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failure(bool);

    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure (retriable: {})", self.0)
        }
    }

    impl Retriable for Failure {
        fn retriable(&self) -> bool {
            self.0
        }
    }

    fn quick<'a>(stop: &'a CancellationToken) -> Retry<'a> {
        Retry::new("testing", stop, Duration::from_millis(4))
            .first_delay(Duration::from_millis(1), Duration::from_millis(4))
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let result = quick(&stop)
            .run(async || {
                calls += 1;
                if calls < 4 {
                    Err(Failure(true))
                } else {
                    Ok(calls)
                }
            })
            .await;
        assert_eq!(result.ok().flatten(), Some(4));
    }

    #[tokio::test]
    async fn a_permanent_failure_ends_the_loop_at_once() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let result: Result<Option<()>, Failure> = quick(&stop)
            .run(async || {
                calls += 1;
                Err(Failure(false))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn stopping_ends_a_loop_that_keeps_failing() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let result: Result<Option<()>, Failure> = quick(&stop)
            .run(async || {
                calls += 1;
                if calls == 3 {
                    stop.cancel();
                }
                Err(Failure(true))
            })
            .await;
        assert!(matches!(result, Ok(None)));
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn an_attempt_runs_to_its_end_when_stopping_unless_its_grace_runs_out() {
        let stop = CancellationToken::new();
        stop.cancel();
        async fn slow() -> Result<i32, Failure> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(7)
        }
        let finished = quick(&stop).run(async || slow().await).await;
        assert_eq!(
            finished.ok().flatten(),
            Some(7),
            "no grace: never abandoned"
        );
        let graced = quick(&stop)
            .grace_on_stop(Duration::from_secs(5))
            .run(async || slow().await)
            .await;
        assert_eq!(graced.ok().flatten(), Some(7));
        let abandoned = quick(&stop)
            .grace_on_stop(Duration::from_millis(1))
            .run(async || slow().await)
            .await;
        assert!(matches!(abandoned, Ok(None)));
    }
}
