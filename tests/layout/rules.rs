//! The rules of the layout check, each on a tree of a few files held in memory.

use super::source::without_unit_tests;
use super::*;

fn graph(files: &[(&str, &str)]) -> ModuleGraph {
    let sources = files.iter().map(|(path, text)| (path.to_string(), text.to_string())).collect();
    ModuleGraph::build("src", &sources)
}

fn module(path: &str) -> ModulePath {
    if path == "crate" { Vec::new() } else { path.split("::").map(str::to_owned).collect() }
}

/// The dependencies as `from -> to` strings.
fn edges(graph: &ModuleGraph) -> Vec<String> {
    graph.edges.keys().map(|(from, to)| format!("{} -> {}", display_module(from), display_module(to))).collect()
}

#[test]
fn grouped_nested_use_reaches_every_leaf() {
    let graph = graph(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::{\n    b::Bee,\n    c::{d::{Dee, Eee}, self},\n};\n"),
        ("b.rs", "pub struct Bee;\n"),
        ("c/mod.rs", "pub mod d;\n"),
        ("c/d.rs", "pub struct Dee;\npub struct Eee;\n"),
    ]);
    assert_eq!(edges(&graph), ["a -> b", "a -> c", "a -> c::d"]);
    let lines: Vec<usize> = graph.edges[&(module("a"), module("c::d"))].iter().map(|evidence| evidence.line).collect();
    assert_eq!(lines, [3]);
}

#[test]
fn super_counts_from_the_module_so_a_mod_rs_climbs_out_of_its_folder() {
    let graph = graph(&[
        ("lib.rs", "mod a;\npub struct Root;\n"),
        ("a/mod.rs", "mod b;\nuse super::Root;\npub struct Top;\n"),
        ("a/b/mod.rs", "mod c;\nuse super::super::Root;\n"),
        ("a/b/c.rs", "use super::super::Top;\nfn f() { super::super::super::Root; }\n"),
    ]);
    assert_eq!(edges(&graph), ["a -> crate", "a::b -> crate", "a::b::c -> crate", "a::b::c -> a"]);
}

#[test]
fn a_re_exported_item_leads_to_the_file_that_defines_it() {
    let graph = graph(&[
        ("lib.rs", "mod user;\npub mod shapes;\n"),
        (
            "shapes/mod.rs",
            "mod circle;\nmod square;\npub use circle::Circle;\npub(crate) use square::{Square, Side};\n",
        ),
        ("shapes/circle.rs", "pub struct Circle;\n"),
        ("shapes/square.rs", "pub struct Square;\npub type Side = f64;\n"),
        ("user.rs", "use crate::shapes::Circle;\nfn f() -> crate::shapes::Side { 1.0 }\n"),
    ]);
    assert_eq!(edges(&graph), ["user -> shapes::circle", "user -> shapes::square"]);
}

#[test]
fn a_parent_that_uses_what_it_re_exports_depends_on_the_child() {
    let graph = graph(&[
        ("lib.rs", "mod shapes;\n"),
        ("shapes/mod.rs", "mod circle;\npub use circle::Circle;\n\npub fn unit() -> Circle {\n    Circle\n}\n"),
        ("shapes/circle.rs", "pub struct Circle;\n"),
    ]);
    assert_eq!(edges(&graph), ["shapes -> shapes::circle"]);
    let evidence = &graph.edges[&(module("shapes"), module("shapes::circle"))];
    assert_eq!(evidence.iter().map(|evidence| evidence.line).collect::<Vec<_>>(), [4]);
}

#[test]
fn a_parent_that_only_declares_and_re_exports_does_not_depend_on_the_child() {
    let graph = graph(&[
        ("lib.rs", "pub mod shapes;\npub use shapes::Circle;\n"),
        (
            "shapes/mod.rs",
            "mod circle;\npub use self::circle::Circle;\n/// A [`Circle`] of radius one.\npub const UNIT: f64 = 1.0;\n",
        ),
        ("shapes/circle.rs", "pub struct Circle;\n"),
    ]);
    assert_eq!(edges(&graph), Vec::<String>::new());
}

#[test]
fn a_variable_named_like_a_re_exported_function_is_not_a_use_of_it() {
    let graph = graph(&[
        ("lib.rs", "mod client;\nmod server;\n"),
        (
            "client/mod.rs",
            "mod source;\npub use source::source;\nfn wrap() -> impl Fn(u8) -> E {\n    |source| E { source }\n}\n",
        ),
        ("client/source.rs", "pub fn source() {}\n"),
        ("server/mod.rs", "mod source;\npub use source::source;\nfn start() {\n    source();\n}\n"),
        ("server/source.rs", "pub fn source() {}\n"),
    ]);
    assert_eq!(edges(&graph), ["server -> server::source"]);
}

#[test]
fn a_private_import_from_a_child_is_a_dependency() {
    let graph = graph(&[("lib.rs", "mod helpers;\nuse helpers::assist;\n"), ("helpers.rs", "pub fn assist() {}\n")]);
    assert_eq!(edges(&graph), ["crate -> helpers"]);
}

#[test]
fn comments_strings_and_unit_tests_are_not_dependencies() {
    let graph = graph(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n#[cfg(test)]\n#[allow(dead_code)]\nmod fixtures;\n"),
        ("fixtures.rs", "use crate::a::Ay;\n"),
        (
            "a.rs",
            "//! See [`crate::b::Bee`].\n/// Unlike [`super::b::Bee`].\npub struct Ay; // crate::b::Bee\n\
             /* crate::b::Bee */\nconst S: &str = \"crate::b::Bee\";\nconst R: &str = r#\"crate::b::Bee\"#;\n\
             fn f<'a>(x: &'a str) -> char { 'c' }\n\
             #[cfg(test)]\nmod tests;\nuse crate::b::Bee;\n",
        ),
        ("a/tests.rs", "use crate::c::Sea;\n"),
        ("b.rs", "pub struct Bee;\nuse crate::a::Ay;\n#[cfg(test)]\nmod tests {\n    use crate::a::Ay;\n}\n"),
        ("c.rs", "pub struct Sea;\n#[cfg(test)]\nmod tests {\n    use crate::a::Ay;\n}\n"),
    ]);
    assert_eq!(edges(&graph), ["b -> a"]);
    assert!(!graph.files.contains_key(&module("a::tests")), "a test-only file is not part of the crate's graph");
    assert!(!graph.files.contains_key(&module("fixtures")), "a test-only file is not part of the crate's graph");
}

#[test]
fn only_a_test_module_named_tests_ends_the_file() {
    assert_eq!(without_unit_tests("a\n#[cfg(test)]\nmod tests {\n}\n"), "a\n");
    assert_eq!(without_unit_tests("a\n#[cfg(test)]\n#[allow(unused)]\npub(crate) mod tests;\n"), "a\n");
    let helpers = "a\n#[cfg(test)]\nmod tests_support;\nb\n";
    assert_eq!(without_unit_tests(helpers), helpers);
}

#[test]
fn a_binary_beside_the_library_is_left_out() {
    let graph =
        graph(&[("lib.rs", "pub mod a;\n"), ("a.rs", "pub fn f() {}\n"), ("main.rs", "mod a;\nfn main() {}\n")]);
    assert_eq!(graph.files.keys().cloned().collect::<Vec<_>>(), [module("crate"), module("a")]);
}

#[test]
fn inline_modules_stay_in_their_file() {
    let graph = graph(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "pub struct Ay;\nmod inner {\n    use super::Ay;\n    fn f() { crate::b::g(); }\n}\n"),
        ("b.rs", "pub fn g() {}\n"),
    ]);
    assert_eq!(edges(&graph), ["a -> b"]);
}

#[test]
fn two_files_that_import_each_other_are_reported_with_the_lines_that_do_it() {
    let graph = graph(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::b::Bee;\npub struct Ay;\n"),
        ("b.rs", "pub struct Bee;\n\nfn f() {\n    let _ = super::a::Ay;\n}\n"),
        ("c.rs", "use crate::a::Ay;\n"),
    ]);
    let cycles = graph.cycles();
    assert_eq!(cycles, [vec![module("a"), module("b")]]);
    let report = graph.describe(&cycles);
    assert!(report.contains("cycle among {a, b}, e.g. a -> b -> a"), "{report}");
    assert!(report.contains("src/a.rs:1: use crate::b::Bee;"), "{report}");
    assert!(report.contains("src/b.rs:4: let _ = super::a::Ay;"), "{report}");
    assert!(!report.contains("src/c.rs"), "{report}");
}

#[test]
fn a_parent_and_a_child_that_use_each_other_form_a_cycle() {
    let graph = graph(&[
        ("lib.rs", "mod shapes;\n"),
        ("shapes/mod.rs", "mod circle;\npub use circle::Circle;\npub struct Unit;\nfn f(c: Circle) {}\n"),
        ("shapes/circle.rs", "use super::Unit;\npub struct Circle;\n"),
    ]);
    assert_eq!(graph.cycles(), [vec![module("shapes"), module("shapes::circle")]]);
}
