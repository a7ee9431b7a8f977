//! OS helpers: a cross-process monotonic clock, the open-file limit and signals.

use rustix::process::{kill_process, Pid, Resource, Rlimit, Signal};
use rustix::time::{clock_gettime, ClockId};

/// CLOCK_MONOTONIC in nanoseconds. The same clock in every process on the machine,
/// so times taken by workers and by the orchestrator can be subtracted.
pub(crate) fn now_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raise the soft open-file limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile_limit() -> u64 {
    let lim = rustix::process::getrlimit(Resource::Nofile);
    let new = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    if rustix::process::setrlimit(Resource::Nofile, new).is_ok() {
        lim.maximum.unwrap_or(u64::MAX)
    } else {
        lim.current.unwrap_or(u64::MAX)
    }
}

/// Send SIGTERM (or SIGKILL when `hard`) to one process by pid; errors (already gone) are ignored.
pub(crate) fn signal_pid(pid: u32, hard: bool) {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let sig = if hard { Signal::KILL } else { Signal::TERM };
    let _ = kill_process(p, sig);
}
