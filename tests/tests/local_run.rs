//! The local pipeline end to end: CSV on disk → provider (scripted) → images and report on disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::report::RunReport;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::domain::template::TemplateSet;
use imagepipe::drivers::local::{LocalRun, Publishing, RunError, report_path};
use imagepipe::providers::ProviderError;
use imagepipe::providers::testing::{Script, ScriptedProvider};

const CSV: &str = "sku,name,color\nA1,mug,red\nA2,cup,blue\nA3,bowl,green\nA4,plate,white\n";

fn local_run(dir: &Path, csv: &[u8], provider: Arc<ScriptedProvider>, max_attempts: u32) -> LocalRun {
    let path = dir.join("in.csv");
    std::fs::write(&path, csv).unwrap();
    LocalRun {
        csv: path,
        template: TemplateSet::builtin().get("product").unwrap().clone(),
        model: Some("placeholder".into()),
        catalog: Catalog::builtin(),
        provider,
        signer: None,
        out_dir: dir.join("out"),
        concurrency: 4,
        retry: RetryPolicy {
            max_attempts,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(20),
        },
        timeout: Duration::from_secs(5),
        publish: Publishing::default(),
        batch: None,
    }
}

async fn run(run: &LocalRun) -> RunReport {
    run.run(|_| {}).await.expect("run finishes")
}

fn unavailable() -> ProviderError {
    ProviderError::Unavailable {
        message: "HTTP 503".into(),
    }
}

#[tokio::test]
async fn clean_run_writes_one_png_per_row_and_a_matching_report() {
    let dir = tempfile::tempdir().unwrap();
    let run_cfg = local_run(dir.path(), CSV.as_bytes(), Arc::new(ScriptedProvider::default()), 3);
    let report = run(&run_cfg).await;

    assert_eq!(
        (report.rows, report.succeeded, report.failed, report.invalid),
        (4, 4, 0, 0)
    );
    for (i, image) in report.images.iter().enumerate() {
        assert_eq!(image.row, i as u64 + 1);
        assert_eq!(image.content_type, "image/png");
        let bytes = std::fs::read(&image.path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
        assert_eq!(bytes.len() as u64, image.bytes);
        assert!(Path::new(&image.path).starts_with(dir.path().join("out/images/product")));
    }
    let stored: RunReport =
        serde_json::from_slice(&std::fs::read(report_path(&run_cfg.out_dir, &report.run_id)).unwrap()).unwrap();
    assert_eq!(stored, report);
}

#[tokio::test]
async fn retryable_failures_are_retried_until_they_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(ScriptedProvider::default().on("cup", Script::FailTimes(2, unavailable())));
    let report = run(&local_run(dir.path(), CSV.as_bytes(), provider.clone(), 4)).await;

    assert_eq!((report.succeeded, report.failed), (4, 0));
    assert_eq!(provider.calls_for("cup"), 3);
    assert_eq!(provider.calls_for("mug"), 1);
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(ScriptedProvider::default().on("cup", Script::Always(unavailable())));
    let report = run(&local_run(dir.path(), CSV.as_bytes(), provider.clone(), 3)).await;

    assert_eq!((report.rows, report.succeeded, report.failed), (4, 3, 1));
    let failure = &report.failures[0];
    assert_eq!(
        (failure.row, failure.key.as_str(), failure.attempts),
        (2, "product/A2", 3)
    );
    assert_eq!(
        failure.reason,
        "provider unavailable: HTTP 503 (gave up after 3 attempts)"
    );
    assert_eq!(provider.calls_for("cup"), 3);
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let limited = ProviderError::RateLimited {
        retry_after: Some(Duration::from_millis(200)),
        message: "429".into(),
    };
    let provider = Arc::new(ScriptedProvider::default().on("cup", Script::FailTimes(1, limited)));
    let mut cfg = local_run(dir.path(), CSV.as_bytes(), provider.clone(), 3);
    cfg.retry.cap = Duration::from_secs(5);
    let started = Instant::now();
    let report = run(&cfg).await;

    assert_eq!(report.succeeded, 4);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the retry came before Retry-After"
    );
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_do_not_touch_other_rows() {
    let dir = tempfile::tempdir().unwrap();
    let refusal = ProviderError::Rejected {
        message: "content policy: the prompt was blocked".into(),
    };
    let provider = Arc::new(ScriptedProvider::default().on("cup", Script::Always(refusal)).on(
        "bowl",
        Script::Body(Bytes::from_static(b"<html><body>502 Bad Gateway</body></html>")),
    ));
    let report = run(&local_run(dir.path(), CSV.as_bytes(), provider.clone(), 4)).await;

    assert_eq!((report.succeeded, report.failed), (2, 2));
    assert_eq!(
        report.failures[0].reason,
        "rejected by provider: content policy: the prompt was blocked"
    );
    assert_eq!(
        report.failures[1].reason,
        "provider returned an HTML page, not a PNG, JPEG or WebP image"
    );
    assert_eq!((provider.calls_for("cup"), provider.calls_for("bowl")), (1, 1));
    assert!(!dir.path().join("out/images/product/A3.png").exists());
}

#[tokio::test]
async fn refused_credentials_stop_the_run_and_every_row_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let csv: String = std::iter::once("sku,name,color\n".to_owned())
        .chain((1..=50).map(|i| format!("S{i},item {i},red\n")))
        .collect();
    let denied = ProviderError::Unauthorized {
        message: "HTTP 401: API key not valid".into(),
    };
    let provider = Arc::new(ScriptedProvider::default().on("item", Script::Always(denied)));
    let report = run(&local_run(dir.path(), csv.as_bytes(), provider.clone(), 4)).await;

    assert_eq!((report.rows, report.succeeded, report.failed), (50, 0, 50));
    assert!(
        provider.total_calls() <= 8,
        "kept calling after a 401: {} calls",
        provider.total_calls()
    );
    assert!(report.failures.iter().any(|f| f.reason.starts_with("not attempted")));
}

#[tokio::test]
async fn a_second_run_of_the_same_csv_reuses_images_and_pays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(ScriptedProvider::default());
    let cfg = local_run(dir.path(), CSV.as_bytes(), provider.clone(), 3);
    let first = run(&cfg).await;
    let second = run(&cfg).await;

    assert_eq!(first.run_id, second.run_id, "same input, same run id");
    assert_eq!(provider.total_calls(), 4, "the second run called the provider");
    assert_eq!((second.succeeded, second.reused, second.actual_cost_usd), (4, 4, 0.0));
}

#[tokio::test]
async fn unsafe_keys_are_invalid_rows_and_nothing_escapes_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "sku,name,color\n../../escape,mug,red\n/abs,mug,red\nok,mug,red\n";
    let report = run(&local_run(
        dir.path(),
        csv.as_bytes(),
        Arc::new(ScriptedProvider::default()),
        3,
    ))
    .await;

    assert_eq!((report.rows, report.succeeded, report.invalid), (3, 1, 2));
    assert_eq!(
        report.invalid_rows.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let written: Vec<_> = walk(dir.path());
    assert!(
        written
            .iter()
            .all(|p| p.starts_with(dir.path().join("out")) || p.ends_with("in.csv")),
        "{written:?}"
    );
}

#[tokio::test]
async fn whole_file_problems_stop_before_anything_is_generated() {
    for (csv, expected) in [
        (
            &b"sku,name,color\nA1,mug,red\nA2,caf\xe9,red\n"[..],
            "not UTF-8 text (data row 2, line 3)",
        ),
        (b"", "the file is empty"),
        (b"sku,name,color\n", "has a header but no data rows"),
        (b"sku,title\nA1,x\n", "needs CSV column \"name\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let provider = Arc::new(ScriptedProvider::default());
        let err: RunError = local_run(dir.path(), csv, provider.clone(), 3)
            .run(|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err} should contain {expected}");
        assert_eq!(provider.total_calls(), 0);
        assert!(!dir.path().join("out").exists());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

#[tokio::test]
async fn a_run_of_more_rows_than_the_report_lists_counts_them_all_and_writes_a_line_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("sku,name,color\n");
    for n in 1..=130 {
        let color = if n == 7 { "" } else { "red" };
        csv.push_str(&format!("SKU-{n},=cmd|' /C calc'!A0 {n},{color}\n"));
    }
    let refused = ProviderError::Rejected {
        message: "safety".into(),
    };
    let provider = ScriptedProvider::default().on("A0 13 in", Script::Always(refused));
    let run_cfg = local_run(dir.path(), csv.as_bytes(), Arc::new(provider), 8);
    let report = run(&run_cfg).await;
    assert_eq!(
        (report.rows, report.succeeded, report.failed, report.invalid),
        (130, 128, 1, 1)
    );
    assert_eq!(
        report.images.len(),
        imagepipe::domain::report::LISTED,
        "the report lists the first 100"
    );
    assert_eq!(
        report.images.last().unwrap().row,
        102,
        "by row: row 7 is invalid, row 13 failed"
    );
    let results = std::fs::read_to_string(run_cfg.out_dir.join(format!("runs/{}/results.csv", report.run_id))).unwrap();
    let lines: Vec<&str> = results.lines().collect();
    assert_eq!(lines.len(), 131, "a header and one line per row");
    assert!(lines[7].starts_with("7,,invalid,"), "{}", lines[7]);
    assert!(lines[13].starts_with("13,product/SKU-13,failed,"), "{}", lines[13]);
    assert!(
        lines[130].starts_with("130,product/SKU-130,succeeded,"),
        "{}",
        lines[130]
    );
    assert_eq!(
        report.results.as_deref().map(|r| r.ends_with("results.csv")),
        Some(true)
    );
}
