//! Durability: a sync seals the buffer, waits for every write before it,
//! fdatasyncs the files written and saves the consume position. The group
//! commit (`CoreStorage::sync`) takes in every queue written since its last
//! round and runs this for each.

use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::DmaFile;

use super::cursor::ConsumeMark;
use super::{Inner, QueueShared};
use crate::storage::StorageError;

/// What the group commit needs to know of a queue.
#[derive(Default)]
pub(super) struct SyncState {
    /// Puts and FINs since the last sync (--sync-every).
    pub ops: u64,
    /// In the group commit's list for the next round.
    pub in_sync_list: bool,
}

/// A file with completed writes no fdatasync has covered yet.
struct Unsynced {
    ord: u64,
    writes: u64,
    path: PathBuf,
    file: Rc<DmaFile>,
}

impl QueueShared {
    pub(super) fn mark_dirty(self: &Rc<Self>, inner: &mut Inner) {
        if !inner.sync.in_sync_list {
            inner.sync.in_sync_list = true;
            self.ctx.sync.add(self.clone());
        }
        if inner.sync.ops >= self.ctx.config.sync_every.max(1) {
            self.ctx.sync.request();
        }
    }

    /// A pop or FIN: the meta is saved in the next round if the consume
    /// position moved.
    pub(super) fn after_consume(self: &Rc<Self>) {
        let mut inner = self.inner.borrow_mut();
        if inner.meta.saved != Some(inner.consume_mark().pos) {
            self.mark_dirty(&mut inner);
        }
    }

    /// The position a topic's meta may save once the channels it handed
    /// messages to are synced (group commit, before the channel phase).
    pub fn consume_snapshot(&self) -> ConsumeMark {
        self.inner.borrow().consume_mark()
    }

    /// A failed sync: the queue stays in the next round.
    pub fn still_dirty(self: &Rc<Self>) {
        let mut inner = self.inner.borrow_mut();
        inner.sync.in_sync_list = false;
        self.mark_dirty(&mut inner);
    }

    /// Taken into a sync round: later appends must join the next one.
    pub fn taken_for_sync(&self) {
        self.inner.borrow_mut().sync.in_sync_list = false;
    }

    /// Makes everything appended so far durable: seals the buffer, waits for
    /// every write, fdatasyncs the files written, saves the consume position.
    pub async fn sync(self: &Rc<Self>, force_meta: bool) -> Result<(), StorageError> {
        self.sync_at(force_meta, None).await
    }

    /// `sync`, saving `meta_at` (a topic's snapshot) instead of the current
    /// consume position.
    pub async fn sync_at(
        self: &Rc<Self>,
        force_meta: bool,
        meta_at: Option<ConsumeMark>,
    ) -> Result<(), StorageError> {
        let (target, epoch, end) = {
            let mut inner = self.inner.borrow_mut();
            inner.sync = SyncState::default();
            inner.seal();
            (inner.writer.last_seq(), inner.epoch, inner.end_mark())
        };
        self.wake_io();
        if !self.wait_written(target, epoch).await? {
            return Ok(()); // emptied meanwhile
        }
        self.fdatasync_written(epoch).await?;
        {
            let mut inner = self.inner.borrow_mut();
            if inner.epoch == epoch {
                inner.meta.synced_to(end);
            }
        }
        self.save_meta(force_meta, meta_at, end).await
    }

    /// Waits until every write up to `target` completed. False when the
    /// queue was emptied meanwhile.
    async fn wait_written(&self, target: u64, epoch: u64) -> Result<bool, StorageError> {
        loop {
            let seen = self.progress.generation();
            {
                let inner = self.inner.borrow();
                if inner.epoch != epoch {
                    return Ok(false);
                }
                if inner.writer.done_through >= target {
                    return Ok(true);
                }
                if let Some(err) = &inner.writer.failed {
                    return Err(err.clone());
                }
            }
            self.progress.changed(seen).await;
        }
    }

    /// fdatasyncs every file with writes not covered yet, concurrently.
    async fn fdatasync_written(&self, epoch: u64) -> Result<(), StorageError> {
        let files: Vec<Unsynced> = {
            let inner = self.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|s| s.writes > s.synced_writes)
                .filter_map(|s| {
                    let file = s.file.clone()?;
                    Some(Unsynced {
                        ord: s.ord,
                        writes: s.writes,
                        path: s.path.clone(),
                        file,
                    })
                })
                .collect()
        };
        let results = futures::future::join_all(files.iter().map(|u| u.file.fdatasync())).await;
        for (u, r) in files.iter().zip(results) {
            if let Err(e) = r {
                // Not marked synced: the next round syncs this file again.
                let err = StorageError::glommio("syncing", &u.path, e);
                tracing::error!(queue = %self.name, error = %err, "fdatasync failed");
                return Err(err);
            }
            let mut inner = self.inner.borrow_mut();
            if inner.epoch == epoch {
                if let Some(seg) = inner.segments.get_mut(u.ord) {
                    seg.synced_writes = seg.synced_writes.max(u.writes);
                }
            }
        }
        Ok(())
    }
}
