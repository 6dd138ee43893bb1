//! The layout's one rule: `src/` is in folders by stage, and a folder uses only the folders
//! below it in [`ORDER`] (or itself). A `crate::` path that points up — in code, not in
//! comments — fails this test with its file and line, so a dependency cycle between folders
//! cannot come back unnoticed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The folders from the bottom up: each may use those before it.
const ORDER: &[&str] = &[
    "config", "rpc", "method", "client", "shared", "state", "select", "failover", "follow",
    "cache", "ops", "proxy", "server",
];

/// Items the crate root re-exports, and the folder each comes from.
const ROOT_EXPORTS: &[(&str, &str)] = &[
    ("Config", "config"),
    ("ConfigError", "config"),
    ("Source", "config"),
    ("RpcError", "rpc"),
    ("Body", "proxy"),
    ("Detour", "proxy"),
    ("Reloaded", "proxy"),
    ("serve", "server"),
];

fn rank(folder: &str) -> Option<usize> {
    ORDER.iter().position(|f| *f == folder)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The folders a line of code names through `crate::` paths, including those inside
/// `use crate::{a::X, b::Y}` groups (given the whole statement).
fn named_folders(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            let bytes = group.as_bytes();
            let mut end = group.len();
            for (i, &b) in bytes.iter().enumerate() {
                match b {
                    b'{' => depth += 1,
                    b'}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        out.push(first_segment(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            out.push(first_segment(&group[start..end]));
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn folders_use_only_the_folders_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let exports: BTreeMap<&str, &str> = ROOT_EXPORTS.iter().copied().collect();
    let mut violations = Vec::new();
    let mut edges = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
        let first = parts.next().unwrap();
        if rel.components().count() == 1 {
            // lib.rs and main.rs sit above every folder.
            assert!(
                first == "lib.rs" || first == "main.rs",
                "{} is outside the folders; put it in one of {ORDER:?}",
                rel.display()
            );
            continue;
        }
        let Some(own) = rank(&first) else {
            panic!(
                "src/{first}/ is not a known folder; add it to ORDER in {}",
                file!()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        // Join `use` statements that span lines, so groups are read whole.
        let mut statement = String::new();
        let mut statement_line = 0;
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let code = code.split(" //").next().unwrap_or(code);
            if statement.is_empty() {
                statement_line = n + 1;
            }
            statement.push_str(code);
            statement.push(' ');
            let open = statement.matches('{').count() > statement.matches('}').count();
            if code.starts_with("use ")
                || code.starts_with("pub use ")
                || code.starts_with("pub(crate) use ")
            {
                if !code.ends_with(';') {
                    continue;
                }
            } else if open && statement.trim_start().starts_with("use ") {
                continue;
            }
            for named in named_folders(&statement) {
                let folder = exports.get(named.as_str()).copied().unwrap_or(&named);
                let Some(theirs) = rank(folder) else {
                    violations.push(format!(
                        "src/{}:{statement_line}: crate::{named} is not a folder of the layout",
                        rel.display()
                    ));
                    continue;
                };
                edges += 1;
                if theirs > own {
                    violations.push(format!(
                        "src/{}:{statement_line}: {first}/ uses {folder}/, which is above it",
                        rel.display()
                    ));
                }
            }
            statement.clear();
        }
    }
    assert!(
        edges > 50,
        "only {edges} crate:: paths found: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "dependencies must point down the order {ORDER:?}:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_reads_grouped_and_nested_uses() {
    assert_eq!(
        named_folders("use crate::{config::{A, B}, rpc::jsonrpc::{self, Call}, Detour};"),
        ["config", "rpc", "Detour"]
    );
    assert_eq!(
        named_folders("let x = crate::state::upstream::now_us() + crate::ops::f();"),
        ["state", "ops"]
    );
}
