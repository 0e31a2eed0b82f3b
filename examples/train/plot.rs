//! Just enough plotting for the training report: an RGB canvas, lines,
//! points, a 5x7 bitmap font, and charts with ticked axes and a legend.

use std::path::Path;

/// An RGB colour.
pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [20, 20, 20];
pub const GREY: Rgb = [225, 225, 225];
/// Series colours (colour-blind friendly, after Okabe and Ito: blue,
/// orange, green, purple, vermilion, sky blue, grey).
pub const PALETTE: [Rgb; 7] = [
    [0, 114, 178],
    [230, 159, 0],
    [0, 158, 115],
    [150, 80, 160],
    [213, 94, 0],
    [86, 180, 233],
    [110, 110, 110],
];

/// A raster image.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    px: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            px: vec![255; width * height * 3],
        }
    }

    #[cfg(test)]
    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// Paints one pixel, blending with weight `alpha` in [0, 1]; off-canvas
    /// pixels are ignored.
    pub fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        for (p, &target) in self.px[i..i + 3].iter_mut().zip(&c) {
            let old = *p as f64;
            *p = (old + (target as f64 - old) * alpha).round() as u8;
        }
    }

    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.blend(x, y, c, 1.0);
            }
        }
    }

    /// A line of the given thickness (a square brush along the segment).
    pub fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb, thickness: f64) {
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let steps = (len * 2.0).ceil().max(1.0) as usize;
        let r = (thickness / 2.0).max(0.5);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for yy in (y - r + 0.5).floor() as i64..=(y + r - 0.5).ceil() as i64 {
                for xx in (x - r + 0.5).floor() as i64..=(x + r - 0.5).ceil() as i64 {
                    self.blend(xx, yy, c, 1.0);
                }
            }
        }
    }

    /// A filled disc, drawn translucent so that dense scatters show density.
    pub fn disc(&mut self, cx: f64, cy: f64, radius: f64, c: Rgb, alpha: f64) {
        let r = radius.ceil() as i64;
        for dy in -r..=r {
            for dx in -r..=r {
                if ((dx * dx + dy * dy) as f64) <= radius * radius {
                    self.blend(cx.round() as i64 + dx, cy.round() as i64 + dy, c, alpha);
                }
            }
        }
    }

    /// Text in the 5x7 font, `scale` pixels per font pixel, top-left at (x, y).
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (gx + col * scale, y + row as i64 * scale);
                        self.fill_rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }

    /// Text rotated a quarter turn anticlockwise (for y-axis labels),
    /// reading upwards from (x, y) at its bottom-left.
    pub fn text_up(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let gy = y - k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (x + row as i64 * scale, gy - col * scale);
                        self.fill_rect(px, py, px + scale - 1, py - scale + 1, c);
                    }
                }
            }
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        super::png::write_rgb(path, self.width as u32, self.height as u32, &self.px)
    }
}

/// Width in pixels of `s` at `scale`.
pub fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 6 * scale - scale
}

/// A chart: a plot box mapping data ranges to pixels, with axes, ticks,
/// title and axis labels drawn when it is made.
pub struct Chart {
    pub canvas: Canvas,
    x_range: (f64, f64),
    y_range: (f64, f64),
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    legend: Vec<(String, Rgb)>,
    legend_bottom: bool,
}

impl Chart {
    pub fn new(
        title: &str,
        x_label: &str,
        y_label: &str,
        x_range: (f64, f64),
        y_range: (f64, f64),
    ) -> Chart {
        let (w, h) = (800usize, 560usize);
        let mut chart = Chart {
            canvas: Canvas::new(w, h),
            x_range: widen(x_range),
            y_range: widen(y_range),
            left: 90.0,
            right: w as f64 - 30.0,
            top: 50.0,
            bottom: h as f64 - 70.0,
            legend: vec![],
            legend_bottom: false,
        };
        chart.frame(title, x_label, y_label);
        chart
    }

    /// Data to pixel coordinates.
    pub fn to_px(&self, x: f64, y: f64) -> (f64, f64) {
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        (
            self.left + (x - x0) / (x1 - x0) * (self.right - self.left),
            self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top),
        )
    }

    fn inside(&self, px: f64, py: f64) -> bool {
        px >= self.left - 0.5
            && px <= self.right + 0.5
            && py >= self.top - 0.5
            && py <= self.bottom + 0.5
    }

    fn frame(&mut self, title: &str, x_label: &str, y_label: &str) {
        let (l, r, t, b) = (self.left, self.right, self.top, self.bottom);
        let c = &mut self.canvas;
        for (v, pos) in ticks(self.x_range) {
            let px = l + pos * (r - l);
            c.line(px, t, px, b, GREY, 1.0);
            c.line(px, b, px, b + 5.0, BLACK, 1.0);
            let s = fmt_tick(v, self.x_range);
            c.text(
                px as i64 - text_width(&s, 2) / 2,
                b as i64 + 10,
                &s,
                2,
                BLACK,
            );
        }
        for (v, pos) in ticks(self.y_range) {
            let py = b - pos * (b - t);
            c.line(l, py, r, py, GREY, 1.0);
            c.line(l - 5.0, py, l, py, BLACK, 1.0);
            let s = fmt_tick(v, self.y_range);
            c.text(
                l as i64 - 9 - text_width(&s, 2),
                py as i64 - 7,
                &s,
                2,
                BLACK,
            );
        }
        c.line(l, b, r, b, BLACK, 2.0);
        c.line(l, t, l, b, BLACK, 2.0);
        let w = c.width as i64;
        c.text((w - text_width(title, 2)) / 2, 16, title, 2, BLACK);
        c.text(
            (l + r) as i64 / 2 - text_width(x_label, 2) / 2,
            b as i64 + 36,
            x_label,
            2,
            BLACK,
        );
        c.text_up(
            14,
            (t + b) as i64 / 2 + text_width(y_label, 2) / 2,
            y_label,
            2,
            BLACK,
        );
    }

    pub fn points(&mut self, pts: &[(f64, f64)], c: Rgb, radius: f64, alpha: f64) {
        for &(x, y) in pts {
            let (px, py) = self.to_px(x, y);
            if self.inside(px, py) {
                self.canvas.disc(px, py, radius, c, alpha);
            }
        }
    }

    /// A polyline; segments leaving the plot box are dropped.
    pub fn polyline(&mut self, pts: &[(f64, f64)], c: Rgb, thickness: f64) {
        for w in pts.windows(2) {
            let (a, b) = (self.to_px(w[0].0, w[0].1), self.to_px(w[1].0, w[1].1));
            if self.inside(a.0, a.1) && self.inside(b.0, b.1) {
                self.canvas.line(a.0, a.1, b.0, b.1, c, thickness);
            }
        }
    }

    pub fn add_legend(&mut self, name: &str, c: Rgb) {
        self.legend.push((name.to_string(), c));
    }

    /// Puts the legend in the bottom-right corner instead of the top-right
    /// (for data that fills the top).
    pub fn legend_bottom_right(&mut self) {
        self.legend_bottom = true;
    }

    /// Draws the legend in its corner and writes the PNG.
    pub fn save(mut self, path: &Path) -> std::io::Result<()> {
        let width = self
            .legend
            .iter()
            .map(|(n, _)| text_width(n, 2))
            .max()
            .unwrap_or(0)
            + 44;
        let x0 = self.right as i64 - width - 8;
        let h = self.legend.len() as i64 * 22 + 8;
        let mut y = if self.legend_bottom {
            self.bottom as i64 - h - 2
        } else {
            self.top as i64 + 8
        };
        if !self.legend.is_empty() {
            self.canvas
                .fill_rect(x0 - 6, y - 6, x0 + width, y + h - 6, WHITE);
            for (name, c) in std::mem::take(&mut self.legend) {
                self.canvas.fill_rect(x0, y + 3, x0 + 26, y + 9, c);
                self.canvas.text(x0 + 34, y, &name, 2, BLACK);
                y += 22;
            }
        }
        self.canvas.save(path)
    }
}

/// A degenerate range gets some width so that it can be drawn.
fn widen((a, b): (f64, f64)) -> (f64, f64) {
    if (b - a).abs() < 1e-12 || !a.is_finite() || !b.is_finite() {
        let m = if a.is_finite() { a } else { 0.0 };
        (m - 1.0, m + 1.0)
    } else {
        (a.min(b), a.max(b))
    }
}

/// Round tick values in `range` (1, 2 or 5 times a power of ten apart, 4 to
/// 10 of them), with their positions in [0, 1].
pub fn ticks(range: (f64, f64)) -> Vec<(f64, f64)> {
    let (a, b) = range;
    let span = b - a;
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|f| f * mag)
        .find(|s| span / s <= 8.0)
        .unwrap_or(10.0 * mag);
    let first = (a / step).ceil() as i64;
    let mut out = vec![];
    for k in first.. {
        let v = k as f64 * step;
        if v > b + step * 1e-9 {
            break;
        }
        out.push((v, (v - a) / span));
    }
    out
}

fn fmt_tick(v: f64, range: (f64, f64)) -> String {
    let span = range.1 - range.0;
    let decimals = if span >= 20.0 {
        0
    } else {
        (2.0 - (span / 6.0).log10().floor()).clamp(0.0, 4.0) as usize - 1
    };
    format!("{v:.decimals$}")
}

/// The 5x7 glyph of `ch` (lower case drawn as upper case; unknown: a box).
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '|' => [0x04; 7],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        for range in [
            (0.0, 1.0),
            (-1.0, 1.0),
            (3.7, 41.2),
            (0.0, 2500.0),
            (0.013, 0.019),
        ] {
            let t = ticks(range);
            assert!(t.len() >= 3 && t.len() <= 10, "{range:?}: {t:?}");
            for &(v, pos) in &t {
                assert!((-1e-9..=1.0 + 1e-9).contains(&pos), "{range:?}: {t:?}");
                assert!(v >= range.0 - 1e-9 && v <= range.1 + 1e-9);
            }
        }
        let t: Vec<f64> = ticks((0.0, 1.0)).iter().map(|p| p.0).collect();
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len());
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
    }

    #[test]
    fn drawing_lands_where_the_axes_say() {
        let mut chart = Chart::new("T", "X", "Y", (0.0, 10.0), (0.0, 1.0));
        let (px, py) = chart.to_px(5.0, 0.5);
        chart.points(&[(5.0, 0.5)], PALETTE[0], 3.0, 1.0);
        assert_eq!(chart.canvas.pixel(px as usize, py as usize), PALETTE[0]);
        // A point outside the ranges is not drawn.
        chart.points(&[(50.0, 0.5)], PALETTE[1], 3.0, 1.0);
        let w = chart.canvas.width;
        let any_orange = (0..chart.canvas.height)
            .any(|y| (0..w).any(|x| chart.canvas.pixel(x, y) == PALETTE[1]));
        assert!(!any_orange);
    }
}
