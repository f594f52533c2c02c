//! The policy crate's one error type: why a statement produced no release.

use safe_data_lang::span::Span;

/// The rule a refusal rests on; stable names for the audit log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Raw rows of a protected table.
    RawRows,
    /// An identifier used other than as a join key or in COUNT(DISTINCT).
    IdentifierUse,
    /// A measure used outside an allowed aggregate.
    MeasureUse,
    /// An aggregate the owner does not allow on this column.
    AggregateNotAllowed,
    /// Summing a column without bounds.
    Unbounded,
    /// A condition inside an aggregate (a hidden filter).
    ConditionalAggregate,
    /// A join on a column the owner did not declare as a join key.
    JoinKey,
    /// A shape the policy cannot check soundly (nested aggregation, ...).
    Shape,
    /// A whole-table result resting on fewer than k people.
    MinGroupSize,
    /// A whole-table result whose filters removed between 1 and k-1 people.
    Differencing,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement is not valid SQL of the dialect (or failed to run).
    #[error(transparent)]
    Query(#[from] safe_data_lang::Error),
    /// The policy refuses the statement.
    #[error("{message}")]
    Refused { rule: Rule, message: String, span: Option<Span> },
    /// Running the statement failed or was stopped.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The audit log could not be written, so nothing is released.
    #[error("the audit log could not be written, so no result is released; tell the data owner")]
    Audit(#[source] std::io::Error),
}

/// Why running a plan produced no result. Every text is fixed here: none
/// can carry a value or a polars message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A data source could not be opened or read.
    #[error("cannot read table `{table}`: {message}")]
    Source { table: String, message: &'static str },
    /// Execution failed; the text is one of a few generic ones.
    #[error("the query failed while running: {0}")]
    Engine(&'static str),
    /// The user interrupted the query.
    #[error("the query was interrupted")]
    Interrupted,
    /// The query ran longer than the owner allows.
    #[error("the query ran longer than the {0} s limit set by the data owner; narrow it down (filters, fewer groups)")]
    Timeout(u64),
    /// The query needed more memory than the owner's budget.
    #[error("the query was stopped: it needed more than the {0} MiB of memory the data owner allows; narrow it down (filters, fewer groups, smaller joins)")]
    MemoryBudget(usize),
}

impl RunError {
    /// Jupyter's `ename`.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Source { .. } => "SourceError",
            RunError::Engine(_) => "ExecutionError",
            RunError::Interrupted => "Interrupted",
            RunError::Timeout(_) => "Timeout",
            RunError::MemoryBudget(_) => "MemoryLimit",
        }
    }
}

impl Error {
    pub(crate) fn refused(rule: Rule, message: impl Into<String>, span: Option<Span>) -> Self {
        Error::Refused { rule, message: message.into(), span }
    }

    pub fn span(&self) -> Option<Span> {
        match self {
            Error::Query(e) => e.span(),
            Error::Refused { span, .. } => *span,
            Error::Run(_) | Error::Audit(_) => None,
        }
    }

    /// Jupyter's `ename`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Query(e) => e.kind(),
            Error::Refused { .. } => "PolicyRefusal",
            Error::Run(e) => e.kind(),
            Error::Audit(_) => "AuditError",
        }
    }

    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Refused { rule, .. } => Some(*rule),
            _ => None,
        }
    }

    /// Replaces the span: errors about a statement the policy wrote (a
    /// histogram's GROUP BY) point at the user's query instead.
    pub fn respanned(self, span: Option<Span>) -> Self {
        match self {
            Error::Query(e) => Error::Query(e.respanned(span)),
            Error::Refused { rule, message, .. } => Error::Refused { rule, message, span },
            other => other,
        }
    }

    pub fn shifted(self, offset: usize) -> Self {
        match self {
            Error::Query(e) => Error::Query(e.shifted(offset)),
            Error::Refused { rule, message, span } => Error::Refused { rule, message, span: span.map(|s| s.shifted(offset)) },
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
