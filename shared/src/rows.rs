//! Streaming CSV ingest: one row at a time, each either a rendered job or an invalid row with a reason.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::io::Read;

use crate::key::{ObjectKey, check_part};
use crate::template::{BoundTemplate, Template, TemplateError};

/// Largest row accepted, in bytes; larger rows are invalid (they would not fit a queue message).
pub const MAX_ROW_BYTES: usize = 64 * 1024;

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
    #[error("{file}: {source}")]
    Template { file: String, source: TemplateError },
}

/// A row that will be generated.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRow {
    /// 1-based data row (header excluded).
    pub row: u64,
    /// `<template>/<rendered key>`.
    pub key: ObjectKey,
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
/// an 8-byte digest per key seen (to refuse two rows writing the same object).
pub struct RowReader<R: Read> {
    reader: csv::Reader<R>,
    file: String,
    bound: BoundTemplate,
    header_len: usize,
    record: csv::StringRecord,
    row: u64,
    keys: HashMap<u64, u64>,
    hasher: RandomState,
}

impl<R: Read> RowReader<R> {
    /// Reads the header of `input` and binds `template` to it. `file` names the input in errors.
    pub fn open(input: R, file: &str, template: &Template) -> Result<Self, CsvError> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
        let header = match reader.headers() {
            Ok(h) => h.iter().map(|c| c.trim().to_owned()).collect::<Vec<_>>(),
            Err(e) => return Err(whole_file_error(file, 0, e)),
        };
        if header.is_empty() || header.iter().all(String::is_empty) {
            return Err(CsvError::Empty { file: file.to_owned() });
        }
        let bound = template.bind(&header).map_err(|source| CsvError::Template {
            file: file.to_owned(),
            source,
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
        match self.reader.read_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                self.row += 1;
                Some(Ok(self.check_record()))
            }
            Err(e) => Some(Err(whole_file_error(&self.file, self.row + 1, e))),
        }
    }

    fn check_record(&mut self) -> RowOutcome {
        let row = self.row;
        match self.render() {
            Ok(rendered) => match self.keys.entry(self.hasher.hash_one(rendered.key.as_str())) {
                Entry::Occupied(first) => RowOutcome::Invalid(InvalidRow {
                    row,
                    reason: format!("key {:?} is already used by row {}", rendered.key.as_str(), first.get()),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(row);
                    RowOutcome::Valid(rendered)
                }
            },
            Err(reason) => RowOutcome::Invalid(InvalidRow { row, reason }),
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
        let prompt = template.prompt.render(|p| value(p).map(str::to_owned))?;
        let key = template.key.render(|p| {
            let v = value(p)?;
            check_part(v).map_err(|e| format!("column {:?}: key {e}", self.bound.column(p).map_or(p, |c| c.0)))?;
            Ok::<_, String>(v.to_owned())
        })?;
        let key = ObjectKey::parse(&format!("{}/{key}", template.name)).map_err(|e| format!("key {e}"))?;
        let references = match self.bound.source_image_column() {
            Some((column, index)) => parse_references(column, record.get(index).unwrap_or(""))?,
            None => Vec::new(),
        };
        Ok(RenderedRow {
            row: self.row,
            key,
            prompt,
            references,
        })
    }

    /// Data rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.row
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
