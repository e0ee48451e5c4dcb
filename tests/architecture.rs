//! Dependencies point one way (DESIGN.md, "Layout"): the module graph of the `vantage` crate has no
//! cycles, between its top-level modules (`cli`, `agent`, `config`, `incident`, `rules`, `sinks`,
//! `store`, `scheduler`, `probe`, `record`, …) nor between the submodules of any one of them
//! (e.g. `incident::db` and `incident::outbox`).
//!
//! The graph is read from the source with `syn`: every `use` tree and every path that starts with
//! `crate::`, `super::` or `self::` (or names a child module), in each file and inline module,
//! test modules included. A name re-exported by a module (`pub use db::IncidentDb`) counts as a
//! use of the module that defines it. Paths inside macro invocations are not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use syn::visit::Visit;

type ModPath = Vec<String>;

/// What one source tree says: its modules, their re-exports, and every crate-local path used.
#[derive(Debug, Default)]
struct Sources {
    modules: BTreeSet<ModPath>,
    /// (module, exported name) → absolute path of what it names.
    reexports: BTreeMap<(ModPath, String), ModPath>,
    /// (module the path is written in, absolute path).
    uses: Vec<(ModPath, ModPath)>,
}

/// The module a file under `src/` defines: `lib.rs` → `[]`, `a/mod.rs` and `a.rs` → `[a]`.
fn file_module(relative: &Path) -> Option<ModPath> {
    let mut parts: ModPath = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "lib" if parts.is_empty() => {}
        "main" if parts.is_empty() => return None, // the binary: it uses the library by name
        "mod" => {}
        _ => parts.push(stem.to_string()),
    }
    Some(parts)
}

struct Collector<'a> {
    scope: ModPath,
    sources: &'a mut Sources,
}

impl Collector<'_> {
    /// `crate::a::b`, `super::b`, `self::b` as an absolute path; `None` for other crates.
    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let mut path = self.scope.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                path.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    path.pop()?;
                    rest = &rest[1..];
                }
            }
            // A child module named without `self::` (2018 uniform paths), or another crate.
            Some(first) => {
                let mut child = path.clone();
                child.push(first.to_string());
                if !self.sources.modules.contains(&child) {
                    return None;
                }
            }
            None => return None,
        }
        path.extend(rest.iter().cloned());
        Some(path)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, public: bool) {
        let record = |this: &mut Self, segments: &[String], name: Option<String>| {
            if let Some(target) = this.absolute(segments) {
                if public && let Some(name) = name {
                    let key = (this.scope.clone(), name);
                    this.sources.reexports.insert(key, target.clone());
                }
                this.sources.uses.push((this.scope.clone(), target));
            }
        };
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, public);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                if name == "self" {
                    let exported = prefix.last().cloned();
                    record(self, prefix, exported);
                } else {
                    let mut full = prefix.clone();
                    full.push(name.clone());
                    record(self, &full, Some(name));
                }
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                record(self, &full, Some(r.rename.to_string()));
            }
            syn::UseTree::Glob(_) => record(self, prefix, None),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item, public);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.scope.push(item.ident.to_string());
        self.sources.modules.insert(self.scope.clone());
        syn::visit::visit_item_mod(self, item);
        self.scope.pop();
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        self.use_tree(&mut Vec::new(), &item.tree, public);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if path.leading_colon.is_none()
            && segments.len() > 1
            && let Some(target) = self.absolute(&segments)
        {
            self.sources.uses.push((self.scope.clone(), target));
        }
        syn::visit::visit_path(self, path);
    }
}

/// Parse `files` (paths relative to `src/`, with their text).
fn read(files: &[(String, String)]) -> Sources {
    let mut sources = Sources::default();
    let mut parsed = Vec::new();
    for (name, text) in files {
        let Some(module) = file_module(Path::new(name)) else {
            continue;
        };
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("src/{name}: {e}"));
        // Every file module's ancestors are modules too (declared by `mod x;` in the parent).
        for depth in 0..=module.len() {
            sources.modules.insert(module[..depth].to_vec());
        }
        parsed.push((module, file));
    }
    // Inline modules first, so that paths through them resolve wherever they are written.
    for (module, file) in &parsed {
        struct Mods<'a>(ModPath, &'a mut BTreeSet<ModPath>);
        impl<'ast> Visit<'ast> for Mods<'_> {
            fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
                self.0.push(item.ident.to_string());
                self.1.insert(self.0.clone());
                syn::visit::visit_item_mod(self, item);
                self.0.pop();
            }
        }
        Mods(module.clone(), &mut sources.modules).visit_file(file);
    }
    for (module, file) in &parsed {
        let mut collector = Collector {
            scope: module.clone(),
            sources: &mut sources,
        };
        collector.visit_file(file);
    }
    sources
}

impl Sources {
    /// The module that defines what `path` names, following re-exports.
    fn defining_module(&self, path: &ModPath) -> ModPath {
        let mut path = path.clone();
        for _ in 0..16 {
            let depth = (0..=path.len())
                .rev()
                .find(|&d| self.modules.contains(&path[..d]))
                .unwrap_or(0);
            let module = path[..depth].to_vec();
            let Some(name) = path.get(depth) else {
                return module;
            };
            match self.reexports.get(&(module.clone(), name.clone())) {
                Some(target) if target != &path[..=depth] => {
                    let mut next = target.clone();
                    next.extend(path[depth + 1..].iter().cloned());
                    path = next;
                }
                _ => return module,
            }
        }
        path
    }

    /// For each parent module, the edges between its children: `a → b` when code in `a` (or
    /// below) uses something defined in `b` (or below). Parents using children and children
    /// using their parents are not edges.
    fn graphs(&self) -> BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> {
        let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (from, path) in &self.uses {
            let to = self.defining_module(path);
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if let (Some(a), Some(b)) = (from.get(common), to.get(common)) {
                graphs
                    .entry(from[..common].to_vec())
                    .or_default()
                    .entry(a.clone())
                    .or_default()
                    .insert(b.clone());
            }
        }
        graphs
    }
}

/// Every cycle found by a depth-first search, each as `a → b → a`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Every cycle of `files`, described for a reader: `crate: config → sinks → config`.
fn describe_cycles(files: &[(String, String)]) -> Vec<String> {
    let sources = read(files);
    let mut described = Vec::new();
    for (parent, graph) in sources.graphs() {
        let scope = if parent.is_empty() {
            "crate".to_string()
        } else {
            format!("crate::{}", parent.join("::"))
        };
        for cycle in cycles(&graph) {
            described.push(format!("{scope}: {}", cycle.join(" → ")));
        }
    }
    described
}

fn source_files(dir: &Path, root: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, root, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path.strip_prefix(root).expect("under src/");
            files.push((relative.to_string_lossy().into_owned(), text));
        }
    }
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    let sources = read(&files);
    let graphs = sources.graphs();
    let found = describe_cycles(&files);
    assert!(
        found.is_empty(),
        "the module graph has cycles (make the dependency point one way: move the shared type \
         down, next to what both sides already use):\n  {}",
        found.join("\n  ")
    );
    // The reader must see the tree it checks: every top-level module, and their dependencies.
    let top = &graphs[&Vec::new()];
    for module in [
        "agent", "cli", "config", "incident", "rules", "sinks", "store", "record",
    ] {
        assert!(
            sources.modules.contains(&vec![module.to_string()]),
            "module {module} not found under src/"
        );
    }
    assert!(
        top.get("cli").is_some_and(|deps| deps.contains("agent")),
        "cli → agent not seen: {top:?}"
    );
    assert!(
        top.get("incident")
            .is_some_and(|deps| deps.contains("rules")),
        "incident → rules not seen: {top:?}"
    );
}

#[test]
fn nothing_below_the_cli_uses_the_agent_or_the_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    let top = read(&files)
        .graphs()
        .remove(&Vec::new())
        .unwrap_or_default();
    let offenders: Vec<String> = top
        .iter()
        .filter(|(from, _)| from.as_str() != "cli")
        .flat_map(|(from, deps)| {
            deps.iter()
                .filter(|to| matches!(to.as_str(), "cli" | "agent"))
                .map(move |to| format!("{from} → {to}"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "only the cli may use the agent, and nothing may use the cli: {offenders:?}"
    );
}

/// The check itself finds cycles: a synthetic tree with the knots this crate once had.
#[test]
fn cycles_are_found_and_named() {
    let files = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect()
    };
    let tree = files(&[
        (
            "lib.rs",
            "pub mod config; pub mod sinks; pub mod incident; pub use config::Config;",
        ),
        (
            "config.rs",
            "pub struct Config { o: crate::sinks::OutputConfig }",
        ),
        (
            "sinks/mod.rs",
            "pub mod config; pub use config::OutputConfig; use crate::Config;",
        ),
        ("sinks/config.rs", "pub struct OutputConfig;"),
        (
            "incident/mod.rs",
            "pub mod db; pub mod outbox; pub use outbox::EventKind;",
        ),
        ("incident/db.rs", "use super::EventKind;"),
        (
            "incident/outbox.rs",
            "pub enum EventKind {} fn f() { super::db::open(); } \
             #[cfg(test)] mod tests { use super::*; }",
        ),
    ]);
    assert_eq!(
        describe_cycles(&tree),
        [
            "crate: config → sinks → config",
            "crate::incident: db → outbox → db"
        ]
    );
    // And one way only is fine.
    let one_way = files(&[
        ("lib.rs", "pub mod config; pub mod sinks;"),
        ("config.rs", "pub struct OutputConfig;"),
        ("sinks.rs", "use crate::config::OutputConfig;"),
    ]);
    assert_eq!(describe_cycles(&one_way), Vec::<String>::new());
}
