//! Kernel services that read the catalog and the SQL text: completion,
//! inspection and the is-complete check. They never read data values.

use crate::bind::functions::{FUNCTIONS, FunctionKind};
use crate::catalog::{Catalog, Column, Table};
use crate::config::Role;
use crate::parse::MAX_CELL_BYTES;
use sqlparser::dialect::GenericDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "GROUP", "BY", "HAVING", "ORDER", "LIMIT", "OFFSET", "DISTINCT", "AS", "JOIN", "INNER", "LEFT", "OUTER", "ON", "USING", "WITH",
    "UNION", "ALL", "CASE", "WHEN", "THEN", "ELSE", "END", "CAST", "IN", "BETWEEN", "LIKE", "ILIKE", "IS", "NULL", "NOT", "AND", "OR", "ASC", "DESC", "NULLS",
    "FIRST", "LAST", "TRUE", "FALSE", "EXTRACT", "DATE", "SHOW", "TABLES", "DESCRIBE", "EXPLAIN", "WITHIN", "CHART",
];

/// Whether `word` is a keyword (and must be quoted to be used as a name).
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// Completion candidates for the word ending at `cursor` (a byte offset).
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub matches: Vec<String>,
    pub start: usize,
    pub end: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Tables mentioned after FROM/JOIN in `text`, with their aliases.
fn tables_in_scope<'c>(catalog: &'c Catalog, text: &str) -> Vec<(String, &'c Table)> {
    let dialect = GenericDialect {};
    let tokens: Vec<Token> = match Tokenizer::new(&dialect, text).tokenize() {
        Ok(t) => t,
        // An unterminated string at the cursor: look at the text before it.
        Err(_) => match text.rfind('\'') {
            Some(i) => Tokenizer::new(&dialect, &text[..i]).tokenize().unwrap_or_default(),
            None => vec![],
        },
    };
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut found = Vec::new();
    for (i, t) in words.iter().enumerate() {
        let Token::Word(w) = t else { continue };
        if !(w.value.eq_ignore_ascii_case("from") || w.value.eq_ignore_ascii_case("join")) {
            continue;
        }
        let Some(Token::Word(name)) = words.get(i + 1) else { continue };
        let Some(table) = catalog.table(&name.value) else { continue };
        let mut alias = table.name.clone();
        match (words.get(i + 2), words.get(i + 3)) {
            (Some(Token::Word(a)), Some(Token::Word(b))) if a.value.eq_ignore_ascii_case("as") => alias = b.value.clone(),
            (Some(Token::Word(a)), _) if !is_keyword(&a.value) => alias = a.value.clone(),
            _ => {}
        }
        found.push((alias, &**table));
    }
    found
}

/// The statement of `code` that contains `cursor`.
fn statement_at(code: &str, cursor: usize) -> (usize, &str) {
    let before = &code[..cursor];
    let start = before.rfind(';').map(|i| i + 1).unwrap_or(0);
    let end = code[cursor..].find(';').map(|i| cursor + i).unwrap_or(code.len());
    (start, &code[start..end])
}

/// Completion candidates at `cursor`. Text longer than a cell may be
/// ([`MAX_CELL_BYTES`]) gets none: the work per request stays bounded (one
/// pass over at most that many bytes), whatever a client sends.
pub fn complete(catalog: &Catalog, code: &str, cursor: usize) -> Completion {
    if code.len() > MAX_CELL_BYTES {
        let cursor = floor_char_boundary(code, cursor.min(code.len()));
        return Completion { matches: vec![], start: cursor, end: cursor };
    }
    let cursor = floor_char_boundary(code, cursor.min(code.len()));
    let before = &code[..cursor];
    let start = before.char_indices().rev().take_while(|(_, c)| is_word_char(*c)).last().map(|(i, _)| i).unwrap_or(cursor);
    let prefix = &code[start..cursor];
    let (_, statement) = statement_at(code, cursor);
    let scope = tables_in_scope(catalog, statement);
    let lower_prefix = prefix.to_ascii_lowercase();
    let starts = |s: &str| s.to_ascii_lowercase().starts_with(&lower_prefix);
    let mut matches: Vec<String> = Vec::new();
    let push = |s: String, matches: &mut Vec<String>| {
        if !matches.contains(&s) {
            matches.push(s);
        }
    };

    // `alias.` or `table.`: that relation's columns.
    if before[..start].ends_with('.') {
        let qualifier: String = before[..start - 1].chars().rev().take_while(|c| is_word_char(*c)).collect::<Vec<_>>().into_iter().rev().collect();
        let table = scope.iter().find(|(a, _)| a.eq_ignore_ascii_case(&qualifier)).map(|(_, t)| *t).or_else(|| catalog.table(&qualifier).map(|t| &**t));
        if let Some(t) = table {
            for c in t.columns.iter().filter(|c| starts(&c.name)) {
                push(c.name.clone(), &mut matches);
            }
        }
        return Completion { matches, start, end: cursor };
    }

    let previous_word = before[..start].split_whitespace().last().unwrap_or("").to_ascii_uppercase();
    if matches!(previous_word.as_str(), "FROM" | "JOIN" | "DESCRIBE") {
        for t in catalog.tables().iter().filter(|t| starts(&t.name)) {
            push(t.name.clone(), &mut matches);
        }
        return Completion { matches, start, end: cursor };
    }
    // CHART <kind> and its options.
    let words: Vec<String> = before[..start].split_whitespace().map(|w| w.to_ascii_uppercase()).collect();
    if previous_word == "CHART" {
        for k in ["BAR", "LINE", "SCATTER", "HISTOGRAM"].iter().filter(|k| starts(k)) {
            push(k.to_string(), &mut matches);
        }
        return Completion { matches, start, end: cursor };
    }
    let in_chart_options = words.first().is_some_and(|w| w == "CHART")
        && before[..start].contains('(')
        && !before[..start].contains(')')
        && !before[..start].trim_end().ends_with('=');
    if in_chart_options {
        for o in ["x", "y", "color", "title", "bins", "min", "max"].iter().filter(|o| starts(o)) {
            push(o.to_string(), &mut matches);
        }
        return Completion { matches, start, end: cursor };
    }
    // Columns of the tables in scope; before any FROM, of every table (a
    // SELECT list is often written first).
    let tables: Vec<&Table> = if scope.is_empty() { catalog.tables().iter().map(|t| &**t).collect() } else { scope.iter().map(|(_, t)| *t).collect() };
    for t in tables {
        for c in t.columns.iter().filter(|c| starts(&c.name)) {
            push(c.name.clone(), &mut matches);
        }
    }
    for f in FUNCTIONS.iter().filter(|f| starts(f.name)) {
        push(f.name.to_string(), &mut matches);
    }
    for t in catalog.tables().iter().filter(|t| starts(&t.name)) {
        push(t.name.clone(), &mut matches);
    }
    if !prefix.is_empty() {
        let upper = prefix.chars().next().is_some_and(|c| c.is_uppercase());
        for k in KEYWORDS.iter().filter(|k| starts(k)) {
            push(if upper { k.to_string() } else { k.to_ascii_lowercase() }, &mut matches);
        }
    }
    Completion { matches, start, end: cursor }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The aggregates the owner's policy allows on a column (the policy crate's
/// `check::allowed_aggregates`, the same rule its check applies).
pub type Aggregates<'a> = &'a dyn Fn(&Table, &Column) -> Vec<&'static str>;

/// Describes a table for inspect and DESCRIBE (never any values).
pub fn describe_table(table: &Table, aggregates: Aggregates<'_>) -> String {
    let mut out = format!("{} — {}\n", table.name, table.description.as_deref().unwrap_or("(no description)"));
    if table.public {
        out.push_str("public reference table: no restrictions\n");
    } else {
        out.push_str(&format!("protected: every result row must rest on at least {} people\n", table.min_group_size));
    }
    for c in &table.columns {
        out.push_str(&format!("  {:<20} {:<9} {}\n", c.name, c.ty.to_string(), column_summary(table, c, aggregates)));
    }
    out
}

fn column_summary(table: &Table, c: &Column, aggregates: Aggregates<'_>) -> String {
    let role = if table.public { "public".to_string() } else { c.role.to_string() };
    let mut s = role;
    if let Some((lo, hi)) = c.bounds {
        s.push_str(&format!(", bounds [{lo}, {hi}]"));
    }
    if c.role != Role::Identifier || table.public {
        s.push_str(&format!(", aggregates: {}", aggregates(table, c).join(" ")));
    }
    if let Some(d) = &c.description {
        s.push_str(&format!(" — {d}"));
    }
    s
}

/// Inspection text for the word at `cursor`: a table, a column or a function.
/// None for text longer than a cell may be ([`MAX_CELL_BYTES`]).
pub fn inspect(catalog: &Catalog, code: &str, cursor: usize, aggregates: Aggregates<'_>) -> Option<String> {
    if code.len() > MAX_CELL_BYTES {
        return None;
    }
    let cursor = floor_char_boundary(code, cursor.min(code.len()));
    let start = code[..cursor].char_indices().rev().take_while(|(_, c)| is_word_char(*c)).last().map(|(i, _)| i).unwrap_or(cursor);
    let end = code[cursor..].char_indices().find(|(_, c)| !is_word_char(*c)).map(|(i, _)| cursor + i).unwrap_or(code.len());
    let word = &code[start..end];
    if word.is_empty() {
        return None;
    }
    if let Some(t) = catalog.table(word) {
        return Some(describe_table(t, aggregates));
    }
    let (_, statement) = statement_at(code, cursor);
    let scope = tables_in_scope(catalog, statement);
    let candidates: Vec<&Table> = if scope.is_empty() { catalog.tables().iter().map(|t| &**t).collect() } else { scope.iter().map(|(_, t)| *t).collect() };
    for t in candidates {
        if let Some((_, c)) = t.column(word) {
            return Some(format!("{}.{} : {}\n{}\n", t.name, c.name, c.ty, column_summary(t, c, aggregates)));
        }
    }
    if let Some(f) = FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(word)) {
        let kind = match f.kind {
            FunctionKind::Aggregate(_) => "aggregate function",
            FunctionKind::Scalar(_) => "function",
        };
        return Some(format!("{}\n{kind}: {}\n", f.signature, f.doc));
    }
    None
}

/// Whether a cell is ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// More input is needed; the string is the suggested indent.
    Incomplete(String),
    Invalid,
}

/// Complete when every statement parses and the last one ends with `;`
/// (or the cell is empty); incomplete inside a string, an open parenthesis
/// or an unterminated statement; invalid when it cannot parse, and when it
/// is longer than a cell may be ([`MAX_CELL_BYTES`]). Its work is that of
/// [`crate::parse::parse_cell`]: linear in the text, nesting bounded.
pub fn is_complete(code: &str) -> Completeness {
    if code.len() > MAX_CELL_BYTES {
        return Completeness::Invalid;
    }
    let dialect = GenericDialect {};
    let tokens = match Tokenizer::new(&dialect, code).tokenize() {
        Ok(t) => t,
        Err(e) if e.message.contains("Unterminated") => return Completeness::Incomplete(String::new()),
        Err(_) => return Completeness::Invalid,
    };
    let mut depth: i64 = 0;
    for t in &tokens {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Completeness::Invalid;
        }
    }
    if depth > 0 {
        return Completeness::Incomplete("    ".into());
    }
    let last = tokens.iter().rev().find(|t| !matches!(t, Token::Whitespace(_)));
    match last {
        None => Completeness::Complete,
        Some(Token::SemiColon) => match crate::parse::parse_cell(code) {
            Ok(_) => Completeness::Complete,
            Err(_) => Completeness::Invalid,
        },
        Some(_) => match crate::parse::parse_cell(code) {
            Ok(_) => Completeness::Incomplete(String::new()),
            // A statement that fails only because it ends early is incomplete.
            Err(e) if e.to_string().contains("EOF") => Completeness::Incomplete(String::new()),
            Err(_) => Completeness::Invalid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::on_small_stack;

    fn catalog() -> Catalog {
        crate::test_catalog::fixture_catalog()
    }

    #[test]
    fn hostile_text_is_answered_on_a_small_stack() {
        // Issue 20, findings 1 and 2 (CHART headers), 12 (a WITH chain), and
        // deep or long expressions: every service answers on a tokio
        // worker's stack, and the cells that cannot run are invalid.
        let catalog = catalog();
        let query = "SELECT sex, COUNT(*) AS n FROM people GROUP BY sex";
        let chain: Vec<String> = (1..3000).map(|i| format!("c{i} AS (SELECT sex FROM c{})", i - 1)).collect();
        let cases = [
            (format!("{}{query}", "CHART BAR ".repeat(300)), Completeness::Invalid),
            (format!("{}{query};", "CHART BAR ".repeat(12_000)), Completeness::Invalid),
            (format!("SELECT {}1{};", "(".repeat(50_000), ")".repeat(50_000)), Completeness::Invalid),
            (format!("SELECT {}1 FROM people;", "1 + ".repeat(50_000)), Completeness::Invalid),
            (format!("{};", vec![query; 4000].join(" UNION ALL ")), Completeness::Invalid),
            // Parses (binding refuses it: too many CTEs).
            (format!("WITH c0 AS (SELECT sex FROM people), {} SELECT COUNT(*) FROM c2999;", chain.join(", ")), Completeness::Complete),
        ];
        for (code, expected) in cases {
            assert!(code.len() < MAX_CELL_BYTES);
            let (done, completion, inspection) = on_small_stack(|| {
                (is_complete(&code), complete(&catalog, &code, code.len() - 1), inspect(&catalog, &code, code.find("FROM").unwrap_or(0) + 6, &|_, _| vec![]))
            });
            assert_eq!(done, expected, "{}", &code[..80]);
            assert!(completion.start <= completion.end && completion.end <= code.len());
            assert!(inspection.is_none_or(|text| !text.is_empty()));
        }
    }

    #[test]
    fn text_longer_than_a_cell_is_not_read() {
        let catalog = catalog();
        let code = format!("SELECT {} FROM people", "age, ".repeat(MAX_CELL_BYTES / 5 + 1));
        assert!(code.len() > MAX_CELL_BYTES);
        assert_eq!(is_complete(&code), Completeness::Invalid);
        assert_eq!(complete(&catalog, &code, code.len()), Completion { matches: vec![], start: code.len(), end: code.len() });
        assert_eq!(inspect(&catalog, &code, code.len(), &|_, _| vec![]), None);
        // The same text within the cap is served.
        let code = "SELECT age, a";
        assert!(complete(&catalog, code, code.len()).matches.contains(&"age".to_string()));
        assert!(inspect(&catalog, "people", 2, &|_, _| vec![]).is_some());
    }

    #[test]
    fn completeness() {
        assert_eq!(is_complete("SELECT 1;"), Completeness::Complete);
        assert_eq!(is_complete(""), Completeness::Complete);
        assert!(matches!(is_complete("SELECT 'abc"), Completeness::Incomplete(_)));
        assert!(matches!(is_complete("SELECT (1 + "), Completeness::Incomplete(_)));
        assert!(matches!(is_complete("SELECT 1"), Completeness::Incomplete(_)));
        assert_eq!(is_complete("SELECT 1);"), Completeness::Invalid);
        assert_eq!(is_complete("SELECT FROM WHERE;"), Completeness::Invalid);
    }
}
