//! A hand-written recursive-descent parser for one override. Positions are char indices
//! so that error carets line up under non-ASCII input; nesting is capped at
//! [`MAX_DEPTH`] so recursion is bounded.

use super::functions;
use super::range::{FloatRange, IntRange, RangeSweep};
use super::value::{ESCAPABLE, Literal, Number, classify, is_unquoted_char};
use super::{Element, MAX_DEPTH, Override, OverrideKind, OverrideValue, Sweep};

/// A parse error before it is tied to its input.
#[derive(Debug)]
pub(crate) struct PErr {
    pub column: usize,
    pub message: String,
}

pub(crate) fn err<T>(column: usize, message: impl Into<String>) -> Result<T, PErr> {
    Err(PErr { column, message: message.into() })
}

/// A parsed element or sweep, before we know where it stands.
#[derive(Debug)]
pub(crate) enum Val {
    Elem(Element),
    Sweep(Sweep),
}

/// One function argument, positional or `name=value`.
#[derive(Debug)]
pub(crate) struct Arg {
    pub name: Option<String>,
    pub value: Val,
    /// Where the argument starts (its name, for a keyword argument).
    pub column: usize,
}

/// Where an element stands: ranges like `1..5` are sweeps only where a sweep may stand;
/// inside a list or dict they stay strings, as Hydra reads them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Item,
    Nested,
}

/// An unquoted run of text, e.g. `a\ b` or `${x}`.
struct Run {
    text: String,
    escaped: bool,
    interpolations: usize,
    /// Byte span of the first interpolation in `text`.
    first_interpolation: Option<(usize, usize)>,
    /// Whether unescaped whitespace was trimmed from the end.
    trailing_ws: bool,
}

impl Run {
    fn is_function_name(&self) -> bool {
        !self.escaped
            && self.interpolations == 0
            && !self.trailing_ws
            && self.text.split('.').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

pub(crate) fn parse(input: &str) -> Result<Override, PErr> {
    let mut p = Parser { chars: input.chars().collect(), pos: 0 };
    p.skip_ws();
    let kind = if p.eat('~') {
        OverrideKind::Delete
    } else if p.eat('+') {
        if p.eat('+') { OverrideKind::ForceAdd } else { OverrideKind::Add }
    } else {
        OverrideKind::Change
    };
    let key = p.parse_key()?;
    p.skip_ws();
    let value = if p.eat('=') {
        p.parse_value(kind)?
    } else if p.at_end() && kind == OverrideKind::Delete {
        None
    } else {
        let found = match p.peek() {
            Some(c) => format!(", found `{c}`"),
            None => String::new(),
        };
        return err(p.pos, format!("expected `=` after key `{key}`{found}"));
    };
    Ok(Override { kind, key, value, input: input.to_string() })
}

fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '$' | '.' | '/' | '@')
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    /// An error at the current position saying what was expected instead.
    fn unexpected<T>(&self, expected: &str) -> Result<T, PErr> {
        match self.peek() {
            Some(c) => err(self.pos, format!("unexpected `{c}`; expected {expected}")),
            None => err(self.pos, format!("unexpected end; expected {expected}")),
        }
    }

    /// `a.b.c`, `group/sub`, optionally `@package`: identifier segments, none empty.
    fn parse_key(&mut self) -> Result<String, PErr> {
        let start = self.pos;
        let mut segment_len = 0usize;
        let mut seen_at = false;
        while let Some(c) = self.peek().filter(|c| is_key_char(*c)) {
            match c {
                '.' | '/' if segment_len == 0 => {
                    return err(self.pos, format!("expected a name before `{c}` in the key"));
                }
                '/' if seen_at => {
                    return err(self.pos, "a package after `@` is a dot path; `/` is not allowed");
                }
                '@' if seen_at => return err(self.pos, "a key has at most one `@`"),
                '@' if segment_len == 0 => {
                    return err(self.pos, "expected a name before `@` in the key");
                }
                '@' => {
                    seen_at = true;
                    segment_len = 0;
                }
                '.' | '/' => segment_len = 0,
                _ => segment_len += 1,
            }
            self.pos += 1;
        }
        if self.pos == start {
            return match self.peek() {
                Some(c) => err(self.pos, format!("expected a key, found `{c}`")),
                None => err(self.pos, "expected a key"),
            };
        }
        let ends_with_separator = matches!(self.chars.get(self.pos - 1), Some('.' | '/'));
        if ends_with_separator {
            return err(self.pos, "expected a name after the separator in the key");
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// Everything after `=`: one element, or a comma-separated sweep.
    fn parse_value(&mut self, kind: OverrideKind) -> Result<Option<OverrideValue>, PErr> {
        self.skip_ws();
        if self.at_end() {
            // `key=` is the empty string; `~key=` deletes whatever the value is.
            return Ok(match kind {
                OverrideKind::Delete => None,
                _ => Some(OverrideValue::Element(Element::Str { value: String::new(), quote: None })),
            });
        }
        let mut items: Vec<(Val, usize)> = Vec::new();
        loop {
            self.skip_ws();
            let column = self.pos;
            match self.parse_element(Ctx::Item, 0)? {
                Some(v) => items.push((v, column)),
                None if items.is_empty() => {
                    return self.unexpected("a value");
                }
                None => return err(self.pos, "expected a value after `,`"),
            }
            self.skip_ws();
            if !self.eat(',') {
                break;
            }
        }
        if !self.at_end() {
            return self.unexpected("`,` or the end of the override");
        }
        let value = if items.len() == 1 {
            match items.pop() {
                Some((Val::Elem(e), _)) => OverrideValue::Element(e),
                Some((Val::Sweep(s), _)) => OverrideValue::Sweep(s),
                None => return err(self.pos, "expected a value"),
            }
        } else {
            OverrideValue::Sweep(flatten_items(items)?)
        };
        Ok(Some(value))
    }

    /// One element; `None` when there is none before a delimiter or the end.
    fn parse_element(&mut self, ctx: Ctx, depth: usize) -> Result<Option<Val>, PErr> {
        if depth >= MAX_DEPTH {
            return err(self.pos, format!("nesting is too deep (more than {MAX_DEPTH} levels)"));
        }
        self.skip_ws();
        match self.peek() {
            None | Some(',' | ')' | ']' | '}') => Ok(None),
            Some('[') => self.parse_list(depth).map(|e| Some(Val::Elem(e))),
            Some('{') => self.parse_dict(depth).map(|e| Some(Val::Elem(e))),
            Some(q @ ('\'' | '"')) => self.parse_quoted(q).map(|e| Some(Val::Elem(e))),
            Some(_) => self.parse_unquoted(ctx, depth),
        }
    }

    fn parse_list(&mut self, depth: usize) -> Result<Element, PErr> {
        let open = self.pos;
        self.pos += 1;
        self.skip_ws();
        let mut items = Vec::new();
        if self.eat(']') {
            return Ok(Element::List(items));
        }
        loop {
            self.skip_ws();
            let column = self.pos;
            match self.parse_element(Ctx::Nested, depth + 1)? {
                Some(Val::Elem(e)) => items.push(e),
                Some(Val::Sweep(_)) => {
                    return err(column, "a sweep cannot be nested inside a list");
                }
                None if self.at_end() => {
                    return err(self.pos, format!("expected `]` to close `[` at {open}"));
                }
                None => return self.unexpected("a list item"),
            }
            self.skip_ws();
            if self.eat(']') {
                return Ok(Element::List(items));
            }
            if !self.eat(',') {
                if self.at_end() {
                    return err(self.pos, format!("expected `]` to close `[` at {open}"));
                }
                return self.unexpected("`,` or `]`");
            }
        }
    }

    fn parse_dict(&mut self, depth: usize) -> Result<Element, PErr> {
        let open = self.pos;
        self.pos += 1;
        self.skip_ws();
        let mut entries = Vec::new();
        if self.eat('}') {
            return Ok(Element::Dict(entries));
        }
        loop {
            self.skip_ws();
            if self.at_end() {
                return err(self.pos, format!("expected `}}` to close `{{` at {open}"));
            }
            let key = self.parse_dict_key()?;
            self.skip_ws();
            if !self.eat(':') {
                return self.unexpected("`:` after the dict key");
            }
            self.skip_ws();
            let column = self.pos;
            match self.parse_element(Ctx::Nested, depth + 1)? {
                Some(Val::Elem(e)) => entries.push((key, e)),
                Some(Val::Sweep(_)) => {
                    return err(column, "a sweep cannot be nested inside a dict");
                }
                None => return self.unexpected("a value after `:`"),
            }
            self.skip_ws();
            if self.eat('}') {
                return Ok(Element::Dict(entries));
            }
            if !self.eat(',') {
                if self.at_end() {
                    return err(self.pos, format!("expected `}}` to close `{{` at {open}"));
                }
                return self.unexpected("`,` or `}`");
            }
        }
    }

    fn parse_dict_key(&mut self) -> Result<String, PErr> {
        if let Some(q @ ('\'' | '"')) = self.peek() {
            return match self.parse_quoted(q)? {
                Element::Str { value, .. } => Ok(value),
                _ => err(self.pos, "expected a dict key"),
            };
        }
        let run = self.scan_run(true)?;
        if self.peek() == Some('(') {
            return err(self.pos, "unexpected `(` in a dict key; escape it as `\\(`");
        }
        if run.text.is_empty() {
            return self.unexpected("a dict key");
        }
        Ok(run.text)
    }

    /// `'...'` or `"..."`. A backslash is special only in a run of backslashes right
    /// before a quote character (Hydra's rule): the run is halved, and an odd run escapes
    /// the quote.
    fn parse_quoted(&mut self, quote: char) -> Result<Element, PErr> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return err(open, format!("unterminated quote: expected a closing `{quote}`"));
                }
                Some('\\') => {
                    let mut n = 0usize;
                    while self.peek() == Some('\\') {
                        n += 1;
                        self.pos += 1;
                    }
                    if self.peek() == Some(quote) {
                        out.extend(std::iter::repeat_n('\\', n / 2));
                        self.pos += 1;
                        if n % 2 == 1 {
                            out.push(quote);
                        } else {
                            return Ok(Element::Str { value: out, quote: Some(quote) });
                        }
                    } else {
                        out.extend(std::iter::repeat_n('\\', n));
                    }
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(Element::Str { value: out, quote: Some(quote) });
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Scans unquoted text up to a delimiter (`,` `)` `]` `}` `(`, and `:` for dict
    /// keys), applying escapes and keeping interpolations whole. Unescaped whitespace at
    /// the end is dropped (the start was skipped by the caller).
    fn scan_run(&mut self, stop_at_colon: bool) -> Result<Run, PErr> {
        let mut run = Run {
            text: String::new(),
            escaped: false,
            interpolations: 0,
            first_interpolation: None,
            trailing_ws: false,
        };
        // Byte length of `text` up to its last significant character.
        let mut keep = 0usize;
        while let Some(c) = self.peek() {
            match c {
                ',' | ')' | ']' | '}' | '(' => break,
                ':' if stop_at_colon => break,
                '\\' => match self.peek_at(1) {
                    Some(next) if ESCAPABLE.contains(&next) => {
                        run.text.push(next);
                        run.escaped = true;
                        self.pos += 2;
                        keep = run.text.len();
                    }
                    // A lone backslash is an ordinary character (`C:\data`).
                    _ => {
                        run.text.push('\\');
                        self.pos += 1;
                        keep = run.text.len();
                    }
                },
                '$' if self.peek_at(1) == Some('{') => {
                    let start = run.text.len();
                    self.scan_interpolation(&mut run.text)?;
                    run.interpolations += 1;
                    if run.first_interpolation.is_none() {
                        run.first_interpolation = Some((start, run.text.len()));
                    }
                    keep = run.text.len();
                }
                ' ' | '\t' => {
                    run.text.push(c);
                    self.pos += 1;
                }
                '=' => {
                    return err(
                        self.pos,
                        "unexpected `=` in a value (pass each override as its own argument, \
                         or write `\\=` for a literal `=`)",
                    );
                }
                '\'' | '"' => {
                    return err(
                        self.pos,
                        format!(
                            "unexpected `{c}` inside a value; quote the whole value, or escape nothing and use the other quote"
                        ),
                    );
                }
                '[' | '{' => {
                    return err(
                        self.pos,
                        format!("unexpected `{c}` inside a value; escape it as `\\{c}` or quote the value"),
                    );
                }
                c if is_unquoted_char(c) => {
                    run.text.push(c);
                    self.pos += 1;
                    keep = run.text.len();
                }
                c => {
                    return err(
                        self.pos,
                        format!("unexpected character `{}`; quote the value to use it", c.escape_debug()),
                    );
                }
            }
        }
        run.trailing_ws = keep < run.text.len();
        run.text.truncate(keep);
        Ok(run)
    }

    /// `${...}` with nested braces, copied verbatim into `out`.
    fn scan_interpolation(&mut self, out: &mut String) -> Result<(), PErr> {
        let open = self.pos;
        out.push_str("${");
        self.pos += 2;
        let mut depth = 1usize;
        loop {
            let Some(c) = self.peek() else {
                return err(open, "unterminated interpolation: expected `}` to close `${`");
            };
            self.pos += 1;
            out.push(c);
            match c {
                '\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.pos += 1;
                    }
                }
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }

    fn parse_unquoted(&mut self, ctx: Ctx, depth: usize) -> Result<Option<Val>, PErr> {
        let column = self.pos;
        let run = self.scan_run(false)?;
        if self.peek() == Some('(') {
            if run.text.is_empty() || !run.is_function_name() {
                return err(self.pos, "unexpected `(`; escape it as `\\(` or quote the value");
            }
            return self.parse_call(run.text, column, depth).map(Some);
        }
        if run.text.is_empty() {
            return Ok(None);
        }
        let str_elem = |text: String| Val::Elem(Element::Str { value: text, quote: None });
        if run.escaped {
            return Ok(Some(str_elem(run.text)));
        }
        if run.interpolations > 0 {
            if run.interpolations == 1 && run.first_interpolation == Some((0, run.text.len())) {
                return Ok(Some(Val::Elem(Element::Interpolation(run.text))));
            }
            return Ok(Some(str_elem(run.text)));
        }
        let val = match classify(&run.text) {
            Literal::Null => Val::Elem(Element::Null),
            Literal::Bool(b) => Val::Elem(Element::Bool(b)),
            Literal::Int(i) => Val::Elem(Element::Int(i)),
            Literal::Float(f) => Val::Elem(Element::Float(f)),
            Literal::IntOverflow => {
                return err(column, format!("integer `{}` does not fit in 64 bits", run.text));
            }
            Literal::Range(bounds) if ctx == Ctx::Item => {
                Val::Sweep(Sweep::Range(inclusive_range(&run.text, &bounds, column)?))
            }
            Literal::Range(_) | Literal::Plain => str_elem(run.text),
        };
        Ok(Some(val))
    }

    /// `name(arg, kw=arg, ...)`; the `(` is at the current position.
    fn parse_call(&mut self, name: String, column: usize, depth: usize) -> Result<Val, PErr> {
        if depth + 1 >= MAX_DEPTH {
            return err(self.pos, format!("nesting is too deep (more than {MAX_DEPTH} levels)"));
        }
        if !functions::is_known(&name) {
            // Name the unknown function before complaining about its arguments.
            return functions::call(&name, column, Vec::new());
        }
        self.pos += 1;
        let mut args: Vec<Arg> = Vec::new();
        self.skip_ws();
        if !self.eat(')') {
            loop {
                self.skip_ws();
                let arg_column = self.pos;
                let kw = self.try_keyword();
                if kw.is_none() && args.iter().any(|a| a.name.is_some()) {
                    return err(arg_column, "positional argument after a keyword argument");
                }
                self.skip_ws();
                match self.parse_element(Ctx::Item, depth + 1)? {
                    Some(value) => args.push(Arg { name: kw, value, column: arg_column }),
                    None if self.at_end() => {
                        return err(self.pos, format!("expected `)` to close `{name}(`"));
                    }
                    None if kw.is_some() => return self.unexpected("a value after `=`"),
                    None => return self.unexpected("an argument"),
                }
                self.skip_ws();
                if self.eat(')') {
                    break;
                }
                if !self.eat(',') {
                    if self.at_end() {
                        return err(self.pos, format!("expected `)` to close `{name}(`"));
                    }
                    return self.unexpected(&format!("`,` or `)` in `{name}(...)`"));
                }
            }
        }
        functions::call(&name, column, args)
    }

    /// Consumes `name =` when it is there (a keyword argument), else leaves the input.
    fn try_keyword(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let name: String = self.chars.get(start..self.pos)?.iter().collect();
        self.skip_ws();
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && self.eat('=') {
            return Some(name);
        }
        self.pos = start;
        None
    }
}

/// `a..b` or `a..b..step`, inclusive, direction from `a` to `b` (the step's sign is
/// ignored, as in a shell's `{5..1..2}`).
fn inclusive_range(text: &str, bounds: &[Number], column: usize) -> Result<RangeSweep, PErr> {
    // Point errors about the step at the step itself.
    let step_column = column + text.rfind("..").map(|i| text[..i].chars().count() + 2).unwrap_or(0);
    match bounds {
        [Number::Int(a), Number::Int(b)] => {
            let step = if b >= a { 1 } else { -1 };
            IntRange::new(*a, *b, step, true).map(RangeSweep::Int).or_else(|m| err(column, m))
        }
        [Number::Int(a), Number::Int(b), Number::Int(s)] => {
            if *s == 0 {
                return err(step_column, "step must not be 0");
            }
            let Some(abs) = s.checked_abs() else {
                return err(step_column, "step is out of range");
            };
            let step = if b >= a { abs } else { -abs };
            IntRange::new(*a, *b, step, true).map(RangeSweep::Int).or_else(|m| err(step_column, m))
        }
        _ => {
            let f = |n: &Number| match n {
                Number::Int(i) => *i as f64,
                Number::Float(x) => *x,
            };
            let (a, b) = match bounds {
                [a, b, ..] => (f(a), f(b)),
                _ => return err(column, "a range needs a start and an end"),
            };
            let step = bounds.get(2).map(f).unwrap_or(1.0);
            if step == 0.0 {
                return err(step_column, "step must not be 0");
            }
            let step = if b >= a { step.abs() } else { -step.abs() };
            FloatRange::new(a, b, step, true).map(RangeSweep::Float).or_else(|m| err(column, m))
        }
    }
}

/// The items of `a,b,c` or `choice(a,b,c)`: values, with ranges flattened in place.
pub(crate) fn flatten_items(items: Vec<(Val, usize)>) -> Result<Sweep, PErr> {
    let mut parts: Vec<Sweep> = Vec::new();
    let mut values: Vec<Element> = Vec::new();
    for (item, column) in items {
        match item {
            Val::Elem(e) => values.push(e),
            Val::Sweep(Sweep::Range(r)) => {
                if !values.is_empty() {
                    parts.push(Sweep::Choice(std::mem::take(&mut values)));
                }
                parts.push(Sweep::Range(r));
            }
            Val::Sweep(Sweep::Choice(_)) => {
                return err(column, "nesting choices is not supported");
            }
            Val::Sweep(_) => {
                return err(column, "a sweep cannot be nested inside another sweep (only ranges are flattened)");
            }
        }
    }
    if !values.is_empty() {
        parts.push(Sweep::Choice(values));
    }
    Ok(match parts.len() {
        1 => parts.pop().unwrap_or(Sweep::Choice(Vec::new())),
        _ => Sweep::Chain(parts),
    })
}
