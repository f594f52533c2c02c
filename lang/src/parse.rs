//! Parsing: split a cell into statements and parse each with sqlparser.
//!
//! This stage only recognises *which* statement a piece of text is. It does
//! not resolve names or types (that is [`crate::bind`]); anything that is not
//! a query or one of our meta statements is refused here, by name.

use crate::chart::{self, ChartSpec};
use crate::error::{Error, Result};
use crate::span::{LineIndex, Span};
use sqlparser::ast;
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// One statement of a cell.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub statement: Statement,
    /// The statement's own text (without the `;`).
    pub text: String,
    /// Byte offset of `text` in the cell; spans in errors are cell-relative.
    pub offset: usize,
}

#[derive(Debug, Clone)]
pub enum Statement {
    Query(Box<ast::Query>),
    ShowTables,
    Describe {
        table: String,
        span: Span,
    },
    /// `EXPLAIN <query>`: bind and check, never run.
    Explain(Box<ast::Query>),
    /// `CHART <kind> [(options)] <query>`. `text` is the statement with the
    /// header blanked out; bind `query` against it.
    Chart {
        spec: ChartSpec,
        query: Box<ast::Query>,
        text: String,
    },
}

/// Byte ranges of the `;`-separated statements in `cell`, skipping empty ones.
pub fn split_statements(cell: &str) -> Result<Vec<(usize, usize)>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, cell).tokenize_with_location().map_err(|e| {
        let index = LineIndex::new(cell);
        let at = index.offset(e.location.line, e.location.column);
        let one_char = |s: usize| Span::new(s, s + cell[s..].chars().next().map_or(0, char::len_utf8));
        Error::Syntax { message: e.message.clone(), span: at.filter(|s| cell.is_char_boundary(*s)).map(one_char) }
    })?;
    let index = LineIndex::new(cell);
    let mut pieces = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                if let Some(s) = start.take() {
                    pieces.push((s, end));
                }
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => {
                let Some(span) = index.span(t.span) else { continue };
                if start.is_none() {
                    start = Some(span.start);
                }
                // sqlparser's token end is exclusive (one past the last char).
                end = span.end.max(span.start + 1).min(cell.len());
                // Make sure we end on a char boundary.
                while !cell.is_char_boundary(end) {
                    end += 1;
                }
            }
        }
    }
    if let Some(s) = start {
        pieces.push((s, end));
    }
    Ok(pieces)
}

/// The longest cell accepted; longer input is refused before tokenizing.
pub const MAX_CELL_BYTES: usize = 256 * 1024;

/// The most `;`-separated statements one cell may hold.
pub const MAX_STATEMENTS: usize = 256;

/// How deeply one statement may nest, counted on its tokens before anything
/// is parsed (see [`check_nesting`]): brackets, `CASE ... END`, and the
/// operators and keywords that chain within one bracket level (a chain such
/// as `a + b + c` or `q UNION q UNION q` is a tree as deep as it is long).
/// Every later stage (the syntax tree's drop and spans, binding, the policy
/// check, lowering) recurses over the statement; this keeps that recursion
/// shallow on any thread, a 2 MiB tokio worker included.
pub const MAX_NESTING: usize = 256;

/// sqlparser's own recursion limit (nested expressions, subqueries and
/// table factors); its default, named. sqlparser grows its stack as needed
/// while parsing, so this bounds the depth of the tree it builds.
pub const MAX_PARSER_RECURSION: usize = 50;

/// Parses every statement of a cell.
pub fn parse_cell(cell: &str) -> Result<Vec<Parsed>> {
    if cell.len() > MAX_CELL_BYTES {
        return Err(Error::invalid(format!("the cell is longer than {} KiB; split it up", MAX_CELL_BYTES / 1024), None));
    }
    let pieces = split_statements(cell)?;
    if let Some(&(start, end)) = pieces.get(MAX_STATEMENTS) {
        return Err(Error::invalid(format!("a cell may hold at most {MAX_STATEMENTS} statements; split it up"), Some(Span::new(start, end))));
    }
    pieces
        .into_iter()
        .map(|(start, end)| {
            let text = &cell[start..end];
            parse_statement(text).map_err(|e| e.shifted(start)).map(|statement| Parsed { statement, text: text.to_string(), offset: start })
        })
        .collect()
}

/// Parses one statement (no `;`). Spans in the result are relative to `text`.
///
/// A CHART statement has exactly one header: the query after it is parsed
/// as a plain statement, never as another CHART (no recursion per header).
pub fn parse_statement(text: &str) -> Result<Statement> {
    if chart::is_chart(text) {
        let (spec, blanked) = chart::parse_header(text)?;
        if chart::is_chart(&blanked) {
            let at = blanked.len() - blanked.trim_start().len();
            return Err(Error::Syntax {
                message: "a CHART statement has one header: remove the second CHART".into(),
                span: Some(Span::new(at, at + "CHART".len())),
            });
        }
        return match parse_plain(&blanked)? {
            Statement::Query(query) => Ok(Statement::Chart { spec, query, text: blanked }),
            _ => Err(Error::invalid(format!("{} draws the result of a SELECT query", spec), Some(spec.span))),
        };
    }
    parse_plain(text)
}

/// Tokenizes `text` as sqlparser does, with the tokenizer's error as a syntax error.
fn tokenize(text: &str) -> Result<Vec<TokenWithSpan>> {
    let dialect = GenericDialect {};
    Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|e| syntax_error(text, &ParserError::from(e).to_string()))
}

/// Parses a statement that is not a CHART.
fn parse_plain(text: &str) -> Result<Statement> {
    let tokens = tokenize(text)?;
    check_nesting(text, &tokens)?;
    let dialect = GenericDialect {};
    let mut statements =
        Parser::new(&dialect).with_recursion_limit(MAX_PARSER_RECURSION).with_tokens_with_locations(tokens).parse_statements().map_err(|e| match e {
            ParserError::RecursionLimitExceeded => too_deep(None),
            e => syntax_error(text, &e.to_string()),
        })?;
    if statements.len() != 1 {
        return Err(Error::Syntax { message: "expected exactly one statement".into(), span: None });
    }
    let statement = statements.remove(0);
    let index = LineIndex::new(text);
    let whole = Some(Span::new(0, text.len()));
    match statement {
        ast::Statement::Query(q) => {
            refuse_empty_select(&q.body, text)?;
            Ok(Statement::Query(q))
        }
        ast::Statement::ShowTables { .. } => Ok(Statement::ShowTables),
        ast::Statement::ExplainTable { table_name, .. } => {
            let span = index.span(sqlparser::ast::Spanned::span(&table_name)).or(whole).unwrap_or_default();
            let name = table_name.0.last().map(|p| p.to_string()).unwrap_or_default();
            let name = name.trim_matches('"').to_string();
            Ok(Statement::Describe { table: name, span })
        }
        ast::Statement::Explain { statement, analyze, .. } => {
            if analyze {
                return Err(Error::unsupported("EXPLAIN ANALYZE", "use EXPLAIN <query>; it shows the plan and the policy verdict without running", whole));
            }
            match *statement {
                ast::Statement::Query(q) => Ok(Statement::Explain(q)),
                _ => Err(Error::unsupported("EXPLAIN of this statement", "EXPLAIN takes a SELECT query", whole)),
            }
        }
        other => {
            let name = statement_name(&other);
            Err(Error::unsupported(name, "Safe Data evaluates read-only SELECT queries and SHOW TABLES, DESCRIBE, EXPLAIN", whole))
        }
    }
}

/// The error of a statement that nests deeper than the bounds allow.
fn too_deep(span: Option<Span>) -> Error {
    Error::invalid(
        format!(
            "this statement nests too deeply (more than {MAX_NESTING} levels of parentheses, subqueries, CASE and chained operators); split it up, e.g. with WITH"
        ),
        span,
    )
}

/// One bracket level (or `CASE ... END`) of [`check_nesting`].
#[derive(Default)]
struct Level {
    /// Closes with `END`, and `WHEN`/`THEN`/`ELSE` separate its items.
    case: bool,
    /// The deepest item of the level that a `,` (or `WHEN`...) closed.
    items: usize,
    /// The deepest bracket level closed inside the current item.
    operands: usize,
    /// Operators and keywords of the current item so far.
    operators: usize,
    /// Set operations and joins of the level: their chains span commas.
    chain: usize,
}

impl Level {
    /// An upper bound on the depth of the tree this level builds: an
    /// operator chain puts its first operand as deep as the chain is long.
    fn depth(&self) -> usize {
        self.items.max(self.operands + self.operators) + self.chain
    }
}

/// Refuses a statement whose tokens could build a syntax tree deeper than
/// [`MAX_NESTING`], before sqlparser builds it. Counts, per bracket level
/// (`(`, `[`, `{`, `CASE ... END`), the operator tokens and keywords of the
/// current item (a `,` starts a new one: a list is flat) plus the deepest
/// level closed inside it, and the set operations and joins of the level
/// (whose chains span commas). Over-counts (every keyword counts), never
/// under-counts: a left-deep chain of operators is as deep as it is long,
/// and it is the one shape sqlparser builds without recursing. One pass,
/// no allocation beyond the open levels.
pub fn check_nesting(text: &str, tokens: &[TokenWithSpan]) -> Result<()> {
    let mut stack: Vec<Level> = vec![Level::default()];
    let refuse = |t: &TokenWithSpan| too_deep(LineIndex::new(text).span(t.span));
    for t in tokens {
        let levels = stack.len();
        let top = stack.last_mut().expect("the outermost level is never popped");
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => stack.push(Level::default()),
            Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::CASE => stack.push(Level { case: true, ..Level::default() }),
            Token::RParen | Token::RBracket | Token::RBrace if levels > 1 && !top.case => close(&mut stack),
            Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::END && top.case => close(&mut stack),
            Token::Word(w) if w.quote_style.is_none() && top.case && matches!(w.keyword, Keyword::WHEN | Keyword::THEN | Keyword::ELSE) => next_item(top),
            Token::Comma => next_item(top),
            Token::Word(w)
                if w.quote_style.is_none() && matches!(w.keyword, Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS | Keyword::JOIN) =>
            {
                top.chain += 1
            }
            Token::Word(w) if w.quote_style.is_some() || w.keyword == Keyword::NoKeyword => {}
            Token::Whitespace(_) | Token::Period | Token::SemiColon | Token::EOF | Token::Number(..) | Token::Placeholder(_) => {}
            Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_) => {}
            // Every other token (operators, keywords, unmatched closers) may chain.
            _ => top.operators += 1,
        }
        let top = stack.last().expect("the outermost level is never popped");
        if top.depth() + stack.len() > MAX_NESTING {
            return Err(refuse(t));
        }
    }
    // Levels left open (an unfinished statement) close at the end.
    while stack.len() > 1 {
        close(&mut stack);
    }
    if stack[0].depth() > MAX_NESTING {
        return Err(too_deep(Some(Span::new(0, text.len()))));
    }
    Ok(())
}

/// Ends the current item of a level (at `,`, or `WHEN`/`THEN`/`ELSE`).
fn next_item(level: &mut Level) {
    level.items = level.items.max(level.operands + level.operators);
    level.operands = 0;
    level.operators = 0;
}

/// Pops the innermost level; it becomes an operand of the one around it.
fn close(stack: &mut Vec<Level>) {
    let inner = stack.pop().expect("close is called with an inner level");
    let outer = stack.last_mut().expect("the outermost level is never popped");
    outer.operands = outer.operands.max(inner.depth() + 1);
}

/// `SELECT FROM t` parses in sqlparser's generic dialect; it is a mistake.
fn refuse_empty_select(body: &ast::SetExpr, text: &str) -> Result<()> {
    match body {
        ast::SetExpr::Select(s) if s.projection.is_empty() => {
            let at = text.to_ascii_uppercase().find("SELECT").map(|i| Span::new(i, i + 6));
            Err(Error::Syntax { message: "SELECT needs at least one expression".into(), span: at })
        }
        ast::SetExpr::SetOperation { left, right, .. } => {
            refuse_empty_select(left, text)?;
            refuse_empty_select(right, text)
        }
        ast::SetExpr::Query(q) => refuse_empty_select(&q.body, text),
        _ => Ok(()),
    }
}

/// The leading keyword(s) of a statement, e.g. `INSERT` or `CREATE TABLE`.
fn statement_name(statement: &ast::Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let first = words.first().copied().unwrap_or("this statement").to_ascii_uppercase();
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" | "SHOW" | "SET" => {
            format!("{first} {}", words.get(1).copied().unwrap_or("").to_ascii_uppercase())
        }
        _ => first,
    }
}

/// Turns sqlparser's "... at Line: L, Column: C" into a message and a span.
fn syntax_error(text: &str, message: &str) -> Error {
    let message = message.trim_start_matches("sql parser error: ").to_string();
    let (clean, span) = match message.rfind(" at Line: ") {
        Some(i) => {
            let loc = &message[i + " at Line: ".len()..];
            let mut parts = loc.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
            let col = parts.next().and_then(|c| c.trim().parse::<u64>().ok());
            let span = match (line, col) {
                (Some(l), Some(c)) => LineIndex::new(text).offset(l, c).map(|s| {
                    let end = text[s..].chars().next().map(|ch| s + ch.len_utf8()).unwrap_or(s);
                    Span::new(s, end)
                }),
                _ => None,
            };
            (message[..i].to_string(), span)
        }
        None => (message, None),
    };
    let span = span.or_else(|| Some(Span::new(text.len(), text.len())));
    Error::Syntax { message: clean, span }
}

/// Runs `f` on a thread with a tokio worker's stack (2 MiB), where the
/// kernel answers is_complete, completion and inspection requests.
#[cfg(test)]
pub(crate) fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| std::thread::Builder::new().stack_size(2 << 20).spawn_scoped(s, f).expect("spawning a thread").join().expect("no panic"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of [`too_deep`], however it is spanned.
    fn is_too_deep(e: &Error) -> bool {
        matches!(e, Error::Invalid { message, .. } if message.contains(&format!("more than {MAX_NESTING} levels")))
    }

    /// `((1 + 1 ...) + 1 ...)`: every level short, every chain long.
    fn nested_chains(levels: usize, length: usize) -> String {
        let mut inner = "1".to_string();
        for _ in 0..levels {
            inner = format!("({inner}{})", " + 1".repeat(length));
        }
        format!("SELECT {inner} AS x")
    }

    #[test]
    fn a_chart_has_one_header() {
        // Issue 20, finding 1: 300 headers (3 KB) recursed once per header and
        // overflowed a tokio worker's stack in is_complete.
        let text = format!("{}SELECT 1 AS a, 2 AS b", "CHART BAR ".repeat(300));
        let err = on_small_stack(|| parse_statement(&text).unwrap_err());
        assert!(matches!(&err, Error::Syntax { message, span: Some(s) } if message.contains("one header") && *s == Span::new(10, 15)), "{err:?}");
        // Finding 2: a 120 KB cell re-parsed the rest at every header (92 s), then overflowed.
        let cell = format!("SELECT 1;\n{}SELECT 1 AS a, 2 AS b;", "CHART BAR ".repeat(12_000));
        assert!(cell.len() < MAX_CELL_BYTES);
        let err = on_small_stack(|| parse_cell(&cell).unwrap_err());
        assert!(matches!(&err, Error::Syntax { message, span: Some(s) } if message.contains("one header") && *s == Span::new(20, 25)), "{err:?}");
        // One header with options is still a chart; a second kind word is not.
        assert!(matches!(parse_statement("CHART BAR (x = a) SELECT 1 AS a, 2 AS b").unwrap(), Statement::Chart { .. }));
        assert!(parse_statement("CHART BAR (x = a) CHART LINE SELECT 1 AS a").is_err());
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = 50_000;
        let cases = [
            ("parentheses", format!("SELECT {}1{}", "(".repeat(deep), ")".repeat(deep))),
            ("unclosed parentheses", format!("SELECT {}1", "(".repeat(deep))),
            ("an operator chain", format!("SELECT {}1", "1 + ".repeat(deep))),
            ("an AND chain", format!("SELECT 1 FROM t WHERE {}", vec!["a > 0"; deep / 5].join(" AND "))),
            ("a NOT chain", format!("SELECT {}TRUE", "NOT ".repeat(deep))),
            ("a cast chain", format!("SELECT 1{}", "::INT".repeat(deep))),
            ("an IS NULL chain", format!("SELECT 1{}", " IS NULL".repeat(deep / 2))),
            ("a UNION chain", vec!["SELECT 1 AS a, 2 AS b"; deep / 10].join(" UNION ALL ")),
            ("a JOIN chain", format!("SELECT 1 FROM t{}", " JOIN t USING (a)".repeat(deep / 4))),
            ("subqueries", format!("SELECT * FROM {}t{}", "(SELECT * FROM ".repeat(2000), ") s".repeat(2000))),
            ("nested CASE", format!("SELECT {}1{}", "CASE WHEN TRUE THEN ".repeat(deep / 10), " END".repeat(deep / 10))),
            ("function calls", format!("SELECT {}1{}", "abs(".repeat(deep), ")".repeat(deep))),
            ("nested chains", nested_chains(40, 200)),
        ];
        for (what, text) in cases {
            assert!(text.len() < MAX_CELL_BYTES, "{what}: {} bytes", text.len());
            let err = on_small_stack(|| parse_statement(&text).unwrap_err());
            assert!(is_too_deep(&err), "{what}: {err:?}");
            assert!(err.span().is_some(), "{what}: no span");
        }
    }

    #[test]
    fn real_queries_are_far_from_the_nesting_bound() {
        let ors = vec!["sex = 'F'"; 64].join(" OR ");
        let whens: String = (0..200).map(|i| format!(" WHEN age = {i} THEN 'a{i}'")).collect();
        let items = vec!["age + 1"; 2000].join(", ");
        for text in [
            format!("SELECT COUNT(*) FROM people WHERE {ors}"),
            format!("SELECT CASE{whens} ELSE 'other' END AS a FROM people"),
            format!("SELECT {items} FROM people"),
            format!("SELECT 1 FROM t WHERE a IN ({})", vec!["1"; 10_000].join(", ")),
            vec!["SELECT sex, COUNT(*) AS n FROM people WHERE age > 30 AND city = 'Paris' GROUP BY sex"; 40].join(" UNION ALL "),
            nested_chains(20, 4),
            "WITH a AS (SELECT sex, AVG(age) AS m FROM people p JOIN visits v ON p.id = v.person_id \
             WHERE v.cost > 10 AND p.age BETWEEN 20 AND 60 GROUP BY sex HAVING COUNT(*) > 2), \
             b AS (SELECT * FROM a WHERE m > 30) SELECT * FROM b ORDER BY m DESC LIMIT 5"
                .to_string(),
        ] {
            on_small_stack(|| parse_statement(&text)).unwrap_or_else(|e| panic!("{e}: {}", &text[..text.len().min(200)]));
        }
    }

    #[test]
    fn sqlparser_recursion_limit_is_a_clear_error() {
        // Under the token bound, over sqlparser's own recursion limit.
        let text = format!("SELECT {}1{}", "(".repeat(MAX_PARSER_RECURSION + 5), ")".repeat(MAX_PARSER_RECURSION + 5));
        let err = on_small_stack(|| parse_statement(&text).unwrap_err());
        assert!(is_too_deep(&err), "{err:?}");
    }

    #[test]
    fn a_cell_holds_a_bounded_number_of_statements() {
        assert_eq!(parse_cell(&"SELECT 1;".repeat(MAX_STATEMENTS)).unwrap().len(), MAX_STATEMENTS);
        let err = parse_cell(&"SELECT 1;".repeat(MAX_STATEMENTS + 1)).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_STATEMENTS} statements")), "{err}");
        assert_eq!(err.span(), Some(Span::new(9 * MAX_STATEMENTS, 9 * MAX_STATEMENTS + 8)));
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let cell = "SELECT 'a;b' FROM t;\n\n  SHOW TABLES ;;";
        let pieces = split_statements(cell).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(&cell[pieces[0].0..pieces[0].1], "SELECT 'a;b' FROM t");
        assert_eq!(&cell[pieces[1].0..pieces[1].1], "SHOW TABLES");
    }

    #[test]
    fn refuses_ddl_and_dml_by_name() {
        for (sql, name) in [
            ("DROP TABLE patients", "DROP TABLE"),
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("CREATE TABLE x (a INT)", "CREATE TABLE"),
            ("COPY t TO 'out.csv'", "COPY"),
        ] {
            let err = parse_statement(sql).unwrap_err();
            assert!(err.to_string().starts_with(name), "{sql}: {err}");
        }
    }

    #[test]
    fn syntax_error_points_at_the_token() {
        let err = parse_statement("SELECT FROM WHERE").unwrap_err();
        assert!(matches!(err, Error::Syntax { span: Some(_), .. }), "{err:?}");
    }

    #[test]
    fn meta_statements() {
        assert!(matches!(parse_statement("SHOW TABLES").unwrap(), Statement::ShowTables));
        assert!(matches!(parse_statement("DESCRIBE patients").unwrap(), Statement::Describe { ref table, .. } if table == "patients"));
        assert!(matches!(parse_statement("EXPLAIN SELECT 1").unwrap(), Statement::Explain(_)));
        assert!(matches!(parse_statement("CHART bar SELECT 1 AS a, 2 AS b").unwrap(), Statement::Chart { .. }));
        assert!(parse_statement("CHART bar SHOW TABLES").is_err());
    }
}
