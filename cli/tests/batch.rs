//! `imagepipe plan --batch` and `imagepipe run --batch` as a user runs them, against a local
//! stand-in of the Gemini Batch API.

use std::path::Path;
use std::process::Output;

use imagepipe_tests::batch_stand_in::{self, Script};

const CSV: &[u8] = b"sku,name,color\nA1,mug,red\nA2,cup,blue\nA3,bowl,green\n";

async fn imagepipe(args: &[&str], dir: &Path, api: &str) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(args)
        .current_dir(dir)
        .env("GEMINI_API_KEY", "test-key")
        .env("IMAGEPIPE_GEMINI_BASE_URL", api)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .expect("imagepipe runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn plan_shows_the_batch_price_next_to_the_synchronous_one_and_refuses_models_without_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.csv"), CSV).unwrap();
    let plain = imagepipe(&["plan", "p.csv", "-t", "product", "-m", "nano-banana"], dir.path(), "").await;
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain.stderr));
    let out = text(&plain.stdout);
    assert!(
        out.contains("estimated provider cost: $0.12 (3 images × $0.039)"),
        "{out}"
    );
    assert!(out.contains("through the batch API (--batch): $0.06"), "{out}");
    let batch = imagepipe(
        &["plan", "p.csv", "-t", "product", "-m", "nano-banana", "--batch"],
        dir.path(),
        "",
    )
    .await;
    let out = text(&batch.stdout);
    assert!(
        out.contains("estimated provider cost through the batch API: $0.06 (3 images × $0.0195)"),
        "{out}"
    );
    assert!(out.contains("synchronous calls would cost $0.12"), "{out}");
    let refused = imagepipe(
        &["plan", "p.csv", "-t", "product", "-m", "seedream-4", "--batch"],
        dir.path(),
        "",
    )
    .await;
    assert_eq!(refused.status.code(), Some(2));
    let error = text(&refused.stderr);
    assert!(
        error.contains("\"seedream-4\" has no batch price in the catalog"),
        "{error}"
    );
}

#[tokio::test]
async fn run_batch_polls_until_the_batch_is_done_and_reports_both_prices() {
    let stand_in = batch_stand_in::gemini(Script::rows(&[], &[], &[])).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.csv"), CSV).unwrap();
    let args = [
        "run",
        "p.csv",
        "-t",
        "product",
        "-m",
        "nano-banana",
        "--batch",
        "--poll-secs",
        "1",
    ];
    let run = imagepipe(&args, dir.path(), &stand_in.uri()).await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let out = text(&run.stdout);
    assert!(out.contains("3/3 succeeded"), "{out}");
    assert!(out.contains("cost: $0.0585"), "{out}");
    assert!(out.contains("synchronous calls would have cost $0.1170"), "{out}");
    assert!(
        text(&run.stderr).contains("batches: 1 at the provider"),
        "{}",
        text(&run.stderr)
    );
    assert_eq!((stand_in.batches_created(), stand_in.sync_calls()), (1, 0));
    // The same command again finds the run's batch done: nothing is submitted or paid again.
    let again = imagepipe(&args, dir.path(), &stand_in.uri()).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("cost: $0.0000"), "{}", text(&again.stdout));
    assert_eq!((stand_in.batches_created(), stand_in.sync_calls()), (1, 0));
}
