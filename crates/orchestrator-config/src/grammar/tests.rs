//! Unit tests of the grammar against the forms of the reference (hydra-joblib-behaviour.md
//! section 2) and our additions.

use super::*;
use crate::sweep::{SweepContext, SweepPlan};

fn parse(input: &str) -> Override {
    parse_override(input).unwrap_or_else(|e| panic!("{e}"))
}

fn elem(input: &str) -> Element {
    match parse(input).value {
        Some(OverrideValue::Element(e)) => e,
        other => panic!("{input}: expected an element, got {other:?}"),
    }
}

/// The job overrides of a one-override sweep, as Hydra shows them.
fn shown(input: &str) -> Vec<String> {
    let plan = SweepPlan::new(vec![parse(input)], &SweepContext::default()).unwrap_or_else(|e| panic!("{input}: {e}"));
    plan.iter().map(|job| job.display().join(" ")).collect()
}

fn values(input: &str) -> Vec<Element> {
    let plan = SweepPlan::new(vec![parse(input)], &SweepContext::default()).unwrap_or_else(|e| panic!("{input}: {e}"));
    plan.iter().filter_map(|job| job.items.into_iter().next().and_then(|i| i.value)).collect()
}

fn error(input: &str) -> OverrideError {
    match parse_override(input) {
        Ok(o) => panic!("{input}: expected an error, got {o:?}"),
        Err(e) => e,
    }
}

fn assert_error(input: &str, column: usize, needle: &str) {
    let e = error(input);
    assert_eq!(e.column, column, "{input}: wrong column for `{}`", e.message);
    assert!(e.message.contains(needle), "{input}: `{}` does not mention `{needle}`", e.message);
}

fn s(value: &str) -> Element {
    Element::Str { value: value.into(), quote: None }
}

// ---- keys and kinds ----

#[test]
fn kinds_and_keys() {
    let o = parse("task=1");
    assert_eq!((o.kind, o.key.as_str()), (OverrideKind::Change, "task"));
    assert_eq!(parse("+extra=1").kind, OverrideKind::Add);
    assert_eq!(parse("++lr=0.5").kind, OverrideKind::ForceAdd);
    let del = parse("~name");
    assert_eq!((del.kind, del.value), (OverrideKind::Delete, None));
    assert_eq!(parse("~name=").value, None);
    assert_eq!(parse("~task=1").value, Some(OverrideValue::Element(Element::Int(1))));
    assert_eq!(parse("db.driver-x.$y_1=1").key, "db.driver-x.$y_1");
    assert_eq!(parse("hydra/launcher=joblib").key, "hydra/launcher");
    assert_eq!(parse("db@pkg.sub=mysql").key, "db@pkg.sub");
    assert_eq!(parse("layers.0.size=3").key, "layers.0.size");
    assert_eq!(parse("task=1").input, "task=1");
}

#[test]
fn empty_value_is_empty_string() {
    assert_eq!(elem("key="), s(""));
    assert_eq!(elem("key=   "), s(""));
    assert_eq!(shown("key="), ["key="]);
}

// ---- primitives ----

#[test]
fn primitives_are_typed() {
    assert_eq!(elem("x=null"), Element::Null);
    assert_eq!(elem("x=NuLL"), Element::Null);
    assert_eq!(elem("x=TRUE"), Element::Bool(true));
    assert_eq!(elem("x=false"), Element::Bool(false));
    assert_eq!(elem("x=1_000"), Element::Int(1000));
    assert_eq!(elem("x=+5"), Element::Int(5));
    assert_eq!(elem("x=-5"), Element::Int(-5));
    assert_eq!(elem("x=1e-3"), Element::Float(0.001));
    assert_eq!(elem("x=.5"), Element::Float(0.5));
    assert_eq!(elem("x=-Inf"), Element::Float(f64::NEG_INFINITY));
    assert!(matches!(elem("x=NaN"), Element::Float(f) if f.is_nan()));
    assert_eq!(elem("x=abc"), s("abc"));
    assert_eq!(elem("x=01"), s("01"));
    // A float's integer part has no leading zero either: these are strings to Hydra.
    assert_eq!(elem("x=01.10"), s("01.10"));
    assert_eq!(elem("x=007.5"), s("007.5"));
    assert_eq!(elem("x=01e3"), s("01e3"));
    assert_eq!(elem("x=0.10"), Element::Float(0.1));
    assert_eq!(elem("x=10.05"), Element::Float(10.05));
    assert_eq!(elem("x=a b"), s("a b"));
    assert_eq!(elem("x=/path/to-x.txt"), s("/path/to-x.txt"));
    assert_eq!(elem("x=a%b*c@d?e|f+g"), s("a%b*c@d?e|f+g"));
    assert_eq!(elem("x=http://host:80"), s("http://host:80"));
    assert_eq!(elem(r"x=C:\data"), s(r"C:\data"));
    assert_eq!(elem("x=ünïcødé"), s("ünïcødé"));
}

#[test]
fn whitespace_is_trimmed_around_values() {
    assert_eq!(shown("x= 1 , 2 "), ["x=1", "x=2"]);
    assert_eq!(elem("x=  a b  "), s("a b"));
    assert_eq!(elem("x=[ 1 , 2 ]"), Element::List(vec![Element::Int(1), Element::Int(2)]));
    assert_eq!(elem("x={ a : 1 }"), Element::Dict(vec![("a".into(), Element::Int(1))]));
    assert_eq!(shown("x=range( 1 , 3 )"), ["x=1", "x=2"]);
}

#[test]
fn escapes_outside_quotes() {
    assert_eq!(elem(r"x=\\\(\)\[\]\{\}\:\=\,\ \	"), s("\\()[]{}:=, \t"));
    // Escaped whitespace survives trimming.
    assert_eq!(elem(r"x=a\ "), s("a "));
    // Escaped text is always a string.
    assert_eq!(elem(r"x=1\,2"), s("1,2"));
    assert_eq!(shown(r"name=z\,w"), [r"name=z\,w"]);
}

#[test]
fn quoted_strings() {
    assert_eq!(elem("x='a,b'"), Element::Str { value: "a,b".into(), quote: Some('\'') });
    assert_eq!(elem(r#"x="x y""#), Element::Str { value: "x y".into(), quote: Some('"') });
    // Backslashes are special only before a quote.
    assert_eq!(elem(r"x='it\'s'").to_yaml(), "it's");
    assert_eq!(elem(r"x='a\b'").to_yaml(), r"a\b");
    assert_eq!(elem(r"x='a\\'").to_yaml(), r"a\");
    assert_eq!(elem(r"x='a\\\'b'").to_yaml(), r"a\'b");
    assert_eq!(elem(r#"x='say "hi"'"#).to_yaml(), r#"say "hi""#);
    assert_eq!(elem("x='1'").to_yaml(), "1");
    assert_eq!(elem("x=' padded '").to_yaml(), " padded ");
}

#[test]
fn interpolations() {
    assert_eq!(elem("x=${lr}"), Element::Interpolation("${lr}".into()));
    assert_eq!(elem("x=${oc.env:HOME,/tmp}"), Element::Interpolation("${oc.env:HOME,/tmp}".into()));
    assert_eq!(elem("x=${a.${b}}"), Element::Interpolation("${a.${b}}".into()));
    assert_eq!(elem("x=run_${seed}"), s("run_${seed}"));
    assert_eq!(elem("x=${lr}").to_yaml(), "${lr}");
    // Escaped as hydra-core 1.3's sweeper writes them; read back, the text is the same.
    assert_eq!(shown("name=${lr},plain"), [r"name=$\{lr\}", "name=plain"]);
    assert_eq!(shown("x=${oc.env:HOME,/x}"), [r"x=$\{oc.env\:HOME\,/x\}"]);
    assert_eq!(shown("x=[${lr}]"), [r"x=[$\{lr\}]"]);
    assert_eq!(elem(r"x=$\{lr\}").to_yaml(), "${lr}");
    // With a quote inside, escaping would make text no Hydra app can parse: kept as written,
    // which reads back the same.
    let quoted = "out=${oc.env:DATA,'/tmp'}";
    assert_eq!(shown(quoted), [quoted]);
    assert_eq!(elem(&shown(quoted)[0]), elem(quoted));
}

#[test]
fn quoted_arguments_of_functions_lose_their_quotes_as_in_hydra() {
    // What hydra-core 1.3.2 writes in each job's overrides.yaml.
    assert_eq!(shown("task=choice('a,b',c)"), [r"task=a\,b", "task=c"]);
    assert_eq!(
        shown("task=choice('a b','a=b','(x)','a:b')"),
        [r"task=a\ b", r"task=a\=b", r"task=\(x\)", r"task=a\:b"]
    );
    assert_eq!(shown("task=sort('b,c',a)"), ["task=a", r"task=b\,c"]);
    assert_eq!(shown("task=choice('')"), ["task="]);
    // A plain comma list keeps them, and so do a list's items.
    assert_eq!(shown("name='a,b',c"), ["name='a,b'", "name=c"]);
    assert_eq!(shown("x=choice(['a,b'])"), ["x=['a,b']"]);
    // The value keeps its type: a string that reads as a number stays quoted.
    assert_eq!(shown("x=choice('1',2)"), ["x='1'", "x=2"]);
}

#[test]
fn lists_and_dicts() {
    assert_eq!(elem("x=[]"), Element::List(vec![]));
    assert_eq!(elem("x={}"), Element::Dict(vec![]));
    assert_eq!(
        elem("x=[a,[1,2.5],{k:v}]"),
        Element::List(vec![
            s("a"),
            Element::List(vec![Element::Int(1), Element::Float(2.5)]),
            Element::Dict(vec![("k".into(), s("v"))]),
        ])
    );
    // Ranges stay strings inside lists, as in Hydra.
    assert_eq!(elem("x=[1..3]"), Element::List(vec![s("1..3")]));
    assert_eq!(elem("x={a:b:c}"), Element::Dict(vec![("a".into(), s("b:c"))]));
    assert_eq!(elem("x={'a b':1}"), Element::Dict(vec![("a b".into(), Element::Int(1))]));
    assert_eq!(shown("name=[a,b],[c,d]"), ["name=[a,b]", "name=[c,d]"]);
    assert_eq!(shown("name={a:1},{a:2}"), ["name={a:1}", "name={a:2}"]);
    let yaml = elem("x={a:1,b:[true,null]}").to_yaml();
    assert_eq!(yaml, serde_yaml::from_str::<serde_yaml::Value>("{a: 1, b: [true, null]}").unwrap());
}

// ---- sweeps (reference table) ----

#[test]
fn simple_choice_sweeps() {
    assert_eq!(shown("task=1,2,3"), ["task=1", "task=2", "task=3"]);
    assert_eq!(shown("task=1,2,3,2").len(), 4);
    assert_eq!(shown("name='a,b',c"), ["name='a,b'", "name=c"]);
    assert_eq!(shown(r#"name="x y",z\,w"#), [r#"name="x y""#, r"name=z\,w"]);
    assert_eq!(values(r#"name="x y",z\,w"#), [Element::Str { value: "x y".into(), quote: Some('"') }, s("z,w"),]);
    assert_eq!(shown("+extra=1,2"), ["+extra=1", "+extra=2"]);
    assert_eq!(shown("++lr=0.5,0.6"), ["++lr=0.5", "++lr=0.6"]);
    // As Hydra's sweeper writes a delete without value.
    assert_eq!(shown("~name"), ["~name=null"]);
    assert_eq!(shown("task=choice(1,2)"), ["task=1", "task=2"]);
}

#[test]
fn python_ranges() {
    assert_eq!(shown("task=range(1,6)"), ["task=1", "task=2", "task=3", "task=4", "task=5"]);
    assert_eq!(shown("task=range(3)"), ["task=0", "task=1", "task=2"]);
    // Without a stop the start is the stop, keywords or not (Hydra's range(start, stop=None, step=1)).
    assert_eq!(shown("task=range(5,step=2)"), ["task=0", "task=2", "task=4"]);
    assert_eq!(shown("task=range(start=2)"), ["task=0", "task=1"]);
    assert_eq!(shown("task=range(stop=2)"), ["task=0", "task=1"]);
    assert_eq!(shown("task=range(5,0,-2)"), ["task=5", "task=3", "task=1"]);
    assert_eq!(shown("task=range(0,1,0.25)"), ["task=0.0", "task=0.25", "task=0.5", "task=0.75"]);
    assert_eq!(
        shown("x=range(0,1,0.1)"),
        ["x=0.0", "x=0.1", "x=0.2", "x=0.3", "x=0.4", "x=0.5", "x=0.6", "x=0.7", "x=0.8", "x=0.9"]
    );
    // Hydra's artefact included the stop here; we do not.
    assert_eq!(shown("lr=range(0.5,0.8,0.1)"), ["lr=0.5", "lr=0.6", "lr=0.7"]);
    assert_eq!(shown("x=range(start=1,stop=3)"), ["x=1", "x=2"]);
    assert_eq!(shown("x=range(1,3,step=1)"), ["x=1", "x=2"]);
}

#[test]
fn inclusive_ranges() {
    assert_eq!(shown("task=1..5"), ["task=1", "task=2", "task=3", "task=4", "task=5"]);
    assert_eq!(shown("task=1..10..2"), ["task=1", "task=3", "task=5", "task=7", "task=9"]);
    assert_eq!(shown("task=5..1"), ["task=5", "task=4", "task=3", "task=2", "task=1"]);
    assert_eq!(shown("task=5..1..-2"), ["task=5", "task=3", "task=1"]);
    assert_eq!(shown("task=5..1..2"), ["task=5", "task=3", "task=1"]);
    assert_eq!(shown("task=-2..0"), ["task=-2", "task=-1", "task=0"]);
    assert_eq!(shown("task=3..3"), ["task=3"]);
    assert_eq!(shown("x=0..1..0.25"), ["x=0.0", "x=0.25", "x=0.5", "x=0.75", "x=1.0"]);
    assert_eq!(shown("x=0..0.3..0.1"), ["x=0.0", "x=0.1", "x=0.2", "x=0.3"]);
    assert_eq!(shown("x=0.5..2.5"), ["x=0.5", "x=1.5", "x=2.5"]);
    // Mixed with plain items, flattened in place.
    assert_eq!(shown("t=1..3,7"), ["t=1", "t=2", "t=3", "t=7"]);
    assert_eq!(shown("t=0,5..6,a,range(2)"), ["t=0", "t=5", "t=6", "t=a", "t=0", "t=1"]);
    assert_eq!(shown("t=choice(1..2,9)"), ["t=1", "t=2", "t=9"]);
    // Not range-shaped: plain strings.
    assert_eq!(elem("x=1...5"), s("1...5"));
    assert_eq!(elem("x=a..b"), s("a..b"));
    assert_eq!(elem("x=1..2..3..4"), s("1..2..3..4"));
    assert_eq!(elem("x=v1..5"), s("v1..5"));
}

#[test]
fn glob_is_parsed_into_patterns() {
    let o = parse("db=glob(*,exclude=[o*,s*])");
    assert_eq!(
        o.value,
        Some(OverrideValue::Sweep(Sweep::Glob { include: vec!["*".into()], exclude: vec!["o*".into(), "s*".into()] }))
    );
    let o = parse("db=glob([m*,p*])");
    assert!(matches!(
        o.value,
        Some(OverrideValue::Sweep(Sweep::Glob { ref include, ref exclude }))
            if include.len() == 2 && exclude.is_empty()
    ));
    assert!(parse("db=glob(*,sqlite)").is_sweep());
}

#[test]
fn sort_and_shuffle() {
    assert_eq!(shown("task=sort(3,1,2)"), ["task=1", "task=2", "task=3"]);
    assert_eq!(shown("task=sort(3,1,2,reverse=true)"), ["task=3", "task=2", "task=1"]);
    assert_eq!(shown("task=sort(range(1,4),reverse=true)"), ["task=3", "task=2", "task=1"]);
    assert_eq!(shown("task=sort(5..1)"), ["task=1", "task=2", "task=3", "task=4", "task=5"]);
    assert_eq!(shown("x=sort(b,a,c)"), ["x=a", "x=b", "x=c"]);
    assert_eq!(shown("x=sort(2.5,1,true)"), ["x=1", "x=True", "x=2.5"]);
    assert_eq!(elem("x=sort([3,1,2])"), elem("x=[1,2,3]"));
    assert_eq!(shown("x=sort(choice(2,1))"), ["x=1", "x=2"]);
    let mut got: Vec<String> = shown("task=shuffle(1,2,3,4,5)");
    got.sort();
    assert_eq!(got, ["task=1", "task=2", "task=3", "task=4", "task=5"]);
    let Element::List(mut items) = elem("x=shuffle([1,2,3])") else { panic!("expected a list") };
    sort_elements(&mut items, false).unwrap();
    assert_eq!(items, [Element::Int(1), Element::Int(2), Element::Int(3)]);
}

#[test]
fn seeded_shuffle_is_reproducible() {
    let ctx = SweepContext { seed: Some(7), ..SweepContext::default() };
    let run = || {
        SweepPlan::new(vec![parse("t=shuffle(range(100))")], &ctx)
            .unwrap()
            .iter()
            .map(|j| j.display().join(" "))
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run());
    assert_ne!(first, shown("t=range(100)"));
}

#[test]
fn casts() {
    assert_eq!(elem("x=int(3.7)"), Element::Int(3));
    assert_eq!(elem("x=int(-3.7)"), Element::Int(-3));
    assert_eq!(elem("x=int('42')"), Element::Int(42));
    // As Python's int(): leading zeros, `_` between digits, a sign, spaces around.
    assert_eq!(elem("x=int('01')"), Element::Int(1));
    assert_eq!(elem("x=int(' -1_000 ')"), Element::Int(-1000));
    for bad in ["x=int('1.5')", "x=int('0x1F')", "x=int('1__0')", "x=int('_1')", "x=int('')"] {
        assert!(parse_override(bad).is_err(), "{bad}");
    }
    assert_eq!(elem("x=float(3)"), Element::Float(3.0));
    assert_eq!(elem("x=float('1e-3')"), Element::Float(0.001));
    assert_eq!(elem("x=str(1)"), s("1"));
    assert_eq!(elem("x=str(0.5)"), s("0.5"));
    assert_eq!(elem("x=str(true)"), s("true"));
    assert_eq!(elem("x=bool(0)"), Element::Bool(false));
    assert_eq!(elem("x=bool('TRUE')"), Element::Bool(true));
    assert_eq!(elem("x=int([1.5,'2'])"), Element::List(vec![Element::Int(1), Element::Int(2)]));
    assert_eq!(elem("x=str({a:1})"), Element::Dict(vec![("a".into(), s("1"))]));
    // A string that looks like a number keeps its type through display by quoting.
    assert_eq!(shown("task=str(1),int(2),float(3)"), ["task='1'", "task=2", "task=3.0"]);
    assert_eq!(shown("x=float(range(1,3))"), ["x=1.0", "x=2.0"]);
    assert_eq!(shown("x=str(range(1,3))"), ["x='1'", "x='2'"]);
    assert_eq!(shown("x=int(choice(1.5,2.5))"), ["x=1", "x=2"]);
    assert_eq!(shown("x=int(sort(2.5,1.5))"), ["x=1", "x=2"]);
    assert_eq!(values("x=str(range(1,3))")[0].to_yaml(), "1");
    // Several values are a choice of them, each cast; `value=` is the keyword form.
    assert_eq!(shown("x=str(1,2)"), ["x='1'", "x='2'"]);
    assert_eq!(shown("x=bool(true,0)"), ["x=True", "x=False"]);
    assert_eq!(shown("x=float(1,2)"), ["x=1.0", "x=2.0"]);
    assert_eq!(elem("x=int(value=3.5)"), Element::Int(3));
    assert!(parse_override("x=int(1,value=2)").is_err(), "both forms at once");
}

#[test]
fn sort_and_shuffle_take_their_input_as_a_keyword_too() {
    assert_eq!(elem("x=sort(list=[3,1,2])"), Element::List(vec![Element::Int(1), Element::Int(2), Element::Int(3)]));
    assert_eq!(shown("x=sort(sweep=choice(3,1),reverse=true)"), ["x=3", "x=1"]);
    let mut v = values("x=shuffle(list=[1,2,3])");
    assert_eq!(v.len(), 1, "a list is one value");
    if let Some(Element::List(items)) = v.pop() {
        let mut items: Vec<String> = items.iter().map(|e| e.to_override_string()).collect();
        items.sort();
        assert_eq!(items, ["1", "2", "3"]);
    } else {
        panic!("shuffle(list=...) is a list");
    }
}

#[test]
fn tag_is_accepted_and_ignored() {
    assert_eq!(shown("x=tag(foo,bar,range(1,3))"), ["x=1", "x=2"]);
    assert_error("x=tag(foo,bar,1,2)", 14, "must be strings");
    assert_error("x=tag(foo)", 6, "must be a sweep");
}

// ---- display ----

#[test]
fn display_strings() {
    let cases = [
        ("x=a b", r"x=a\ b"),
        ("x='a b'", "x='a b'"),
        ("x=1e-5", "x=1e-05"),
        ("x=1E3", "x=1000.0"),
        ("x=0.0", "x=0.0"),
        ("x=TRUE", "x=True"),
        ("x=[true,False]", "x=[True,False]"),
        ("x=NULL", "x=null"),
        ("x=[a, b]", "x=[a,b]"),
        ("x={a: 1, b: x y}", r"x={a:1,b:x\ y}"),
        ("x=a:b", r"x=a\:b"),
        ("x=str(a\\ \\,)", r"x=a\ \,"),
        ("x=str('')", "x="),
        ("x=['']", "x=['']"),
        ("x=str('~home')", "x='~home'"),
        ("x=str('1..5')", "x='1..5'"),
    ];
    for (input, want) in cases {
        assert_eq!(shown(input), [want], "{input}");
    }
}

#[test]
fn override_error_renders_a_caret() {
    let e = error("task=1,,2");
    assert_eq!(e.to_string(), "invalid override `task=1,,2`: expected a value after `,`\n    task=1,,2\n           ^");
    // Columns count chars, not bytes.
    let e = error("ñame=é,,2");
    assert_eq!(e.column, 7);
    assert!(e.to_string().ends_with("\n           ^"));
}

// ---- errors ----

#[test]
fn error_paths_point_at_the_bad_char() {
    assert_error("task=1,,2", 7, "expected a value after `,`");
    assert_error("task=1,", 7, "expected a value after `,`");
    assert_error("task=,1", 5, "expected a value");
    assert_error("task", 4, "expected `=` after key `task`");
    assert_error("task 1", 5, "expected `=`");
    assert_error("+task", 5, "expected `=`");
    assert_error("=1", 0, "expected a key");
    assert_error("", 0, "expected a key");
    assert_error("a..b=1", 2, "expected a name before `.`");
    assert_error("a.=1", 2, "expected a name after");
    assert_error("a@b@c=1", 3, "at most one `@`");
    assert_error("ta#sk=1", 2, "expected `=`");
    assert_error("x='abc", 2, "unterminated quote");
    assert_error("x=\"abc'", 2, "unterminated quote");
    assert_error("x='a'b", 5, "expected `,` or the end");
    assert_error("x=a'b'", 3, "unexpected `'`");
    assert_error("x=range(1,2", 11, "expected `)` to close `range(`");
    assert_error("x=range(1,2 3)", 10, "needs numbers");
    assert_error("x=range(1 2)", 8, "needs numbers");
    assert_error("x=range(1,5,0)", 12, "step must not be 0");
    assert_error("x=range(0,1,0.0)", 12, "step must not be 0");
    assert_error("x=range()", 2, "needs a stop");
    assert_error("x=range(a,3)", 8, "needs numbers");
    assert_error("x=range(1,2,3,4)", 14, "at most 3 arguments");
    assert_error("x=range(stop=1,stop=2)", 15, "twice");
    assert_error("x=range(step=1,2)", 15, "positional argument after a keyword");
    assert_error("x=1..5..0", 8, "step must not be 0");
    assert_error("x=rnage(1,2)", 2, "unknown function `rnage`, did you mean `range`?");
    assert_error("x=chioce(1,2)", 2, "did you mean `choice`?");
    assert_error("x=frobnicate(1)", 2, "known functions: choice");
    assert_error("x=choice()", 2, "at least one value");
    assert_error("x=choice(choice(1,2))", 9, "nesting choices is not supported");
    assert_error("x=1,choice(1,2)", 4, "nesting choices is not supported");
    assert_error("x=1,glob(*)", 4, "cannot be nested inside another sweep");
    assert_error("x=[1,range(2)]", 5, "cannot be nested inside a list");
    assert_error("x={a:choice(1,2)}", 5, "cannot be nested inside a dict");
    assert_error(
        "x=interval(0,1)",
        2,
        "interval() is a continuous range for optimizer sweepers; the basic sweep cannot enumerate it",
    );
    assert_error("x=sort(1,a)", 2, "cannot compare `1` with `a`");
    assert_error("x=sort([1,[2]])", 7, "only order numbers or strings");
    assert_error("x=sort(1,reverse=maybe)", 9, "`reverse` must be true or false");
    assert_error("x=sort(1,up=true)", 9, "unknown keyword argument `up`");
    assert_error("x=int(abc)", 6, "cannot cast `abc` to int");
    assert_error("x=int(inf)", 6, "cannot cast `inf` to int");
    assert_error("x=bool(maybe)", 7, "cannot cast `maybe` to bool");
    assert_error("x=int()", 2, "int() needs a value");
    assert_error("x=int(1,choice(2,3))", 8, "takes plain values, not sweeps");
    assert_error("x=int(null)", 6, "cannot cast `null`");
    assert_error("x=glob()", 2, "needs a pattern");
    assert_error("x=glob(null)", 7, "patterns must be strings");
    assert_error("x=[1,2", 6, "expected `]` to close `[`");
    assert_error("x=[1,]", 5, "unexpected `]`");
    assert_error("x=[1 2 3)", 8, "expected `,` or `]`");
    assert_error("x={a:1", 6, "expected `}` to close `{`");
    assert_error("x={a}", 4, "expected `:` after the dict key");
    assert_error("x={:1}", 3, "expected a dict key");
    assert_error("x={a:}", 5, "a value after `:`");
    assert_error("x=a=b", 3, "unexpected `=`");
    assert_error("task=1,2 db=mysql", 11, "its own argument");
    assert_error("x=a(b", 2, "unknown function `a`");
    assert_error("x=rnage(1,2", 2, "did you mean `range`?");
    assert_error("x=a b(1)", 5, "unexpected `(`");
    assert_error("x=(1)", 2, "unexpected `(`");
    assert_error("x=a[1]", 3, "unexpected `[`");
    assert_error("x=a#b", 3, "unexpected character `#`");
    assert_error("x=1)", 3, "unexpected `)`");
    assert_error("x=${a", 2, "unterminated interpolation");
    assert_error("x=99999999999999999999", 2, "does not fit in 64 bits");
}

#[test]
fn nesting_is_capped() {
    let deep = format!("x={}{}", "[".repeat(200), "]".repeat(200));
    assert_error(&deep, 2 + MAX_DEPTH, "nesting is too deep");
    let deep_calls = format!("x={}1{}", "int(".repeat(100), ")".repeat(100));
    assert!(error(&deep_calls).message.contains("too deep"));
    let ok = format!("x={}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
    assert!(parse_override(&ok).is_ok());
}

#[test]
fn the_caret_stands_under_the_character_after_tabs_and_wide_characters() {
    let shown = |input: &str| parse_override(input).unwrap_err().to_string();
    assert!(shown("x=\t[1").ends_with("\n    x=\t[1\n      \t  ^"), "{:?}", shown("x=\t[1"));
    assert!(shown("名=[1").ends_with("\n    名=[1\n         ^"), "{:?}", shown("名=[1"));
}
