//! A tidy test (rust-analyzer keeps such tests): the engine's modules depend downward only. It
//! reads the source of every module and fails on a `crate::` path that names a module above it.

use std::path::Path;

/// The modules, lowest first: each may use only those before it (and itself).
const LAYERS: &[&str] = &[
    "hash",
    "routing",
    "step",
    "time",
    "window",
    "sink_buffer",
    "metrics",
    "store",
    "archive",
    "planner",
    "autoscale",
    "migration",
    "checkpoint",
    "dataflow",
    "app",
    "runtime",
    "cluster",
    "node",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

/// Every `crate::NAME` in `source` (outside comments), with its line.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((i + 1, name));
        }
    }
    found
}

/// The `.rs` files below `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_depend_downward_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut back_edges = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        let module = top.to_str().unwrap().trim_end_matches(".rs");
        if module == "lib" || module == "layers" {
            continue;
        }
        let Some(own) = rank(module) else {
            panic!("module `{module}` is not in LAYERS: place it in the order");
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in crate_paths(&text) {
            match rank(&used) {
                Some(r) if r > own => back_edges.push(format!(
                    "{}:{line}: `{module}` uses `{used}`, a layer above it",
                    relative.display()
                )),
                Some(_) => {}
                None => panic!(
                    "{}:{line}: `crate::{used}` names no module of LAYERS (write `crate::MODULE::...`, so the layer shows)",
                    relative.display()
                ),
            }
        }
    }
    assert!(back_edges.is_empty(), "{}", back_edges.join("\n"));
}

#[test]
fn the_check_sees_paths_but_not_comments() {
    let paths = crate_paths("use crate::node::Engine; // crate::app\nlet x = crate::hash::f();");
    assert_eq!(
        paths,
        vec![(1, "node".to_string()), (2, "hash".to_string())]
    );
}
