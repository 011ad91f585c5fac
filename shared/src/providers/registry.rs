//! Every provider imagepipe ships, in one table: its name, the credentials it reads and how it is
//! built. The catalog (a model naming an unknown provider fails at load), `--provider`, the
//! deployment's checks and `imagepipe providers` all read this table. Adding a provider is one file
//! under `provider/`, one entry here and one catalog row.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::http::ApiEndpoint;
use super::{HttpProvider, ImageProvider, ProviderSetupError};
use super::{anycap, bedrock, gemini, gemini_batch, openai, openai_batch, placeholder, seedream};
use crate::ports::batch::BatchApi;

/// What a provider needs to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing: it runs offline.
    None,
    /// An API key in `variable` (on AWS, or the SSM parameter named by `<variable>_PARAM`); the
    /// endpoint is `default_base_url` unless `base_url_variable` names another.
    ApiKey {
        variable: &'static str,
        base_url_variable: &'static str,
        default_base_url: &'static str,
    },
    /// The AWS configuration chain: environment, profile or role (IAM, no API key).
    Aws,
    /// The provider's own command-line tool, logged in; `binary_variable` names another binary.
    Cli { binary_variable: &'static str },
}

impl Credentials {
    /// How a person supplies them, for listings and docs.
    pub fn describe(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::ApiKey {
                variable,
                base_url_variable,
                ..
            } => format!("{variable} (or {variable}_PARAM: an SSM parameter name); endpoint {base_url_variable}"),
            Self::Aws => "AWS credentials (IAM role, AWS_PROFILE or AWS_ACCESS_KEY_ID)".into(),
            Self::Cli { binary_variable } => format!("its CLI, logged in (binary: {binary_variable})"),
        }
    }
}

type BuildBatch = fn(&'static ProviderEntry) -> Result<Arc<dyn BatchApi>, ProviderSetupError>;
type Build = fn(&'static ProviderEntry) -> BoxFuture<'static, Result<Arc<dyn ImageProvider>, ProviderSetupError>>;

/// One provider.
pub struct ProviderEntry {
    /// As the catalog's `provider` and `--provider` spell it.
    pub name: &'static str,
    pub about: &'static str,
    pub credentials: Credentials,
    build: Build,
    /// Its batch API (half price, within a day), where it has one.
    batch: Option<BuildBatch>,
}

impl std::fmt::Debug for ProviderEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderEntry").field("name", &self.name).finish()
    }
}

impl ProviderEntry {
    /// Builds the provider from the environment (credentials checked now, not at the first row).
    pub async fn build(&'static self) -> Result<Arc<dyn ImageProvider>, ProviderSetupError> {
        (self.build)(self).await
    }

    /// Its batch client from the environment; `None` when the provider has no batch API.
    pub fn build_batch(&'static self) -> Option<Result<Arc<dyn BatchApi>, ProviderSetupError>> {
        self.batch.map(|build| build(self))
    }

    /// Whether the provider has a batch API.
    pub fn has_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// The API endpoint from the environment: the key (required) and the base URL.
    fn endpoint(&self) -> Result<ApiEndpoint, ProviderSetupError> {
        let Credentials::ApiKey {
            variable,
            base_url_variable,
            default_base_url,
        } = self.credentials
        else {
            return Err(ProviderSetupError::MissingCredentials {
                provider: self.name.into(),
                variable: "an API key".into(),
            });
        };
        let key = super::env_key(self.name, variable)?;
        let base = std::env::var(base_url_variable)
            .ok()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| default_base_url.to_owned());
        // Per-request timeouts are set on each call; this is only the outer bound.
        let client = crate::adapters::http_publish::http_client(std::time::Duration::from_secs(900));
        Ok(ApiEndpoint::new(client, &base, &key))
    }
}

/// Every provider, in the order listings show them.
pub static PROVIDERS: [ProviderEntry; 6] = [
    ProviderEntry {
        name: placeholder::NAME,
        about: "offline: a PNG showing the row's key and prompt; no cost",
        credentials: Credentials::None,
        build: |_| Box::pin(async { Ok(Arc::new(placeholder::PlaceholderProvider) as Arc<dyn ImageProvider>) }),
        batch: None,
    },
    ProviderEntry {
        name: gemini::NAME,
        about: "Google Gemini generateContent (Nano Banana models)",
        credentials: Credentials::ApiKey {
            variable: "GEMINI_API_KEY",
            base_url_variable: "IMAGEPIPE_GEMINI_BASE_URL",
            default_base_url: gemini::DEFAULT_BASE_URL,
        },
        build: http::<gemini::GeminiProvider>,
        batch: Some(http_batch::<gemini_batch::GeminiBatch>),
    },
    ProviderEntry {
        name: openai::NAME,
        about: "OpenAI Images (gpt-image models)",
        credentials: Credentials::ApiKey {
            variable: "OPENAI_API_KEY",
            base_url_variable: "IMAGEPIPE_OPENAI_BASE_URL",
            default_base_url: openai::DEFAULT_BASE_URL,
        },
        build: http::<openai::OpenAiProvider>,
        batch: Some(http_batch::<openai_batch::OpenAiBatch>),
    },
    ProviderEntry {
        name: seedream::NAME,
        about: "ByteDance Seedream on BytePlus ModelArk",
        credentials: Credentials::ApiKey {
            variable: "ARK_API_KEY",
            base_url_variable: "IMAGEPIPE_ARK_BASE_URL",
            default_base_url: seedream::DEFAULT_BASE_URL,
        },
        build: http::<seedream::SeedreamProvider>,
        batch: None,
    },
    ProviderEntry {
        name: anycap::NAME,
        about: "the AnyCap CLI (its own login and credits)",
        credentials: Credentials::Cli {
            binary_variable: "IMAGEPIPE_ANYCAP_BIN",
        },
        build: |_| Box::pin(async { Ok(Arc::new(anycap::AnyCapProvider::from_env()) as Arc<dyn ImageProvider>) }),
        batch: None,
    },
    ProviderEntry {
        name: bedrock::NAME,
        about: "Amazon Bedrock InvokeModel (Nova Canvas, Titan Image)",
        credentials: Credentials::Aws,
        build: |_| {
            Box::pin(async { Ok(Arc::new(bedrock::BedrockProvider::from_env().await?) as Arc<dyn ImageProvider>) })
        },
        batch: None,
    },
];

fn http<P: HttpProvider + ImageProvider + 'static>(
    entry: &'static ProviderEntry,
) -> BoxFuture<'static, Result<Arc<dyn ImageProvider>, ProviderSetupError>> {
    Box::pin(async move { Ok(Arc::new(P::from_endpoint(entry.endpoint()?)) as Arc<dyn ImageProvider>) })
}

fn http_batch<B: HttpProvider + BatchApi + 'static>(
    entry: &'static ProviderEntry,
) -> Result<Arc<dyn BatchApi>, ProviderSetupError> {
    Ok(Arc::new(B::from_endpoint(entry.endpoint()?)) as Arc<dyn BatchApi>)
}

/// The provider called `name`.
pub fn entry(name: &str) -> Result<&'static ProviderEntry, ProviderSetupError> {
    PROVIDERS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ProviderSetupError::Unknown { name: name.to_owned() })
}

/// Every provider's name.
pub fn names() -> Vec<&'static str> {
    PROVIDERS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_each_builds_the_provider_of_its_name() {
        let mut names = names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROVIDERS.len());
        let error = entry("gemeni").unwrap_err().to_string();
        assert!(error.contains("known providers: placeholder, gemini"), "{error}");
    }

    #[tokio::test]
    async fn the_placeholder_builds_offline_and_an_api_key_provider_names_its_variable() {
        let placeholder = entry("placeholder").unwrap().build().await.unwrap();
        assert_eq!(placeholder.name(), "placeholder");
        // SAFETY-free: no other test reads this variable.
        let error = match entry("seedream").unwrap().build().await {
            Err(e) => e.to_string(),
            Ok(_) if std::env::var_os("ARK_API_KEY").is_some() => return,
            Ok(_) => panic!("built without a key"),
        };
        assert!(error.contains("ARK_API_KEY"), "{error}");
    }
}
