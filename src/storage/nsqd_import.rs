//! Taking over nsqd's data path (D3-D5): its diskqueue files are read in
//! place, before anything ringsq wrote for the same queue, and left as they
//! are until their messages are consumed. nsqd's meta file is never
//! written; it goes once the last of its segments has been consumed.

use std::path::{Path, PathBuf};

pub struct LegacySegment {
    pub num: u64,
    pub path: PathBuf,
    /// nsqd's read position in this file (0 for later files).
    pub start: u64,
    pub len: u64,
}

pub fn meta_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.diskqueue.meta.dat"))
}

pub fn segment_path(dir: &Path, name: &str, num: u64) -> PathBuf {
    dir.join(format!("{name}.diskqueue.{num:06}.dat"))
}

/// The most segment files a readable nsqd meta can span.
const MAX_FILES: i64 = 1_000_000;

/// nsqd's meta (D5): depth, readFileNum,readPos, writeFileNum,writePos;
/// the positions only (the depth can be negative after a crash, and is not
/// used).
fn read_meta(path: &Path) -> Option<(u64, u64, u64, u64)> {
    parse_meta(&std::fs::read_to_string(path).ok()?)
}

/// The positions of an nsqd meta file's text (see `read_meta`).
pub fn parse_meta(text: &str) -> Option<(u64, u64, u64, u64)> {
    let mut nums = text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().ok());
    let _depth = nums.next()??;
    let read_file = nums.next()??;
    let read_pos = nums.next()??;
    let write_file = nums.next()??;
    let write_pos = nums.next()??;
    // A million files between the two is 100 TB at nsqd's default size: a
    // damaged meta, not a queue, and not worth a billion file look-ups.
    if read_file < 0 || read_pos < 0 || write_file < read_file || write_file - read_file > MAX_FILES
    {
        return None;
    }
    Some((
        read_file as u64,
        read_pos as u64,
        write_file as u64,
        write_pos.max(0) as u64,
    ))
}

/// nsqd's segment files of one queue, from its read file to its write file.
#[derive(Default)]
pub struct LegacyFiles {
    /// Files that still hold unread messages, in order.
    pub unread: Vec<LegacySegment>,
    /// Files nsqd had read to the end: a caught-up queue keeps its write file
    /// (D6). Nothing reads them again, and once the meta file goes nothing
    /// would ever delete them.
    pub read: Vec<LegacySegment>,
}

/// The nsqd files of queue `name`. The whole of each file is read, past
/// nsqd's recorded write position too: after a crash nsqd salvages that
/// tail the same way (D8).
pub fn segments(dir: &Path, name: &str) -> LegacyFiles {
    let meta = meta_path(dir, name);
    if !meta.exists() {
        return LegacyFiles::default();
    }
    let Some((read_file, read_pos, write_file, _)) = read_meta(&meta) else {
        tracing::warn!(path = %meta.display(), "unreadable nsqd diskqueue meta file; its messages are not imported");
        return LegacyFiles::default();
    };
    let mut out = LegacyFiles::default();
    for num in read_file..=write_file {
        let path = segment_path(dir, name, num);
        let Ok(md) = std::fs::metadata(&path) else {
            continue;
        };
        let start = if num == read_file { read_pos } else { 0 };
        let seg = LegacySegment {
            num,
            path,
            start: start.min(md.len()),
            len: md.len(),
        };
        if md.len() > start {
            out.unread.push(seg);
        } else {
            out.read.push(seg);
        }
    }
    if !out.unread.is_empty() {
        tracing::info!(
            queue = name,
            files = out.unread.len(),
            "importing nsqd diskqueue"
        );
    }
    out
}

/// Once no nsqd segment of `name` is left, its meta file goes too.
pub fn remove_meta_if_done(dir: &Path, name: &str, segments_left: bool) {
    if segments_left {
        return;
    }
    let meta = meta_path(dir, name);
    // An unreadable meta stays: its files were not imported, and without it
    // nothing (nsqd included) could find them again.
    if meta.exists() && read_meta(&meta).is_some() {
        if let Err(e) = std::fs::remove_file(&meta) {
            tracing::warn!(path = %meta.display(), error = %e, "cannot remove nsqd meta file");
        }
    }
}

/// Queue names (`topic` or `topic:channel`) that have files in the data
/// path, ringsq's or nsqd's: they are restored even when a crash kept them
/// out of nsqd.dat.
pub fn queue_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        let name = if let Some(base) = n.strip_suffix(".ringsq.meta.dat") {
            base
        } else if let Some(base) = n.strip_suffix(".ringsq.deferred.dat") {
            base
        } else if let Some(base) = n.strip_suffix(".diskqueue.meta.dat") {
            base
        } else if let Some(rest) = n.strip_suffix(".dat") {
            match rest.rsplit_once(".ringsq.") {
                Some((base, num)) if num.bytes().all(|b| b.is_ascii_digit()) => base,
                _ => continue,
            }
        } else {
            continue;
        };
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(tag: &str, meta: &str, files: &[(u64, usize)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringsq-nsqd-import-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(meta_path(&dir, "q"), meta).unwrap();
        for &(num, len) in files {
            std::fs::write(segment_path(&dir, "q", num), vec![0u8; len]).unwrap();
        }
        dir
    }

    fn nums(v: &LegacyFiles) -> (Vec<(u64, u64)>, Vec<PathBuf>) {
        (
            v.unread.iter().map(|s| (s.num, s.start)).collect(),
            v.read.iter().map(|s| s.path.clone()).collect(),
        )
    }

    #[test]
    fn caught_up_write_file_is_read_not_unread() {
        // nsqd 1.3.0 after its reader caught up (tests/data/nsqd-1.3.0/segments-midfile:
        // seg.diskqueue.meta.dat): depth 0, read position == write position, mid-file.
        let dir = setup("caught-up", "0\n14,1762\n14,1762\n", &[(14, 1762)]);
        let got = segments(&dir, "q");
        assert_eq!(nums(&got), (vec![], vec![segment_path(&dir, "q", 14)]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unread_files_from_the_read_position() {
        // read mid-file in 4, 5 whole, 6 missing (deleted), 7 empty: 4 and 5 are unread
        let dir = setup(
            "unread",
            "27\n4,1424\n7,0\n",
            &[(4, 1762), (5, 977), (7, 0)],
        );
        let got = segments(&dir, "q");
        assert_eq!(
            nums(&got),
            (vec![(4, 1424), (5, 0)], vec![segment_path(&dir, "q", 7)])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_meta_no_files() {
        let dir = setup("no-meta", "", &[(0, 100)]);
        std::fs::remove_file(meta_path(&dir, "q")).unwrap();
        let got = segments(&dir, "q");
        assert!(got.unread.is_empty() && got.read.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn negative_depth_is_read_and_a_damaged_meta_kept() {
        // nsqd saves a negative depth while its reader salvages a crash tail.
        let dir = setup("negative", "-3\n4,100\n5,0\n", &[(4, 300), (5, 0)]);
        assert_eq!(nums(&segments(&dir, "q")).0, vec![(4, 100)]);
        // A meta naming a billion files is damaged: nothing imported, and the
        // file stays for the operator (and nsqd) to find.
        std::fs::write(meta_path(&dir, "q"), "0\n0,0\n999999999,0\n").unwrap();
        let got = segments(&dir, "q");
        assert!(got.unread.is_empty() && got.read.is_empty());
        remove_meta_if_done(&dir, "q", false);
        assert!(meta_path(&dir, "q").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
