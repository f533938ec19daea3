//! Docs that cannot drift: every path ARCHITECTURE.md's "Where is" table names exists, and every
//! `cargo xtask` task is in README.md's command table.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap()
}

/// The text of `file`'s section `heading` (a `## ` heading), up to the next one.
fn section(file: &str, heading: &str) -> String {
    let text = read(file);
    let rest = text
        .split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("{file} has no \"{heading}\" section"));
    rest.split("\n## ").next().unwrap_or("").to_owned()
}

/// The `code` spans of `text`, in order.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Whether `path` (from the repository's root; a `*` in its last part matches any name) exists.
fn exists(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match name.split_once('*') {
        None => root().join(path).exists(),
        Some((head, tail)) => std::fs::read_dir(root().join(path.parent().unwrap()))
            .map(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(head) && n.ends_with(tail)
                })
            })
            .unwrap_or(false),
    }
}

#[test]
fn every_path_in_the_where_is_table_exists() {
    let table = section("ARCHITECTURE.md", "Where is");
    let mut missing = Vec::new();
    let mut checked = 0;
    for row in table.lines().filter(|l| l.starts_with('|')) {
        let Some(cell) = row.split('|').nth(2) else {
            continue;
        };
        // A bare file name is in the folder of the last path before it in the cell.
        let mut base = PathBuf::new();
        for span in spans(cell) {
            let looks_like_path = span.contains('/') || span.contains('.') && !span.contains(' ');
            if !looks_like_path || span.starts_with("cargo ") {
                continue;
            }
            let rooted = Path::new(span);
            let path = if span.contains('/') && exists(rooted) {
                rooted.to_path_buf()
            } else {
                base.join(span)
            };
            checked += 1;
            if !exists(&path) {
                missing.push(path.display().to_string());
                continue;
            }
            if span.contains('/') && exists(rooted) {
                base = match span.ends_with('/') {
                    true => rooted.to_path_buf(),
                    false => rooted.parent().unwrap_or(Path::new("")).to_path_buf(),
                };
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} paths found: is the table still a table?"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_xtask_task_is_in_the_readme() {
    let main = read("xtask/src/main.rs");
    let tasks_block = main
        .split("task.as_str(),")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("xtask's list of tasks");
    let tasks: Vec<&str> = tasks_block.split('"').skip(1).step_by(2).collect();
    assert!(tasks.contains(&"train") && tasks.len() >= 10, "{tasks:?}");
    let commands = section("README.md", "Commands");
    let missing: Vec<&&str> = tasks
        .iter()
        .filter(|t| !commands.contains(&format!("`cargo xtask {t}")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's command table lacks: {missing:?}"
    );
}

/// The karnna crates `crates/<name>/Cargo.toml` lists under `[dependencies]`, by short name.
fn karnna_dependencies(name: &str) -> Vec<String> {
    let manifest = read(&format!("crates/{name}/Cargo.toml"));
    let deps = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .unwrap_or_else(|| panic!("crates/{name}/Cargo.toml has no [dependencies]"));
    let deps = deps.split("\n[").next().unwrap_or("");
    let mut found: Vec<String> = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("karnna-"))
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .map(str::to_owned)
        .collect();
    found.sort();
    found
}

#[test]
fn the_crate_graph_in_architecture_is_the_manifests() {
    let text = read("ARCHITECTURE.md");
    let rows: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(" ─▶ "))
        .map(|(name, deps)| (name.trim(), deps.trim()))
        .collect();
    let crates: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rows.len(), crates.len(), "one row per crate: {rows:?}");
    for (name, deps) in rows {
        let mut said: Vec<String> = match deps {
            "(none)" => Vec::new(),
            _ => deps.split(", ").map(str::to_owned).collect(),
        };
        said.sort();
        assert_eq!(
            said,
            karnna_dependencies(name),
            "ARCHITECTURE.md's row for {name} is not its manifest's"
        );
    }
}
