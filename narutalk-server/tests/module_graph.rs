//! The server's modules form layers: no two top-level modules of `narutalk-server/src`
//! import each other, directly or through a loop of others. A module's references are
//! every `crate::<module>` path in its files (`use` lines, paths in code, doc links),
//! `crate::{...}` groups included; a reference to an item of the crate's root
//! (`crate::serve`) counts as one to the root, which declares every module. A loop is
//! named in the failure, module by module.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The name the root (`lib.rs`) has in the graph and in failures.
const ROOT: &str = "lib.rs";

#[test]
fn no_two_server_modules_import_each_other_directly_or_through_a_loop() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for module in ["api", "state", "ws", "turns", "error", "http"] {
        assert!(
            graph.contains_key(module),
            "no module {module} in {graph:?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "these modules import each other: {}\nevery module's imports: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn a_loop_is_found_and_named() {
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let layered = BTreeMap::from([
        (
            "a".to_owned(),
            BTreeSet::from(["b".to_owned(), "c".to_owned()]),
        ),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::new()),
    ]);
    assert_eq!(find_cycle(&layered), None);
}

#[test]
fn references_are_read_from_paths_groups_and_the_root() {
    let modules = BTreeSet::from(["api".to_owned(), "http".to_owned(), "ws".to_owned()]);
    let text = "use crate::api::Call;\nuse crate::{http::{Request, Site}, ws};\n\
                /// [`crate::ServeOptions`]\nmacro_rules! m { () => { $crate::x } }\n\
                let x = crate :: nothing;";
    assert_eq!(
        references(text, &modules),
        BTreeSet::from([
            "api".to_owned(),
            "http".to_owned(),
            "ws".to_owned(),
            ROOT.to_owned()
        ])
    );
}

/// Each top-level module and the modules it references (itself left out), the root
/// declaring every module.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let module_of = |file: &Path| -> Option<String> {
        let relative = file.strip_prefix(src).ok()?;
        let first = relative.components().next()?.as_os_str().to_str()?;
        match first {
            "lib.rs" => Some(ROOT.to_owned()),
            // The binary is a crate of its own: its `crate::` is not the library.
            "main.rs" => None,
            _ => Some(first.trim_end_matches(".rs").to_owned()),
        }
    };
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|file| module_of(file))
        .filter(|module| module != ROOT)
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let mut used = references(&text, &modules);
        used.remove(&module);
        graph.entry(module).or_default().extend(used);
    }
    graph
        .entry(ROOT.to_owned())
        .or_default()
        .extend(modules.iter().cloned());
    graph
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The modules `text` references through `crate::`: the first segment of each path
/// (of each path in a `crate::{...}` group), [`ROOT`] when it names no module.
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut name = |segment: &str| {
        if segment.is_empty() {
            return;
        }
        if modules.contains(segment) {
            found.insert(segment.to_owned());
        } else if segment != "self" {
            found.insert(ROOT.to_owned());
        }
    };
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c == '$' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for item in top_level_items(group) {
                name(leading_identifier(item));
            }
        } else {
            name(leading_identifier(rest));
        }
    }
    found
}

/// The comma-separated items of a `{...}` group whose opening brace is already consumed,
/// up to its closing brace; nested groups stay inside their item.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..at]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items
}

/// The identifier `text` starts with (after whitespace).
fn leading_identifier(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c == '_' || c.is_alphanumeric()))
        .unwrap_or(text.len());
    &text[..end]
}

/// A loop in `graph`, as the modules along it with the first repeated at the end; `None`
/// when there is none.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|on_path| on_path == module)?;
                let mut cycle = path[start..].to_vec();
                cycle.push(module.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module.to_owned(), Mark::Visiting);
        path.push(module.to_owned());
        for used in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(used, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(module.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut marks, &mut Vec::new()))
}
