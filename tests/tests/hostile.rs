//! Hostile input against loopback stand-ins: endless and oversized bodies, redirects that would carry
//! a key to another origin, references to internal addresses, reference storms, secrets in answers.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imagepipe::adapters::http_publish::{HttpCms, SlackWebhook, http_client};
use imagepipe::adapters::net::{AllowList, FetchClient};
use imagepipe::domain::template::ImageSize;
use imagepipe::ports::publish::{Cms, Notifier};
use imagepipe::providers::HttpProvider;
use imagepipe::providers::fetch::{MAX_REFERENCES_PER_ROW, MAX_ROW_REFERENCE_BYTES};
use imagepipe::providers::gemini::GeminiProvider;
use imagepipe::providers::http::MAX_RESPONSE_BYTES;
use imagepipe::providers::placeholder::render_png;
use imagepipe::providers::seedream::SeedreamProvider;
use imagepipe::providers::{ImageProvider, ImageRequest, ProviderError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{any, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "AIza-secret-key-0123456789";
const MIB: usize = 1024 * 1024;

fn request(references: Vec<String>) -> ImageRequest {
    ImageRequest {
        provider_model: "gemini-2.5-flash-image".into(),
        quality: None,
        key: "product/SKU-1".into(),
        prompt: "A red mug".into(),
        size: ImageSize { width: 64, height: 64 },
        references,
        seed: 1,
        timeout: Duration::from_secs(60),
    }
}

fn gemini(base: &str, allow: &str) -> GeminiProvider {
    GeminiProvider::from_endpoint(
        imagepipe::providers::http::ApiEndpoint::new(http_client(Duration::from_secs(60)), base, KEY)
            .with_fetch(FetchClient::new(AllowList::parse(allow).unwrap())),
    )
}

/// What a raw loopback server answers every connection with.
#[derive(Clone)]
enum Answer {
    /// `200`, chunked, never ending.
    Endless,
    /// `200` announcing this `Content-Length`, then a few bytes and silence.
    Announces(u64),
}

/// A loopback server counting connections and the body bytes it managed to send.
struct RawServer {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
}

async fn raw_server(answer: Answer) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (connections, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, total) = (connections.clone(), sent.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (answer, total) = (answer.clone(), total.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                match answer {
                    Answer::Endless => {
                        let head =
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = [b'A'; 64 * 1024];
                        loop {
                            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                            framed.extend_from_slice(&chunk);
                            framed.extend_from_slice(b"\r\n");
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                            total.fetch_add(chunk.len(), Ordering::SeqCst);
                        }
                    }
                    Answer::Announces(length) => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n{{\"candidates\":");
                        let _ = stream.write_all(head.as_bytes()).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    RawServer {
        address,
        connections,
        sent,
    }
}

#[tokio::test]
async fn an_endless_provider_answer_is_cut_at_the_response_limit() {
    let server = raw_server(Answer::Endless).await;
    let provider = gemini(&format!("http://{}", server.address), "");

    let error = provider.generate(&request(vec![])).await.unwrap_err();

    assert!(
        matches!(&error, ProviderError::Rejected { message } if message.contains("larger than")),
        "{error}"
    );
    // Socket buffers hold a few MiB more than was read; nothing near the endless body.
    let sent = server.sent.load(Ordering::SeqCst);
    assert!(sent < MAX_RESPONSE_BYTES + 16 * MIB, "server sent {sent} bytes");
}

#[tokio::test]
async fn an_announced_oversized_answer_is_refused_before_reading() {
    let server = raw_server(Answer::Announces(10 * 1024 * MIB as u64)).await;
    let provider = gemini(&format!("http://{}", server.address), "");

    let started = std::time::Instant::now();
    let error = provider.generate(&request(vec![])).await.unwrap_err();

    assert!(error.to_string().contains("larger than"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused without waiting for the body"
    );
}

/// An origin that redirects every request (with `status`) to another origin, which answers 200.
async fn redirecting(status: u16) -> (MockServer, MockServer) {
    let (origin, elsewhere) = (MockServer::start().await, MockServer::start().await);
    let target = format!("{}/collect", elsewhere.uri());
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status).insert_header("location", target.as_str()))
        .mount(&origin)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&elsewhere)
        .await;
    (origin, elsewhere)
}

#[tokio::test]
async fn a_redirect_to_another_origin_never_carries_the_key() {
    let (api, elsewhere) = redirecting(307).await;

    let error = gemini(&api.uri(), "").generate(&request(vec![])).await.unwrap_err();

    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("HTTP 307"), "{error}");
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn slack_and_cms_follow_no_redirect_to_another_origin_and_send_no_referer() {
    let (hook, elsewhere) = redirecting(302).await;
    let webhook = format!("{}/services/T000/B000/hooksecret123", hook.uri());

    let slack = SlackWebhook::new(http_client(Duration::from_secs(5)), &webhook)
        .post("hello")
        .await;
    let cms = HttpCms::new(http_client(Duration::from_secs(5)), &hook.uri(), "cms-token-123456")
        .update_image("A1", "https://cdn/x.png")
        .await;

    assert!(slack.unwrap_err().message.contains("HTTP 302"));
    assert!(cms.unwrap_err().message.contains("HTTP 302"));
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
    for request in hook.received_requests().await.unwrap() {
        assert!(!request.headers.contains_key("referer"));
    }
}

async fn refused_reference(reference: String, allow: &str) -> ProviderError {
    let api = MockServer::start().await;
    gemini(&api.uri(), allow)
        .generate(&request(vec![reference]))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn references_to_internal_addresses_make_no_connection_and_read_the_same() {
    let listening = raw_server(Answer::Endless).await;
    let port = listening.address.port();
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for reference in [
        format!("http://127.0.0.1:{port}/ref.png"),
        format!("http://localhost:{port}/ref.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/ref.png"),
        format!("http://127.0.0.1:{closed}/ref.png"),
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        "http://[fd00::1]/ref.png".to_owned(),
    ] {
        let error = refused_reference(reference.clone(), "").await;
        assert_eq!(
            error,
            ProviderError::Rejected {
                message: "reference not allowed: internal address".into()
            },
            "{reference}"
        );
    }
    assert_eq!(listening.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_into_an_internal_address_is_refused_at_the_hop() {
    let internal = raw_server(Answer::Endless).await;
    let public_stand_in = MockServer::start().await;
    let target = format!("http://127.0.0.1:{}/secret.png", internal.address.port());
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", target.as_str()))
        .mount(&public_stand_in)
        .await;
    // The stand-in is reached by name; only that name is allowed, not loopback addresses as such.
    let reference = public_stand_in.uri().replace("127.0.0.1", "localhost") + "/ref.png";

    let error = refused_reference(reference, "localhost").await;

    assert_eq!(
        error.to_string(),
        "rejected by provider: reference not allowed: internal address"
    );
    assert_eq!(public_stand_in.received_requests().await.unwrap().len(), 1);
    assert_eq!(internal.connections.load(Ordering::SeqCst), 0);
}

/// A valid PNG of `size` bytes: a small image with a private ancillary chunk as padding.
fn big_png(size: usize) -> Vec<u8> {
    let png = render_png(8, 8, b"big").unwrap();
    let padding = size - png.len() - 12;
    let mut chunk = b"pnGp".to_vec();
    chunk.resize(4 + padding, 0);
    let mut out = png[..33].to_vec(); // signature + IHDR
    out.extend_from_slice(&(padding as u32).to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    out.extend_from_slice(&png[33..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| (0..8).fold(n, |c, _| if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 }))
        .collect();
    !bytes
        .iter()
        .fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

#[tokio::test]
async fn a_reference_storm_in_one_row_is_bounded_by_count_and_total_bytes() {
    let refs = MockServer::start().await;
    let png = big_png(19 * MIB);
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(png))
        .mount(&refs)
        .await;
    let url = |i: usize| format!("{}/ref-{i}.png", refs.uri());

    let storm = (0..=MAX_REFERENCES_PER_ROW).map(url).collect();
    let error = refused_reference_allowed(storm).await;
    assert!(error.to_string().contains("at most 10 per row"), "{error}");
    assert!(refs.received_requests().await.unwrap().is_empty());

    let heavy = (0..3).map(url).collect();
    let error = refused_reference_allowed(heavy).await;
    let expected = format!("references are over {MAX_ROW_REFERENCE_BYTES} bytes");
    assert!(error.to_string().contains(&expected), "{error}");
}

async fn refused_reference_allowed(references: Vec<String>) -> ProviderError {
    let api = MockServer::start().await;
    gemini(&api.uri(), "127.0.0.1")
        .generate(&request(references))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn failures_show_no_token_userinfo_or_echoed_key() {
    let refs = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&refs)
        .await;
    let reference = refs.uri().replace("http://", "http://user:pass@")
        + "/k.png?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef&token=t0ken";
    let error = refused_reference_allowed(vec![reference]).await.to_string();
    assert!(error.ends_with("/k.png answered HTTP 404"), "{error}");
    for secret in ["user", "pass", "AKIA", "deadbeef", "t0ken"] {
        assert!(!error.contains(secret), "{error}");
    }

    let api = MockServer::start().await;
    let echo = json!({ "error": { "code": 400, "status": "INVALID_ARGUMENT", "message": format!("bad key {KEY}") } });
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(echo))
        .mount(&api)
        .await;
    let error = gemini(&api.uri(), "").generate(&request(vec![])).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "rejected by provider: gemini HTTP 400: INVALID_ARGUMENT: bad key <redacted>"
    );

    let cms = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(400).set_body_string("token cms-token-123456 is not valid here"))
        .mount(&cms)
        .await;
    let error = HttpCms::new(http_client(Duration::from_secs(5)), &cms.uri(), "cms-token-123456")
        .update_image("A1", "https://cdn/x.png")
        .await
        .unwrap_err();
    assert_eq!(
        error.message,
        "CMS answered HTTP 400: token <redacted> is not valid here"
    );
}

#[tokio::test]
async fn a_seedream_download_url_into_an_internal_address_is_refused() {
    let internal = raw_server(Answer::Endless).await;
    let api = MockServer::start().await;
    let url = format!("http://127.0.0.1:{}/image.png", internal.address.port());
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "data": [{ "url": url }] })))
        .mount(&api)
        .await;
    let provider = SeedreamProvider::new(http_client(Duration::from_secs(5)), &api.uri(), "ark-key-123456");

    let error = provider.generate(&request(vec![])).await.unwrap_err();

    assert_eq!(
        error.to_string(),
        "rejected by provider: seedream image URL: reference not allowed: internal address"
    );
    assert_eq!(internal.connections.load(Ordering::SeqCst), 0);
}

mod local {
    //! The local pipeline: the CSV snapshot, the output check before paying, images validated before reuse.

    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use imagepipe::domain::catalog::Catalog;
    use imagepipe::domain::retry::RetryPolicy;
    use imagepipe::domain::template::TemplateSet;
    use imagepipe::drivers::local::{LocalRun, Publishing, RunError};
    use imagepipe::providers::placeholder::render_png;
    use imagepipe::providers::testing::ScriptedProvider;
    use imagepipe::providers::{ImageProvider, ImageRequest, ProviderError, ProviderImage};

    fn local_run(csv: PathBuf, out_dir: PathBuf, provider: Arc<dyn ImageProvider>) -> LocalRun {
        LocalRun {
            csv,
            template: TemplateSet::builtin().get("product").unwrap().clone(),
            model: Some("placeholder".into()),
            catalog: Catalog::builtin(),
            provider,
            signer: None,
            out_dir,
            concurrency: 1,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(5),
            publish: Publishing::default(),
            batch: None,
        }
    }

    /// Answers a tiny PNG; on its first call, runs `on_first_call` (to change the world mid-run).
    struct Tiny {
        calls: AtomicU32,
        on_first_call: Box<dyn Fn() + Send + Sync>,
    }

    #[async_trait::async_trait]
    impl ImageProvider for Tiny {
        fn name(&self) -> &str {
            "tiny"
        }

        async fn generate(&self, _: &ImageRequest) -> Result<ProviderImage, ProviderError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                (self.on_first_call)();
            }
            Ok(ProviderImage {
                bytes: Bytes::from(render_png(8, 8, b"tiny").unwrap()),
                reported_cost_usd: None,
                request_id: None,
                usage: Default::default(),
            })
        }
    }

    fn many_rows(rows: usize) -> String {
        let mut csv = String::from("sku,name,color\n");
        for i in 0..rows {
            csv.push_str(&format!("SKU-{i:05},mug number {i},red\n"));
        }
        csv
    }

    #[tokio::test]
    async fn a_csv_truncated_during_the_run_still_runs_the_rows_that_were_planned() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, many_rows(3000)).unwrap();
        let truncate = csv.clone();
        let provider = Arc::new(Tiny {
            calls: AtomicU32::new(0),
            on_first_call: Box::new(move || std::fs::write(&truncate, "sku,name,color\nX,y,z\n").unwrap()),
        });

        let report = local_run(csv, dir.path().join("out"), provider.clone())
            .run(|_| {})
            .await
            .unwrap();

        assert_eq!((report.rows, report.succeeded), (3000, 3000));
        assert_eq!(provider.calls.load(Ordering::SeqCst), 3000);
    }

    #[tokio::test]
    async fn a_fifo_is_read_once_and_run_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in.csv");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let writer = fifo.clone();
        let feeding = std::thread::spawn(move || std::fs::write(writer, many_rows(5)).unwrap());
        let provider = Arc::new(ScriptedProvider::default());

        let run = local_run(fifo, dir.path().join("out"), provider.clone());
        let report = tokio::time::timeout(Duration::from_secs(30), run.run(|_| {}))
            .await
            .expect("a FIFO does not hang the run")
            .unwrap();

        feeding.join().unwrap();
        assert_eq!((report.rows, report.succeeded), (5, 5));
    }

    fn write_csv(dir: &Path) -> PathBuf {
        let csv = dir.join("in.csv");
        std::fs::write(&csv, "sku,name,color\nA1,mug,red\nA2,cup,blue\n").unwrap();
        csv
    }

    #[tokio::test]
    async fn an_unwritable_output_stops_the_run_before_any_provider_call() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, "a file where the output directory should be").unwrap();
        let provider = Arc::new(ScriptedProvider::default());

        let error = local_run(write_csv(dir.path()), out, provider.clone())
            .run(|_| {})
            .await
            .unwrap_err();

        assert!(matches!(error, RunError::Unwritable { .. }), "{error}");
        assert!(error.to_string().contains("nothing was generated"), "{error}");
        assert_eq!(provider.total_calls(), 0);
    }

    #[tokio::test]
    async fn a_broken_file_at_an_images_path_is_regenerated_and_a_whole_one_reused() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("out/images/product");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("A1.png"), "<html>502 Bad Gateway</html>").unwrap();
        let whole = render_png(16, 16, b"earlier").unwrap();
        std::fs::write(images.join("A2.png"), &whole).unwrap();
        let provider = Arc::new(ScriptedProvider::default());

        let report = local_run(write_csv(dir.path()), dir.path().join("out"), provider.clone())
            .run(|_| {})
            .await
            .unwrap();

        assert_eq!((report.succeeded, report.reused), (2, 1));
        assert_eq!((provider.calls_for("mug"), provider.calls_for("cup")), (1, 0));
        let regenerated = std::fs::read(images.join("A1.png")).unwrap();
        assert!(imagepipe::domain::image_format::inspect(&regenerated).is_ok());
        assert_eq!(std::fs::read(images.join("A2.png")).unwrap(), whole);
        // The report and results.csv say the broken file was replaced.
        let replaced: Vec<u64> = report
            .images
            .iter()
            .filter(|i| i.replaced_broken)
            .map(|i| i.row)
            .collect();
        assert_eq!(replaced, vec![1]);
        let results = std::fs::read_to_string(report.results.as_deref().unwrap()).unwrap();
        assert!(
            results.contains("replaced a broken file at the image's key"),
            "{results}"
        );
    }

    #[tokio::test]
    async fn a_provider_answer_with_a_valid_header_and_garbage_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut lying = render_png(8, 8, b"x").unwrap()[..33].to_vec();
        lying.extend_from_slice(&[0x55; 2000]);
        let script = imagepipe::providers::testing::Script::Body(Bytes::from(lying));
        let provider = Arc::new(ScriptedProvider::default().on("mug", script));

        let report = local_run(write_csv(dir.path()), dir.path().join("out"), provider)
            .run(|_| {})
            .await
            .unwrap();

        assert_eq!((report.succeeded, report.failed), (1, 1));
        assert!(
            report.failures[0].reason.contains("a corrupt png"),
            "{}",
            report.failures[0].reason
        );
        assert!(!dir.path().join("out/images/product/A1.png").exists());
    }
    /// Answers a tiny PNG, except for prompts with `hang_on`: those cancel `interrupt` and never answer.
    struct Hanging {
        hang_on: &'static str,
        interrupt: imagepipe::drivers::local::CancellationToken,
    }

    #[async_trait::async_trait]
    impl ImageProvider for Hanging {
        fn name(&self) -> &str {
            "hanging"
        }

        async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
            if request.prompt.contains(self.hang_on) {
                self.interrupt.cancel();
                std::future::pending::<()>().await;
            }
            Tiny {
                calls: AtomicU32::new(1),
                on_first_call: Box::new(|| {}),
            }
            .generate(request)
            .await
        }
    }

    #[tokio::test]
    async fn an_interrupted_run_abandons_the_call_in_flight_and_writes_an_interrupted_report() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("in.csv"),
            "sku,name,color\nA1,mug,red\nA2,cup,blue\nA3,bowl,green\n",
        )
        .unwrap();
        let interrupt = imagepipe::drivers::local::CancellationToken::new();
        let provider = Arc::new(Hanging {
            hang_on: "cup",
            interrupt: interrupt.clone(),
        });
        let run = local_run(dir.path().join("in.csv"), dir.path().join("out"), provider);

        let report = run.run_until(|_| {}, &interrupt).await.unwrap();

        assert_eq!((report.rows, report.succeeded, report.failed), (3, 1, 2));
        let reasons: Vec<&str> = report.failures.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "abandoned: the run was interrupted during the provider call",
                "not attempted: the run was stopped (interrupted with Ctrl-C)"
            ]
        );
        let path = imagepipe::drivers::local::report_path(&run.out_dir, &report.run_id);
        let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(stored["stopped"], "interrupted with Ctrl-C");
    }
}

mod aws {
    //! The AWS path against the emulator: a CSV replaced after its run started is not read.

    use super::support;
    use imagepipe::adapters::s3_store::{S3Csv, S3ObjectStore};
    use imagepipe::usecase::split::CsvSource;

    #[tokio::test]
    async fn a_csv_replaced_after_the_run_started_is_not_read() {
        let clients = support::clients();
        let bucket = support::bucket(&clients).await;
        let put = |body: &'static str| {
            clients
                .s3
                .put_object()
                .bucket(&bucket)
                .key("incoming/product/p.csv")
                .body(body.as_bytes().to_vec().into())
                .send()
        };
        let first = put("sku,name,color\nA1,mug,red\n").await.unwrap();
        let etag = first.e_tag().unwrap().trim_matches('"').to_owned();
        let source = S3Csv::new(
            S3ObjectStore::new(clients.s3.clone(), &bucket),
            "incoming/product/p.csv",
            &etag,
        );
        assert!(source.open_range(0, None).await.is_ok());

        put("sku,name,color\nB1,evil,black\n").await.unwrap();
        let error = source
            .open_range(0, None)
            .await
            .err()
            .expect("the replaced CSV is refused");

        assert!(error.to_string().contains("changed since the run started"), "{error}");
    }
}

#[test]
fn the_functions_refuse_a_cms_url_with_userinfo_at_init_without_showing_it() {
    let vars = [
        ("IMAGEPIPE_BUCKET", "b"),
        ("CMS_BASE_URL", "https://admin:hunter2secret@cms.example.com/?token=abc"),
    ];
    let error = imagepipe::drivers::config::Config::from_lookup(|name| {
        vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("CMS_BASE_URL") && error.contains("without user name or password"),
        "{error}"
    );
    assert!(!error.contains("hunter2") && !error.contains("abc"), "{error}");
}

#[tokio::test]
async fn a_cms_url_with_userinfo_sends_one_authorization_header_the_bearer_token() {
    let cms = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&cms)
        .await;
    let base = cms.uri().replace("http://", "http://admin:hunter2@");

    HttpCms::new(http_client(Duration::from_secs(5)), &base, "cms-token-123456")
        .update_image("A1", "https://cdn/x.png")
        .await
        .unwrap();

    let request = &cms.received_requests().await.unwrap()[0];
    let values: Vec<_> = request.headers.get_all("authorization").iter().collect();
    assert_eq!(values, ["Bearer cms-token-123456"]);
}
