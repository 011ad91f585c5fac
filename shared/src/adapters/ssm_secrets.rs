//! Secrets by name from SSM Parameter Store (and Secrets Manager through SSM's
//! `/aws/reference/secretsmanager/` path): read once per container, never logged.

use std::collections::HashMap;

use crate::adapters::s3_store::error_chain;
use crate::drivers::config::{ConfigError, install_secrets, secret_variables};

/// Reads every secret given as `<NAME>_PARAM` in the environment and makes it visible to
/// [`crate::drivers::config::secret`].
pub async fn load_secrets(client: &aws_sdk_ssm::Client) -> Result<(), ConfigError> {
    install_secrets(read_secrets(client, |name| std::env::var(name).ok()).await?);
    Ok(())
}

/// Reads the secrets whose `<NAME>_PARAM` variable `var` names, from SSM.
pub async fn read_secrets(
    client: &aws_sdk_ssm::Client,
    var: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut values = HashMap::new();
    for name in secret_variables() {
        let Some(parameter) = var(&format!("{name}_PARAM")).filter(|p| !p.is_empty()) else {
            continue;
        };
        let output = client
            .get_parameter()
            .name(&parameter)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| ConfigError::Secret {
                name: format!("{name}_PARAM ({parameter})"),
                message: error_chain(&e),
            })?;
        let value = output.parameter().and_then(|p| p.value()).unwrap_or_default();
        if value.is_empty() {
            return Err(ConfigError::Secret {
                name: format!("{name}_PARAM ({parameter})"),
                message: "the parameter is empty".into(),
            });
        }
        tracing::info!(secret = name, %parameter, "secret read");
        values.insert(name.to_owned(), value.to_owned());
    }
    Ok(values)
}
