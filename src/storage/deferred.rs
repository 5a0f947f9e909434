//! Deferred messages across a clean restart: at shutdown each channel's
//! deferred messages are written, with their due time, to
//! `<topic>:<channel>.ringsq.deferred.dat`; at start-up they are loaded and
//! wait for the rest of their time (nsqd loses the timer: #1107). The file
//! stays until the next clean shutdown rewrites it, so a crash meanwhile
//! delivers them again rather than losing them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{self, Format, Walk, Walker, HEADER_LEN};
use crate::protocol::Message;

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.ringsq.deferred.dat"))
}

/// Writes the snapshot atomically (temp file, fsync, rename, directory
/// fsync); an empty list removes it.
pub fn write(dir: &Path, name: &str, entries: &[(Message, i64)]) -> std::io::Result<()> {
    let target = path(dir, name);
    if entries.is_empty() {
        return match std::fs::remove_file(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut data = vec![0u8; HEADER_LEN as usize];
    record::encode_header(&mut data, 0);
    for (msg, due) in entries {
        let at = data.len();
        data.resize(at + record::encoded_len(msg, Some(*due)), 0);
        record::encode(&mut data[at..], msg, Some(*due));
    }
    let tmp = dir.join(format!("{name}.ringsq.deferred.dat.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &target)?;
    File::open(dir)?.sync_all()
}

/// The snapshot's messages and due times (Unix ns); damaged records are
/// skipped and logged.
pub fn load(dir: &Path, name: &str, max_body: u64) -> Vec<(Message, i64)> {
    load_counted(dir, name, max_body).0
}

/// `load`, plus how many damaged ranges were skipped.
pub fn load_counted(dir: &Path, name: &str, max_body: u64) -> (Vec<(Message, i64)>, u64) {
    let p = path(dir, name);
    let Ok(data) = std::fs::read(&p) else {
        return (Vec::new(), 0);
    };
    let data = Bytes::from(data);
    let len = data.len() as u64;
    let mut walker = Walker::new(Format::Ringsq, HEADER_LEN);
    let mut out = Vec::new();
    let mut damaged = 0;
    loop {
        match walker.next(&data, 0, len, max_body) {
            Walk::Record { record, .. } => out.push((record.msg, record.due.unwrap_or(0))),
            Walk::Damaged { .. } => damaged += 1,
            // The whole file is in memory: a record longer than that is damage.
            Walk::NeedMore => walker.skip_damaged(len),
            Walk::End => break,
        }
    }
    damaged += u64::from(walker.open_damage().is_some());
    if damaged > 0 {
        tracing::warn!(path = %p.display(), "corrupt records skipped in deferred snapshot");
    }
    (out, damaged)
}
