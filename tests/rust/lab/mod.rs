//! The attack lab shared by `composition_attacks.rs` and `metamorphic.rs`: a
//! `Policy` over the fixture of `tests/rust/fixtures` (k = 5), with its own
//! state directory, and helpers to read what it releases.
//!
//! Same tables and roles as the lab of `attacks.rs` (which keeps its own
//! copy), plus `labs`: several rows per patient, a full-precision measure
//! (on which the owner allows QUANTILE_CONT) and a measure that is NULL for
//! all but a few people.

#![allow(dead_code)]

use safe_data_lang::parse::parse_cell;
use safe_data_lang::value::Value;
use safe_data_policy::CancelFlag;
use safe_data_policy::{Notice, NoticeKind, Policy, Released, Requester, Rule};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const K: i64 = 5;

/// Values of the targets that must never appear in an error text or a
/// notice (unless the statement itself contains them).
pub const SECRETS: &[&str] = &["Ada", "Lovelace", "69.0", "31.7", "27.3", "23.4", "9000000", "5000", "88.43", "11.2"];

pub fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/rust/fixtures");
    std::fs::canonicalize(&p).unwrap_or(p)
}

static LABS: AtomicUsize = AtomicUsize::new(0);

/// A policy over the fixture with its own state dir (audit log) and config.
pub struct Lab {
    pub policy: Policy,
    dir: PathBuf,
}

/// A statement that was not released: the rule (policy refusals), the
/// error's kind (`PolicyRefusal`, `SyntaxError`, `NameError`, ...) and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub rule: Option<Rule>,
    pub kind: String,
    pub text: String,
}

impl Lab {
    pub fn new() -> Lab {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sd-composition-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fx = fixtures();
        let fx = fx.display();
        let state = dir.join("state");
        let state = state.display();
        // The lab's configuration, shared with tests/rust/protected_cases.rs.
        let toml = include_str!("../fixtures/lab.toml")
            .replace("{name}", "composition lab")
            .replace("{max_rows}", "1000")
            .replace("{k}", &K.to_string())
            .replace("{fx}", &fx.to_string())
            .replace("{state}", &state.to_string());
        let path = dir.join("safe-data.toml");
        std::fs::write(&path, toml).unwrap();
        let catalog = Arc::new(safe_data_policy::Catalog::load(&path).unwrap_or_else(|e| panic!("fixture config: {e}")));
        let policy = Policy::new(catalog).expect("policy");
        Lab { policy, dir }
    }

    /// Runs one statement through the whole pipeline, as the kernel does.
    /// Every error text and notice is checked for the targets' values.
    pub fn run(&self, sql: &str) -> Result<Released, Refusal> {
        let who = Requester { user: "mallory".into(), session: "composition".into() };
        let cancel = CancelFlag::new();
        let out = match parse_cell(sql) {
            Err(e) => Err(Refusal { rule: None, kind: e.kind().to_string(), text: e.to_string() }),
            Ok(parsed) => {
                assert_eq!(parsed.len(), 1, "one statement per run: {sql}");
                self.policy.run(&parsed[0], &who, &cancel).into_result().map_err(|e| Refusal {
                    rule: e.rule(),
                    kind: e.kind().to_string(),
                    text: e.to_string(),
                })
            }
        };
        match &out {
            Err(r) => assert_no_secrets(sql, &r.text),
            Ok(rel) => {
                for n in rel.notices() {
                    assert_no_secrets(sql, &n.message);
                    // A group that singles out 1..k-1 people refuses the
                    // whole statement: withholding it alone would name it.
                    assert_ne!(
                        n.kind,
                        NoticeKind::Differencing,
                        "a group withheld by the differencing rule (it must refuse the statement):\n  {sql}\n{:?}",
                        rel.notices()
                    );
                }
            }
        }
        out
    }

    /// Released; any refusal or error (syntax, unknown column, ...) fails.
    pub fn released(&self, sql: &str) -> Released {
        match self.run(sql) {
            Ok(r) => r,
            Err(e) => panic!("expected a release of\n  {sql}\ngot {e:?}"),
        }
    }

    /// Refused by the policy with exactly `rule`; a release, another rule or
    /// an error that is no policy refusal (syntax, names, ...) fails.
    pub fn refused_by(&self, sql: &str, rule: Rule) -> Refusal {
        match self.run(sql) {
            Ok(r) => panic!("expected a refusal ({rule:?}) of\n  {sql}\ngot rows {:?} notices {:?}", r.rows(), r.notices()),
            Err(e) => {
                assert_eq!(e.kind, "PolicyRefusal", "expected a policy refusal ({rule:?}) of\n  {sql}\ngot {e:?}");
                assert_eq!(e.rule, Some(rule), "wrong rule for\n  {sql}\n{e:?}");
                e
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn assert_no_secrets(sql: &str, text: &str) {
    for s in SECRETS {
        if !sql.contains(s) {
            assert!(!text.contains(s), "output text leaks `{s}`:\n  {text}\nfor\n  {sql}");
        }
    }
}

// ---------------------------------------------------------------------------
// Notices
// ---------------------------------------------------------------------------

/// Where a notice's withheld groups were: the statement's own aggregation,
/// or one in a subquery, CTE or UNION branch ("… of a subquery withheld").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Top,
    Inner,
    Any,
}

/// The leading number of a notice ("3 groups withheld: …" → 3).
pub fn leading_count(n: &Notice) -> u64 {
    let digits: String = n.message.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or_else(|_| panic!("a {:?} notice without a leading count: {:?}", n.kind, n.message))
}

fn in_layer(n: &Notice, layer: Layer) -> bool {
    let inner = n.message.contains("subquery");
    match layer {
        Layer::Top => !inner,
        Layer::Inner => inner,
        Layer::Any => true,
    }
}

/// Groups withheld of `kind` in `layer`, summed over the notices.
pub fn withheld(rel: &Released, kind: NoticeKind, layer: Layer) -> u64 {
    rel.notices().iter().filter(|n| n.kind == kind && in_layer(n, layer)).map(leading_count).sum()
}

/// All groups withheld, in `layer`. Only thin groups (empty or fewer than k
/// people) are withheld: a group that singles out 1..k-1 people (filters,
/// UNION ALL branches, CORR/COVAR_SAMP levels) refuses the whole statement
/// (`Rule::Differencing`), and `Lab::run` fails on a differencing notice.
pub fn withheld_all(rel: &Released, layer: Layer) -> u64 {
    withheld(rel, NoticeKind::Suppressed, layer) + withheld(rel, NoticeKind::Differencing, layer)
}

/// Asserts how many (thin) groups a release withheld: at the statement's
/// own aggregation (`top`) and in subqueries (`inner`).
#[track_caller]
pub fn assert_withheld(rel: &Released, top: u64, inner: u64, sql: &str) {
    let got = (withheld(rel, NoticeKind::Suppressed, Layer::Top), withheld(rel, NoticeKind::Suppressed, Layer::Inner));
    assert_eq!(got, (top, inner), "groups withheld at (top, subqueries) for\n  {sql}\nnotices {:?}\nrows {:?}", rel.notices(), rel.rows());
    assert_eq!(withheld(rel, NoticeKind::Differencing, Layer::Any), 0, "{sql}: {:?}", rel.notices());
}

/// Asserts how many (thin) groups were withheld, whatever the layer: for a
/// subquery whose rows reach the output through projections, filters,
/// DISTINCT, sorts and limits only, the lowering may count its aggregation
/// as the statement's own.
#[track_caller]
pub fn assert_withheld_total(rel: &Released, want: u64, sql: &str) {
    let got = withheld(rel, NoticeKind::Suppressed, Layer::Any);
    assert_eq!(got, want, "groups withheld for\n  {sql}\nnotices {:?}\nrows {:?}", rel.notices(), rel.rows());
    assert_eq!(withheld(rel, NoticeKind::Differencing, Layer::Any), 0, "{sql}: {:?}", rel.notices());
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

pub fn num(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Double(x) => *x,
        other => panic!("expected a number, got {other:?}"),
    }
}

pub fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

pub fn dbl(v: &Value) -> f64 {
    match v {
        Value::Double(x) => *x,
        other => panic!("expected a double, got {other:?}"),
    }
}

pub fn text(v: &Value) -> &str {
    match v {
        Value::Text(s) => s,
        other => panic!("expected text, got {other:?}"),
    }
}

/// `x` rounded to 6 significant digits (the release's precision).
pub fn sig6(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{x:.5e}").parse().unwrap()
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

#[track_caller]
pub fn assert_close(got: f64, want: f64, what: &str) {
    assert!(close(got, want, 1e-12), "{what}: got {got}, want {want}");
}

/// The released rows, cell by cell, in a form easy to compare with literals.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    I(i64),
    /// Doubles compared to 1e-9 relative (the values are already rounded).
    F(f64),
    T(&'static str),
    B(bool),
    Null,
}

#[track_caller]
pub fn assert_rows(rel: &Released, want: &[Vec<Cell>], sql: &str) {
    let got = rel.rows();
    let same = got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g.len() == w.len()
                && g.iter().zip(w).all(|(g, w)| match (g, w) {
                    (Value::Integer(a), Cell::I(b)) => a == b,
                    (Value::Double(a), Cell::F(b)) => close(*a, *b, 1e-9),
                    (Value::Text(a), Cell::T(b)) => a == b,
                    (Value::Boolean(a), Cell::B(b)) => a == b,
                    (Value::Null, Cell::Null) => true,
                    _ => false,
                })
        });
    assert!(same, "rows of\n  {sql}\ngot  {got:?}\nwant {want:?}\nnotices {:?}", rel.notices());
}
