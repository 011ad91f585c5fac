//! Streaming CSV ingest: one row at a time, each either a rendered job or an invalid row with a reason.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::io::Read;

use crate::domain::key::{ObjectKey, check_part};
use crate::domain::record_limit::RecordLimit;
use crate::domain::template::{BoundTemplate, Template, TemplateError};
use crate::providers::fetch::MAX_REFERENCES_PER_ROW;

/// Largest row accepted, in bytes; larger rows are invalid (they would not fit a queue message).
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// Raw bytes of one record the parser may buffer (quotes and `""` escapes make a valid row's raw
/// form up to about twice its size); the rest of a longer record is skipped unread into memory.
pub const MAX_RECORD_BYTES: usize = 4 * MAX_ROW_BYTES;
/// Largest rendered prompt, in bytes (OpenAI's limit is 32,000 characters; a placeholder repeated
/// in a template must not turn a row into megabytes).
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;

/// Longest CMS id, in bytes.
pub const MAX_CMS_ID_BYTES: usize = 512;

/// A CMS id goes into a URL path: not empty, not huge, no control characters.
fn check_cms_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("cms_id is empty".into());
    }
    if id.len() > MAX_CMS_ID_BYTES {
        return Err(format!("cms_id is {} bytes; at most {MAX_CMS_ID_BYTES}", id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err("cms_id has a control character".into());
    }
    Ok(())
}

/// A problem with the whole file: nothing is generated.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("{file}: the file is empty (expected a header row)")]
    Empty { file: String },
    #[error("{file}: has a header but no data rows")]
    NoRows { file: String },
    #[error("{file}: not UTF-8 text (data row {row}, line {line}); save it as UTF-8 and upload it again")]
    NotUtf8 { file: String, row: u64, line: u64 },
    #[error("{file}: cannot be read as CSV at line {line}: {message}")]
    Malformed { file: String, line: u64, message: String },
    #[error("{file}: {error}")]
    Template { file: String, error: TemplateError },
}

/// A row that will be generated.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRow {
    /// 1-based data row (header excluded).
    pub row: u64,
    /// `<template>/<rendered key>`.
    pub key: ObjectKey,
    /// What the CMS knows the row's item by.
    pub cms_id: String,
    pub prompt: String,
    pub references: Vec<String>,
}

/// A row that will not be generated, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvalidRow {
    pub row: u64,
    pub reason: String,
}

/// One data row's fate.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Valid(RenderedRow),
    Invalid(InvalidRow),
}

/// Reads rows from a CSV stream and renders them with a template. Holds one row at a time, plus
/// two 8-byte digests per key seen (to refuse two rows writing the same object).
pub struct RowReader<R: Read> {
    reader: csv::Reader<RecordLimit<R>>,
    file: String,
    bound: BoundTemplate,
    header_len: usize,
    record: csv::StringRecord,
    row: u64,
    /// Digest of the lowercased key → (row, digest of the key as written).
    keys: HashMap<u64, (u64, u64)>,
    hasher: RandomState,
}

impl<R: Read> RowReader<R> {
    /// Reads the header of `input` and binds `template` to it. `file` names the input in errors.
    pub fn open(input: R, file: &str, template: &Template) -> Result<Self, CsvError> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(RecordLimit::new(input, MAX_RECORD_BYTES));
        let header = match reader.headers() {
            Ok(h) => h.iter().map(|c| c.trim().to_owned()).collect::<Vec<_>>(),
            Err(e) => return Err(whole_file_error(file, 0, e)),
        };
        if header.is_empty() || header.iter().all(String::is_empty) {
            return Err(CsvError::Empty { file: file.to_owned() });
        }
        let bound = template.bind(&header).map_err(|error| CsvError::Template {
            file: file.to_owned(),
            error,
        })?;
        Ok(Self {
            reader,
            file: file.to_owned(),
            bound,
            header_len: header.len(),
            record: csv::StringRecord::new(),
            row: 0,
            keys: HashMap::new(),
            hasher: RandomState::new(),
        })
    }

    /// The next row, `None` at the end of the file, or a whole-file error.
    pub fn next_row(&mut self) -> Option<Result<RowOutcome, CsvError>> {
        let cut_before = self.reader.get_ref().records_cut();
        match self.reader.read_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) if self.reader.get_ref().records_cut() > cut_before => {
                self.row += 1;
                Some(Ok(RowOutcome::Invalid(InvalidRow {
                    row: self.row,
                    reason: format!("row is over {MAX_RECORD_BYTES} bytes; rows are limited to {MAX_ROW_BYTES} bytes"),
                })))
            }
            Ok(true) => {
                self.row += 1;
                Some(Ok(self.check_record()))
            }
            Err(e) => Some(Err(whole_file_error(&self.file, self.row + 1, e))),
        }
    }

    fn check_record(&mut self) -> RowOutcome {
        let row = self.row;
        let rendered = match self.render() {
            Ok(rendered) => rendered,
            Err(reason) => return RowOutcome::Invalid(InvalidRow { row, reason }),
        };
        // Keys equal ignoring ASCII case collide on case-insensitive file systems and some CDNs.
        let key = rendered.key.as_str();
        let exact = self.hasher.hash_one(key);
        match self.keys.entry(self.hasher.hash_one(key.to_ascii_lowercase())) {
            Entry::Occupied(first) => RowOutcome::Invalid(InvalidRow {
                row,
                reason: collision(key, *first.get(), exact),
            }),
            Entry::Vacant(slot) => {
                slot.insert((row, exact));
                RowOutcome::Valid(rendered)
            }
        }
    }

    fn render(&self) -> Result<RenderedRow, String> {
        let record = &self.record;
        let size = record.as_slice().len();
        if size > MAX_ROW_BYTES {
            return Err(format!(
                "row is {size} bytes; rows are limited to {MAX_ROW_BYTES} bytes"
            ));
        }
        if record.len() != self.header_len {
            return Err(format!(
                "has {} fields, the header has {}",
                record.len(),
                self.header_len
            ));
        }
        let value = |placeholder: &str| -> Result<&str, String> {
            let (column, index) = self
                .bound
                .column(placeholder)
                .ok_or_else(|| format!("no column for {placeholder}"))?;
            match record.get(index).map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("column {column:?} is empty")),
            }
        };
        let template = &self.bound.template;
        let filled = std::cell::Cell::new(0usize);
        let too_long = || format!("the prompt would be over {MAX_PROMPT_BYTES} bytes");
        let prompt = template.prompt.render(|p| {
            let v = value(p)?;
            filled.set(filled.get() + v.len());
            if filled.get() > MAX_PROMPT_BYTES {
                return Err(too_long());
            }
            Ok(v.to_owned())
        })?;
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(too_long());
        }
        let key = template.key.render(|p| {
            let v = value(p)?;
            check_part(v).map_err(|e| format!("column {:?}: key {e}", self.bound.column(p).map_or(p, |c| c.0)))?;
            Ok::<_, String>(v.to_owned())
        })?;
        let key = ObjectKey::parse(&format!("{}/{key}", template.name)).map_err(|e| format!("key {e}"))?;
        let cms_id = template.cms_id.render(|p| value(p).map(str::to_owned))?;
        check_cms_id(&cms_id)?;
        let references = match self.bound.source_image_column() {
            Some((column, index)) => parse_references(column, record.get(index).unwrap_or(""))?,
            None => Vec::new(),
        };
        Ok(RenderedRow {
            row: self.row,
            key,
            cms_id,
            prompt,
            references,
        })
    }

    /// Data rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.row
    }

    /// Byte offset, in the input, of the next record (just past the header before any row is read).
    pub fn next_offset(&self) -> u64 {
        // Records cut short (see RecordLimit) were not all passed to the parser.
        self.reader.get_ref().input_offset(self.reader.position().byte())
    }

    /// Continues the row count of an earlier reader that had read `rows_read` rows: for an input
    /// that is the header followed by the rest of the file from that reader's offset.
    pub fn resume(mut self, rows_read: u64) -> Self {
        self.row = rows_read;
        self
    }
}

/// Why a key collides with an earlier row's: the same key, or one equal to it ignoring letter case.
fn collision(key: &str, (first_row, first_exact): (u64, u64), exact: u64) -> String {
    if first_exact == exact {
        format!("key {key:?} is already used by row {first_row}")
    } else {
        format!(
            "key {key:?} differs only in letter case from the key of row {first_row}; such keys collide on \
             case-insensitive file systems and CDNs"
        )
    }
}

fn parse_references(column: &str, value: &str) -> Result<Vec<String>, String> {
    let refs: Vec<String> = value
        .split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    if refs.is_empty() {
        return Err(format!(
            "column {column:?} is empty (the template needs a reference image)"
        ));
    }
    if refs.len() > MAX_REFERENCES_PER_ROW {
        return Err(format!(
            "column {column:?}: {} reference images; at most {MAX_REFERENCES_PER_ROW} per row",
            refs.len()
        ));
    }
    match refs
        .iter()
        .find(|r| !["https://", "http://", "s3://"].iter().any(|s| r.starts_with(s)))
    {
        Some(bad) => Err(format!(
            "column {column:?}: {bad:?} is not an http(s):// URL or s3:// URI"
        )),
        None => Ok(refs),
    }
}

fn whole_file_error(file: &str, row: u64, e: csv::Error) -> CsvError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Utf8 { pos, .. } => CsvError::NotUtf8 {
            file: file.to_owned(),
            row,
            line: pos.map_or(line, |p| p.line()),
        },
        other => CsvError::Malformed {
            file: file.to_owned(),
            line,
            message: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::TemplateSet;

    const TEMPLATES: &str = r#"
        [templates.hero]
        prompt = "Photo: {name}, {color}"
        model = "placeholder"
        key = "{sku}"
        [templates.edit]
        prompt = "Restyle {name}"
        model = "placeholder"
        key = "{sku}"
        source_image = "image_url"
        [templates.variant]
        prompt = "Photo: {name} in {color}"
        model = "placeholder"
        key = "{sku}-{color}"
        cms_id = "{product_id}"
    "#;

    fn read_all(csv: &[u8], template: &str) -> Result<Vec<RowOutcome>, CsvError> {
        let set = TemplateSet::from_toml(TEMPLATES, "t.toml").unwrap();
        let mut reader = RowReader::open(csv, "in.csv", set.get(template).unwrap())?;
        std::iter::from_fn(|| reader.next_row()).collect()
    }

    fn valid(outcome: &RowOutcome) -> &RenderedRow {
        match outcome {
            RowOutcome::Valid(row) => row,
            RowOutcome::Invalid(row) => panic!("row {} invalid: {}", row.row, row.reason),
        }
    }

    fn reason(outcome: &RowOutcome) -> &str {
        match outcome {
            RowOutcome::Invalid(row) => &row.reason,
            RowOutcome::Valid(row) => panic!("row {} should be invalid", row.row),
        }
    }

    #[test]
    fn a_reader_resumed_at_an_offset_reads_the_same_rows_with_the_same_numbers() {
        let csv = b"sku,name,color\r\na,x,red\r\nb,\"multi\nline\",green\r\nc,z,blue\r\n";
        let set = TemplateSet::from_toml(TEMPLATES, "t.toml").unwrap();
        let template = set.get("hero").unwrap();
        let mut whole = RowReader::open(&csv[..], "f.csv", template).unwrap();
        let header_end = whole.next_offset() as usize;
        // A record ends before its line feed: the next read starts with it (a CRLF split in two).
        assert!(csv[..header_end].starts_with(b"sku,name,color\r"));
        whole.next_row().unwrap().unwrap();
        let offset = whole.next_offset() as usize;
        let rest: Vec<RowOutcome> = std::iter::from_fn(|| whole.next_row()).map(Result::unwrap).collect();
        let resumed_input = csv[..header_end].chain(&csv[offset..]);
        let mut resumed = RowReader::open(resumed_input, "f.csv", template).unwrap().resume(1);
        let again: Vec<RowOutcome> = std::iter::from_fn(|| resumed.next_row()).map(Result::unwrap).collect();
        assert_eq!(again, rest);
        assert_eq!(valid(&again[0]).row, 2);
        assert_eq!(resumed.next_offset() as usize - header_end + offset, csv.len());
    }

    #[test]
    fn the_cms_id_is_the_key_by_default_or_the_templates_own_pattern() {
        let rows = read_all(b"sku,name,color\nA1,mug,red\n", "hero").unwrap();
        assert_eq!(valid(&rows[0]).cms_id, "A1");
        let csv = b"sku,name,color,product_id\nA1,mug,red,p/17 x\nA2,cup,blue,\n";
        let rows = read_all(csv, "variant").unwrap();
        assert_eq!(valid(&rows[0]).key.as_str(), "variant/A1-red");
        assert_eq!(valid(&rows[0]).cms_id, "p/17 x");
        assert_eq!(reason(&rows[1]), "column \"product_id\" is empty");
        let error = read_all(b"sku,name,color\nA1,mug,red\n", "variant").unwrap_err();
        assert!(error.to_string().contains("product_id"), "{error}");
    }

    #[test]
    fn bom_crlf_and_quoted_multiline_fields_are_read() {
        let csv = "\u{feff}sku,name,color\r\nA1,\"Mug, \"\"large\"\"\",red\r\nA2,\"two\nlines\",blue\r\n";
        let rows = read_all(csv.as_bytes(), "hero").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(valid(&rows[0]).prompt, "Photo: Mug, \"large\", red");
        assert_eq!(valid(&rows[0]).key.as_str(), "hero/A1");
        assert_eq!(valid(&rows[1]).prompt, "Photo: two\nlines, blue");
        assert_eq!(valid(&rows[1]).row, 2);
    }

    #[test]
    fn per_row_problems_make_only_that_row_invalid() {
        let long_sku = "x".repeat(2048);
        let csv = format!(
            "sku,name,color\nA1,mug,red\nA2,mug\nA3,,red\n../x,mug,red\na/b,mug,red\n,mug,red\n{long_sku},mug,red\nA1,cup,blue\nA9,ok,green\n"
        );
        let rows = read_all(csv.as_bytes(), "hero").unwrap();
        assert_eq!(rows.len(), 9);
        assert_eq!(valid(&rows[0]).row, 1);
        assert_eq!(reason(&rows[1]), "has 2 fields, the header has 3");
        assert_eq!(reason(&rows[2]), "column \"name\" is empty");
        assert!(
            reason(&rows[3]).contains("\"../x\" is not a safe key part"),
            "{}",
            reason(&rows[3])
        );
        assert!(reason(&rows[4]).contains("\"a/b\" is not a safe key part"));
        assert_eq!(reason(&rows[5]), "column \"sku\" is empty");
        assert!(reason(&rows[6]).contains("2048 bytes"), "{}", reason(&rows[6]));
        assert_eq!(reason(&rows[7]), "key \"hero/A1\" is already used by row 1");
        assert_eq!(valid(&rows[8]).row, 9);
    }

    #[test]
    fn huge_rows_are_invalid_not_fatal() {
        let csv = format!("sku,name,color\nA1,{},red\nA2,mug,red\n", "n".repeat(MAX_ROW_BYTES + 1));
        let rows = read_all(csv.as_bytes(), "hero").unwrap();
        assert!(reason(&rows[0]).contains("limited to 65536 bytes"));
        assert_eq!(valid(&rows[1]).key.as_str(), "hero/A2");
    }

    #[test]
    fn reference_images_are_split_and_checked() {
        let csv = "sku,name,image_url\nA1,mug,https://x/a.png; s3://b/k.jpg\nA2,mug,ftp://x\nA3,mug,\n";
        let rows = read_all(csv.as_bytes(), "edit").unwrap();
        assert_eq!(valid(&rows[0]).references, vec!["https://x/a.png", "s3://b/k.jpg"]);
        assert!(reason(&rows[1]).contains("\"ftp://x\" is not an http(s):// URL"));
        assert!(reason(&rows[2]).contains("needs a reference image"));
    }

    #[test]
    fn non_utf8_file_is_a_whole_file_error_naming_the_row() {
        let csv = b"sku,name,color\nA1,mug,red\nA2,caf\xe9,red\n";
        match read_all(csv, "hero") {
            Err(CsvError::NotUtf8 { file, row, line }) => assert_eq!((file.as_str(), row, line), ("in.csv", 2, 3)),
            other => panic!("expected NotUtf8, got {other:?}"),
        }
        assert!(matches!(
            read_all(b"sku,n\xe9me,color\n", "hero"),
            Err(CsvError::NotUtf8 { row: 0, .. })
        ));
    }

    #[test]
    fn empty_file_and_missing_columns_stop_before_any_row() {
        assert!(matches!(read_all(b"", "hero"), Err(CsvError::Empty { .. })));
        let err = read_all(b"sku,title\nA1,x\n", "hero").unwrap_err().to_string();
        assert!(err.starts_with("in.csv: template hero: placeholder {name}"), "{err}");
        assert!(err.contains("its columns are: sku, title"), "{err}");
    }
}

#[cfg(test)]
mod hostile_tests {
    use std::io::Read;

    use super::*;
    use crate::domain::template::TemplateSet;

    fn rows_of(input: impl Read, templates: &str) -> Vec<RowOutcome> {
        let set = TemplateSet::from_toml(templates, "t.toml").unwrap();
        let mut reader = RowReader::open(input, "in.csv", set.get("t").unwrap()).unwrap();
        std::iter::from_fn(|| reader.next_row()).map(Result::unwrap).collect()
    }

    fn reason(outcome: &RowOutcome) -> String {
        match outcome {
            RowOutcome::Invalid(row) => row.reason.clone(),
            RowOutcome::Valid(row) => panic!("row {} should be invalid", row.row),
        }
    }

    const PLAIN: &str = "[templates.t]\nprompt = \"{name}\"\nmodel = \"placeholder\"\nkey = \"{sku}\"\n";

    #[test]
    fn a_huge_field_is_skipped_not_buffered_and_the_next_row_is_read() {
        // 300 MiB of one quoted field, produced lazily: buffering it would take 300 MiB.
        let head = &b"sku,name\nA1,\""[..];
        let field = std::io::repeat(b'x').take(300 * 1024 * 1024);
        let tail = &b"\"\nA2,cup\n"[..];
        let rows = rows_of(head.chain(field).chain(tail), PLAIN);
        assert_eq!(rows.len(), 2);
        let expected = format!("row is over {MAX_RECORD_BYTES} bytes; rows are limited to {MAX_ROW_BYTES} bytes");
        assert_eq!(reason(&rows[0]), expected);
        assert!(matches!(&rows[1], RowOutcome::Valid(row) if row.prompt == "cup"));
    }

    #[test]
    fn a_checkpoint_after_a_cut_row_resumes_at_the_right_input_offset() {
        let csv = format!(
            "sku,name\nA1,\"{}\"\nA2,cup\nA3,bowl\n",
            "x".repeat(MAX_RECORD_BYTES * 2)
        );
        let set = TemplateSet::from_toml(PLAIN, "t.toml").unwrap();
        let template = set.get("t").unwrap();
        let mut whole = RowReader::open(csv.as_bytes(), "f.csv", template).unwrap();
        let header_end = whole.next_offset() as usize;
        whole.next_row().unwrap().unwrap();
        let offset = whole.next_offset() as usize;
        let rest: Vec<RowOutcome> = std::iter::from_fn(|| whole.next_row()).map(Result::unwrap).collect();
        let resumed_input = csv.as_bytes()[..header_end].chain(&csv.as_bytes()[offset..]);
        let mut resumed = RowReader::open(resumed_input, "f.csv", template).unwrap().resume(1);
        let again: Vec<RowOutcome> = std::iter::from_fn(|| resumed.next_row()).map(Result::unwrap).collect();
        assert_eq!((again.len(), again), (2, rest));
    }

    #[test]
    fn keys_equal_ignoring_case_name_the_earlier_row() {
        let rows = rows_of(&b"sku,name\nab-1,mug\nAB-1,cup\n"[..], PLAIN);
        assert!(matches!(rows[0], RowOutcome::Valid(_)));
        assert!(reason(&rows[1]).contains("differs only in letter case from the key of row 1"));
    }

    #[test]
    fn a_prompt_repeating_a_placeholder_is_capped() {
        let prompt = "{name} ".repeat(1000);
        let templates = format!("[templates.t]\nprompt = \"{prompt}\"\nmodel = \"placeholder\"\nkey = \"{{sku}}\"\n");
        let csv = format!("sku,name\nA1,{}\n", "y".repeat(60_000));
        let rows = rows_of(csv.as_bytes(), &templates);
        assert_eq!(
            reason(&rows[0]),
            format!("the prompt would be over {MAX_PROMPT_BYTES} bytes")
        );
    }

    #[test]
    fn a_row_with_too_many_references_is_invalid() {
        let templates = "[templates.t]\nprompt = \"{name}\"\nmodel = \"placeholder\"\nkey = \"{sku}\"\n\
                         source_image = \"refs\"\n";
        let refs = ["https://cdn.example.com/a.png"; 11].join(";");
        let rows = rows_of(format!("sku,name,refs\nA1,mug,{refs}\n").as_bytes(), templates);
        assert!(reason(&rows[0]).contains("11 reference images; at most 10 per row"));
    }
}
