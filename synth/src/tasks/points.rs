//! HardBLINK-style point questions: 3-5 points on visible surfaces (objects or ground) whose depths differ by a
//! clear ratio, away from depth edges, with marker footprints that neither overlap nor leave the image. The
//! closest point's letter follows a fixed cycle over the dataset, so answer letters are balanced, and (with
//! `balance_lowest_point`) the closest point is the lowest in the image only as often as chance.

use rand::Rng;
use rand::seq::SliceRandom;

use super::{POINTS_QUESTION, Sample};
use crate::config::{SynthConfig, TaskKind};
use crate::draw::{Canvas, MarkerStyle, Rect};
use crate::render::Rendered;

/// The marked points of one question, listed in letter order (A, B, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct PointSet {
    pub labels: Vec<char>,
    /// Pixel column and row of each point (the pixel whose centre was sampled).
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    /// True z-depth at each point, metres.
    pub depth: Vec<f32>,
    /// Index (into the lists) of the point closest to the camera.
    pub answer: usize,
}

impl PointSet {
    /// "(B)".
    pub fn answer_text(&self) -> String {
        format!("({})", self.labels[self.answer])
    }
}

/// Point layouts drawn per question before a scene gives up on the balance (most scenes need a few: without it
/// the lowest point is the closest in about 4 of 5 layouts).
const LAYOUT_ATTEMPTS: usize = 48;

/// Letters for up to 5 points.
pub const LETTERS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];

/// How many points the `g`-th point question of the dataset has, and which letter its answer gets.
pub fn schedule(point_counts: &[u32], g: u64) -> (usize, usize) {
    let l = point_counts.len() as u64;
    let n = point_counts[(g % l) as usize] as usize;
    let letter = ((g / l) % n as u64) as usize;
    (n, letter)
}

/// Whether pixel (x, y) sits inside a smooth patch of a single surface.
fn smooth(r: &Rendered, x: u32, y: u32) -> bool {
    if x == 0 || y == 0 || x + 1 >= r.width || y + 1 >= r.height {
        return false;
    }
    let w = r.width as usize;
    let i = y as usize * w + x as usize;
    let (id, d) = (r.ids[i], r.depth[i]);
    for dy in -1i64..=1 {
        for dx in -1i64..=1 {
            let j = (i as i64 + dy * w as i64 + dx) as usize;
            if r.ids[j] != id || (r.depth[j] - d).abs() > 0.03 * d {
                return false;
            }
        }
    }
    d.is_finite()
}

fn pick<R: Rng>(
    rng: &mut R,
    r: &Rendered,
    cfg: &SynthConfig,
    n: usize,
    style: &MarkerStyle,
) -> Option<Vec<(u32, u32)>> {
    let object_pixels: Vec<u32> = (0..r.ids.len() as u32).filter(|&i| r.ids[i as usize] != 0).collect();
    for _restart in 0..4 {
        let mut chosen: Vec<(u32, u32, f32, Rect)> = Vec::with_capacity(n);
        for _ in 0..400 {
            if chosen.len() == n {
                break;
            }
            let i = if !object_pixels.is_empty() && rng.random_bool(0.6) {
                object_pixels[rng.random_range(0..object_pixels.len())]
            } else {
                rng.random_range(0..r.ids.len() as u32)
            };
            let (x, y) = (i % r.width, i / r.width);
            let fp = style.footprint(x as i32, y as i32);
            if !fp.inside(r.width, r.height) || !smooth(r, x, y) {
                continue;
            }
            let d = r.depth[i as usize];
            let separated = chosen.iter().all(|&(_, _, dc, ref fc)| {
                d.max(dc) >= cfg.min_point_depth_ratio * d.min(dc) && !fp.grown(1).intersects(fc)
            });
            if separated {
                chosen.push((x, y, d, fp));
            }
        }
        if chosen.len() == n {
            return Some(chosen.into_iter().map(|(x, y, _, _)| (x, y)).collect());
        }
    }
    None
}

/// The `g`-th point question of the dataset (the `k`-th of its scene), or None when the scene has no valid layout
/// (or, with the balance, none that meets it within [`LAYOUT_ATTEMPTS`] draws).
pub fn generate<R: Rng>(rng: &mut R, r: &Rendered, cfg: &SynthConfig, g: u64, k: u32) -> Option<Sample> {
    let (n, answer_letter) = schedule(&cfg.point_counts, g);
    let style = MarkerStyle::with_letter_scale(r.width.min(r.height), cfg.marker_scale);
    let depth_at = |&(x, y): &(u32, u32)| r.depth[(y * r.width + x) as usize];
    let closest_of = |pts: &[(u32, u32)]| (0..n).min_by(|&a, &b| depth_at(&pts[a]).total_cmp(&depth_at(&pts[b])));
    // Whether the closest point is to be the lowest one (largest row): with the balance, in 1 of n questions;
    // without it, whatever the layout gives.
    let want_lowest = if cfg.balance_lowest_point { Some(rng.random_range(0..n) == 0) } else { None };
    let mut found = None;
    for _attempt in 0..LAYOUT_ATTEMPTS {
        let pts = pick(rng, r, cfg, n, &style)?;
        let closest = closest_of(&pts)?;
        let lowest = pts[closest].1 >= pts.iter().map(|p| p.1).max()?;
        if want_lowest.is_none_or(|w| w == lowest) {
            found = Some((pts, closest));
            break;
        }
    }
    let (pts, closest) = found?;
    // letters: the closest point gets the scheduled letter, the others the rest in random order
    let mut rest: Vec<usize> = (0..n).filter(|&l| l != answer_letter).collect();
    rest.shuffle(rng);
    let mut slot = vec![usize::MAX; n]; // slot[letter] = point index
    slot[answer_letter] = closest;
    let mut others = (0..n).filter(|&p| p != closest);
    for l in rest {
        slot[l] = others.next()?;
    }
    let set = PointSet {
        labels: LETTERS[..n].to_vec(),
        x: slot.iter().map(|&p| pts[p].0).collect(),
        y: slot.iter().map(|&p| pts[p].1).collect(),
        depth: slot.iter().map(|&p| depth_at(&pts[p])).collect(),
        answer: answer_letter,
    };
    let mut marked = r.rgb.clone();
    let mut canvas = Canvas { rgb: &mut marked, width: r.width, height: r.height };
    for i in 0..n {
        style.draw(&mut canvas, set.x[i] as i32, set.y[i] as i32, set.labels[i]);
    }
    Some(Sample {
        task: TaskKind::Points,
        index: k,
        question: POINTS_QUESTION.to_string(),
        answer: set.answer_text(),
        expression: None,
        kind: "points",
        depth_dependent: true,
        target_object: None,
        points: Some(set),
        marked_rgb: Some(marked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_balances_counts_and_letters() {
        let counts = [3u32, 4, 5];
        let mut tally = std::collections::HashMap::new();
        for g in 0..(3 * 60) {
            *tally.entry(schedule(&counts, g)).or_insert(0) += 1;
        }
        for n in 3..=5usize {
            for l in 0..n {
                assert_eq!(tally[&(n, l)], 60 / n, "n={n} letter={l}");
            }
        }
    }
}
