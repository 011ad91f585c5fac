//! What both batch APIs share: reading a results file line by line, and checking the ids the
//! provider hands back before they go into a URL.

use std::time::Duration;

use super::http::ApiEndpoint;
use super::http::{MAX_ERROR_BODY_BYTES, MAX_RESPONSE_BYTES, json_error_message, status_error, transport_error};
use super::{HttpProvider, ProviderError};
use crate::adapters::net::read_prefix;
use crate::domain::redact::redact;

/// Requests a batch holds at most (a chunk of a run). Each result line carries one image as base64
/// (1–3 MiB at 1–2K), so a finished batch of 500 is up to 1.5 GiB of results: read line by line
/// that is a few minutes of one function invocation, and a few images in memory at any time. The
/// providers allow far more (OpenAI 50,000 requests a file), but a batch is also the unit that is
/// retried and reported, and 500 keeps a 1,000,000-row run to 2,000 batches.
pub const BATCH_REQUESTS: usize = 500;

/// How long one control call (upload, create, get, list) may take, unless set otherwise.
const CALL_TIME: Duration = Duration::from_secs(120);

/// A batch API client: the endpoint, the provider's synchronous client (which builds each request
/// line and reads each result as it does its own calls), and a limit on each control call.
#[derive(Debug, Clone)]
pub struct BatchClient<P> {
    pub(super) api: ApiEndpoint,
    pub(super) sync: P,
    pub(super) call_time: Duration,
}

impl<P: HttpProvider> HttpProvider for BatchClient<P> {
    fn from_endpoint(api: ApiEndpoint) -> Self {
        let sync = P::from_endpoint(api.clone());
        Self {
            api,
            sync,
            call_time: CALL_TIME,
        }
    }
}

impl<P> BatchClient<P> {
    /// With another limit on each control call (upload, create, get, list).
    pub fn with_call_time(mut self, call_time: Duration) -> Self {
        self.call_time = call_time;
        self
    }
}

/// Batches listed a page, and pages looked through to find one by name (newest first: a lookup
/// follows a creation by seconds).
const LIST_PAGE: usize = 100;
const LIST_PAGES: usize = 20;

/// How an API lists its batches: the path and its page-size and cursor parameters, where a page's
/// batches are, where each names itself and its id, and the next page's cursor.
pub struct Listing<'a> {
    pub provider: &'a str,
    pub path: &'a str,
    pub size_param: &'a str,
    pub cursor_param: &'a str,
    pub items: &'a str,
    pub name_at: &'a str,
    pub id_field: &'a str,
    pub id_prefix: &'a str,
    pub next: fn(&serde_json::Value) -> Option<String>,
}

impl<P> BatchClient<P> {
    /// The id of the batch called `name`, looked for page by page as `listing` says; `auth` adds the
    /// API's key to a request.
    pub(super) async fn find_listed(
        &self,
        listing: &Listing<'_>,
        name: &str,
        auth: fn(reqwest::RequestBuilder, &str) -> reqwest::RequestBuilder,
    ) -> Result<Option<String>, ProviderError> {
        let key = self.api.api_key();
        let mut cursor: Option<String> = None;
        for _ in 0..LIST_PAGES {
            let mut query = vec![(listing.size_param, LIST_PAGE.to_string())];
            query.extend(cursor.take().map(|c| (listing.cursor_param, c)));
            let request = self.api.client.get(self.api.url(listing.path)).query(&query);
            let sent = auth(request, key).timeout(self.call_time).send().await;
            let page = read_json(listing.provider, sent, key).await?;
            if let Some(id) = named_in(&page, listing.items, listing.name_at, listing.id_field, name) {
                return Ok(Some(checked_id(listing.provider, id, listing.id_prefix)?.to_owned()));
            }
            cursor = (listing.next)(&page);
            if cursor.is_none() {
                break;
            }
        }
        Ok(None)
    }
}

/// A control call's JSON answer, or a decision when there is none.
pub async fn read_json(
    provider: &str,
    response: Result<reqwest::Response, reqwest::Error>,
    key: &str,
) -> Result<serde_json::Value, ProviderError> {
    let body = super::http::read_response(provider, response, key).await?;
    serde_json::from_str(&body).map_err(|_| ProviderError::Unavailable {
        message: format!(
            "{provider} returned a malformed response: {}",
            super::http::snippet(&body)
        ),
    })
}

/// The response of a results download, or a decision when the provider refused it.
pub async fn opened(
    provider: &str,
    response: Result<reqwest::Response, reqwest::Error>,
    key: &str,
) -> Result<reqwest::Response, ProviderError> {
    let response = response.map_err(|e| transport_error(provider, e))?;
    let (status, headers) = (response.status(), response.headers().clone());
    if status.is_success() {
        return Ok(response);
    }
    let text = read_prefix(response, MAX_ERROR_BODY_BYTES).await;
    let message = redact(&json_error_message(&text), &[key]);
    Err(status_error(provider, status.as_u16(), &headers, &message))
}

/// The lines of a response body, read as they arrive. A line longer than [`MAX_RESPONSE_BYTES`] is
/// skipped (its row gets no result and is handled as one the batch did not answer).
pub struct Lines {
    response: reqwest::Response,
    provider: &'static str,
    buffer: Vec<u8>,
    /// The start of `buffer` known to hold no line end (each byte is looked at once).
    scanned: usize,
    skipping: bool,
    ended: bool,
}

impl Lines {
    pub fn new(provider: &'static str, response: reqwest::Response) -> Self {
        Self {
            response,
            provider,
            buffer: Vec::new(),
            scanned: 0,
            skipping: false,
            ended: false,
        }
    }

    /// The next non-empty line, without its end.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ProviderError> {
        loop {
            if let Some(found) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + found;
                let rest = self.buffer.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buffer, rest);
                line.pop();
                self.scanned = 0;
                if std::mem::take(&mut self.skipping) || line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.ended {
                self.scanned = 0;
                let rest = std::mem::take(&mut self.buffer);
                let blank = rest.iter().all(u8::is_ascii_whitespace) || std::mem::take(&mut self.skipping);
                return Ok((!blank).then_some(rest));
            }
            self.scanned = self.buffer.len();
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => self.ended = true,
                Err(e) => {
                    return Err(ProviderError::Unavailable {
                        message: format!("{} results interrupted: {}", self.provider, e.without_url()),
                    });
                }
            }
            if self.scanned > MAX_RESPONSE_BYTES {
                tracing::warn!(provider = self.provider, "a result line is too long; skipped");
                // Its bytes so far go; what follows up to its end is dropped as it arrives.
                self.buffer.drain(..self.scanned);
                self.scanned = 0;
                self.skipping = true;
            }
        }
    }
}

/// An id the provider returned, checked to be one path segment of letters, digits, `-` and `_`
/// (after `prefix`, e.g. `batches/`) before it is put into a URL.
pub fn checked_id<'a>(provider: &str, id: &'a str, prefix: &str) -> Result<&'a str, ProviderError> {
    let rest = id.strip_prefix(prefix).unwrap_or("");
    let fine = !rest.is_empty()
        && rest.len() <= 200
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(id)
    } else {
        Err(ProviderError::Unavailable {
            message: format!(
                "{provider} returned an id that is not one: {:?}",
                id.chars().take(80).collect::<String>()
            ),
        })
    }
}

/// The id of the batch called `name` among a list page's `items`, each naming itself at
/// `name_at` (a JSON pointer) and identified by `id_field`.
fn named_in<'a>(
    page: &'a serde_json::Value,
    items: &str,
    name_at: &str,
    id_field: &str,
    name: &str,
) -> Option<&'a str> {
    let items = page
        .get(items)
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten();
    items
        .filter(|item| item.pointer(name_at).and_then(serde_json::Value::as_str) == Some(name))
        .find_map(|item| item.get(id_field)?.as_str())
}

/// The row a result line answers (its `key` or `custom_id`, which is the row number).
pub fn row_of(provider: &str, key: Option<&str>) -> Result<u64, String> {
    key.and_then(|k| k.parse().ok())
        .ok_or_else(|| format!("{provider} result line without a row key: {key:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_safe_path_segment() {
        assert!(checked_id("gemini", "batches/abc-12_3", "batches/").is_ok());
        for bad in ["batches/../x", "batches/", "files/abc", "batches/a?b", "batches/a/b"] {
            assert!(checked_id("gemini", bad, "batches/").is_err(), "{bad}");
        }
        assert_eq!(row_of("openai", Some("17")), Ok(17));
        assert!(row_of("openai", Some("x")).is_err());
    }
}
