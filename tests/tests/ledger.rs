//! The DynamoDB run ledger on the local emulator: outcomes recorded once under concurrency with
//! their counters, one winner among racing completion claims, expiring claims, TTL, paging.

mod support;

use std::time::Duration;

use imagepipe::adapters::dynamodb_ledger::DynamoLedger;
use imagepipe::domain::events::{Outcome, now_ms};
use imagepipe::domain::report::FailureEntry;
use imagepipe::domain::rows::InvalidRow;
use imagepipe::ports::ledger::{Action, Advance, Checkpoint, Claim, RunLedger, RunRecord, RunState, SplitTotals};

async fn ledger() -> (DynamoLedger, imagepipe::drivers::lambda::AwsClients, String) {
    let clients = support::clients();
    let table = support::table(&clients).await;
    let ledger = DynamoLedger::new(clients.dynamodb.clone(), &table, Duration::from_secs(86_400));
    (ledger, clients, table)
}

fn failed(row: u64) -> Outcome {
    Outcome::Failed {
        failure: FailureEntry {
            row,
            key: format!("product/SKU-{row}"),
            reason: "refused".into(),
            attempts: 1,
        },
    }
}

/// A run split into `awaited` jobs, its start message out.
async fn running(ledger: &DynamoLedger, run_id: &str, awaited: u64) {
    let run = RunRecord::new(run_id, "s3://b/in.csv", "e", "product", "m", "placeholder", now_ms());
    assert_eq!(ledger.create_run(&run).await.unwrap().run_id, run_id);
    let totals = SplitTotals {
        rows: awaited + 1,
        header_bytes: 10,
        awaited,
        invalid: 1,
        estimated_cost_usd: 1.5,
        rejected: None,
    };
    ledger.set_totals(run_id, &totals).await.unwrap();
    let start = Checkpoint::default();
    let end = Checkpoint {
        offset: 99,
        rows_read: awaited + 1,
        sent: awaited,
    };
    let step = Advance {
        from: start,
        to: end,
        finished: true,
    };
    assert!(ledger.advance(run_id, step).await.unwrap());
    assert!(
        !ledger.advance(run_id, step).await.unwrap(),
        "a stale checkpoint moves nothing"
    );
    let claimed = ledger
        .claim(run_id, Claim::new(Action::Start, now_ms(), now_ms() + 60_000))
        .await
        .unwrap();
    assert!(claimed.is_some());
    ledger.done(run_id, Action::Start, now_ms()).await.unwrap();
}

#[tokio::test]
async fn sixteen_concurrent_writers_of_the_same_rows_count_each_row_once() {
    let (ledger, _, _) = ledger().await;
    running(&ledger, "run-concurrent", 60).await;
    let writers = (0..16).map(|w| {
        let ledger = &ledger;
        async move {
            // Each writer records overlapping windows of the 60 rows, in batches of 10.
            let mut recorded = 0;
            for start in (0..60).step_by(10) {
                let rows: Vec<Outcome> = (0..15).map(|i| failed((start + i + w) % 60 + 1)).collect();
                recorded += ledger.record("run-concurrent", &rows).await.unwrap().len();
            }
            recorded
        }
    });
    let recorded: usize = futures::future::join_all(writers).await.into_iter().sum();
    assert_eq!(recorded, 60, "each row recorded by exactly one writer");
    let run = ledger.run("run-concurrent").await.unwrap().unwrap();
    assert_eq!(
        (run.counts.failed, run.recorded(), run.outstanding()),
        (60, 60, Some(0))
    );
    let page = ledger.outcomes("run-concurrent", None).await.unwrap();
    assert_eq!(page.items.len(), 60);
    assert!(page.items.windows(2).all(|w| w[0].row() < w[1].row()), "in row order");
    let found = ledger.recorded_rows("run-concurrent", &[1, 30, 61]).await.unwrap();
    assert_eq!(found.len(), 2);
}

#[tokio::test]
async fn eight_finalizers_racing_to_complete_a_run_leave_one_winner() {
    let (ledger, _, _) = ledger().await;
    running(&ledger, "run-race", 3).await;
    let early = ledger
        .claim("run-race", Claim::new(Action::Completion, now_ms(), now_ms() + 60_000))
        .await
        .unwrap();
    assert!(early.is_none(), "no completion while outcomes are awaited");
    ledger
        .record("run-race", &[failed(1), failed(2), failed(3)])
        .await
        .unwrap();
    let claims = (0..8).map(|_| ledger.claim("run-race", Claim::new(Action::Completion, now_ms(), now_ms() + 60_000)));
    let won = futures::future::join_all(claims)
        .await
        .into_iter()
        .filter(|c| c.as_ref().unwrap().is_some())
        .count();
    assert_eq!(won, 1);
    assert_eq!(
        ledger
            .open_runs()
            .await
            .unwrap()
            .iter()
            .filter(|r| *r == "run-race")
            .count(),
        1
    );
    ledger.done("run-race", Action::Completion, now_ms()).await.unwrap();
    let run = ledger.run("run-race").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Complete);
    assert!(!ledger.open_runs().await.unwrap().contains(&"run-race".to_owned()));
    let again = ledger
        .claim(
            "run-race",
            Claim::new(Action::Completion, now_ms() + 120_000, now_ms() + 180_000),
        )
        .await
        .unwrap();
    assert!(again.is_none(), "a complete run is never completed again");
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_and_a_released_one_at_once() {
    let (ledger, _, _) = ledger().await;
    running(&ledger, "run-claims", 1).await;
    ledger.record("run-claims", &[failed(1)]).await.unwrap();
    let now = now_ms();
    assert!(
        ledger
            .claim("run-claims", Claim::new(Action::Completion, now, now + 1_000))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        ledger
            .claim("run-claims", Claim::new(Action::Completion, now + 500, now + 2_000))
            .await
            .unwrap()
            .is_none()
    );
    // The holder died: after its claim's end, the next caller takes over.
    assert!(
        ledger
            .claim("run-claims", Claim::new(Action::Completion, now + 1_001, now + 3_000))
            .await
            .unwrap()
            .is_some()
    );
    ledger.release("run-claims", Action::Completion).await.unwrap();
    assert!(
        ledger
            .claim("run-claims", Claim::new(Action::Completion, now + 1_002, now + 4_000))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn items_carry_an_expiry_and_invalid_rows_page_in_row_order() {
    let (ledger, clients, table) = ledger().await;
    running(&ledger, "run-ttl", 0).await;
    let invalid: Vec<InvalidRow> = (1..=1_200)
        .map(|row| InvalidRow {
            row,
            reason: format!("column \"sku\" is empty ({row})"),
        })
        .collect();
    ledger.record_invalid("run-ttl", &invalid).await.unwrap();
    ledger.record_invalid("run-ttl", &invalid[..30]).await.unwrap();
    let (mut rows, mut after) = (Vec::new(), None);
    loop {
        let page = ledger.invalid_rows("run-ttl", after).await.unwrap();
        rows.extend(page.items.iter().map(|i| i.row));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(rows, (1..=1_200).collect::<Vec<_>>());
    let ttl = clients
        .dynamodb
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let description = ttl.time_to_live_description().unwrap();
    assert_eq!(description.attribute_name(), Some("expires_at"));
    let item = clients
        .dynamodb
        .get_item()
        .table_name(&table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("run-ttl".into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("run".into()))
        .send()
        .await
        .unwrap();
    let expires: u64 = item.item().unwrap()["expires_at"].as_n().unwrap().parse().unwrap();
    assert!(expires > now_ms() / 1000 + 86_000, "{expires}");
}
