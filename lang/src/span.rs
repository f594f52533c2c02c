//! Source spans: byte ranges into the text of a cell, and the caret rendering
//! every error message uses.

use serde::Serialize;

/// A half-open byte range `[start, end)` into the cell the statement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end: end.max(start) }
    }

    pub fn shifted(self, offset: usize) -> Self {
        Span { start: self.start + offset, end: self.end + offset }
    }

    /// The smallest span covering both.
    pub fn union(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

/// Maps sqlparser's 1-based (line, column-in-chars) locations to byte offsets.
/// Constant time per lookup (a long one-line statement has many tokens).
pub(crate) struct LineIndex {
    /// Byte offset of every character, plus the text's length at the end.
    char_starts: Vec<usize>,
    /// Index into `char_starts` of the first character of each line.
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut char_starts = Vec::with_capacity(text.len() + 1);
        let mut line_starts = vec![0];
        for (i, (byte, c)) in text.char_indices().enumerate() {
            char_starts.push(byte);
            if c == '\n' {
                line_starts.push(i + 1);
            }
        }
        char_starts.push(text.len());
        LineIndex { char_starts, line_starts }
    }

    /// Byte offset of a 1-based line and 1-based character column, clamped to the line.
    pub fn offset(&self, line: u64, column: u64) -> Option<usize> {
        if line == 0 {
            return None;
        }
        let first = *self.line_starts.get(line as usize - 1)?;
        let next_line = self.line_starts.get(line as usize).copied().unwrap_or(self.char_starts.len() - 1);
        let index = (first + column.saturating_sub(1) as usize).min(next_line);
        self.char_starts.get(index).copied()
    }

    /// Converts a sqlparser span (end inclusive of its last character, as
    /// sqlparser reports it) into a byte span.
    pub fn span(&self, span: sqlparser::tokenizer::Span) -> Option<Span> {
        let start = self.offset(span.start.line, span.start.column)?;
        let end = self.offset(span.end.line, span.end.column)?.max(start);
        Some(Span::new(start, end))
    }
}

/// Renders the line(s) of `text` covered by `span` with a caret line under the
/// span, the way every traceback shows the offending part of a statement.
pub fn caret_snippet(text: &str, span: Span) -> String {
    // Spans are byte offsets; one that falls inside a character snaps back to its start.
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = floor(span.start);
    let end = floor(span.end).max(start);
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[start..].find('\n').map(|i| start + i).unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let lead = text[line_start..start].chars().count();
    let width = text[start..end.min(line_end)].chars().count().max(1);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let gutter = format!("{line_no} | ");
    format!("{gutter}{line}\n{}{}{}", " ".repeat(gutter.len()), " ".repeat(lead), "^".repeat(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_under_the_span() {
        let text = "SELECT a,\n  name FROM t";
        let start = text.find("name").unwrap();
        let snippet = caret_snippet(text, Span::new(start, start + 4));
        assert_eq!(snippet, "2 |   name FROM t\n      ^^^^");
    }

    #[test]
    fn spans_inside_a_character_do_not_panic() {
        let text = "R'¬";
        for (a, b) in [(2, 3), (3, 3), (0, 9), (3, 4)] {
            let snippet = caret_snippet(text, Span::new(a, b));
            assert!(snippet.starts_with("1 | R'¬"), "{snippet}");
        }
    }

    #[test]
    fn line_index_handles_multibyte() {
        let text = "SELECT 'é', x";
        let idx = LineIndex::new(text);
        assert_eq!(idx.offset(1, 13), Some(text.find('x').unwrap()));
    }
}
