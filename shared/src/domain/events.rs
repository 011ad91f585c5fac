//! What travels between the functions: the events the finalizer consumes and each row's outcome as
//! the run ledger records it.

use serde::{Deserialize, Serialize};

use crate::domain::job::Job;
use crate::domain::report::{FailureEntry, ImageEntry};

/// A message on the events queue. Serialised as JSON with a `type` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PipelineEvent {
    /// The splitter has sent every job of the run (or rejected it) and written its split summary.
    RunSplit { run_id: String },
    /// A job's image is stored.
    JobSucceeded { run_id: String, image: ImageEntry },
    /// A job failed for good.
    JobFailed { run_id: String, failure: FailureEntry },
}

/// What the finalizer receives: an event, or a job that exhausted its deliveries (the jobs DLQ).
#[derive(Debug, Clone, PartialEq)]
pub enum FinalizerInput {
    Event(PipelineEvent),
    DeadJob(Job),
}

impl FinalizerInput {
    /// Parses a message body from either queue.
    pub fn parse(body: &str) -> Result<Self, serde_json::Error> {
        match serde_json::from_str::<PipelineEvent>(body) {
            Ok(event) => Ok(Self::Event(event)),
            Err(event_error) => serde_json::from_str::<Job>(body)
                .map(Self::DeadJob)
                .map_err(|_| event_error),
        }
    }
}

/// The recorded outcome of one row, written once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        image: ImageEntry,
        /// The CMS update, when a CMS is configured: `Ok` or the reason it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cms: Option<Result<(), String>>,
    },
    Failed {
        failure: FailureEntry,
    },
}

impl Outcome {
    pub fn row(&self) -> u64 {
        match self {
            Self::Succeeded { image, .. } => image.row,
            Self::Failed { failure } => failure.row,
        }
    }
}

/// Reads and parses a JSON object of the run, `None` when absent.
pub async fn get_json<T: serde::de::DeserializeOwned, S: crate::ports::store::ObjectStore>(
    store: &S,
    key: &str,
) -> Result<Option<T>, crate::ports::store::StoreError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| crate::ports::store::StoreError::Failed(format!("{key} is not what this version wrote: {e}"))),
    }
}

/// A JSON object to store.
pub fn json_object<T: serde::Serialize>(value: &T) -> crate::ports::store::NewObject {
    crate::ports::store::NewObject {
        body: serde_json::to_vec_pretty(value)
            .expect("run records always serialise")
            .into(),
        content_type: "application/json".into(),
        cache_control: None,
        metadata: Vec::new(),
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizer_reads_events_and_dead_jobs() {
        let event = r#"{"type":"run_split","run_id":"run-1"}"#;
        assert_eq!(
            FinalizerInput::parse(event).unwrap(),
            FinalizerInput::Event(PipelineEvent::RunSplit { run_id: "run-1".into() })
        );
        let job =
            r#"{"run_id":"run-1","row":3,"key":"t/a","prompt":"p","model":"m","size":{"width":1024,"height":1024}}"#;
        assert!(matches!(FinalizerInput::parse(job), Ok(FinalizerInput::DeadJob(j)) if j.row == 3));
        assert!(FinalizerInput::parse("{not json").is_err());
    }
}
