//! Reading a finished batch: the Gemini batch client and the batch use case against a results file
//! of ROWS lines, each a ~1.4 MiB base64 PNG (a 600×600 noise image, as large as real ones), served
//! by `batch-serve` in its own process and generated as it is sent, so only this process's memory
//! is measured. Peak RSS at two sizes shows whether it grows with the batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use imagepipe::adapters::fs_store::FsObjectStore;
use imagepipe::adapters::http_publish::http_client;
use imagepipe::adapters::memory_queue::MemoryQueue;
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::job::Job;
use imagepipe::domain::locations::Locations;
use imagepipe::domain::template::ImageSize;
use imagepipe::ports::ledger::Checkpoint;
use imagepipe::ports::store::{NewObject, ObjectStore};
use imagepipe::providers::HttpProvider;
use imagepipe::providers::gemini_batch::GeminiBatch;
use imagepipe::usecase::batch::{BatchApis, BatchRecord, Batches, keys};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Error, peak_rss_kib};

const RUN: &str = "run-bench0000000000";

/// A PNG of random pixels (it does not compress): the size of a real 1K image.
fn noise_png() -> Vec<u8> {
    let (width, height) = (600u32, 600u32);
    let pixels: Vec<u8> = (0..width * height * 3).map(|_| rand::random::<u8>()).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().expect("png header");
    writer.write_image_data(&pixels).expect("png data");
    writer.finish().expect("png end");
    out
}

/// Serves a finished batch `batches/bN` of N result lines until killed; prints its URL first.
pub async fn serve() -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    let data = Arc::new(base64::engine::general_purpose::STANDARD.encode(noise_png()));
    loop {
        let (stream, _) = listener.accept().await?;
        let data = data.clone();
        tokio::spawn(async move {
            let _ = answer(stream, &data).await;
        });
    }
}

async fn answer(stream: tokio::net::TcpStream, data: &str) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut request = String::new();
    stream.read_line(&mut request).await?;
    loop {
        let mut header = String::new();
        if stream.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let rows = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
    };
    let stream = stream.get_mut();
    if let Some(n) = rows("/v1beta/batches/b") {
        let file = format!("files/batch-{n}");
        let body = json!({"name": format!("batches/b{n}"), "done": true,
            "metadata": {"state": "BATCH_STATE_SUCCEEDED", "batchStats": {"requestCount": n.to_string()}},
            "response": {"responsesFile": file}})
        .to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        return stream.write_all(body.as_bytes()).await;
    }
    if let Some(n) = rows("/download/v1beta/files/batch-") {
        // No length: the body ends when the connection closes, each line made as it is sent.
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/jsonl\r\nconnection: close\r\n\r\n")
            .await?;
        for row in 1..=n {
            let head = format!(
                r#"{{"key":"{row}","response":{{"candidates":[{{"content":{{"role":"model","parts":[{{"inlineData":{{"mimeType":"image/png","data":""#
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(data.as_bytes()).await?;
            stream.write_all(b"\"}}]},\"finishReason\":\"STOP\"}]}}\n").await?;
        }
        return stream.shutdown().await;
    }
    stream
        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
}

/// Reads the finished batch of `rows` results into a store on disk.
pub async fn collect(rows: u64) -> Result<(), Error> {
    let base = std::env::var("BATCH_STAND_IN").map_err(|_| "BATCH_STAND_IN (batch-serve's URL) is not set")?;
    let dir = tempfile::tempdir()?;
    let store = FsObjectStore::new(dir.path());
    let model = Catalog::builtin().model("nano-banana")?.clone();
    let mut jobs = String::new();
    for row in 1..=rows {
        let job = Job {
            run_id: RUN.into(),
            row,
            key: imagepipe::domain::key::ObjectKey::parse(&format!("product/SKU-{row:07}"))?,
            cms_id: format!("SKU-{row:07}"),
            prompt: format!("Studio photo of product {row}"),
            model: "nano-banana".into(),
            size: ImageSize::parse("1024x1024").ok_or("size")?,
            references: vec![],
        };
        jobs.push_str(&serde_json::to_string(&job)?);
        jobs.push('\n');
    }
    let object = |body: Vec<u8>| NewObject {
        body: body.into(),
        content_type: "application/json".into(),
        cache_control: None,
        metadata: vec![],
    };
    store.put(&keys::jobs(RUN, 0), object(jobs.into_bytes())).await?;
    let record = BatchRecord {
        run_id: RUN.into(),
        chunk: 0,
        name: BatchRecord::name_of(RUN, 0),
        provider: "gemini".into(),
        model: "nano-banana".into(),
        model_entry: model,
        to: Checkpoint::default(),
        requests: rows,
        id: Some(format!("batches/b{rows}")),
        created_at_ms: 0,
        state: None,
        failed: vec![],
        sync_rows: vec![],
        cancelled: false,
    };
    store
        .put(&keys::open(RUN, 0), object(serde_json::to_vec(&record)?))
        .await?;
    let api = GeminiBatch::new(http_client(Duration::from_secs(600)), &base, "bench-key");
    let batches = Batches {
        store,
        apis: BatchApis::with(Arc::new(api)),
        jobs: MemoryQueue::new(),
        events: MemoryQueue::new(),
        locations: Locations::dir(dir.path(), None),
        retry_failed: true,
        replay_done: false,
    };
    // The ceiling: the same results read and thrown away, with nothing done with them.
    let client = http_client(Duration::from_secs(600));
    let started = Instant::now();
    let mut download = (client.get(format!("{base}/download/v1beta/files/batch-{rows}:download?alt=media")))
        .send()
        .await?;
    let mut bytes = 0u64;
    while let Some(chunk) = download.chunk().await? {
        bytes += chunk.len() as u64;
    }
    let ceiling = bytes as f64 / started.elapsed().as_secs_f64() / 1_048_576.0;
    let rss_before = peak_rss_kib();
    let started = Instant::now();
    let progress = batches.poll(RUN, u64::MAX, false).await?;
    let wall = started.elapsed().as_secs_f64();
    let made = batches.events.sent().len() as u64;
    assert_eq!((progress.collected, made), (1, rows), "every row's outcome sent");
    assert!(batches.jobs.sent().is_empty(), "no row went the synchronous way");
    let achieved = bytes as f64 / wall / 1_048_576.0;
    println!(
        "{}",
        json!({"bench": "batch-collect", "rows": rows, "results_mib": bytes as f64 / 1_048_576.0, "wall_s": wall,
               "images_per_s": rows as f64 / wall, "results_mib_per_s": achieved,
               "download_only_mib_per_s": ceiling, "efficiency": achieved / ceiling,
               "peak_rss_kib_before": rss_before, "peak_rss_kib": peak_rss_kib()})
    );
    Ok(())
}
