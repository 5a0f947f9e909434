//! The small files of a data path: `nsqd.dat` (D1, D2), a ringsq queue's
//! meta slot, and nsqd's diskqueue meta text (D5) read on import. What
//! each accepts must survive being written back and read again.

use super::Choices;
use crate::protocol::names::is_ephemeral;
use crate::storage::disk_queue::{decode_meta, encode_meta, Synced};
use crate::storage::metadata::{self, TopicMeta};
use crate::storage::nsqd_import::parse_meta;

/// `render` then `parse` gives back the durable topics, sorted by name.
fn nsqd_dat(text: &[u8]) {
    let Ok(topics) = metadata::parse(text) else {
        return;
    };
    let mut want: Vec<TopicMeta> = topics
        .iter()
        .filter(|t| !is_ephemeral(&t.name))
        .cloned()
        .map(|mut t| {
            t.channels.retain(|c| !is_ephemeral(&c.name));
            t
        })
        .collect();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    let again = metadata::parse(&metadata::render(&topics));
    match again {
        Ok(back) => assert_eq!(back, want, "nsqd.dat does not read back"),
        Err(e) => panic!("rendered nsqd.dat does not parse: {e}"),
    }
}

/// A slot that decodes encodes to the same bytes (format 2), or to a
/// format-2 slot with the same position (format 1).
fn meta_slot(slot: &[u8]) {
    let Some(meta) = decode_meta(slot) else {
        return;
    };
    let mut out = [0u8; 4096];
    encode_meta(&mut out, &meta);
    match meta.synced {
        Some(_) => assert_eq!(&out[..60], &slot[..60], "meta slot does not round-trip"),
        None => {
            let again = decode_meta(&out).expect("an encoded slot decodes");
            assert_eq!((again.seq, again.consume), (meta.seq, meta.consume));
            let end = meta.consume;
            assert_eq!(again.synced, Some(Synced { depth: 0, end }));
        }
    }
}

/// nsqd's meta text: positions in order, written back as nsqd writes them.
fn nsqd_meta(raw: &[u8]) {
    let Ok(text) = std::str::from_utf8(raw) else {
        return;
    };
    let Some((rf, rp, wf, wp)) = parse_meta(text) else {
        return;
    };
    assert!(rf <= wf, "read file {rf} after write file {wf}");
    let written = format!("0\n{rf},{rp}\n{wf},{wp}\n");
    assert_eq!(parse_meta(&written), Some((rf, rp, wf, wp)));
}

pub fn meta(data: &[u8]) {
    let mut c = Choices::new(data);
    let which = c.byte();
    let rest = c.rest();
    match which % 3 {
        0 => nsqd_dat(rest),
        1 => meta_slot(rest),
        _ => nsqd_meta(rest),
    }
}
