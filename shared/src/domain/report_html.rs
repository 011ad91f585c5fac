//! `report.html`: the run as one self-contained page — summary, a thumbnail per image, failures
//! grouped by class, invalid rows. Inline CSS, no script, a Content-Security-Policy that allows only
//! the images; everything that comes from the CSV or a provider is escaped. Rendering is a pure
//! function of the report and the first [`SHOWN`] entries of each list (collected by [`Shown`]).

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use crate::domain::events::Outcome;
use crate::domain::failure_class::FailureClass;
use crate::domain::report::{FailureEntry, ImageEntry, RunReport};
use crate::domain::rows::InvalidRow;

/// Entries shown per list; the rest are counted and in `results.csv`.
pub const SHOWN: usize = 1000;

/// The first [`SHOWN`] images, failures and invalid rows of a run fed in row order, and the count of
/// failures per class over all of them. Bounded memory whatever the run's size.
#[derive(Debug, Default)]
pub struct Shown {
    pub images: Vec<ImageEntry>,
    pub failures: Vec<FailureEntry>,
    pub invalid: Vec<InvalidRow>,
    classes: BTreeMap<FailureClass, u64>,
}

impl Shown {
    /// The first of `outcomes` and `invalid`, both in row order.
    pub fn of(outcomes: &[Outcome], invalid: &[InvalidRow]) -> Self {
        let mut shown = Self::default();
        outcomes.iter().for_each(|o| shown.outcome(o));
        invalid.iter().for_each(|i| shown.invalid(i));
        shown
    }

    pub fn image(&mut self, image: &ImageEntry) {
        if self.images.len() < SHOWN {
            self.images.push(image.clone());
        }
    }

    pub fn failure(&mut self, failure: &FailureEntry) {
        *self.classes.entry(FailureClass::of(&failure.reason)).or_default() += 1;
        if self.failures.len() < SHOWN {
            self.failures.push(failure.clone());
        }
    }

    /// An image or a failure.
    pub fn outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Succeeded { image, .. } => self.image(image),
            Outcome::Failed { failure } => self.failure(failure),
        }
    }

    pub fn invalid(&mut self, invalid: &InvalidRow) {
        if self.invalid.len() < SHOWN {
            self.invalid.push(invalid.clone());
        }
    }
}

/// What the page is made of.
pub struct Page<'a> {
    pub report: &'a RunReport,
    pub shown: &'a Shown,
    /// Where the browser loads an image from: a path relative to the report, a public or presigned URL.
    pub image_url: &'a dyn Fn(&ImageEntry) -> String,
    /// Where `results.csv` is, as a link from the page.
    pub results_link: &'a str,
    /// The catalog's batch-API price per image of the run's model, when it has one.
    pub batch_price_per_image: Option<f64>,
}

/// Text escaped for HTML content and attribute values.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// An object key as a URL path: every byte but unreserved characters and `/` percent-encoded.
pub fn url_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The URL of an image relative to a local report (`runs/<run_id>/report.html` beside `images/`).
pub fn relative_image_url(image: &ImageEntry) -> String {
    format!("../../{}", url_path(&image.object_key))
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px}h2{font-size:17px;margin-top:28px}h3{font-size:15px}\
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{color:#666}dd{margin:0}\
.grid{display:flex;flex-wrap:wrap;gap:8px}.thumb{width:160px}\
.thumb img{width:160px;height:160px;object-fit:cover;background:#eee;display:block}\
.thumb summary{list-style:none;cursor:pointer}.key{font-size:12px;word-break:break-all}.thumb p{font-size:12px;margin:4px 0;word-break:break-all}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}\
.note{background:#fff4d6;padding:6px 10px}.more{color:#666}";

/// The page.
pub fn render(page: &Page<'_>) -> String {
    let mut out = String::with_capacity(4096 + page.shown.images.len() * 700);
    let urls: Vec<String> = page.shown.images.iter().map(|i| (page.image_url)(i)).collect();
    let r = page.report;
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src {}; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>imagepipe run {}</title><style>{STYLE}</style></head>\n\
         <body><h1>imagepipe run <code>{}</code></h1>",
        image_sources(&urls),
        Esc(&r.run_id),
        Esc(&r.run_id)
    );
    summary(&mut out, page);
    images(&mut out, page, &urls);
    failures(&mut out, page);
    invalid(&mut out, page);
    let _ = writeln!(
        out,
        "<p>Every row: <a id=\"results\" href=\"{}\">results.csv</a></p></body></html>",
        Esc(page.results_link)
    );
    out
}

/// The CSP `img-src` list: `'self'` (and `file:`) for relative URLs, the origin of each absolute one.
fn image_sources(urls: &[String]) -> String {
    let mut sources = std::collections::BTreeSet::new();
    for url in urls {
        match url.split_once("://") {
            Some((scheme, rest)) if matches!(scheme, "http" | "https") => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
                    sources.insert(format!("{scheme}://{host}"));
                }
            }
            Some(_) => {}
            None => {
                sources.insert("'self'".to_owned());
                sources.insert("file:".to_owned());
            }
        }
    }
    if sources.is_empty() {
        return "'none'".into();
    }
    sources.into_iter().collect::<Vec<_>>().join(" ")
}

fn summary(out: &mut String, page: &Page<'_>) {
    let r = page.report;
    let throughput = if r.duration_secs > 0.0 {
        r.succeeded as f64 / r.duration_secs
    } else {
        0.0
    };
    let mut items: Vec<(&str, &str, String)> = vec![
        ("rows", "rows", r.rows.to_string()),
        ("succeeded", "succeeded", r.succeeded.to_string()),
        ("failed", "failed", r.failed.to_string()),
        ("invalid", "invalid", r.invalid.to_string()),
        ("reused", "reused (not generated again)", r.reused.to_string()),
        ("estimated", "estimated cost", format!("${:.4}", r.estimated_cost_usd)),
        ("actual", "actual cost", format!("${:.4}", r.actual_cost_usd)),
    ];
    if let Some(usd) = r.model_estimate_usd {
        items.push(("model-estimate", "on the model's own provider", format!("${usd:.4}")));
    }
    match (r.sync_cost_usd, page.batch_price_per_image) {
        (Some(usd), _) => items.push(("sync", "with synchronous calls", format!("${usd:.4}"))),
        (None, Some(price)) => {
            let generated = r.succeeded.saturating_sub(r.reused) as f64;
            items.push(("batch", "through the batch API", format!("${:.4}", price * generated)));
        }
        (None, None) => {}
    }
    items.extend([
        ("duration", "duration", format!("{:.1} s", r.duration_secs)),
        ("throughput", "throughput", format!("{throughput:.2} images/s")),
        ("template", "template", r.template.clone()),
        ("model", "model", r.model.clone()),
        ("provider", "provider", r.provider.clone()),
        ("source", "source", r.source.clone()),
    ]);
    if r.cms_updated + r.cms_failed > 0 {
        let cms = format!("{} updated, {} failed", r.cms_updated, r.cms_failed);
        items.push(("cms", "CMS", cms));
    }
    out.push_str("<h2>Summary</h2><dl id=\"summary\">");
    for (id, label, value) in items {
        let _ = write!(out, "<dt>{label}</dt><dd id=\"{id}\">{}</dd>", Esc(&value));
    }
    out.push_str("</dl>\n");
    for (what, reason) in [("Rejected, nothing generated", &r.rejected), ("Stopped", &r.stopped)] {
        if let Some(reason) = reason {
            let _ = writeln!(out, "<p class=\"note\">{what}: {}</p>", Esc(reason));
        }
    }
}

fn images(out: &mut String, page: &Page<'_>, urls: &[String]) {
    let images = &page.shown.images;
    let _ = writeln!(
        out,
        "<h2>Images ({})</h2><div class=\"grid\" id=\"images\">",
        page.report.succeeded
    );
    for (image, url) in images.iter().zip(urls) {
        let prompt = image.prompt.as_str();
        let title = format!("row {} · {}\n{prompt}", image.row, image.key);
        let size = match (image.width, image.height) {
            (Some(w), Some(h)) => format!("{w}×{h}, "),
            _ => String::new(),
        };
        let reused = if image.reused { ", reused" } else { "" };
        let _ = writeln!(
            out,
            "<details class=\"thumb\" title=\"{}\"><summary><img loading=\"lazy\" src=\"{}\" alt=\"{}\">\
             <span class=\"key\">{}</span></summary><p>row {}</p><p>{size}{} bytes{reused}</p><p class=\"prompt\">{}</p></details>",
            Esc(&title),
            Esc(url),
            Esc(&image.key),
            Esc(&image.key),
            image.row,
            image.bytes,
            Esc(prompt)
        );
    }
    out.push_str("</div>\n");
    more(out, page.report.succeeded, images.len(), "images", page.results_link);
}

fn failures(out: &mut String, page: &Page<'_>) {
    let r = page.report;
    let _ = writeln!(out, "<h2>Failures ({})</h2>", r.failed);
    for class in FailureClass::ALL {
        let count = page.shown.classes.get(&class).copied().unwrap_or_default();
        if count == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "<h3 id=\"class-{}\">{} ({count})</h3><table><tr><th>row</th><th>key</th><th>reason</th><th>attempts</th></tr>",
            class.id(),
            class.label()
        );
        for f in page
            .shown
            .failures
            .iter()
            .filter(|f| FailureClass::of(&f.reason) == class)
        {
            let _ = writeln!(
                out,
                "<tr class=\"failure\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.row,
                Esc(&f.key),
                Esc(&f.reason),
                f.attempts
            );
        }
        out.push_str("</table>\n");
    }
    more(out, r.failed, page.shown.failures.len(), "failures", page.results_link);
}

fn invalid(out: &mut String, page: &Page<'_>) {
    let r = page.report;
    let _ = writeln!(out, "<h2>Invalid rows ({})</h2>", r.invalid);
    if !page.shown.invalid.is_empty() {
        out.push_str("<table><tr><th>row</th><th>column and reason</th></tr>\n");
        for i in &page.shown.invalid {
            let _ = writeln!(
                out,
                "<tr class=\"invalid\"><td>{}</td><td>{}</td></tr>",
                i.row,
                Esc(&i.reason)
            );
        }
        out.push_str("</table>\n");
    }
    more(
        out,
        r.invalid,
        page.shown.invalid.len(),
        "invalid rows",
        page.results_link,
    );
}

/// "…and N more" when a list was cut.
fn more(out: &mut String, total: u64, shown: usize, what: &str, results: &str) {
    let rest = total.saturating_sub(shown as u64);
    if rest > 0 {
        let _ = writeln!(
            out,
            "<p class=\"more\">…and {rest} more {what}, in <a href=\"{}\">results.csv</a></p>",
            Esc(results)
        );
    }
}

#[cfg(test)]
#[path = "report_html_tests.rs"]
mod tests;
