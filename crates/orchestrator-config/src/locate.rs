//! Find the line and column of a dotted key in block-style YAML text.
//!
//! The YAML parser's `Value` carries no positions, so error messages about a key would
//! otherwise only name its path. This walks the text with an indentation stack, which is
//! exact for the block mappings config files are written in and returns `None` otherwise.

/// 1-based (line, column) of the key at `path`, and the text of that line.
pub(crate) fn locate_key(text: &str, path: &[&str]) -> Option<(usize, usize, String)> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        let Some(key) = mapping_key(trimmed) else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        if stack.len() == path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p) {
            let column = raw[..indent].chars().count() + 1;
            return Some((idx + 1, column, raw.to_string()));
        }
    }
    None
}

fn mapping_key(line: &str) -> Option<&str> {
    let colon = line.find(':')?;
    let after = &line[colon + 1..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    let key = line[..colon].trim();
    let key = key.trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.starts_with('-')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys() {
        let text = "hydra:\n  launcher:\n    params:\n      joblib:\n        n_jobs: -1\n        n_job: 2\n";
        assert_eq!(
            locate_key(text, &["hydra", "launcher", "params", "joblib", "n_job"]).map(|l| (l.0, l.1)),
            Some((6, 9))
        );
        assert_eq!(locate_key(text, &["hydra", "launcher"]).map(|l| (l.0, l.1)), Some((2, 3)));
        assert!(locate_key(text, &["hydra", "nope"]).is_none());
    }

    #[test]
    fn ignores_siblings_at_same_depth() {
        let text = "a:\n  x: 1\nb:\n  x: 2\n";
        assert_eq!(locate_key(text, &["b", "x"]).map(|l| l.0), Some(4));
    }
}
