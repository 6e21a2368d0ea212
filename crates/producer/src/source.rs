//! Where events come from.
//!
//! A source runs as its own task and sends chunks of events through a bounded
//! channel: the publisher's pace (and so the broker's) sets the source's pace, and
//! the source stops as soon as the publisher hangs up.

use std::path::PathBuf;
use std::time::Duration;

use events::{Generator, RandomUserResponse, UserEvent};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::Sender;
use tracing::warn;

use crate::Error;

/// Events per chunk sent to the publisher: large enough to amortise the channel.
const CHUNK: usize = 512;

/// A configured source of events.
#[derive(Debug, Clone)]
pub enum Source {
    /// The seeded offline generator.
    Synthetic { seed: u64 },
    /// The Random User API, `batch` users per request.
    RandomUser {
        url: String,
        batch: u32,
        attempts: u32,
    },
    /// An NDJSON replay file.
    File {
        path: PathBuf,
        stop_on_bad_line: bool,
    },
}

/// What a source reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceStats {
    /// Input lines that could not be turned into an event.
    pub bad_lines: u64,
}

impl Source {
    /// Sends chunks of events until the source is exhausted or the receiver is gone.
    pub async fn feed(self, tx: Sender<Vec<UserEvent>>) -> Result<SourceStats, Error> {
        match self {
            Source::Synthetic { seed } => {
                tracing::info!(message = "Synthetic events.", seed, repeat_with = %format!("--seed {seed}"));
                let mut generator = Generator::new(seed);
                loop {
                    let chunk: Vec<UserEvent> = generator.by_ref().take(CHUNK).collect();
                    if tx.send(chunk).await.is_err() {
                        return Ok(SourceStats::default());
                    }
                }
            }
            Source::RandomUser {
                url,
                batch,
                attempts,
            } => feed_randomuser(&url, batch, attempts, tx).await,
            Source::File {
                path,
                stop_on_bad_line,
            } => feed_file(path, stop_on_bad_line, tx).await,
        }
    }
}

async fn feed_randomuser(
    url: &str,
    batch: u32,
    attempts: u32,
    tx: Sender<Vec<UserEvent>>,
) -> Result<SourceStats, Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!(
            "users-pipeline-producer/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| Error::RandomUser {
            url: url.to_string(),
            attempts: 0,
            reason: e.to_string(),
        })?;
    loop {
        let response = fetch_with_retries(&client, url, batch, attempts).await?;
        let chunk: Vec<UserEvent> = response.results.iter().map(|r| r.to_event()).collect();
        if tx.send(chunk).await.is_err() {
            return Ok(SourceStats::default());
        }
    }
}

/// One API request with exponential backoff (0.5 s, 1 s, 2 s, ... capped at 8 s).
async fn fetch_with_retries(
    client: &reqwest::Client,
    url: &str,
    batch: u32,
    attempts: u32,
) -> Result<RandomUserResponse, Error> {
    let mut backoff =
        common::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
    let mut last = String::new();
    for attempt in 1..=attempts {
        let result = async {
            client
                .get(url)
                .query(&[("results", batch)])
                .send()
                .await?
                .error_for_status()?
                .json::<RandomUserResponse>()
                .await
        }
        .await;
        match result {
            Ok(r) => return Ok(r),
            Err(e) => {
                // reqwest's own message hides the cause; the chain names it.
                last = common::cli::one_line(&e);
                if attempt < attempts {
                    let delay = backoff.fail();
                    warn!(
                        message = "Random User API request failed, retrying.",
                        attempt,
                        error = %last,
                        retry_in = ?delay
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    Err(Error::RandomUser {
        url: url.to_string(),
        attempts,
        reason: last,
    })
}

async fn feed_file(
    path: PathBuf,
    stop_on_bad_line: bool,
    tx: Sender<Vec<UserEvent>>,
) -> Result<SourceStats, Error> {
    let shown = path.display().to_string();
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::File {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut stats = SourceStats::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut number = 0u64;
    loop {
        let line = lines.next_line().await.map_err(|e| Error::File {
            path: shown.clone(),
            reason: format!("line {}: {e}", number + 1),
        })?;
        let Some(line) = line else { break };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        match events::randomuser::parse_line(&line) {
            Ok(event) => chunk.push(event),
            Err(e) if stop_on_bad_line => {
                return Err(Error::BadLine {
                    path: shown,
                    line: number,
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                stats.bad_lines += 1;
                warn!(message = "Skipping bad input line.", file = %shown, line = number, error = %e);
            }
        }
        if chunk.len() == CHUNK && tx.send(std::mem::take(&mut chunk)).await.is_err() {
            return Ok(stats);
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk).await;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::sync::mpsc;

    use super::*;

    async fn drain(source: Source) -> (Vec<UserEvent>, Result<SourceStats, Error>) {
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(source.feed(tx));
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            all.extend(chunk);
        }
        (all, task.await.unwrap())
    }

    fn replay_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut g = Generator::new(1);
        let event = String::from_utf8(g.next_event().to_json()).unwrap();
        let raw = serde_json::to_string(&g.next_result()).unwrap();
        writeln!(f, "{event}").unwrap();
        writeln!(f, "{{not json").unwrap();
        writeln!(f).unwrap();
        writeln!(f, "{raw}").unwrap();
        writeln!(f, "[1,2,3]").unwrap();
        f
    }

    #[tokio::test]
    async fn file_source_counts_bad_lines_and_goes_on() {
        let f = replay_file();
        let (events, stats) = drain(Source::File {
            path: f.path().to_path_buf(),
            stop_on_bad_line: false,
        })
        .await;
        let mut g = Generator::new(1);
        assert_eq!(events, vec![g.next_event(), g.next_event()]);
        assert_eq!(stats.unwrap().bad_lines, 2);
    }

    #[tokio::test]
    async fn file_source_can_stop_at_the_first_bad_line_naming_it() {
        let f = replay_file();
        let (_, result) = drain(Source::File {
            path: f.path().to_path_buf(),
            stop_on_bad_line: true,
        })
        .await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains(":2: invalid JSON"), "{err}");
    }

    #[tokio::test]
    async fn missing_file_is_a_clear_error() {
        let (_, result) = drain(Source::File {
            path: "/nonexistent/replay.ndjson".into(),
            stop_on_bad_line: false,
        })
        .await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/replay.ndjson"), "{err}");
    }
}
