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
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

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

/// Parses every statement of a cell.
pub fn parse_cell(cell: &str) -> Result<Vec<Parsed>> {
    if cell.len() > MAX_CELL_BYTES {
        return Err(Error::invalid(format!("the cell is longer than {} KiB; split it up", MAX_CELL_BYTES / 1024), None));
    }
    split_statements(cell)?
        .into_iter()
        .map(|(start, end)| {
            let text = &cell[start..end];
            parse_statement(text).map_err(|e| e.shifted(start)).map(|statement| Parsed { statement, text: text.to_string(), offset: start })
        })
        .collect()
}

/// Parses one statement (no `;`). Spans in the result are relative to `text`.
pub fn parse_statement(text: &str) -> Result<Statement> {
    if chart::is_chart(text) {
        let (spec, blanked) = chart::parse_header(text)?;
        return match parse_statement(&blanked)? {
            Statement::Query(query) => Ok(Statement::Chart { spec, query, text: blanked }),
            _ => Err(Error::invalid(format!("{} draws the result of a SELECT query", spec), Some(spec.span))),
        };
    }
    let dialect = GenericDialect {};
    let mut statements = Parser::new(&dialect).try_with_sql(text).and_then(|mut p| p.parse_statements()).map_err(|e| syntax_error(text, &e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
