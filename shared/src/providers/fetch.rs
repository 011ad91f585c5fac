//! Reference images for image-to-image: downloaded from public addresses only, each and all of a
//! row's within a byte budget, checked to be images. Messages show URLs without query or userinfo.

use std::time::Duration;

use bytes::Bytes;

use super::ProviderError;
use crate::adapters::net::{FetchClient, FetchError, read_limited};
use crate::domain::redact::display_url;

/// Largest reference image, in bytes (providers take at most ~20 MB inline per request anyway).
pub const MAX_REFERENCE_BYTES: usize = 20 * 1024 * 1024;
/// References one row may name (Seedream takes 10; Gemini and OpenAI edits a few more).
pub const MAX_REFERENCES_PER_ROW: usize = 10;
/// Reference bytes of one row: all of them are held in memory at once to build one request.
pub const MAX_ROW_REFERENCE_BYTES: usize = 40 * 1024 * 1024;

/// A downloaded reference: its bytes and MIME type.
pub type Reference = (Bytes, String);

/// Downloads every reference of a request, within [`MAX_REFERENCES_PER_ROW`] and
/// [`MAX_ROW_REFERENCE_BYTES`].
pub async fn fetch_references(
    fetch: &FetchClient,
    urls: &[String],
    timeout: Duration,
) -> Result<Vec<Reference>, ProviderError> {
    if urls.len() > MAX_REFERENCES_PER_ROW {
        return Err(ProviderError::Rejected {
            message: format!(
                "{} reference images; at most {MAX_REFERENCES_PER_ROW} per row",
                urls.len()
            ),
        });
    }
    let mut left = MAX_ROW_REFERENCE_BYTES;
    let mut references = Vec::with_capacity(urls.len());
    for url in urls {
        let reference = fetch_reference(fetch, url, timeout, left.min(MAX_REFERENCE_BYTES)).await?;
        left -= reference.0.len();
        references.push(reference);
    }
    Ok(references)
}

/// Downloads one http(s) reference image of at most `limit` bytes.
async fn fetch_reference(
    fetch: &FetchClient,
    url: &str,
    timeout: Duration,
    limit: usize,
) -> Result<Reference, ProviderError> {
    let shown = display_url(url);
    let failed = |e: FetchError| match e {
        FetchError::Refused => ProviderError::Rejected { message: e.to_string() },
        FetchError::TooLarge { .. } if limit < MAX_REFERENCE_BYTES => ProviderError::Rejected {
            message: format!("reference {shown}: the row's references are over {MAX_ROW_REFERENCE_BYTES} bytes"),
        },
        FetchError::TooLarge { limit } => ProviderError::Rejected {
            message: format!("reference {shown} is over {limit} bytes"),
        },
        FetchError::Transport { .. } => ProviderError::Unavailable {
            message: format!("reference {shown} unreachable: {e}"),
        },
    };
    let response = fetch.get(url, timeout).await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        let message = format!("reference {shown} answered HTTP {}", status.as_u16());
        return Err(if status.is_server_error() {
            ProviderError::Unavailable { message }
        } else {
            ProviderError::Rejected { message }
        });
    }
    let bytes = read_limited(response, limit).await.map_err(failed)?;
    let info = crate::domain::image_format::inspect(&bytes).map_err(|e| ProviderError::Rejected {
        message: format!("reference {shown}: {e}"),
    })?;
    Ok((bytes, info.format.content_type().to_owned()))
}
