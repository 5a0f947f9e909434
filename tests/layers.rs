//! Keeps `src/` free of import circles: every module of the crate belongs
//! to a layer, and may use only its own layer and the ones below it.
//!
//! Reads each file's `crate::<module>` paths (in `use` lines and inline)
//! and `super::<module>` paths that leave a top-level module, and fails on
//! any that points up. Comments are skipped; string literals that spell
//! `crate::` would count, so keep them out of `src/`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first. Modules on one line are one layer: they may use each
/// other. Keep README.md's architecture section in step.
const LAYERS: &[&[&str]] = &[
    &["system", "logging"],
    &["config"],
    &["protocol"],
    &["storage"],
    &["stats"],
    &["shard"],
    &["route"],
    &["conn"],
    &["runtime"],
    &["http", "lookup", "metrics"],
    &["server"],
    // The bodies of the fuzz targets (fuzz/), which drive every parser.
    &["fuzz_targets"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/shard/channel.rs` →
/// `shard`), and whether `super::` from it reaches the crate root.
fn top_module(src: &Path, file: &Path) -> (Option<String>, bool) {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        [f] => (Some(f.trim_end_matches(".rs").to_string()), true),
        [dir, "mod.rs"] => (Some(dir.to_string()), true),
        [dir, ..] => (Some(dir.to_string()), false),
        [] => (None, false),
    }
}

/// Every module named right after `prefix` on a code line.
fn modules_after<'a>(line: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before_ok = at == 0
            || !rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let tail = &rest[at + prefix.len()..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok && end > 0 {
            found.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    found
}

/// Grouped uses (`use crate::{a, b::c}`) name their modules after `{`.
fn grouped_modules(line: &str) -> Vec<String> {
    let Some(at) = line.find("crate::{") else {
        return Vec::new();
    };
    line[at + "crate::{".len()..]
        .split(',')
        .filter_map(|part| {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(n, l)| {
        let code = l.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((n + 1, code))
    })
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let (Some(me), super_is_root) = top_module(&src, file) else {
            continue;
        };
        if me == "lib" || me == "main" {
            continue;
        }
        let Some(my_layer) = layer_of(&me) else {
            unknown.insert(me.clone());
            continue;
        };
        let text = fs::read_to_string(file).expect("readable source");
        for (line_no, code) in code_lines(&text) {
            let mut used: Vec<String> = modules_after(code, "crate::")
                .into_iter()
                .map(str::to_string)
                .collect();
            used.extend(grouped_modules(code));
            if super_is_root {
                used.extend(
                    modules_after(code, "super::")
                        .into_iter()
                        .map(str::to_string),
                );
            }
            for target in used {
                if target == me {
                    continue;
                }
                match layer_of(&target) {
                    Some(l) if l > my_layer => {
                        violations.insert(format!(
                            "{}:{line_no}: {me} (layer {my_layer}) uses {target} (layer {l})",
                            file.strip_prefix(&src).expect("under src").display()
                        ));
                    }
                    Some(_) => {}
                    None => {
                        unknown.insert(target);
                    }
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS in tests/layers.rs: {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "imports that point up the layers (protocol → storage → shard → route → conn → runtime → http/lookup/metrics):\n{}",
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_must() {
    assert_eq!(
        modules_after("use crate::shard::Channel; x(crate::conn::y)", "crate::"),
        ["shard", "conn"]
    );
    assert!(modules_after("my_crate::shard", "crate::").is_empty());
    assert_eq!(
        grouped_modules("use crate::{conn::info, shard::Topic};"),
        ["conn", "shard"]
    );
    assert_eq!(layer_of("protocol"), Some(2));
    assert!(layer_of("route") < layer_of("conn"));
}
