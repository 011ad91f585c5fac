//! Where things are: one value answers "where is this image / this report" for every driver — a
//! deployment's bucket on AWS, the output directory of a local run.

use std::path::PathBuf;

/// Where a run's objects are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// An S3 bucket: objects are `s3://bucket/key`.
    Bucket(String),
    /// A local directory: objects are files under it.
    Dir(PathBuf),
}

/// The store's root and the public URL its images are served under, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    pub root: Root,
    /// Images are served as `<public_base_url>/<object key>` (a CDN in front of the bucket).
    pub public_base_url: Option<String>,
}

impl Locations {
    /// A deployment's bucket.
    pub fn bucket(bucket: &str, public_base_url: Option<String>) -> Self {
        Self {
            root: Root::Bucket(bucket.to_owned()),
            public_base_url,
        }
    }

    /// A local output directory.
    pub fn dir(dir: impl Into<PathBuf>, public_base_url: Option<String>) -> Self {
        Self {
            root: Root::Dir(dir.into()),
            public_base_url,
        }
    }

    /// Where an object is: `s3://bucket/key`, or its file path.
    pub fn object(&self, key: &str) -> String {
        match &self.root {
            Root::Bucket(bucket) => format!("s3://{bucket}/{key}"),
            Root::Dir(dir) => dir.join(key).display().to_string(),
        }
    }

    /// The URL the CMS and the results get for an image: public when served, else where it is stored.
    pub fn image_url(&self, object_key: &str) -> String {
        match &self.public_base_url {
            Some(base) => format!("{}/{object_key}", base.trim_end_matches('/')),
            None => self.object(object_key),
        }
    }
}

/// Keys of a run's objects in the store.
pub mod keys {
    /// The run summary.
    pub fn report(run_id: &str) -> String {
        format!("runs/{run_id}/report.json")
    }

    /// The run as a page.
    pub fn report_html(run_id: &str) -> String {
        format!("runs/{run_id}/report.html")
    }

    /// A line per row.
    pub fn results(run_id: &str) -> String {
        format!("runs/{run_id}/results.csv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_public_when_served_and_where_they_are_stored_otherwise() {
        let mut at = Locations::bucket("b", None);
        assert_eq!(at.image_url("images/t/a.png"), "s3://b/images/t/a.png");
        at.public_base_url = Some("https://cdn.example/".into());
        assert_eq!(at.image_url("images/t/a.png"), "https://cdn.example/images/t/a.png");
        let local = Locations::dir("out", None);
        assert_eq!(local.image_url("images/t/a.png"), "out/images/t/a.png");
        assert_eq!(local.object(&keys::report("r1")), "out/runs/r1/report.json");
    }
}
