//! Keeps the CSV parser from buffering an oversized record: past a hard cap, the rest of the record
//! is skipped (read, not kept) and the record ends there, so a 600 MB field costs a few KiB of
//! memory and is reported as an invalid row instead of being buffered first.

use std::io::{self, Read};

/// Where the parser is in a record, as the CSV reader sees it (`,` delimiter, `""` escapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: the end of the field, or the first half of `""`.
    QuoteInQuoted,
}

impl State {
    /// The next state after `byte`, and whether `byte` ended the record.
    fn next(self, byte: u8) -> (Self, bool) {
        match (self, byte) {
            (Self::Quoted, b'"') => (Self::QuoteInQuoted, false),
            (Self::Quoted, _) => (Self::Quoted, false),
            (Self::QuoteInQuoted, b'"') => (Self::Quoted, false),
            (Self::FieldStart, b'"') => (Self::Quoted, false),
            (_, b',') => (Self::FieldStart, false),
            (_, b'\n') => (Self::FieldStart, true),
            _ => (Self::Unquoted, false),
        }
    }
}

/// A reader passing records of at most `cap` bytes through whole, and the first `cap` bytes of longer ones.
pub struct RecordLimit<R> {
    inner: R,
    cap: usize,
    state: State,
    in_record: usize,
    skipping: bool,
    ready: Vec<u8>,
    at: usize,
    cut: u64,
    skipped: u64,
    /// Input bytes processed and output bytes produced so far.
    consumed: u64,
    emitted: u64,
    /// Where each cut record ended in the output, and input minus output bytes from there on.
    shifts: Vec<(u64, u64)>,
}

impl<R: Read> RecordLimit<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        Self {
            inner,
            cap,
            state: State::FieldStart,
            in_record: 0,
            skipping: false,
            ready: Vec::with_capacity(8 * 1024),
            at: 0,
            cut: 0,
            skipped: 0,
            consumed: 0,
            emitted: 0,
            shifts: Vec::new(),
        }
    }

    /// Records cut short so far.
    pub fn records_cut(&self) -> u64 {
        self.cut
    }

    /// Input bytes not passed on.
    pub fn bytes_skipped(&self) -> u64 {
        self.skipped
    }

    /// The input offset of output position `at` (a parser's byte position): later by the bytes
    /// skipped in the records cut before it.
    pub fn input_offset(&self, at: u64) -> u64 {
        let shift = self
            .shifts
            .iter()
            .rev()
            .find(|(from, _)| *from <= at)
            .map_or(0, |s| s.1);
        at + shift
    }

    fn emit(&mut self, byte: u8) {
        self.ready.push(byte);
        self.emitted += 1;
    }

    fn refill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8 * 1024];
        let n = self.inner.read(&mut chunk)?;
        self.ready.clear();
        self.at = 0;
        for &byte in &chunk[..n] {
            let (state, ended) = self.state.next(byte);
            self.state = state;
            self.consumed += 1;
            if self.skipping {
                if ended {
                    self.skipping = false;
                    self.in_record = 0;
                    self.shifts.push((self.emitted, self.consumed - 1 - self.emitted));
                    self.emit(b'\n');
                } else {
                    self.skipped += 1;
                }
                continue;
            }
            self.emit(byte);
            self.in_record = if ended { 0 } else { self.in_record + 1 };
            if self.in_record > self.cap {
                self.skipping = true;
                self.cut += 1;
                if state == State::Quoted {
                    self.emit(b'"'); // close the field so the parser sees the record end
                    self.skipped = self.skipped.saturating_sub(1);
                }
            }
        }
        Ok(n > 0)
    }
}

impl<R: Read> Read for RecordLimit<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.ready.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.ready.len() - self.at);
        out[..n].copy_from_slice(&self.ready[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(input: &[u8], cap: usize) -> (String, u64) {
        let mut reader = RecordLimit::new(input, cap);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        (out, reader.records_cut())
    }

    #[test]
    fn short_records_pass_through_unchanged() {
        let csv = "sku,name\nA1,\"a \"\"quoted\"\", multi\nline\"\nA2,5\" screen\n";
        assert_eq!(limited(csv.as_bytes(), 64), (csv.to_owned(), 0));
    }

    #[test]
    fn a_long_quoted_field_is_cut_and_closed_and_the_next_record_kept() {
        let long = "x".repeat(10_000);
        let csv = format!("sku,name\nA1,\"{long}\nmore\"\nA2,ok\n");
        let (out, cut) = limited(csv.as_bytes(), 20);
        assert_eq!(cut, 1);
        assert_eq!(out, "sku,name\nA1,\"xxxxxxxxxxxxxxxxx\"\nA2,ok\n");
    }

    #[test]
    fn output_positions_after_a_cut_map_back_to_input_offsets() {
        let csv = format!("h\n{}\nA2\n", "y".repeat(100));
        let mut reader = RecordLimit::new(csv.as_bytes(), 10);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        let a2_out = out.find("A2").unwrap() as u64;
        assert_eq!(reader.input_offset(a2_out), csv.find("A2").unwrap() as u64);
        assert_eq!(reader.input_offset(1), 1);
    }
}
