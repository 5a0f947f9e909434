//! File names and listings, and the file-system calls a queue makes besides
//! its reads and writes: opening, directory syncs, removals. Those that run
//! on a core go through glommio's io_uring or its blocking pool; the plain
//! `std::fs` ones here are for start-up's pool thread and offline tools.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::{Inner, QueueShared};
use crate::storage::notify::Notify;
use crate::storage::record::{self, DiskPos, HEADER_LEN};
use crate::storage::{nsqd_import, StorageError};

/// Segment ordinals: imported nsqd files keep their numbers (below this),
/// ringsq's own start here, so positions order the whole queue.
pub const OWN_BASE: u64 = 1 << 40;

pub fn segment_path(dir: &Path, name: &str, num: u64) -> PathBuf {
    dir.join(format!("{name}.ringsq.{num:06}.dat"))
}

pub fn meta_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.ringsq.meta.dat"))
}

/// The number of the next new segment: past the last file on disk and past
/// the saved consume position, even when every file before it is gone (or
/// the next start would take the new segments for consumed).
pub(crate) fn next_number(last_file: Option<u64>, saved: Option<(u64, DiskPos)>) -> u64 {
    let after_file = last_file.map_or(1, |n| n + 1);
    match saved {
        Some((_, pos)) if pos.seg >= OWN_BASE => after_file.max(pos.seg - OWN_BASE + 1),
        _ => after_file,
    }
}

/// Whether ringsq has any file of its own for the queue (meta or segment).
pub fn has_own_files(dir: &Path, name: &str) -> Result<bool, StorageError> {
    Ok(meta_path(dir, name).exists() || !own_segments(dir, name)?.is_empty())
}

/// This queue's own segment files, by number.
pub(crate) fn own_segments(dir: &Path, name: &str) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    numbered_files(dir, &format!("{name}.ringsq."))
}

/// The files `<prefix>NNNNNN.dat` (six digits or more) in `dir`, by number:
/// ringsq's segments and nsqd's diskqueue files are both named so.
pub(crate) fn numbered_files(
    dir: &Path,
    prefix: &str,
) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(num) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|r| r.strip_suffix(".dat"))
        else {
            continue;
        };
        if num.len() >= 6 && num.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(num) = num.parse() {
                out.push((num, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Where a ringsq segment's records start, from its header (blocking).
pub(crate) fn read_header(path: &Path) -> Result<u64, StorageError> {
    let mut head = [0u8; HEADER_LEN as usize];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| StorageError::io("reading", path, e))?;
    record::check_header(&head).map_err(|source| StorageError::Header {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a file (blocking: start-up's pool thread, offline tools).
pub(crate) fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
        }
    }
}

/// Removes a file from a core (the unlink runs on glommio's blocking pool).
async fn remove_async(path: &Path) {
    if let Err(e) = glommio::io::remove(path).await {
        let e = std::io::Error::from(e);
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
        }
    }
}

/// Makes a new file's directory entry durable (a crash must not lose the
/// file itself). Rare: once per segment and meta file.
pub(super) async fn sync_dir(dir: &Path) {
    let synced = async {
        let d = Directory::open(dir).await?;
        let r = d.sync().await;
        let _ = d.close().await;
        r
    };
    if let Err(e) = synced.await {
        let e = StorageError::glommio("syncing", dir, e);
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the data directory");
    }
}

pub(super) async fn open_rw(path: &Path) -> Result<DmaFile, StorageError> {
    // Read+write: glommio probes iopoll with a read (glommio-notes).
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::glommio("opening", path, e))
}

/// Closes a file asynchronously once its last user lets go.
pub(super) fn close_later(file: Option<Rc<DmaFile>>) {
    if let Some(f) = file {
        glommio::spawn_local(async move {
            let _ = f.close_rc().await;
        })
        .detach();
    }
}

/// The files of one core being opened or removed right now. Nothing may
/// delete a path while it is being opened (glommio's open panics when the
/// file vanishes under it; the last opener deletes it itself if its segment
/// went away meanwhile), and a queue re-created under the same name must
/// not pick a number whose open or removal is still under way.
#[derive(Default)]
pub struct BusyPaths {
    /// With how many opens of each are under way.
    opening: RefCell<HashMap<PathBuf, u32>>,
    /// With how many removals of each are under way.
    removing: RefCell<HashMap<PathBuf, u32>>,
    removed: Notify,
}

impl BusyPaths {
    fn begin_opening(&self, path: &Path) {
        *self
            .opening
            .borrow_mut()
            .entry(path.to_path_buf())
            .or_insert(0) += 1;
    }

    /// True when no other open of `path` is under way.
    fn end_opening(&self, path: &Path) -> bool {
        let mut opening = self.opening.borrow_mut();
        match opening.get_mut(path) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                opening.remove(path);
                true
            }
        }
    }

    fn is_opening(&self, path: &Path) -> bool {
        self.opening.borrow().contains_key(path)
    }

    /// Being opened or removed: a new segment must not take this name.
    pub(super) fn is_busy(&self, path: &Path) -> bool {
        self.is_opening(path) || self.removing.borrow().contains_key(path)
    }

    /// Runs `job` (which removes `path`) in the background; `path` counts
    /// as busy until it is done.
    fn remove_later(self: &Rc<Self>, path: PathBuf, job: impl Future<Output = ()> + 'static) {
        *self.removing.borrow_mut().entry(path.clone()).or_insert(0) += 1;
        let paths = self.clone();
        glommio::spawn_local(async move {
            job.await;
            let mut removing = paths.removing.borrow_mut();
            match removing.get_mut(&path) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    removing.remove(&path);
                }
            }
            drop(removing);
            paths.removed.notify();
        })
        .detach();
    }

    /// Resolves once no removal of `path` is under way.
    pub(super) async fn wait_removed(&self, path: &Path) {
        loop {
            let seen = self.removed.generation();
            if !self.removing.borrow().contains_key(path) {
                return;
            }
            self.removed.changed(seen).await;
        }
    }

    /// Shutdown: resolves once every removal started has finished.
    pub async fn settle(&self) {
        loop {
            let seen = self.removed.generation();
            if self.removing.borrow().is_empty() {
                return;
            }
            self.removed.changed(seen).await;
        }
    }
}

impl QueueShared {
    /// Deletes a segment or meta file unless it is being opened; then its
    /// opener deletes it (`open_guarded`).
    pub(super) fn remove_unless_opening(&self, path: &Path) {
        let paths = &self.ctx.paths;
        if !paths.is_opening(path) {
            let owned = path.to_path_buf();
            paths.remove_later(owned.clone(), async move { remove_async(&owned).await });
        }
    }

    /// nsqd's meta file goes once none of its segments is left (the check
    /// reads it: on the blocking pool).
    pub(super) fn remove_nsqd_meta(&self, segments_left: bool) {
        if segments_left {
            return;
        }
        let dir = self.ctx.config.dir.clone();
        let name = self.name.to_string();
        let path = nsqd_import::meta_path(&dir, &name);
        self.ctx.paths.remove_later(path, async move {
            glommio::executor()
                .spawn_blocking(move || nsqd_import::remove_meta_if_done(&dir, &name, false))
                .await
        });
    }

    /// Runs `open` (which opens the file at `path`) while nothing may delete
    /// `path`. None when `still_wanted` says the file went away meanwhile
    /// (its segment consumed, the queue emptied or deleted): then it is
    /// deleted here, once no other open of it is under way.
    pub(super) async fn open_guarded<T>(
        &self,
        path: &Path,
        open: impl Future<Output = T>,
        still_wanted: impl Fn(&Inner) -> bool,
    ) -> Option<T> {
        let paths = &self.ctx.paths;
        paths.begin_opening(path);
        let opened = open.await;
        let last = paths.end_opening(path);
        if still_wanted(&self.inner.borrow()) {
            return Some(opened);
        }
        if last {
            let owned = path.to_path_buf();
            paths.remove_later(owned.clone(), async move { remove_async(&owned).await });
        }
        None
    }

    /// `open_guarded` for segment `ord` as of `epoch`.
    pub(super) async fn open_segment<T>(
        &self,
        ord: u64,
        epoch: u64,
        path: &Path,
        open: impl Future<Output = T>,
    ) -> Option<T> {
        self.open_guarded(path, open, |inner| {
            inner.epoch == epoch && inner.segments.get(ord).is_some()
        })
        .await
    }
}
