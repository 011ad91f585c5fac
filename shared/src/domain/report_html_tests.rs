use super::*;
use crate::domain::report::ReportBuilder;

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn image(row: u64, key: &str, prompt: &str) -> ImageEntry {
    ImageEntry {
        prompt: prompt.into(),
        ..ImageEntry::example(row, key, "out")
    }
}

/// Asserts `html` contains each of `expected`.
fn contains_all(html: &str, expected: &[&str]) {
    for text in expected {
        assert!(html.contains(text), "{text} missing");
    }
}

fn failure(row: u64, reason: &str) -> FailureEntry {
    FailureEntry {
        row,
        key: format!("t/row-{row}"),
        reason: reason.into(),
        attempts: 1,
    }
}

/// A run fed the way the report writers feed it: every row through both the builder and `Shown`.
fn run(images: Vec<ImageEntry>, failures: Vec<FailureEntry>, invalid: Vec<InvalidRow>) -> (RunReport, Shown) {
    let mut builder = ReportBuilder::new("run-1", "in.csv", "t", "gemini-2.5-flash-image", "gemini", 0.5);
    let mut shown = Shown::default();
    for i in images {
        shown.image(&i);
        builder.image(i);
    }
    for f in failures {
        shown.failure(&f);
        builder.failure(f);
    }
    for i in invalid {
        shown.invalid(&i);
        builder.invalid(i);
    }
    (builder.finish(2.0), shown)
}

fn page(report: &RunReport, shown: &Shown, batch: Option<f64>) -> String {
    render(&Page {
        report,
        shown,
        image_url: &relative_image_url,
        results_link: "results.csv",
        batch_price_per_image: batch,
    })
}

#[test]
fn csv_and_provider_text_is_escaped_everywhere() {
    let images = vec![image(1, "t/a b#1", HOSTILE)];
    let failures = vec![failure(2, "rejected by provider: </script><script>alert(2)</script>")];
    let invalid = vec![InvalidRow {
        row: 3,
        reason: format!("column \"name\": {HOSTILE}"),
    }];
    let (report, shown) = run(images, failures, invalid);
    let html = page(&report, &shown, None);
    assert!(!html.contains("<img src=x"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("</script>"));
    contains_all(
        &html,
        &[
            "&lt;img src=x onerror=alert(1)&gt;",
            "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;",
            "column &quot;name&quot;",
            "src=\"../../images/t/a%20b%231.png\"",
        ],
    );
}

#[test]
fn the_page_allows_only_its_images_and_inline_styles() {
    let (report, shown) = run(vec![image(1, "t/a", "p")], vec![], vec![]);
    let local = page(&report, &shown, None);
    assert!(local.contains("content=\"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'\""));
    let presigned = render(&Page {
        report: &report,
        shown: &shown,
        image_url: &|i| {
            format!(
                "https://b.s3.eu-west-1.amazonaws.com/{}?X-Amz-Signature=1",
                i.object_key
            )
        },
        results_link: "https://b.s3.eu-west-1.amazonaws.com/runs/run-1/results.csv",
        batch_price_per_image: None,
    });
    assert!(presigned.contains("img-src https://b.s3.eu-west-1.amazonaws.com;"));
    assert!(page(&run(vec![], vec![], vec![]).0, &Shown::default(), None).contains("img-src 'none';"));
}

#[test]
fn failures_are_grouped_by_class_with_counts_and_reasons() {
    let failures = vec![
        failure(1, "rejected by provider: content policy"),
        failure(2, "rate limited: quota (gave up after 4 attempts)"),
        failure(3, "rejected by provider: no image"),
        failure(4, "provider returned an HTML page, not a PNG, JPEG or WebP image"),
    ];
    let (report, shown) = run(vec![], failures, vec![]);
    let html = page(&report, &shown, None);
    contains_all(
        &html,
        &[
            "<h2>Failures (4)</h2>",
            "<h3 id=\"class-refused\">refused by the provider (2)</h3>",
            "<h3 id=\"class-rate_limited\">rate limited (1)</h3>",
            "<h3 id=\"class-not_an_image\">not an image (1)</h3>",
        ],
    );
    assert!(!html.contains("class-provider_down"));
    let refused = html.find("class-refused").unwrap();
    let limited = html.find("class-rate_limited").unwrap();
    let no_image = html.find("no image").unwrap();
    assert!(refused < no_image && no_image < limited);
}

#[test]
fn the_summary_has_counts_costs_throughput_and_the_batch_price() {
    let images = vec![image(1, "t/a", "p"), image(2, "t/b", "q")];
    let invalid = vec![InvalidRow {
        row: 3,
        reason: "column \"sku\" is empty".into(),
    }];
    let (report, shown) = run(images, vec![failure(4, "x")], invalid);
    let html = page(&report, &shown, Some(0.0195));
    for expected in [
        "<dd id=\"rows\">4</dd>",
        "<dd id=\"succeeded\">2</dd>",
        "<dd id=\"failed\">1</dd>",
        "<dd id=\"invalid\">1</dd>",
        "<dd id=\"estimated\">$0.5000</dd>",
        "<dd id=\"actual\">$0.0800</dd>",
        "<dd id=\"batch\">$0.0390</dd>",
        "<dd id=\"throughput\">1.00 images/s</dd>",
        "<dd id=\"model\">gemini-2.5-flash-image</dd>",
    ] {
        assert!(html.contains(expected), "{expected} missing");
    }
    assert!(!page(&report, &shown, None).contains("id=\"batch\""));
}

#[test]
fn a_big_run_shows_the_first_thousand_and_counts_the_rest() {
    let images = (1..=1500).map(|r| image(r, &format!("t/{r}"), "p")).collect();
    let failures = (1501..=2700).map(|r| failure(r, "provider unavailable: 503")).collect();
    let (report, shown) = run(images, failures, vec![]);
    let html = page(&report, &shown, None);
    assert_eq!(html.matches("<img ").count(), SHOWN);
    assert_eq!(html.matches("<tr class=\"failure\">").count(), SHOWN);
    contains_all(
        &html,
        &[
            "<h3 id=\"class-provider_down\">provider down (1200)</h3>",
            "…and 500 more images, in <a href=\"results.csv\">results.csv</a>",
            "…and 200 more failures, in <a href=\"results.csv\">results.csv</a>",
        ],
    );
}

#[test]
fn each_thumbnail_has_its_key_row_and_prompt_on_hover_and_click() {
    let (report, shown) = run(vec![image(7, "t/mug", "Photo of a \"mug\"")], vec![], vec![]);
    let html = page(&report, &shown, None);
    contains_all(
        &html,
        &[
            "title=\"row 7 · t/mug\nPhoto of a &quot;mug&quot;\"",
            "<img loading=\"lazy\" src=\"../../images/t/mug.png\" alt=\"t/mug\">",
            "<p class=\"prompt\">Photo of a &quot;mug&quot;</p>",
        ],
    );
}
