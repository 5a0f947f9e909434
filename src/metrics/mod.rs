//! Beyond nsqd: Prometheus text at `GET /metrics` and nsqd's statsd push
//! (S1, S2).

pub mod prometheus;
pub mod statsd;

/// The allocator's view of the heap, in nsqd's terms (H12): bytes handed
/// out (arenas plus mmapped blocks) and bytes held free in the arenas.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapFigures {
    pub in_use_bytes: u64,
    pub idle_bytes: u64,
}

pub fn heap() -> HeapFigures {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    HeapFigures {
        in_use_bytes: (m.uordblks + m.hblkhd) as u64,
        idle_bytes: m.fordblks as u64,
    }
}

/// The broker's resident set size in bytes (/proc/self/statm).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
