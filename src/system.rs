//! The few process-level system calls the broker makes: which CPUs it may
//! run on, resource limits, whether it runs as root. The lowest layer:
//! it imports nothing from the crate.
//!
//! rustix gives these as safe calls with typed results, instead of
//! hand-written `unsafe` libc blocks with zeroed structs.

use rustix::process::{geteuid, getrlimit, setrlimit, Resource, Rlimit};

/// A resource limit that the broker reads or raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// RLIMIT_MEMLOCK: glommio's registered io buffers.
    LockedMemory,
    /// RLIMIT_NOFILE: one fd per client connection.
    OpenFiles,
}

impl Limit {
    fn resource(self) -> Resource {
        match self {
            Limit::LockedMemory => Resource::Memlock,
            Limit::OpenFiles => Resource::Nofile,
        }
    }
}

/// A soft and hard limit; `u64::MAX` stands for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
}

/// The CPUs this process may run on (sched_getaffinity); every CPU if the
/// call fails.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1))
            .collect(),
    }
}

pub fn is_root() -> bool {
    geteuid().is_root()
}

pub fn limits(limit: Limit) -> Limits {
    let l = getrlimit(limit.resource());
    Limits {
        soft: l.current.unwrap_or(u64::MAX),
        hard: l.maximum.unwrap_or(u64::MAX),
    }
}

/// Sets both limits; false if the kernel refused (not root, above hard).
pub fn set_limits(limit: Limit, to: Limits) -> bool {
    let as_opt = |v: u64| (v != u64::MAX).then_some(v);
    setrlimit(
        limit.resource(),
        Rlimit {
            current: as_opt(to.soft),
            maximum: as_opt(to.hard),
        },
    )
    .is_ok()
}

/// Raises the soft limit to the hard one; returns the limits in force.
pub fn raise_soft_limit(limit: Limit) -> Limits {
    let l = limits(limit);
    if l.soft < l.hard
        && set_limits(
            limit,
            Limits {
                soft: l.hard,
                hard: l.hard,
            },
        )
    {
        return Limits {
            soft: l.hard,
            hard: l.hard,
        };
    }
    l
}

/// Writes past RLIMIT_FSIZE must fail with EFBIG (a disk error the broker
/// reports), not kill the process with SIGXFSZ.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no other effect.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Sends SIGTERM to this process: the main thread's signal handling turns
/// it into the normal shutdown.
pub fn terminate_self() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_may_run_somewhere() {
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn limits_read_back() {
        let l = limits(Limit::OpenFiles);
        assert!(l.soft <= l.hard);
        assert_eq!(raise_soft_limit(Limit::OpenFiles).soft, l.hard);
    }
}
