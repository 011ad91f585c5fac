//! The batch port: a provider's asynchronous batch API, which makes the same images at half price
//! within a day. A batch is created from a file of request lines, polled, and its results read line
//! by line, each line naming the row it answers.

use tokio::sync::mpsc;

use super::provider::{ImageRequest, ProviderError, ProviderImage};

/// Where a batch stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Accepted, waiting or being validated.
    Pending,
    Running,
    /// Finished: its results (and errors) can be read.
    Succeeded,
    /// The whole batch failed (its input was refused); no row has a result.
    Failed,
    Cancelled,
    /// Not finished within the provider's window; rows done before may have results.
    Expired,
}

impl BatchState {
    /// Whether the batch will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// A batch as the provider last described it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatus {
    pub state: BatchState,
    /// Requests in the batch, and those finished and failed so far, where the provider says.
    pub total: Option<u64>,
    pub done: Option<u64>,
    pub failed: Option<u64>,
    /// The provider's files holding result lines (successes, then errors), once there are any.
    pub results: Vec<String>,
    /// Why the whole batch failed, where the provider says.
    pub message: Option<String>,
}

/// One line of a batch's results: the row it answers, and its image or why there is none.
#[derive(Debug)]
pub struct BatchResult {
    pub row: u64,
    pub image: Result<ProviderImage, ProviderError>,
}

/// A provider's batch API.
#[async_trait::async_trait]
pub trait BatchApi: Send + Sync {
    /// The provider's name, as its synchronous client has it.
    fn name(&self) -> &str;

    /// The request line for `row` in a batch input file.
    async fn line(&self, row: u64, request: &ImageRequest) -> Result<String, ProviderError>;

    /// Uploads `lines` (JSONL, one model) and creates a batch called `name` from them; returns
    /// the batch's id. A creation that fails may still have happened: look for it with [`find`](Self::find).
    async fn create(&self, provider_model: &str, name: &str, lines: String) -> Result<String, ProviderError>;

    /// The id of this account's batch called `name`, if there is one.
    async fn find(&self, name: &str) -> Result<Option<String>, ProviderError>;

    async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError>;

    /// Asks the provider to stop the batch; requests already done stay done (and paid).
    async fn cancel(&self, id: &str) -> Result<(), ProviderError>;

    /// Reads the result lines of a final batch into `results`, one at a time (a batch's results can
    /// be gigabytes of base64 images: never held whole).
    async fn results(&self, status: &BatchStatus, results: mpsc::Sender<BatchResult>) -> Result<(), ProviderError>;
}
