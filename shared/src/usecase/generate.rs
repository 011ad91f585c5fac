//! Generate: one job → one stored image, paying the provider at most once per image.

use std::time::Duration;

use bytes::Bytes;

use super::Error;
use crate::domain::catalog::ModelInfo;
use crate::domain::image_format::{self, ImageFormat};
use crate::domain::job::Job;
use crate::domain::report::ImageEntry;
use crate::ports::store::{IMAGE_CACHE_CONTROL, NewObject, ObjectStore, PutOutcome, StoreError, image_key};
use crate::providers::http::MAX_IMAGE_BYTES;
use crate::providers::{
    ImageProvider, ImageRequest, ProviderImage, ReferenceSigner, check_reference_buckets, reference_buckets_from_env,
    sign_references,
};

/// A job's image is in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Object key of the image (`images/<key>.<ext>`).
    pub object_key: String,
    pub content_type: String,
    pub bytes: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The image already existed; the provider was not called.
    pub reused: bool,
    /// What this call cost (0 when reused).
    pub cost_usd: f64,
    /// Credits the provider reported (AnyCap), next to the catalog price.
    pub credits_used: Option<f64>,
    /// A broken object was at the image's key (empty, an HTML page, cut short) and was replaced.
    pub replaced_broken: bool,
}

impl Generated {
    /// The report entry of `job`'s image, found at `path` (a file path or an `s3://` URI).
    pub fn into_entry(self, job: &Job, path: String) -> ImageEntry {
        ImageEntry {
            row: job.row,
            key: job.key.to_string(),
            cms_id: job.cms_id.clone(),
            prompt: crate::domain::report::prompt_start(&job.prompt),
            object_key: self.object_key,
            path,
            content_type: self.content_type,
            bytes: self.bytes,
            width: self.width,
            height: self.height,
            reused: self.reused,
            cost_usd: self.cost_usd,
            credits_used: self.credits_used,
            replaced_broken: self.replaced_broken,
        }
    }
}

/// Calls the provider for `job`'s image, checks it is one, and writes it create-if-absent; the
/// caller has made sure it does not exist yet.
#[tracing::instrument(skip_all, fields(run_id = %job.run_id, row = job.row, key = %job.key))]
pub async fn generate_new<S: ObjectStore>(
    job: &Job,
    model: &ModelInfo,
    store: &S,
    provider: &dyn ImageProvider,
    signer: Option<&dyn ReferenceSigner>,
    timeout: Duration,
) -> Result<Generated, Error> {
    check_reference_buckets(&job.references, &reference_buckets_from_env()).map_err(Error::Input)?;
    let references = sign_references(&job.references, signer).await.map_err(Error::Input)?;
    let request = image_request(job, model, references, timeout);
    let called = std::time::Instant::now();
    let span = tracing::info_span!("provider", provider = provider.name(), model = %request.provider_model);
    let image = tracing::Instrument::instrument(provider.generate(&request), span).await;
    crate::ports::metrics::provider_call(job, provider.name(), called.elapsed());
    let image = image?;
    let cost_usd = image.reported_cost_usd.unwrap_or_else(|| model.cost_of(&image.usage));
    store_generated(job, model, store, image, cost_usd).await
}

/// What `job` asks `model` for.
pub fn image_request(job: &Job, model: &ModelInfo, references: Vec<String>, timeout: Duration) -> ImageRequest {
    ImageRequest {
        provider_model: model.provider_model.clone(),
        quality: model.quality.clone(),
        key: job.key.to_string(),
        prompt: job.prompt.clone(),
        size: job.size,
        references,
        seed: job.seed(),
        timeout,
    }
}

/// Checks the provider's answer is an image and writes it create-if-absent (replacing only a broken
/// leftover); `cost_usd` is what it cost.
pub async fn store_generated<S: ObjectStore>(
    job: &Job,
    model: &ModelInfo,
    store: &S,
    image: ProviderImage,
    cost_usd: f64,
) -> Result<Generated, Error> {
    let info = image_format::inspect(&image.bytes)?;
    let object_key = image_key(job.key.as_str(), info.format);
    let bytes = image.bytes.len() as u64;
    let object = image_object(job, &model.provider_model, info.format.content_type(), image.bytes);
    let replaced_broken = store_image(store, &object_key, info.format, object).await?;
    Ok(Generated {
        object_key,
        content_type: info.format.content_type().to_owned(),
        bytes,
        width: Some(info.width),
        height: Some(info.height),
        reused: false,
        cost_usd,
        credits_used: image.usage.credits,
        replaced_broken,
    })
}

/// The job's image when it is already stored (an earlier run or delivery made it) and is a whole
/// image. A broken object (empty, an HTML page, cut short) is not reused: the job regenerates it and
/// the new image replaces it.
pub async fn existing_image<S: ObjectStore>(store: &S, job: &Job) -> Result<Option<Generated>, StoreError> {
    let Some(found) = store.find_image(job.key.as_str()).await? else {
        return Ok(None);
    };
    // The first format found may be a broken leftover next to a good image in another format.
    for format in ImageFormat::ALL {
        let key = image_key(job.key.as_str(), format);
        if key == found.key && found.size > MAX_IMAGE_BYTES as u64 {
            tracing::warn!(object_key = %key, bytes = found.size, "stored image is too large to be one; regenerating");
            continue;
        }
        let Some(bytes) = store.get(&key).await? else {
            continue;
        };
        match image_format::inspect(&bytes) {
            Ok(info) if info.format == format => {
                tracing::info!(object_key = %key, "image exists; provider not called");
                return Ok(Some(Generated {
                    object_key: key,
                    content_type: format.content_type().to_owned(),
                    bytes: bytes.len() as u64,
                    width: Some(info.width),
                    height: Some(info.height),
                    reused: true,
                    cost_usd: 0.0,
                    credits_used: None,
                    replaced_broken: false,
                }));
            }
            Ok(info) => {
                tracing::warn!(object_key = %key, found = ?info.format, "stored image has the wrong extension; regenerating")
            }
            Err(e) => tracing::warn!(object_key = %key, error = %e, "stored image is broken; regenerating"),
        }
    }
    Ok(None)
}

/// Writes a new image create-if-absent; what is already at the key is replaced only when it is
/// not a whole image of that format (a broken leftover). Returns whether it replaced one.
async fn store_image<S: ObjectStore>(
    store: &S,
    key: &str,
    format: ImageFormat,
    object: NewObject,
) -> Result<bool, StoreError> {
    if store.put_if_absent(key, object.clone()).await? == PutOutcome::Created {
        return Ok(false);
    }
    let present = store.get(key).await?;
    let whole = present.is_some_and(|bytes| image_format::inspect(&bytes).is_ok_and(|info| info.format == format));
    if !whole {
        tracing::warn!(object_key = %key, "replacing a broken image");
        store.put(key, object).await?;
    }
    Ok(!whole)
}

/// The stored object: immutable caching and ASCII-only metadata (the prompt goes in as its hash).
fn image_object(job: &Job, provider_model: &str, content_type: &str, body: Bytes) -> NewObject {
    NewObject {
        body,
        content_type: content_type.to_owned(),
        cache_control: Some(IMAGE_CACHE_CONTROL.to_owned()),
        metadata: vec![
            ("run-id".into(), job.run_id.clone()),
            ("row".into(), job.row.to_string()),
            ("model".into(), job.model.clone()),
            ("provider-model".into(), provider_model.to_owned()),
            ("prompt-sha256".into(), job.prompt_sha256()),
        ],
    }
}
