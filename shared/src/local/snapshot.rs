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
