//! Reading a Rust source file as far as the layout check needs: tokens without comments and literals, the items a
//! file defines, its `mod` lines, its imports and the paths its code names.

use std::collections::{BTreeMap, BTreeSet};

use super::ModulePath;

/// The words that, followed by a name, define an item other paths can point at.
const ITEM_KEYWORDS: [&str; 8] = ["struct", "enum", "fn", "trait", "type", "const", "static", "union"];

/// The source up to the unit tests: what those tests import says nothing about how the files depend on each other.
pub(super) fn without_unit_tests(source: &str) -> &str {
    let mut offset = 0;
    let mut lines = source.split_inclusive('\n');
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let item = lines.clone().map(str::trim).find(|next| !next.is_empty() && !next.starts_with("#["));
            if item.is_some_and(declares_mod_tests) {
                return &source[..offset];
            }
        }
        offset += line.len();
    }
    source
}

/// Whether `item` starts `mod tests`, after any visibility.
pub(super) fn declares_mod_tests(item: &str) -> bool {
    let mut rest = item;
    if let Some(after_pub) = rest.strip_prefix("pub") {
        rest =
            after_pub.strip_prefix('(').and_then(|inside| inside.split_once(')')).map_or(after_pub, |(_, after)| after);
    }
    let after_name =
        rest.trim_start().strip_prefix("mod").map(str::trim_start).and_then(|rest| rest.strip_prefix("tests"));
    after_name.is_some_and(|after| !after.starts_with(|next: char| next.is_alphanumeric() || next == '_'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenKind {
    Identifier,
    Punctuation,
    Literal,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) text: String,
    pub(super) line: usize,
}

/// Splits Rust source into identifiers, punctuation (`::` as one token) and literals, dropping comments and the
/// contents of literals so that neither can pass for a path.
pub(super) fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let at = |index: usize| chars.get(index).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut index = 0;
    let mut push = |kind, text: String, line| tokens.push(Token { kind, text, line });
    while index < chars.len() {
        let current = chars[index];
        let start_line = line;
        if current == '\n' {
            line += 1;
            index += 1;
        } else if current.is_whitespace() {
            index += 1;
        } else if current == '/' && at(index + 1) == '/' {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
        } else if current == '/' && at(index + 1) == '*' {
            let mut depth = 0;
            while index < chars.len() {
                if chars[index] == '/' && at(index + 1) == '*' {
                    depth += 1;
                    index += 2;
                } else if chars[index] == '*' && at(index + 1) == '/' {
                    depth -= 1;
                    index += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[index] == '\n');
                    index += 1;
                }
            }
        } else if current == '"' {
            index = skip_string(&chars, index + 1, &mut line);
            push(TokenKind::Literal, String::new(), start_line);
        } else if current == '\'' {
            if at(index + 1) == '\\' || (at(index + 2) == '\'' && at(index + 1) != '\'') {
                index = skip_char_literal(&chars, index + 1);
                push(TokenKind::Literal, String::new(), start_line);
            } else {
                // A lifetime or a loop label: neither names a module.
                index += 1;
                while at(index).is_alphanumeric() || at(index) == '_' {
                    index += 1;
                }
            }
        } else if current.is_ascii_digit() {
            while at(index).is_alphanumeric()
                || at(index) == '_'
                || (at(index) == '.' && at(index + 1).is_ascii_digit())
            {
                index += 1;
            }
            push(TokenKind::Literal, String::new(), start_line);
        } else if current.is_alphabetic() || current == '_' {
            let start = index;
            while at(index).is_alphanumeric() || at(index) == '_' {
                index += 1;
            }
            let word: String = chars[start..index].iter().collect();
            if matches!(word.as_str(), "r" | "br" | "cr") && raw_string_hashes(&chars, index).is_some() {
                index = skip_raw_string(&chars, index, &mut line);
                push(TokenKind::Literal, String::new(), start_line);
            } else if word == "r" && at(index) == '#' {
                // A raw identifier, `r#name`.
                let start = index + 1;
                index = start;
                while at(index).is_alphanumeric() || at(index) == '_' {
                    index += 1;
                }
                push(TokenKind::Identifier, chars[start..index].iter().collect(), start_line);
            } else if matches!(word.as_str(), "b" | "c") && at(index) == '"' {
                index = skip_string(&chars, index + 1, &mut line);
                push(TokenKind::Literal, String::new(), start_line);
            } else if word == "b" && at(index) == '\'' {
                index = skip_char_literal(&chars, index + 1);
                push(TokenKind::Literal, String::new(), start_line);
            } else {
                push(TokenKind::Identifier, word, start_line);
            }
        } else if current == ':' && at(index + 1) == ':' {
            index += 2;
            push(TokenKind::Punctuation, "::".to_owned(), start_line);
        } else {
            index += 1;
            push(TokenKind::Punctuation, current.to_string(), start_line);
        }
    }
    tokens
}

/// The index after the closing quote of a string whose contents start at `index`.
pub(super) fn skip_string(chars: &[char], mut index: usize, line: &mut usize) -> usize {
    while index < chars.len() && chars[index] != '"' {
        *line += usize::from(chars[index] == '\n');
        index += if chars[index] == '\\' { 2 } else { 1 };
    }
    index + 1
}

/// The index after the closing quote of a character literal whose contents start at `index`.
pub(super) fn skip_char_literal(chars: &[char], mut index: usize) -> usize {
    if chars.get(index) == Some(&'\\') {
        index += 2;
    }
    while index < chars.len() && chars[index] != '\'' {
        index += 1;
    }
    index + 1
}

/// The number of `#` between `r` and the opening quote of a raw string starting at `index`, if it is one.
pub(super) fn raw_string_hashes(chars: &[char], index: usize) -> Option<usize> {
    let hashes = chars[index..].iter().take_while(|&&c| c == '#').count();
    (chars.get(index + hashes) == Some(&'"')).then_some(hashes)
}

/// The index after a raw string whose `#`s or opening quote start at `index`.
pub(super) fn skip_raw_string(chars: &[char], index: usize, line: &mut usize) -> usize {
    let hashes = raw_string_hashes(chars, index).unwrap_or(0);
    let mut index = index + hashes + 1;
    while index < chars.len() {
        if chars[index] == '"' && chars[index + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return index + 1 + hashes;
        }
        *line += usize::from(chars[index] == '\n');
        index += 1;
    }
    index
}

/// A path as written in one file, with the module it is written in (a file's module, or an inline module in it).
#[derive(Debug, Clone)]
pub(super) struct PathUse {
    pub(super) scope: ModulePath,
    pub(super) segments: Vec<String>,
    pub(super) line: usize,
}

/// One leaf of a `use` tree: `use a::{b as c, d::*}` has `a::b` imported as `c` and the glob `a::d::*`.
#[derive(Debug, Clone)]
pub(super) struct Import {
    pub(super) path: PathUse,
    /// The name the import brings into scope; none for a glob.
    pub(super) name: Option<String>,
    pub(super) public: bool,
    /// Whether it stands at the file's top level, where other files can reach it, rather than inside a block.
    pub(super) top_level: bool,
}

/// What one file says about the modules around it, once its comments and unit tests are set aside.
#[derive(Debug, Default)]
pub(super) struct FileFacts {
    /// Names of the items the file defines at its top level.
    pub(super) definitions: BTreeSet<String>,
    /// `mod name;` declarations outside `#[cfg(test)]`, as full module paths.
    pub(super) declared_modules: Vec<ModulePath>,
    pub(super) imports: Vec<Import>,
    /// Paths in code, outside `use` declarations.
    pub(super) paths: Vec<PathUse>,
    /// The first line on which each name is used in code outside `use` declarations, other than as a field, a method
    /// or the tail of another path.
    pub(super) first_mentions: BTreeMap<String, usize>,
}

impl FileFacts {
    pub(super) fn parse(module: &[String], source: &str) -> Self {
        let tokens = tokenize(without_unit_tests(source));
        let text = |index: usize| tokens.get(index).map_or("", |token: &Token| token.text.as_str());
        let is_identifier = |index: usize| tokens.get(index).is_some_and(|token| token.kind == TokenKind::Identifier);
        let mut facts = FileFacts::default();
        let mut depth: usize = 0;
        // Inline `mod name { ... }` blocks being read, each with the depth inside its braces.
        let mut inline_modules: Vec<(String, usize)> = Vec::new();
        let mut index = 0;
        while index < tokens.len() {
            let scope: ModulePath =
                module.iter().cloned().chain(inline_modules.iter().map(|(name, _)| name.clone())).collect();
            let token = &tokens[index];
            match token.text.as_str() {
                "{" => depth += 1,
                "}" => {
                    depth = depth.saturating_sub(1);
                    if inline_modules.last().is_some_and(|(_, inside)| *inside > depth) {
                        inline_modules.pop();
                    }
                }
                // `impl Trait + use<'a>` captures lifetimes; it imports nothing.
                "use" if text(index + 1) != "<" => {
                    let public = is_public(&tokens, index);
                    let mut leaves = Vec::new();
                    let end = parse_use_tree(&tokens, index + 1, &[], &mut leaves);
                    for (segments, name, line) in leaves {
                        let path = PathUse { scope: scope.clone(), segments, line };
                        facts.imports.push(Import { path, name, public, top_level: depth == 0 });
                    }
                    index = end;
                    while index < tokens.len() && text(index) != ";" {
                        index += 1;
                    }
                    continue;
                }
                "mod" if is_identifier(index + 1) => {
                    let name = text(index + 1).to_owned();
                    if depth == 0 {
                        facts.definitions.insert(name.clone());
                    }
                    if text(index + 2) == "{" {
                        inline_modules.push((name, depth + 1));
                    } else if !has_cfg_test_attribute(&tokens, index) {
                        facts.declared_modules.push(scope.iter().cloned().chain([name]).collect());
                    }
                    index += 2;
                    continue;
                }
                // `pub(in crate::a)` restricts visibility; it does not use `a`.
                "pub" if text(index + 1) == "(" && text(index + 2) == "in" => {
                    while index < tokens.len() && text(index) != ")" {
                        index += 1;
                    }
                }
                "macro_rules" if text(index + 1) == "!" && is_identifier(index + 2) => {
                    if depth == 0 {
                        facts.definitions.insert(text(index + 2).to_owned());
                    }
                    index += 3;
                    continue;
                }
                keyword if depth == 0 && ITEM_KEYWORDS.contains(&keyword) => {
                    let name_at = if text(index + 1) == "mut" { index + 2 } else { index + 1 };
                    if is_identifier(name_at) && !matches!(text(name_at), "fn" | "_") {
                        facts.definitions.insert(text(name_at).to_owned());
                    }
                }
                _ if token.kind == TokenKind::Identifier => {
                    let previous = if index == 0 { "" } else { text(index - 1) };
                    // A lower-case name may be a local variable or a field as well as a function or module: only a
                    // call or a path through it is sure to mean the item.
                    let surely_the_item =
                        !token.text.starts_with(char::is_lowercase) || matches!(text(index + 1), "(" | "::" | "!");
                    if surely_the_item && !matches!(previous, "." | "::" | "fn") {
                        facts.first_mentions.entry(token.text.clone()).or_insert(token.line);
                    }
                    if previous != "::" && text(index + 1) == "::" && is_identifier(index + 2) {
                        let mut segments = vec![token.text.clone()];
                        let mut next = index + 1;
                        while text(next) == "::" && is_identifier(next + 1) {
                            segments.push(text(next + 1).to_owned());
                            next += 2;
                        }
                        facts.paths.push(PathUse { scope, segments, line: token.line });
                    }
                }
                _ => {}
            }
            index += 1;
        }
        facts
    }
}

/// Where the visibility of the item whose keyword is at `index` starts: at its `pub`, or at `index` without one.
pub(super) fn visibility_start(tokens: &[Token], index: usize) -> usize {
    let text = |index: usize| tokens[index].text.as_str();
    if index > 0 && text(index - 1) == "pub" {
        return index - 1;
    }
    if index > 0 && text(index - 1) == ")" {
        let open = (0..index - 1).rev().find(|&at| text(at) == "(");
        if let Some(open) = open.filter(|&open| open > 0 && text(open - 1) == "pub") {
            return open - 1;
        }
    }
    index
}

/// Whether the `use` at `index` carries a `pub`, `pub(crate)`, `pub(super)` or `pub(in ...)`.
pub(super) fn is_public(tokens: &[Token], index: usize) -> bool {
    visibility_start(tokens, index) < index
}

/// Whether `#[cfg(test)]` is among the attributes of the `mod` at `index`.
pub(super) fn has_cfg_test_attribute(tokens: &[Token], index: usize) -> bool {
    let mut before = visibility_start(tokens, index);
    while before > 0 && tokens[before - 1].text == "]" {
        let close = before - 1;
        let mut depth = 0;
        let mut open = close;
        loop {
            match tokens[open].text.as_str() {
                "]" => depth += 1,
                "[" => depth -= 1,
                _ => {}
            }
            if depth == 0 || open == 0 {
                break;
            }
            open -= 1;
        }
        let inside: Vec<&str> = tokens[open + 1..close].iter().map(|token| token.text.as_str()).collect();
        if inside == ["cfg", "(", "test", ")"] {
            return true;
        }
        // Step over the `#` before the `[`.
        before = open.saturating_sub(1);
    }
    false
}

/// Reads the `use` tree starting at `index` under the path `prefix`, adding one `(path, imported name, line)` per leaf;
/// returns the index after the tree.
pub(super) fn parse_use_tree(
    tokens: &[Token],
    mut index: usize,
    prefix: &[String],
    leaves: &mut Vec<(Vec<String>, Option<String>, usize)>,
) -> usize {
    let text = |index: usize| tokens.get(index).map_or("", |token: &Token| token.text.as_str());
    let mut path = prefix.to_vec();
    if path.is_empty() && text(index) == "::" {
        // `::name` is another crate; the marker keeps it from resolving to a module of this one.
        path.push("::".to_owned());
        index += 1;
    }
    while let Some(token) = tokens.get(index) {
        match token.text.as_str() {
            "{" => {
                index += 1;
                while index < tokens.len() && text(index) != "}" && text(index) != ";" {
                    index = parse_use_tree(tokens, index, &path, leaves);
                    if text(index) == "," {
                        index += 1;
                    }
                }
                return index + 1;
            }
            "*" => {
                leaves.push((path, None, token.line));
                return index + 1;
            }
            _ if token.kind == TokenKind::Identifier => {
                // `a::{self, b}` imports `a` itself.
                let mut name = match path.last() {
                    Some(last) if token.text == "self" && text(index + 1) != "::" => last.clone(),
                    _ => {
                        path.push(token.text.clone());
                        token.text.clone()
                    }
                };
                index += 1;
                if text(index) == "::" {
                    index += 1;
                    continue;
                }
                if text(index) == "as" {
                    text(index + 1).clone_into(&mut name);
                    index += 2;
                }
                leaves.push((path, Some(name), token.line));
                return index;
            }
            _ => return index + 1,
        }
    }
    index
}
