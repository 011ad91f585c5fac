//! The `imagepipe` binary as a user runs it: exit codes, messages and JSON output.

use std::path::Path;
use std::process::{Command, Output};

fn imagepipe(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(args)
        .current_dir(dir)
        .env_remove("GEMINI_API_KEY")
        .output()
        .expect("imagepipe runs")
}

fn write(dir: &Path, name: &str, body: &[u8]) -> String {
    std::fs::write(dir.join(name), body).unwrap();
    name.to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_of_a_clean_csv_exits_0_and_prints_the_report_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\nA2,cup,blue\n");
    let out = imagepipe(
        &["run", &csv, "-t", "product", "--provider", "placeholder", "--json"],
        dir.path(),
    );

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["rows"].as_u64(), report["succeeded"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(report["provider"], "placeholder");
    assert!(dir.path().join("out/images/product/A1.png").exists());
    let run_id = report["run_id"].as_str().unwrap();
    assert!(dir.path().join(format!("out/runs/{run_id}/report.json")).exists());
}

#[test]
fn run_with_invalid_rows_exits_1_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\nA2,,blue\n");
    let out = imagepipe(&["run", &csv, "-t", "product", "--provider", "placeholder"], dir.path());

    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1/2 succeeded, 0 failed, 1 invalid"), "{text}");
    assert!(text.contains("invalid row 2: column \"name\" is empty"), "{text}");
}

#[test]
fn inputs_that_cannot_start_a_run_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\n");
    let latin1 = write(dir.path(), "l.csv", b"sku,name,color\nA1,caf\xe9,red\n");
    let templates = write(
        dir.path(),
        "t.toml",
        b"[templates.x]\nprompt = \"{a\"\nmodel = \"placeholder\"\nkey = \"{sku}\"\n",
    );
    let cases: [(&[&str], &str); 7] = [
        (
            &["run", "missing.csv", "-t", "product", "--provider", "placeholder"],
            "cannot read missing.csv",
        ),
        (
            &["run", &good, "-t", "nope", "--provider", "placeholder"],
            "unknown template \"nope\"; available: blog_hero",
        ),
        (&["run", &good, "-t", "product", "-m", "nope"], "unknown model \"nope\""),
        (
            &["run", &latin1, "-t", "product", "--provider", "placeholder"],
            "l.csv: not UTF-8 text (data row 1, line 2)",
        ),
        (
            &["run", &good, "-t", "product", "--provider", "dalle"],
            "unknown provider \"dalle\"",
        ),
        (
            &["plan", &good, "-t", "x", "--templates", &templates],
            "prompt pattern is invalid: unclosed '{'",
        ),
        (&["run", &good], "--template"),
    ];
    for (args, expected) in cases {
        let out = imagepipe(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {} should contain {expected}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"));
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_provider_without_credentials_suggests_the_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\n");
    let out = imagepipe(&["run", &csv, "-t", "product", "-m", "nano-banana-2"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--provider placeholder"), "{}", stderr(&out));
}

#[test]
fn plan_prints_counts_samples_and_costs_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\nA2,cup,blue\nA3,,x\n");
    let out = imagepipe(
        &["plan", &csv, "-t", "product", "-m", "nano-banana-pro", "--json"],
        dir.path(),
    );

    assert_eq!(out.status.code(), Some(1), "invalid rows make plan exit 1");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (plan["rows"].as_u64(), plan["valid"].as_u64(), plan["invalid"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(
        plan["sample_prompts"][0],
        "Product photo of mug in red, clean background, soft shadows"
    );
    assert!((plan["estimated_cost_usd"].as_f64().unwrap() - 0.268).abs() < 1e-9);
    assert_eq!(plan["cost_at_scale"][3], serde_json::json!([100000, 13400.0]));
    assert!(!dir.path().join("out").exists(), "plan writes nothing");
}

#[test]
fn models_lists_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let out = imagepipe(&["models", "--json"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let catalog: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        catalog["models"]["nano-banana-2"]["provider_model"],
        "gemini-3.1-flash-image-preview"
    );
    assert!(catalog["prices_as_of"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_gemini_calls_the_configured_endpoint_end_to_end() {
    use base64::Engine;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    let png = imagepipe::providers::placeholder::render_png(32, 32, b"gemini").unwrap();
    let body = serde_json::json!({ "candidates": [{ "content": { "parts": [
        { "inlineData": { "mimeType": "image/png", "data": base64::engine::general_purpose::STANDARD.encode(&png) } }
    ]}, "finishReason": "STOP" }] });
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-2.5-flash-image:generateContent"))
        .and(header("x-goog-api-key", "local-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .expect(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\nA2,cup,blue\n");
    let out = Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(["run", &csv, "-t", "product", "-m", "nano-banana", "--json"])
        .current_dir(dir.path())
        .env("GEMINI_API_KEY", "local-key")
        .env("IMAGEPIPE_GEMINI_BASE_URL", server.uri())
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["provider"].as_str(), report["succeeded"].as_u64()),
        (Some("gemini"), Some(2))
    );
    assert!(
        (report["actual_cost_usd"].as_f64().unwrap() - 0.078).abs() < 1e-9,
        "catalog price × 2"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("local-key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_bedrock_uses_the_standard_endpoint_override_and_nova_canvas_body() {
    use base64::Engine;
    use wiremock::matchers::{method, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    let png = imagepipe::providers::placeholder::render_png(32, 32, b"bedrock").unwrap();
    let ok = serde_json::json!({ "images": [base64::engine::general_purpose::STANDARD.encode(&png)], "error": null });
    Mock::given(method("POST"))
        .and(path_regex(r"^/model/amazon\.nova-canvas-v1(:|%3A)0/invoke$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok))
        .expect(1)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\n");
    let out = Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(["run", &csv, "-t", "product", "-m", "nova-canvas", "--json"])
        .current_dir(dir.path())
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.uri())
        .env("AWS_ACCESS_KEY_ID", "AKIDLOCAL")
        .env("AWS_SECRET_ACCESS_KEY", "local-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent: serde_json::Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(sent["taskType"], "TEXT_IMAGE");
    assert_eq!(
        sent["textToImageParams"]["text"],
        "Product photo of mug in red, clean background, soft shadows"
    );
    assert_eq!(
        (
            sent["imageGenerationConfig"]["width"].as_u64(),
            sent["imageGenerationConfig"]["quality"].as_str()
        ),
        (Some(1024), Some("standard"))
    );
}

#[test]
fn run_with_bedrock_and_no_aws_credentials_exits_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\n");
    let out = Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(["run", &csv, "-t", "product", "-m", "titan-image-v2"])
        .current_dir(dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bedrock needs credentials: set AWS credentials"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_placeholder_run_estimates_nothing_and_names_what_the_model_would_cost() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "p.csv", b"sku,name,color\nA1,mug,red\nA2,cup,blue\n");
    let out = imagepipe(&["run", &csv, "-t", "product", "--provider", "placeholder"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cost: $0.0000 (estimated $0.0000)"), "{text}");
    assert!(
        text.contains("with nano-banana on its own provider this run would cost $0.0780"),
        "{text}"
    );
    assert!(
        !stderr(&out).contains("aws_config"),
        "no AWS configuration is loaded: {}",
        stderr(&out)
    );
}

#[test]
fn config_check_accepts_good_files_and_names_the_file_and_line_of_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let templates = write(
        dir.path(),
        "t.toml",
        b"[templates.house]\nprompt = \"House style {name}\"\nmodel = \"house-model\"\nkey = \"{sku}\"\n",
    );
    let models = write(
        dir.path(),
        "m.toml",
        b"prices_as_of = \"2026-12-01\"\n[models.house-model]\nprovider = \"placeholder\"\n\
          provider_model = \"placeholder\"\nprice_per_image = 0.0\n",
    );
    let ok = imagepipe(
        &["config", "check", "--templates", &templates, "--models", &models],
        dir.path(),
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let unknown = imagepipe(&["config", "check", "--templates", &templates], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("unknown model \"house-model\""),
        "{}",
        stderr(&unknown)
    );
    let broken = write(dir.path(), "b.toml", b"[templates.x]\nprompt = \n");
    let out = imagepipe(&["config", "check", "--templates", &broken], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("b.toml") && stderr(&out).contains("line 2"),
        "{}",
        stderr(&out)
    );
    let nowhere = imagepipe(&["status"], dir.path());
    assert_eq!(nowhere.status.code(), Some(2));
    assert!(stderr(&nowhere).contains("--stack"), "{}", stderr(&nowhere));
}

#[test]
fn providers_lists_the_registry_and_the_readme_documents_each() {
    let dir = tempfile::tempdir().unwrap();
    let out = imagepipe(&["providers", "--json"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert_eq!(listed.len(), 6);
    for provider in &listed {
        let name = provider["name"].as_str().unwrap();
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README's provider table lacks {name}"
        );
    }
    assert!(listed[1]["credentials"].as_str().unwrap().contains("GEMINI_API_KEY"));
}
