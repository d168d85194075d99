//! The project's own notes stay true to the tree: the module map in `docs/design.md` names every source file, and
//! every file it names exists.

use std::collections::BTreeSet;
use std::path::Path;

/// Where the crates' sources are.
const SOURCE_DIRS: [&str; 3] = ["operators/src", "connectors/src", "dataflows"];

/// Every `.rs` file below `dir`, as a path relative to the repository's root.
fn sources(root: &Path, dir: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(root.join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            sources(root, &relative, out);
        } else if relative.ends_with(".rs") {
            out.insert(relative);
        }
    }
}

#[test]
fn r14_the_module_map_names_every_source_file_and_only_those() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/design.md")).unwrap();
    let start = design.find("## Where things live").expect("docs/design.md has a module map");
    let end = start + design[start..].find("\n## ").expect("a section follows the module map");
    let named: BTreeSet<String> = design[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.ends_with(".rs") && SOURCE_DIRS.iter().any(|dir| quoted.starts_with(dir)))
        .map(str::to_owned)
        .collect();
    let mut present = BTreeSet::new();
    for dir in SOURCE_DIRS {
        sources(root, dir, &mut present);
    }
    let unnamed: Vec<_> = present.difference(&named).collect();
    let missing: Vec<_> = named.difference(&present).collect();
    assert_eq!((unnamed, missing), (vec![], vec![]), "(files the map leaves out, files it names that do not exist)");
}
