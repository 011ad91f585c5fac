//! `results.csv`: one line per row of the run (row, key, status, image, reason, attempts, cost),
//! written in row order as the rows are read back, never held whole.

use crate::domain::events::Outcome;
use crate::domain::rows::InvalidRow;

/// The first line of `results.csv`.
pub const HEADER: &str = "row,key,status,image,reason,attempts,cost_usd\n";

/// A cell as CSV: quoted when needed, and a leading `=`, `+`, `-`, `@`, tab or CR prefixed with `'`
/// so that a spreadsheet shows it as text instead of running it as a formula.
pub fn cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Appends the line of a row with an outcome; `image_url` says where an image is.
pub fn outcome_line(out: &mut String, outcome: &Outcome, image_url: &str) {
    let line = match outcome {
        Outcome::Succeeded { image, cms } => {
            let status = if image.reused { "reused" } else { "succeeded" };
            let mut notes = Vec::new();
            if image.replaced_broken {
                notes.push("replaced a broken file at the image's key".to_owned());
            }
            if let Some(Err(reason)) = cms {
                notes.push(format!("CMS not updated: {reason}"));
            }
            let reason = notes.join("; ");
            [
                image.row.to_string(),
                cell(&image.key),
                status.into(),
                cell(image_url),
                cell(&reason),
                String::new(),
                format!("{:.6}", image.cost_usd),
            ]
        }
        Outcome::Failed { failure } => [
            failure.row.to_string(),
            cell(&failure.key),
            "failed".into(),
            String::new(),
            cell(&failure.reason),
            failure.attempts.to_string(),
            "0".into(),
        ],
    };
    out.push_str(&line.join(","));
    out.push('\n');
}

/// Appends the line of an invalid row.
pub fn invalid_line(out: &mut String, invalid: &InvalidRow) {
    let line = [
        invalid.row.to_string(),
        String::new(),
        "invalid".into(),
        String::new(),
        cell(&invalid.reason),
        String::new(),
        "0".into(),
    ];
    out.push_str(&line.join(","));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::report::FailureEntry;

    #[test]
    fn cells_a_spreadsheet_would_run_are_escaped_and_quoted() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("plain"), "plain");
    }

    #[test]
    fn each_row_kind_becomes_one_line_with_its_status() {
        let mut out = String::new();
        let failure = FailureEntry {
            row: 2,
            key: "t/b".into(),
            reason: "refused, twice".into(),
            attempts: 3,
        };
        outcome_line(&mut out, &Outcome::Failed { failure }, "");
        invalid_line(
            &mut out,
            &InvalidRow {
                row: 3,
                reason: "column \"sku\" is empty".into(),
            },
        );
        assert_eq!(
            out,
            "2,t/b,failed,,\"refused, twice\",3,0\n3,,invalid,,\"column \"\"sku\"\" is empty\",,0\n"
        );
    }
}
