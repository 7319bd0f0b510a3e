//! The grammar's functions: sweeps (`choice`, `range`, `glob`, `sort`, `shuffle`, `tag`,
//! `interval`) and casts (`int`, `float`, `str`, `bool`).

use std::cmp::Ordering;

use rand::seq::SliceRandom;

use super::parser::{Arg, PErr, Val, err, flatten_items};
use super::range::{FloatRange, IntRange, RangeSweep};
use super::value::{parse_float_literal, python_float_repr};
use super::{Cast, Element, Sweep};

const FUNCTIONS: &[&str] =
    &["choice", "range", "interval", "glob", "sort", "shuffle", "tag", "int", "float", "str", "bool"];

/// Whether `name` is one of the grammar's functions.
pub(crate) fn is_known(name: &str) -> bool {
    FUNCTIONS.contains(&name)
}

/// Evaluates `name(args)`; `column` is where the name starts.
pub(crate) fn call(name: &str, column: usize, mut args: Vec<Arg>) -> Result<Val, PErr> {
    // A quoted argument reaches the function as plain text, as in Hydra: `choice('a,b',c)`
    // gives the jobs `a\,b` and `c`, not `'a,b'` (a list's items keep their quotes).
    for arg in &mut args {
        if let Val::Elem(Element::Str { quote, .. }) = &mut arg.value {
            *quote = None;
        }
    }
    match name {
        "choice" => choice(column, args),
        "range" => range(column, args),
        "interval" => {
            err(column, "interval() is a continuous range for optimizer sweepers; the basic sweep cannot enumerate it")
        }
        "glob" => glob(column, args),
        "sort" => sort(column, args),
        "shuffle" => shuffle(column, args),
        "tag" => tag(column, args),
        "int" => cast(Cast::Int, name, column, args),
        "float" => cast(Cast::Float, name, column, args),
        "str" => cast(Cast::Str, name, column, args),
        "bool" => cast(Cast::Bool, name, column, args),
        _ => {
            let best = FUNCTIONS.iter().map(|f| (strsim::damerau_levenshtein(name, f), *f)).min();
            match best {
                Some((distance, f)) if distance <= 2 && distance < name.chars().count() => {
                    err(column, format!("unknown function `{name}`, did you mean `{f}`?"))
                }
                _ => err(column, format!("unknown function `{name}`; known functions: {}", FUNCTIONS.join(", "))),
            }
        }
    }
}

/// A positional argument and its column.
type Positional = (Val, usize);
/// A keyword argument: name, value, column.
type Keyword = (String, Val, usize);

/// Splits arguments into positionals and checks keyword names against `allowed`.
fn split_args(fname: &str, args: Vec<Arg>, allowed: &[&str]) -> Result<(Vec<Positional>, Vec<Keyword>), PErr> {
    let mut positional = Vec::new();
    let mut keyword: Vec<Keyword> = Vec::new();
    for arg in args {
        match arg.name {
            None => positional.push((arg.value, arg.column)),
            Some(name) => {
                if !allowed.contains(&name.as_str()) {
                    let hint = if allowed.is_empty() {
                        format!("{fname}() takes no keyword arguments")
                    } else {
                        format!("{fname}() accepts: {}", allowed.join(", "))
                    };
                    return err(arg.column, format!("unknown keyword argument `{name}`; {hint}"));
                }
                if keyword.iter().any(|(k, _, _)| *k == name) {
                    return err(arg.column, format!("keyword argument `{name}` given twice"));
                }
                keyword.push((name, arg.value, arg.column));
            }
        }
    }
    Ok((positional, keyword))
}

/// Hydra's functions take their input either positionally or as one keyword (`value=` for
/// casts, `list=`/`sweep=` for `sort` and `shuffle`): the keyword form becomes positional.
fn keyword_input(
    fname: &str,
    positional: &mut Vec<Positional>,
    keyword: &mut Vec<Keyword>,
    names: &[&str],
) -> Result<(), PErr> {
    while let Some(i) = keyword.iter().position(|(k, _, _)| names.contains(&k.as_str())) {
        let (name, value, col) = keyword.remove(i);
        if !positional.is_empty() {
            return err(col, format!("{fname}() takes its input either positionally or as `{name}=`, not both"));
        }
        positional.push((value, col));
    }
    Ok(())
}

fn choice(column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (items, _) = split_args("choice", args, &[])?;
    if items.is_empty() {
        return err(column, "choice() needs at least one value");
    }
    flatten_items(items).map(Val::Sweep)
}

#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn number(fname: &str, val: &Val, column: usize) -> Result<Num, PErr> {
    match val {
        Val::Elem(Element::Int(i)) => Ok(Num::Int(*i)),
        Val::Elem(Element::Float(f)) => Ok(Num::Float(*f)),
        Val::Elem(e) => err(column, format!("{fname}() needs numbers, got `{}`", e.to_override_string())),
        Val::Sweep(_) => err(column, format!("{fname}() needs numbers, got a sweep")),
    }
}

/// Python's `range(stop)` / `range(start, stop[, step])`, end excluded.
fn range(column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (positional, keyword) = split_args("range", args, &["start", "stop", "step"])?;
    let mut slots: [Option<(Num, usize)>; 3] = [None, None, None];
    let names = ["start", "stop", "step"];
    if positional.len() > 3 {
        let extra = positional.get(3).map_or(column, |(_, c)| *c);
        return err(extra, "range() takes at most 3 arguments (start, stop, step)");
    }
    for ((val, col), slot) in positional.iter().zip(slots.iter_mut()) {
        *slot = Some((number("range", val, *col)?, *col));
    }
    for (name, val, col) in &keyword {
        let Some(i) = names.iter().position(|n| n == name) else {
            continue;
        };
        match slots.get_mut(i) {
            Some(s @ None) => *s = Some((number("range", val, *col)?, *col)),
            _ => return err(*col, format!("range() got `{name}` twice")),
        }
    }
    let [mut start, mut stop, step] = slots;
    // Hydra's `range(start, stop=None, step=1)`: without a stop, the start is the stop
    // (`range(3)`, `range(5, step=2)`).
    if stop.is_none() {
        stop = start.take();
    }
    let Some((stop, _)) = stop else {
        return err(column, "range() needs a stop: range(stop) or range(start, stop[, step])");
    };
    let start = start.map_or(Num::Int(0), |(n, _)| n);
    let (step, step_col) = step.map_or((Num::Int(1), column), |(n, c)| (n, c));
    let result = match (start, stop, step) {
        (Num::Int(a), Num::Int(b), Num::Int(s)) => IntRange::new(a, b, s, false).map(RangeSweep::Int),
        _ => {
            let f = |n: Num| match n {
                Num::Int(i) => i as f64,
                Num::Float(x) => x,
            };
            FloatRange::new(f(start), f(stop), f(step), false).map(RangeSweep::Float)
        }
    };
    result.map(|r| Val::Sweep(Sweep::Range(r))).or_else(|message| {
        let col = if message.contains("step") { step_col } else { column };
        err(col, message)
    })
}

fn patterns(val: Val, column: usize) -> Result<Vec<String>, PErr> {
    let one = |e: Element| match e {
        Element::Str { value, .. } => Ok(value),
        Element::Int(_) | Element::Float(_) | Element::Bool(_) => Ok(e.to_override_string()),
        other => err(column, format!("glob() patterns must be strings, got `{}`", other.to_override_string())),
    };
    match val {
        Val::Elem(Element::List(items)) => items.into_iter().map(one).collect(),
        Val::Elem(e) => one(e).map(|p| vec![p]),
        Val::Sweep(_) => err(column, "glob() patterns must be strings, got a sweep"),
    }
}

/// `glob(include, exclude=...)`: resolved later, against the config group or the files.
fn glob(column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (positional, keyword) = split_args("glob", args, &["include", "exclude"])?;
    let mut include = None;
    let mut exclude = None;
    let mut positional = positional.into_iter();
    if let Some((v, c)) = positional.next() {
        include = Some(patterns(v, c)?);
    }
    if let Some((v, c)) = positional.next() {
        exclude = Some(patterns(v, c)?);
    }
    if let Some((_, c)) = positional.next() {
        return err(c, "glob() takes at most 2 arguments (include, exclude)");
    }
    for (name, v, c) in keyword {
        let slot = if name == "include" { &mut include } else { &mut exclude };
        if slot.is_some() {
            return err(c, format!("glob() got `{name}` twice"));
        }
        *slot = Some(patterns(v, c)?);
    }
    let Some(include) = include else {
        return err(column, "glob() needs a pattern to include, e.g. glob(*)");
    };
    Ok(Val::Sweep(Sweep::Glob { include, exclude: exclude.unwrap_or_default() }))
}

fn reverse_flag(keyword: Vec<Keyword>) -> Result<bool, PErr> {
    let mut reverse = false;
    for (_, v, c) in keyword {
        match v {
            Val::Elem(Element::Bool(b)) => reverse = b,
            _ => return err(c, "`reverse` must be true or false"),
        }
    }
    Ok(reverse)
}

/// `sort(a, b, ...)`, `sort([list])` or `sort(sweep)`, with `reverse=true|false`.
fn sort(column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (mut positional, mut keyword) = split_args("sort", args, &["reverse", "list", "sweep"])?;
    keyword_input("sort", &mut positional, &mut keyword, &["list", "sweep"])?;
    let reverse = reverse_flag(keyword)?;
    if positional.is_empty() {
        return err(column, "sort() needs values to sort");
    }
    if positional.len() == 1 {
        match positional.pop() {
            Some((Val::Elem(Element::List(mut items)), c)) => {
                sort_elements(&mut items, reverse).or_else(|m| err(c, m))?;
                return Ok(Val::Elem(Element::List(items)));
            }
            Some((Val::Sweep(s), c)) => return sort_sweep(s, reverse, c).map(Val::Sweep),
            Some(other) => positional.push(other),
            None => {}
        }
    }
    let mut values = plain_values(positional, "sort")?;
    sort_elements(&mut values, reverse).or_else(|m| err(column, m))?;
    Ok(Val::Sweep(Sweep::Choice(values)))
}

fn sort_sweep(sweep: Sweep, reverse: bool, column: usize) -> Result<Sweep, PErr> {
    Ok(match sweep {
        Sweep::Choice(mut values) => {
            sort_elements(&mut values, reverse).or_else(|m| err(column, m))?;
            Sweep::Choice(values)
        }
        // A range is already ordered: sorting it at most reverses it, and stays lazy.
        Sweep::Range(r) if r.is_descending() != reverse => Sweep::Range(r.reversed()),
        Sweep::Range(r) => Sweep::Range(r),
        other => Sweep::Sort { inner: Box::new(other), reverse },
    })
}

/// The order `sort()` uses: numbers (bools count as 0/1, like Python) together, strings
/// together; anything else, or a mix, cannot be sorted.
fn sort_key(e: &Element) -> Option<u8> {
    match e {
        Element::Int(_) | Element::Float(_) | Element::Bool(_) => Some(0),
        Element::Str { .. } => Some(1),
        _ => None,
    }
}

fn compare(a: &Element, b: &Element) -> Ordering {
    let num = |e: &Element| match e {
        Element::Int(i) => *i as f64,
        Element::Float(f) => *f,
        Element::Bool(b) => f64::from(u8::from(*b)),
        _ => 0.0,
    };
    match (a, b) {
        (Element::Int(x), Element::Int(y)) => x.cmp(y),
        (Element::Str { value: x, .. }, Element::Str { value: y, .. }) => x.cmp(y),
        _ => num(a).total_cmp(&num(b)),
    }
}

/// Sorts values in place (stable); errors name the first pair that cannot be compared.
pub(crate) fn sort_elements(values: &mut [Element], reverse: bool) -> Result<(), String> {
    let mut kind = None;
    for v in values.iter() {
        let k = sort_key(v)
            .ok_or_else(|| format!("sort() can only order numbers or strings, got `{}`", v.to_override_string()))?;
        match kind {
            None => kind = Some((k, v)),
            Some((k0, v0)) if k0 != k => {
                return Err(format!(
                    "sort() cannot compare `{}` with `{}`: use all numbers or all strings",
                    v0.to_override_string(),
                    v.to_override_string()
                ));
            }
            Some(_) => {}
        }
    }
    if reverse {
        values.sort_by(|a, b| compare(b, a));
    } else {
        values.sort_by(compare);
    }
    Ok(())
}

/// The positionals of `fname(a, b, ...)`, which must all be plain values.
fn plain_values(positional: Vec<Positional>, fname: &str) -> Result<Vec<Element>, PErr> {
    let mut values = Vec::with_capacity(positional.len());
    for (v, c) in positional {
        match v {
            Val::Elem(e) => values.push(e),
            Val::Sweep(_) => return err(c, format!("{fname}() takes values, one list, or one sweep")),
        }
    }
    Ok(values)
}

/// `shuffle(a, b, ...)`, `shuffle([list])` or `shuffle(sweep)`.
fn shuffle(column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (mut positional, mut keyword) = split_args("shuffle", args, &["list", "sweep"])?;
    keyword_input("shuffle", &mut positional, &mut keyword, &["list", "sweep"])?;
    if positional.is_empty() {
        return err(column, "shuffle() needs values to shuffle");
    }
    if positional.len() == 1 {
        match positional.pop() {
            Some((Val::Elem(Element::List(mut items)), _)) => {
                // A list is one value, so there is no plan to seed this: shuffle now, as
                // Hydra does.
                items.shuffle(&mut rand::rng());
                return Ok(Val::Elem(Element::List(items)));
            }
            Some((Val::Sweep(s), _)) => return Ok(Val::Sweep(Sweep::Shuffle(Box::new(s)))),
            Some(other) => positional.push(other),
            None => {}
        }
    }
    let values = plain_values(positional, "shuffle")?;
    Ok(Val::Sweep(Sweep::Shuffle(Box::new(Sweep::Choice(values)))))
}

/// `tag(t1, ..., sweep)`: tags matter only to optimizer sweepers, so they are checked and
/// dropped.
fn tag(column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (mut positional, _) = split_args("tag", args, &[])?;
    let Some((last, last_col)) = positional.pop() else {
        return err(column, "tag() needs tags followed by a sweep");
    };
    for (v, c) in positional {
        if !matches!(v, Val::Elem(Element::Str { .. })) {
            return err(c, "tag() arguments before the sweep must be strings (tags)");
        }
    }
    match last {
        Val::Sweep(s) => Ok(Val::Sweep(s)),
        Val::Elem(_) => err(last_col, "the last argument of tag() must be a sweep"),
    }
}

fn cast(to: Cast, fname: &str, column: usize, args: Vec<Arg>) -> Result<Val, PErr> {
    let (mut positional, mut keyword) = split_args(fname, args, &["value"])?;
    keyword_input(fname, &mut positional, &mut keyword, &["value"])?;
    if positional.len() > 1 {
        // Hydra: several values are a choice of them, each cast (`str(1,2)` is '1','2').
        let c = positional[0].1;
        let values = positional
            .into_iter()
            .map(|(v, col)| match v {
                Val::Elem(e) => Ok(e),
                Val::Sweep(_) => err(col, format!("{fname}() of several values takes plain values, not sweeps")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return cast_sweep(Sweep::Choice(values), to, c).map(Val::Sweep);
    }
    let Some((value, c)) = positional.pop() else {
        return err(column, format!("{fname}() needs a value"));
    };
    match value {
        Val::Elem(e) => cast_element(&e, to).map(Val::Elem).or_else(|m| err(c, m)),
        Val::Sweep(s) => cast_sweep(s, to, c).map(Val::Sweep),
    }
}

fn cast_sweep(sweep: Sweep, to: Cast, column: usize) -> Result<Sweep, PErr> {
    match sweep {
        Sweep::Choice(values) => values
            .iter()
            .map(|v| cast_element(v, to))
            .collect::<Result<Vec<_>, _>>()
            .map(Sweep::Choice)
            .or_else(|m| err(column, m)),
        Sweep::Range(r) => {
            // Values are monotone, so if both ends cast, every value does: the lazy
            // cast can never fail later.
            for end in [r.first(), r.last()].into_iter().flatten() {
                cast_element(&end, to).or_else(|m| err(column, m))?;
            }
            Ok(Sweep::Cast { to, inner: Box::new(Sweep::Range(r)) })
        }
        other => Ok(Sweep::Cast { to, inner: Box::new(other) }),
    }
}

fn cast_error(e: &Element, to: &str) -> String {
    format!("cannot cast `{}` to {to}", e.to_override_string())
}

/// Casts one value (lists and dicts element-wise), like Hydra's cast functions.
pub(crate) fn cast_element(e: &Element, to: Cast) -> Result<Element, String> {
    match e {
        Element::List(items) => {
            return items.iter().map(|i| cast_element(i, to)).collect::<Result<Vec<_>, _>>().map(Element::List);
        }
        Element::Dict(entries) => {
            return entries
                .iter()
                .map(|(k, v)| cast_element(v, to).map(|v| (k.clone(), v)))
                .collect::<Result<Vec<_>, _>>()
                .map(Element::Dict);
        }
        Element::Null | Element::Interpolation(_) => {
            let name = match to {
                Cast::Int => "int",
                Cast::Float => "float",
                Cast::Str => "str",
                Cast::Bool => "bool",
            };
            return Err(cast_error(e, name));
        }
        _ => {}
    }
    match to {
        Cast::Int => match e {
            Element::Int(i) => Ok(Element::Int(*i)),
            Element::Bool(b) => Ok(Element::Int(i64::from(*b))),
            // Python's int() truncates toward zero.
            Element::Float(f) if f.is_finite() && f.trunc().abs() < 9.2e18 => Ok(Element::Int(f.trunc() as i64)),
            // Python's int(str): base 10, a sign, `_` between digits, leading zeros fine ('01').
            Element::Str { value, .. } => {
                let t = value.trim();
                let body = t.strip_prefix(['+', '-']).unwrap_or(t);
                let ok = !body.is_empty()
                    && body.bytes().all(|b| b.is_ascii_digit() || b == b'_')
                    && !body.starts_with('_')
                    && !body.ends_with('_')
                    && !body.contains("__");
                match super::value::parse_int(t) {
                    Some(i) if ok => Ok(Element::Int(i)),
                    _ => Err(cast_error(e, "int")),
                }
            }
            _ => Err(cast_error(e, "int")),
        },
        Cast::Float => match e {
            Element::Int(i) => Ok(Element::Float(*i as f64)),
            Element::Float(f) => Ok(Element::Float(*f)),
            Element::Bool(b) => Ok(Element::Float(f64::from(u8::from(*b)))),
            Element::Str { value, .. } => {
                let t = value.trim();
                match super::value::classify(t) {
                    super::value::Literal::Int(i) => Ok(Element::Float(i as f64)),
                    _ => parse_float_literal(t).map(Element::Float).ok_or_else(|| cast_error(e, "float")),
                }
            }
            _ => Err(cast_error(e, "float")),
        },
        Cast::Str => {
            let text = match e {
                Element::Int(i) => i.to_string(),
                Element::Float(f) => python_float_repr(*f),
                Element::Bool(b) => b.to_string(),
                Element::Str { value, .. } => value.clone(),
                _ => return Err(cast_error(e, "str")),
            };
            Ok(Element::Str { value: text, quote: None })
        }
        Cast::Bool => match e {
            Element::Bool(b) => Ok(Element::Bool(*b)),
            Element::Int(i) => Ok(Element::Bool(*i != 0)),
            Element::Float(f) => Ok(Element::Bool(*f != 0.0)),
            Element::Str { value, .. } => match value.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Element::Bool(true)),
                "false" => Ok(Element::Bool(false)),
                _ => Err(cast_error(e, "bool")),
            },
            _ => Err(cast_error(e, "bool")),
        },
    }
}
