//! Where things are: one value answers "where is this image / this report" for a deployment.

/// The bucket of a deployment and the public URL its images are served under, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    pub bucket: String,
    /// Images are served as `<public_base_url>/<object key>` (a CDN in front of the bucket).
    pub public_base_url: Option<String>,
}

impl Locations {
    /// `s3://bucket/key` of an object.
    pub fn object(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The URL the CMS and the results get for an image: public when served, else its `s3://` URI.
    pub fn image_url(&self, object_key: &str) -> String {
        match &self.public_base_url {
            Some(base) => format!("{}/{object_key}", base.trim_end_matches('/')),
            None => self.object(object_key),
        }
    }
}

/// Keys of a run's objects in the bucket.
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
    fn images_are_public_when_served_and_s3_uris_otherwise() {
        let mut at = Locations {
            bucket: "b".into(),
            public_base_url: None,
        };
        assert_eq!(at.image_url("images/t/a.png"), "s3://b/images/t/a.png");
        at.public_base_url = Some("https://cdn.example/".into());
        assert_eq!(at.image_url("images/t/a.png"), "https://cdn.example/images/t/a.png");
    }
}
