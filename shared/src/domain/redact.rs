//! What may be shown of data and remote answers: URLs without userinfo or query (so no presigned
//! signature or token), known secret values replaced, control characters escaped for terminals.

use crate::drivers::config::{secret, secret_variables};

/// What replaces a secret in any output.
pub const REDACTED: &str = "<redacted>";

/// Secrets shorter than this are not searched for: they would match ordinary words.
const MIN_SECRET_LEN: usize = 8;

/// Query parameters of AWS presigned URLs that are credentials.
const PRESIGNED_PARAMETERS: [&str; 3] = ["x-amz-credential=", "x-amz-security-token=", "x-amz-signature="];

/// A credential (API key, token): `Debug` shows `<redacted>`; the value is read with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `scheme://host[:port]/path` of a URL: userinfo, query and fragment left out.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let host = parsed.host_str().unwrap_or_default();
            format!("{}://{host}{port}{}", parsed.scheme(), parsed.path())
        }
        Err(_) => {
            let end = url.find(['?', '#']).unwrap_or(url.len());
            let bare = &url[..end];
            match (bare.find("://"), bare.rfind('@')) {
                (Some(scheme_end), Some(at)) if at > scheme_end => {
                    format!("{}{}", &bare[..scheme_end + 3], &bare[at + 1..])
                }
                _ => bare.to_owned(),
            }
        }
    }
}

/// `text` with every known secret (the API keys, CMS token and Slack webhook URL of the
/// environment, plus `extra`) and every presigned-URL credential replaced by [`REDACTED`].
pub fn redact(text: &str, extra: &[&str]) -> String {
    let env_secrets: Vec<String> = secret_variables().iter().filter_map(|name| secret(name)).collect();
    let mut out = text.to_owned();
    for value in extra.iter().copied().chain(env_secrets.iter().map(String::as_str)) {
        let value = value.trim();
        if value.len() >= MIN_SECRET_LEN && out.contains(value) {
            out = out.replace(value, REDACTED);
        }
    }
    redact_presigned(&out)
}

/// Replaces the values of presigned-URL credential parameters.
fn redact_presigned(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some((start, name)) = PRESIGNED_PARAMETERS
        .iter()
        .filter_map(|p| lower[at..].find(p).map(|i| (at + i, p.len())))
        .min()
    {
        let value_start = start + name;
        let value_end = text[value_start..]
            .find(|c: char| matches!(c, '&' | '"' | '\'' | '<' | '>') || c.is_whitespace())
            .map_or(text.len(), |i| value_start + i);
        out.push_str(&text[at..value_start]);
        out.push_str(REDACTED);
        at = value_end;
    }
    out.push_str(&text[at..]);
    out
}

/// `text` safe to print on a terminal: control characters (ANSI escapes included) shown as `\u{…}`.
pub fn escape_control(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_userinfo_query_or_fragment() {
        assert_eq!(
            display_url("https://user:pass@cdn.example.com:8443/a/b.png?token=s3cr3t#x"),
            "https://cdn.example.com:8443/a/b.png"
        );
        assert_eq!(display_url("s3://bucket/refs/a.png"), "s3://bucket/refs/a.png");
        assert_eq!(display_url("http://u:p@[bad/x?y"), "http://[bad/x");
    }

    #[test]
    fn secrets_and_presigned_credentials_are_replaced() {
        let text = "bad token Bearer tok-123456789 at https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA1%2F2&\
                    X-Amz-Security-Token=FQo\"x\" X-Amz-Signature=abc";
        let shown = redact(text, &["tok-123456789", "short"]);
        assert_eq!(
            shown,
            "bad token Bearer <redacted> at https://b.s3.amazonaws.com/k?X-Amz-Credential=<redacted>&\
             X-Amz-Security-Token=<redacted>\"x\" X-Amz-Signature=<redacted>"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("red\x1b[2Jmug\r"), "red\\u{1b}[2Jmug\\u{d}");
    }
}
