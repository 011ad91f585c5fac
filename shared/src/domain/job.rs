//! The unit of work: one image for one row, as it travels through the queue.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::key::ObjectKey;
use crate::domain::rows::RenderedRow;
use crate::domain::template::ImageSize;

/// One image to generate. Serialised as JSON in SQS message bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub run_id: String,
    /// 1-based data row of the CSV.
    pub row: u64,
    /// `<template>/<rendered key>`; the image is stored at `images/<key>.<ext>`.
    pub key: ObjectKey,
    /// What the CMS knows the row's item by.
    #[serde(default)]
    pub cms_id: String,
    pub prompt: String,
    /// Catalog model name.
    pub model: String,
    pub size: ImageSize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
}

impl Job {
    /// The job for a rendered row of run `run_id`.
    pub fn from_row(run_id: &str, model: &str, size: ImageSize, row: RenderedRow) -> Self {
        Self {
            run_id: run_id.to_owned(),
            row: row.row,
            key: row.key,
            cms_id: row.cms_id,
            prompt: row.prompt,
            model: model.to_owned(),
            size,
            references: row.references,
        }
    }

    /// Hex SHA-256 of the prompt: ASCII, so it can go into S3 metadata where the prompt cannot.
    pub fn prompt_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.prompt.as_bytes()))
    }

    /// A seed stable for this key and prompt, so a retry asks for the same image.
    pub fn seed(&self) -> u64 {
        let digest = Sha256::new()
            .chain_update(self.key.as_str())
            .chain_update(&self.prompt)
            .finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()) >> 33
    }
}

/// A run id derived from what identifies the input, so the same input always gets the same run.
pub fn run_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    format!("run-{}", &hex::encode(hasher.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_is_stable_and_separates_parts() {
        assert_eq!(run_id(&["a", "bc"]), run_id(&["a", "bc"]));
        assert_ne!(run_id(&["a", "bc"]), run_id(&["ab", "c"]));
        assert!(run_id(&["x"]).starts_with("run-") && run_id(&["x"]).len() == 20);
    }
}
