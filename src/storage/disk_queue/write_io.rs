//! The writer's io: sealed buffers become direct writes, up to eight in
//! flight, into segment files created (header, directory sync) and
//! preallocated on the way. A failed or short write keeps its buffer for
//! the retry, and the queue reports failing until every one succeeded.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaFile;

use super::files::{open_rw, sync_dir, OWN_BASE};
use super::writer::{Job, MAX_PREALLOC_STEP};
use super::QueueShared;
use crate::storage::record::{self, align_up, HEADER_LEN};
use crate::storage::StorageError;

/// The file a job writes, with its path (for errors).
struct Target {
    file: Rc<DmaFile>,
    path: PathBuf,
}

impl QueueShared {
    /// Submits sealed buffers until eight are in flight or a file cannot
    /// be made ready (then the queue is failing and retries).
    pub(super) async fn submit_writes(self: &Rc<Self>) {
        loop {
            let job = self.inner.borrow_mut().writer.next_job();
            let Some(job) = job else { break };
            if !self.submit(job).await {
                break;
            }
        }
    }

    /// Starts one write; false when its file could not be made ready.
    async fn submit(self: &Rc<Self>, job: Job) -> bool {
        let (epoch, gone) = {
            let inner = self.inner.borrow();
            (inner.epoch, inner.segments.get(job.ord).is_none())
        };
        if gone {
            // Consumed and deleted before its last write went out.
            self.inner.borrow_mut().writer.in_flight += 1;
            self.complete_write(job, epoch, Ok(()));
            return true;
        }
        let until = job.off + job.buf.len() as u64;
        let target = self.file_for_write(job.ord, until).await;
        if self.inner.borrow().epoch != epoch {
            // Emptied or deleted meanwhile: this write is not wanted.
            self.ctx.sub_unwritten(job.buf.len() as u64);
            return true;
        }
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                self.inner.borrow_mut().writer.retry_later(job);
                self.fail(e);
                return false;
            }
        };
        self.inner.borrow_mut().writer.in_flight += 1;
        match target {
            None => self.complete_write(job, epoch, Ok(())),
            Some(target) => self.spawn_write(target, job, epoch),
        }
        true
    }

    fn spawn_write(self: &Rc<Self>, target: Target, job: Job, epoch: u64) {
        let q = self.clone();
        let inflight = self.inner.borrow().writer.in_flight;
        glommio::spawn_local(async move {
            let t0 = std::time::Instant::now();
            let r = write_all(&target, &job).await;
            tracing::trace!(
                len = job.buf.len(),
                off = job.off,
                inflight,
                us = t0.elapsed().as_micros() as u64,
                "write done"
            );
            q.complete_write(job, epoch, r);
        })
        .detach();
    }

    fn complete_write(self: &Rc<Self>, job: Job, epoch: u64, result: Result<(), StorageError>) {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        if inner.epoch != epoch {
            self.ctx.sub_unwritten(job.buf.len() as u64);
            return;
        }
        inner.writer.in_flight -= 1;
        match result {
            Ok(()) => {
                self.ctx.sub_unwritten(job.buf.len() as u64);
                if inner.writer.write_done(&job, &mut inner.segments) {
                    tracing::info!(queue = %self.name, "disk writes work again");
                    self.ctx.health.recover();
                    // A topic stopped handing messages to this channel.
                    self.ctx.refilled(&self.name);
                }
            }
            Err(e) => {
                inner.writer.retry_later(job);
                drop(guard);
                self.fail(e);
            }
        }
        self.progress.notify();
        self.work.notify();
    }

    fn fail(self: &Rc<Self>, err: StorageError) {
        let mut inner = self.inner.borrow_mut();
        if inner.writer.failed.is_none() {
            tracing::error!(queue = %self.name, error = %err, "disk queue failing; retrying");
            self.ctx.health.fail(&err.to_string());
            inner.writer.failed = Some(err);
        }
        drop(inner);
        self.progress.notify();
    }

    /// Opens (creating and preallocating as needed) the file a job writes.
    /// None: the segment is gone (consumed and deleted, or the queue was
    /// emptied) and the write is not needed any more.
    async fn file_for_write(
        self: &Rc<Self>,
        ord: u64,
        until: u64,
    ) -> Result<Option<Target>, StorageError> {
        let (path, existing, preallocated, epoch) = {
            let inner = self.inner.borrow();
            let Some(seg) = inner.segments.get(ord) else {
                return Ok(None);
            };
            (
                seg.path.clone(),
                seg.file.clone(),
                seg.preallocated,
                inner.epoch,
            )
        };
        let file = match existing {
            Some(f) => f,
            None => match self.create_segment_file(ord, epoch, &path).await? {
                Some(f) => f,
                None => return Ok(None),
            },
        };
        if until > preallocated {
            self.preallocate(&file, ord, until).await;
        }
        Ok(Some(Target { file, path }))
    }

    /// Creates segment `ord`'s file with its header. None: consumers
    /// finished the whole segment before its file existed, or
    /// /channel/empty or a delete dropped it meanwhile.
    async fn create_segment_file(
        self: &Rc<Self>,
        ord: u64,
        epoch: u64,
        path: &Path,
    ) -> Result<Option<Rc<DmaFile>>, StorageError> {
        let created = self
            .open_segment(ord, epoch, path, async {
                let f = open_rw(path).await?;
                write_header(&f, path, ord - OWN_BASE).await?;
                sync_dir(&self.ctx.config.dir).await;
                Ok::<_, StorageError>(f)
            })
            .await;
        let Some(created) = created else {
            return Ok(None);
        };
        let f = Rc::new(created?);
        if let Some(seg) = self.inner.borrow_mut().segments.get_mut(ord) {
            seg.file = Some(f.clone());
        }
        Ok(Some(f))
    }

    /// Grows the file ahead of the writes (only a speed-up: a failure
    /// shows again at the write).
    async fn preallocate(&self, file: &DmaFile, ord: u64, until: u64) {
        let step = self.inner.borrow().writer.prealloc_step;
        let want = (until + step).min(self.ctx.config.max_bytes_per_file.max(until));
        let want = align_up(want);
        if file.pre_allocate(want, false).await.is_ok() {
            let mut inner = self.inner.borrow_mut();
            inner.writer.prealloc_step = (step * 2).min(MAX_PREALLOC_STEP);
            if let Some(seg) = inner.segments.get_mut(ord) {
                seg.preallocated = want;
            }
        }
    }
}

async fn write_header(f: &DmaFile, path: &Path, num: u64) -> Result<(), StorageError> {
    let mut head = f.alloc_dma_buffer(HEADER_LEN as usize);
    record::encode_header(head.as_bytes_mut(), num);
    let n = f
        .write_at(head, 0)
        .await
        .map_err(|e| StorageError::glommio("writing", path, e))?;
    if n < HEADER_LEN as usize {
        return Err(StorageError::ShortWrite {
            path: path.to_path_buf(),
            written: n,
            wanted: HEADER_LEN as usize,
        });
    }
    Ok(())
}

/// A short write is a failure too: rewritten whole.
async fn write_all(target: &Target, job: &Job) -> Result<(), StorageError> {
    let wanted = job.buf.len();
    match target.file.write_rc_at(job.buf.clone(), job.off).await {
        Ok(n) if n >= wanted => Ok(()),
        Ok(n) => Err(StorageError::ShortWrite {
            path: target.path.clone(),
            written: n,
            wanted,
        }),
        Err(e) => Err(StorageError::glommio("writing", &target.path, e)),
    }
}
