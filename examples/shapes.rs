//! Procedural "colour shape" image generator: the data behind cliplabel's demo CLIP model.
//!
//! Every image shows one shape (circle, square, triangle, star, cross, ring, ...) filled with
//! one colour (red, green, blue, yellow, purple, orange, black, white, ...) on a varied
//! background (flat, gradient, smooth noise, clutter lines) that is kept far from the shape's
//! colour, with random size, position, rotation (by default up to 30 degrees either way from
//! upright), shading and pixel noise.
//!
//! Output is an ImageFolder layout plus captions:
//!
//! ```text
//! OUT/red circle/0000.png
//! OUT/red circle/0001.jpg
//! ...
//! OUT/classes.txt      one "colour shape" per line, the classes written, in order
//! OUT/captions.jsonl   one JSON object per image: path (relative to OUT), label, colour,
//!                      shape, caption, background, width, height
//! ```
//!
//! The output is a pure function of the arguments: the same seed gives byte-identical files.
//! Each image's random stream depends only on (seed, class name, index), so adding, removing
//! or holding out classes never changes the other classes' images.
//!
//! ```text
//! cargo run --release --example shapes -- --out data/train --per-class 100 --seed 1
//! cargo run --release --example shapes -- --out data/test --per-class 20 --seed 2 \
//!     --format mixed --max-aspect 1.5 --holdout "red star,blue ring" --only-holdout
//! ```

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

/// Colour names and their base sRGB values. The first eight are the default classes.
const COLOURS: &[(&str, [f64; 3])] = &[
    ("red", [220.0, 30.0, 30.0]),
    ("green", [30.0, 165.0, 50.0]),
    ("blue", [30.0, 70.0, 225.0]),
    ("yellow", [245.0, 220.0, 30.0]),
    ("purple", [140.0, 40.0, 175.0]),
    ("orange", [250.0, 140.0, 20.0]),
    ("black", [15.0, 15.0, 15.0]),
    ("white", [245.0, 245.0, 245.0]),
    // Extra colours, usable through --classes-file.
    ("pink", [250.0, 130.0, 190.0]),
    ("brown", [125.0, 75.0, 35.0]),
    ("grey", [128.0, 128.0, 128.0]),
    ("cyan", [30.0, 200.0, 220.0]),
];
const DEFAULT_COLOURS: usize = 8;

/// Shape names. The first six are the default classes.
const SHAPES: &[&str] = &[
    "circle", "square", "triangle", "star", "cross", "ring",
    // Extra shapes, usable through --classes-file.
    "hexagon", "crescent",
];
const DEFAULT_SHAPES: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Png,
    Jpg,
    /// Each image is PNG or JPEG at random (half and half).
    Mixed,
}

#[derive(Parser, Debug)]
#[command(
    name = "shapes",
    about = "Generate labelled images of coloured shapes (ImageFolder layout + captions.jsonl).",
    long_about = "Generate labelled images of coloured shapes in the ImageFolder layout \
        OUT/<colour> <shape>/<index>.png|jpg, with OUT/classes.txt and OUT/captions.jsonl \
        (one JSON object per image: path, label, colour, shape, caption, background, width, \
        height). The same arguments always give byte-identical files.\n\n\
        Default classes: the 48 combinations of the colours red, green, blue, yellow, purple, \
        orange, black, white and the shapes circle, square, triangle, star, cross, ring. \
        Also available through --classes-file: the colours pink, brown, grey, cyan and the \
        shapes hexagon, crescent."
)]
struct Args {
    /// Output directory (created if missing; existing files with the same names are overwritten).
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,

    /// Number of images per class.
    #[arg(long, default_value_t = 10)]
    per_class: usize,

    /// Random seed; the output is a pure function of the seed and the other arguments.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Image side in pixels (the shorter side when --max-aspect > 1).
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(16..=4096))]
    size: u32,

    /// Largest long/short side ratio. Above 1, each image gets a random ratio in [1, this] and
    /// a random orientation; the shape always lies inside the central square, so a centre crop
    /// keeps it whole.
    #[arg(long, default_value_t = 1.0)]
    max_aspect: f64,

    /// Largest rotation of a shape, in degrees either way from upright (180 = any angle).
    #[arg(long, default_value_t = 30.0)]
    max_rotation: f64,

    /// Smallest shape radius, as a fraction of the image's shorter side.
    #[arg(long, default_value_t = 0.25)]
    min_radius: f64,

    /// Largest shape radius, as a fraction of the image's shorter side (at most 0.5).
    #[arg(long, default_value_t = 0.45)]
    max_radius: f64,

    /// Background kinds to draw from, comma-separated: plain, gradient, noisy, cluttered.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,gradient,noisy,cluttered"
    )]
    backgrounds: Vec<String>,

    /// File format.
    #[arg(long, value_enum, default_value_t = Format::Png)]
    format: Format,

    /// JPEG quality (1-100) for jpg and mixed.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,

    /// Comma-separated classes to hold out, e.g. "red star,blue ring": they are skipped, or,
    /// with --only-holdout, they are the only classes written.
    #[arg(long, value_name = "LIST")]
    holdout: Option<String>,

    /// File with more held-out classes, one "colour shape" per line (# comments allowed).
    #[arg(long, value_name = "FILE")]
    holdout_file: Option<PathBuf>,

    /// Write only the held-out classes.
    #[arg(long)]
    only_holdout: bool,

    /// Classes to draw, one "colour shape" per line (# comments allowed); default: the 48
    /// combinations of the first 8 colours and 6 shapes.
    #[arg(long, value_name = "FILE")]
    classes_file: Option<PathBuf>,

    /// Print the default class list and the known colours and shapes, then exit.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Class {
    colour: usize,
    shape: usize,
}

impl Class {
    fn name(&self) -> String {
        format!("{} {}", COLOURS[self.colour].0, SHAPES[self.shape])
    }
}

fn parse_class(text: &str) -> Result<Class> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() != 2 {
        bail!("class {text:?} is not of the form \"<colour> <shape>\"");
    }
    let colour_word = words[0].to_lowercase();
    let shape_word = words[1].to_lowercase();
    let colour = COLOURS
        .iter()
        .position(|(n, _)| *n == colour_word)
        .with_context(|| {
            let known: Vec<&str> = COLOURS.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown colour {:?} in class {text:?}; known colours: {}",
                words[0],
                known.join(", ")
            )
        })?;
    let shape = SHAPES
        .iter()
        .position(|n| *n == shape_word)
        .with_context(|| {
            format!(
                "unknown shape {:?} in class {text:?}; known shapes: {}",
                words[1],
                SHAPES.join(", ")
            )
        })?;
    Ok(Class { colour, shape })
}

fn parse_class_lines(text: &str, origin: &str) -> Result<Vec<Class>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_class(line).with_context(|| format!("{origin}, line {}", i + 1))?);
    }
    Ok(out)
}

fn default_classes() -> Vec<Class> {
    let mut out = Vec::new();
    for colour in 0..DEFAULT_COLOURS {
        for shape in 0..DEFAULT_SHAPES {
            out.push(Class { colour, shape });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Random numbers: SplitMix64 for seeding, PCG32 (XSH RR) for the streams
// ---------------------------------------------------------------------------------------------

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Pcg32 {
            state: 0,
            inc: (stream << 1) | 1,
        };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(seed);
        rng.next_u32();
        rng
    }

    /// The stream for one image: depends only on (seed, class name, index).
    fn for_image(seed: u64, class_name: &str, index: usize) -> Self {
        let key =
            splitmix64(seed ^ splitmix64(fnv1a(class_name)) ^ splitmix64(index as u64 ^ 0x5EED));
        Pcg32::new(key, splitmix64(key ^ 0xA5A5_A5A5))
    }

    fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        let hi = (self.next_u32() >> 5) as u64; // 27 bits
        let lo = (self.next_u32() >> 6) as u64; // 26 bits
        ((hi << 26) | lo) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform integer in [0, n).
    fn below(&mut self, n: u32) -> u32 {
        ((self.next_u32() as u64 * n as u64) >> 32) as u32
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64(); // (0, 1]
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------------

type Rgb = [f64; 3];

fn dist(a: Rgb, b: Rgb) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn lerp(a: Rgb, b: Rgb, t: f64) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn clamp_rgb(c: Rgb) -> Rgb {
    [
        c[0].clamp(0.0, 255.0),
        c[1].clamp(0.0, 255.0),
        c[2].clamp(0.0, 255.0),
    ]
}

/// The shape's colour: the named colour with a little jitter.
fn shape_colour(rng: &mut Pcg32, colour: usize) -> Rgb {
    let base = COLOURS[colour].1;
    let scale = rng.range(0.88, 1.04);
    let mut c = [0.0; 3];
    for (k, v) in c.iter_mut().enumerate() {
        *v = base[k] * scale + rng.range(-18.0, 18.0);
    }
    clamp_rgb(c)
}

/// A background colour: random, desaturated towards grey, and far from the shape's colour.
fn background_colour(rng: &mut Pcg32, avoid: Rgb, min_dist: f64) -> Rgb {
    for _ in 0..64 {
        let raw = [
            rng.range(0.0, 255.0),
            rng.range(0.0, 255.0),
            rng.range(0.0, 255.0),
        ];
        let grey = (raw[0] + raw[1] + raw[2]) / 3.0;
        let c = lerp([grey; 3], raw, rng.range(0.15, 0.6));
        if dist(c, avoid) >= min_dist {
            return c;
        }
    }
    // Fallback: a grey with the opposite lightness.
    let lum = 0.299 * avoid[0] + 0.587 * avoid[1] + 0.114 * avoid[2];
    if lum > 128.0 {
        [40.0; 3]
    } else {
        [215.0; 3]
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    fn blend(&mut self, x: usize, y: usize, c: Rgb, alpha: f64) {
        let p = &mut self.px[y * self.w + x];
        *p = lerp(*p, c, alpha);
    }
}

const BACKGROUNDS: &[&str] = &["plain", "gradient", "noisy", "cluttered"];

fn draw_background(rng: &mut Pcg32, canvas: &mut Canvas, kinds: &[usize], fg: Rgb) -> &'static str {
    let (w, h) = (canvas.w as f64, canvas.h as f64);
    let kind = kinds[rng.below(kinds.len() as u32) as usize];
    let c1 = background_colour(rng, fg, 120.0);
    let c2 = background_colour(rng, fg, 120.0);
    match kind {
        0 => {
            for p in canvas.px.iter_mut() {
                *p = c1;
            }
        }
        1 => {
            let a = rng.range(0.0, std::f64::consts::TAU);
            let (dx, dy) = (a.cos(), a.sin());
            let half = 0.5 * (w * dx.abs() + h * dy.abs());
            for y in 0..canvas.h {
                for x in 0..canvas.w {
                    let proj = (x as f64 - w / 2.0) * dx + (y as f64 - h / 2.0) * dy;
                    let t = (proj / half * 0.5 + 0.5).clamp(0.0, 1.0);
                    canvas.px[y * canvas.w + x] = lerp(c1, c2, t);
                }
            }
        }
        _ => {
            // Smooth value noise between two colours (also the base for the cluttered kind).
            let g = 2 + rng.below(6) as usize; // grid cells per side
            let grid: Vec<f64> = (0..(g + 1) * (g + 1)).map(|_| rng.f64()).collect();
            let side = w.max(h);
            for y in 0..canvas.h {
                for x in 0..canvas.w {
                    let gx = x as f64 / side * g as f64;
                    let gy = y as f64 / side * g as f64;
                    let (ix, iy) = ((gx as usize).min(g - 1), (gy as usize).min(g - 1));
                    let (fx, fy) = (gx - ix as f64, gy - iy as f64);
                    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
                    let v00 = grid[iy * (g + 1) + ix];
                    let v10 = grid[iy * (g + 1) + ix + 1];
                    let v01 = grid[(iy + 1) * (g + 1) + ix];
                    let v11 = grid[(iy + 1) * (g + 1) + ix + 1];
                    let top = v00 + (v10 - v00) * sx;
                    let bottom = v01 + (v11 - v01) * sx;
                    canvas.px[y * canvas.w + x] = lerp(c1, c2, top + (bottom - top) * sy);
                }
            }
            if kind == 3 {
                let n = 4 + rng.below(12);
                for _ in 0..n {
                    let lc = background_colour(rng, fg, 100.0);
                    let (x0, y0) = (rng.range(0.0, w), rng.range(0.0, h));
                    let (x1, y1) = (rng.range(0.0, w), rng.range(0.0, h));
                    let width = rng.range(0.6, 2.2) * (w.min(h) / 96.0).max(0.5);
                    let alpha = rng.range(0.35, 0.8);
                    draw_line(canvas, (x0, y0), (x1, y1), width, lc, alpha);
                }
            }
        }
    }
    BACKGROUNDS[kind]
}

fn draw_line(canvas: &mut Canvas, a: (f64, f64), b: (f64, f64), width: f64, c: Rgb, alpha: f64) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (dx * dx + dy * dy).max(1e-9);
    let half = width / 2.0;
    for y in 0..canvas.h {
        for x in 0..canvas.w {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
            let (qx, qy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            let d = (qx * qx + qy * qy).sqrt();
            let cover = (half + 0.5 - d).clamp(0.0, 1.0);
            if cover > 0.0 {
                canvas.blend(x, y, c, alpha * cover);
            }
        }
    }
}

/// Regular polygon / star vertices in unit coordinates (circumradius 1, first vertex up).
fn star_polygon(points: usize, inner: f64) -> Vec<(f64, f64)> {
    let n = if inner > 0.0 { points * 2 } else { points };
    (0..n)
        .map(|i| {
            let r = if inner > 0.0 && i % 2 == 1 {
                inner
            } else {
                1.0
            };
            let a = std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / n as f64;
            (r * a.cos(), -r * a.sin())
        })
        .collect()
}

fn inside_polygon(poly: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Point-in-shape test in unit coordinates; every shape lies within the unit disc.
struct ShapeTest {
    shape: usize,
    poly: Vec<(f64, f64)>,
}

impl ShapeTest {
    fn new(shape: usize) -> Self {
        let poly = match SHAPES[shape] {
            "triangle" => star_polygon(3, 0.0),
            "star" => star_polygon(5, 0.45),
            "hexagon" => star_polygon(6, 0.0),
            _ => Vec::new(),
        };
        ShapeTest { shape, poly }
    }

    fn inside(&self, x: f64, y: f64) -> bool {
        let r2 = x * x + y * y;
        match SHAPES[self.shape] {
            "circle" => r2 <= 1.0,
            "square" => x.abs() <= 0.72 && y.abs() <= 0.72,
            "cross" => {
                let (ax, ay) = (x.abs(), y.abs());
                (ax <= 0.28 && ay <= 0.95) || (ay <= 0.28 && ax <= 0.95)
            }
            "ring" => (0.33..=1.0).contains(&r2), // inner radius about 0.57
            "crescent" => r2 <= 1.0 && (x - 0.45).powi(2) + y * y > 0.72,
            _ => inside_polygon(&self.poly, x, y),
        }
    }
}

fn draw_shape(rng: &mut Pcg32, canvas: &mut Canvas, args: &Args, class: &Class, fg: Rgb) {
    let (w, h) = (canvas.w as f64, canvas.h as f64);
    let short = w.min(h);
    // The shape stays inside the central square of side `short`.
    let (ox, oy) = ((w - short) / 2.0, (h - short) / 2.0);
    let r = short * rng.range(args.min_radius, args.max_radius);
    let cx = ox + rng.range(r + 1.0, short - r - 1.0);
    let cy = oy + rng.range(r + 1.0, short - r - 1.0);
    let rot = rng
        .range(-args.max_rotation, args.max_rotation)
        .to_radians();
    let (cos, sin) = (rot.cos(), rot.sin());
    // Gentle shading across the shape.
    let shade_angle = rng.range(0.0, std::f64::consts::TAU);
    let shade = rng.range(-0.12, 0.12);
    let (shx, shy) = (shade_angle.cos(), shade_angle.sin());
    let test = ShapeTest::new(class.shape);
    const SS: usize = 4; // supersampling per axis
    let x_lo = (cx - r - 1.0).floor().max(0.0) as usize;
    let x_hi = ((cx + r + 1.0).ceil() as usize).min(canvas.w);
    let y_lo = (cy - r - 1.0).floor().max(0.0) as usize;
    let y_hi = ((cy + r + 1.0).ceil() as usize).min(canvas.h);
    for y in y_lo..y_hi {
        for x in x_lo..x_hi {
            let mut hits = 0;
            for sy in 0..SS {
                for sx in 0..SS {
                    let px = x as f64 + (sx as f64 + 0.5) / SS as f64 - cx;
                    let py = y as f64 + (sy as f64 + 0.5) / SS as f64 - cy;
                    // Rotate into the shape's frame and scale to unit size.
                    let ux = (px * cos + py * sin) / r;
                    let uy = (-px * sin + py * cos) / r;
                    if test.inside(ux, uy) {
                        hits += 1;
                    }
                }
            }
            if hits > 0 {
                let dx = (x as f64 + 0.5 - cx) / r;
                let dy = (y as f64 + 0.5 - cy) / r;
                let k = 1.0 + shade * (dx * shx + dy * shy);
                let c = clamp_rgb([fg[0] * k, fg[1] * k, fg[2] * k]);
                canvas.blend(x, y, c, hits as f64 / (SS * SS) as f64);
            }
        }
    }
}

fn add_noise(rng: &mut Pcg32, canvas: &mut Canvas) {
    let sigma = rng.range(0.0, 10.0);
    let mono = rng.chance(0.5);
    for p in canvas.px.iter_mut() {
        if mono {
            let n = sigma * rng.normal();
            *p = [p[0] + n, p[1] + n, p[2] + n];
        } else {
            *p = [
                p[0] + sigma * rng.normal(),
                p[1] + sigma * rng.normal(),
                p[2] + sigma * rng.normal(),
            ];
        }
    }
}

fn to_image(canvas: &Canvas) -> RgbImage {
    let mut buf = Vec::with_capacity(canvas.w * canvas.h * 3);
    for p in &canvas.px {
        for v in p {
            buf.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    RgbImage::from_raw(canvas.w as u32, canvas.h as u32, buf).expect("buffer size")
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn caption(rng: &mut Pcg32, colour: &str, shape: &str, background: &str) -> String {
    let a = article(colour);
    match rng.below(10) {
        0 => format!("a photo of {a} {colour} {shape}."),
        1 => format!("{a} {colour} {shape} on a {background} background"),
        2 => format!("{colour} {shape}"),
        3 => format!("a drawing of a {shape} that is {colour}"),
        4 => format!("a picture of {a} {colour} {shape}."),
        5 => format!("a {shape}, coloured {colour}"),
        6 => format!("the {shape} is {colour}."),
        7 => format!("an image showing {a} {colour} {shape}."),
        8 => format!("{a} {colour} {shape} in front of a {background} background."),
        _ => format!("a {colour} coloured {shape}"),
    }
}

struct Written {
    path: String,
    record: serde_json::Value,
}

fn render_one(
    args: &Args,
    out_dir: &Path,
    kinds: &[usize],
    class: &Class,
    index: usize,
    width: usize,
) -> Result<Written> {
    let name = class.name();
    let mut rng = Pcg32::for_image(args.seed, &name, index);
    let (w, h) = if args.max_aspect > 1.0 {
        let ratio = rng.range(0.0, args.max_aspect.ln()).exp();
        let long = (args.size as f64 * ratio).round() as usize;
        if rng.chance(0.5) {
            (long, args.size as usize)
        } else {
            (args.size as usize, long)
        }
    } else {
        (args.size as usize, args.size as usize)
    };
    let fg = shape_colour(&mut rng, class.colour);
    let mut canvas = Canvas {
        w,
        h,
        px: vec![[0.0; 3]; w * h],
    };
    let background = draw_background(&mut rng, &mut canvas, kinds, fg);
    draw_shape(&mut rng, &mut canvas, args, class, fg);
    add_noise(&mut rng, &mut canvas);
    let jpeg = match args.format {
        Format::Png => false,
        Format::Jpg => true,
        Format::Mixed => rng.chance(0.5),
    };
    let (colour, shape) = (COLOURS[class.colour].0, SHAPES[class.shape]);
    let text = caption(&mut rng, colour, shape, background);

    let img = to_image(&canvas);
    let rel = format!(
        "{name}/{index:0width$}.{}",
        if jpeg { "jpg" } else { "png" }
    );
    let path = out_dir.join(&rel);
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    if jpeg {
        JpegEncoder::new_with_quality(&mut out, args.jpeg_quality).write_image(
            img.as_raw(),
            w as u32,
            h as u32,
            image::ExtendedColorType::Rgb8,
        )
    } else {
        PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
            .write_image(
                img.as_raw(),
                w as u32,
                h as u32,
                image::ExtendedColorType::Rgb8,
            )
    }
    .with_context(|| format!("encoding {}", path.display()))?;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;

    let record = serde_json::json!({
        "path": rel,
        "label": name,
        "colour": colour,
        "shape": shape,
        "caption": text,
        "background": background,
        "width": w,
        "height": h,
    });
    Ok(Written { path: rel, record })
}

fn print_list() {
    println!("default classes:");
    for c in default_classes() {
        println!("  {}", c.name());
    }
    let colours: Vec<&str> = COLOURS.iter().map(|(n, _)| *n).collect();
    println!("colours: {}", colours.join(", "));
    println!("shapes: {}", SHAPES.join(", "));
}

fn run(args: &Args) -> Result<()> {
    if args.list {
        print_list();
        return Ok(());
    }
    if args.per_class == 0 {
        bail!("--per-class must be at least 1");
    }
    if !(args.max_aspect >= 1.0 && args.max_aspect <= 4.0) {
        bail!(
            "--max-aspect must be between 1 and 4, got {}",
            args.max_aspect
        );
    }
    if !(args.max_rotation >= 0.0 && args.max_rotation <= 180.0) {
        bail!(
            "--max-rotation must be between 0 and 180 degrees, got {}",
            args.max_rotation
        );
    }
    if !(args.min_radius > 0.0 && args.min_radius <= args.max_radius && args.max_radius <= 0.5) {
        bail!(
            "need 0 < --min-radius <= --max-radius <= 0.5, got {} and {}",
            args.min_radius,
            args.max_radius
        );
    }
    let mut kinds = Vec::new();
    for name in &args.backgrounds {
        let name = name.trim();
        let k = BACKGROUNDS
            .iter()
            .position(|b| *b == name)
            .with_context(|| {
                format!(
                    "unknown background {name:?}; known: {}",
                    BACKGROUNDS.join(", ")
                )
            })?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    if kinds.is_empty() {
        bail!("--backgrounds lists no background kinds");
    }
    kinds.sort();
    let classes = match &args.classes_file {
        Some(path) => {
            let text =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let classes = parse_class_lines(&text, &path.display().to_string())?;
            if classes.is_empty() {
                bail!("{} lists no classes", path.display());
            }
            classes
        }
        None => default_classes(),
    };
    for (i, c) in classes.iter().enumerate() {
        if classes[..i].contains(c) {
            bail!("class {:?} is listed twice", c.name());
        }
    }

    let mut holdout = Vec::new();
    if let Some(list) = &args.holdout {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            holdout.push(parse_class(item).context("in --holdout")?);
        }
    }
    if let Some(path) = &args.holdout_file {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        holdout.extend(parse_class_lines(&text, &path.display().to_string())?);
    }
    for h in &holdout {
        if !classes.contains(h) {
            bail!(
                "held-out class {:?} is not one of the classes being generated",
                h.name()
            );
        }
    }
    if args.only_holdout && holdout.is_empty() {
        bail!("--only-holdout needs --holdout or --holdout-file");
    }
    let selected: Vec<Class> = classes
        .into_iter()
        .filter(|c| holdout.contains(c) == args.only_holdout)
        .collect();
    if selected.is_empty() {
        bail!("no classes left to generate");
    }

    let out_dir = args.out.as_deref().context("--out is required")?;
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for c in &selected {
        let dir = out_dir.join(c.name());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let width = (args.per_class.saturating_sub(1).to_string().len()).max(4);
    let jobs: Vec<(usize, usize)> = (0..selected.len())
        .flat_map(|c| (0..args.per_class).map(move |i| (c, i)))
        .collect();
    let written: Vec<Written> = jobs
        .par_iter()
        .map(|&(c, i)| render_one(args, out_dir, &kinds, &selected[c], i, width))
        .collect::<Result<_>>()?;

    let mut captions = String::new();
    for w in &written {
        captions.push_str(&serde_json::to_string(&w.record)?);
        captions.push('\n');
    }
    let captions_path = out_dir.join("captions.jsonl");
    fs::write(&captions_path, captions)
        .with_context(|| format!("writing {}", captions_path.display()))?;
    let class_list: String = selected.iter().map(|c| c.name() + "\n").collect();
    let classes_path = out_dir.join("classes.txt");
    fs::write(&classes_path, class_list)
        .with_context(|| format!("writing {}", classes_path.display()))?;

    eprintln!(
        "wrote {} images of {} classes to {} (e.g. {})",
        written.len(),
        selected.len(),
        out_dir.display(),
        written.first().map(|w| w.path.as_str()).unwrap_or("-")
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
