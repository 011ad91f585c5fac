//! Test doubles for the provider port: scripted failures in front of the placeholder renderer.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::placeholder::PlaceholderProvider;
use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage};

/// What the scripted provider does for prompts that contain a given text.
#[derive(Debug, Clone)]
pub enum Script {
    /// Fail the first `times` calls for the prompt with `error`, then succeed.
    FailTimes(u32, ProviderError),
    /// Fail every call with `error`.
    Always(ProviderError),
    /// Answer with these bytes (e.g. an HTML page) instead of an image.
    Body(Bytes),
}

/// A provider that follows per-prompt scripts and renders placeholders otherwise; counts every call.
#[derive(Debug, Default)]
pub struct ScriptedProvider {
    scripts: Vec<(String, Script)>,
    calls: Mutex<HashMap<String, u32>>,
}

impl ScriptedProvider {
    /// Adds a script for prompts containing `needle`; the first matching script wins.
    pub fn on(mut self, needle: &str, script: Script) -> Self {
        self.scripts.push((needle.to_owned(), script));
        self
    }

    /// Calls made for prompts containing `needle`.
    pub fn calls_for(&self, needle: &str) -> u32 {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.iter().filter(|(p, _)| p.contains(needle)).map(|(_, n)| n).sum()
    }

    /// All calls made.
    pub fn total_calls(&self) -> u32 {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

#[async_trait::async_trait]
impl ImageProvider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let n = calls.entry(request.prompt.clone()).or_default();
            *n += 1;
            *n
        };
        match self
            .scripts
            .iter()
            .find(|(needle, _)| request.prompt.contains(needle.as_str()))
        {
            Some((_, Script::FailTimes(times, error))) if call <= *times => Err(error.clone()),
            Some((_, Script::Always(error))) => Err(error.clone()),
            Some((_, Script::Body(bytes))) => Ok(ProviderImage {
                bytes: bytes.clone(),
                reported_cost_usd: None,
                request_id: None,
                usage: Default::default(),
            }),
            _ => PlaceholderProvider.generate(request).await,
        }
    }
}
