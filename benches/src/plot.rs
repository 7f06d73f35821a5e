//! Plots of a scenario: line charts over a numeric x (e.g. GFLOP/s vs n) or grouped bars over categories (e.g.
//! GB/s per shape and format), each with the ceilings as horizontal lines.
//!
//! PNGs are drawn with plotters' bitmap backend. plotters' `ttf` feature needs fontconfig and freetype from the
//! system, which the CI machine lacks, so text goes through [`TextBitmap`], a thin wrapper backend that draws
//! labels with the public-domain 8×8 bitmap font of the `font8x8` crate. An SVG with the same content (text as
//! SVG `<text>`, no font needed at render time) is written beside each PNG.

use std::path::Path;

use font8x8::{BASIC_FONTS, LATIN_FONTS, UnicodeFonts};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind, FontTransform};

use crate::Result;

/// How the x axis of a plot is laid out.
#[derive(Clone, Debug, PartialEq)]
pub enum XAxis {
    /// Numeric x on a log₂ scale (ticks at the data's x values).
    Log2,
    /// Numeric x on a linear scale.
    Linear,
    /// Named categories; a series' point `(i, y)` belongs to category `i`, drawn as grouped bars.
    Categories(Vec<String>),
}

/// One data series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points (for [`XAxis::Categories`], x is the category index).
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line (a ceiling).
#[derive(Clone, Debug, PartialEq)]
pub struct HLine {
    /// Legend entry.
    pub name: String,
    /// Height.
    pub y: f64,
}

/// Everything needed to draw one plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotSpec {
    /// File name without extension (`<stem>.png`, `<stem>.svg`); ASCII letters, digits, `-` and `_`.
    pub file_stem: String,
    /// Title drawn above the chart.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// X axis layout.
    pub x: XAxis,
    /// Data.
    pub series: Vec<Series>,
    /// Ceilings.
    pub hlines: Vec<HLine>,
}

/// Size of the rendered images in pixels.
pub const SIZE: (u32, u32) = (1280, 760);

/// Renders `spec` to `<dir>/<stem>.png` and `<dir>/<stem>.svg`; returns the PNG's file name.
pub fn render(spec: &PlotSpec, dir: &Path) -> Result<String> {
    let png = format!("{}.png", spec.file_stem);
    let svg = format!("{}.svg", spec.file_stem);
    {
        let png_path = dir.join(&png);
        let root = TextBitmap(BitMapBackend::new(&png_path, SIZE)).into_drawing_area();
        draw(&root, spec).map_err(|e| format!("drawing {png}: {e}"))?;
        root.present().map_err(|e| format!("writing {png}: {e}"))?;
    }
    {
        let svg_path = dir.join(&svg);
        let root = SVGBackend::new(&svg_path, SIZE).into_drawing_area();
        draw(&root, spec).map_err(|e| format!("drawing {svg}: {e}"))?;
        root.present().map_err(|e| format!("writing {svg}: {e}"))?;
    }
    Ok(png)
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];
const LINE_COLORS: [RGBColor; 3] = [RGBColor(214, 39, 40), RGBColor(90, 90, 90), RGBColor(0, 0, 0)];

/// Font sizes chosen so the 8×8 glyphs scale by whole numbers (see [`glyph_scale`]): ×3 for the title, ×2 else.
const TITLE_SIZE: f64 = 46.0;
const TEXT_SIZE: f64 = 31.0;
/// Legend layout: at most this many entries per row, rows of this many pixels.
const LEGEND_MAX_COLS: usize = 3;
const LEGEND_ROW: i32 = 30;

/// The title's font size: [`TITLE_SIZE`] when the title fits the plot's width at that size, else the body size
/// (long titles were cut at both edges).
fn title_size(title: &str, width: u32) -> f64 {
    let chars = title.chars().count() as i64;
    let glyph_px = i64::from(8 * glyph_scale(TITLE_SIZE));
    if chars * glyph_px + 32 <= i64::from(width) { TITLE_SIZE } else { TEXT_SIZE }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Fixed-point scale of the x axis (plotters' key-point axes need an integer coordinate to format labels).
const FX: i32 = 1000;

fn to_fx(x: f64) -> i32 {
    (x * f64::from(FX)).round() as i32
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

enum Swatch {
    Bar,
    Line,
    Dashed,
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &PlotSpec) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let mut entries: Vec<(String, RGBColor, Swatch)> = spec
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let kind = if matches!(spec.x, XAxis::Categories(_)) { Swatch::Bar } else { Swatch::Line };
            (s.name.clone(), PALETTE[i % PALETTE.len()], kind)
        })
        .collect();
    entries.extend(
        spec.hlines.iter().enumerate().map(|(i, h)| {
            (format!("{} = {}", h.name, fmt_tick(h.y)), LINE_COLORS[i % LINE_COLORS.len()], Swatch::Dashed)
        }),
    );
    let (width, height) = root.dim_in_pixel();
    let widest = entries.iter().map(|e| text_box(&e.0, TEXT_SIZE).0 + 60).max().unwrap_or(1);
    let cols = ((width as i32 - 60) / widest).clamp(1, LEGEND_MAX_COLS as i32) as usize;
    let rows = entries.len().div_ceil(cols) as i32;
    let (upper, lower) = root.split_vertically(height as i32 - rows * LEGEND_ROW - 16);
    draw_chart(&upper, spec)?;
    draw_legend(&lower, &entries, cols)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor, Swatch)],
    cols: usize,
) -> DrawResult<DB> {
    let (w, _) = area.dim_in_pixel();
    let col_w = (w as i32 - 60) / cols as i32;
    let font = ("sans-serif", TEXT_SIZE).into_font().color(&BLACK);
    for (i, (name, c, kind)) in entries.iter().enumerate() {
        let x = 40 + (i % cols) as i32 * col_w;
        let y = 6 + (i / cols) as i32 * LEGEND_ROW + LEGEND_ROW / 2;
        match kind {
            Swatch::Bar => area.draw(&Rectangle::new([(x, y - 8), (x + 22, y + 8)], c.filled()))?,
            Swatch::Line => area.draw(&PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3)))?,
            Swatch::Dashed => {
                area.draw(&PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(3)))?;
                area.draw(&PathElement::new(vec![(x + 14, y), (x + 22, y)], c.stroke_width(3)))?;
            }
        }
        area.draw(&Text::new(name.clone(), (x + 30, y), font.clone().pos(Pos::new(HPos::Left, VPos::Center))))?;
    }
    Ok(())
}

fn draw_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &PlotSpec) -> DrawResult<DB> {
    let y_data = spec.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let y_max = y_data.chain(spec.hlines.iter().map(|h| h.y)).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&spec.title, ("sans-serif", title_size(&spec.title, root.dim_in_pixel().0)))
        .margin(16)
        .x_label_area_size(64)
        .y_label_area_size(96);
    let text = ("sans-serif", TEXT_SIZE);
    match &spec.x {
        XAxis::Categories(cats) => {
            let n = cats.len().max(1) as i32;
            let keys: Vec<i32> = (0..n).map(|i| i * FX).collect();
            let mut chart = builder.build_cartesian_2d((-FX / 2..n * FX - FX / 2).with_key_points(keys), 0.0..y_max)?;
            let fmt_x = |x: &i32| cats.get((x / FX) as usize).cloned().unwrap_or_default();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc(&spec.x_label)
                .y_desc(&spec.y_label)
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&|y| fmt_tick(*y))
                .label_style(text)
                .axis_desc_style(text)
                .draw()?;
            let k = spec.series.len().max(1) as i32;
            let group = FX * 8 / 10;
            let w = group / k;
            for (si, s) in spec.series.iter().enumerate() {
                let c = PALETTE[si % PALETTE.len()];
                chart.draw_series(s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| {
                    let x0 = to_fx(x) - group / 2 + si as i32 * w;
                    Rectangle::new([(x0 + FX / 100, 0.0), (x0 + w - FX / 100, y)], c.filled())
                }))?;
            }
            draw_hlines(&mut chart, spec, -FX / 2, n * FX - FX / 2)?;
        }
        XAxis::Log2 | XAxis::Linear => {
            let log = spec.x == XAxis::Log2;
            let tx = |x: f64| to_fx(if log { x.max(f64::MIN_POSITIVE).log2() } else { x });
            let mut xs: Vec<i32> = spec.series.iter().flat_map(|s| s.points.iter().map(|p| tx(p.0))).collect();
            xs.sort_unstable();
            xs.dedup();
            let (lo, hi) = match (xs.first(), xs.last()) {
                (Some(&a), Some(&b)) if b > a => (a, b),
                (Some(&a), _) => (a - FX, a + FX),
                _ => (0, FX),
            };
            let pad = (hi - lo) / 25;
            let (lo, hi) = (lo - pad, hi + pad);
            let mut chart = builder.build_cartesian_2d((lo..hi).with_key_points(xs.clone()), 0.0..y_max)?;
            let fmt_x = |x: &i32| {
                let v = f64::from(*x) / f64::from(FX);
                fmt_tick(if log { v.exp2().round() } else { v })
            };
            chart
                .configure_mesh()
                .x_desc(&spec.x_label)
                .y_desc(&spec.y_label)
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&|y| fmt_tick(*y))
                .label_style(text)
                .axis_desc_style(text)
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            for (si, s) in spec.series.iter().enumerate() {
                let c = PALETTE[si % PALETTE.len()];
                let pts: Vec<(i32, f64)> =
                    s.points.iter().filter(|p| p.1.is_finite()).map(|p| (tx(p.0), p.1)).collect();
                chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))?;
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 5, c.filled())))?;
            }
            draw_hlines(&mut chart, spec, lo, hi)?;
        }
    }
    Ok(())
}

fn draw_hlines<DB: DrawingBackend, X: Ranged<ValueType = i32>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    spec: &PlotSpec,
    lo: i32,
    hi: i32,
) -> DrawResult<DB> {
    for (i, h) in spec.hlines.iter().enumerate() {
        let c = LINE_COLORS[i % LINE_COLORS.len()];
        let style = ShapeStyle { color: c.to_rgba(), filled: false, stroke_width: 2 };
        chart.draw_series(DashedLineSeries::new(vec![(lo, h.y), (hi, h.y)], 12, 6, style))?;
    }
    Ok(())
}

/// A [`BitMapBackend`] that draws text with the 8×8 bitmap font of `font8x8` (scaled by the requested size)
/// instead of a system font, so PNGs get labels on machines without fontconfig/freetype.
pub struct TextBitmap<'a>(pub BitMapBackend<'a>);

impl std::fmt::Debug for TextBitmap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextBitmap").field("size", &self.0.get_size()).finish()
    }
}

/// plotters' layout estimate for text without a font engine (its `naive` font): an em of `size / 1.24²`, a
/// glyph advance of `0.7 em` and a line height of `1.24 em`. The overrides below return exactly this box so that
/// plotters' own layout (which partly uses the estimate directly) and the drawn glyphs agree.
fn naive_metrics(size: f64) -> (f64, f64) {
    let em = size / 1.24 / 1.24;
    (em * 0.7, em * 1.24)
}

fn text_box(text: &str, size: f64) -> (i32, i32) {
    let (adv, h) = naive_metrics(size);
    ((adv * text.chars().count() as f64).round() as i32, h.round() as i32)
}

/// Whole-number scale of the 8×8 glyphs (7 pixels of advance) that best fills the estimated advance.
fn glyph_scale(size: f64) -> i32 {
    ((naive_metrics(size).0 / 7.0).round() as i32).max(1)
}

fn glyph(c: char) -> [u8; 8] {
    BASIC_FONTS.get(c).or_else(|| LATIN_FONTS.get(c)).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8])
}

impl<'a> DrawingBackend for TextBitmap<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = text_box(text, style.size());
        Ok((w as u32, h as u32))
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let s = glyph_scale(style.size());
        let (adv, _) = naive_metrics(style.size());
        let (w, h) = text_box(text, style.size());
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        } + (h - 8 * s) / 2;
        let trans: FontTransform = style.transform();
        let (iw, ih) = self.get_size();
        for (ci, c) in text.chars().enumerate() {
            let x0 = (ci as f64 * adv).round() as i32 + dx;
            for (gy, bits) in glyph(c).iter().enumerate() {
                for gx in (0..8).filter(|gx| bits >> gx & 1 == 1) {
                    for sy in 0..s {
                        for sx in 0..s {
                            let (tx, ty) = trans.transform(x0 + gx * s + sx, gy as i32 * s + sy + dy);
                            let (x, y) = (pos.0 + tx, pos.1 + ty);
                            if x >= 0 && y >= 0 && x < iw as i32 && y < ih as i32 {
                                self.0.draw_pixel((x, y), color)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_titles_get_the_smaller_font() {
        assert_eq!(title_size("Line", SIZE.0), TITLE_SIZE);
        let long = "Wall-clock tokens/s vs K, offloaded SmolLM2-135M f32 target on cuda:0";
        assert_eq!(title_size(long, SIZE.0), TEXT_SIZE);
        assert!(long.chars().count() as u32 * 8 * glyph_scale(TEXT_SIZE) as u32 <= SIZE.0);
    }

    #[test]
    fn renders_both_kinds() {
        let dir = std::env::temp_dir().join(format!("effllm-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let series = vec![Series { name: "a".into(), points: vec![(64.0, 1.0), (128.0, 3.0), (256.0, 2.5)] }];
        let hlines = vec![HLine { name: "ceiling".into(), y: 4.0 }];
        let spec = PlotSpec {
            file_stem: "line".into(),
            title: "Line".into(),
            x_label: "n".into(),
            y_label: "GFLOP/s".into(),
            x: XAxis::Log2,
            series: series.clone(),
            hlines: hlines.clone(),
        };
        assert_eq!(render(&spec, &dir).unwrap(), "line.png");
        let bars = PlotSpec {
            file_stem: "bars".into(),
            x: XAxis::Categories(vec!["x".into(), "y".into()]),
            series: vec![Series { name: "b".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] }],
            ..spec
        };
        render(&bars, &dir).unwrap();
        for f in ["line.png", "line.svg", "bars.png", "bars.svg"] {
            assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 1000, "{f}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
