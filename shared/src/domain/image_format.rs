//! Checks image bytes (PNG, JPEG, WebP) whole — structure, checksums, sane dimensions — so nothing
//! that is not an image is stored, reused or sent as a reference.

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

/// Largest width or height accepted: no provider makes larger images, and a header claiming more is a lie.
pub const MAX_DIMENSION: u32 = 16384;

/// The bytes are not an image imagepipe can store; the message says what they look like instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider returned {0}, not a PNG, JPEG or WebP image")]
pub struct NotAnImage(pub String);

/// Checks the whole file — PNG chunks and their CRCs up to `IEND`, JPEG segments up to the end
/// marker with a frame header, WebP RIFF sizes — and reads the format and dimensions.
pub fn inspect(bytes: &[u8]) -> Result<ImageInfo, NotAnImage> {
    let (format, walked) = if bytes.starts_with(PNG_SIGNATURE) {
        (ImageFormat::Png, walk_png(bytes))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (ImageFormat::Jpeg, walk_jpeg(bytes))
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        (ImageFormat::Webp, walk_webp(bytes))
    } else {
        return Err(NotAnImage(describe(bytes)));
    };
    let (width, height) = walked.map_err(|what| NotAnImage(format!("a corrupt {}: {what}", format.extension())))?;
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(NotAnImage(format!(
            "an image claiming {width}x{height} (each side must be 1 to {MAX_DIMENSION})"
        )));
    }
    Ok(ImageInfo { format, width, height })
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

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

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

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The CRC-32 of PNG chunks (ISO 3309, reflected, polynomial 0xEDB88320).
fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    let crc = parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8));
    !crc
}

/// Every chunk's length and CRC, `IHDR` first, image data present, up to `IEND`.
fn walk_png(b: &[u8]) -> Result<(u32, u32), &'static str> {
    let mut at = PNG_SIGNATURE.len();
    let (mut size, mut data) = (None, false);
    loop {
        let len = be_u32(b, at).ok_or("truncated")? as usize;
        let kind = b.get(at + 4..at + 8).ok_or("truncated")?;
        let body = b.get(at + 8..at + 8 + len).ok_or("truncated")?;
        let crc = be_u32(b, at + 8 + len).ok_or("truncated")?;
        if crc32(&[kind, body]) != crc {
            return Err("a chunk's CRC does not match");
        }
        match (kind, size) {
            (b"IHDR", None) if len == 13 => size = Some((be_u32(body, 0).unwrap_or(0), be_u32(body, 4).unwrap_or(0))),
            (_, None) => return Err("no IHDR header first"),
            (b"IDAT", _) => data = true,
            (b"IEND", Some(size)) if data => return Ok(size),
            (b"IEND", _) => return Err("no image data"),
            _ => {}
        }
        at += 12 + len;
    }
}

/// Segments up to the start of scan, entropy-coded data up to the end marker; a frame header seen.
fn walk_jpeg(b: &[u8]) -> Result<(u32, u32), &'static str> {
    let mut at = 2;
    let mut size = None;
    loop {
        while b.get(at) == Some(&0xFF) && b.get(at + 1) == Some(&0xFF) {
            at += 1; // fill bytes
        }
        if b.get(at) != Some(&0xFF) {
            return Err("a segment does not start with a marker");
        }
        let marker = *b.get(at + 1).ok_or("truncated")?;
        match marker {
            0xD9 => return size.ok_or("no frame header"),
            0x01 | 0xD0..=0xD7 => {
                at += 2;
                continue;
            }
            _ => {}
        }
        let len = be_u16(b, at + 2).ok_or("truncated")? as usize;
        if len < 2 || b.len() < at + 2 + len {
            return Err("truncated");
        }
        // SOF0..SOF15 carry the frame size, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            size = Some((
                be_u16(b, at + 7).ok_or("truncated")?,
                be_u16(b, at + 5).ok_or("truncated")?,
            ));
        }
        at += 2 + len;
        if marker == 0xDA {
            size.ok_or("scan before the frame header")?;
            at = skip_scan(b, at).ok_or("truncated: no end marker")?;
        }
    }
}

/// The position of the next marker after entropy-coded data (stuffed `FF 00` and restarts skipped).
fn skip_scan(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += b.get(at..)?.iter().position(|&x| x == 0xFF)?;
        match *b.get(at + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => at += if b[at + 1] == 0xFF { 1 } else { 2 },
            _ => return Some(at),
        }
    }
}

/// The RIFF size matches the file, every chunk fits, and the first chunk is an image one.
fn walk_webp(b: &[u8]) -> Result<(u32, u32), &'static str> {
    let riff = le_u32(b, 4).ok_or("truncated")? as usize;
    if riff + 8 != b.len() && riff + 9 != b.len() {
        return Err("the RIFF size does not match the file");
    }
    let mut at = 12;
    while at + 8 <= riff + 8 {
        let len = le_u32(b, at + 4).ok_or("truncated")? as usize;
        if at + 8 + len > b.len() {
            return Err("a chunk runs past the end");
        }
        at += 8 + len + (len & 1);
    }
    let size = match b.get(12..16).ok_or("truncated")? {
        b"VP8 " => le_u16(b, 26).zip(le_u16(b, 28)).map(|(w, h)| (w & 0x3FFF, h & 0x3FFF)),
        b"VP8L" => le_u32(b, 21).map(|bits| ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)),
        b"VP8X" => le_u24(b, 24).zip(le_u24(b, 27)).map(|(w, h)| (w + 1, h + 1)),
        _ => None,
    };
    size.ok_or("no image chunk first")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::placeholder::render_png;

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

    fn webp_lossless(width: u32, height: u32) -> Vec<u8> {
        let bits: u32 = (width - 1) | ((height - 1) << 14);
        let mut chunk = b"VP8L\x05\0\0\0\x2f".to_vec();
        chunk.extend_from_slice(&bits.to_le_bytes());
        chunk.push(0); // pad to an even size
        let mut webp = b"RIFF".to_vec();
        webp.extend_from_slice(&(4 + chunk.len() as u32).to_le_bytes());
        webp.extend_from_slice(b"WEBP");
        webp.extend_from_slice(&chunk);
        webp
    }

    #[test]
    fn webp_lossless_dimensions_are_read() {
        assert_eq!(
            inspect(&webp_lossless(100, 50)),
            Ok(ImageInfo {
                format: ImageFormat::Webp,
                width: 100,
                height: 50
            })
        );
        let mut lying = webp_lossless(100, 50);
        lying[4] += 64;
        assert!(inspect(&lying).unwrap_err().0.contains("RIFF size"));
    }

    #[test]
    fn a_png_header_followed_by_garbage_or_cut_short_is_refused() {
        let png = render_png(64, 64, b"seed").unwrap();
        let mut garbage = png[..40].to_vec();
        garbage.extend_from_slice(&[0x42; 400]);
        assert!(inspect(&garbage).unwrap_err().0.contains("corrupt png"));
        let mut flipped = png.clone();
        let middle = png.len() / 2;
        flipped[middle] ^= 0xFF;
        assert!(inspect(&flipped).unwrap_err().0.contains("CRC"));
        assert!(inspect(&png[..png.len() - 12]).unwrap_err().0.contains("truncated"));
    }

    #[test]
    fn a_png_claiming_huge_dimensions_is_refused() {
        let mut png = render_png(8, 8, b"seed").unwrap();
        png[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]); // 100000x100000
        let crc = crc32(&[&png[12..29]]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(inspect(&png).unwrap_err().0.contains("claiming 100000x100000"));
    }

    #[test]
    fn a_jpeg_without_end_marker_or_frame_header_is_refused() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9];
        assert!(inspect(&jpeg).unwrap_err().0.contains("frame header"));
        let cut = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x4A];
        assert!(inspect(&cut).unwrap_err().0.contains("truncated"));
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
        assert_eq!(
            inspect(b"").unwrap_err().to_string(),
            "provider returned an empty body, not a PNG, JPEG or WebP image"
        );
    }
}
