//! The one error type of the dialect crate.
//!
//! Every message is written for a data scientist and never contains a data
//! value: binder errors only ever quote the user's own SQL.

use crate::span::Span;

/// Everything that can go wrong between SQL text and a bound query (and in
/// the owner's configuration). Running a query fails in the policy crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The text is not SQL we can parse.
    #[error("syntax error: {message}")]
    Syntax { message: String, span: Option<Span> },
    /// Valid SQL that the dialect deliberately does not evaluate.
    #[error("{construct} is not supported: {hint}")]
    Unsupported { construct: String, hint: String, span: Option<Span> },
    /// A table name that the catalog does not have.
    #[error("unknown table `{name}`; SHOW TABLES lists the tables you can query")]
    UnknownTable { name: String, span: Option<Span> },
    /// A column that does not exist *or is hidden*: the two are indistinguishable on purpose.
    #[error("unknown column `{name}`; DESCRIBE <table> lists the columns you can use")]
    UnknownColumn { name: String, span: Option<Span> },
    /// A column name that several tables in scope provide.
    #[error("column `{name}` is ambiguous; qualify it with its table, e.g. `t.{name}`")]
    AmbiguousColumn { name: String, span: Option<Span> },
    /// A well-formed statement whose meaning is wrong (types, grouping, arity...).
    #[error("{message}")]
    Invalid { message: String, span: Option<Span> },
    /// The owner's configuration file is wrong.
    #[error("{file}:{line}: {message}")]
    Config { file: String, line: usize, message: String },
}

impl Error {
    /// The part of the statement the error is about, when there is one.
    pub fn span(&self) -> Option<Span> {
        match self {
            Error::Syntax { span, .. }
            | Error::Unsupported { span, .. }
            | Error::UnknownTable { span, .. }
            | Error::UnknownColumn { span, .. }
            | Error::AmbiguousColumn { span, .. }
            | Error::Invalid { span, .. } => *span,
            _ => None,
        }
    }

    /// The span field of the kinds that have one.
    fn span_mut(&mut self) -> Option<&mut Option<Span>> {
        match self {
            Error::Syntax { span, .. }
            | Error::Unsupported { span, .. }
            | Error::UnknownTable { span, .. }
            | Error::UnknownColumn { span, .. }
            | Error::AmbiguousColumn { span, .. }
            | Error::Invalid { span, .. } => Some(span),
            _ => None,
        }
    }

    /// A short, stable name for the error kind (Jupyter's `ename`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Syntax { .. } => "SyntaxError",
            Error::Unsupported { .. } => "UnsupportedError",
            Error::UnknownTable { .. } | Error::UnknownColumn { .. } => "NameError",
            Error::AmbiguousColumn { .. } => "NameError",
            Error::Invalid { .. } => "QueryError",
            Error::Config { .. } => "ConfigError",
        }
    }

    /// Replaces the span of an error that has one.
    pub fn respanned(mut self, new: Option<Span>) -> Self {
        if let Some(span) = self.span_mut() {
            *span = new;
        }
        self
    }

    /// Moves the span (if any) by `offset` bytes: used when a statement was
    /// parsed out of a larger cell.
    pub fn shifted(mut self, offset: usize) -> Self {
        if let Some(Some(span)) = self.span_mut() {
            *span = span.shifted(offset);
        }
        self
    }

    pub(crate) fn unsupported(construct: impl Into<String>, hint: impl Into<String>, span: Option<Span>) -> Self {
        Error::Unsupported { construct: construct.into(), hint: hint.into(), span }
    }

    pub(crate) fn invalid(message: impl Into<String>, span: Option<Span>) -> Self {
        Error::Invalid { message: message.into(), span }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
