//! Everything the service does with image bytes: recognise the container by
//! its magic bytes, read the dimensions from the header without decoding
//! (so an image bomb is refused before it costs memory), and render the
//! variants the worker stores.

use domain::{ImageFormat, Variant};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use std::io::Cursor;

/// Why an image was refused or could not be processed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImagingError {
    /// Not JPEG, PNG or WebP by its bytes.
    #[error("unsupported media type: only JPEG, PNG and WebP images are accepted")]
    Unsupported,
    /// The header could not be read.
    #[error("unreadable {0} image header")]
    BadHeader(&'static str),
    /// More pixels than allowed.
    #[error("image is {width}x{height}, more than the limit of {max_pixels} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// The body could not be decoded (truncated, corrupt).
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// Encoding a variant failed.
    #[error("cannot encode variant: {0}")]
    Encode(String),
}

/// Long side of the sharpened and blurred renditions: filters on a 40 MP
/// original would cost seconds for no visible gain on a screen.
pub const FILTERED_MAX_SIDE: u32 = 1024;
/// Bounding box of the thumbnail.
pub const THUMBNAIL_SIDE: u32 = 256;
/// Side of the square crop.
pub const SQUARE_SIDE: u32 = 512;
const JPEG_QUALITY: u8 = 85;

/// Recognises the container from the first bytes, whatever the file is called.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else {
        None
    }
}

fn codec(format: ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
    }
}

/// What an upload is, found from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Recognises the format and reads the dimensions from the header, refusing
/// images above `max_pixels` before any pixel is decoded.
pub fn inspect(bytes: &[u8], max_pixels: u64) -> Result<Inspected, ImagingError> {
    let format = sniff(bytes).ok_or(ImagingError::Unsupported)?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), codec(format))
        .into_dimensions()
        .map_err(|_| ImagingError::BadHeader(format.as_str()))?;
    if width == 0 || height == 0 {
        return Err(ImagingError::BadHeader(format.as_str()));
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(ImagingError::TooManyPixels {
            width,
            height,
            max_pixels,
        });
    }
    Ok(Inspected {
        format,
        width,
        height,
    })
}

/// Decodes an image, applying its EXIF orientation, under decoder limits
/// derived from `max_pixels` (a second line of defence behind [`inspect`]).
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ImagingError> {
    let info = inspect(bytes, max_pixels)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), codec(info.format));
    let mut limits = Limits::default();
    limits.max_image_width = Some(info.width);
    limits.max_image_height = Some(info.height);
    // 4 bytes per pixel plus room for the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let decode_err = |e: image::ImageError| ImagingError::Decode(e.to_string());
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The photo job's work: decodes `original` (at most `max_pixels`) and
/// renders every variant.
pub fn render_all(original: &[u8], max_pixels: u64) -> Result<Vec<(Variant, Vec<u8>)>, ImagingError> {
    let img = decode(original, max_pixels)?;
    Variant::ALL
        .into_iter()
        .map(|v| Ok((v, render(&img, v)?)))
        .collect()
}

/// Renders one variant of a decoded image as JPEG bytes.
pub fn render(img: &DynamicImage, variant: Variant) -> Result<Vec<u8>, ImagingError> {
    let out = match variant {
        Variant::Thumbnail => img.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE),
        Variant::Square => {
            img.resize_to_fill(SQUARE_SIDE, SQUARE_SIDE, image::imageops::FilterType::CatmullRom)
        }
        Variant::Sharpened => bounded(img).unsharpen(2.0, 4),
        Variant::Blurred => bounded(img).blur(4.0),
    };
    encode_jpeg(&out)
}

fn bounded(img: &DynamicImage) -> DynamicImage {
    if img.width().max(img.height()) > FILTERED_MAX_SIDE {
        img.thumbnail(FILTERED_MAX_SIDE, FILTERED_MAX_SIDE)
    } else {
        img.clone()
    }
}

fn encode_jpeg(img: &DynamicImage) -> Result<Vec<u8>, ImagingError> {
    let rgb = img.to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(&rgb)
        .map_err(|e| ImagingError::Encode(e.to_string()))?;
    Ok(out)
}

/// Test images made in memory, for this crate's tests and the integration
/// tests of the tiers above.
pub mod samples {
    use image::{ImageFormat as Codec, Rgb, RgbImage};
    use std::io::Cursor;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
        })
    }

    fn encode(img: &RgbImage, codec: Codec) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, codec).expect("in-memory encode");
        out.into_inner()
    }

    /// A PNG of `w` x `h`.
    pub fn png(w: u32, h: u32) -> Vec<u8> {
        encode(&gradient(w, h), Codec::Png)
    }

    /// A JPEG of `w` x `h`.
    pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
        encode(&gradient(w, h), Codec::Jpeg)
    }

    /// A lossless WebP of `w` x `h`.
    pub fn webp(w: u32, h: u32) -> Vec<u8> {
        encode(&gradient(w, h), Codec::WebP)
    }

    /// A PNG whose header claims `w` x `h` but that holds almost no data: an
    /// image bomb as far as a decoder that trusts headers is concerned.
    pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
        let mut png = png(1, 1);
        // IHDR data starts at byte 16: width and height, big-endian.
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        fix_ihdr_crc(&mut png);
        png
    }

    /// A PNG with a valid header and a corrupt body: passes [`super::inspect`]
    /// but fails [`super::decode`].
    pub fn png_corrupt_body(w: u32, h: u32) -> Vec<u8> {
        let mut png = png(w, h);
        let n = png.len();
        // Scramble the compressed data after the first IDAT chunk's length,
        // type and zlib header (bytes 33..43), leaving signature and IHDR intact.
        for b in &mut png[50..n - 12] {
            *b ^= 0x5A;
        }
        png
    }

    fn fix_ihdr_crc(png: &mut [u8]) {
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 40_000_000;

    #[test]
    fn sniffs_by_bytes() {
        assert_eq!(sniff(&samples::png(2, 2)), Some(ImageFormat::Png));
        assert_eq!(sniff(&samples::jpeg(2, 2)), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(&samples::webp(2, 2)), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"GIF89a...."), None);
        assert_eq!(sniff(b"<svg></svg>"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn inspect_reads_dimensions() {
        for bytes in [samples::png(30, 20), samples::jpeg(30, 20), samples::webp(30, 20)] {
            let i = inspect(&bytes, MAX).unwrap();
            assert_eq!((i.width, i.height), (30, 20));
        }
        assert_eq!(inspect(b"hello", MAX), Err(ImagingError::Unsupported));
        assert_eq!(
            inspect(b"\x89PNG\r\n\x1a\nxx", MAX),
            Err(ImagingError::BadHeader("png"))
        );
    }

    #[test]
    fn bombs_are_refused_from_the_header() {
        let bomb = samples::png_bomb(100_000, 100_000);
        assert!(matches!(
            inspect(&bomb, MAX),
            Err(ImagingError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                ..
            })
        ));
        assert!(matches!(
            decode(&bomb, MAX),
            Err(ImagingError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn corrupt_body_passes_inspect_and_fails_decode() {
        let bad = samples::png_corrupt_body(64, 64);
        assert!(inspect(&bad, MAX).is_ok());
        assert!(matches!(decode(&bad, MAX), Err(ImagingError::Decode(_))));
    }

    #[test]
    fn variants_have_their_sizes() {
        let img = decode(&samples::jpeg(1600, 900), MAX).unwrap();
        let size = |v| {
            let bytes = render(&img, v).unwrap();
            assert_eq!(sniff(&bytes), Some(ImageFormat::Jpeg));
            let i = inspect(&bytes, MAX).unwrap();
            (i.width, i.height)
        };
        assert_eq!(size(Variant::Thumbnail), (256, 144));
        assert_eq!(size(Variant::Square), (512, 512));
        assert_eq!(size(Variant::Sharpened), (1024, 576));
        assert_eq!(size(Variant::Blurred), (1024, 576));
    }

    #[test]
    fn blur_softens_and_sharpen_steepens_an_edge() {
        // Black left half, white right half.
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(64, 64, |x, _| {
            image::Luma([if x < 32 { 0 } else { 255 }])
        }));
        let pixel = |v, x| {
            let out = image::load_from_memory(&render(&img, v).unwrap())
                .unwrap()
                .to_luma8();
            out.get_pixel(x, 32).0[0] as i32
        };
        // Next to the edge, blur pulls the dark side up; sharpening pushes it
        // down (clamped at black) while the blur raises it well above.
        assert!(pixel(Variant::Blurred, 30) > 40);
        assert!(pixel(Variant::Sharpened, 30) < 15);
        assert!(pixel(Variant::Blurred, 33) < 215);
        assert!(pixel(Variant::Sharpened, 33) > 240);
    }
}
