//! `report.html` in a real browser: a local run of a CSV with hostile names, the page loaded in
//! headless Chromium, its DOM checked (the payloads are text, no element or script came from them)
//! and a screenshot taken. Without Chromium the test is skipped, unless `CI` is set: then it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";
const CSV: &str = "sku,name,color\n\
    H1,<img src=x onerror=alert(1)>,red\n\
    H2,\"</script><script>document.title='pwned'</script>\",blue\n\
    ,mug,green\n\
    A4,plain mug,white\n";

/// Chromium, `CHROMIUM` or `/usr/bin/chromium`; `None` (the test is skipped) when absent outside CI.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing and CI is set: scripts/chromium installs it",
        path.display()
    );
    eprintln!("skipped: {} is missing (scripts/chromium installs it)", path.display());
    None
}

/// Headless Chromium on `page` with `args`, as root, with nothing reaching out to the network.
fn headless(chromium: &Path, profile: &Path, page: &Path, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("chromium starts");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_hostile_csv(dir: &Path) -> (serde_json::Value, PathBuf) {
    std::fs::write(dir.join("hostile.csv"), CSV).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args([
            "run",
            "hostile.csv",
            "-t",
            "product",
            "--provider",
            "placeholder",
            "--out",
            "out",
            "--json",
        ])
        .current_dir(dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .expect("imagepipe runs");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    (report, dir.join("out/runs").join(run_id).join("report.html"))
}

#[test]
fn hostile_names_show_as_text_in_a_real_browser_and_every_image_loads() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (report, page) = run_hostile_csv(dir.path());
    assert_eq!(
        (report["succeeded"].as_u64(), report["invalid"].as_u64()),
        (Some(3), Some(1))
    );
    let run_id = report["run_id"].as_str().unwrap();

    let profile = tempfile::tempdir().unwrap();
    let dom = headless(&chromium, profile.path(), &page, &["--dump-dom"]);
    let dom = String::from_utf8(dom.stdout).unwrap();
    let tags = without_attribute_values(&dom);
    assert!(
        dom.contains(&format!("<title>imagepipe run {run_id}</title>")),
        "the title is untouched: {dom}"
    );
    assert!(!tags.contains("<script"), "no script element: {dom}");
    assert_eq!(
        tags.matches("<img ").count(),
        3,
        "one <img> per image, none from the payload: {dom}"
    );
    assert_eq!(
        dom.matches("<img loading=\"lazy\" src=\"../../images/product/").count(),
        3
    );
    assert!(
        dom.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{HOSTILE_NAME} is text: {dom}"
    );
    assert!(
        dom.contains("&lt;/script&gt;&lt;script&gt;document.title='pwned'"),
        "{dom}"
    );
    assert!(dom.contains("<dd id=\"succeeded\">3</dd>") && dom.contains("<dd id=\"invalid\">1</dd>"));
    assert_eq!(dom.matches("<tr class=\"invalid\">").count(), 1);

    let shots = tempfile::tempdir().unwrap();
    let screenshot = |name: &str| {
        let path = shots.path().join(name);
        let args = ["--window-size=1280,2000", "--hide-scrollbars"];
        let shot = format!("--screenshot={}", path.display());
        headless(
            &chromium,
            profile.path(),
            &page,
            &[&args[..], &[shot.as_str()]].concat(),
        );
        broken_thumbnail_pixels(&std::fs::read(&path).expect("a screenshot"))
    };
    let missing = screenshot("report.png");
    assert!(
        missing < 2_000,
        "{missing} pixels of empty thumbnail (#eee): an image did not load"
    );
    // The check sees a missing image.
    std::fs::remove_file(dir.path().join("out/images/product/A4.png")).unwrap();
    let missing = screenshot("one-missing.png");
    assert!(missing > 10_000, "a missing image shows as {missing} grey pixels");
}

/// The DOM's markup with every quoted attribute value emptied: only real elements are left to count.
fn without_attribute_values(dom: &str) -> String {
    let (mut out, mut in_tag, mut in_value) = (String::with_capacity(dom.len()), false, false);
    for c in dom.chars() {
        match c {
            '"' if in_tag => in_value = !in_value,
            '<' if !in_value => in_tag = true,
            '>' if !in_value => in_tag = false,
            _ => {}
        }
        if !in_value || c == '"' {
            out.push(c);
        }
    }
    out
}

/// Pixels of the thumbnails' grey background, which shows only where an image did not load.
fn broken_thumbnail_pixels(png: &[u8]) -> usize {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
    let mut data = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut data).unwrap();
    let channels = info.color_type.samples();
    assert!(info.width == 1280 && channels >= 3, "{info:?}");
    data[..info.buffer_size()]
        .chunks_exact(channels)
        .filter(|p| p[..3] == [0xee, 0xee, 0xee])
        .count()
}
