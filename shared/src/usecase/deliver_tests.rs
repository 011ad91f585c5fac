//! The generator's use case over the directory store, an in-memory ledger and queue, and a scripted
//! provider: what each delivery does with its job, and what it tells the queue.

use super::*;
use crate::adapters::fs_store::FsObjectStore;
use crate::adapters::memory_ledger::MemoryLedger;
use crate::adapters::memory_queue::MemoryQueue;
use crate::domain::events::PipelineEvent;
use crate::domain::key::ObjectKey;
use crate::domain::template::ImageSize;
use crate::ports::ledger::RunRecord;
use crate::providers::ProviderError;
use crate::providers::testing::{Script, ScriptedProvider};

const RUN: &str = "run-deliver";
const PLENTY: Duration = Duration::from_secs(600);

fn job(row: u64, name: &str) -> Job {
    Job {
        run_id: RUN.into(),
        row,
        key: ObjectKey::parse(&format!("product/{name}")).unwrap(),
        cms_id: name.into(),
        prompt: format!("Product photo of {name}"),
        model: "placeholder".into(),
        size: ImageSize { width: 64, height: 64 },
        references: Vec::new(),
    }
}

struct Harness {
    generator: Generator<FsObjectStore, MemoryQueue, MemoryLedger>,
    provider: Arc<ScriptedProvider>,
    _dir: tempfile::TempDir,
}

async fn harness(provider: ScriptedProvider, leases: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let ledger = MemoryLedger::new();
    let run = RunRecord::new(RUN, "in.csv", "v1", "product", "placeholder", "scripted", 0);
    ledger.create_run(&run).await.unwrap();
    let provider = Arc::new(provider);
    let generator = Generator {
        store: FsObjectStore::new(dir.path()),
        events: MemoryQueue::new(),
        stops: RunStops::with_interval(ledger, Duration::ZERO),
        catalog: Catalog::builtin(),
        providers: Providers::with(provider.clone()),
        signer: None,
        provider_timeout: Duration::from_secs(5),
        provider_timeouts: HashMap::new(),
        max_receive_count: 3,
        backoff: RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(900),
        },
        locations: Locations::bucket("b", None),
        leases,
    };
    Harness {
        generator,
        provider,
        _dir: dir,
    }
}

impl Harness {
    fn events(&self) -> Vec<PipelineEvent> {
        (self.generator.events.sent().iter())
            .map(|body| serde_json::from_str(body).unwrap())
            .collect()
    }
}

fn unavailable() -> ProviderError {
    ProviderError::Unavailable {
        message: "503 overloaded".into(),
    }
}

#[tokio::test]
async fn a_success_stores_the_image_and_sends_one_succeeded_event_naming_where_it_is() {
    let h = harness(ScriptedProvider::default(), true).await;

    let disposition = h.generator.deliver(&job(1, "A1"), 1, PLENTY).await;

    assert_eq!(disposition, Disposition::Done);
    match &h.events()[..] {
        [PipelineEvent::JobSucceeded { image, .. }] => {
            assert_eq!(image.path, "s3://b/images/product/A1.png");
            assert_eq!((image.row, image.cms_id.as_str(), image.reused), (1, "A1", false));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_second_delivery_of_a_done_job_reuses_the_image_without_paying_again() {
    let h = harness(ScriptedProvider::default(), true).await;
    h.generator.deliver(&job(1, "A1"), 1, PLENTY).await;

    h.generator.deliver(&job(1, "A1"), 2, PLENTY).await;

    assert_eq!(h.provider.total_calls(), 1);
    assert!(matches!(&h.events()[1], PipelineEvent::JobSucceeded { image, .. } if image.reused));
}

#[tokio::test]
async fn a_retryable_error_is_tried_again_after_a_back_off_no_shorter_than_retry_after() {
    let limited = ProviderError::RateLimited {
        retry_after: Some(Duration::from_secs(42)),
        message: "slow down".into(),
    };
    let h = harness(ScriptedProvider::default().on("A1", Script::Always(limited)), true).await;

    let disposition = h.generator.deliver(&job(1, "A1"), 1, PLENTY).await;

    assert!(matches!(disposition, Disposition::RetryAfter(after) if after >= Duration::from_secs(42)));
    assert!(h.events().is_empty(), "no outcome yet");
}

#[tokio::test]
async fn at_the_last_delivery_a_retryable_error_fails_the_row_saying_how_often_it_was_tried() {
    let h = harness(
        ScriptedProvider::default().on("A1", Script::Always(unavailable())),
        true,
    )
    .await;

    let disposition = h.generator.deliver(&job(1, "A1"), 3, PLENTY).await;

    assert_eq!(disposition, Disposition::Done);
    match &h.events()[..] {
        [PipelineEvent::JobFailed { failure, .. }] => {
            assert_eq!(
                failure.reason,
                "provider unavailable: 503 overloaded (gave up after 3 attempts)"
            );
            assert_eq!(failure.attempts, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refused_credentials_stop_the_run_and_later_jobs_fail_without_a_provider_call() {
    let refused = ProviderError::Unauthorized {
        message: "API key not valid".into(),
    };
    let h = harness(ScriptedProvider::default().on("A1", Script::Always(refused)), true).await;

    h.generator.deliver(&job(1, "A1"), 1, PLENTY).await;
    h.generator.deliver(&job(2, "A2"), 1, PLENTY).await;

    assert_eq!(h.provider.total_calls(), 1);
    match &h.events()[1] {
        PipelineEvent::JobFailed { failure, .. } => assert_eq!(
            failure.reason,
            "not attempted: the run was stopped (provider refused the credentials: API key not valid)"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn with_too_little_time_left_the_job_is_handed_back_unstarted() {
    let h = harness(ScriptedProvider::default(), true).await;

    let disposition = h.generator.deliver(&job(1, "A1"), 1, MIN_CALL_TIME).await;

    assert!(matches!(disposition, Disposition::HandBack(_)));
    assert_eq!((h.provider.total_calls(), h.events().len()), (0, 0));
}

#[tokio::test]
async fn while_another_delivery_holds_the_images_lease_this_one_checks_back_later() {
    let h = harness(ScriptedProvider::default(), true).await;
    let lease = crate::usecase::lease::acquire(&h.generator.store, "leases/product/A1/", PLENTY).await;
    assert!(lease.unwrap().is_some());

    let disposition = h.generator.deliver(&job(1, "A1"), 1, PLENTY).await;

    assert!(matches!(disposition, Disposition::RetryAfter(_)));
    assert_eq!(h.provider.total_calls(), 0);
}

#[tokio::test]
async fn without_leases_nothing_but_the_image_is_written() {
    let h = harness(ScriptedProvider::default(), false).await;

    h.generator.deliver(&job(1, "A1"), 1, PLENTY).await;

    assert_eq!(h.generator.store.list("leases/").await.unwrap(), Vec::<String>::new());
    assert_eq!(
        h.generator.store.list("images/").await.unwrap(),
        vec!["images/product/A1.png"]
    );
}
