//! The offline provider: a real, deterministic PNG of the requested size showing its row's key and
//! the start of its prompt, with no network and no cost.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage};

/// The provider's name in the catalog and on the command line.
pub const NAME: &str = "placeholder";

/// Renders a banded PNG whose colours are derived from the prompt and seed, labelled with the key and prompt.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaceholderProvider;

#[async_trait::async_trait]
impl ImageProvider for PlaceholderProvider {
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let mut seed = Sha256::new();
        seed.update(request.prompt.as_bytes());
        seed.update(request.seed.to_le_bytes());
        let (width, height) = (request.size.width, request.size.height);
        let digest = seed.finalize();
        let lines = label_lines(&request.key, &request.prompt, Layout::of(width, height).columns);
        let bytes = tokio::task::spawn_blocking(move || render_labelled_png(width, height, &digest, &lines))
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

    fn name(&self) -> &str {
        NAME
    }
}

/// Encodes a `width`×`height` RGB PNG of eight horizontal bands coloured from `seed`.
pub fn render_png(width: u32, height: u32, seed: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    render_labelled_png(width, height, seed, &[])
}

/// [`render_png`] with `lines` of text drawn on a light box at the top left, in an 8×8 bitmap font
/// scaled to the image; characters outside printable ASCII are drawn as `?`.
///
/// Rows within a band are identical, so the `Up` filter turns them into zeros and the image
/// compresses to a few KB however large it is.
pub fn render_labelled_png(
    width: u32,
    height: u32,
    seed: &[u8],
    lines: &[String],
) -> Result<Vec<u8>, png::EncodingError> {
    const BANDS: u32 = 8;
    let palette: Vec<[u8; 3]> = (0..BANDS as usize)
        .map(|i| {
            let at = |k: usize| seed.get((i * 3 + k) % seed.len().max(1)).copied().unwrap_or(128);
            [at(0), at(1), at(2)]
        })
        .collect();
    let mut canvas = Canvas {
        width: width as usize,
        data: Vec::with_capacity(width as usize * height as usize * 3),
    };
    for y in 0..height {
        let band = (y * BANDS / height) as usize;
        for _ in 0..width {
            canvas.data.extend_from_slice(&palette[band]);
        }
    }
    if !lines.is_empty() {
        let layout = Layout::of(width, height);
        canvas.label(&layout, &lines[..lines.len().min(layout.lines)]);
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Up);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.data)?;
    writer.finish()?;
    Ok(out)
}

/// Font pixels per glyph side, and per line (the glyph and two blank rows).
const GLYPH: usize = 8;
const LINE: usize = 10;
/// Lines of prompt drawn under the key.
const PROMPT_LINES: usize = 4;
const BOX: [u8; 3] = [246, 245, 240];
const INK: [u8; 3] = [24, 24, 28];

/// Where the text goes: the font scaled to about 40 characters across the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Image pixels per font pixel.
    pub scale: usize,
    /// Characters per line.
    pub columns: usize,
    /// Lines that fit.
    pub lines: usize,
}

impl Layout {
    pub fn of(width: u32, height: u32) -> Self {
        let (width, height) = (width as usize, height as usize);
        let scale = (width.min(height) / 320).max(1);
        let inner = |side: usize| side.saturating_sub(4 * GLYPH * scale);
        Self {
            scale,
            columns: inner(width) / (GLYPH * scale),
            lines: (inner(height) / (LINE * scale)).min(1 + PROMPT_LINES),
        }
    }
}

/// The text of a placeholder: the key, then the prompt word-wrapped to `columns`, the last line
/// ending in `...` when the prompt goes on. Printable ASCII only: anything else becomes `?`.
pub fn label_lines(key: &str, prompt: &str, columns: usize) -> Vec<String> {
    let ascii = |text: &str| -> String {
        text.chars()
            .map(|c| match c {
                ' '..='~' => c,
                c if c.is_whitespace() => ' ',
                _ => '?',
            })
            .collect()
    };
    let columns = columns.max(4);
    let mut lines = vec![ascii(key).chars().take(columns).collect::<String>()];
    let mut line = String::new();
    for word in ascii(prompt).split_whitespace() {
        for piece in word
            .as_bytes()
            .chunks(columns)
            .map(|c| String::from_utf8_lossy(c).into_owned())
        {
            if !line.is_empty() && line.len() + 1 + piece.len() > columns {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&piece);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > 1 + PROMPT_LINES {
        lines.truncate(1 + PROMPT_LINES);
        let last = &mut lines[PROMPT_LINES];
        last.truncate(columns - 3);
        last.push_str("...");
    }
    lines
}

/// RGB pixels, row by row.
struct Canvas {
    width: usize,
    data: Vec<u8>,
}

impl Canvas {
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, colour: [u8; 3]) {
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            for pixel in self.data[start..start + w * 3].chunks_exact_mut(3) {
                pixel.copy_from_slice(&colour);
            }
        }
    }

    /// Draws `lines` on a light box inset by one glyph from the top left.
    fn label(&mut self, layout: &Layout, lines: &[String]) {
        let s = layout.scale;
        let widest = lines.iter().map(String::len).max().unwrap_or(0);
        if layout.columns < 4 || lines.is_empty() || widest == 0 {
            return;
        }
        let (left, pad) = (GLYPH * s, GLYPH * s / 2);
        self.fill(
            left,
            left,
            widest * GLYPH * s + 2 * pad,
            lines.len() * LINE * s + pad,
            BOX,
        );
        for (i, line) in lines.iter().enumerate() {
            for (j, byte) in line.bytes().enumerate() {
                let glyph = font8x8::legacy::BASIC_LEGACY[usize::from(byte & 0x7f)];
                let (x, y) = (left + pad + j * GLYPH * s, left + pad + i * LINE * s);
                for (row, bits) in glyph.iter().enumerate() {
                    for col in (0..GLYPH).filter(|col| bits >> col & 1 == 1) {
                        self.fill(x + col * s, y + row * s, s, s, INK);
                    }
                }
            }
        }
    }
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
            key: "product_hero/SKU-1".into(),
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

    fn pixels(png: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut data = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut data).unwrap();
        data.truncate(info.buffer_size());
        (info, data)
    }

    #[test]
    fn the_label_is_the_key_then_the_wrapped_prompt_in_ascii() {
        let lines = label_lines("t/café", "Photo of a\nlong-handled  mug, 日本", 12);
        assert_eq!(lines, ["t/caf?", "Photo of a", "long-handled", "mug, ??"]);
        let long = label_lines("k", &"word ".repeat(40), 12);
        assert_eq!(long.len(), 1 + PROMPT_LINES);
        assert_eq!(long[PROMPT_LINES], "word word...");
    }

    #[test]
    fn the_text_is_scaled_to_the_image() {
        assert_eq!(
            Layout::of(1024, 1024),
            Layout {
                scale: 3,
                columns: 38,
                lines: 5
            }
        );
        assert_eq!(
            Layout::of(64, 64),
            Layout {
                scale: 1,
                columns: 4,
                lines: 3
            }
        );
    }

    #[test]
    fn the_key_is_drawn_in_dark_ink_on_a_light_box() {
        let (width, height) = (1024, 1024);
        let lines = label_lines("t/SKU-1", "a mug", Layout::of(width, height).columns);
        let png = render_labelled_png(width, height, &[0; 32], &lines).unwrap();
        let (info, data) = pixels(&png);
        assert_eq!((info.width, info.height), (width, height));
        let at = |x: usize, y: usize| -> [u8; 3] {
            let i = (y * width as usize + x) * 3;
            [data[i], data[i + 1], data[i + 2]]
        };
        assert_eq!(at(30, 30), BOX, "the box starts one glyph (24 px) in");
        assert_eq!(at(10, 10), [0, 0, 0], "outside the box the band shows");
        let first_line = (36..60).flat_map(|y| (36..60).map(move |x| (x, y)));
        assert!(first_line.clone().any(|(x, y)| at(x, y) == INK), "the 't' is drawn");
        let unlabelled = render_labelled_png(width, height, &[0; 32], &[]).unwrap();
        let other_key = label_lines("t/SKU-2", "a mug", Layout::of(width, height).columns);
        assert_ne!(png, unlabelled);
        assert_ne!(png, render_labelled_png(width, height, &[0; 32], &other_key).unwrap());
    }

    #[test]
    fn a_labelled_1024_square_renders_in_well_under_a_second() {
        let lines = label_lines("product_hero/SKU-1001", &"Studio photo ".repeat(20), 38);
        let started = std::time::Instant::now();
        render_labelled_png(1024, 1024, b"seed", &lines).unwrap();
        eprintln!("labelled 1024x1024 placeholder rendered in {:?}", started.elapsed());
        // Optimised it takes about 3 ms; unoptimised test builds are ~30x slower. This catches a blow-up.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
