//! The offline provider: a real, deterministic PNG of the requested size, with no network and no cost.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage};

/// Renders a banded PNG whose colours are derived from the prompt and seed.
/// The provider's name in the catalog and on the command line.
pub const NAME: &str = "placeholder";

#[derive(Debug, Clone, Copy, Default)]
pub struct PlaceholderProvider;

#[async_trait::async_trait]
impl ImageProvider for PlaceholderProvider {
    fn name(&self) -> &str {
        NAME
    }

    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let mut seed = Sha256::new();
        seed.update(request.prompt.as_bytes());
        seed.update(request.seed.to_le_bytes());
        let (width, height) = (request.size.width, request.size.height);
        let digest = seed.finalize();
        let bytes = tokio::task::spawn_blocking(move || render_png(width, height, &digest))
            .await
            .map_err(|e| ProviderError::Unavailable {
                message: format!("placeholder renderer stopped: {e}"),
            })?
            .map_err(|e| ProviderError::Rejected {
                message: format!("cannot render {width}x{height}: {e}"),
            })?;
        Ok(ProviderImage {
            bytes: Bytes::from(bytes),
            reported_cost_usd: Some(0.0),
            request_id: None,
            usage: Default::default(),
        })
    }
}

/// Encodes a `width`×`height` RGB PNG of eight horizontal bands coloured from `seed`.
///
/// Rows within a band are identical, so the `Up` filter turns them into zeros and the image
/// compresses to a few KB however large it is.
pub fn render_png(width: u32, height: u32, seed: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    const BANDS: u32 = 8;
    let palette: Vec<[u8; 3]> = (0..BANDS as usize)
        .map(|i| {
            let at = |k: usize| seed.get((i * 3 + k) % seed.len().max(1)).copied().unwrap_or(128);
            [at(0), at(1), at(2)]
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Up);
    let mut writer = encoder.write_header()?;
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let band = (y * BANDS / height) as usize;
        for _ in 0..width {
            data.extend_from_slice(&palette[band]);
        }
    }
    writer.write_image_data(&data)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::image_format::{ImageFormat, inspect};
    use crate::domain::template::ImageSize;

    fn request(prompt: &str) -> ImageRequest {
        ImageRequest {
            provider_model: "placeholder-v1".into(),
            quality: None,
            prompt: prompt.into(),
            size: ImageSize {
                width: 640,
                height: 480,
            },
            references: vec![],
            seed: 7,
            timeout: std::time::Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn placeholder_renders_a_png_of_the_requested_size() {
        let image = PlaceholderProvider.generate(&request("red shoe")).await.unwrap();
        let info = inspect(&image.bytes).unwrap();
        assert_eq!((info.format, info.width, info.height), (ImageFormat::Png, 640, 480));
    }

    #[tokio::test]
    async fn placeholder_is_deterministic_per_prompt() {
        let a = PlaceholderProvider.generate(&request("red shoe")).await.unwrap().bytes;
        let b = PlaceholderProvider.generate(&request("red shoe")).await.unwrap().bytes;
        let c = PlaceholderProvider.generate(&request("blue shoe")).await.unwrap().bytes;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
