//! Object keys built from row values: safe to use as S3 keys and as relative file paths.

use std::fmt;

/// Longest key imagepipe writes, in bytes (S3 allows 1,024; the rest is left for prefixes).
pub const MAX_KEY_LEN: usize = 200;

/// Why a value cannot become part of an object key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; keys are limited to {MAX_KEY_LEN} bytes")]
    TooLong(usize),
    #[error("{0:?} is not a safe key part: use letters, digits, '.', '_' or '-' (no '/', spaces or '..')")]
    Unsafe(String),
}

/// A validated object key: ASCII letters, digits, `.`, `_`, `-` and `/` between non-empty segments,
/// no `.`/`..` segment, no leading `/`, at most [`MAX_KEY_LEN`] bytes. It can never escape a prefix
/// or output directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Parses a whole key (segments separated by `/`).
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(raw.len()));
        }
        for segment in raw.split('/') {
            check_part(segment).map_err(|_| KeyError::Unsafe(truncate(raw)))?;
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks one value substituted into a key pattern: it may not add path segments.
pub fn check_part(value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty);
    }
    if value.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(value.len()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value == "." || value == ".." || !value.chars().all(allowed) {
        return Err(KeyError::Unsafe(truncate(value)));
    }
    Ok(())
}

fn truncate(value: &str) -> String {
    const SHOWN: usize = 60;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ObjectKey> for String {
    fn from(key: ObjectKey) -> Self {
        key.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_skus_are_accepted() {
        assert_eq!(ObjectKey::parse("SKU-001_a.v2").unwrap().as_str(), "SKU-001_a.v2");
        assert_eq!(ObjectKey::parse("hero/SKU-001").unwrap().as_str(), "hero/SKU-001");
    }

    #[test]
    fn traversal_and_separators_are_rejected() {
        for bad in ["../x", "..", "a/../b", "/abs", "a//b", "a/", "a\\b", "a b", "é"] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad} should be rejected");
        }
        for bad in ["a/b", "../x", ".", ""] {
            assert!(check_part(bad).is_err(), "{bad} should be rejected as a part");
        }
    }

    #[test]
    fn empty_and_long_keys_name_the_problem() {
        assert_eq!(check_part(""), Err(KeyError::Empty));
        assert_eq!(check_part(&"a".repeat(2048)), Err(KeyError::TooLong(2048)));
        let msg = check_part(&format!("{}/", "b".repeat(100))).unwrap_err().to_string();
        assert!(msg.contains('…') && msg.len() < 200, "{msg}");
    }
}
