//! Runs the pipeline's own binaries as child processes and measures them from the
//! outside: wall time and CPU seconds from `wait4`'s resource usage, peak RSS from
//! the kernel's high-water mark (`VmHWM`), and when a given log line first appeared.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running child whose stderr (JSON log lines) is read by a thread.
pub struct Running {
    child: Child,
    started: Instant,
    log: Arc<Mutex<Log>>,
    name: String,
    reaped: bool,
    peak: Arc<AtomicU64>,
}

impl Drop for Running {
    /// A benchmark that fails half-way leaves no pipeline process behind.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Default)]
struct Log {
    lines: Vec<(Duration, String)>,
}

/// How a child ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub code: i32,
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_bytes: u64,
    /// Every line it printed, stdout and stderr interleaved as read.
    pub log: Vec<String>,
}

impl Finished {
    /// The summary line (starting with `prefix`) of a child that exited 0; an error
    /// with its last lines otherwise. `who` names it in the error.
    pub fn summary_line(&self, who: &str, prefix: &str) -> anyhow::Result<&str> {
        let tail = self.log[self.log.len().saturating_sub(20)..].join("\n");
        if self.code != 0 {
            bail!("{who} exited with {}:\n{tail}", self.code);
        }
        self.log
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(String::as_str)
            .with_context(|| format!("no summary line from {who}:\n{tail}"))
    }
}

/// Starts `bin` from `bin_dir` against `brokers` with `args`, logging JSON lines,
/// stdout and stderr captured.
pub fn spawn(bin_dir: &Path, bin: &str, brokers: &str, args: &[&str]) -> anyhow::Result<Running> {
    let mut command = Command::new(bin_dir.join(bin));
    command
        .args(["--brokers", brokers, "--log-format", "json"])
        .args(args)
        .env_remove("RUST_LOG");
    spawn_command(command, bin)
}

/// Starts `command` (named `name` in messages), stdout and stderr captured.
pub fn spawn_command(mut command: Command, name: &str) -> anyhow::Result<Running> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
    let started = Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    // Peak RSS from /proc/<pid>/status VmHWM, sampled until the process is gone.
    // (wait4's ru_maxrss would count the pages the child shared with this big
    // process between fork and exec, and report this process's size instead.)
    let peak = Arc::new(AtomicU64::new(0));
    {
        let (peak, status) = (peak.clone(), format!("/proc/{}/status", child.id()));
        std::thread::spawn(move || {
            while let Ok(text) = std::fs::read_to_string(&status) {
                if text.contains("State:\tZ") {
                    break;
                }
                if let Some(kb) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kb * 1024, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let at = started.elapsed();
                if let Ok(mut l) = log.lock() {
                    l.lines.push((at, line));
                }
            }
        });
    }
    Ok(Running {
        child,
        started,
        log,
        name: name.to_string(),
        reaped: false,
        peak,
    })
}

impl Running {
    /// When a log line containing `needle` first appeared, counted from the start.
    pub fn first(&self, needle: &str) -> Option<Duration> {
        let log = self.log.lock().ok()?;
        log.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
    }

    /// Every captured line containing `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().map_or_else(
            |_| Vec::new(),
            |l| {
                l.lines
                    .iter()
                    .filter(|(_, line)| line.contains(needle))
                    .map(|(_, line)| line.clone())
                    .collect()
            },
        )
    }

    /// The last lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        self.log.lock().map_or_else(
            |_| String::new(),
            |l| {
                let start = l.lines.len().saturating_sub(n);
                l.lines[start..]
                    .iter()
                    .map(|(_, line)| line.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        )
    }

    /// Waits until a line containing `needle` appears, failing if the child exits
    /// or `timeout` passes first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.first(needle) {
                return Ok(at);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the child to stop (SIGTERM), as an operator would.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Reaps the child with `wait4`, which hands back its resource usage.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let pid = self.child.id() as libc::pid_t;
        let deadline = Instant::now() + timeout;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: a zeroed rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: pid is our child; status and usage point to live locals.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == pid {
                self.reaped = true;
                let wall = self.started.elapsed();
                let tv = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
                };
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -1
                };
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Ok(Finished {
                    code,
                    wall,
                    cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
                    peak_rss_bytes: self.peak.load(Ordering::Relaxed),
                    log: self.lines(""),
                });
            }
            if r < 0 {
                bail!(
                    "waiting for {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
            if Instant::now() > deadline {
                // SAFETY: as in `terminate`.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                bail!(
                    "{} did not finish within {timeout:?}:\n{}",
                    self.name,
                    self.tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
