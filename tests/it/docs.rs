//! The documentation kept in step with the code: every environment variable Latch, its tests or
//! its scripts read appears exactly once in the configuration table of `docs/operations.md`, the
//! table names nothing the code no longer reads, and README links every document under `docs/`
//! (and every link it has leads somewhere).
//!
//! The code is read as text rather than through clap's `Command` because not every variable
//! goes through clap: the tests, the telemetry set-up and the scripts read their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Variables the code reads that belong to the machine, not to Latch.
const NOT_OURS: &[&str] = &["PATH", "HOME", "DEBIAN_FRONTEND"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                files(&path, keep, out);
            }
        } else if keep(&path) {
            out.push(path);
        }
    }
}

/// Every `NAME` following one of `openers` in `text`, where NAME is an upper-case identifier
/// closed by `closer`.
fn names_after(text: &str, openers: &[&str], closer: char, out: &mut BTreeSet<String>) {
    for opener in openers {
        for (at, _) in text.match_indices(opener) {
            let rest = &text[at + opener.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let closed = rest[name.len()..].starts_with(closer);
            if closed && name.len() > 1 && name.starts_with(|c: char| c.is_ascii_uppercase()) {
                out.insert(name);
            }
        }
    }
}

/// The variables the code reads: clap's `env = "X"`, `env::var("X")` / `var_os("X")`, the
/// config loader's `env("X", ...)`, and the scripts' `${X:-default}`.
fn read_by_code() -> BTreeSet<String> {
    let root = root();
    let mut sources = Vec::new();
    for dir in [
        "src",
        "api",
        "domain",
        "projections",
        "workers",
        "nats",
        "tests",
        "benches",
    ] {
        files(
            &root.join(dir),
            &|p| p.extension().is_some_and(|e| e == "rs"),
            &mut sources,
        );
    }
    let mut names = BTreeSet::new();
    for path in &sources {
        let text = std::fs::read_to_string(path).unwrap();
        // This file's own examples are not reads.
        if path.ends_with("tests/it/docs.rs") {
            continue;
        }
        names_after(
            &text,
            &["env = \"", "var(\"", "var_os(\"", "env(\""],
            '"',
            &mut names,
        );
    }
    let mut scripts = Vec::new();
    files(&root.join("scripts"), &|_| true, &mut scripts);
    files(&root.join(".ci"), &|_| true, &mut scripts);
    for path in &scripts {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        names_after(&text, &["${"], ':', &mut names);
    }
    names.retain(|n| !NOT_OURS.contains(&n.as_str()));
    names
}

/// The first column of the configuration table, with how often each name appears there.
fn documented() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let table = text
        .split("## Configuration\n")
        .nth(1)
        .expect("docs/operations.md has a Configuration section");
    let mut seen = BTreeMap::new();
    for line in table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
    {
        let first = line.split('|').nth(1).unwrap_or_default().trim();
        if let Some(name) = first.strip_prefix('`').and_then(|n| n.strip_suffix('`')) {
            *seen.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn every_environment_variable_is_documented_once() {
    let code = read_by_code();
    let docs = documented();
    // The scan itself must see what we know is there, or an empty scan would pass.
    for known in [
        "DATABASE_URL",
        "LATCH_STREAM_REPLICAS",
        "TEST_LOG",
        "FUZZ_MAX_TIME",
    ] {
        assert!(code.contains(known), "the scan missed {known}: {code:?}");
    }
    let twice: Vec<_> = docs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    let missing: Vec<_> = code.iter().filter(|n| !docs.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in docs/operations.md's table: {missing:?}"
    );
    let stale: Vec<_> = docs.keys().filter(|n| !code.contains(*n)).collect();
    assert!(
        stale.is_empty(),
        "in docs/operations.md's table but read nowhere: {stale:?}"
    );
}

#[test]
fn readme_links_every_document_and_every_link_resolves() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut docs = Vec::new();
    files(
        &root.join("docs"),
        &|p| p.extension().is_some_and(|e| e == "md"),
        &mut docs,
    );
    assert!(docs.len() >= 5, "expected the docs folder, found {docs:?}");
    for doc in &docs {
        let relative = doc.strip_prefix(&root).unwrap().to_str().unwrap();
        assert!(
            readme.contains(&format!("]({relative}")),
            "README.md does not link {relative}"
        );
    }
    // Every relative link of README and of the docs leads to a file that exists.
    for page in std::iter::once(root.join("README.md")).chain(docs) {
        let text = std::fs::read_to_string(&page).unwrap();
        for (at, _) in text.match_indices("](") {
            let target: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            let file = target.split('#').next().unwrap();
            if file.is_empty() || file.contains("://") {
                continue;
            }
            let path = page.parent().unwrap().join(file);
            assert!(
                path.exists(),
                "{} links {target}, which does not exist",
                page.display()
            );
        }
    }
}
