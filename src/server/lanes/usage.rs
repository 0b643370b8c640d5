//! What the lanes' balancer reads of the machine: each lane thread's CPU time and its time spent
//! waiting for a CPU (the thread's `schedstat`), and the CPU time nobody used on the CPUs this
//! process may run on (their idle time in `/proc/stat`), within its cgroup's CPU quota.
//!
//! Linux's `/proc` and `/sys/fs/cgroup` only. Where they cannot be read (another system, a
//! kernel without schedstats) nothing is measured, and the lanes all stay open, as they start
//! there.

use std::path::Path;
use std::time::Duration;

/// A thread's CPU time and the time it was ready to run but waited for a CPU, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadTimes {
    pub(crate) running: Duration,
    pub(crate) waiting: Duration,
}

/// The calling thread's id, as `/proc` names it (`/proc/thread-self` links to `PID/task/TID`).
pub(crate) fn current_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// The times of this process's thread `tid`.
pub(crate) fn thread_times(tid: u32) -> Option<ThreadTimes> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse_schedstat(&text)
}

/// `schedstat`: nanoseconds on a CPU, nanoseconds waiting on a run queue, time slices.
fn parse_schedstat(text: &str) -> Option<ThreadTimes> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let running = fields.next()?.ok()?;
    let waiting = fields.next()?.ok()?;
    Some(ThreadTimes {
        running: Duration::from_nanos(running),
        waiting: Duration::from_nanos(waiting),
    })
}

/// Where the CPUs' clock stood at one moment, in the kernel's ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuClock {
    /// Idle (and I/O-wait) ticks of the CPUs this process may use, summed.
    idle: u64,
    /// All ticks of those CPUs, summed.
    total: u64,
    /// How many CPUs are summed.
    cpus: u64,
    /// The ticks this process has run (user and system).
    process: u64,
}

impl CpuClock {
    /// Reads the clock now, for the CPUs in this process's affinity list (all when unknown).
    pub(crate) fn read(machine: &Machine) -> Option<CpuClock> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (idle, total, cpus) = parse_proc_stat(&stat, machine.cpus.as_deref())?;
        Some(CpuClock {
            idle,
            total,
            cpus,
            process: parse_process_ticks(&own)?,
        })
    }

    /// CPUs' worth of time left unused between `earlier` and `self`: the idle time of the CPUs
    /// this process may use, and no more than what its quota leaves beside its own use.
    pub(crate) fn free_since(&self, earlier: &CpuClock, machine: &Machine) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        if total == 0 || self.cpus == 0 {
            return None;
        }
        // One CPU's ticks over the interval.
        let per_cpu = total as f64 / self.cpus as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64 / per_cpu;
        let Some(quota) = machine.quota else {
            return Some(idle);
        };
        let used = self.process.saturating_sub(earlier.process) as f64 / per_cpu;
        Some(idle.min((quota - used).max(0.0)))
    }
}

/// What stays the same about the machine while serving: which CPUs, and the CPU quota.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Machine {
    /// The CPUs this process may run on; `None`: all.
    cpus: Option<Vec<usize>>,
    /// The cgroup's CPU quota in CPUs, if it has one.
    quota: Option<f64>,
}

impl Machine {
    pub(crate) fn read() -> Machine {
        let cpus = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| parse_allowed_cpus(&status));
        Machine {
            cpus,
            quota: read_quota(Path::new("/sys/fs/cgroup")),
        }
    }
}

/// `Cpus_allowed_list` of `/proc/self/status`: `0-3,8,10-11`.
fn parse_allowed_cpus(status: &str) -> Option<Vec<usize>> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if last < first || last - first > 1 << 16 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Sums the `cpuN` lines of `/proc/stat` for `cpus` (all when `None`): idle ticks (idle and
/// iowait), all ticks (user to steal; guest time is in user already), and how many CPUs.
fn parse_proc_stat(stat: &str, cpus: Option<&[usize]>) -> Option<(u64, u64, u64)> {
    let (mut idle, mut total, mut count) = (0u64, 0u64, 0u64);
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        // The first `cpu` line, without a number, is all CPUs together.
        let Some((number, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(cpu) = number.parse::<usize>() else {
            continue;
        };
        let fields = rest.split_ascii_whitespace();
        if cpus.is_some_and(|list| !list.contains(&cpu)) {
            continue;
        }
        let ticks: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
        if ticks.len() < 5 {
            return None;
        }
        idle += ticks[3] + ticks[4];
        total += ticks.iter().sum::<u64>();
        count += 1;
    }
    (count > 0).then_some((idle, total, count))
}

/// utime + stime of `/proc/self/stat` (fields 14 and 15; the name before them may hold spaces).
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The CPU quota of the cgroup mounted at `root` (a container's own, as Docker and Kubernetes
/// mount it): cgroup v2's `cpu.max`, else v1's `cpu.cfs_quota_us` over `cpu.cfs_period_us`.
fn read_quota(root: &Path) -> Option<f64> {
    if let Ok(max) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cpu_max(&max);
    }
    let quota = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// `cpu.max`: `max 100000` (no quota) or `150000 100000` (1.5 CPUs).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_ascii_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  300 0 100 600 0 0 0 0 0 0\n\
                        cpu0 100 0 50 200 50 0 0 0 0 0\n\
                        cpu1 200 0 50 350 0 0 0 0 0 0\n\
                        intr 12345 0 0\n\
                        ctxt 999\n";

    #[test]
    fn proc_stat_sums_the_allowed_cpus() {
        assert_eq!(parse_proc_stat(STAT, None), Some((600, 1000, 2)));
        assert_eq!(parse_proc_stat(STAT, Some(&[1])), Some((350, 600, 1)));
        assert_eq!(parse_proc_stat(STAT, Some(&[7])), None);
        assert_eq!(parse_proc_stat("cpu0 1 2\n", None), None);
    }

    #[test]
    fn free_cpus_are_idle_time_within_the_quota() {
        let before = CpuClock {
            idle: 1_000,
            total: 2_000,
            cpus: 2,
            process: 100,
        };
        // 200 ticks per CPU went by; 150 of the 400 were idle: 0.75 of a CPU.
        let after = CpuClock {
            idle: 1_150,
            total: 2_400,
            cpus: 2,
            process: 300,
        };
        let free = |quota| after.free_since(&before, &Machine { cpus: None, quota });
        assert_eq!(free(None), Some(0.75));
        // The process ran 200 ticks, one CPU's worth: a quota of 1.5 leaves half a CPU.
        assert_eq!(free(Some(1.5)), Some(0.5));
        assert_eq!(free(Some(0.8)), Some(0.0));
        assert_eq!(before.free_since(&after, &Machine::default()), None);
    }

    #[test]
    fn allowed_cpu_lists_and_quotas_are_read() {
        let status = "Name:\tferry\nCpus_allowed:\tf\nCpus_allowed_list:\t0-2,5,7-8\n";
        assert_eq!(parse_allowed_cpus(status), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_allowed_cpus("Cpus_allowed_list:\t3-1\n"), None);
        assert_eq!(parse_allowed_cpus("Name:\tferry\n"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
    }

    #[test]
    fn thread_and_process_times_are_read() {
        assert_eq!(
            parse_schedstat("1500000 250000 42\n"),
            Some(ThreadTimes {
                running: Duration::from_micros(1500),
                waiting: Duration::from_micros(250),
            })
        );
        assert_eq!(parse_schedstat("12\n"), None);
        let stat = "4242 (ferry (serve) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 731 129 0 0 20 0";
        assert_eq!(parse_process_ticks(stat), Some(860));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_can_be_read() {
        let tid = current_thread_id().expect("/proc/thread-self");
        let times = thread_times(tid).expect("the thread's schedstat");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let later = thread_times(tid).expect("the thread's schedstat");
        assert!(later.running > times.running, "{times:?} then {later:?}");
        let machine = Machine::read();
        let clock = CpuClock::read(&machine).expect("/proc/stat");
        assert!(clock.cpus >= 1 && clock.total >= clock.idle, "{clock:?}");
    }
}
