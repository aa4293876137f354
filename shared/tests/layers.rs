//! The library's layers, checked from its source: each top-level module
//! imports only the modules beneath it, and the three ports (connector, jobs,
//! store) do not import each other. A cycle or an upward import fails here
//! with the file and line that made it, before it spreads.
//!
//! Unit-test modules (`#[cfg(test)] mod tests { … }`) and comments are left
//! out: a test may build a real adapter, and a doc link is not a dependency.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Layer of each top-level module, bottom first. Modules of one layer may
/// not import each other.
const LAYERS: &[(&str, u8)] = &[
    ("core", 1),
    ("quota", 2),
    ("config", 3),
    ("connector", 4),
    ("jobs", 4),
    ("store", 4),
    ("handlers", 5),
    ("adapters", 6),
    ("edge", 7),
];

/// Pairs kept apart although the layers would allow the import, and why.
const APART: &[(&str, &str, &str)] = &[(
    "store",
    "quota",
    "records, claims and rows are scoped by core::tenant::Tenant, not by a budget",
)];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments blanked and `#[cfg(test)]`-gated modules cut,
/// line numbers kept (removed text becomes spaces, newlines stay).
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            out.push_str(&" ".repeat(end));
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            out.extend(
                rest[..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' }),
            );
            i += end;
        } else if rest.starts_with("#[cfg(test)]") || rest.starts_with("#[cfg(all(test") {
            // Skip the attribute and the item it gates, up to its matching brace.
            let open = rest.find('{').expect("a cfg(test) item has a body");
            let mut depth = 0usize;
            let mut end = rest.len();
            for (k, c) in rest[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            out.extend(
                rest[..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' }),
            );
            i += end;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `(line, imported top-level module)` for every `crate::x` path in `code`.
fn crate_imports(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `metered_crate::x` or `$crate::x` are not ours.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && !name.is_empty()
            {
                found.push((n + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b}` names several modules at once.
        if let Some(at) = line.find("crate::{") {
            let inner = &line[at + "crate::{".len()..];
            for part in inner.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push((n + 1, name));
                }
            }
        }
    }
    found
}

/// Every import that breaks the layering, as `file:line: a -> b (why)`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let Some(top) = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
        else {
            continue;
        };
        let from = top.trim_end_matches(".rs");
        if from == "lib" {
            continue;
        }
        let Some(from_layer) = layer(from) else {
            bad.push(format!(
                "{}: module `{from}` has no layer in LAYERS",
                relative.display()
            ));
            continue;
        };
        let code = code_only(&fs::read_to_string(&file).unwrap());
        for (line, to) in crate_imports(&code) {
            if to == from {
                continue;
            }
            let Some(to_layer) = layer(&to) else {
                // Re-exports at the crate root (`crate::Error`) belong to core.
                if to.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    continue;
                }
                bad.push(format!(
                    "{}:{line}: imports unknown module `{to}`",
                    relative.display()
                ));
                continue;
            };
            if let Some((_, _, why)) = APART.iter().find(|(a, b, _)| *a == from && *b == to) {
                bad.push(format!(
                    "{}:{line}: {from} imports {to}: {why}",
                    relative.display()
                ));
            } else if to_layer > from_layer {
                bad.push(format!("{}:{line}: {from} (layer {from_layer}) imports {to} (layer {to_layer}), above it", relative.display()));
            } else if to_layer == from_layer {
                bad.push(format!(
                    "{}:{line}: {from} imports {to}, a port of the same layer",
                    relative.display()
                ));
            }
        }
    }
    bad
}

#[test]
fn each_layer_imports_only_the_layers_beneath_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));

    // The check sees imports at all: every layer above core imports something.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let code = code_only(&fs::read_to_string(&file).unwrap());
        for (_, to) in crate_imports(&code) {
            *seen.entry(to).or_default() += 1;
        }
    }
    for (module, _) in LAYERS
        .iter()
        .filter(|(m, _)| !["edge", "adapters", "handlers"].contains(m))
    {
        assert!(
            seen.get(*module).copied().unwrap_or(0) > 0,
            "no import of `{module}` seen; is the parser blind?"
        );
    }
}

#[test]
fn the_checker_catches_an_upward_import_a_port_cycle_a_pair_kept_apart_and_ignores_tests_and_comments(
) {
    let dir = std::env::temp_dir().join(format!("metered-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for (path, text) in [
        ("core/clock.rs", "use crate::core::error::Error;\n// crate::edge in a comment\n"),
        ("config/app.rs", "use crate::quota::Limits;\nuse crate::handlers::context::AppContext;\n"),
        ("store/mod.rs", "use crate::{core, connector};\n"),
        ("store/outbox.rs", "use crate::core::tenant::Tenant;\nuse crate::quota::QuotaKey;\n"),
        (
            "jobs/runtime.rs",
            "use crate::core::clock::Clock;\n#[cfg(test)]\nmod tests {\n    use crate::adapters::sqlite::Db;\n    fn f() { if true { } }\n}\n",
        ),
    ] {
        let file = dir.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }
    let bad = violations(&dir);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(
        bad[0].starts_with("config/app.rs:2: config (layer 3) imports handlers (layer 5)"),
        "{bad:#?}"
    );
    assert!(
        bad[1].starts_with("store/mod.rs:1: store imports connector, a port of the same layer"),
        "{bad:#?}"
    );
    assert!(
        bad[2].starts_with("store/outbox.rs:2: store imports quota: records"),
        "{bad:#?}"
    );
}
