//! The QR-code picture behind `GET /qr/loginpic?qrSize=&logoSize=&logo=`.
//!
//! The endpoint is seed-compatible, so its query parameters keep the seed's names and defaults
//! (`qrSize` 94, `logoSize` 32); this module validates them ([`Picture::parse`]) and draws the
//! PNG ([`render_png`]). The HTTP handler lives elsewhere and only glues the two together.
//!
//! Choices that keep the picture scannable:
//! - Error-correction level H (~30 % of codewords recoverable), because the optional logo is
//!   painted over the middle of the symbol and destroys the modules under it.
//! - Modules are whole pixels: the largest integer module size that fits is used and the
//!   symbol is centred on a white canvas of exactly `qrSize`. Fractional (nearest-neighbour)
//!   scaling would mix 1- and 2-pixel modules at the default size, which scanners cope with
//!   worse than a slightly wider margin.
//! - The quiet zone is the standard 4 modules, except on small canvases where keeping it would
//!   force modules under 3 px; there it shrinks to 2 modules (plus whatever the canvas leaves).
//! - Sizes are bounded ([`MIN_QR_SIZE`]..=[`MAX_QR_SIZE`], 1..=[`MAX_LOGO_SIZE`]) so a request
//!   cannot make us allocate a huge bitmap, and the drawn logo (its white pad included, since
//!   the pad hides modules just as well) is clamped to 40 % of the symbol's side whatever
//!   `logoSize` says.
//! - Logos are drawn with pixel loops from a few geometric primitives: no font or image
//!   assets to ship, and they stay crisp at every size.

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use qrcode::{Color, EcLevel, QrCode};

use crate::error::ApiError;

/// The seed's default `qrSize`.
pub const DEFAULT_QR_SIZE: u32 = 94;
/// Smallest accepted `qrSize`. A login token (`lq1_` + 43 characters) needs a version-6
/// symbol at level H: 41 modules, 45 with a 2-module quiet zone, so 90 px is the smallest
/// canvas that gives it 2-px modules. Below that modules would be single pixels, which a
/// browser's image scaling smears and which decoders (rqrr, in our tests) do not read; a
/// picture that cannot be scanned is worse than a 400.
pub const MIN_QR_SIZE: u32 = 90;
/// Largest accepted `qrSize` (the seed's limit).
pub const MAX_QR_SIZE: u32 = 512;
/// The seed's default `logoSize`.
pub const DEFAULT_LOGO_SIZE: u32 = 32;
/// Largest accepted `logoSize` (the seed's limit). The drawn logo is further clamped, see
/// [`Picture::logo_size`].
pub const MAX_LOGO_SIZE: u32 = 256;

/// Standard quiet zone, in modules.
const QUIET_ZONE: u32 = 4;
/// The quiet zone we settle for on small canvases, in modules.
const MIN_QUIET_ZONE: u32 = 2;
/// Below this many pixels per module, trading quiet zone for module size is worth it.
const COMFORTABLE_MODULE_PX: u32 = 3;

const DARK: u8 = 0;
const LIGHT: u8 = 255;

/// A validated `/qr/loginpic` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picture {
    /// Side of the PNG in pixels, exactly; [`MIN_QR_SIZE`]..=[`MAX_QR_SIZE`].
    pub qr_size: u32,
    /// The logo drawn in the middle, if any.
    pub logo: Option<Logo>,
    /// Requested logo side in pixels, 1..=[`MAX_LOGO_SIZE`], white pad included. The drawn
    /// side is `min(logo_size, 40 % of the QR symbol's side)` (the symbol being the modules
    /// without the quiet zone), rounded down to a whole, odd number of modules so the logo is
    /// centred on the module grid; so even 256 on a 94-px picture stays scannable. The glyph
    /// takes the middle ~80 % of that square, on white.
    pub logo_size: u32,
}

impl Default for Picture {
    fn default() -> Self {
        Self {
            qr_size: DEFAULT_QR_SIZE,
            logo: None,
            logo_size: DEFAULT_LOGO_SIZE,
        }
    }
}

/// The registered logos, by their public number (the `logo` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logo {
    /// 1: a padlock, for Latch itself.
    Padlock = 1,
    /// 2: a cabinet with two doors.
    Cabinet = 2,
}

impl Logo {
    /// Every registered logo, in number order.
    pub const ALL: [Self; 2] = [Self::Padlock, Self::Cabinet];

    /// The public number of this logo.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The logo registered under `number`, if any.
    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.number() == number)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Padlock => "padlock",
            Self::Cabinet => "cabinet",
        }
    }

    /// Whether the glyph is dark at `(u, v)`, the centre of a pixel in the glyph's unit
    /// square (origin top-left). Resolution-independent, so one definition serves every size.
    fn is_dark(self, u: f32, v: f32) -> bool {
        match self {
            Self::Padlock => padlock(u, v),
            Self::Cabinet => cabinet(u, v),
        }
    }
}

impl Picture {
    /// Parses the raw query values (`None` = absent). An empty string counts as absent, so
    /// `?logo=` means "no logo" and `?qrSize=` means the default.
    ///
    /// Only plain decimal digits are accepted: a sign, whitespace, a decimal point or a value
    /// out of range is a 400 `invalid_field` naming the parameter and its allowed range (for
    /// `logo`, the registered numbers). The first bad parameter, in argument order, wins.
    pub fn parse(
        qr_size: Option<&str>,
        logo_size: Option<&str>,
        logo: Option<&str>,
    ) -> Result<Self, ApiError> {
        let qr_size =
            parse_in_range(qr_size, "qrSize", MIN_QR_SIZE, MAX_QR_SIZE)?.unwrap_or(DEFAULT_QR_SIZE);
        let logo_size =
            parse_in_range(logo_size, "logoSize", 1, MAX_LOGO_SIZE)?.unwrap_or(DEFAULT_LOGO_SIZE);
        let logo = match non_empty(logo) {
            None => None,
            Some(raw) => Some(
                parse_digits(raw)
                    .and_then(Logo::from_number)
                    .ok_or_else(unknown_logo)?,
            ),
        };
        Ok(Self {
            qr_size,
            logo,
            logo_size,
        })
    }
}

fn non_empty(raw: Option<&str>) -> Option<&str> {
    raw.filter(|s| !s.is_empty())
}

/// `u32::from_str` also accepts a leading `+`; the seed's clients never send one, so we keep
/// the accepted syntax to digits only (and let overflow fall out as `None`).
fn parse_digits(raw: &str) -> Option<u32> {
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        raw.parse().ok()
    } else {
        None
    }
}

fn parse_in_range(
    raw: Option<&str>,
    field: &'static str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, ApiError> {
    let Some(raw) = non_empty(raw) else {
        return Ok(None);
    };
    match parse_digits(raw) {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::bad_request(
            "invalid_field",
            field,
            format!("{field} must be a whole number from {min} to {max}"),
        )),
    }
}

fn unknown_logo() -> ApiError {
    let registered = Logo::ALL
        .iter()
        .map(|l| format!("{} ({})", l.number(), l.name()))
        .collect::<Vec<_>>()
        .join(", ");
    ApiError::bad_request(
        "invalid_field",
        "logo",
        format!("logo must be one of the registered logo numbers: {registered}"),
    )
}

/// The PNG bytes: exactly `qr_size` x `qr_size` pixels (8-bit greyscale), black modules on
/// white with a quiet zone, error-correction level H, and the logo (if any) drawn centred on a
/// white pad. The drawn logo side (pad included) is `min(logo_size, 40 % of the symbol's
/// side)`, rounded down to whole modules; see [`Picture::logo_size`].
///
/// Fails with [`ApiError::Internal`] when `content` does not fit a QR code, or its symbol
/// does not fit `qr_size` at one pixel per module with a 2-module quiet zone: the content is
/// ours, not the client's, so either is a server bug. The login token fits every accepted
/// size (see [`MIN_QR_SIZE`]).
pub fn render_png(content: &str, picture: &Picture) -> Result<Vec<u8>, ApiError> {
    let code = QrCode::with_error_correction_level(content, EcLevel::H).map_err(|e| {
        ApiError::Internal(format!(
            "cannot encode {} bytes as a QR code: {e}",
            content.len()
        ))
    })?;
    let layout = Layout::fit(code.width() as u32, picture.qr_size).ok_or_else(|| {
        ApiError::Internal(format!(
            "a {m}-module QR code does not fit in {s} px",
            m = code.width(),
            s = picture.qr_size
        ))
    })?;

    let mut pixels = draw_modules(code, &layout);
    if let Some(logo) = picture.logo {
        draw_logo(&mut pixels, &layout, logo, picture.logo_size);
    }

    // Greyscale and mostly flat: the default deflate level gets even a 512-px picture to
    // about 4 KiB, and the encoder is cheap next to the page load it serves.
    let mut png = Vec::with_capacity(4096);
    PngEncoder::new(&mut png)
        .write_image(&pixels, layout.size, layout.size, ExtendedColorType::L8)
        .map_err(|e| ApiError::Internal(format!("cannot encode QR PNG: {e}")))?;
    Ok(png)
}

/// Where the symbol goes on the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Canvas side, px.
    size: u32,
    /// Symbol side, modules (no quiet zone).
    modules: u32,
    /// Module side, px.
    module_px: u32,
    /// Offset of the symbol's top-left corner on both axes, px.
    offset: u32,
}

impl Layout {
    /// The largest whole-pixel module that fits with the standard quiet zone, or with the
    /// reduced one when the standard zone would leave modules under
    /// [`COMFORTABLE_MODULE_PX`]. `None` if not even 1-px modules fit.
    fn fit(modules: u32, size: u32) -> Option<Self> {
        let standard = size / (modules + 2 * QUIET_ZONE);
        let module_px = if standard < COMFORTABLE_MODULE_PX {
            size / (modules + 2 * MIN_QUIET_ZONE)
        } else {
            standard
        };
        (module_px > 0).then(|| Self {
            size,
            modules,
            module_px,
            offset: (size - modules * module_px) / 2,
        })
    }

    fn symbol_px(&self) -> u32 {
        self.modules * self.module_px
    }
}

/// The symbol as a row-major greyscale buffer of `size * size` bytes.
fn draw_modules(code: QrCode, layout: &Layout) -> Vec<u8> {
    let size = layout.size as usize;
    let m = layout.module_px as usize;
    let n = layout.modules as usize;
    let offset = layout.offset as usize;
    let mut pixels = vec![LIGHT; size * size];
    // Row-major, `n` per row. Taken by value so the module matrix is not cloned.
    let colors = code.into_colors();
    for (my, row) in colors.chunks_exact(n).enumerate() {
        let top = (offset + my * m) * size;
        // Paint the first pixel row of this module row, then copy it down: every module row
        // is `m` identical pixel rows.
        let first = &mut pixels[top + offset..top + offset + n * m];
        for (span, color) in first.chunks_exact_mut(m).zip(row) {
            if *color == Color::Dark {
                span.fill(DARK);
            }
        }
        for k in 1..m {
            pixels.copy_within(top..top + size, top + k * size);
        }
    }
    pixels
}

/// The logo's footprint, in modules: `min(requested px, 40 % of the symbol's side)`, rounded
/// down to a whole, odd number of modules (the symbol's side is odd too, so the badge sits
/// exactly on its centre module and never slices a module), and at least one.
///
/// 40 % of the side is 16 % of the area. For the version-6 login symbol that is 15 of 41
/// modules (~28 damaged codewords of the 56 level H can correct), leaving the rest for what a
/// camera misreads; in our tests with rqrr a blank 19-module square already fails to decode.
/// Applying the 40 % to the glyph alone, with the pad around it, went over that edge.
fn badge_modules(layout: &Layout, requested: u32) -> u32 {
    let px = requested.min(layout.symbol_px() * 2 / 5);
    let modules = (px / layout.module_px).max(1);
    // The largest odd number not above `modules` (which is at least 1).
    (modules - 1) | 1
}

fn draw_logo(pixels: &mut [u8], layout: &Layout, logo: Logo, requested: u32) {
    let size = layout.size as usize;
    let modules = badge_modules(layout, requested);
    let badge_px = (modules * layout.module_px) as usize;
    let badge_origin = (layout.offset + (layout.modules - modules) / 2 * layout.module_px) as usize;
    for y in badge_origin..badge_origin + badge_px {
        pixels[y * size + badge_origin..y * size + badge_origin + badge_px].fill(LIGHT);
    }

    // A light margin inside the badge keeps the glyph's dark parts from touching modules and
    // reading as part of the symbol. On a tiny badge nothing is left for the glyph: it stays
    // a plain white square, which still marks where a logo would be.
    let border = (badge_px / 10).max(2);
    let side = badge_px.saturating_sub(2 * border);
    let origin = badge_origin + border;
    let scale = 1.0 / side as f32;
    for j in 0..side {
        let v = (j as f32 + 0.5) * scale;
        let row = (origin + j) * size + origin;
        for (i, px) in pixels[row..row + side].iter_mut().enumerate() {
            if logo.is_dark((i as f32 + 0.5) * scale, v) {
                *px = DARK;
            }
        }
    }
}

/// A closed padlock: an arched shackle over a rounded body with a keyhole.
fn padlock(u: f32, v: f32) -> bool {
    // Shackle: a half ring centred at (0.5, 0.40) whose legs run down into the body.
    const SHACKLE_Y: f32 = 0.40;
    const OUTER: f32 = 0.27;
    const INNER: f32 = 0.16;
    // Body: a rounded rectangle.
    const BODY: (f32, f32, f32, f32) = (0.14, 0.46, 0.86, 0.94);
    const RADIUS: f32 = 0.08;

    let dx = u - 0.5;
    if v < BODY.1 {
        let r = if v <= SHACKLE_Y {
            (dx * dx + (v - SHACKLE_Y).powi(2)).sqrt()
        } else {
            dx.abs()
        };
        return (INNER..=OUTER).contains(&r) && v >= SHACKLE_Y - OUTER;
    }
    if !in_rounded_rect(u, v, BODY, RADIUS) {
        return false;
    }
    // Keyhole: a round head and a slot below it, left light.
    let head = dx * dx + (v - 0.64).powi(2) <= 0.07 * 0.07;
    let slot = dx.abs() <= 0.03 && (0.64..=0.80).contains(&v);
    !(head || slot)
}

/// A two-door cabinet on short legs, with a handle on each door.
fn cabinet(u: f32, v: f32) -> bool {
    const BODY: (f32, f32, f32, f32) = (0.16, 0.06, 0.84, 0.86);
    let in_body = in_rect(u, v, BODY);
    let leg =
        (0.86..=0.95).contains(&v) && ((0.20..=0.30).contains(&u) || (0.70..=0.80).contains(&u));
    if !in_body {
        return leg;
    }
    // The gap between the doors and the two handles are left light.
    let door_gap = (0.475..=0.525).contains(&u) && (0.12..=0.80).contains(&v);
    let handles =
        (0.40..=0.56).contains(&v) && ((0.36..=0.42).contains(&u) || (0.58..=0.64).contains(&u));
    !(door_gap || handles)
}

fn in_rect(u: f32, v: f32, (left, top, right, bottom): (f32, f32, f32, f32)) -> bool {
    (left..=right).contains(&u) && (top..=bottom).contains(&v)
}

fn in_rounded_rect(u: f32, v: f32, rect: (f32, f32, f32, f32), radius: f32) -> bool {
    let (left, top, right, bottom) = rect;
    if !in_rect(u, v, rect) {
        return false;
    }
    // Distance from the rectangle shrunk by `radius`: inside it or within `radius` of it.
    let dx = (left + radius - u).max(u - (right - radius)).max(0.0);
    let dy = (top + radius - v).max(v - (bottom - radius)).max(0.0);
    dx * dx + dy * dy <= radius * radius
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "lq1_AZKc9X2v7nQ0bLr8Yt6uWs3pEe1oIk4jHg5fDa2cB0x";

    fn bad_field(result: Result<Picture, ApiError>) -> (String, String) {
        match result {
            Err(ApiError::BadRequest {
                code,
                field,
                message,
            }) => {
                assert_eq!(code, "invalid_field");
                (field.expect("a field"), message)
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    /// Decodes `png`, checks it is `size` square and returns the decoded QR contents.
    fn decode(png: &[u8], size: u32) -> Vec<String> {
        let img = image::load_from_memory(png).expect("a PNG").to_luma8();
        assert_eq!(img.dimensions(), (size, size));
        let mut prepared = rqrr::PreparedImage::prepare(img);
        prepared
            .detect_grids()
            .iter()
            .map(|grid| grid.decode().expect("a decodable grid").1)
            .collect()
    }

    fn picture(qr_size: u32, logo: Option<Logo>, logo_size: u32) -> Picture {
        Picture {
            qr_size,
            logo,
            logo_size,
        }
    }

    #[test]
    fn parse_defaults_when_absent_or_empty() {
        let expected = Picture::default();
        assert_eq!(expected, picture(DEFAULT_QR_SIZE, None, DEFAULT_LOGO_SIZE));
        assert_eq!(Picture::parse(None, None, None).unwrap(), expected);
        assert_eq!(
            Picture::parse(Some(""), Some(""), Some("")).unwrap(),
            expected
        );
    }

    #[test]
    fn parse_accepts_bounds_and_registered_logos() {
        let p = Picture::parse(Some("90"), Some("1"), Some("1")).unwrap();
        assert_eq!(p, picture(90, Some(Logo::Padlock), 1));
        let p = Picture::parse(Some("512"), Some("256"), Some("2")).unwrap();
        assert_eq!(p, picture(512, Some(Logo::Cabinet), 256));
        // Leading zeros are still plain digits.
        let p = Picture::parse(Some("0094"), None, None).unwrap();
        assert_eq!(p.qr_size, 94);
    }

    #[test]
    fn parse_rejects_bad_qr_size() {
        for raw in [
            "89",
            "513",
            "0",
            "-94",
            "+94",
            " 94",
            "94 ",
            "94.0",
            "9e1",
            "abc",
            "٩٤",
            "4294967296",
            "99999999999999999999999",
        ] {
            let (field, message) = bad_field(Picture::parse(Some(raw), None, None));
            assert_eq!(field, "qrSize", "{raw:?}");
            assert!(message.contains("90 to 512"), "{raw:?}: {message}");
        }
    }

    #[test]
    fn parse_rejects_bad_logo_size() {
        for raw in [
            "0",
            "257",
            "+32",
            "32 ",
            "\t32",
            "32.5",
            "-1",
            "18446744073709551616",
        ] {
            let (field, message) = bad_field(Picture::parse(None, Some(raw), None));
            assert_eq!(field, "logoSize", "{raw:?}");
            assert!(message.contains("1 to 256"), "{raw:?}: {message}");
        }
    }

    #[test]
    fn parse_rejects_unknown_logo() {
        for raw in ["0", "3", "+1", " 1", "1.0", "padlock", "4294967297"] {
            let (field, message) = bad_field(Picture::parse(None, None, Some(raw)));
            assert_eq!(field, "logo", "{raw:?}");
            assert!(
                message.contains("1 (padlock), 2 (cabinet)"),
                "{raw:?}: {message}"
            );
        }
    }

    #[test]
    fn parse_reports_the_first_bad_field() {
        let (field, _) = bad_field(Picture::parse(Some("1"), Some("1000"), Some("9")));
        assert_eq!(field, "qrSize");
    }

    #[test]
    fn logo_numbers_round_trip() {
        for logo in Logo::ALL {
            assert_eq!(Logo::from_number(logo.number()), Some(logo));
        }
        assert_eq!(Logo::Padlock.number(), 1);
        assert_eq!(Logo::Cabinet.number(), 2);
    }

    #[test]
    fn layout_prefers_whole_modules_and_the_standard_quiet_zone() {
        // The token is a version-6 symbol (41 modules) at level H.
        let width = QrCode::with_error_correction_level(TOKEN, EcLevel::H)
            .unwrap()
            .width() as u32;
        assert_eq!(width, 41);
        // 94 px: a 4-module zone would force 1-px modules, so it shrinks and modules are 2 px.
        let l = Layout::fit(41, 94).unwrap();
        assert_eq!((l.module_px, l.offset), (2, 6));
        // 512 px: 10-px modules with the full quiet zone (11 px would only leave ~2.7).
        let l = Layout::fit(41, 512).unwrap();
        assert_eq!((l.module_px, l.offset), (10, 51));
        let l = Layout::fit(41, MIN_QR_SIZE).unwrap();
        assert_eq!((l.module_px, l.offset), (2, 4));
        // Single-pixel modules are still drawn if the content ever outgrows the floor.
        assert_eq!(Layout::fit(61, MIN_QR_SIZE).unwrap().module_px, 1);
        assert!(Layout::fit(177, MIN_QR_SIZE).is_none());
    }

    #[test]
    fn logo_is_clamped_to_forty_percent_of_the_symbol() {
        // 94 px: 2-px modules, an 82-px symbol; 40 % is 32.8 px.
        let l = Layout::fit(41, 94).unwrap();
        assert_eq!(
            badge_modules(&l, 32),
            15,
            "32 px = 16 modules, rounded down to odd"
        );
        assert_eq!(badge_modules(&l, 256), 15, "clamped to 40 %");
        assert_eq!(badge_modules(&l, 1), 1, "never vanishes");
        // 300 px: 6-px modules (246-px symbol); 40 % is 98 px = 16 modules, so 15.
        let l = Layout::fit(41, 300).unwrap();
        assert_eq!(badge_modules(&l, 256), 15);
        assert_eq!(badge_modules(&l, 42), 7);
    }

    #[test]
    fn logo_sits_centred_on_a_white_badge() {
        let png = render_png(TOKEN, &picture(94, Some(Logo::Padlock), 32)).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        // 15 modules of 2 px from module 13: pixels 32..62, with a 3-px light margin.
        let (lo, hi, border) = (32, 62, 3);
        let is_light = |x, y| img.get_pixel(x, y).0[0] == LIGHT;
        for a in lo..hi {
            for b in (lo..lo + border).chain(hi - border..hi) {
                assert!(is_light(a, b) && is_light(b, a), "margin at {a},{b}");
            }
        }
        let dark = (lo + border..hi - border)
            .flat_map(|y| (lo + border..hi - border).map(move |x| (x, y)))
            .filter(|&(x, y)| !is_light(x, y))
            .count();
        assert!(dark > 100, "the glyph is drawn ({dark} dark px)");
        // Symmetric glyph, centred badge: the picture is mirror-symmetric inside the badge.
        for y in lo..hi {
            for x in lo..hi {
                assert_eq!(is_light(x, y), is_light(lo + hi - 1 - x, y), "{x},{y}");
            }
        }
    }

    #[test]
    fn tiny_logos_render() {
        for (size, logo_size) in [(94, 1), (94, 6), (512, 1), (512, 12)] {
            for logo in Logo::ALL {
                let png = render_png(TOKEN, &picture(size, Some(logo), logo_size)).unwrap();
                let img = image::load_from_memory(&png).unwrap();
                assert_eq!((img.width(), img.height()), (size, size));
            }
        }
    }

    #[test]
    fn renders_without_logo() {
        let png = render_png(TOKEN, &picture(256, None, DEFAULT_LOGO_SIZE)).unwrap();
        assert_eq!(decode(&png, 256), [TOKEN]);
    }

    #[test]
    fn renders_padlock_at_the_defaults() {
        let p = Picture::parse(None, None, Some("1")).unwrap();
        let png = render_png(TOKEN, &p).unwrap();
        assert_eq!(decode(&png, DEFAULT_QR_SIZE), [TOKEN]);
    }

    #[test]
    fn renders_padlock_at_medium_sizes() {
        for size in [128, 256] {
            let png = render_png(TOKEN, &picture(size, Some(Logo::Padlock), 32)).unwrap();
            assert_eq!(decode(&png, size), [TOKEN], "{size}");
        }
    }

    #[test]
    fn clamped_oversized_logo_still_scans() {
        let png = render_png(TOKEN, &picture(300, Some(Logo::Cabinet), MAX_LOGO_SIZE)).unwrap();
        assert_eq!(decode(&png, 300), [TOKEN]);
        // And on the smallest default picture, where 256 is almost three times the canvas.
        let png = render_png(TOKEN, &picture(94, Some(Logo::Cabinet), MAX_LOGO_SIZE)).unwrap();
        assert_eq!(decode(&png, 94), [TOKEN]);
    }

    #[test]
    fn renders_the_largest_picture_with_the_largest_logo() {
        // The cabinet's clamp is covered at 300 px above; one decode at 512 keeps this fast.
        let png = render_png(
            TOKEN,
            &picture(MAX_QR_SIZE, Some(Logo::Padlock), MAX_LOGO_SIZE),
        )
        .unwrap();
        assert_eq!(decode(&png, MAX_QR_SIZE), [TOKEN]);
    }

    #[test]
    fn renders_the_smallest_picture() {
        let png = render_png(TOKEN, &picture(MIN_QR_SIZE, Some(Logo::Padlock), 256)).unwrap();
        assert_eq!(decode(&png, MIN_QR_SIZE), [TOKEN]);
    }

    #[test]
    fn content_too_long_is_internal() {
        let huge = "x".repeat(4000);
        let err = render_png(&huge, &Picture::default()).unwrap_err();
        assert!(matches!(err, ApiError::Internal(_)), "{err:?}");
        // Fits a QR code (version 18, 89 modules), but not in the smallest picture.
        let long = "x".repeat(300);
        let err = render_png(&long, &picture(MIN_QR_SIZE, None, 1)).unwrap_err();
        assert!(matches!(err, ApiError::Internal(_)), "{err:?}");
    }
}
