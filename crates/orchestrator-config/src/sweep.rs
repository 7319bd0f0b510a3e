//! The jobs of a multirun: a lazy cartesian product of the swept overrides, in Hydra's
//! order (`itertools.product`: the leftmost swept key varies slowest).
//!
//! Nothing here materializes the product. Job `n` is decoded in mixed radix from the
//! sweep lengths, and ranges stay (start, step, count), so a plan of 10^12 jobs is as
//! cheap as one of 5. Only sweeps that must be reordered or looked up (`sort`, `shuffle`,
//! `glob`, a cast over anything but a range) hold their values, at most
//! [`MAX_MATERIALIZED`] of them.
//!
//! As in Hydra, a later override with the same prefix and key replaces the earlier one in
//! its position (so `~db +db=x` keeps both). Divergences: `glob()` falls back to matching
//! files under [`SweepContext::cwd`] when the key names no config group directory, and
//! `shuffle()` of a sweep is seeded from [`SweepContext::seed`] when one is given.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::grammar::{
    Cast, Element, Override, OverrideKind, OverrideValue, RangeSweep, Sweep, cast_element, sort_elements,
};

/// Most values a sweep may hold in memory (after `sort`, `shuffle`, `glob`, ...).
pub const MAX_MATERIALIZED: u64 = 1_000_000;

/// What resolving sweeps needs from the outside world.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepContext {
    /// The primary config's directory: `glob()` lists `<config_dir>/<key as path>/*.yaml`
    /// when that directory exists (Hydra's config-group options).
    pub config_dir: Option<PathBuf>,
    /// Where `glob()` matches file paths otherwise.
    pub cwd: PathBuf,
    /// Seed for `shuffle()` of sweeps; `None` draws a fresh one.
    pub seed: Option<u64>,
}

impl SweepContext {
    /// A context with no config directory and no seed.
    pub fn new(cwd: impl Into<PathBuf>) -> SweepContext {
        SweepContext { config_dir: None, cwd: cwd.into(), seed: None }
    }
}

/// One job's overrides, in command-line order.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOverrides {
    /// The job number, 0-based, in product order.
    pub num: u64,
    /// Every override of the job, swept or not.
    pub items: Vec<ResolvedOverride>,
}

impl JobOverrides {
    /// Each override as Hydra shows it (`task=1`), e.g. for `overrides.yaml`.
    pub fn display(&self) -> Vec<String> {
        self.items.iter().map(ResolvedOverride::display).collect()
    }
}

/// One override of one job, with a single value.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOverride {
    /// What the override does.
    pub kind: OverrideKind,
    /// The key, without prefix.
    pub key: String,
    /// The value; `None` for a delete without value (`~key`).
    pub value: Option<Element>,
}

impl ResolvedOverride {
    /// Hydra's override string, as its sweeper writes it for a job: `task=1`, `+extra=1`,
    /// `++lr=0.5`, `flag=True`, `name='a,b'`, and `~name=null` for a delete without value.
    pub fn display(&self) -> String {
        let prefix = self.kind.prefix();
        match &self.value {
            Some(v) => format!("{prefix}{}={}", self.key, v.to_override_string()),
            None => format!("{prefix}{}=null", self.key),
        }
    }
}

/// Why a plan cannot be built; each names the override at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// A sweep with no values (`range(5,1)`, a glob over an empty directory, ...).
    #[error("override `{input}` has no values to sweep over")]
    Empty {
        /// The override as written.
        input: String,
    },
    /// The product of the sweep lengths does not fit in 64 bits.
    #[error("the sweep has more jobs than fit in 64 bits (overflow at override `{input}`)")]
    TooManyJobs {
        /// The override where the count overflowed.
        input: String,
    },
    /// A sweep that must be held in memory is too long.
    #[error("override `{input}`: {len} values are too many to {action} (at most {MAX_MATERIALIZED})")]
    TooLarge {
        /// The override as written.
        input: String,
        /// How many values it has (or has at least).
        len: u64,
        /// What needed them in memory (`sort`, `shuffle`, ...).
        action: &'static str,
    },
    /// `glob()` matched nothing.
    #[error("override `{input}`: glob {patterns} matched nothing in {searched}")]
    GlobNoMatch {
        /// The override as written.
        input: String,
        /// The include (and exclude) patterns.
        patterns: String,
        /// What was searched: a config group directory or the working directory.
        searched: String,
    },
    /// A `glob()` pattern is malformed.
    #[error("override `{input}`: invalid glob pattern `{pattern}`: {reason}")]
    GlobPattern {
        /// The override as written.
        input: String,
        /// The bad pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A config group directory could not be listed.
    #[error("override `{input}`: cannot read {}: {source}", .path.display())]
    Io {
        /// The override as written.
        input: String,
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Values that cannot be sorted or cast.
    #[error("override `{input}`: {message}")]
    Invalid {
        /// The override as written.
        input: String,
        /// What is wrong.
        message: String,
    },
}

/// All jobs of a multirun, computed on demand.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    entries: Vec<Entry>,
    len: u64,
    inputs: Vec<String>,
    any_sweep: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: OverrideKind,
    key: String,
    slot: Slot,
}

#[derive(Debug, Clone)]
enum Slot {
    Fixed(Option<Element>),
    /// Value index for job n is `(n / stride) % dim.len()`.
    Swept {
        dim: Dim,
        stride: u64,
    },
}

/// A resolved, indexable sweep dimension.
#[derive(Debug, Clone)]
enum Dim {
    Values(Vec<Element>),
    Range(RangeSweep),
    /// Parts in order; `ends[i]` is the total length of parts `0..=i`.
    Chain {
        parts: Vec<Dim>,
        ends: Vec<u64>,
    },
    /// A cast applied per value (only over ranges, whose ends were checked to cast).
    Cast {
        to: Cast,
        inner: Box<Dim>,
    },
}

impl Dim {
    fn len(&self) -> u64 {
        match self {
            Dim::Values(v) => v.len() as u64,
            Dim::Range(r) => r.len(),
            Dim::Chain { ends, .. } => ends.last().copied().unwrap_or(0),
            Dim::Cast { inner, .. } => inner.len(),
        }
    }

    fn get(&self, index: u64) -> Option<Element> {
        match self {
            Dim::Values(v) => v.get(usize::try_from(index).ok()?).cloned(),
            Dim::Range(r) => r.get(index),
            Dim::Chain { parts, ends } => {
                let part = ends.partition_point(|&end| end <= index);
                let before = part.checked_sub(1).and_then(|p| ends.get(p)).copied();
                parts.get(part)?.get(index - before.unwrap_or(0))
            }
            Dim::Cast { to, inner } => cast_element(&inner.get(index)?, *to).ok(),
        }
    }

    fn materialize(&self, input: &str, action: &'static str) -> Result<Vec<Element>, SweepError> {
        let len = self.len();
        if len > MAX_MATERIALIZED {
            return Err(SweepError::TooLarge { input: input.to_string(), len, action });
        }
        Ok((0..len).filter_map(|i| self.get(i)).collect())
    }
}

impl SweepPlan {
    /// Builds the plan. A later override of the same key (same prefix) replaces the
    /// earlier one but keeps its position, as Hydra's OrderedDict does.
    ///
    /// # Errors
    /// An empty sweep, a product that overflows `u64`, or a sweep that cannot be resolved
    /// (glob without match, values that cannot be sorted or cast, ...).
    pub fn new(overrides: Vec<Override>, ctx: &SweepContext) -> Result<SweepPlan, SweepError> {
        let inputs: Vec<String> = overrides.iter().map(|o| o.input.clone()).collect();
        let mut unique: Vec<Override> = Vec::with_capacity(overrides.len());
        for o in overrides {
            match unique.iter_mut().find(|u| u.kind == o.kind && u.key == o.key) {
                Some(existing) => *existing = o,
                None => unique.push(o),
            }
        }
        let any_sweep = unique.iter().any(Override::is_sweep);
        let mut resolver = Resolver { ctx, shuffles: 0 };
        let mut entries = Vec::with_capacity(unique.len());
        let mut swept: Vec<(usize, u64, String)> = Vec::new();
        for o in unique {
            let slot = match o.value {
                None => Slot::Fixed(None),
                Some(OverrideValue::Element(e)) => Slot::Fixed(Some(e)),
                Some(OverrideValue::Sweep(s)) => {
                    let dim = resolver.resolve(&s, &o.key, &o.input)?;
                    if dim.len() == 0 {
                        return Err(SweepError::Empty { input: o.input });
                    }
                    swept.push((entries.len(), dim.len(), o.input.clone()));
                    Slot::Swept { dim, stride: 0 }
                }
            };
            entries.push(Entry { kind: o.kind, key: o.key, slot });
        }
        // Strides from the right: the rightmost swept key varies fastest.
        let mut len: u64 = 1;
        for (index, dim_len, input) in swept.iter().rev() {
            if let Some(Entry { slot: Slot::Swept { stride, .. }, .. }) = entries.get_mut(*index) {
                *stride = len;
            }
            len = len.checked_mul(*dim_len).ok_or_else(|| SweepError::TooManyJobs { input: input.clone() })?;
        }
        Ok(SweepPlan { entries, len, inputs, any_sweep })
    }

    /// Number of jobs: the product of the sweep lengths (1 without sweeps).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a plan has at least one job (empty sweeps are errors).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any override is a sweep (even of one value).
    pub fn is_sweep(&self) -> bool {
        self.any_sweep
    }

    /// The overrides of job `num`, or `None` when `num >= len()`. Costs one division per
    /// key.
    pub fn job(&self, num: u64) -> Option<JobOverrides> {
        if num >= self.len {
            return None;
        }
        let items = self
            .entries
            .iter()
            .map(|e| {
                let value = match &e.slot {
                    Slot::Fixed(v) => v.clone(),
                    Slot::Swept { dim, stride } => {
                        let index = num.checked_div(*stride)?.checked_rem(dim.len())?;
                        Some(dim.get(index)?)
                    }
                };
                Some(ResolvedOverride { kind: e.kind, key: e.key.clone(), value })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(JobOverrides { num, items })
    }

    /// All jobs in order, computed one at a time.
    pub fn iter(&self) -> impl Iterator<Item = JobOverrides> + '_ {
        (0..self.len).filter_map(move |n| self.job(n))
    }

    /// The overrides that are not sweeps (one value for every job), in order.
    pub fn fixed(&self) -> Vec<ResolvedOverride> {
        self.entries
            .iter()
            .filter_map(|e| match &e.slot {
                Slot::Fixed(v) => Some(ResolvedOverride { kind: e.kind, key: e.key.clone(), value: v.clone() }),
                Slot::Swept { .. } => None,
            })
            .collect()
    }

    /// Every override as the user wrote it, in command-line order (for `multirun.yaml`).
    pub fn sweep_overrides(&self) -> Vec<String> {
        self.inputs.clone()
    }
}

struct Resolver<'a> {
    ctx: &'a SweepContext,
    /// How many shuffles were resolved, so each gets its own seeded stream.
    shuffles: u64,
}

impl Resolver<'_> {
    fn resolve(&mut self, sweep: &Sweep, key: &str, input: &str) -> Result<Dim, SweepError> {
        let invalid = |message: String| SweepError::Invalid { input: input.to_string(), message };
        Ok(match sweep {
            Sweep::Choice(values) => Dim::Values(values.clone()),
            Sweep::Range(r) => Dim::Range(r.clone()),
            Sweep::Chain(parts) => {
                let mut dims = Vec::with_capacity(parts.len());
                let mut ends = Vec::with_capacity(parts.len());
                let mut total: u64 = 0;
                for part in parts {
                    let dim = self.resolve(part, key, input)?;
                    total = total
                        .checked_add(dim.len())
                        .ok_or_else(|| SweepError::TooManyJobs { input: input.to_string() })?;
                    ends.push(total);
                    dims.push(dim);
                }
                Dim::Chain { parts: dims, ends }
            }
            Sweep::Glob { include, exclude } => Dim::Values(glob_values(include, exclude, key, self.ctx, input)?),
            Sweep::Sort { inner, reverse } => match self.resolve(inner, key, input)? {
                Dim::Range(r) if r.is_descending() != *reverse => Dim::Range(r.reversed()),
                Dim::Range(r) => Dim::Range(r),
                other => {
                    let mut values = other.materialize(input, "sort")?;
                    sort_elements(&mut values, *reverse).map_err(invalid)?;
                    Dim::Values(values)
                }
            },
            Sweep::Shuffle(inner) => {
                let mut values = self.resolve(inner, key, input)?.materialize(input, "shuffle")?;
                let mut rng = match self.ctx.seed {
                    // Distinct, reproducible streams for each shuffle in the plan.
                    Some(seed) => {
                        StdRng::seed_from_u64(seed.wrapping_add(self.shuffles.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                    }
                    None => StdRng::from_rng(&mut rand::rng()),
                };
                self.shuffles += 1;
                values.shuffle(&mut rng);
                Dim::Values(values)
            }
            Sweep::Cast { to, inner } => match self.resolve(inner, key, input)? {
                Dim::Range(r) => {
                    // Both ends casting means every value does, so `get` cannot fail.
                    for end in [r.first(), r.last()].into_iter().flatten() {
                        cast_element(&end, *to).map_err(invalid)?;
                    }
                    Dim::Cast { to: *to, inner: Box::new(Dim::Range(r)) }
                }
                other => Dim::Values(
                    other
                        .materialize(input, "cast")?
                        .iter()
                        .map(|v| cast_element(v, *to))
                        .collect::<Result<_, _>>()
                        .map_err(invalid)?,
                ),
            },
        })
    }
}

fn compile_patterns(patterns: &[String], input: &str) -> Result<Vec<glob::Pattern>, SweepError> {
    patterns
        .iter()
        .map(|p| {
            glob::Pattern::new(p).map_err(|e| SweepError::GlobPattern {
                input: input.to_string(),
                pattern: p.clone(),
                reason: e.msg.to_string(),
            })
        })
        .collect()
}

/// `glob()`: the option names of the config group named by the key when it exists
/// (Hydra's meaning), otherwise paths under the working directory. Sorted.
fn glob_values(
    include: &[String],
    exclude: &[String],
    key: &str,
    ctx: &SweepContext,
    input: &str,
) -> Result<Vec<Element>, SweepError> {
    let includes = compile_patterns(include, input)?;
    let excludes = compile_patterns(exclude, input)?;
    let group = key.split('@').next().unwrap_or(key).replace('.', "/");
    let group_dir = ctx.config_dir.as_ref().map(|d| d.join(&group)).filter(|d| d.is_dir());
    let (mut names, searched) = match group_dir {
        Some(dir) => {
            let names = group_options(&dir, input)?
                .into_iter()
                .filter(|n| includes.iter().any(|p| p.matches(n)))
                .collect::<Vec<_>>();
            (names, format!("config group `{}`", dir.display()))
        }
        None => (glob_paths(include, &ctx.cwd, input)?, format!("`{}`", ctx.cwd.display())),
    };
    names.retain(|n| !excludes.iter().any(|p| p.matches(n)));
    names.sort();
    names.dedup();
    if names.is_empty() {
        let mut patterns = format!("`{}`", include.join(","));
        if !exclude.is_empty() {
            patterns.push_str(&format!(" (excluding `{}`)", exclude.join(",")));
        }
        return Err(SweepError::GlobNoMatch { input: input.to_string(), patterns, searched });
    }
    Ok(names.into_iter().map(|value| Element::Str { value, quote: None }).collect())
}

/// Stems of the `*.yaml` files in a config group directory.
fn group_options(dir: &Path, input: &str) -> Result<Vec<String>, SweepError> {
    let io = |source| SweepError::Io { input: input.to_string(), path: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "yaml")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// Paths matching the patterns, relative to `cwd` when under it.
fn glob_paths(include: &[String], cwd: &Path, input: &str) -> Result<Vec<String>, SweepError> {
    let base = glob::Pattern::escape(&cwd.to_string_lossy());
    let mut found = Vec::new();
    for pattern in include {
        let full = if Path::new(pattern).is_absolute() || base.is_empty() {
            pattern.clone()
        } else {
            format!("{}/{pattern}", base.trim_end_matches('/'))
        };
        let paths = glob::glob(&full).map_err(|e| SweepError::GlobPattern {
            input: input.to_string(),
            pattern: pattern.clone(),
            reason: e.msg.to_string(),
        })?;
        // Unreadable entries are skipped, as a shell glob would.
        for path in paths.flatten() {
            if found.len() as u64 >= MAX_MATERIALIZED {
                return Err(SweepError::TooLarge { input: input.to_string(), len: found.len() as u64, action: "glob" });
            }
            let shown = path.strip_prefix(cwd).unwrap_or(&path);
            found.push(shown.to_string_lossy().into_owned());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::parse_override;

    fn plan_with(args: &[&str], ctx: &SweepContext) -> Result<SweepPlan, SweepError> {
        let overrides = args.iter().map(|a| parse_override(a).unwrap_or_else(|e| panic!("{e}"))).collect();
        SweepPlan::new(overrides, ctx)
    }

    fn plan(args: &[&str]) -> SweepPlan {
        plan_with(args, &SweepContext::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn lines(plan: &SweepPlan) -> Vec<String> {
        plan.iter().map(|j| format!("#{} : {}", j.num, j.display().join(" "))).collect()
    }

    #[test]
    fn two_keys_follow_the_command_line() {
        let p = plan(&["task=1,2,3", "lr=0.1,0.01"]);
        assert_eq!(
            lines(&p),
            [
                "#0 : task=1 lr=0.1",
                "#1 : task=1 lr=0.01",
                "#2 : task=2 lr=0.1",
                "#3 : task=2 lr=0.01",
                "#4 : task=3 lr=0.1",
                "#5 : task=3 lr=0.01",
            ]
        );
        let p = plan(&["lr=0.1,0.01", "task=1,2,3"]);
        assert_eq!(
            lines(&p),
            [
                "#0 : lr=0.1 task=1",
                "#1 : lr=0.1 task=2",
                "#2 : lr=0.1 task=3",
                "#3 : lr=0.01 task=1",
                "#4 : lr=0.01 task=2",
                "#5 : lr=0.01 task=3",
            ]
        );
    }

    #[test]
    fn three_keys_with_fixed_ones_in_between() {
        let p = plan(&["a=1,2", "fixed=x", "b=x,y", "+c=true,false"]);
        assert_eq!(p.len(), 8);
        assert_eq!(
            lines(&p),
            [
                "#0 : a=1 fixed=x b=x +c=True",
                "#1 : a=1 fixed=x b=x +c=False",
                "#2 : a=1 fixed=x b=y +c=True",
                "#3 : a=1 fixed=x b=y +c=False",
                "#4 : a=2 fixed=x b=x +c=True",
                "#5 : a=2 fixed=x b=x +c=False",
                "#6 : a=2 fixed=x b=y +c=True",
                "#7 : a=2 fixed=x b=y +c=False",
            ]
        );
    }

    #[test]
    fn no_sweep_is_one_job() {
        let p = plan(&["a=1", "~b", "++c=[1,2]"]);
        assert_eq!((p.len(), p.is_sweep(), p.is_empty()), (1, false, false));
        assert_eq!(lines(&p), ["#0 : a=1 ~b=null ++c=[1,2]"]);
        let p = plan(&[]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.job(0).map(|j| j.items.len()), Some(0));
        assert!(p.job(1).is_none());
        assert!(plan(&["a=choice(1)"]).is_sweep());
    }

    #[test]
    fn duplicate_key_keeps_first_position() {
        let p = plan(&["task=1,2", "lr=0.1", "task=7,8,9", "~task=null"]);
        assert_eq!(
            lines(&p),
            ["#0 : task=7 lr=0.1 ~task=null", "#1 : task=8 lr=0.1 ~task=null", "#2 : task=9 lr=0.1 ~task=null",]
        );
        assert_eq!(p.sweep_overrides(), ["task=1,2", "lr=0.1", "task=7,8,9", "~task=null"]);
    }

    #[test]
    fn huge_products_are_lazy() {
        let p = plan(&["a=1..1000000", "b=1..1000000"]);
        assert_eq!(p.len(), 1_000_000_000_000);
        let job = p.job(123_456_789).unwrap();
        // a varies slowest: index 123 -> 124, b index 456789 -> 456790.
        assert_eq!(job.display(), ["a=124", "b=456790"]);
        let last = p.job(p.len() - 1).unwrap();
        assert_eq!(last.display(), ["a=1000000", "b=1000000"]);
        assert!(p.job(p.len()).is_none());
        assert_eq!(p.iter().take(2).count(), 2);
    }

    #[test]
    fn overflow_and_empty_are_errors() {
        let e = plan_with(&["a=0..4294967296", "b=0..4294967296"], &SweepContext::default()).unwrap_err();
        assert!(matches!(e, SweepError::TooManyJobs { ref input } if input == "a=0..4294967296"));
        assert!(e.to_string().contains("more jobs than fit in 64 bits"));
        let e = plan_with(&["a=range(5,1)"], &SweepContext::default()).unwrap_err();
        assert_eq!(e.to_string(), "override `a=range(5,1)` has no values to sweep over");
        let e = plan_with(&["a=sort(1..2000000,reverse=false)", "b=shuffle(1..2000000)"], &SweepContext::default())
            .unwrap_err();
        assert!(matches!(e, SweepError::TooLarge { action: "shuffle", .. }), "{e}");
    }

    #[test]
    fn chained_sweeps_index_lazily() {
        let p = plan(&["t=1..3,10..1000000,x"]);
        assert_eq!(p.len(), 3 + 999_991 + 1);
        let show = |n| p.job(n).unwrap().display().join(" ");
        assert_eq!(show(0), "t=1");
        assert_eq!(show(2), "t=3");
        assert_eq!(show(3), "t=10");
        assert_eq!(show(p.len() - 2), "t=1000000");
        assert_eq!(show(p.len() - 1), "t=x");
    }

    #[test]
    fn deferred_sorts_and_casts() {
        let p = plan(&["t=sort(shuffle(3,1,2))", "u=sort(str(range(8,12)))"]);
        let got: Vec<String> = p.iter().map(|j| j.display().join(" ")).collect();
        assert_eq!(got.first().map(String::as_str), Some("t=1 u='10'"));
        assert_eq!(got.get(3).map(String::as_str), Some("t=1 u='9'"));
        let e = plan_with(&["t=sort(shuffle(1,a))"], &SweepContext::default()).unwrap_err();
        assert!(e.to_string().contains("cannot compare"), "{e}");
        let e = plan_with(&["t=int(shuffle(1,a))"], &SweepContext::default()).unwrap_err();
        assert!(e.to_string().contains("cannot cast `a` to int"), "{e}");
    }

    #[test]
    fn resolved_override_display() {
        let r = |kind, value: Option<Element>| ResolvedOverride { kind, key: "k".into(), value };
        assert_eq!(r(OverrideKind::Change, Some(Element::Int(1))).display(), "k=1");
        assert_eq!(r(OverrideKind::Add, Some(Element::Int(1))).display(), "+k=1");
        assert_eq!(r(OverrideKind::ForceAdd, Some(Element::Float(0.5))).display(), "++k=0.5");
        assert_eq!(r(OverrideKind::Delete, None).display(), "~k=null");
        assert_eq!(r(OverrideKind::Delete, Some(Element::Int(2))).display(), "~k=2");
        let quoted = Element::Str { value: "a,b".into(), quote: Some('\'') };
        assert_eq!(r(OverrideKind::Change, Some(quoted)).display(), "k='a,b'");
    }

    #[test]
    fn glob_over_config_group_options() {
        let dir = tempfile::tempdir().unwrap();
        let group = dir.path().join("db");
        std::fs::create_dir(&group).unwrap();
        for name in ["sqlite", "mysql", "postgresql", "oracle"] {
            std::fs::write(group.join(format!("{name}.yaml")), "x: 1\n").unwrap();
        }
        std::fs::write(group.join("notes.txt"), "").unwrap();
        let ctx =
            SweepContext { config_dir: Some(dir.path().to_path_buf()), cwd: dir.path().to_path_buf(), seed: None };
        let run = |arg: &str| -> Vec<String> {
            let p = plan_with(&[arg], &ctx).unwrap_or_else(|e| panic!("{e}"));
            p.iter().map(|j| j.display().join(" ")).collect()
        };
        assert_eq!(run("db=glob(*)"), ["db=mysql", "db=oracle", "db=postgresql", "db=sqlite"]);
        assert_eq!(run("db=glob(*,exclude=sqlite)"), ["db=mysql", "db=oracle", "db=postgresql"]);
        assert_eq!(run("db=glob([m*,p*])"), ["db=mysql", "db=postgresql"]);
        assert_eq!(run("db=glob(*,exclude=[o*,s*])"), ["db=mysql", "db=postgresql"]);
        assert_eq!(run("db=sort(glob(*),reverse=true)").first().map(String::as_str), Some("db=sqlite"));
        let e = plan_with(&["db=glob(x*)"], &ctx).unwrap_err();
        assert!(matches!(e, SweepError::GlobNoMatch { .. }));
        assert!(e.to_string().contains("glob `x*` matched nothing in config group"), "{e}");
    }

    #[test]
    fn glob_over_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        for name in ["b.csv", "a.csv", "c.txt"] {
            std::fs::write(dir.path().join("data").join(name), "").unwrap();
        }
        let ctx = SweepContext::new(dir.path());
        let p = plan_with(&["file=glob(data/*.csv)"], &ctx).unwrap();
        let got: Vec<String> = p.iter().map(|j| j.display().join(" ")).collect();
        assert_eq!(got, ["file=data/a.csv", "file=data/b.csv"]);
        let e = plan_with(&["file=glob(data/*.json)"], &ctx).unwrap_err();
        assert!(e.to_string().contains("data/*.json"), "{e}");
        let e = plan_with(&["file=glob('[')"], &ctx).unwrap_err();
        assert!(matches!(e, SweepError::GlobPattern { .. }), "{e}");
    }
}
