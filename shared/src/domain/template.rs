//! Named prompt templates loaded from TOML, and their binding to a CSV header.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::pattern::{Pattern, PatternError};

/// The templates shipped with imagepipe, used when no `--templates` file is given.
pub const DEFAULT_TEMPLATES: &str = include_str!("../../../templates/default.toml");

/// Largest templates file read (`--templates /dev/zero` must not read forever); real ones are a few KiB.
pub const MAX_TEMPLATES_BYTES: u64 = 1024 * 1024;

/// Why a template file or template could not be used; raised at plan time, before any row runs.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read templates file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("templates file {path} is larger than {MAX_TEMPLATES_BYTES} bytes")]
    TooLarge { path: String },
    #[error("templates file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("unknown template {name:?}; available: {}", available.join(", "))]
    Unknown { name: String, available: Vec<String> },
    #[error("template {template}: {field} pattern is invalid: {error}")]
    Pattern {
        template: String,
        field: &'static str,
        error: PatternError,
    },
    #[error("template {template}: size {size:?} is not WIDTHxHEIGHT with sides from 64 to 8192")]
    Size { template: String, size: String },
    #[error("template {template}: key pattern has no placeholder, so every row would write the same object")]
    ConstantKey { template: String },
    #[error(
        "template {template}: placeholder {{{placeholder}}} needs CSV column {column:?}, which the file does not \
         have; its columns are: {}", columns.join(", ")
    )]
    MissingColumn {
        template: String,
        placeholder: String,
        column: String,
        columns: Vec<String>,
    },
    #[error("template {template}: [columns] maps {placeholder:?}, which is not a placeholder in its prompt or key")]
    UnusedMapping { template: String, placeholder: String },
    #[error("CSV header has column {0:?} more than once")]
    DuplicateHeader(String),
}

/// Output dimensions in pixels, written `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    /// Parses `1024x1024`; sides must be within 64..=8192.
    pub fn parse(text: &str) -> Option<Self> {
        let (w, h) = text.trim().split_once(['x', 'X'])?;
        let (width, height) = (w.parse().ok()?, h.parse().ok()?);
        let ok = |side: u32| (64..=8192).contains(&side);
        (ok(width) && ok(height)).then_some(Self { width, height })
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    templates: BTreeMap<String, RawTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    prompt: String,
    model: String,
    #[serde(default = "default_size")]
    size: String,
    key: String,
    #[serde(default)]
    cms_id: Option<String>,
    #[serde(default)]
    source_image: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

/// How a run's images are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One provider call a row, as the rows arrive.
    #[default]
    Sync,
    /// Through the provider's batch API, in chunks: half the price, results within a day.
    Batch,
}

impl Mode {
    pub fn is_batch(self) -> bool {
        self == Self::Batch
    }
}

fn default_size() -> String {
    "1024x1024".to_owned()
}

/// One named template, parsed and checked on its own (not yet against a CSV).
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub prompt: Pattern,
    pub key: Pattern,
    /// What the CMS knows a row's item by (`cms_id = "{id}"`); the key pattern by default.
    pub cms_id: Pattern,
    pub model: String,
    pub size: ImageSize,
    /// CSV column holding reference image URLs (`;`-separated) for image-to-image.
    pub source_image: Option<String>,
    /// `mode = "batch"`: the template's runs go through the provider's batch API.
    pub mode: Mode,
    columns: BTreeMap<String, String>,
    /// The templates document this template was read from: what a run keeps to read its rows the
    /// same way until it ends.
    document: std::sync::Arc<str>,
}

/// All templates of one file, by name.
#[derive(Debug, Clone)]
pub struct TemplateSet {
    templates: BTreeMap<String, Template>,
}

impl TemplateSet {
    /// The shipped default templates.
    pub fn builtin() -> Self {
        Self::from_toml(DEFAULT_TEMPLATES, "<built-in templates>").expect("built-in templates are valid")
    }

    /// Loads the file at `path`, or the built-in set when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, TemplateError> {
        let Some(path) = path else { return Ok(Self::builtin()) };
        let shown = path.display().to_string();
        let read_error = |error| TemplateError::Read {
            path: shown.clone(),
            error,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_TEMPLATES_BYTES + 1).read_to_string(&mut text))
            .map_err(read_error)?;
        if text.len() as u64 > MAX_TEMPLATES_BYTES {
            return Err(TemplateError::TooLarge { path: shown });
        }
        Self::from_toml(&text, &shown)
    }

    /// Parses a templates TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TemplateError> {
        let file: TemplateFile = toml::from_str(text).map_err(|e| TemplateError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let document: std::sync::Arc<str> = text.into();
        let templates = file
            .templates
            .into_iter()
            .map(|(name, raw)| Template::from_raw(name.clone(), raw, document.clone()).map(|t| (name, t)))
            .collect::<Result<_, _>>()?;
        Ok(Self { templates })
    }

    /// The template called `name`, or an error listing the available ones.
    pub fn get(&self, name: &str) -> Result<&Template, TemplateError> {
        self.templates.get(name).ok_or_else(|| TemplateError::Unknown {
            name: name.to_owned(),
            available: self.templates.keys().cloned().collect(),
        })
    }

    /// Adds `other`'s templates, replacing those of the same name.
    pub fn extend(&mut self, other: TemplateSet) {
        self.templates.extend(other.templates);
    }

    /// Whether a template of this name is defined.
    pub fn contains(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// Template names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }
}

impl Template {
    fn from_raw(name: String, raw: RawTemplate, document: std::sync::Arc<str>) -> Result<Self, TemplateError> {
        let pattern = |field, text: &str| {
            Pattern::parse(text).map_err(|error| TemplateError::Pattern {
                template: name.clone(),
                field,
                error,
            })
        };
        let prompt = pattern("prompt", &raw.prompt)?;
        let key = pattern("key", &raw.key)?;
        let cms_id = match &raw.cms_id {
            Some(text) => pattern("cms_id", text)?,
            None => key.clone(),
        };
        if key.placeholders().is_empty() {
            return Err(TemplateError::ConstantKey { template: name });
        }
        let size = ImageSize::parse(&raw.size).ok_or_else(|| TemplateError::Size {
            template: name.clone(),
            size: raw.size,
        })?;
        let used: Vec<&str> = (prompt.placeholders().into_iter())
            .chain(key.placeholders())
            .chain(cms_id.placeholders())
            .collect();
        if let Some(unused) = raw.columns.keys().find(|p| !used.contains(&p.as_str())) {
            return Err(TemplateError::UnusedMapping {
                template: name,
                placeholder: unused.clone(),
            });
        }
        Ok(Self {
            prompt,
            key,
            cms_id,
            model: raw.model,
            size,
            source_image: raw.source_image,
            mode: raw.mode,
            columns: raw.columns,
            name,
            document,
        })
    }

    /// The templates document this template comes from.
    pub fn document(&self) -> &str {
        &self.document
    }

    /// The CSV column a placeholder reads: its `[columns]` mapping, else the placeholder's own name.
    pub fn column_for<'a>(&'a self, placeholder: &'a str) -> &'a str {
        self.columns.get(placeholder).map_or(placeholder, String::as_str)
    }

    /// Binds the template to a CSV header, checking that every column it needs is present.
    pub fn bind(&self, header: &[String]) -> Result<BoundTemplate, TemplateError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = header.iter().find(|h| !seen.insert(h.as_str())) {
            return Err(TemplateError::DuplicateHeader(dup.clone()));
        }
        let index_of = |placeholder: &str, column: &str| {
            header
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| TemplateError::MissingColumn {
                    template: self.name.clone(),
                    placeholder: placeholder.to_owned(),
                    column: column.to_owned(),
                    columns: header.to_vec(),
                })
        };
        let mut columns = BTreeMap::new();
        let placeholders = (self.prompt.placeholders().into_iter())
            .chain(self.key.placeholders())
            .chain(self.cms_id.placeholders());
        for placeholder in placeholders {
            let column = self.column_for(placeholder);
            columns.insert(
                placeholder.to_owned(),
                (column.to_owned(), index_of(placeholder, column)?),
            );
        }
        let source_image = match &self.source_image {
            Some(column) => Some((column.clone(), index_of("source_image", column)?)),
            None => None,
        };
        Ok(BoundTemplate {
            template: self.clone(),
            columns,
            source_image,
        })
    }
}

/// A template bound to one CSV header: each placeholder resolved to a column index.
#[derive(Debug, Clone)]
pub struct BoundTemplate {
    pub template: Template,
    /// placeholder -> (column name, column index)
    columns: BTreeMap<String, (String, usize)>,
    source_image: Option<(String, usize)>,
}

impl BoundTemplate {
    /// The (column name, index) a placeholder reads.
    pub fn column(&self, placeholder: &str) -> Option<(&str, usize)> {
        self.columns
            .get(placeholder)
            .map(|(name, index)| (name.as_str(), *index))
    }

    /// The (column name, index) holding reference images, if the template has one.
    pub fn source_image_column(&self) -> Option<(&str, usize)> {
        self.source_image.as_ref().map(|(name, index)| (name.as_str(), *index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|c| c.to_string()).collect()
    }

    const ONE: &str = r#"
        [templates.hero]
        prompt = "Photo: {product_name}, {color}"
        model = "nano-banana-2"
        size = "1024x768"
        key = "{sku}"
        [templates.hero.columns]
        product_name = "name"
    "#;

    /// Binds the `hero` template of [`ONE`] to a CSV with `columns`.
    fn bind_hero(columns: &[&str]) -> Result<BoundTemplate, TemplateError> {
        TemplateSet::from_toml(ONE, "t.toml")
            .unwrap()
            .get("hero")
            .unwrap()
            .bind(&header(columns))
    }

    #[test]
    fn builtin_set_has_the_five_templates() {
        let set = TemplateSet::builtin();
        let names: Vec<_> = set.names().collect();
        for name in ["blog_hero", "lifestyle", "product", "product_hero", "social_post"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn columns_table_maps_placeholders_to_headers() {
        let bound = bind_hero(&["sku", "name", "color"]).unwrap();
        assert_eq!(bound.column("product_name"), Some(("name", 1)));
        assert_eq!(bound.column("color"), Some(("color", 2)));
        assert_eq!(bound.template.size, ImageSize::parse("1024x768").unwrap());
    }

    #[test]
    fn missing_column_error_lists_the_csv_columns() {
        let err = bind_hero(&["sku", "title"]).unwrap_err().to_string();
        assert!(err.contains("{product_name}") && err.contains("\"name\""), "{err}");
        assert!(err.contains("sku, title"), "{err}");
    }

    #[test]
    fn unknown_template_lists_available_ones() {
        let err = TemplateSet::from_toml(ONE, "t.toml")
            .unwrap()
            .get("nope")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown template \"nope\"; available: hero");
    }

    #[test]
    fn mapping_for_a_placeholder_that_does_not_exist_is_rejected() {
        let text = ONE.replace("product_name = \"name\"", "product_name = \"name\"\ncolour = \"color\"");
        let err = TemplateSet::from_toml(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("\"colour\""), "{err}");
    }

    #[test]
    fn bad_patterns_sizes_and_fields_are_rejected_with_the_template_name() {
        let cases = [
            (ONE.replace("{color}\"", "{color\""), "prompt pattern is invalid"),
            (ONE.replace("1024x768", "huge"), "size \"huge\""),
            (
                ONE.replace("key = \"{sku}\"", "key = \"same\""),
                "every row would write the same object",
            ),
            (ONE.replace("size =", "sise ="), "unknown field"),
        ];
        for (text, expected) in cases {
            let err = TemplateSet::from_toml(&text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn duplicate_header_is_rejected() {
        let err = bind_hero(&["sku", "name", "color", "sku"]).unwrap_err();
        assert!(matches!(err, TemplateError::DuplicateHeader(c) if c == "sku"));
    }
}
