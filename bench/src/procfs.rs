//! Resident memory and CPU time of a process, read from `/proc/PID/status` and
//! `/proc/PID/stat`, or of some of its threads (`/proc/PID/task/TID/stat`) when the
//! node runs inside the harness's own process.

use std::time::Instant;

use anyhow::Context;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Resident set size, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size, bytes (`VmHWM`).
    pub hwm_bytes: u64,
    /// User plus system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Reads process `pid`.
///
/// # Errors
/// When the process is gone or `/proc` is unreadable.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("while reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("while reading /proc/{pid}/stat"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(Sample {
        at,
        rss_bytes: kib("VmRSS:"),
        hwm_bytes: kib("VmHWM:"),
        cpu_ticks: cpu_ticks(&stat),
        fds,
    })
}

/// [`sample`] with the CPU time of only those threads of `pid` whose name
/// (`/proc/PID/task/TID/comm`) `select` accepts; memory and descriptors stay the whole
/// process's, which threads do not own apart. A thread that ended took its ticks with
/// it, so this counts long-lived threads (every node thread is one).
///
/// # Errors
/// As [`sample`].
pub fn sample_threads(pid: u32, select: impl Fn(&str) -> bool) -> anyhow::Result<Sample> {
    let mut whole = sample(pid)?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("while listing /proc/{pid}/task"))?;
    let mut ticks = 0;
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if select(comm.trim_end()) {
            if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
                ticks += cpu_ticks(&stat);
            }
        }
    }
    whole.cpu_ticks = ticks;
    Ok(whole)
}

/// User plus system time from one `stat` line. The command name (field 2) may contain
/// spaces; fields after the last ')' are fixed: utime is field 14 and stime field 15 of
/// the whole line.
fn cpu_ticks(stat: &str) -> u64 {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux default, if that fails).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t: &u64| *t > 0)
        .unwrap_or(100)
}

/// CPU used between two samples, in cores (1.0 = one core busy all the time).
pub fn cores_between(before: &Sample, after: &Sample, ticks_per_second: u64) -> f64 {
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    let cpu = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_second as f64;
    cpu / wall
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.fds > 0);
    }

    #[test]
    fn a_busy_thread_is_counted_only_under_its_own_name() {
        let (spun, spun_rx) = std::sync::mpsc::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let spinner = std::thread::Builder::new()
            .name("spin-probe".into())
            .spawn(move || {
                let until = Instant::now() + std::time::Duration::from_millis(300);
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                spun.send(()).ok();
                // Stays alive: an ended thread's ticks leave /proc/PID/task with it.
                release_rx.recv().ok();
            })
            .unwrap();
        spun_rx.recv().unwrap();
        let pid = std::process::id();
        let spinning = sample_threads(pid, |name| name == "spin-probe").unwrap();
        let nobody = sample_threads(pid, |_| false).unwrap();
        release.send(()).unwrap();
        spinner.join().unwrap();
        // 300 ms of spinning is about 30 ticks at 100 Hz.
        assert!(spinning.cpu_ticks >= 10, "{spinning:?}");
        assert_eq!(nobody.cpu_ticks, 0);
    }
}
