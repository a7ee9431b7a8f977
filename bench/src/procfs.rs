//! Reading /proc: process trees, resident memory (VmRSS) and CPU time of the proxy under test.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;
use tokio::time::Instant;

/// The pid and every descendant of it (children found through the ppid field of /proc/*/stat).
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(st) = read_stat(pid) {
                parent_of.insert(pid, st.ppid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        for (&child, &ppid) in &parent_of {
            if ppid == p && !tree.contains(&child) {
                tree.push(child);
            }
        }
        i += 1;
    }
    tree.retain(|&p| fs::metadata(format!("/proc/{p}")).is_ok());
    tree
}

struct Stat {
    ppid: u32,
    cpu_ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// VmRSS of one process in KiB (0 if it is gone).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sum of VmRSS (KiB) over the whole process tree of `root`.
pub(crate) fn tree_rss_kib(root: u32) -> u64 {
    process_tree(root).into_iter().map(rss_kib).sum()
}

/// Sum of utime+stime (clock ticks) over the whole process tree of `root`.
pub(crate) fn tree_cpu_ticks(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.cpu_ticks)
        .sum()
}

/// Like `tree_cpu_ticks`, plus the CPU time of `root`'s children that have exited and been
/// waited for (cutime+cstime: e.g. proxy instances started and stopped for one figure).
pub(crate) fn tree_cpu_ticks_with_reaped(root: u32) -> u64 {
    let reaped = fs::read_to_string(format!("/proc/{root}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 16 and 17 (cutime, cstime) are rest[13] and rest[14].
            Some(f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    tree_cpu_ticks(root) + reaped
}

/// CPU time (ns) the threads of the whole process tree of `root` have run, from each thread's
/// `/proc/PID/task/TID/schedstat` (nanosecond resolution, unlike the clock ticks of `stat`).
pub(crate) fn tree_cpu_ns(root: u32) -> u64 {
    process_tree(root).into_iter().map(process_cpu_ns).sum()
}

/// CPU time (ns) the threads of one process have run (its children left out).
pub(crate) fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Some(ns) = std::fs::read_to_string(path).ok().and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        }) {
            total += ns;
        }
    }
    total
}

/// Wait until the process tree stops using CPU: two consecutive 100 ms samples with at most
/// one clock tick of CPU time each. Returns false if that did not happen within `max`.
pub(crate) async fn wait_cpu_idle(root: u32, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    let mut last = tree_cpu_ticks(root);
    let mut quiet = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tree_cpu_ticks(root);
        if now.saturating_sub(last) <= 1 {
            quiet += 1;
            if quiet >= 2 {
                return true;
            }
        } else {
            quiet = 0;
        }
        last = now;
    }
    false
}

/// Machine-wide (busy, total) CPU clock ticks from the first line of /proc/stat
/// (busy: user, nice, system and steal time).
pub(crate) fn machine_cpu_ticks() -> (u64, u64) {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal. Interrupt time is left out of "busy":
    // loopback traffic is mostly softirq time that no process is charged for.
    let busy = at(0) + at(1) + at(2) + at(7);
    (busy, busy + at(3) + at(4) + at(5) + at(6))
}
