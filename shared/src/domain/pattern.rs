//! `{placeholder}` patterns used by prompts and key patterns, with `{{`/`}}` as literal braces.

use std::fmt::Write as _;

/// A parsed pattern: literal text and named placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

/// Why a pattern could not be parsed; positions are 0-based character offsets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("unclosed '{{' at position {0} (write '{{{{' for a literal brace)")]
    Unclosed(usize),
    #[error("unmatched '}}' at position {0} (write '}}}}' for a literal brace)")]
    Unmatched(usize),
    #[error("placeholder {{{name}}} at position {pos} is not a name: use letters, digits and '_'")]
    BadName { name: String, pos: usize },
}

impl Pattern {
    /// Parses `text`; every placeholder must be a non-empty `[A-Za-z0-9_]` name.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().enumerate().peekable();
        while let Some((pos, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(PatternError::Unmatched(pos)),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, '{')) | None => return Err(PatternError::Unclosed(pos)),
                            Some((_, n)) => name.push(n),
                        }
                    }
                    if name.is_empty() || !name.chars().all(|n| n.is_ascii_alphanumeric() || n == '_') {
                        return Err(PatternError::BadName { name, pos });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(name));
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// The placeholder names, in order of first appearance, without repeats.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Placeholder(name) = part
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// Fills the pattern; `value` returns the text for a placeholder name or an error.
    pub fn render<E>(&self, mut value: impl FnMut(&str) -> Result<String, E>) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(name) => {
                    let _ = write!(out, "{}", value(name)?);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(pattern: &str) -> String {
        Pattern::parse(pattern)
            .unwrap()
            .render(|name| Ok::<_, ()>(name.to_uppercase()))
            .unwrap()
    }

    #[test]
    fn placeholders_are_filled_and_double_braces_are_literal() {
        assert_eq!(fill("photo of {name}, {color}"), "photo of NAME, COLOR");
        assert_eq!(fill("json {{\"a\": {name}}}"), "json {\"a\": NAME}");
        assert_eq!(fill("no placeholders"), "no placeholders");
    }

    #[test]
    fn placeholders_are_listed_once_in_order() {
        let p = Pattern::parse("{b} {a} {b}").unwrap();
        assert_eq!(p.placeholders(), vec!["b", "a"]);
    }

    #[test]
    fn malformed_patterns_name_the_position() {
        assert_eq!(Pattern::parse("a {name"), Err(PatternError::Unclosed(2)));
        assert_eq!(Pattern::parse("a } b"), Err(PatternError::Unmatched(2)));
        assert!(matches!(Pattern::parse("{}"), Err(PatternError::BadName { .. })));
        assert!(matches!(Pattern::parse("{a b}"), Err(PatternError::BadName { .. })));
        assert_eq!(Pattern::parse("{a{b}"), Err(PatternError::Unclosed(0)));
    }
}
