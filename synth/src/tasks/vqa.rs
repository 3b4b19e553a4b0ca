//! Short VQA samples with one-word answers: "What colour is the large cube?", "What shape is the red object?",
//! "How many spheres are there?", and the depth question "Is the red cube closer to the camera than the blue
//! sphere?". Only clearly visible objects are described or counted; counts that a barely visible object would
//! make uncertain are not asked.

use rand::Rng;

use super::Sample;
use super::expr::{Desc, Expression, Margins, ObjInfo, Resolution, resolve};
use crate::config::TaskKind;

fn unique_descs(t: &ObjInfo, infos: &[ObjInfo], m: &Margins, keep: impl Fn(&Desc) -> bool) -> Vec<Desc> {
    Desc::all_of(t)
        .into_iter()
        .filter(|d| {
            !d.is_empty() && keep(d) && resolve(&Expression::Attribute(*d), infos, m) == Resolution::Unique(t.id)
        })
        .collect()
}

fn plural(d: &Desc) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if let Some(s) = d.size {
        parts.push(s.name());
    }
    if let Some(c) = d.colour {
        parts.push(c.name());
    }
    parts.push(d.shape.map_or("objects", |s| s.plural()));
    parts.join(" ")
}

/// One candidate question: (question, answer, kind, depth dependent, object it is about).
type Qa = (String, String, &'static str, bool, Option<u8>);

fn one<R: Rng>(rng: &mut R, infos: &[ObjInfo], m: &Margins, min_px: usize, depth: bool) -> Option<Qa> {
    let clear: Vec<&ObjInfo> = infos.iter().filter(|o| o.visible_pixels >= min_px).collect();
    if clear.is_empty() {
        return None;
    }
    let t = clear[rng.random_range(0..clear.len())];
    if depth {
        let others: Vec<&&ObjInfo> = clear.iter().filter(|o| o.id != t.id).collect();
        if others.is_empty() {
            return None;
        }
        let o = others[rng.random_range(0..others.len())];
        if t.depth.max(o.depth) < m.depth_ratio * t.depth.min(o.depth) {
            return None;
        }
        let dt = unique_descs(t, infos, m, |_| true);
        let dor = unique_descs(o, infos, m, |_| true);
        let a = *dt.iter().min_by_key(|d| d.len())?;
        let b = *dor.iter().min_by_key(|d| d.len())?;
        let q = format!("Is the {} closer to the camera than the {}?", a.text(), b.text());
        let ans = if t.depth < o.depth { "yes" } else { "no" };
        return Some((q, ans.into(), "closer", true, Some(t.id)));
    }
    match rng.random_range(0..3) {
        0 => {
            let ds = unique_descs(t, infos, m, |d| d.colour.is_none());
            let d = ds.get(rng.random_range(0..ds.len().max(1)))?;
            let q = format!("What colour is the {}?", d.text());
            Some((q, t.colour.name().into(), "colour", false, Some(t.id)))
        }
        1 => {
            let ds = unique_descs(t, infos, m, |d| d.shape.is_none());
            let d = ds.get(rng.random_range(0..ds.len().max(1)))?;
            let q = format!("What shape is the {}?", d.text());
            Some((q, t.shape.name().into(), "shape", false, Some(t.id)))
        }
        _ => {
            let all = Desc::all_of(t);
            let d = all[rng.random_range(0..all.len())];
            let visible_match = infos.iter().filter(|o| o.visible_pixels > 0 && d.matches(o));
            if visible_match.clone().any(|o| o.visible_pixels < min_px) {
                return None;
            }
            let count = visible_match.count();
            let q = format!("How many {} are there?", plural(&d));
            Some((q, count.to_string(), "count", false, None))
        }
    }
}

/// Up to `n` distinct questions; a share `depth_share` (in expectation) are depth questions.
pub fn generate<R: Rng>(
    rng: &mut R,
    infos: &[ObjInfo],
    m: &Margins,
    min_px: usize,
    n: u32,
    depth_share: f32,
) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for _ in 0..(6 * n + 8) {
        if out.len() as u32 >= n {
            break;
        }
        let depth = rng.random_bool(depth_share as f64);
        let Some((question, answer, kind, depth_dependent, target)) = one(rng, infos, m, min_px, depth) else {
            continue;
        };
        if out.iter().any(|s| s.question == question) {
            continue;
        }
        out.push(Sample {
            task: TaskKind::Vqa,
            index: out.len() as u32,
            question,
            answer,
            expression: None,
            kind,
            depth_dependent,
            target_object: target,
            points: None,
            marked_rgb: None,
        });
    }
    out
}
