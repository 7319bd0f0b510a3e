//! One error type for everything that is wrong with the user's config, carrying where it is.

use std::fmt;
use std::path::PathBuf;

/// Where a bad value came from, so the message can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A position in a config file (1-based line and column).
    File {
        /// The config file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
    },
    /// A command-line override, as written.
    Override(String),
    /// Built-in defaults or the library caller.
    Unknown,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                    if let Some(column) = column {
                        write!(f, ":{column}")?;
                    }
                }
                Ok(())
            }
            Origin::Override(text) => write!(f, "command-line override `{text}`"),
            Origin::Unknown => f.write_str("config"),
        }
    }
}

/// What kind of problem a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid YAML.
    Syntax,
    /// A key that the launcher does not know.
    UnknownKey,
    /// A key with a value of the wrong type or out of range.
    InvalidValue,
    /// An override that cannot be applied.
    Override,
}

/// A config problem: what was wrong, where, and what would be right.
///
/// Boxed so that `Result<_, ConfigError>` stays small on the happy path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(Box<Details>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    kind: ConfigErrorKind,
    message: String,
    origin: Origin,
    help: Option<String>,
    snippet: Option<String>,
}

impl ConfigError {
    pub(crate) fn new(kind: ConfigErrorKind, message: impl Into<String>, origin: Origin) -> Self {
        ConfigError(Box::new(Details { kind, message: message.into(), origin, help: None, snippet: None }))
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }

    /// With the line of `text` its origin points at as the snippet (if it points at one).
    pub(crate) fn with_snippet_from(mut self, text: &str) -> Self {
        if let Origin::File { line: Some(l), .. } = self.origin() {
            self.0.snippet = l.checked_sub(1).and_then(|i| text.lines().nth(i)).map(str::to_string);
        }
        self
    }

    /// The kind of problem.
    pub fn kind(&self) -> ConfigErrorKind {
        self.0.kind
    }

    /// One line: what is wrong.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Where it is.
    pub fn origin(&self) -> &Origin {
        &self.0.origin
    }

    /// What would be right (allowed values, a suggestion).
    pub fn help(&self) -> Option<&str> {
        self.0.help.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        write!(f, "{}\n  --> {}", d.message, d.origin)?;
        if let (Some(snippet), Origin::File { line: Some(line), column, .. }) = (&d.snippet, &d.origin) {
            let width = line.to_string().len();
            write!(f, "\n {:width$} |\n {line} | {snippet}", "")?;
            if let Some(column) = column {
                let pad = " ".repeat(column.saturating_sub(1));
                write!(f, "\n {:width$} | {pad}^", "")?;
            }
        }
        if let Some(help) = &d.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `text` with its control characters (ESC, NUL, ... but for line breaks and tabs) shown as
/// escapes (`\u{1b}`), so that a message never carries terminal escape sequences from its
/// input to the screen.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
