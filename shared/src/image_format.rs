//! Recognises image bytes (PNG, JPEG, WebP) from their headers, so nothing that is not an image is stored.

/// An image format imagepipe stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// Every format, in the order stores probe for an existing image.
    pub const ALL: [ImageFormat; 3] = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp];

    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    /// MIME type for `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// What the header of an image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// The bytes are not an image imagepipe can store; the message says what they look like instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider returned {0}, not a PNG, JPEG or WebP image")]
pub struct NotAnImage(pub String);

/// Reads the format and dimensions from the first bytes of `bytes`.
pub fn inspect(bytes: &[u8]) -> Result<ImageInfo, NotAnImage> {
    let info = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_size(bytes).map(|(w, h)| (ImageFormat::Png, w, h))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg_size(bytes).map(|(w, h)| (ImageFormat::Jpeg, w, h))
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        webp_size(bytes).map(|(w, h)| (ImageFormat::Webp, w, h))
    } else {
        return Err(NotAnImage(describe(bytes)));
    };
    match info {
        Some((format, width, height)) if width > 0 && height > 0 => Ok(ImageInfo { format, width, height }),
        _ => Err(NotAnImage("a truncated or corrupt image header".to_owned())),
    }
}

fn describe(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty body".to_owned();
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
    let head = head.trim_start();
    if looks_like_html(head) {
        "an HTML page".to_owned()
    } else if head.starts_with('{') || head.starts_with('[') {
        "a JSON document".to_owned()
    } else {
        format!("{} bytes of unrecognised data", bytes.len())
    }
}

/// Whether a body is an HTML page (an error page from a proxy or gateway, typically).
pub fn looks_like_html(text: &str) -> bool {
    let start: String = text.trim_start().chars().take(14).collect::<String>().to_lowercase();
    start.starts_with("<!doctype html") || start.starts_with("<html")
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(b: &[u8], at: usize) -> Option<u32> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?).into())
}

fn le_u16(b: &[u8], at: usize) -> Option<u32> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?).into())
}

fn le_u24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

fn png_size(b: &[u8]) -> Option<(u32, u32)> {
    (b.get(12..16)? == b"IHDR").then_some(())?;
    Some((be_u32(b, 16)?, be_u32(b, 20)?))
}

fn jpeg_size(b: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    loop {
        while *b.get(at)? == 0xFF && *b.get(at + 1)? == 0xFF {
            at += 1; // fill bytes
        }
        (*b.get(at)? == 0xFF).then_some(())?;
        let marker = *b.get(at + 1)?;
        let len = be_u16(b, at + 2)? as usize;
        // SOF0..SOF15 carry the frame size, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            return Some((be_u16(b, at + 7)?, be_u16(b, at + 5)?));
        }
        at += 2 + len;
    }
}

fn webp_size(b: &[u8]) -> Option<(u32, u32)> {
    match b.get(12..16)? {
        b"VP8 " => Some((le_u16(b, 26)? & 0x3FFF, le_u16(b, 28)? & 0x3FFF)),
        b"VP8L" => {
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => Some((le_u24(b, 24)? + 1, le_u24(b, 27)? + 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::placeholder::render_png;

    #[test]
    fn png_dimensions_are_read_from_ihdr() {
        let png = render_png(300, 200, b"seed").unwrap();
        assert_eq!(
            inspect(&png),
            Ok(ImageInfo {
                format: ImageFormat::Png,
                width: 300,
                height: 200
            })
        );
    }

    #[test]
    fn jpeg_dimensions_are_read_from_the_frame_header() {
        // SOI, APP0 (length 16), SOF0 (8-bit, 480x640), EOI
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        jpeg.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0xE0, 0x02, 0x80, 0x03]);
        jpeg.extend_from_slice(&[0; 9]);
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(
            inspect(&jpeg),
            Ok(ImageInfo {
                format: ImageFormat::Jpeg,
                width: 640,
                height: 480
            })
        );
    }

    #[test]
    fn webp_lossless_dimensions_are_read() {
        let mut webp = b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f".to_vec();
        let bits: u32 = (100 - 1) | ((50 - 1) << 14);
        webp.extend_from_slice(&bits.to_le_bytes());
        assert_eq!(
            inspect(&webp),
            Ok(ImageInfo {
                format: ImageFormat::Webp,
                width: 100,
                height: 50
            })
        );
    }

    #[test]
    fn html_json_and_truncated_bodies_are_not_images() {
        assert_eq!(
            inspect(b"  <!DOCTYPE html><title>502</title>").unwrap_err().0,
            "an HTML page"
        );
        assert_eq!(inspect(b"{\"error\":1}").unwrap_err().0, "a JSON document");
        assert_eq!(inspect(b"").unwrap_err().0, "an empty body");
        assert!(inspect(b"\x89PNG\r\n\x1a\n\0\0").unwrap_err().0.contains("truncated"));
    }
}
