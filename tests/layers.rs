//! Keeps `src/` free of import circles: every module of the crate belongs
//! to a layer, and may use only its own layer and the ones below it.
//!
//! Reads each file's `crate::<module>` paths (in `use` lines, grouped
//! `use crate::{..}` over any number of lines, and inline) and
//! `super::..::<module>` paths that climb out of a top-level module, and
//! fails on any that points up. A `crate::*` glob would hide every import:
//! it is refused. Comments, string and char literals are blanked first, so
//! neither `http://` in a string nor `crate::` in a message counts. Inline
//! `mod x { .. }` blocks count as one module deeper for `super::`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first. Modules on one line are one layer: they may use each
/// other. Keep README.md's architecture section in step.
const LAYERS: &[&[&str]] = &[
    &["system", "logging", "hugepages"],
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
/// `shard`), and how many modules deep the file is (`super::` that many
/// times reaches the crate root).
fn top_module(src: &Path, file: &Path) -> (Option<String>, usize) {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    let depth = match parts.last() {
        Some(&"mod.rs") => parts.len() - 1,
        _ => parts.len(),
    };
    match parts.as_slice() {
        [f] => (Some(f.trim_end_matches(".rs").to_string()), depth),
        [dir, ..] => (Some(dir.to_string()), depth),
        [] => (None, 0),
    }
}

/// `text` with comments and the insides of string and char literals
/// replaced by spaces; newlines stay, so line numbers still hold.
fn blank_non_code(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    // Pushes b[from..to] as spaces, keeping newlines.
    let blank = |out: &mut String, from: usize, to: usize| {
        for &c in &b[from..to.min(b.len())] {
            out.push(if c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let prev_ident = i > 0 && ident(b[i - 1]);
        if c == '/' && next == Some('/') {
            let end = b[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j] == '/' && b.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 1;
                } else if b[j] == '*' && b.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let k = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = b[k.min(b.len())..]
                .iter()
                .take_while(|&&x| x == '#')
                .count();
            b.get(k + hashes) == Some(&'"')
        } {
            // Raw string: r#"..."# with as many #s to close.
            let k = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = b[k..].iter().take_while(|&&x| x == '#').count();
            let body = k + hashes + 1;
            let mut j = body;
            while j < b.len() {
                if b[j] == '"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&x| x == '#')
                        .count()
                        == hashes
                {
                    break;
                }
                j += 1;
            }
            let end = (j + 1 + hashes).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if next == Some('\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == '\'')
                    .map(|p| i + 2 + p + 1)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(e) => {
                    blank(&mut out, i, e);
                    i = e;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
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
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
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

/// The modules of every grouped use (`crate::{a, b::{c, d}}`), with the
/// line each is named on; the group may span lines.
fn grouped_modules(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut rest = code;
    let mut offset = 0;
    while let Some(at) = rest.find("crate::{") {
        let open = offset + at + "crate::{".len();
        let (mut depth, mut name, mut start) = (1, String::new(), true);
        for (k, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => start = true,
                c if depth == 1 && start && (c.is_alphanumeric() || c == '_') => name.push(c),
                _ if depth == 1 && start && !name.is_empty() => {
                    let line = code[..open + k].matches('\n').count() + 1;
                    found.push((line, std::mem::take(&mut name)));
                    start = false;
                }
                _ => {}
            }
            if depth == 0 {
                if !name.is_empty() {
                    let line = code[..open + k].matches('\n').count() + 1;
                    found.push((line, std::mem::take(&mut name)));
                }
                break;
            }
        }
        offset = open;
        rest = &code[open..];
    }
    found
}

/// For each line of `code`, how many inline `mod x {` blocks it is in.
fn inline_mod_depths(code: &str) -> Vec<usize> {
    let mut depths = Vec::new();
    let (mut braces, mut open_mods): (usize, Vec<usize>) = (0, Vec::new());
    for line in code.lines() {
        depths.push(open_mods.len());
        let words: Vec<&str> = line.split_whitespace().collect();
        let opens_mod = words
            .windows(3)
            .any(|w| w[0] == "mod" && w[2].starts_with('{'))
            || words
                .windows(2)
                .any(|w| w[0] == "mod" && w[1].ends_with('{'));
        for c in line.chars() {
            match c {
                '{' => {
                    braces += 1;
                }
                '}' => {
                    if open_mods.last() == Some(&braces) {
                        open_mods.pop();
                    }
                    braces = braces.saturating_sub(1);
                }
                _ => {}
            }
        }
        if opens_mod {
            // The block's own brace is the first one opened on this line.
            let opened = line.matches('{').count()
                - line.matches('}').count().min(line.matches('{').count());
            if opened > 0 {
                open_mods.push(braces - opened + 1);
            }
        }
    }
    depths
}

/// The top module a `super::` chain reaches from a file `depth` modules
/// below the crate root (`src/a.rs`, `src/a/mod.rs`: 1; `src/a/b.rs`: 2),
/// or None if it stays inside the file's own top module.
fn supers_leaving(line: &str, depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("super::") {
        let before_ok = at == 0
            || !rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let mut tail = &rest[at..];
        let mut ups = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            ups += 1;
            tail = t;
        }
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok && ups >= depth && end > 0 {
            found.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    found
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
        let (Some(me), depth) = top_module(&src, file) else {
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
        let code = blank_non_code(&text);
        let mut used: Vec<(usize, String)> = grouped_modules(&code);
        let inline = inline_mod_depths(&code);
        for (n, line) in code.lines().enumerate() {
            let line_no = n + 1;
            if line.contains("crate::*") {
                violations.insert(format!(
                    "{}:{line_no}: a `crate::*` glob hides what it imports",
                    file.strip_prefix(&src).expect("under src").display()
                ));
            }
            used.extend(
                modules_after(line, "crate::")
                    .into_iter()
                    .map(|m| (line_no, m.to_string())),
            );
            let here = depth + inline[n];
            used.extend(supers_leaving(line, here).into_iter().map(|m| (line_no, m)));
        }
        for (line_no, target) in used {
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
    assert!(modules_after("$crate::shard", "$crate::").len() == 1);
    let grouped = grouped_modules("use crate::{conn::info, shard::Topic};");
    assert_eq!(grouped, [(1, "conn".into()), (1, "shard".into())]);
    // Over several lines, nested groups: only the top names count.
    let grouped = grouped_modules("use crate::{\n    conn::{a, b},\n    shard,\n};\n");
    assert_eq!(grouped, [(2, "conn".into()), (3, "shard".into())]);
    // super:: chains: from src/shard/tests/mod.rs (depth 2) two climb out.
    assert_eq!(supers_leaving("use super::super::conn::X;", 2), ["conn"]);
    assert!(supers_leaving("use super::channel::X;", 2).is_empty());
    assert_eq!(supers_leaving("use super::route;", 1), ["route"]);
    // Comments and literals do not count, and do not hide code after them.
    let code = blank_non_code(
        "let u = \"http://x\"; use crate::conn; // crate::http\n\
         let s = r#\"crate::server \"quoted\"\"#; let c = '\"'; /* crate::lookup */ fn f<'a>() {}\n",
    );
    assert_eq!(modules_after(&code, "crate::"), ["conn"]);
    assert!(code.contains("fn f<'a>()"), "lifetimes are code: {code}");
    assert_eq!(code.lines().count(), 2);
    let depths = inline_mod_depths(
        "fn a() {}\nmod tests {\n    mod more {\n        x\n    }\n    y\n}\nz\n",
    );
    assert_eq!(depths, [0, 0, 1, 2, 2, 1, 1, 0]);
    assert_eq!(layer_of("protocol"), Some(2));
    assert!(layer_of("route") < layer_of("conn"));
}
