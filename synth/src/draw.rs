//! Raster drawing on RGB buffers: rectangles, rings, text, and the HardBLINK point marker (a red circle around the
//! point and a white letter on a black box above it) with its exact footprint.

use rand::Rng;

use crate::font::{GLYPH_H, GLYPH_W, glyph};

/// An axis-aligned pixel rectangle, `x0..x1` by `y0..y1` (exclusive ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
    pub fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }
    pub fn inside(&self, w: u32, h: u32) -> bool {
        self.x0 >= 0 && self.y0 >= 0 && self.x1 <= w as i32 && self.y1 <= h as i32
    }
    /// Grown by `m` pixels on every side.
    pub fn grown(&self, m: i32) -> Rect {
        Rect { x0: self.x0 - m, y0: self.y0 - m, x1: self.x1 + m, y1: self.y1 + m }
    }
}

/// A mutable view of an RGB image.
pub struct Canvas<'a> {
    pub rgb: &'a mut [u8],
    pub width: u32,
    pub height: u32,
}

impl Canvas<'_> {
    pub fn put(&mut self, x: i32, y: i32, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.width && (y as u32) < self.height {
            let i = 3 * (y as usize * self.width as usize + x as usize);
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn fill_rect(&mut self, r: Rect, c: [u8; 3]) {
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                self.put(x, y, c);
            }
        }
    }

    /// A ring of the given radius and thickness centred on pixel (cx, cy); pixels within `radius - thickness`
    /// of the centre stay untouched.
    pub fn ring(&mut self, cx: i32, cy: i32, radius: i32, thickness: i32, c: [u8; 3]) {
        let outer = radius as f32 + 0.5;
        let inner = (radius - thickness) as f32 + 0.5;
        for y in cy - radius - 1..=cy + radius + 1 {
            for x in cx - radius - 1..=cx + radius + 1 {
                let d = (((x - cx) * (x - cx) + (y - cy) * (y - cy)) as f32).sqrt();
                if d <= outer && d > inner {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// Draw `text` with its top-left corner at (x, y); each font cell is `scale` pixels, one cell between glyphs.
    pub fn text(&mut self, x: i32, y: i32, text: &str, scale: u32, c: [u8; 3]) {
        let s = scale.max(1) as i32;
        for (k, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + k as i32 * (GLYPH_W as i32 + 1) * s;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..GLYPH_W as i32 {
                    if bits & (1 << (GLYPH_W as i32 - 1 - col)) != 0 {
                        let r = Rect { x0: gx + col * s, y0: y + row as i32 * s, x1: gx + (col + 1) * s, y1: y };
                        let r = Rect { y1: r.y0 + s, ..r };
                        self.fill_rect(r, c);
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    if n == 0 { 0 } else { (n * (GLYPH_W + 1) - 1) * scale.max(1) }
}

/// Geometry of the point markers for an image of `size` pixels (the shorter side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerStyle {
    pub radius: i32,
    pub thickness: i32,
    pub font_scale: u32,
    /// Padding around the letter inside its box.
    pub pad: i32,
    /// Gap between the circle and the box.
    pub gap: i32,
}

impl MarkerStyle {
    pub fn for_size(size: u32) -> Self {
        Self::with_letter_scale(size, 0)
    }

    /// The markers of an image of side `size` with letters drawn `scale` times the 5x7 font (0: size / 128, at
    /// least 1); the ring, box padding and gap follow the letter scale.
    pub fn with_letter_scale(size: u32, scale: u32) -> Self {
        let s = if scale == 0 { (size / 128).max(1) } else { scale } as i32;
        MarkerStyle { radius: (size as i32 / 32).max(3), thickness: s, font_scale: s as u32, pad: s, gap: s }
    }

    /// The letter box of a marker at (x, y).
    pub fn label_box(&self, x: i32, y: i32) -> Rect {
        let gw = GLYPH_W as i32 * self.font_scale as i32;
        let gh = GLYPH_H as i32 * self.font_scale as i32;
        let bw = gw + 2 * self.pad;
        let bh = gh + 2 * self.pad;
        let x0 = x - bw / 2;
        let y1 = y - self.radius - self.gap;
        Rect { x0, y0: y1 - bh, x1: x0 + bw, y1 }
    }

    /// The centre pixel of the letter box of a marker at (x, y).
    pub fn letter_centre(&self, x: i32, y: i32) -> (i32, i32) {
        let b = self.label_box(x, y);
        ((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2)
    }

    /// Every pixel a marker at (x, y) may paint lies in this rectangle.
    pub fn footprint(&self, x: i32, y: i32) -> Rect {
        let b = self.label_box(x, y);
        let r = self.radius + 1;
        Rect { x0: b.x0.min(x - r), y0: b.y0, x1: b.x1.max(x + r + 1), y1: y + r + 1 }
    }

    /// Draw the marker: red ring around (x, y), white `letter` on a black box above.
    pub fn draw(&self, canvas: &mut Canvas<'_>, x: i32, y: i32, letter: char) {
        canvas.ring(x, y, self.radius, self.thickness, [255, 0, 0]);
        let b = self.label_box(x, y);
        canvas.fill_rect(b, [0, 0, 0]);
        canvas.text(b.x0 + self.pad, b.y0 + self.pad, &letter.to_string(), self.font_scale, [255, 255, 255]);
    }
}

/// Draws `n` markers labelled A, B, ... at random points of the canvas, their footprints inside it and one pixel
/// apart (the layout rule of the point questions, without their depth rules); the points (x, y) in letter order,
/// or None when `attempts` draws per marker cannot place them all.
pub fn draw_random_markers<R: Rng>(
    canvas: &mut Canvas<'_>,
    style: &MarkerStyle,
    n: usize,
    attempts: usize,
    rng: &mut R,
) -> Option<Vec<(u32, u32)>> {
    let (w, h) = (canvas.width, canvas.height);
    let mut points: Vec<(u32, u32)> = Vec::with_capacity(n);
    let mut taken: Vec<Rect> = Vec::with_capacity(n);
    for _ in 0..n {
        let spot = (0..attempts).find_map(|_| {
            let (x, y) = (rng.random_range(0..w), rng.random_range(0..h));
            let fp = style.footprint(x as i32, y as i32);
            (fp.inside(w, h) && !taken.iter().any(|t| fp.grown(1).intersects(t))).then_some((x, y, fp))
        })?;
        points.push((spot.0, spot.1));
        taken.push(spot.2);
    }
    for (k, &(x, y)) in points.iter().enumerate() {
        style.draw(canvas, x as i32, y as i32, char::from(b'A' + k as u8));
    }
    Some(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_paints_only_inside_its_footprint_and_spares_the_point() {
        for (size, scale) in [(64u32, 0), (128, 0), (256, 0), (128, 2)] {
            let st = MarkerStyle::with_letter_scale(size, scale);
            let mut rgb = vec![7u8; (size * size * 3) as usize];
            let (x, y) = (size as i32 / 2, size as i32 / 2);
            st.draw(&mut Canvas { rgb: &mut rgb, width: size, height: size }, x, y, 'C');
            let fp = st.footprint(x, y);
            let mut painted = 0;
            for py in 0..size as i32 {
                for px in 0..size as i32 {
                    let i = 3 * (py as usize * size as usize + px as usize);
                    if rgb[i..i + 3] != [7, 7, 7] {
                        painted += 1;
                        assert!(fp.contains(px, py), "size {size}: ({px},{py}) outside {fp:?}");
                    }
                }
            }
            assert!(painted > 20);
            let i = 3 * (y as usize * size as usize + x as usize);
            assert_eq!(&rgb[i..i + 3], &[7, 7, 7], "the marked pixel stays visible");
        }
    }

    #[test]
    fn random_markers_are_drawn_apart_inside_the_image() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let style = MarkerStyle::for_size(128);
        for n in 3..=5 {
            let mut rgb = vec![90u8; 128 * 128 * 3];
            let mut canvas = Canvas { rgb: &mut rgb, width: 128, height: 128 };
            let points = draw_random_markers(&mut canvas, &style, n, 64, &mut rng).expect("room for 5 markers");
            assert_eq!(points.len(), n);
            for (i, &(x, y)) in points.iter().enumerate() {
                let fp = style.footprint(x as i32, y as i32);
                assert!(fp.inside(128, 128), "{fp:?}");
                for &(x2, y2) in &points[i + 1..] {
                    assert!(!fp.grown(1).intersects(&style.footprint(x2 as i32, y2 as i32)));
                }
                // the ring is red just inside its radius, the letter box black above it
                let px = |x: i32, y: i32| &rgb[3 * (y as usize * 128 + x as usize)..][..3];
                assert_eq!(px(x as i32 + style.radius, y as i32), [255, 0, 0]);
                let b = style.label_box(x as i32, y as i32);
                assert_eq!(px(b.x0, b.y0), [0, 0, 0]);
                let (cx, cy) = style.letter_centre(x as i32, y as i32);
                assert!(b.contains(cx, cy) && cy < y as i32 - style.radius, "({cx}, {cy}) in {b:?}");
            }
        }
        // no room: a 20 px canvas cannot hold 5 markers
        let mut small = vec![0u8; 20 * 20 * 3];
        let mut canvas = Canvas { rgb: &mut small, width: 20, height: 20 };
        assert_eq!(draw_random_markers(&mut canvas, &style, 5, 64, &mut rng), None);
    }
}
