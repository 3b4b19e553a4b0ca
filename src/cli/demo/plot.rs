//! Training-curve pictures for the demo report: loss series (smoothed) drawn as lines on a plain RGB canvas with
//! axes, tick labels and a legend, using the synthetic world's drawing primitives.

use perceptio_synth::draw::{Canvas, Rect, text_width};

/// One line of a plot.
pub struct Series {
    pub name: String,
    pub colour: [u8; 3],
    /// (x, y) points in x order.
    pub points: Vec<(f64, f64)>,
}

/// Centred moving average over `window` points (the per-micro-batch losses are noisy).
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(points.len());
            let mean = points[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// A `width x height` RGB line plot of `series` with a title; y from 0 to the largest value.
pub fn line_plot(title: &str, x_label: &str, series: &[Series], width: u32, height: u32) -> Vec<u8> {
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    let mut c = Canvas { rgb: &mut rgb, width, height };
    let (left, right, top, bottom) = (44i32, 12i32, 22i32, 30i32);
    let (pw, ph) = (width as i32 - left - right, height as i32 - top - bottom);
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(1e-9, f64::max);
    let y_max = nice_ceiling(y_max);
    let grey = [200, 200, 200];
    let ink = [40, 40, 40];
    c.text(left, 6, title, 1, ink);
    // grid and y ticks
    for k in 0..=4 {
        let y = top + ph - (ph * k) / 4;
        c.fill_rect(Rect { x0: left, y0: y, x1: left + pw, y1: y + 1 }, grey);
        let label = format!("{:.2}", y_max * k as f64 / 4.0);
        c.text(left - 4 - text_width(&label, 1) as i32, y - 3, &label, 1, ink);
    }
    // x ticks
    for k in 0..=4 {
        let x = left + (pw * k) / 4;
        c.fill_rect(Rect { x0: x, y0: top + ph, x1: x + 1, y1: top + ph + 4 }, ink);
        let label = format!("{:.0}", x_max * k as f64 / 4.0);
        c.text(x - text_width(&label, 1) as i32 / 2, top + ph + 7, &label, 1, ink);
    }
    c.text(left + pw / 2 - text_width(x_label, 1) as i32 / 2, top + ph + 18, x_label, 1, ink);
    c.fill_rect(Rect { x0: left, y0: top, x1: left + 1, y1: top + ph + 1 }, ink);
    c.fill_rect(Rect { x0: left, y0: top + ph, x1: left + pw, y1: top + ph + 1 }, ink);
    let to_px = |(x, y): (f64, f64)| -> (i32, i32) {
        let px = left + (x / x_max * pw as f64).round() as i32;
        let py = top + ph - (y.clamp(0.0, y_max) / y_max * ph as f64).round() as i32;
        (px, py)
    };
    for s in series {
        for pair in s.points.windows(2) {
            if !(pair[0].1.is_finite() && pair[1].1.is_finite()) {
                continue;
            }
            let (a, b) = (to_px(pair[0]), to_px(pair[1]));
            line(&mut c, a, b, s.colour);
        }
    }
    // legend, top right
    let mut y = top + 4;
    for s in series {
        let w = text_width(&s.name, 1) as i32;
        let x = left + pw - w - 4;
        c.fill_rect(Rect { x0: x - 14, y0: y + 2, x1: x - 4, y1: y + 5 }, s.colour);
        c.text(x, y, &s.name, 1, ink);
        y += 11;
    }
    rgb
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&c| c >= v).unwrap_or(10.0 * p)
}

/// A two-pixel-thick line (Bresenham).
fn line(c: &mut Canvas<'_>, (x0, y0): (i32, i32), (x1, y1): (i32, i32), colour: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        c.put(x, y, colour);
        c.put(x, y + 1, colour);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_averages_neighbours_and_keeps_x() {
        let pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, if i == 2 { 3.0 } else { 0.0 })).collect();
        let s = smooth(&pts, 3);
        assert_eq!(s[2], (2.0, 1.0));
        assert_eq!(s[0], (0.0, 0.0));
        assert_eq!(s[1].1, 1.0);
    }

    #[test]
    fn ceilings_are_round_numbers() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(4.2), 5.0);
    }

    #[test]
    fn a_series_draws_its_colour_on_the_canvas() {
        let s = Series { name: "a".into(), colour: [255, 0, 0], points: vec![(0.0, 1.0), (10.0, 0.5)] };
        let img = line_plot("t", "step", &[s], 200, 120);
        assert_eq!(img.len(), 200 * 120 * 3);
        assert!(img.chunks_exact(3).filter(|p| p == &[255, 0, 0]).count() > 100);
    }
}
