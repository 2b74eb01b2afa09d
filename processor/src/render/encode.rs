//! Lossy WebP with each variant's own settings, without metadata.

use fast_image_resize::images::Image;
use fast_image_resize::PixelType;

use super::{RenderError, WebpSettings};

/// Lossy WebP of 8-bit RGB or RGBA pixels at `settings`' quality and method (libwebp's speed
/// and size trade-off: 0 fastest, 6 smallest). Alpha is compressed losslessly, as libwebp's
/// simple API does.
pub(super) fn webp(image: &Image<'_>, settings: WebpSettings) -> Result<Vec<u8>, RenderError> {
    let (w, h) = (image.width(), image.height());
    let encoder = if image.pixel_type() == PixelType::U8x4 {
        webp::Encoder::from_rgba(image.buffer(), w, h)
    } else {
        webp::Encoder::from_rgb(image.buffer(), w, h)
    };
    let mut config = webp::WebPConfig::new()
        .map_err(|()| RenderError::Encode("libwebp refused its default configuration".into()))?;
    config.lossless = 0;
    config.alpha_compression = 1;
    config.quality = settings.quality;
    config.method = i32::from(settings.method);
    Ok(encoder
        .encode_advanced(&config)
        .map_err(|e| RenderError::Encode(format!("{e:?}").into()))?
        .to_vec())
}
