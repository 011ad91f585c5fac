//! A local run's CSV snapshot: the first pass copies what it reads into a private temporary file
//! and hashes it; the second pass reads that copy, hashed again, so both passes see the same bytes
//! whatever happens to the original (and a FIFO or stdin can be read twice).

use std::fs::File;
use std::io::Read;

use sha2::{Digest, Sha256};

/// Hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The reader and the hex digest of everything read.
    pub(crate) fn finish(self) -> (R, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

/// Copies what is read from `inner` into `copy`.
pub(crate) struct Tee<R> {
    pub(crate) inner: R,
    pub(crate) copy: std::io::BufWriter<File>,
}

impl<R> Tee<R> {
    /// The copy, flushed and rewound for reading.
    pub(crate) fn rewound(self) -> std::io::Result<File> {
        use std::io::Seek;
        let mut file = self.copy.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        file.rewind()?;
        Ok(file)
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write;
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The snapshot as the splitter reads it: by byte range, from a file no one else writes.
pub(crate) struct SnapshotCsv {
    name: String,
    digest: String,
    file: std::sync::Arc<File>,
}

impl SnapshotCsv {
    /// `file` is the snapshot of the CSV shown as `name`, whose content hashes to `digest`.
    pub(crate) fn new(name: String, digest: String, file: File) -> Self {
        Self {
            name,
            digest,
            file: std::sync::Arc::new(file),
        }
    }
}

impl crate::usecase::split::CsvSource for SnapshotCsv {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.digest
    }

    async fn open_range(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, crate::ports::store::StoreError> {
        Ok(Box::new(RangeReader {
            file: self.file.clone(),
            at: start,
            end: end.unwrap_or(u64::MAX),
        }))
    }
}

/// Reads `at..end` of a shared file with positioned reads, so readers do not move each other.
struct RangeReader {
    file: std::sync::Arc<File>,
    at: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let room = usize::try_from(self.end.saturating_sub(self.at)).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        if take == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..take], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}
