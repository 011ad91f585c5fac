//! The AnyCap provider against a stand-in executable that behaves like the documented CLI.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use imagepipe::domain::template::ImageSize;
use imagepipe::providers::anycap::AnyCapProvider;
use imagepipe::providers::placeholder::render_png;
use imagepipe::providers::{ImageProvider, ImageRequest, ProviderError};

/// Writes `anycap` into `dir`: it parses the documented flags, logs them, and answers by prompt.
fn stand_in(dir: &Path) -> std::path::PathBuf {
    let fixture = dir.join("fixture.png");
    std::fs::write(&fixture, render_png(16, 16, b"anycap").unwrap()).unwrap();
    let script = format!(
        r#"#!/usr/bin/env bash
[ "$1 $2" = "image generate" ] || {{ echo '{{"status":"error","error":"unknown command"}}'; exit 2; }}
shift 2
while [ $# -gt 0 ]; do
  case "$1" in
    --prompt) prompt=$2; shift 2;; --model) model=$2; shift 2;; -o) out=$2; shift 2;;
    --mode) mode=$2; shift 2;; --param) param=$2; shift 2;; *) shift;;
  esac
done
echo "$model|$mode|$param" >> "{log}"
case "$prompt" in
  *auth*) echo '{{"status":"error","error":"unauthorized: run anycap login"}}'; exit 1;;
  *busy*) echo '{{"status":"error","error":"rate limit exceeded, try later"}}'; exit 1;;
  *nsfw*) echo '{{"status":"error","error":"prompt violates the content policy"}}'; exit 1;;
  *slow*) sleep 5;;
esac
cp "{fixture}" "$out.png"
printf '{{"status":"success","local_path":"%s","credits_used":4,"request_id":"req-1"}}\n' "$out.png"
"#,
        log = dir.join("calls.log").display(),
        fixture = fixture.display()
    );
    let bin = dir.join("anycap");
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn request(prompt: &str, references: Vec<String>) -> ImageRequest {
    ImageRequest {
        provider_model: "nano-banana-2".into(),
        quality: None,
        key: "product/SKU-1".into(),
        prompt: prompt.into(),
        size: ImageSize {
            width: 1024,
            height: 1024,
        },
        references,
        seed: 1,
        timeout: Duration::from_millis(1500),
    }
}

#[tokio::test]
async fn success_returns_the_file_named_by_local_path_and_passes_the_documented_flags() {
    let dir = tempfile::tempdir().unwrap();
    let provider = AnyCapProvider::new(stand_in(dir.path()));
    let image = provider.generate(&request("a red mug", vec![])).await.unwrap();
    assert_eq!(image.usage.credits, Some(4.0));
    assert!(image.bytes.starts_with(b"\x89PNG"));
    assert_eq!(image.request_id.as_deref(), Some("req-1"));

    let refs = vec!["https://x/a.png".to_owned(), "https://x/b.png".to_owned()];
    provider.generate(&request("restyle", refs)).await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    assert_eq!(
        log,
        "nano-banana-2||\nnano-banana-2|image-to-image|images=https://x/a.png,https://x/b.png\n"
    );
}

#[tokio::test]
async fn failures_are_sorted_into_retry_fail_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let provider = AnyCapProvider::new(stand_in(dir.path()));
    let outcome = |prompt: &'static str| {
        let provider = provider.clone();
        async move { provider.generate(&request(prompt, vec![])).await.unwrap_err() }
    };
    assert!(matches!(
        outcome("auth please").await,
        ProviderError::Unauthorized { .. }
    ));
    assert!(matches!(outcome("busy now").await, ProviderError::RateLimited { .. }));
    let refused = outcome("nsfw").await;
    assert_eq!(
        refused,
        ProviderError::Rejected {
            message: "anycap: prompt violates the content policy".into()
        }
    );
    assert!(outcome("slow").await.to_string().contains("timed out"));
    let missing = AnyCapProvider::new(dir.path().join("not-installed"))
        .generate(&request("x", vec![]))
        .await;
    assert!(missing.unwrap_err().to_string().contains("IMAGEPIPE_ANYCAP_BIN"));
}
