//! The Lambda functions' configuration: every environment variable in one place, read once at init.
//!
//! Secrets (`CMS_TOKEN`, `SLACK_WEBHOOK_URL`, provider API keys) may be given as plain values for
//! local use, or by name as `<NAME>_PARAM`: an SSM parameter (a SecureString, or
//! `/aws/reference/secretsmanager/<secret-id>` for a Secrets Manager secret), read once per container.

use crate::usecase::batch::BATCH_REQUESTS;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// Secrets that may be read from SSM / Secrets Manager through `<NAME>_PARAM`.
pub fn secret_variables() -> Vec<&'static str> {
    let providers = (crate::providers::registry::PROVIDERS.iter()).filter_map(|p| match p.credentials {
        crate::providers::registry::Credentials::ApiKey { variable, .. } => Some(variable),
        _ => None,
    });
    ["CMS_TOKEN", "SLACK_WEBHOOK_URL"]
        .into_iter()
        .chain(providers)
        .collect()
}

/// Every variable [`Config::from_env`] reads (besides the secrets and their `_PARAM` forms).
pub const VARIABLES: [&str; 29] = [
    "IMAGEPIPE_BUCKET",
    "LEDGER_TABLE",
    "JOBS_QUEUE_URL",
    "EVENTS_QUEUE_URL",
    "SPLIT_QUEUE_URL",
    "IMAGEPIPE_PROVIDER",
    "MAX_RUN_COST_USD",
    "MAX_ROWS_PER_RUN",
    "SEND_CONCURRENCY",
    "PROVIDER_TIMEOUT_SECS",
    "PROVIDER_TIMEOUTS",
    "JOBS_MAX_RECEIVE_COUNT",
    "CMS_BASE_URL",
    "CMS_METHOD",
    "CMS_PATH",
    "CMS_BODY",
    "CMS_MAX_ATTEMPTS",
    "IMAGEPIPE_PUBLIC_BASE_URL",
    "SPLIT_ROWS_PER_INVOCATION",
    "RECONCILE_SILENCE_SECS",
    "RUN_RETENTION_DAYS",
    "REPORT_LINK_SECS",
    "BATCH_REQUESTS",
    "BATCH_FAILED_ROWS",
    // Read by the providers themselves: another API endpoint (a proxy, a region); empty for the default.
    "IMAGEPIPE_GEMINI_BASE_URL",
    "IMAGEPIPE_OPENAI_BASE_URL",
    "IMAGEPIPE_ARK_BASE_URL",
    // Internal hosts/CIDRs data URLs may reach, and buckets `s3://` references may name (see README).
    "IMAGEPIPE_ALLOW_HOSTS",
    "IMAGEPIPE_REFERENCE_BUCKETS",
];

static SECRETS: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Makes secrets read from a secret store visible to [`secret`]; the first call wins.
pub fn install_secrets(values: HashMap<String, String>) {
    let _ = SECRETS.set(values);
}

/// A secret by variable name: from the secret store when it was read from one, else the environment.
pub fn secret(name: &str) -> Option<String> {
    SECRETS
        .get()
        .and_then(|s| s.get(name).cloned())
        .or_else(|| std::env::var(name).ok())
        .filter(|v| !v.trim().is_empty())
}

/// A variable is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} = {value:?}: {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("secret {name}: {message}")]
    Secret { name: String, message: String },
}

/// How the CMS is told about a new image. Defaults: `PATCH /api/products/{sku}` with `{"image_url": "{image_url}"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmsConfig {
    pub base_url: String,
    pub method: String,
    /// Path with `{sku}`.
    pub path: String,
    /// JSON body with `{sku}` and `{image_url}`.
    pub body: String,
}

/// Everything the three functions read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Images and reports are written here.
    pub bucket: String,
    /// The run ledger (DynamoDB table).
    pub ledger_table: String,
    pub jobs_queue_url: Option<String>,
    pub events_queue_url: Option<String>,
    /// The splitter's continuations.
    pub split_queue_url: Option<String>,
    pub provider: Option<String>,
    pub max_run_cost_usd: Option<f64>,
    pub max_rows_per_run: u64,
    pub send_concurrency: usize,
    pub provider_timeout: Duration,
    /// Per-provider timeouts (`PROVIDER_TIMEOUTS=gemini=60,openai=180`) over `provider_timeout`.
    pub provider_timeouts: HashMap<String, Duration>,
    /// The jobs queue's `maxReceiveCount`: the last delivery turns a retryable error into a failure with its reason.
    pub max_receive_count: u32,
    pub cms: Option<CmsConfig>,
    pub cms_max_attempts: u32,
    pub public_base_url: Option<String>,
    /// Jobs one splitter invocation sends at most before continuing in a fresh one.
    pub split_rows_per_invocation: u64,
    /// A run awaiting outcomes with nothing recorded for this long has lost them (the reconciler
    /// records them failed).
    pub reconcile_silence: Duration,
    /// Ledger items expire this long after their run started.
    pub run_retention: Duration,
    /// How long the presigned links of a run's report (its page, images, results) stay valid.
    pub report_link: Duration,
    /// Internal hosts and networks reference and download URLs may reach (`IMAGEPIPE_ALLOW_HOSTS`).
    pub allow_hosts: crate::adapters::net::AllowList,
    /// Requests in one batch of a batch-mode run (`BATCH_REQUESTS`, at most 500).
    pub batch_requests: usize,
    /// Rows a batch failed or let expire go the synchronous way once (`BATCH_FAILED_ROWS=retry`,
    /// the default) or fail with the provider's reason (`fail`).
    pub batch_retry_failed: bool,
}

impl Config {
    /// Reads the environment; names the variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads variables through `var` (tests pass a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if let Some(base) = var("CMS_BASE_URL") {
            crate::adapters::http_publish::check_base_url(&base).map_err(|_| ConfigError::Invalid {
                name: "CMS_BASE_URL",
                value: crate::domain::redact::display_url(&base),
                expected: "an absolute http(s) URL without user name or password",
            })?;
        }
        let cms = var("CMS_BASE_URL").map(|base_url| CmsConfig {
            base_url,
            method: var("CMS_METHOD").unwrap_or_else(|| "PATCH".into()),
            path: var("CMS_PATH").unwrap_or_else(|| "/api/products/{sku}".into()),
            body: var("CMS_BODY").unwrap_or_else(|| r#"{"image_url": "{image_url}"}"#.into()),
        });
        Ok(Self {
            bucket: var("IMAGEPIPE_BUCKET").ok_or(ConfigError::Missing("IMAGEPIPE_BUCKET"))?,
            ledger_table: var("LEDGER_TABLE").ok_or(ConfigError::Missing("LEDGER_TABLE"))?,
            jobs_queue_url: var("JOBS_QUEUE_URL"),
            events_queue_url: var("EVENTS_QUEUE_URL"),
            split_queue_url: var("SPLIT_QUEUE_URL"),
            provider: var("IMAGEPIPE_PROVIDER"),
            max_run_cost_usd: parse(&var, "MAX_RUN_COST_USD", "a dollar amount such as 25.00")?,
            max_rows_per_run: parse(&var, "MAX_ROWS_PER_RUN", "a whole number")?.unwrap_or(1_000_000),
            send_concurrency: parse(&var, "SEND_CONCURRENCY", "a whole number")?.unwrap_or(8),
            provider_timeout: Duration::from_secs(
                parse(&var, "PROVIDER_TIMEOUT_SECS", "whole seconds")?.unwrap_or(120),
            ),
            provider_timeouts: timeouts(var("PROVIDER_TIMEOUTS"))?,
            max_receive_count: parse(&var, "JOBS_MAX_RECEIVE_COUNT", "a whole number")?.unwrap_or(3),
            cms,
            cms_max_attempts: parse(&var, "CMS_MAX_ATTEMPTS", "a whole number")?.unwrap_or(5),
            public_base_url: var("IMAGEPIPE_PUBLIC_BASE_URL"),
            split_rows_per_invocation: parse(&var, "SPLIT_ROWS_PER_INVOCATION", "a whole number")?.unwrap_or(u64::MAX),
            reconcile_silence: Duration::from_secs(
                parse(&var, "RECONCILE_SILENCE_SECS", "whole seconds")?.unwrap_or(3600),
            ),
            run_retention: Duration::from_secs(
                86_400 * parse::<u64>(&var, "RUN_RETENTION_DAYS", "whole days")?.unwrap_or(90),
            ),
            report_link: report_link(&var)?,
            batch_requests: parse::<usize>(&var, "BATCH_REQUESTS", "a whole number from 1 to 500")?
                .filter(|n| (1..=BATCH_REQUESTS).contains(n))
                .or(var("BATCH_REQUESTS").is_none().then_some(BATCH_REQUESTS))
                .ok_or_else(|| ConfigError::Invalid {
                    name: "BATCH_REQUESTS",
                    value: var("BATCH_REQUESTS").unwrap_or_default(),
                    expected: "a whole number from 1 to 500",
                })?,
            batch_retry_failed: match var("BATCH_FAILED_ROWS").as_deref() {
                None | Some("retry") => true,
                Some("fail") => false,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "BATCH_FAILED_ROWS",
                        value: other.to_owned(),
                        expected: "retry or fail",
                    });
                }
            },
            allow_hosts: crate::adapters::net::AllowList::parse(&var("IMAGEPIPE_ALLOW_HOSTS").unwrap_or_default())
                .map_err(|_| ConfigError::Invalid {
                    name: "IMAGEPIPE_ALLOW_HOSTS",
                    value: var("IMAGEPIPE_ALLOW_HOSTS").unwrap_or_default(),
                    expected: "host names and CIDRs, comma-separated (images.internal,10.1.0.0/16)",
                })?,
        })
    }

    /// The jobs queue URL, required by the splitter and the generator.
    pub fn jobs_queue_url(&self) -> Result<&str, ConfigError> {
        self.jobs_queue_url
            .as_deref()
            .ok_or(ConfigError::Missing("JOBS_QUEUE_URL"))
    }

    /// The events queue URL, required by the splitter and the generator.
    pub fn events_queue_url(&self) -> Result<&str, ConfigError> {
        self.events_queue_url
            .as_deref()
            .ok_or(ConfigError::Missing("EVENTS_QUEUE_URL"))
    }

    /// The splitter's continuation queue URL, required by the splitter.
    pub fn split_queue_url(&self) -> Result<&str, ConfigError> {
        self.split_queue_url
            .as_deref()
            .ok_or(ConfigError::Missing("SPLIT_QUEUE_URL"))
    }

    /// Where the deployment's images and reports are.
    pub fn locations(&self) -> crate::domain::locations::Locations {
        crate::domain::locations::Locations::bucket(&self.bucket, self.public_base_url.clone())
    }
}

/// The longest a SigV4 presigned URL can be valid: 7 days.
pub const MAX_LINK_SECS: u64 = 7 * 86_400;

/// `REPORT_LINK_SECS`: 1 s to [`MAX_LINK_SECS`], the maximum by default.
fn report_link(var: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    let expected = "whole seconds from 1 to 604800 (7 days, the longest a presigned URL is valid)";
    match parse::<u64>(var, "REPORT_LINK_SECS", expected)? {
        None => Ok(Duration::from_secs(MAX_LINK_SECS)),
        Some(secs) if (1..=MAX_LINK_SECS).contains(&secs) => Ok(Duration::from_secs(secs)),
        Some(secs) => Err(ConfigError::Invalid {
            name: "REPORT_LINK_SECS",
            value: secs.to_string(),
            expected,
        }),
    }
}

/// `name=seconds` pairs, comma-separated.
fn timeouts(value: Option<String>) -> Result<HashMap<String, Duration>, ConfigError> {
    let Some(value) = value else {
        return Ok(HashMap::new());
    };
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, secs) = pair.split_once('=').unwrap_or((pair, ""));
            let secs: u64 = secs.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "PROVIDER_TIMEOUTS",
                value: value.clone(),
                expected: "provider=seconds pairs, comma-separated (gemini=60,openai=180)",
            })?;
            Ok((name.trim().to_owned(), Duration::from_secs(secs)))
        })
        .collect()
}

fn parse<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, ConfigError> {
    var(name)
        .map(|value| {
            value
                .trim()
                .parse()
                .map_err(|_| ConfigError::Invalid { name, value, expected })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn config_names_the_missing_or_malformed_variable() {
        assert_eq!(config(&[]).unwrap_err(), ConfigError::Missing("IMAGEPIPE_BUCKET"));
        assert_eq!(
            config(&[("IMAGEPIPE_BUCKET", "b")]).unwrap_err(),
            ConfigError::Missing("LEDGER_TABLE")
        );
        let base = [("IMAGEPIPE_BUCKET", "b"), ("LEDGER_TABLE", "t")];
        let error = config(&[base[0], base[1], ("MAX_RUN_COST_USD", "lots")]).unwrap_err();
        assert!(error.to_string().contains("MAX_RUN_COST_USD = \"lots\""), "{error}");
        let ok = config(&base).unwrap();
        assert_eq!(ok.jobs_queue_url().unwrap_err(), ConfigError::Missing("JOBS_QUEUE_URL"));
        assert_eq!(
            (ok.max_rows_per_run, ok.max_receive_count, ok.cms),
            (1_000_000, 3, None)
        );
        assert_eq!(ok.reconcile_silence, Duration::from_secs(3600));
        let timeouts = config(&[base[0], base[1], ("PROVIDER_TIMEOUTS", "gemini=60, openai=180")]).unwrap();
        assert_eq!(timeouts.provider_timeouts["openai"], Duration::from_secs(180));
        let error = config(&[base[0], base[1], ("PROVIDER_TIMEOUTS", "gemini")]).unwrap_err();
        assert!(error.to_string().contains("provider=seconds"), "{error}");
    }

    #[test]
    fn cms_request_defaults_to_a_patch_of_the_product() {
        let cms = config(&[
            ("IMAGEPIPE_BUCKET", "b"),
            ("LEDGER_TABLE", "t"),
            ("CMS_BASE_URL", "http://cms"),
        ])
        .unwrap()
        .cms
        .unwrap();
        assert_eq!(
            (cms.method.as_str(), cms.path.as_str()),
            ("PATCH", "/api/products/{sku}")
        );
        assert_eq!(cms.body, r#"{"image_url": "{image_url}"}"#);
    }

    #[test]
    fn report_links_last_seven_days_unless_set_shorter() {
        let base = [("IMAGEPIPE_BUCKET", "b"), ("LEDGER_TABLE", "t")];
        assert_eq!(config(&base).unwrap().report_link, Duration::from_secs(7 * 86_400));
        let hour = config(&[base[0], base[1], ("REPORT_LINK_SECS", "3600")]).unwrap();
        assert_eq!(hour.report_link, Duration::from_secs(3600));
        for refused in ["0", "604801", "a week"] {
            let error = config(&[base[0], base[1], ("REPORT_LINK_SECS", refused)]).unwrap_err();
            assert!(error.to_string().contains("REPORT_LINK_SECS"), "{error}");
        }
    }
}
