//! A deployment's own templates and models: `config/templates.toml` and `config/models.toml` in its
//! bucket extend (or replace, by name) the built-in ones. Read when a run starts; the run keeps the
//! templates document and the model entry it used, so editing the files mid-run changes nothing
//! for that run.

use crate::domain::catalog::Catalog;
use crate::domain::template::TemplateSet;
use crate::ports::store::ObjectStore;

/// Where a deployment's templates are in its bucket.
pub const TEMPLATES_KEY: &str = "config/templates.toml";
/// Where a deployment's models are in its bucket.
pub const MODELS_KEY: &str = "config/models.toml";
/// Largest config file read: a run keeps its templates document in its ledger record (≤ 400 KB).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// The templates and models a run can use.
#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    pub templates: TemplateSet,
    pub catalog: Catalog,
}

/// A deployment's config file cannot be used; the message names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{file} is {bytes} bytes; config files are limited to {MAX_CONFIG_BYTES} bytes")]
    TooLarge { file: String, bytes: usize },
    #[error("{file} is not UTF-8 text")]
    NotText { file: String },
    #[error("{file} could not be read: {error}")]
    Unreadable {
        file: String,
        error: crate::ports::store::StoreError,
    },
    #[error(transparent)]
    Templates(#[from] crate::domain::template::TemplateError),
    #[error(transparent)]
    Models(#[from] crate::domain::catalog::CatalogError),
}

impl DeploymentConfig {
    /// The built-ins extended by the bucket's files' texts; an error names the file, line and problem.
    pub fn from_texts(templates: Option<&str>, models: Option<&str>) -> Result<Self, ConfigFileError> {
        Self::from_named_texts(templates.map(|t| (TEMPLATES_KEY, t)), models.map(|m| (MODELS_KEY, m)))
    }

    /// [`from_texts`](Self::from_texts) for files named otherwise (`(name, text)`), as errors name them.
    pub fn from_named_texts(
        templates: Option<(&str, &str)>,
        models: Option<(&str, &str)>,
    ) -> Result<Self, ConfigFileError> {
        let mut catalog = Catalog::builtin();
        if let Some((name, text)) = models {
            check_size(name, text)?;
            catalog.extend_from_toml(text, name)?;
        }
        let mut set = TemplateSet::builtin();
        if let Some((name, text)) = templates {
            check_size(name, text)?;
            set.extend(TemplateSet::from_toml(text, name)?);
        }
        Ok(Self {
            templates: set,
            catalog,
        })
    }

    /// Reads the deployment's files from `store` (absent files leave the built-ins as they are).
    pub async fn load<S: ObjectStore>(store: &S) -> Result<Self, ConfigFileError> {
        let read = |key: &'static str| async move {
            match store.get(key).await {
                Ok(None) => Ok(None),
                Ok(Some(bytes)) => String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| ConfigFileError::NotText { file: key.into() }),
                Err(error) => Err(ConfigFileError::Unreadable {
                    file: key.into(),
                    error,
                }),
            }
        };
        let (templates, models) = (read(TEMPLATES_KEY).await?, read(MODELS_KEY).await?);
        Self::from_texts(templates.as_deref(), models.as_deref())
    }
}

fn check_size(key: &str, text: &str) -> Result<(), ConfigFileError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge {
            file: key.into(),
            bytes: text.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::DEFAULT_TEMPLATES;

    const HOUSE: &str =
        "[templates.house]\nprompt = \"House style: {name}\"\nmodel = \"house-model\"\nkey = \"{sku}\"\n";
    const MODELS: &str = "prices_as_of = \"2026-12-01\"\n[models.house-model]\nprovider = \"placeholder\"\n\
                          provider_model = \"placeholder\"\nprice_per_image = 0.0\n";

    #[test]
    fn files_extend_the_built_ins_and_a_run_keeps_the_document_of_its_template() {
        let config = DeploymentConfig::from_texts(Some(HOUSE), Some(MODELS)).unwrap();
        assert!(config.templates.get("house").is_ok() && config.templates.get("product_hero").is_ok());
        assert!(config.catalog.model("house-model").is_ok());
        assert_eq!(config.templates.get("house").unwrap().document(), HOUSE);
        assert_eq!(
            config.templates.get("product_hero").unwrap().document(),
            DEFAULT_TEMPLATES
        );
    }

    #[test]
    fn a_broken_file_is_named_with_its_line() {
        let error = DeploymentConfig::from_texts(Some("[templates.x]\nprompt = \n"), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains(TEMPLATES_KEY) && error.contains("line 2"), "{error}");
        let error = DeploymentConfig::from_texts(None, Some("[models.y]\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains(MODELS_KEY), "{error}");
    }
}
