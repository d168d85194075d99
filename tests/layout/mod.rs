//! The files of each crate depend on one another in one direction only: no file reaches, through `crate::`, `super::`,
//! `self::` or a child's name, a file that reaches back to it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

mod source;

use source::FileFacts;

/// The crates whose files are checked, as directories relative to the repository's root.
const CRATE_DIRS: [&str; 3] = ["operators/src", "connectors/src", "dataflows"];

/// How many `pub use` hops a path is followed through before it stops at the file it has reached.
const MAX_RE_EXPORT_HOPS: usize = 8;

/// A module as the names from the crate's root to it; the root itself is empty.
type ModulePath = Vec<String>;

#[test]
fn r14_no_two_files_of_a_crate_import_each_other() {
    let root = repository_root();
    let mut reports = Vec::new();
    for dir in CRATE_DIRS {
        let graph = ModuleGraph::build(dir, &read_sources(&root.join(dir)));
        let cycles = graph.cycles();
        let (files, dependencies) = (graph.files.len(), graph.edges.len());
        println!("{dir}: {files} module files, {dependencies} dependencies, {} cycles", cycles.len());
        if !cycles.is_empty() {
            reports.push(graph.describe(&cycles));
        }
    }
    let advice = "move what both sides need into one of them, or into a file of its own, so that imports point one way";
    assert!(reports.is_empty(), "files that import each other ({advice}):\n\n{}", reports.join("\n"));
}

/// `LAYOUT_ROOT` points the check at another copy of the tree; without it, the repository this file belongs to.
fn repository_root() -> PathBuf {
    match (std::env::var_os("LAYOUT_ROOT"), option_env!("CARGO_MANIFEST_DIR")) {
        (Some(root), _) => PathBuf::from(root),
        (None, Some(root)) => PathBuf::from(root),
        (None, None) => panic!("set LAYOUT_ROOT to the repository's root"),
    }
}

/// Every `.rs` file below `dir`, keyed by its path relative to `dir` with `/` separators.
fn read_sources(dir: &Path) -> BTreeMap<String, String> {
    let mut sources = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap_or_else(|error| panic!("{}: {error}", next.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let relative = path.strip_prefix(dir).unwrap();
                let key = relative.components().map(|part| part.as_os_str().to_str().unwrap()).collect::<Vec<_>>();
                let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                sources.insert(key.join("/"), text);
            }
        }
    }
    sources
}

/// `a/b.rs` is `a::b`, `a/mod.rs` is `a`, `lib.rs` and `main.rs` are the root.
fn module_path_of(relative_file: &str) -> ModulePath {
    let mut names: ModulePath = relative_file.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    let is_root = names.len() == 1 && matches!(names[0].as_str(), "lib" | "main");
    if is_root || names.last().is_some_and(|last| last == "mod") {
        names.pop();
    }
    names
}

fn display_module(module: &[String]) -> String {
    if module.is_empty() { "crate".to_owned() } else { module.join("::") }
}

/// Whether `module` lies strictly inside `ancestor`.
fn is_below(module: &[String], ancestor: &[String]) -> bool {
    module.len() > ancestor.len() && module.starts_with(ancestor)
}

/// Why `from` depends on `to`: one line of `from`'s file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Evidence {
    line: usize,
    note: Option<String>,
}

/// A file of the crate: its path for the report, its lines to quote, and what it says about other files.
struct SourceFile {
    relative: String,
    lines: Vec<String>,
    facts: FileFacts,
}

/// The files of one crate and the dependencies between them.
struct ModuleGraph {
    crate_dir: String,
    files: BTreeMap<ModulePath, SourceFile>,
    edges: BTreeMap<(ModulePath, ModulePath), BTreeSet<Evidence>>,
}

impl ModuleGraph {
    /// `sources` maps paths relative to `crate_dir` to their text. Only files the crate compiles outside its unit tests
    /// take part: those declared, from the root down, by `mod` lines not under `#[cfg(test)]`.
    fn build(crate_dir: &str, sources: &BTreeMap<String, String>) -> Self {
        // A `main.rs` beside a `lib.rs` is a binary of its own that uses the library by the crate's name.
        let root_file = if sources.contains_key("lib.rs") { "lib.rs" } else { "main.rs" };
        let mut parsed: BTreeMap<ModulePath, (String, &String)> = BTreeMap::new();
        for (relative, text) in sources {
            if relative != "main.rs" || root_file == "main.rs" {
                parsed.insert(module_path_of(relative), (relative.clone(), text));
            }
        }
        let mut files = BTreeMap::new();
        let mut pending = vec![ModulePath::new()];
        while let Some(module) = pending.pop() {
            let Some((relative, text)) = parsed.remove(&module) else { continue };
            let facts = FileFacts::parse(&module, text);
            pending.extend(facts.declared_modules.iter().cloned());
            let lines = text.lines().map(str::to_owned).collect();
            files.insert(module, SourceFile { relative: format!("{crate_dir}/{relative}"), lines, facts });
        }
        let mut graph = ModuleGraph { crate_dir: crate_dir.to_owned(), files, edges: BTreeMap::new() };
        graph.edges = graph.find_edges();
        graph
    }

    /// Every dependency between two files, with the lines that make it.
    fn find_edges(&self) -> BTreeMap<(ModulePath, ModulePath), BTreeSet<Evidence>> {
        let mut edges: BTreeMap<(ModulePath, ModulePath), BTreeSet<Evidence>> = BTreeMap::new();
        for (module, file) in &self.files {
            let mut found = Vec::new();
            for import in &file.facts.imports {
                let Some(target) = self.resolve(&import.path.scope, &import.path.segments, MAX_RE_EXPORT_HOPS) else {
                    continue;
                };
                if import.public && is_below(&target, module) {
                    // Re-exporting a child's item is the child's public face, not a use of it; using the item here is.
                    let Some(name) = import.name.as_ref().filter(|name| *name != "_") else { continue };
                    if let Some(&line) = file.facts.first_mentions.get(name) {
                        let note = format!("uses `{name}`, re-exported on line {}", import.path.line);
                        found.push((target, Evidence { line, note: Some(note) }));
                    }
                } else {
                    found.push((target, Evidence { line: import.path.line, note: None }));
                }
            }
            for path in &file.facts.paths {
                if let Some(target) = self.resolve(&path.scope, &path.segments, MAX_RE_EXPORT_HOPS) {
                    found.push((target, Evidence { line: path.line, note: None }));
                }
            }
            for (target, evidence) in found {
                if target != *module {
                    edges.entry((module.clone(), target)).or_default().insert(evidence);
                }
            }
        }
        edges
    }

    /// The file that `segments`, written in `scope`, leads to; none for paths into other crates or local names.
    fn resolve(&self, scope: &[String], segments: &[String], hops_left: usize) -> Option<ModulePath> {
        let first = segments.first()?.as_str();
        let (mut module, mut rest) = match first {
            "crate" => (ModulePath::new(), 1),
            "self" | "super" => (scope.to_vec(), 0),
            child => {
                let mut candidate = scope.to_vec();
                candidate.push(child.to_owned());
                if !self.files.contains_key(&candidate) {
                    return None;
                }
                (scope.to_vec(), 0)
            }
        };
        while let Some(step) = segments.get(rest).filter(|step| matches!(step.as_str(), "self" | "super")) {
            if step == "super" {
                module.pop()?;
            }
            rest += 1;
        }
        while let Some(next) = segments.get(rest) {
            let mut child = module.clone();
            child.push(next.clone());
            if !self.files.contains_key(&child) {
                break;
            }
            module = child;
            rest += 1;
        }
        // Inline modules live in the file of their nearest ancestor that has one.
        while !self.files.contains_key(&module) {
            module.pop()?;
            rest = segments.len();
        }
        match segments.get(rest) {
            Some(item) => Some(self.defining_file(&module, item, hops_left)),
            None => Some(module),
        }
    }

    /// The file that defines `item` as seen through `module`: the module's own file, or the file below it that the
    /// module re-exports the item from.
    fn defining_file(&self, module: &ModulePath, item: &str, hops_left: usize) -> ModulePath {
        let facts = &self.files[module].facts;
        if hops_left == 0 || facts.definitions.contains(item) {
            return module.clone();
        }
        if let Some(import) =
            facts.imports.iter().find(|import| import.top_level && import.name.as_deref() == Some(item))
        {
            return match self.resolve(&import.path.scope, &import.path.segments, hops_left - 1) {
                Some(target) if is_below(&target, module) => target,
                _ => module.clone(),
            };
        }
        // Reached through a glob re-export, or a name this check cannot see: the shallowest file below that defines it.
        self.files
            .iter()
            .filter(|(below, file)| is_below(below, module) && file.facts.definitions.contains(item))
            .min_by_key(|(below, _)| below.len())
            .map_or_else(|| module.clone(), |(below, _)| below.clone())
    }

    /// Every group of two or more files that reach each other, each sorted, by Tarjan's algorithm.
    fn cycles(&self) -> Vec<Vec<ModulePath>> {
        let nodes: Vec<&ModulePath> = self.files.keys().collect();
        let position: BTreeMap<&ModulePath, usize> = nodes.iter().enumerate().map(|(at, node)| (*node, at)).collect();
        let mut successors = vec![Vec::new(); nodes.len()];
        for (from, to) in self.edges.keys() {
            if let (Some(&from), Some(&to)) = (position.get(from), position.get(to)) {
                successors[from].push(to);
            }
        }
        let mut tarjan = Tarjan {
            successors: &successors,
            index_of: vec![None; nodes.len()],
            low_link: vec![0; nodes.len()],
            on_stack: vec![false; nodes.len()],
            stack: Vec::new(),
            next_index: 0,
            components: Vec::new(),
        };
        for node in 0..nodes.len() {
            if tarjan.index_of[node].is_none() {
                tarjan.visit(node);
            }
        }
        let mut cycles: Vec<Vec<ModulePath>> = tarjan
            .components
            .into_iter()
            .filter(|component| component.len() > 1)
            .map(|component| {
                let mut members: Vec<ModulePath> = component.into_iter().map(|node| nodes[node].clone()).collect();
                members.sort();
                members
            })
            .collect();
        cycles.sort();
        cycles
    }

    /// The shortest way from the first member of `component` back to itself, as the modules along it.
    fn shortest_loop(&self, component: &[ModulePath]) -> Vec<ModulePath> {
        let start = &component[0];
        let mut came_from: BTreeMap<&ModulePath, &ModulePath> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(current) = queue.pop_front() {
            for (from, to) in self.edges.keys() {
                if from != current || !component.contains(to) {
                    continue;
                }
                if to == start {
                    // Walk back from `current` to `start`, the one module the search never records a step into.
                    let mut path = vec![start.clone(), current.clone()];
                    let mut step = current;
                    while let Some(&previous) = came_from.get(step) {
                        path.push(previous.clone());
                        step = previous;
                    }
                    path.reverse();
                    return path;
                }
                if !came_from.contains_key(to) {
                    came_from.insert(to, current);
                    queue.push_back(to);
                }
            }
        }
        Vec::new()
    }

    /// Each cycle's files, one loop through them, and every line that makes a dependency inside it.
    fn describe(&self, cycles: &[Vec<ModulePath>]) -> String {
        let mut report = vec![format!("{}: {} cycle(s)", self.crate_dir, cycles.len())];
        for component in cycles {
            let members: Vec<String> = component.iter().map(|module| display_module(module)).collect();
            let loop_names: Vec<String> =
                self.shortest_loop(component).iter().map(|module| display_module(module)).collect();
            report.push(format!("  cycle among {{{}}}, e.g. {}", members.join(", "), loop_names.join(" -> ")));
            for ((from, to), evidence) in &self.edges {
                if !component.contains(from) || !component.contains(to) {
                    continue;
                }
                report.push(format!("    {} -> {}", display_module(from), display_module(to)));
                let file = &self.files[from];
                for Evidence { line, note } in evidence {
                    let text = file.lines.get(line - 1).map_or("", |text| text.trim());
                    let note = note.as_ref().map(|note| format!("  ({note})")).unwrap_or_default();
                    report.push(format!("      {}:{line}: {text}{note}", file.relative));
                }
            }
        }
        report.push(String::new());
        report.join("\n")
    }
}

/// The state of Tarjan's strongly-connected-components search over node indices.
struct Tarjan<'a> {
    successors: &'a [Vec<usize>],
    index_of: Vec<Option<usize>>,
    low_link: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next_index: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, node: usize) {
        self.index_of[node] = Some(self.next_index);
        self.low_link[node] = self.next_index;
        self.next_index += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for &next in &self.successors[node] {
            match self.index_of[next] {
                None => {
                    self.visit(next);
                    self.low_link[node] = self.low_link[node].min(self.low_link[next]);
                }
                Some(index) if self.on_stack[next] => self.low_link[node] = self.low_link[node].min(index),
                Some(_) => {}
            }
        }
        if Some(self.low_link[node]) == self.index_of[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[cfg(test)]
mod rules;
