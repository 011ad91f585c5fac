//! S3 as the object store: conditional writes with `If-None-Match: *`, streamed reads.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::domain::image_format::ImageFormat;
use crate::ports::store::{NewObject, ObjectStore, PutOutcome, StoreError, StoredObject, Upload, image_stem};

/// One bucket of S3 (or anything speaking its API).
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
}

impl S3ObjectStore {
    pub fn new(client: Client, bucket: &str) -> Self {
        Self {
            client,
            bucket: bucket.to_owned(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/key` of an object of this store.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Opens `key` as a byte stream with its ETag, `None` when absent.
    #[tracing::instrument(skip(self))]
    pub async fn open(&self, key: &str) -> Result<Option<(impl AsyncRead + Send + Unpin + use<>, String)>, StoreError> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => {
                let etag = output.e_tag().unwrap_or_default().trim_matches('"').to_owned();
                Ok(Some((output.body.into_async_read(), etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    fn put_request(
        &self,
        key: &str,
        object: NewObject,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(object.content_type)
            .set_cache_control(object.cache_control)
            .body(ByteStream::from(object.body));
        for (name, value) in object.metadata {
            request = request.metadata(name, value);
        }
        request
    }
}

/// Maps an SDK error to retryable (throttling, 5xx, timeouts, no response) or not.
pub(crate) fn store_error<E>(error: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().unwrap_or_default();
    let message = match (code, error.message()) {
        ("", _) => error_chain(&error),
        (code, Some(message)) => format!("{code}: {message}"),
        (code, None) => code.to_owned(),
    };
    // S3 asks for a retry with these even on 4xx statuses.
    let retry_codes = [
        "SlowDown",
        "RequestTimeout",
        "ConditionalRequestConflict",
        "InternalError",
    ];
    let retryable = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        _ => status.is_some_and(|s| s >= 500 || s == 429) || retry_codes.contains(&code),
    };
    if retryable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Failed(message)
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A multipart upload, started with the first full part; an object of one part is one PutObject.
#[derive(Debug)]
pub struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    content_type: String,
    upload_id: Option<String>,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl S3Upload {
    async fn send_part(&mut self, body: Bytes) -> Result<(), StoreError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .content_type(&self.content_type)
                    .send()
                    .await
                    .map_err(store_error)?;
                let id = created.upload_id.unwrap_or_default();
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let sent = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(part) => {
                let completed = aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag)
                    .build();
                self.parts.push(completed);
                Ok(())
            }
            Err(e) => {
                self.abort().await;
                Err(store_error(e))
            }
        }
    }

    /// Drops the parts sent so far (they would be billed until the bucket's lifecycle rule removes them).
    async fn abort(&self) {
        if let Some(id) = &self.upload_id {
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(id)
                .send()
                .await;
            if let Err(e) = aborted {
                tracing::warn!(error = %error_chain(&e), key = %self.key, "multipart upload not aborted");
            }
        }
    }
}

impl Upload for S3Upload {
    async fn part(&mut self, body: Bytes) -> Result<(), StoreError> {
        self.send_part(body).await
    }

    async fn finish(mut self, last: Bytes) -> Result<(), StoreError> {
        if self.upload_id.is_none() {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(&self.content_type)
                .body(ByteStream::from(last))
                .send()
                .await
                .map_err(store_error)?;
            return Ok(());
        }
        if !last.is_empty() {
            self.send_part(last).await?;
        }
        let upload = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.parts)))
            .build();
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(upload)
            .send()
            .await;
        if let Err(e) = completed {
            self.abort().await;
            return Err(store_error(e));
        }
        Ok(())
    }
}

impl ObjectStore for S3ObjectStore {
    type Upload = S3Upload;

    async fn upload(&self, key: &str, content_type: &str) -> Result<S3Upload, StoreError> {
        Ok(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            upload_id: None,
            parts: Vec::new(),
        })
    }

    #[tracing::instrument(skip(self, object), fields(bytes = object.body.len()))]
    async fn put_if_absent(&self, key: &str, object: NewObject) -> Result<PutOutcome, StoreError> {
        match self.put_request(key, object).if_none_match("*").send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if e.code() == Some("PreconditionFailed") => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(store_error(e)),
        }
    }

    #[tracing::instrument(skip(self, object), fields(bytes = object.body.len()))]
    async fn put(&self, key: &str, object: NewObject) -> Result<(), StoreError> {
        self.put_request(key, object).send().await.map_err(store_error)?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let request = self.client.delete_object().bucket(&self.bucket).key(key);
        request.send().await.map_err(store_error)?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let Some((mut body, _)) = self.open(key).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut body, &mut bytes)
            .await
            .map_err(|e| StoreError::Unavailable(format!("reading s3://{}/{key}: {e}", self.bucket)))?;
        Ok(Some(bytes.into()))
    }

    #[tracing::instrument(skip(self))]
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // ListObjectsV2 returns at most 1,000 keys a page, in UTF-8 binary order.
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(store_error)?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        Ok(keys)
    }

    #[tracing::instrument(skip(self))]
    async fn find_image(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        // One list call finds the image whatever its extension (three HEADs otherwise).
        let stem = format!("{}.", image_stem(key));
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&stem)
            .max_keys(10)
            .send()
            .await
            .map_err(store_error)?;
        Ok(page.contents().iter().find_map(|object| {
            let found = object.key()?;
            let format = ImageFormat::ALL
                .into_iter()
                .find(|f| found.strip_prefix(&stem) == Some(f.extension()))?;
            Some(StoredObject {
                key: found.to_owned(),
                size: object.size().unwrap_or_default().max(0) as u64,
                content_type: format.content_type().into(),
            })
        }))
    }
}

/// A CSV in S3, streamed (never loaded whole) on a blocking reader.
#[derive(Debug, Clone)]
pub struct S3Csv {
    store: S3ObjectStore,
    key: String,
    name: String,
    version: String,
}

impl S3Csv {
    /// The CSV at `key` of `store`, in the version the event named.
    pub fn new(store: S3ObjectStore, key: &str, version: &str) -> Self {
        Self {
            name: store.uri(key),
            store,
            key: key.to_owned(),
            version: version.to_owned(),
        }
    }

    /// The CSV a run reads (its `s3://bucket/key` source, in the version it started from).
    pub fn of_run(client: Client, run: &crate::ports::ledger::RunRecord) -> Result<Self, String> {
        let (bucket, key) = run
            .source
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| format!("run {} has source {:?}, not an s3:// URI", run.run_id, run.source))?;
        Ok(Self::new(S3ObjectStore::new(client, bucket), key, &run.etag))
    }
}

impl crate::usecase::split::CsvSource for S3Csv {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    #[tracing::instrument(skip(self), fields(csv = %self.name))]
    async fn open_range(&self, start: u64, end: Option<u64>) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
        let range = match end {
            Some(end) if end <= start => return Ok(Box::new(std::io::empty())),
            Some(end) => format!("bytes={start}-{}", end - 1),
            None => format!("bytes={start}-"),
        };
        // If-Match: every read of a run sees the version the run started from, or fails.
        let result = (self.store.client.get_object())
            .bucket(&self.store.bucket)
            .key(&self.key)
            .range(range)
            .if_match(format!("\"{}\"", self.version))
            .send()
            .await;
        match result {
            // Read on a blocking thread (the CSV parser is synchronous), fed by the async body.
            Ok(output) => Ok(Box::new(tokio_util::io::SyncIoBridge::new(
                output.body.into_async_read(),
            ))),
            Err(e) if e.code() == Some("InvalidRange") => Ok(Box::new(std::io::empty())),
            Err(e) if e.code() == Some("PreconditionFailed") => Err(StoreError::Failed(format!(
                "{} changed since the run started (ETag {}): upload it again to start a new run",
                self.name, self.version
            ))),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(StoreError::Failed(format!("{} does not exist", self.name)))
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

impl S3ObjectStore {
    /// The ETag and user metadata of `key`, `None` when absent.
    #[tracing::instrument(skip(self))]
    pub async fn head(&self, key: &str) -> Result<Option<(String, Metadata)>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => Ok(Some((
                output.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                output.metadata.unwrap_or_default(),
            ))),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }
}

/// An object's user metadata (`x-amz-meta-*`).
pub type Metadata = std::collections::HashMap<String, String>;

/// Presigned GETs for `s3://` reference images, so every provider can fetch them over https.
#[derive(Debug, Clone)]
pub struct S3Signer {
    client: Client,
    expires: std::time::Duration,
}

impl S3Signer {
    /// URLs valid for `expires` (long enough for the provider call and its retries).
    pub fn new(client: Client, expires: std::time::Duration) -> Self {
        Self { client, expires }
    }
}

/// An [`S3Signer`] whose AWS configuration (region, credentials) is loaded on the first `s3://`
/// reference: a run without one never touches the AWS configuration.
#[derive(Debug)]
pub struct LazyS3Signer {
    expires: std::time::Duration,
    signer: tokio::sync::OnceCell<S3Signer>,
}

impl LazyS3Signer {
    pub fn new(expires: std::time::Duration) -> Self {
        Self {
            expires,
            signer: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait::async_trait]
impl crate::providers::ReferenceSigner for LazyS3Signer {
    async fn sign(&self, uri: &str) -> Result<String, String> {
        let signer = self
            .signer
            .get_or_init(|| async {
                S3Signer::new(crate::drivers::lambda::AwsClients::from_env().await.s3, self.expires)
            })
            .await;
        signer.sign(uri).await
    }
}

#[async_trait::async_trait]
impl crate::providers::ReferenceSigner for S3Signer {
    async fn sign(&self, uri: &str) -> Result<String, String> {
        let (bucket, key) = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("{uri:?} is not an s3://bucket/key URI"))?;
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(self.expires).map_err(|e| e.to_string())?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(request.uri().to_owned())
    }
}
