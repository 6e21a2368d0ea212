//! CPU seconds of the processes beside the pipeline, the broker and PostgreSQL,
//! read from `/proc` before and after a step, so that the table can show each
//! process's share of the CPU a step cost on a machine they all share.
//!
//! PostgreSQL is its postmaster and every process under it: the CPU of the live
//! ones, plus what the postmaster's reaped children used (`cutime`, `cstime`), so
//! that a backend ending during the step still counts. The postmaster is found as
//! the parent of this benchmark's own backend: where it is not a local process
//! (PostgreSQL elsewhere), its figures are not known and say so.

use std::time::Duration;

/// The processes whose CPU is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracked {
    pub broker: Option<i32>,
    pub postmaster: Option<i32>,
}

/// CPU used so far: (broker, PostgreSQL).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    broker: Option<Duration>,
    postgres: Option<Duration>,
}

/// CPU a step cost, per process, in seconds (`None`: not measured).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Shares {
    pub pipeline_s: f64,
    pub broker_s: Option<f64>,
    pub postgres_s: Option<f64>,
}

impl Shares {
    /// The pipeline's share of the CPU the three processes used, when all are known.
    pub fn pipeline_share(&self) -> Option<f64> {
        let total = self.pipeline_s + self.broker_s? + self.postgres_s?;
        (total > 0.0).then(|| self.pipeline_s / total)
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: (ppid, utime + stime,
/// cutime + cstime), in clock ticks.
fn stat(pid: i32) -> Option<(i32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses one `/proc/<pid>/stat` line. The command name is in parentheses and may
/// hold spaces and parentheses itself: the fields start after the last `)`.
fn parse_stat(text: &str) -> Option<(i32, u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is the state (field 3); ppid is field 4, utime..cstime fields 14..17.
    let num = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    let ppid = f.get(1)?.parse().ok()?;
    Some((ppid, num(14)? + num(15)?, num(16)? + num(17)?))
}

/// User + system CPU this process has used so far (all its threads), to the
/// microsecond (`/proc` counts in clock ticks, too coarse for a short step).
pub fn own_cpu() -> Option<Duration> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

fn ticks(t: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(t * 1_000_000 / hz)
}

/// CPU of a process and every live process under it, plus its reaped children's.
fn tree_cpu(root: i32) -> Option<Duration> {
    let (_, own, reaped) = stat(root)?;
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((ppid, cpu, _)) = stat(pid)
            && ppid == root
        {
            total += cpu;
        }
    }
    Some(ticks(total))
}

impl Tracked {
    /// The postmaster of the backend `backend_pid`, if it runs on this machine.
    pub fn postmaster_of(backend_pid: i32) -> Option<i32> {
        let comm = std::fs::read_to_string(format!("/proc/{backend_pid}/comm")).ok()?;
        if !comm.starts_with("postgres") {
            return None;
        }
        stat(backend_pid).map(|(ppid, _, _)| ppid)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            broker: self.broker.and_then(tree_cpu),
            postgres: self.postmaster.and_then(tree_cpu),
        }
    }
}

impl Snapshot {
    /// What each process used since `self`, beside the pipeline's `pipeline` CPU.
    pub fn shares_until(&self, later: &Snapshot, pipeline: Duration) -> Shares {
        let diff =
            |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?).as_secs_f64());
        Shares {
            pipeline_s: pipeline.as_secs_f64(),
            broker_s: diff(self.broker, later.broker),
            postgres_s: diff(self.postgres, later.postgres),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let line = "4242 (tokio (runtime) x) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 9 0 1000 1000000 200";
        assert_eq!(parse_stat(line), Some((17, 300, 10)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_measured_and_the_share_needs_every_figure() {
        let me = std::process::id() as i32;
        let before = tree_cpu(me).expect("own /proc entry");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(tree_cpu(me).unwrap() >= before);
        let own = own_cpu().expect("getrusage");
        let mut y = 0u64;
        for i in 0..20_000_000u64 {
            y = std::hint::black_box(y.wrapping_mul(31).wrapping_add(i));
        }
        assert!(y != 1);
        assert!(own_cpu().unwrap() > own, "the loop's CPU is counted");
        let shares = Shares {
            pipeline_s: 1.0,
            broker_s: Some(2.0),
            postgres_s: Some(1.0),
        };
        assert_eq!(shares.pipeline_share(), Some(0.25));
        let unknown = Shares {
            postgres_s: None,
            ..shares
        };
        assert_eq!(unknown.pipeline_share(), None);
    }
}
