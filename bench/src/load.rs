//! Where the CPU went during a run: the whole machine (`/proc/stat`) and this process's threads
//! grouped by name (`/proc/self/task/*/stat`), so a report can say which stage used the cores.
//!
//! Threads that exit during the run (the writers) are not listed by the kernel afterwards; their
//! time is the process's time minus that of the threads alive at both ends, reported as the
//! group [`EXITED_GROUP`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second in `/proc` (`USER_HZ`, 100 on every Linux architecture tandem runs
/// on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The group of threads that ended before the run did (the writers, when they are per run).
pub const EXITED_GROUP: &str = "exited (writers)";

/// Runs `work` and measures the CPU from `warmup` after its start to its end; `None` if `/proc`
/// could not be read.
pub fn during<T>(warmup: Duration, work: impl FnOnce() -> T) -> (T, Option<CpuUsage>) {
    std::thread::scope(|scope| {
        let sampler = std::thread::Builder::new()
            .name("cpu-sampler".to_string())
            .spawn_scoped(scope, move || {
                std::thread::sleep(warmup);
                CpuSnapshot::take().ok()
            });
        let result = work();
        let after = CpuSnapshot::take().ok();
        let before = sampler
            .ok()
            .and_then(|sampler| sampler.join().ok().flatten());
        let usage = before
            .zip(after)
            .map(|(before, after)| after.since(&before));
        (result, usage)
    })
}

/// User and system CPU time, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ticks {
    user: u64,
    system: u64,
}

impl Ticks {
    fn since(self, before: Self) -> Self {
        Self {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// The machine's CPU counters (first line of `/proc/stat`), in ticks.
#[derive(Clone, Copy, Debug, Default)]
struct MachineTicks {
    user: u64,
    system: u64,
    softirq: u64,
    irq: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
}

/// CPU counters at one moment.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    machine: MachineTicks,
    process: Ticks,
    threads: BTreeMap<u32, (String, Ticks)>,
}

impl CpuSnapshot {
    /// Reads the counters now. Fails only if `/proc` cannot be read.
    pub fn take() -> std::io::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            machine: read_machine()?,
            process: read_ticks("/proc/self/stat")?,
            threads: read_threads()?,
        })
    }

    /// What happened between `before` and this snapshot.
    pub fn since(&self, before: &Self) -> CpuUsage {
        let seconds = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds;
        let (now, then) = (self.machine, before.machine);
        let delta = |f: fn(&MachineTicks) -> u64| f(&now).saturating_sub(f(&then));
        let mut groups: BTreeMap<String, Ticks> = BTreeMap::new();
        let mut alive = Ticks::default();
        for (tid, (name, ticks)) in &self.threads {
            let Some((_, earlier)) = before.threads.get(tid) else {
                // Started during the run: all of its time is in the interval.
                let entry = groups.entry(group_of(name)).or_default();
                *entry = entry.add(*ticks);
                alive = alive.add(*ticks);
                continue;
            };
            let spent = ticks.since(*earlier);
            let entry = groups.entry(group_of(name)).or_default();
            *entry = entry.add(spent);
            alive = alive.add(spent);
        }
        let process = self.process.since(before.process);
        let exited = process.since(alive);
        if exited != Ticks::default() {
            groups.insert(EXITED_GROUP.to_string(), exited);
        }
        let machine_busy = cores(
            delta(|m| m.user) + delta(|m| m.system) + delta(|m| m.irq) + delta(|m| m.softirq),
        );
        CpuUsage {
            machine_busy_cores: machine_busy,
            machine_softirq_cores: cores(delta(|m| m.softirq)),
            machine_iowait_cores: cores(delta(|m| m.iowait)),
            machine_idle_cores: cores(delta(|m| m.idle)),
            machine_steal_cores: cores(delta(|m| m.steal)),
            process_cores: cores(process.user + process.system),
            outside_process_cores: (machine_busy - cores(process.user + process.system)).max(0.0),
            groups: groups
                .into_iter()
                .filter(|(_, ticks)| ticks.user + ticks.system > 0)
                .map(|(name, ticks)| GroupUsage {
                    name,
                    user_cores: cores(ticks.user),
                    system_cores: cores(ticks.system),
                })
                .collect(),
        }
    }
}

/// CPU use over an interval, in cores (1.0 = one core busy all the time).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUsage {
    /// The whole machine, busy (user, system, interrupts).
    pub machine_busy_cores: f64,
    /// The whole machine in soft interrupts (most of the loopback TCP receive path).
    pub machine_softirq_cores: f64,
    /// The whole machine idle while I/O was outstanding.
    pub machine_iowait_cores: f64,
    /// The whole machine idle.
    pub machine_idle_cores: f64,
    /// Stolen by the hypervisor.
    pub machine_steal_cores: f64,
    /// This process.
    pub process_cores: f64,
    /// Busy outside this process: kernel threads working for it (block I/O completion), other
    /// processes (fio on the NBD path, and anything else running on the machine: noise).
    pub outside_process_cores: f64,
    /// This process's threads by group, sorted by name.
    pub groups: Vec<GroupUsage>,
}

impl CpuUsage {
    /// One line: `machine 1.92 busy (softirq 0.21, iowait 0.03); primary-async 0.40u+0.31s, ...`.
    pub fn summary(&self) -> String {
        let mut groups: Vec<&GroupUsage> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.total_cores().total_cmp(&a.total_cores()));
        let threads: Vec<String> = groups
            .iter()
            .filter(|group| group.total_cores() >= 0.01)
            .map(|group| {
                format!(
                    "{} {:.2}u+{:.2}s",
                    group.name, group.user_cores, group.system_cores
                )
            })
            .collect();
        format!(
            "machine {:.2} busy (softirq {:.2}, iowait {:.2}, steal {:.2}); outside this \
             process {:.2}; process {:.2}: {}",
            self.machine_busy_cores,
            self.machine_softirq_cores,
            self.machine_iowait_cores,
            self.machine_steal_cores,
            self.outside_process_cores,
            self.process_cores,
            threads.join(", ")
        )
    }
}

/// CPU use of one group of threads.
#[derive(Clone, Debug, Serialize)]
pub struct GroupUsage {
    /// The thread name without its numeric suffix (`tandem-io-7` is in `tandem-io`).
    pub name: String,
    /// Cores in user mode.
    pub user_cores: f64,
    /// Cores in the kernel on behalf of these threads (system calls: socket and disk I/O).
    pub system_cores: f64,
}

impl GroupUsage {
    /// User plus system.
    pub fn total_cores(&self) -> f64 {
        self.user_cores + self.system_cores
    }
}

/// `tandem-io-7` → `tandem-io`; `primary-async` stays.
fn group_of(name: &str) -> String {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let trimmed = trimmed.strip_suffix('-').unwrap_or(trimmed);
    if trimmed.is_empty() {
        name.to_string()
    } else {
        trimmed.to_string()
    }
}

fn read_machine() -> std::io::Result<MachineTicks> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().unwrap_or_default();
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    Ok(MachineTicks {
        user: field(0) + field(1),
        system: field(2),
        idle: field(3),
        iowait: field(4),
        irq: field(5),
        softirq: field(6),
        steal: field(7),
    })
}

/// utime and stime of a `/proc/.../stat` file (fields 14 and 15; the name before them may hold
/// spaces, so fields are counted after its closing parenthesis).
fn read_ticks(path: &str) -> std::io::Result<Ticks> {
    let text = std::fs::read_to_string(path)?;
    let after_name = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let field = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Ticks {
        user: field(11),
        system: field(12),
    })
}

fn read_threads() -> std::io::Result<BTreeMap<u32, (String, Ticks)>> {
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        // A thread that exits while being read is simply left out.
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Ok(ticks) = read_ticks(&path.join("stat").to_string_lossy()) else {
            continue;
        };
        threads.insert(tid, (name.trim().to_string(), ticks));
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_numeric_suffixes() {
        assert_eq!(group_of("tandem-io-17"), "tandem-io");
        assert_eq!(group_of("primary-async"), "primary-async");
        assert_eq!(group_of("writer-3"), "writer");
        assert_eq!(group_of("42"), "42");
    }

    #[test]
    fn a_busy_thread_shows_up() {
        let before = CpuSnapshot::take().expect("proc");
        let spin = std::thread::Builder::new()
            .name("spinner-0".into())
            .spawn(|| {
                let started = Instant::now();
                let mut x = 0u64;
                while started.elapsed().as_millis() < 200 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(100));
        let during = CpuSnapshot::take().expect("proc");
        spin.join().expect("join");
        let usage = during.since(&before);
        assert!(
            usage.groups.iter().any(|g| g.name == "spinner"),
            "{usage:?}"
        );
        assert!(usage.process_cores > 0.0);
    }
}
