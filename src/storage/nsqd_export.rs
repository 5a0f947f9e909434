//! The way back to nsqd (`ringsqd export-nsqd`): with the broker stopped,
//! every queue ringsq would still deliver is rewritten into nsqd 1.3's
//! diskqueue files (D3-D5) and `nsqd.dat` (D1), so that nsqd started on the
//! data path delivers each message once.
//!
//! Per queue (topic, or `topic:channel`) the messages are, in order: the
//! segments from the saved consume position (imported nsqd files first,
//! then ringsq's own, read with the broker's reader, damage skipped as it
//! skips it), then the deferred snapshot, which goes into the channel's
//! queue as nsqd's own shutdown puts deferred messages there (D10: the timer
//! is lost). Durable DPUB records become plain messages the same way. Ids,
//! attempts and timestamps are kept.
//!
//! Crash safety, per queue:
//! 1. nsqd's files are written under temporary names (`*.export-tmp`),
//!    numbered after every nsqd file of the queue already there, and synced;
//! 2. commit: a journal listing the renames and deletions that follow is
//!    written (temp file, fsync, rename, directory fsync);
//! 3. the journal is applied (data files renamed, then the meta file, which
//!    is what nsqd reads first; then ringsq's files and the taken-over nsqd
//!    files are deleted) and removed.
//!
//! A crash before the commit leaves ringsq's files as they were (the temp
//! files are removed by the next run); after it, the next export or broker
//! start applies the journal again (each step is idempotent) before
//! anything else, so no message is lost or exported twice. A queue that has
//! only nsqd files (already exported, or nsqd's and never touched by ringsq)
//! is left as it is.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::metadata::{self, MetadataError, TopicMeta};
use super::record::Format;
use super::{deferred, disk_queue, lock_data_path, nsqd_import, open, LockError, StorageError};
use crate::protocol::message::MSG_HEADER_LEN;
use crate::protocol::names::is_ephemeral;
use crate::protocol::Message;

const JOURNAL: &str = "ringsq-export.journal";
const JOURNAL_HEAD: &str = "ringsq export-nsqd journal 1";
const TMP_SUFFIX: &str = ".export-tmp";

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("data path {dir}: {err}")]
    DataPath { dir: String, err: String },
    #[error("no ringsq data in {0}: neither nsqd.dat nor queue files (wrong --data-path?)")]
    Empty(String),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("export journal {path} is damaged ({why}); restore the data path from a backup or remove the journal by hand")]
    Journal { path: String, why: String },
}

fn io_err(op: &'static str, path: &Path, err: std::io::Error) -> ExportError {
    StorageError::io(op, path, err).into()
}

/// The flags the export honours, as nsqd names them.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub dir: PathBuf,
    /// --max-bytes-per-file: nsqd's files roll as nsqd rolls them (D6).
    pub max_bytes_per_file: u64,
    /// --max-msg-size: the reader's bound, as for the broker.
    pub max_msg_size: u64,
}

/// What happened to one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReport {
    pub name: String,
    pub state: QueueState,
    pub messages: u64,
    /// Of `messages`, those from the deferred snapshot.
    pub deferred: u64,
    /// Bytes of the nsqd files written.
    pub bytes: u64,
    pub files: u64,
    /// Damaged ranges skipped, as the broker's reader skips them.
    pub damaged: u64,
    pub damaged_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueState {
    /// ringsq's files rewritten into nsqd's.
    #[default]
    Exported,
    /// Only nsqd's files were there: left as they are.
    NsqdFiles,
    /// No file at all: nsqd creates the queue empty from nsqd.dat.
    Empty,
    /// A durable channel of an ephemeral topic has files (nsqd gives it a
    /// diskqueue too), but nsqd.dat leaves the topic out, so nsqd would
    /// never read them: not exported, ringsq's files left in place.
    Ephemeral,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub dir: PathBuf,
    pub topics: usize,
    pub channels: usize,
    pub queues: Vec<QueueReport>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "export-nsqd {}", self.dir.display())?;
        for q in &self.queues {
            match q.state {
                QueueState::NsqdFiles => {
                    writeln!(f, "  {}: already in nsqd's format, left as it is", q.name)?;
                    continue;
                }
                QueueState::Empty => {
                    writeln!(f, "  {}: empty", q.name)?;
                    continue;
                }
                QueueState::Ephemeral => {
                    writeln!(
                        f,
                        "  {}: ephemeral topic, not exported (nsqd does not restore it); its files are left in place",
                        q.name
                    )?;
                    continue;
                }
                QueueState::Exported => {}
            }
            write!(
                f,
                "  {}: {} messages ({} deferred), {} bytes, {} files",
                q.name, q.messages, q.deferred, q.bytes, q.files
            )?;
            if q.damaged > 0 {
                write!(
                    f,
                    "; {} damaged ranges skipped ({} bytes)",
                    q.damaged, q.damaged_bytes
                )?;
            }
            writeln!(f)?;
        }
        let done: Vec<&QueueReport> = self
            .queues
            .iter()
            .filter(|q| q.state == QueueState::Exported)
            .collect();
        let nsqd = self
            .queues
            .iter()
            .filter(|q| q.state == QueueState::NsqdFiles)
            .count();
        let sum = |f: fn(&QueueReport) -> u64| done.iter().map(|q| f(q)).sum::<u64>();
        writeln!(
            f,
            "nsqd.dat: {} topics, {} channels",
            self.topics, self.channels
        )?;
        write!(
            f,
            "exported {} queues: {} messages, {} bytes, {} files written; {} queues already in nsqd's format; {} damaged ranges skipped ({} bytes)",
            done.len(),
            sum(|q| q.messages),
            sum(|q| q.bytes),
            sum(|q| q.files),
            nsqd,
            sum(|q| q.damaged),
            sum(|q| q.damaged_bytes),
        )
    }
}

/// Runs the export (the broker must be stopped: the data path's lock is
/// taken as the broker takes it).
pub fn export(cfg: &ExportConfig) -> Result<Summary, ExportError> {
    let dir = &cfg.dir;
    let md = fs::metadata(dir).map_err(|e| ExportError::DataPath {
        dir: dir.display().to_string(),
        err: e.to_string(),
    })?;
    if !md.is_dir() {
        return Err(ExportError::DataPath {
            dir: dir.display().to_string(),
            err: "not a directory".into(),
        });
    }
    let _lock = lock_data_path(dir, false)?;
    finish_interrupted(dir)?;
    let mut topics = metadata::load(dir)?;
    metadata::add_queues_found_on_disk(&mut topics, dir);
    if topics.is_empty() && !dir.join(metadata::FILE_NAME).exists() {
        return Err(ExportError::Empty(dir.display().to_string()));
    }
    let skipped = ephemeral_queues(dir);
    let topics = durable_sorted(topics);
    write_nsqd_dat(dir, &topics)?;
    let mut summary = Summary {
        dir: dir.clone(),
        topics: topics.len(),
        channels: topics.iter().map(|t| t.channels.len()).sum(),
        queues: skipped,
    };
    for t in &topics {
        summary.queues.push(export_queue(cfg, &t.name)?);
        for c in &t.channels {
            summary
                .queues
                .push(export_queue(cfg, &format!("{}:{}", t.name, c.name))?);
        }
    }
    sync_dir(dir)?;
    Ok(summary)
}

/// Queues with files that belong to an ephemeral topic (see
/// `QueueState::Ephemeral`); neither broker restores such a topic.
fn ephemeral_queues(dir: &Path) -> Vec<QueueReport> {
    let mut names: Vec<String> = super::nsqd_import::queue_names(dir)
        .into_iter()
        .filter(|n| n.split_once(':').is_some_and(|(t, _)| is_ephemeral(t)))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| QueueReport {
            name,
            state: QueueState::Ephemeral,
            ..QueueReport::default()
        })
        .collect()
}

/// Ephemeral topics and channels have no files and nsqd does not list them.
fn durable_sorted(topics: Vec<TopicMeta>) -> Vec<TopicMeta> {
    let mut topics: Vec<TopicMeta> = topics
        .into_iter()
        .filter(|t| !is_ephemeral(&t.name))
        .map(|mut t| {
            t.channels.retain(|c| !is_ephemeral(&c.name));
            t.channels.sort_by(|a, b| a.name.cmp(&b.name));
            t
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    topics
}

/// Written first: it lists every queue exported, and ringsq reads it too,
/// so a crash later leaves a data path either of them takes.
fn write_nsqd_dat(dir: &Path, topics: &[TopicMeta]) -> Result<(), ExportError> {
    Ok(metadata::persist(dir, topics)?)
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

fn create(path: &Path) -> Result<File, ExportError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err("creating", path, e))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), ExportError> {
    let mut f = create(path)?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("writing", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, e))
}

fn export_queue(cfg: &ExportConfig, name: &str) -> Result<QueueReport, ExportError> {
    let dir = &cfg.dir;
    let mut report = QueueReport {
        name: name.to_string(),
        ..QueueReport::default()
    };
    if !disk_queue::has_own_files(dir, name)? && !deferred::path(dir, name).exists() {
        report.state = if nsqd_import::meta_path(dir, name).exists() {
            QueueState::NsqdFiles
        } else {
            QueueState::Empty
        };
        return Ok(report);
    }
    let consumed = disk_queue::saved_position(dir, name);
    let own = disk_queue::own_segments(dir, name)?;
    let (done, pending) = open::select_segments(dir, name, own, consumed);
    let existing = nsqd_files(dir, name)?;
    let first = existing.last().map_or(0, |(n, _)| n + 1);
    let written = write_queue(cfg, name, &pending, first, &mut report)?;
    let mut journal = Journal::default();
    for (tmp, path) in &written.files {
        journal.rename(tmp, path);
    }
    let nsqd_meta = nsqd_import::meta_path(dir, name);
    match &written.meta {
        Some(tmp) => journal.rename(tmp, &nsqd_meta),
        None => journal.delete(&nsqd_meta),
    }
    // Renamed files are numbered after every file listed here.
    for (_, path) in &existing {
        journal.delete(path);
    }
    for seg in done.iter().chain(&pending) {
        if seg.format == Format::Ringsq {
            journal.delete(&seg.path);
        }
    }
    journal.delete(&disk_queue::meta_path(dir, name));
    journal.delete(&deferred::path(dir, name));
    journal.commit(dir)?;
    journal.apply(dir)?;
    Ok(report)
}

/// Writes the queue's messages (segments from the consume position, then
/// the deferred snapshot) into nsqd files under temporary names, numbered
/// from `first`; fills in the report's counts.
fn write_queue(
    cfg: &ExportConfig,
    name: &str,
    pending: &[open::SegmentPlan],
    first: u64,
    report: &mut QueueReport,
) -> Result<Written, ExportError> {
    let mut out = NsqdWriter::new(&cfg.dir, name, first, cfg.max_bytes_per_file);
    for seg in pending {
        let scan = disk_queue::walk_segment(
            &seg.path,
            seg.format,
            seg.start,
            seg.end,
            cfg.max_msg_size,
            |r| out.put(&r.msg),
        )
        .map_err(|e| out.take_error().unwrap_or(io_err("reading", &seg.path, e)))?;
        report.damaged += scan.damaged;
        report.damaged_bytes += scan.damaged_bytes;
    }
    let (held, damaged) = deferred::load_counted(&cfg.dir, name, cfg.max_msg_size);
    report.damaged += damaged;
    report.deferred = held.len() as u64;
    for (msg, _due) in &held {
        out.put(msg)
            .map_err(|e| out.take_error().unwrap_or(io_err("writing", &cfg.dir, e)))?;
    }
    let written = out.finish()?;
    report.messages = written.messages;
    report.bytes = written.bytes;
    report.files = written.files.len() as u64;
    Ok(written)
}

/// nsqd's data files of queue `name` present now, by number.
fn nsqd_files(dir: &Path, name: &str) -> Result<Vec<(u64, PathBuf)>, ExportError> {
    Ok(disk_queue::numbered_files(
        dir,
        &format!("{name}.diskqueue."),
    )?)
}

/// Writes one nsqd diskqueue (D3-D6) under temporary names.
struct NsqdWriter {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    first: u64,
    num: u64,
    pos: u64,
    file: Option<(BufWriter<File>, PathBuf)>,
    files: Vec<(PathBuf, PathBuf)>,
    messages: u64,
    bytes: u64,
    error: Option<ExportError>,
}

struct Written {
    /// (temporary name, final name) of each data file, in order.
    files: Vec<(PathBuf, PathBuf)>,
    /// The meta file's temporary name; none when nothing was written.
    meta: Option<PathBuf>,
    messages: u64,
    bytes: u64,
}

impl NsqdWriter {
    fn new(dir: &Path, name: &str, first: u64, max_bytes: u64) -> NsqdWriter {
        NsqdWriter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            max_bytes,
            first,
            num: first,
            pos: 0,
            file: None,
            files: Vec::new(),
            messages: 0,
            bytes: 0,
            error: None,
        }
    }

    /// The error behind a failed `put`, with its path.
    fn take_error(&mut self) -> Option<ExportError> {
        self.error.take()
    }

    fn fail(&mut self, e: ExportError) -> std::io::Error {
        let io = std::io::Error::other(e.to_string());
        self.error = Some(e);
        io
    }

    /// Appends `[i32 BE length][ts][attempts][id][body]` (D4), rolling to a
    /// new file as go-diskqueue's writeOne does (D6).
    fn put(&mut self, msg: &Message) -> std::io::Result<()> {
        let payload = (MSG_HEADER_LEN + msg.body.len()) as u64;
        let total = 4 + payload;
        if self.pos > 0 && self.pos + total > self.max_bytes {
            self.close_file().map_err(|e| self.fail(e))?;
            self.num += 1;
            self.pos = 0;
        }
        if self.file.is_none() {
            let path = nsqd_import::segment_path(&self.dir, &self.name, self.num);
            let tmp = tmp_name(&path);
            let f = create(&tmp).map_err(|e| self.fail(e))?;
            self.files.push((tmp.clone(), path));
            self.file = Some((BufWriter::with_capacity(1 << 20, f), tmp));
        }
        let Some((w, tmp)) = self.file.as_mut() else {
            return Ok(());
        };
        let written = w
            .write_all(&(payload as i32).to_be_bytes())
            .and_then(|_| w.write_all(&msg.timestamp.to_be_bytes()))
            .and_then(|_| w.write_all(&msg.attempts.to_be_bytes()))
            .and_then(|_| w.write_all(&msg.id.0))
            .and_then(|_| w.write_all(&msg.body));
        if let Err(e) = written {
            let e = io_err("writing", &tmp.clone(), e);
            return Err(self.fail(e));
        }
        self.pos += total;
        self.bytes += total;
        self.messages += 1;
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), ExportError> {
        let Some((w, tmp)) = self.file.take() else {
            return Ok(());
        };
        let f = w
            .into_inner()
            .map_err(|e| io_err("writing", &tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_err("syncing", &tmp, e))
    }

    /// Syncs the last file and writes the meta text (D5): depth,
    /// readFileNum,readPos, writeFileNum,writePos.
    fn finish(mut self) -> Result<Written, ExportError> {
        self.close_file()?;
        let meta = if self.messages == 0 {
            None
        } else {
            let tmp = tmp_name(&nsqd_import::meta_path(&self.dir, &self.name));
            let text = format!(
                "{}\n{},{}\n{},{}\n",
                self.messages, self.first, 0, self.num, self.pos
            );
            write_synced(&tmp, text.as_bytes())?;
            Some(tmp)
        };
        Ok(Written {
            files: self.files,
            meta,
            messages: self.messages,
            bytes: self.bytes,
        })
    }
}

/// The steps after a queue's commit point: renames (in order), then
/// deletions. File names only: they all live in the data path.
#[derive(Debug, Default, PartialEq, Eq)]
struct Journal {
    renames: Vec<(String, String)>,
    deletes: Vec<String>,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Journal {
    fn rename(&mut self, from: &Path, to: &Path) {
        self.renames.push((file_name(from), file_name(to)));
    }

    fn delete(&mut self, path: &Path) {
        self.deletes.push(file_name(path));
    }

    fn render(&self) -> String {
        let mut text = format!("{JOURNAL_HEAD}\n");
        for (from, to) in &self.renames {
            text.push_str(&format!("rename {from} {to}\n"));
        }
        for d in &self.deletes {
            text.push_str(&format!("delete {d}\n"));
        }
        text.push_str("end\n");
        text
    }

    fn parse(text: &str) -> Result<Journal, String> {
        let mut lines = text.lines();
        if lines.next() != Some(JOURNAL_HEAD) {
            return Err("unknown header".into());
        }
        let mut j = Journal::default();
        for line in lines {
            // Names of files in the data path, never paths.
            if line.contains('/') {
                return Err(format!("bad line {line:?}"));
            }
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["rename", from, to] => j.renames.push((from.to_string(), to.to_string())),
                ["delete", name] => j.deletes.push(name.to_string()),
                ["end"] => return Ok(j),
                _ => return Err(format!("bad line {line:?}")),
            }
        }
        Err("no end line".into())
    }

    /// The commit point: once the journal is in place, the queue is nsqd's.
    fn commit(&self, dir: &Path) -> Result<(), ExportError> {
        let path = dir.join(JOURNAL);
        let tmp = tmp_name(&path);
        write_synced(&tmp, self.render().as_bytes())?;
        fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))?;
        sync_dir(dir)
    }

    /// Idempotent: a step already done is skipped.
    fn apply(&self, dir: &Path) -> Result<(), ExportError> {
        for (from, to) in &self.renames {
            let (from, to) = (dir.join(from), dir.join(to));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => {}
                Err(e) => return Err(io_err("renaming", &from, e)),
            }
        }
        sync_dir(dir)?;
        for name in &self.deletes {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("removing", &path, e))
                }
                _ => {}
            }
        }
        sync_dir(dir)?;
        let path = dir.join(JOURNAL);
        fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
        sync_dir(dir)
    }
}

/// Before anything else reads the data path (the export, the broker):
/// finishes an export that committed a queue and was interrupted, and
/// removes what an uncommitted one left (temp files nothing reads).
pub fn finish_interrupted(dir: &Path) -> Result<(), ExportError> {
    let path = dir.join(JOURNAL);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let journal = Journal::parse(&text).map_err(|why| ExportError::Journal {
                path: path.display().to_string(),
                why,
            })?;
            tracing::warn!(journal = %path.display(), "finishing an interrupted export to nsqd");
            journal.apply(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", &path, e)),
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| io_err("removing", &p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_damage() {
        let mut j = Journal::default();
        j.rename(
            Path::new("/d/t.diskqueue.000000.dat.export-tmp"),
            Path::new("/d/t.diskqueue.000000.dat"),
        );
        j.delete(Path::new("/d/t.ringsq.meta.dat"));
        let text = j.render();
        assert_eq!(Journal::parse(&text), Ok(j));
        assert!(Journal::parse(&text[..text.len() - 4]).is_err());
        assert!(Journal::parse("something else\nend\n").is_err());
        assert!(Journal::parse(&format!("{JOURNAL_HEAD}\ndelete ../x\nend\n")).is_err());
    }

    fn msg(i: u8, body: &'static [u8]) -> Message {
        let mut m = Message::new(
            crate::protocol::MessageId([b'0' + i; 16]),
            1000 + i as i64,
            bytes::Bytes::from_static(body),
        );
        m.attempts = i as u16;
        m
    }

    /// D4-D6: records, rolling before a record that would pass the limit,
    /// and the meta text.
    #[test]
    fn writer_rolls_as_go_diskqueue() {
        let dir = std::env::temp_dir().join(format!("ringsq-export-{}", fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        // 4 + 26 + 10 = 40 bytes each; two fit in 80, the third rolls.
        let mut w = NsqdWriter::new(&dir, "t:c", 3, 80);
        for i in 0..3 {
            w.put(&msg(i, b"0123456789")).unwrap();
        }
        let written = w.finish().unwrap();
        assert_eq!((written.messages, written.bytes), (3, 120));
        assert_eq!(written.files.len(), 2);
        let first = fs::read(&written.files[0].0).unwrap();
        assert_eq!(first.len(), 80);
        assert_eq!(&first[..4], &36i32.to_be_bytes());
        assert_eq!(&first[4..12], &1000i64.to_be_bytes());
        assert_eq!(&first[12..14], &0u16.to_be_bytes());
        assert_eq!(&first[14..30], &[b'0'; 16]);
        assert_eq!(&first[30..40], b"0123456789");
        assert_eq!(written.files[1].1, dir.join("t:c.diskqueue.000004.dat"));
        let meta = fs::read_to_string(written.meta.unwrap()).unwrap();
        assert_eq!(meta, "3\n3,0\n4,40\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
