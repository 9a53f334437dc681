//! The crate's module map keeps its arrows one way: no import cycle between
//! the top-level modules of `src/` (the simulator aside), and no request
//! stage reaching up into the composition root (`crate::gateway`).
//!
//! An edge is any `crate::X` on a code line of a module's files (comments,
//! `#[cfg(test)]` modules and `tests.rs` files left out): `use` lines and
//! paths written inline alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Left out of the graph: the simulator is a crate of its own in all but
/// name, used by tests, benchmarks and `crmgate demo`.
const IGNORED: [&str; 1] = ["sim"];

/// The request stages: each takes narrow handles, never the gateway.
const STAGES: [&str; 6] = [
    "inbound",
    "cache",
    "reconcile",
    "export",
    "forward",
    "batch",
];

/// The only modules that may name the composition root: the top of the
/// request path, the admin side, and `check --online` (a command that
/// builds a gateway of its own).
const GATEWAY_USERS: [&str; 7] = [
    "proxy", "admin", "server", "status", "history", "page", "online",
];

type Graph = BTreeMap<String, BTreeMap<String, PathBuf>>;

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

/// The files that `#[cfg(test)] mod name;` lines in `file` bring in.
fn test_modules(file: &Path, text: &str) -> Vec<PathBuf> {
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs") | Some("lib.rs") => file.parent().unwrap().to_path_buf(),
        _ => file.with_extension(""),
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod ")?.strip_suffix(';'))
        .flat_map(|name| {
            [
                dir.join(format!("{name}.rs")),
                dir.join(name).join("mod.rs"),
            ]
        })
        .collect()
}

/// The code of a file: its lines before an inline `#[cfg(test)] mod`,
/// comments left out.
fn code_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let s = line.trim();
        if s == "#[cfg(test)]" && lines.peek().is_some_and(|l| l.trim().starts_with("mod ")) {
            let next = lines.peek().unwrap().trim();
            if next.ends_with('{') {
                break;
            }
            continue;
        }
        if !s.starts_with("//") {
            out.push(s);
        }
    }
    out
}

/// Every `crate::X` on `line`.
fn targets(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(i, _)| {
            // `crmgate::` or `my_crate::` are not this crate's paths.
            *i == 0
                || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_'
        })
        .map(|(i, m)| {
            line[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();
    let test_only: BTreeSet<PathBuf> = texts
        .iter()
        .flat_map(|(f, text)| test_modules(f, text))
        .collect();
    let mut graph = Graph::new();
    for (file, text) in &texts {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs");
        if ["lib", "main"].contains(&module) || IGNORED.contains(&module) {
            continue;
        }
        if file.file_name().unwrap() == "tests.rs" || test_only.contains(file) {
            continue;
        }
        let edges = graph.entry(module.to_string()).or_default();
        for line in code_lines(text) {
            for t in targets(line) {
                if t != module && !IGNORED.contains(&t.as_str()) && t != "self" {
                    edges.entry(t).or_insert_with(|| rel.to_path_buf());
                }
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_cycle_outside_the_simulator() {
    let graph = graph();
    assert!(graph.len() > 20, "the scan found the modules: {graph:?}");
    let found = cycles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|(b, _)| c.contains(b))
                        .map(move |(b, at)| format!("  {a} -> {b} (e.g. src/{})", at.display()))
                })
                .collect();
            format!(
                "cycle of {}: {}\n{}",
                c.len(),
                c.join(" "),
                edges.join("\n")
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "arrows must run one way (STYLE.md); break these:\n{}",
        report.join("\n")
    );
}

#[test]
fn only_the_top_names_the_gateway() {
    let graph = graph();
    let users: Vec<(&String, &PathBuf)> = graph
        .iter()
        .filter_map(|(m, edges)| Some((m, edges.get("gateway")?)))
        .collect();
    for (module, at) in &users {
        assert!(
            !STAGES.contains(&module.as_str()),
            "the stage {module} imports crate::gateway (src/{}): give it the narrow handle it needs",
            at.display()
        );
        assert!(
            GATEWAY_USERS.contains(&module.as_str()),
            "{module} imports crate::gateway (src/{}); only {GATEWAY_USERS:?} may",
            at.display()
        );
    }
    // The scan sees the edges that must exist.
    assert!(
        users.iter().any(|(m, _)| m.as_str() == "proxy"),
        "{users:?}"
    );
}

#[test]
fn the_scan_finds_a_cycle_when_there_is_one() {
    let mut graph = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(a.into())
            .or_default()
            .insert(b.into(), PathBuf::from(format!("{a}.rs")));
    }
    assert_eq!(cycles(&graph), [["a", "b", "c"]]);
    assert_eq!(
        targets(
            "use crate::forward::{Forward, Forwarder}; x = crate::cache::Cache; crmgate::gateway"
        ),
        ["forward", "cache"]
    );
}
