//! The providers imagepipe ships, their registry, and what they share (reference signing and checks).

pub mod anycap;
pub mod batch_http;
pub mod bedrock;
pub mod fetch;
pub mod gemini;
pub mod gemini_batch;
pub mod http;
pub mod openai;
pub mod openai_batch;
pub mod placeholder;
pub mod registry;
pub mod seedream;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use crate::ports::provider::*;

/// The references of a request with every `s3://` URI signed; a reason when one cannot be.
pub async fn sign_references(
    references: &[String],
    signer: Option<&dyn ReferenceSigner>,
) -> Result<Vec<String>, String> {
    let mut signed = Vec::with_capacity(references.len());
    for reference in references {
        if !reference.starts_with("s3://") {
            signed.push(reference.clone());
            continue;
        }
        let Some(signer) = signer else {
            return Err(format!(
                "reference {}: s3:// references need AWS credentials (none configured)",
                crate::domain::redact::display_url(reference)
            ));
        };
        signed.push(
            signer
                .sign(reference)
                .await
                .map_err(|e| format!("reference {}: {e}", crate::domain::redact::display_url(reference)))?,
        );
    }
    Ok(signed)
}

/// Buckets `s3://` references may name: the deployment's own (`IMAGEPIPE_BUCKET`) and those listed in
/// `IMAGEPIPE_REFERENCE_BUCKETS` (comma-separated; `*` allows every bucket the credentials can read).
/// A row cannot make imagepipe presign, and hand a provider, objects of any other bucket.
pub fn reference_buckets_from_env() -> Vec<String> {
    ["IMAGEPIPE_BUCKET", "IMAGEPIPE_REFERENCE_BUCKETS"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .flat_map(|value| value.split(',').map(|b| b.trim().to_owned()).collect::<Vec<_>>())
        .filter(|b| !b.is_empty())
        .collect()
}

/// Refuses `s3://` references to buckets not in `allowed`.
pub fn check_reference_buckets(references: &[String], allowed: &[String]) -> Result<(), String> {
    for reference in references {
        let Some(rest) = reference.strip_prefix("s3://") else {
            continue;
        };
        let bucket = rest.split('/').next().unwrap_or_default();
        if !allowed.iter().any(|b| b == "*" || b == bucket) {
            return Err(format!(
                "reference {}: bucket {bucket:?} is not one references may come from (IMAGEPIPE_REFERENCE_BUCKETS)",
                crate::domain::redact::display_url(reference)
            ));
        }
    }
    Ok(())
}

/// Builds the provider called `name` from the environment.
pub async fn from_env(name: &str) -> Result<std::sync::Arc<dyn ImageProvider>, ProviderSetupError> {
    registry::entry(name)?.build().await
}

/// A provider spoken to over HTTP with an API key, built from its endpoint.
pub trait HttpProvider: Sized {
    fn from_endpoint(api: http::ApiEndpoint) -> Self;

    /// The provider at `base_url` with `api_key`.
    fn new(client: reqwest::Client, base_url: &str, api_key: &str) -> Self {
        Self::from_endpoint(http::ApiEndpoint::new(client, base_url, api_key))
    }
}

/// A required, non-empty API key from `variable`.
fn env_key(provider: &str, variable: &str) -> Result<String, ProviderSetupError> {
    crate::drivers::config::secret(variable).ok_or_else(|| ProviderSetupError::MissingCredentials {
        provider: provider.to_owned(),
        variable: variable.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_references_are_limited_to_the_allowed_buckets() {
        let refs = |r: &str| vec!["https://cdn.example.com/a.png".to_owned(), r.to_owned()];
        let allowed = vec!["imagepipe-prod".to_owned()];
        assert_eq!(
            check_reference_buckets(&refs("s3://imagepipe-prod/refs/a.png"), &allowed),
            Ok(())
        );
        let error = check_reference_buckets(&refs("s3://payroll/2026.png"), &allowed).unwrap_err();
        assert!(
            error.contains("bucket \"payroll\" is not one references may come from"),
            "{error}"
        );
        assert_eq!(
            check_reference_buckets(&refs("s3://payroll/x"), &["*".to_owned()]),
            Ok(())
        );
    }
}
