//! Replays every file of the committed fuzz corpora (`fuzz/corpus/<target>/`,
//! minimised by `cargo fuzz cmin`, with the inputs that once broke a
//! target) through the same target bodies the fuzzers run
//! (`ringsq::fuzz_targets`), on stable, in every `cargo test`.

use std::fs;
use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in &files {
        let data = fs::read(file).expect("a readable corpus file");
        if let Err(e) = std::panic::catch_unwind(|| body(&data)) {
            panic!("{target}: {} fails: {e:?}", file.display());
        }
    }
}

#[test]
fn v2_codec() {
    replay("v2_codec", ringsq::fuzz_targets::codec::v2_codec);
}

#[test]
fn identify() {
    replay("identify", ringsq::fuzz_targets::identify::identify);
}

#[test]
fn mpub() {
    replay("mpub", ringsq::fuzz_targets::mpub::mpub);
}

#[test]
fn http() {
    replay("http", ringsq::fuzz_targets::http::http);
}

#[test]
fn record() {
    replay("record", ringsq::fuzz_targets::record::record);
}

#[test]
fn meta() {
    replay("meta", ringsq::fuzz_targets::meta::meta);
}

#[test]
fn compress() {
    replay("compress", ringsq::fuzz_targets::compress::compress);
}

#[test]
fn auth() {
    replay("auth", ringsq::fuzz_targets::auth::auth);
}
