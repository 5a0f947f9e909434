//! A core's own counters and the snapshot of them that /metrics merges.
//! They live here, beside the /stats snapshots, so that every layer that
//! bumps or carries them (conn, runtime, metrics) imports downward.

use std::cell::Cell;

/// Counters a core bumps on its own data path (plain cells: one thread).
#[derive(Default)]
pub struct CoreCounters {
    pub forwarded_batches: Cell<u64>,
    pub forwarded_messages: Cell<u64>,
    pub received_batches: Cell<u64>,
    pub received_messages: Cell<u64>,
    pub handoffs_out: Cell<u64>,
    pub handoffs_in: Cell<u64>,
    /// glommio hands out io_uring statistics as deltas; these are running
    /// totals of what it reported.
    pub io_ops: Cell<u64>,
    pub file_bytes_written: Cell<u64>,
    pub tasks_executed: Cell<u64>,
}

impl CoreCounters {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }
}

/// A core's figures at one moment, sent to whichever core serves /metrics.
#[derive(Debug, Clone, Default)]
pub struct CoreSnapshot {
    pub core: usize,
    pub forwarded_batches: u64,
    pub forwarded_messages: u64,
    pub received_batches: u64,
    pub received_messages: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    /// Items waiting in this core's outgoing rings.
    pub ring_occupancy: u64,
    pub io_ops: u64,
    pub file_bytes_written: u64,
    pub tasks_executed: u64,
    pub connections: u64,
    /// Bytes waiting for the disk.
    pub disk_unwritten_bytes: u64,
    pub disk_sync: crate::storage::SyncFigures,
}

impl CoreCounters {
    /// Folds in what glommio accumulated since the last call, then snapshots.
    pub fn snapshot(&self, core: usize) -> CoreSnapshot {
        let io = glommio::executor().io_stats();
        let ring = io.all_rings();
        Self::add(&self.io_ops, ring.io_latency_us().count() as u64);
        Self::add(&self.file_bytes_written, ring.file_writes().1);
        Self::add(
            &self.tasks_executed,
            glommio::executor().executor_stats().tasks_executed(),
        );
        CoreSnapshot {
            core,
            forwarded_batches: self.forwarded_batches.get(),
            forwarded_messages: self.forwarded_messages.get(),
            received_batches: self.received_batches.get(),
            received_messages: self.received_messages.get(),
            handoffs_out: self.handoffs_out.get(),
            handoffs_in: self.handoffs_in.get(),
            io_ops: self.io_ops.get(),
            file_bytes_written: self.file_bytes_written.get(),
            tasks_executed: self.tasks_executed.get(),
            ..CoreSnapshot::default()
        }
    }
}
