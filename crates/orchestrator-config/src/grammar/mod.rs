//! Hydra's command-line override grammar, plus inclusive ranges (`1..5`).
//!
//! One argv element is one override: [`parse_override`] turns `task=1,2,3` into an
//! [`Override`] whose value is either a single [`Element`] or a [`Sweep`]. Parsing never
//! touches the filesystem and never panics; sweeps that need the outside world (`glob`,
//! `shuffle` of a sweep) are kept as a description and resolved by
//! [`crate::sweep::SweepPlan`].
//!
//! Divergences from Hydra, all deliberate:
//! * `a..b` and `a..b..step` are inclusive ranges (Hydra reads them as the string `"1..5"`).
//!   They are recognised only where a sweep may stand (a top-level item or a function
//!   argument); inside `[..]` or `{..}` they stay strings, as in Hydra. The direction goes
//!   from `a` to `b` and the step's sign is ignored, like a shell's `{5..1..2}`.
//! * Float ranges are computed on scaled integers, so `range(0,1,0.1)` gives exactly ten
//!   clean values and never includes its stop by accident.
//! * A comma-separated sweep or `choice(...)` may contain ranges, which are flattened:
//!   `1..3,7` is `1,2,3,7`. Other nested sweeps are rejected as in Hydra.
//! * `tag(t1, ..., sweep)` is accepted and its tags are ignored (nothing here uses them).
//! * `shuffle([1,2,3])` (a list, i.e. one value) is shuffled at parse time with an
//!   unseeded generator, like Hydra; shuffles of sweeps are done by the plan, seeded.
//! * An interpolation is shown as written (`${lr}`), not Hydra's escaped `$\{lr\}`.
//! * Values are shown so that they parse back to the same type: `str(1)` shows as `'1'`
//!   (Hydra shows `1`, and the job then gets an int). `~key` shows as `~key`, not
//!   Hydra's `~key=null`.
//! * Integers must fit in 64 bits (Python's are unbounded).
//! * Any Unicode letter or digit may appear in an unquoted value or a key.

mod functions;
mod parser;
mod range;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;

pub use range::{FloatRange, IntRange, RangeSweep};

pub(crate) use functions::{cast_element, sort_elements};
pub use value::python_float_repr;

/// Deepest nesting of lists, dicts and function calls accepted, so that recursion stays
/// bounded whatever the input.
pub const MAX_DEPTH: usize = 64;

/// One parsed command-line override, e.g. `+db.port=5432` or `task=1..5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// What the override does to the key.
    pub kind: OverrideKind,
    /// The key as written, without its `+`, `++` or `~` prefix (`db.port`, `db@pkg`).
    pub key: String,
    /// The value; `None` only for a delete without a value (`~key`).
    pub value: Option<OverrideValue>,
    /// The whole override as the user wrote it.
    pub input: String,
}

impl Override {
    /// Whether the value is a sweep (of any length).
    pub fn is_sweep(&self) -> bool {
        matches!(self.value, Some(OverrideValue::Sweep(_)))
    }
}

/// The action of an override, given by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverrideKind {
    /// `key=value`: set a key.
    Change,
    /// `+key=value`: add a key that must not exist yet.
    Add,
    /// `++key=value`: add the key or override it.
    ForceAdd,
    /// `~key` or `~key=value`: delete a key (only if its value matches, when given).
    Delete,
}

impl OverrideKind {
    /// The prefix written before the key: `""`, `"+"`, `"++"` or `"~"`.
    pub fn prefix(self) -> &'static str {
        match self {
            OverrideKind::Change => "",
            OverrideKind::Add => "+",
            OverrideKind::ForceAdd => "++",
            OverrideKind::Delete => "~",
        }
    }
}

/// The right-hand side of an override.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OverrideValue {
    /// A single value.
    Element(Element),
    /// Several values to sweep over.
    Sweep(Sweep),
}

/// One value of the grammar.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Element {
    /// `null` (any case).
    Null,
    /// `true` / `false` (any case).
    Bool(bool),
    /// A 64-bit integer (`1_000`, `-3`).
    Int(i64),
    /// A float (`1e-3`, `.5`, `inf`, `nan`).
    Float(f64),
    /// A string; `quote` is the quote character it was written with, if any, so it can be
    /// shown the same way again.
    Str {
        /// The string after unescaping.
        value: String,
        /// `Some('\'')` or `Some('"')` when it was quoted.
        quote: Option<char>,
    },
    /// `[a, b]`.
    List(Vec<Element>),
    /// `{a: 1, b: 2}`, in written order.
    Dict(Vec<(String, Element)>),
    /// A whole-value interpolation, kept as text including `${` and `}`; resolved later.
    Interpolation(String),
}

/// Several values for one key. Ranges stay lazy (start, step, count) so that a sweep of
/// a million values costs nothing until a job is asked for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Sweep {
    /// `a,b,c` or `choice(a,b,c)`: the listed values, in order.
    Choice(Vec<Element>),
    /// `range(..)` or `a..b`.
    Range(RangeSweep),
    /// A comma-separated sweep mixing ranges and values (`1..3,7`): the parts in order.
    Chain(Vec<Sweep>),
    /// `glob(include, exclude=...)`: resolved against the config directory or the
    /// filesystem when the plan is built.
    Glob {
        /// fnmatch patterns to include (any may match).
        include: Vec<String>,
        /// fnmatch patterns to drop.
        exclude: Vec<String>,
    },
    /// `sort(sweep)` over a sweep that is only known when the plan is built.
    Sort {
        /// The sweep to sort.
        inner: Box<Sweep>,
        /// Descending order.
        reverse: bool,
    },
    /// `shuffle(sweep)`: shuffled when the plan is built (seeded from the context).
    Shuffle(Box<Sweep>),
    /// `int(..)`, `float(..)`, `str(..)`, `bool(..)` over a sweep, applied per value.
    Cast {
        /// The target type.
        to: Cast,
        /// The sweep whose values are cast.
        inner: Box<Sweep>,
    },
}

/// The target of a cast function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cast {
    /// `int(..)`.
    Int,
    /// `float(..)`.
    Float,
    /// `str(..)`.
    Str,
    /// `bool(..)`.
    Bool,
}

/// A grammar error: where in the override it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideError {
    /// The override as written.
    pub input: String,
    /// 0-based index, in chars, of the offending character (the length of the input when
    /// the problem is that it ended too early).
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for OverrideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid override `{}`: {}", self.input, self.message)?;
        writeln!(f, "    {}", self.input)?;
        // Under the character: tabs as tabs, wide characters (CJK) as two columns.
        let pad: String = self
            .input
            .chars()
            .take(self.column)
            .map(|c| {
                if c == '\t' {
                    "\t".to_string()
                } else {
                    " ".repeat(unicode_width::UnicodeWidthChar::width(c).unwrap_or(0))
                }
            })
            .collect();
        write!(f, "    {pad}^")
    }
}

impl std::error::Error for OverrideError {}

/// Parses one override (one argv element), e.g. `task=1,2,3`, `+db.port=5432`, `~name`.
///
/// # Errors
/// An [`OverrideError`] with the column of the offending character and what was expected.
pub fn parse_override(input: &str) -> Result<Override, OverrideError> {
    parser::parse(input).map_err(|e| OverrideError { input: input.to_string(), column: e.column, message: e.message })
}
