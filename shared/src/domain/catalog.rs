//! The model catalog: model name -> provider, provider model id and dated list price.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The catalog shipped with imagepipe.
pub const CATALOG_TOML: &str = include_str!("../../../catalog/models.toml");

/// One model a template can name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Provider that serves it: gemini, seedream, openai, bedrock, placeholder.
    pub provider: String,
    /// The id the provider's API expects.
    pub provider_model: String,
    /// Quality tier passed to providers that take one (OpenAI `quality`, Bedrock `quality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// List price of one image, USD.
    pub price_per_image: f64,
    /// Price through the provider's batch API, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_price_per_image: Option<f64>,
    /// What the model is good for.
    #[serde(default)]
    pub use_for: String,
    /// Token prices, for models billed by token: a call's actual cost comes from the usage the
    /// provider reports instead of the per-image list price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_million_input_tokens: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_million_output_tokens: Option<f64>,
}

impl ModelInfo {
    /// What one call cost: from the reported output tokens when the catalog has token prices,
    /// else the list price per image.
    pub fn cost_of(&self, usage: &crate::providers::Usage) -> f64 {
        match (usage.output_tokens, self.usd_per_million_output_tokens) {
            (Some(output), Some(output_price)) => {
                let input = usage.input_tokens.unwrap_or(0) as f64 * self.usd_per_million_input_tokens.unwrap_or(0.0);
                (input + output as f64 * output_price) / 1_000_000.0
            }
            _ => self.price_per_image,
        }
    }
}

/// All models with the date their prices were checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub prices_as_of: String,
    pub currency: String,
    /// AWS prices of the serverless path.
    pub aws: crate::domain::aws_cost::AwsPrices,
    pub models: BTreeMap<String, ModelInfo>,
}

/// The model name is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {name:?}; known models: {}", known.join(", "))]
pub struct UnknownModel {
    pub name: String,
    pub known: Vec<String>,
}

/// A models file cannot extend the catalog; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("models file {file} is not valid: {message}")]
    Invalid { file: String, message: String },
    #[error("models file {file}: prices in {currency}, the catalog is in {catalog}")]
    Currency {
        file: String,
        currency: String,
        catalog: String,
    },
    #[error("models file {file}: model {model:?} names provider {provider:?}; known providers: {}", crate::providers::registry::names().join(", "))]
    UnknownProvider {
        file: String,
        model: String,
        provider: String,
    },
}

/// The row counts the cost table is computed for.
pub const COST_TABLE_SIZES: [u64; 4] = [100, 1_000, 10_000, 100_000];

/// A models file that extends the catalog: dated prices and the models it adds or replaces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    prices_as_of: String,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    aws: Option<crate::domain::aws_cost::AwsPrices>,
    models: BTreeMap<String, ModelInfo>,
}

impl Catalog {
    /// Adds (or replaces) the models of the TOML document `text`, named `origin` in errors, which
    /// must date its prices (`prices_as_of`) and may replace the AWS prices.
    pub fn extend_from_toml(&mut self, text: &str, origin: &str) -> Result<(), CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Invalid {
            file: origin.into(),
            message: e.to_string(),
        })?;
        if let Some(currency) = file.currency.filter(|c| *c != self.currency) {
            return Err(CatalogError::Currency {
                file: origin.into(),
                currency,
                catalog: self.currency.clone(),
            });
        }
        if let Some((model, info)) =
            (file.models.iter()).find(|(_, m)| crate::providers::registry::entry(&m.provider).is_err())
        {
            return Err(CatalogError::UnknownProvider {
                file: origin.into(),
                model: model.clone(),
                provider: info.provider.clone(),
            });
        }
        self.prices_as_of = file.prices_as_of;
        if let Some(aws) = file.aws {
            self.aws = aws;
        }
        self.models.extend(file.models);
        Ok(())
    }

    /// The shipped catalog.
    pub fn builtin() -> Self {
        toml::from_str(CATALOG_TOML).expect("built-in catalog is valid")
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Result<&ModelInfo, UnknownModel> {
        self.models.get(name).ok_or_else(|| UnknownModel {
            name: name.to_owned(),
            known: self.models.keys().cloned().collect(),
        })
    }

    /// Provider cost of `images` images for every model, cheapest first.
    pub fn cost_table(&self, images: u64) -> Vec<CostLine> {
        let mut lines: Vec<CostLine> = self
            .models
            .iter()
            .map(|(name, m)| CostLine {
                model: name.clone(),
                provider: m.provider.clone(),
                price_per_image: m.price_per_image,
                cost_usd: m.price_per_image * images as f64,
                batch_cost_usd: m.batch_price_per_image.map(|p| p * images as f64),
            })
            .collect();
        lines.sort_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd).then_with(|| a.model.cmp(&b.model)));
        lines
    }
}

/// One model's cost for a given number of images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostLine {
    pub model: String,
    pub provider: String,
    pub price_per_image: f64,
    pub cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_cost_usd: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why the built-in catalog cannot take `text` (a models file named `origin`).
    fn load_error(text: &str, origin: &str) -> String {
        Catalog::builtin()
            .extend_from_toml(text, origin)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_model_names_a_registered_provider_and_a_typo_fails_at_load() {
        for (name, model) in &Catalog::builtin().models {
            assert!(crate::providers::registry::entry(&model.provider).is_ok(), "{name}");
        }
        let text = "prices_as_of = \"2026-12-01\"\n[models.house]\nprovider = \"gemeni\"\n\
                    provider_model = \"x\"\nprice_per_image = 0.02\n";
        let error = load_error(text, "models.toml");
        assert!(
            error.contains("\"gemeni\"") && error.contains("known providers: placeholder, gemini"),
            "{error}"
        );
    }

    #[test]
    fn a_models_file_adds_and_replaces_models_and_names_its_line_when_broken() {
        let mut catalog = Catalog::builtin();
        let text = "prices_as_of = \"2026-12-01\"\n[models.house]\nprovider = \"gemini\"\n\
                    provider_model = \"gemini-2.5-flash-image\"\nprice_per_image = 0.02\n";
        catalog.extend_from_toml(text, "config/models.toml").unwrap();
        assert_eq!(catalog.model("house").unwrap().price_per_image, 0.02);
        assert!(catalog.model("nano-banana").is_ok());
        assert_eq!(catalog.prices_as_of, "2026-12-01");
        let error = load_error(
            "prices_as_of = \"x\"\n[models.bad]\nprovider = 3\n",
            "config/models.toml",
        );
        assert!(
            error.contains("config/models.toml") && error.contains("line 3"),
            "{error}"
        );
    }

    #[test]
    fn reported_tokens_price_a_call_and_models_without_token_prices_use_the_list_price() {
        let catalog = Catalog::builtin();
        let usage = crate::providers::Usage {
            input_tokens: Some(1000),
            output_tokens: Some(1120),
            credits: None,
        };
        let pro = catalog.model("nano-banana-pro").unwrap().cost_of(&usage);
        assert!((pro - (1000.0 * 2.0 + 1120.0 * 120.0) / 1e6).abs() < 1e-9, "{pro}");
        assert_eq!(catalog.model("seedream-4").unwrap().cost_of(&usage), 0.03);
        let no_usage = crate::providers::Usage::default();
        assert_eq!(catalog.model("nano-banana").unwrap().cost_of(&no_usage), 0.039);
    }

    #[test]
    fn builtin_catalog_has_the_required_models_with_dated_prices() {
        let catalog = Catalog::builtin();
        assert!(!catalog.prices_as_of.is_empty());
        for name in ["nano-banana-2", "nano-banana-pro", "seedream-5", "placeholder"] {
            catalog.model(name).unwrap();
        }
        assert_eq!(
            catalog.model("nano-banana-pro").unwrap().provider_model,
            "gemini-3-pro-image-preview"
        );
    }

    #[test]
    fn cost_table_multiplies_price_by_count() {
        let table = Catalog::builtin().cost_table(1_000);
        let pro = table.iter().find(|l| l.model == "nano-banana-pro").unwrap();
        assert!((pro.cost_usd - 134.0).abs() < 1e-9);
        assert!((pro.batch_cost_usd.unwrap() - 67.0).abs() < 1e-9);
        assert!(table.windows(2).all(|w| w[0].cost_usd <= w[1].cost_usd));
    }

    #[test]
    fn unknown_model_lists_known_ones() {
        let err = Catalog::builtin().model("dall-e-9").unwrap_err().to_string();
        assert!(err.contains("dall-e-9") && err.contains("nano-banana-2"), "{err}");
    }
}
