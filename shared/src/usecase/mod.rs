//! The use cases, written against the ports so every driver (CLI, Lambda functions) runs the same code.

pub mod batch;
pub mod deliver;
pub mod generate;
pub mod lease;
pub mod messages;
pub mod plan;
pub mod record;
pub mod redrive;
pub mod report;
pub mod split;
pub mod stops;

use std::time::Duration;

use crate::domain::catalog::UnknownModel;
use crate::domain::image_format::NotAnImage;
use crate::domain::rows::CsvError;
use crate::ports::ledger::LedgerError;
use crate::ports::queue::QueueError;
use crate::ports::store::StoreError;
use crate::providers::{ProviderError, ProviderSetupError};

/// What a channel receives, as a stream (rows read on a blocking thread, batch results).
fn received<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// A use case could not finish: the provider or a port failed, or the input cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub enum Error {
    Provider(#[from] ProviderError),
    Store(#[from] StoreError),
    Queue(#[from] QueueError),
    Ledger(#[from] LedgerError),
    Csv(#[from] CsvError),
    NotAnImage(#[from] NotAnImage),
    UnknownModel(#[from] UnknownModel),
    Setup(#[from] ProviderSetupError),
    /// The input cannot be used as it is (a bad reference, a stored run naming a bad template, a
    /// CSV reader that stopped).
    #[error("{0}")]
    Input(String),
}

impl Error {
    /// Whether trying again later can succeed: the provider or the store said so, or a queue or the
    /// ledger could not be reached.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Provider(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
            Self::Queue(_) | Self::Ledger(_) => true,
            Self::Csv(_) | Self::NotAnImage(_) | Self::UnknownModel(_) | Self::Setup(_) | Self::Input(_) => false,
        }
    }

    /// The wait the provider asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Provider(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Whether no further job of the run can succeed (bad credentials).
    pub fn stops_run(&self) -> bool {
        matches!(self, Self::Provider(e) if e.stops_run())
    }
}
