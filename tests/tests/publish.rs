//! A local run reporting to a CMS and Slack, both local HTTP servers speaking their wire formats.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use imagepipe::adapters::http_publish::{HttpCms, SlackWebhook, http_client};
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::domain::template::TemplateSet;
use imagepipe::drivers::local::{LocalRun, Publishing};
use imagepipe::providers::ProviderError;
use imagepipe::providers::testing::{Script, ScriptedProvider};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CSV: &str = "sku,name,color\nA1,mug,red\nA2,cup,blue\nA3,bowl,green\nA4,,white\n";
const TOKEN: &str = "cms-secret-token";

fn local_run(dir: &Path, cms: &MockServer, slack: &MockServer, provider: ScriptedProvider) -> LocalRun {
    let csv = dir.join("in.csv");
    std::fs::write(&csv, CSV).unwrap();
    let client = http_client(Duration::from_secs(5));
    LocalRun {
        csv,
        template: TemplateSet::builtin().get("product").unwrap().clone(),
        model: Some("placeholder".into()),
        catalog: Catalog::builtin(),
        provider: Arc::new(provider),
        signer: None,
        out_dir: dir.join("out"),
        concurrency: 2,
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
        },
        timeout: Duration::from_secs(5),
        publish: Publishing {
            cms: Some(HttpCms::new(client.clone(), &cms.uri(), TOKEN)),
            notifier: Some(SlackWebhook::new(
                client,
                &format!("{}/services/T000/B000/hook-secret", slack.uri()),
            )),
            public_base_url: Some("https://cdn.example.test/".into()),
        },
        batch: None,
    }
}

#[tokio::test]
async fn each_success_is_patched_into_the_cms_and_slack_gets_start_and_completion() {
    let (cms, slack) = (MockServer::start().await, MockServer::start().await);
    for sku in ["A1", "A2"] {
        Mock::given(method("PATCH"))
            .and(path(format!("/api/products/{sku}")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(body_json(
                serde_json::json!({ "image_url": format!("https://cdn.example.test/images/product/{sku}.png") }),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "ok": true })))
            .expect(1)
            .mount(&cms)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/services/T000/B000/hook-secret"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(2)
        .mount(&slack)
        .await;
    let refusal = ProviderError::Rejected {
        message: "safety filter".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let report = local_run(
        dir.path(),
        &cms,
        &slack,
        ScriptedProvider::default().on("bowl", Script::Always(refusal)),
    )
    .run(|_| {})
    .await
    .unwrap();

    assert_eq!(
        (
            report.rows,
            report.succeeded,
            report.failed,
            report.invalid,
            report.cms_updated
        ),
        (4, 2, 1, 1, 2)
    );
    let posts = slack.received_requests().await.unwrap();
    let text = |i: usize| {
        serde_json::from_slice::<serde_json::Value>(&posts[i].body).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(text(0).contains("started: 3 images"), "{}", text(0));
    let done = text(1);
    assert!(done.contains("2/4 succeeded, 1 failed, 1 invalid"), "{done}");
    assert!(
        done.contains("row 3 `product/A3`: rejected by provider: safety filter"),
        "{done}"
    );
    assert!(done.contains("row 4 invalid: column \"name\" is empty"), "{done}");
    assert!(
        done.lines()
            .last()
            .is_some_and(|l| l.starts_with("Report: ") && l.ends_with("/report.html")),
        "{done}"
    );
}

#[tokio::test]
async fn cms_outages_are_retried_and_lasting_failures_are_reported_without_secrets() {
    let (cms, slack) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("PATCH"))
        .and(path("/api/products/A1"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&cms)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/products/A1"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&cms)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/products/A2"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such product"))
        .mount(&cms)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/products/A3"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&cms)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&slack)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let report = local_run(dir.path(), &cms, &slack, ScriptedProvider::default())
        .run(|_| {})
        .await
        .unwrap();

    assert_eq!((report.succeeded, report.cms_updated), (3, 2));
    assert_eq!(report.cms_failures.len(), 1);
    assert_eq!(
        report.cms_failures[0].reason, "CMS answered HTTP 404: no such product (after 1 attempts)",
        "a 404 is not retried"
    );
    let a1_calls = cms
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/api/products/A1")
        .count();
    assert_eq!(a1_calls, 2, "the 503 was retried once");
    let stored = std::fs::read_to_string(dir.path().join(format!("out/runs/{}/report.json", report.run_id))).unwrap();
    assert!(!stored.contains(TOKEN) && !stored.contains("hook-secret"));
}

#[tokio::test]
async fn the_cms_gets_the_templates_cms_id_not_the_image_key() {
    let (cms, slack) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("PATCH"))
        .and(path("/api/products/p%2F17"))
        .and(body_json(
            serde_json::json!({ "image_url": "https://cdn.example.test/images/variant/A1-red.png" }),
        ))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&cms)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = local_run(dir.path(), &cms, &slack, ScriptedProvider::default());
    std::fs::write(&run.csv, "sku,color,product_id\nA1,red,p/17\n").unwrap();
    let templates = "[templates.variant]\nprompt = \"Mug in {color}\"\nmodel = \"placeholder\"\n\
                     key = \"{sku}-{color}\"\ncms_id = \"{product_id}\"\n";
    run.template = TemplateSet::from_toml(templates, "t.toml")
        .unwrap()
        .get("variant")
        .unwrap()
        .clone();

    let report = run.run(|_| {}).await.unwrap();

    assert_eq!((report.succeeded, report.cms_updated, report.cms_failed), (1, 1, 0));
}
