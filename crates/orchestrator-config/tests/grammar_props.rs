//! Property tests of the override grammar and the lazy sweep plan.

use orchestrator_config::compose::apply_overrides;
use orchestrator_config::grammar::{Element, OverrideValue, parse_override};
use orchestrator_config::sweep::{SweepContext, SweepPlan};
use proptest::prelude::*;

/// One swept key: its values written as a list (`a,b,c`) or as a range (`0..n-1`).
fn swept_key() -> impl Strategy<Value = (usize, bool)> {
    (1usize..6, any::<bool>())
}

fn override_for(index: usize, count: usize, as_range: bool) -> String {
    if as_range {
        format!("k{index}=0..{}", count - 1)
    } else {
        let values: Vec<String> = (0..count).map(|v| format!("v{v}")).collect();
        format!("k{index}={}", values.join(","))
    }
}

fn plan_of(args: &[String]) -> SweepPlan {
    let overrides = args.iter().map(|a| parse_override(a).unwrap_or_else(|e| panic!("{e}"))).collect();
    SweepPlan::new(overrides, &SweepContext::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Elements whose text form is meant to round-trip (no interpolations, no NaN).
fn simple_element() -> impl Strategy<Value = Element> {
    let quote = prop_oneof![Just(None), Just(Some('\'')), Just(Some('"'))];
    let text = prop_oneof![
        any::<String>(),
        "[a-z0-9 ,:=\\\\'\"(){}\\[\\]$.@/*_-]{0,12}",
        "(true|false|null|nan|inf|1_0|1\\.\\.5|-0|\\.5|1e3| )",
    ];
    let leaf = prop_oneof![
        Just(Element::Null),
        any::<bool>().prop_map(Element::Bool),
        any::<i64>().prop_map(Element::Int),
        any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()).prop_map(Element::Float),
        (text, quote).prop_map(|(value, quote)| Element::Str { value, quote }),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Element::List),
            prop::collection::vec(("[a-z :,']{0,5}", inner), 0..4).prop_map(Element::Dict),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// len() is the product of the sweep lengths; iter() yields exactly len() jobs, and
    /// job(n) is the n-th of them.
    #[test]
    fn plan_length_and_order(keys in prop::collection::vec(swept_key(), 1..5), pick in any::<u64>()) {
        let args: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, (count, as_range))| override_for(i, *count, *as_range))
            .collect();
        let plan = plan_of(&args);
        let product: u64 = keys.iter().map(|(c, _)| *c as u64).product();
        prop_assert_eq!(plan.len(), product);
        let jobs: Vec<_> = plan.iter().collect();
        prop_assert_eq!(jobs.len() as u64, product);
        let n = pick % product;
        prop_assert_eq!(plan.job(n), jobs.get(n as usize).cloned());
        prop_assert!(plan.job(product).is_none());
        // Job numbers are 0..N-1 and the last key varies fastest.
        for (i, job) in jobs.iter().enumerate() {
            prop_assert_eq!(job.num, i as u64);
            prop_assert_eq!(job.items.len(), keys.len());
        }
    }

    /// Large range products are counted without being built, and decode consistently.
    #[test]
    fn large_plans_are_lazy(counts in prop::collection::vec(1u64..2_000_000, 1..5), pick in any::<u64>()) {
        let args: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(i, c)| format!("k{i}=1..{c}"))
            .collect();
        let overrides = args.iter().map(|a| parse_override(a).unwrap()).collect();
        let exact: u128 = counts.iter().map(|c| u128::from(*c)).product();
        match SweepPlan::new(overrides, &SweepContext::default()) {
            Ok(plan) => {
                prop_assert_eq!(u128::from(plan.len()), exact);
                let n = pick % plan.len();
                let job = plan.job(n).unwrap();
                // Mixed-radix decode by hand, leftmost slowest.
                let mut rest = n;
                for (item, count) in job.items.iter().zip(&counts).rev() {
                    let want = (rest % count) as i64 + 1;
                    rest /= count;
                    prop_assert_eq!(item.value.clone(), Some(Element::Int(want)));
                }
            }
            Err(_) => prop_assert!(exact > u128::from(u64::MAX)),
        }
    }

    /// Arbitrary input never panics, and neither does using what it parses to.
    #[test]
    fn parser_never_panics(input in any::<String>()) {
        exercise(&input);
    }

    /// Same, with strings dense in the grammar's special characters.
    #[test]
    fn parser_never_panics_on_grammar_soup(
        prefix in "(~|\\+|\\+\\+)?[a-z.@/]{0,4}=?",
        body in "[a-z0-9=,+~()\\[\\]{}'\"\\\\$.: \t@/*%|?_-]{0,40}",
        call in "(range|choice|sort|shuffle|int|float|str|bool|tag|interval)?\\(?",
    ) {
        exercise(&format!("{prefix}{call}{body}"));
        exercise(&format!("k={call}{body}"));
    }

    /// Showing a value and parsing it back gives the same value.
    #[test]
    fn display_round_trips(element in simple_element()) {
        let shown = element.to_override_string();
        let input = format!("key={shown}");
        let parsed = parse_override(&input).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Some(OverrideValue::Element(back)) = parsed.value else {
            return Err(TestCaseError::fail(format!("`{input}` is not a single element")));
        };
        prop_assert_eq!(back.to_yaml(), element.to_yaml(), "{}", input);
        prop_assert_eq!(back.to_override_string(), shown);
        if let Element::Str { quote: Some(_), .. } = element {
            prop_assert_eq!(back, element);
        }
    }
}

fn exercise(input: &str) {
    let Ok(o) = parse_override(input) else {
        return;
    };
    // glob() could walk the real filesystem from an absolute pattern: not here.
    if input.contains("glob") {
        return;
    }
    let dir = std::env::temp_dir().join("orchestrator-config-props-empty");
    let ctx = SweepContext { config_dir: None, cwd: dir, seed: Some(1) };
    if let Ok(plan) = SweepPlan::new(vec![o], &ctx) {
        if let Some(job) = plan.job(0) {
            let _ = job.display();
            let mut config = serde_yaml::Value::Null;
            let _ = apply_overrides(&mut config, &job.items);
        }
        let _ = plan.job(plan.len().saturating_sub(1));
    }
}
