//! Referring segmentation samples: pick a clearly visible target, enumerate the expressions of the wanted family
//! (appearance / left-right, or closest-farthest / behind-in front) that the resolver maps to exactly that object,
//! and draw one. The target mask is the object's visible region in the id map.

use rand::Rng;

use super::Sample;
use super::expr::{Desc, Expression, Margins, ObjInfo, Resolution, Side, resolve};
use crate::config::TaskKind;

/// The Sa2VA-style segmentation prompt.
pub fn question(expression: &str) -> String {
    format!("Please segment {expression} in this image.")
}

/// The answer whose [SEG] token carries the mask.
pub const ANSWER: &str = "Sure, [SEG].";

/// Shortest descriptions that pick `o` alone (used for anchors).
fn shortest_unique(o: &ObjInfo, infos: &[ObjInfo], m: &Margins) -> Vec<Desc> {
    let unique: Vec<Desc> = Desc::all_of(o)
        .into_iter()
        .filter(|d| !d.is_empty() && resolve(&Expression::Attribute(*d), infos, m) == Resolution::Unique(o.id))
        .collect();
    let best = unique.iter().map(Desc::len).min().unwrap_or(0);
    unique.into_iter().filter(|d| d.len() == best).collect()
}

/// Relational expressions for `t` built by `make(target_desc, anchor_desc)`; descriptions that would pick the
/// target without the relation are left out when the relation is needed by some other description.
fn relational(
    t: &ObjInfo,
    infos: &[ObjInfo],
    m: &Margins,
    min_px: usize,
    make: impl Fn(Desc, Desc) -> [Expression; 2],
) -> Vec<Expression> {
    let mut needed = Vec::new();
    let mut redundant = Vec::new();
    for a in infos.iter().filter(|a| a.id != t.id && a.visible_pixels >= min_px) {
        for ad in shortest_unique(a, infos, m) {
            for td in Desc::all_of(t) {
                for e in make(td, ad) {
                    if resolve(&e, infos, m) == Resolution::Unique(t.id) {
                        let alone = resolve(&Expression::Attribute(td), infos, m) == Resolution::Unique(t.id);
                        if alone { redundant.push(e) } else { needed.push(e) }
                    }
                }
            }
        }
    }
    if needed.is_empty() { redundant } else { needed }
}

/// Valid expressions for target `t`, grouped by family.
pub fn candidates(t: &ObjInfo, infos: &[ObjInfo], m: &Margins, min_px: usize, depth: bool) -> Vec<Vec<Expression>> {
    if depth {
        let extreme: Vec<Expression> = Desc::all_of(t)
            .into_iter()
            .flat_map(|d| {
                [Expression::Extreme { target: d, nearest: true }, Expression::Extreme { target: d, nearest: false }]
            })
            .filter(|e| resolve(e, infos, m) == Resolution::Unique(t.id))
            .collect();
        let order = relational(t, infos, m, min_px, |td, ad| {
            [
                Expression::DepthOrder { target: td, behind: true, anchor: ad },
                Expression::DepthOrder { target: td, behind: false, anchor: ad },
            ]
        });
        vec![extreme, order]
    } else {
        let attribute: Vec<Expression> = Desc::all_of(t)
            .into_iter()
            .filter(|d| !d.is_empty())
            .map(Expression::Attribute)
            .filter(|e| resolve(e, infos, m) == Resolution::Unique(t.id))
            .collect();
        let beside = relational(t, infos, m, min_px, |td, ad| {
            [
                Expression::Beside { target: td, side: Side::Left, anchor: ad },
                Expression::Beside { target: td, side: Side::Right, anchor: ad },
            ]
        });
        vec![attribute, beside]
    }
}

/// Up to `n` referring samples with distinct expressions; a share `depth_share` of them (in expectation) depth
/// dependent.
pub fn generate<R: Rng>(
    rng: &mut R,
    infos: &[ObjInfo],
    m: &Margins,
    min_px: usize,
    n: u32,
    depth_share: f32,
) -> Vec<Sample> {
    let targets: Vec<&ObjInfo> = infos.iter().filter(|o| o.visible_pixels >= min_px).collect();
    let mut out: Vec<Sample> = Vec::new();
    if targets.is_empty() {
        return out;
    }
    let mut used: Vec<Expression> = Vec::new();
    for _ in 0..(4 * n + 8) {
        if out.len() as u32 >= n {
            break;
        }
        let want_depth = rng.random_bool(depth_share as f64);
        let t = targets[rng.random_range(0..targets.len())];
        let families: Vec<Vec<Expression>> = candidates(t, infos, m, min_px, want_depth)
            .into_iter()
            .map(|mut f| {
                f.retain(|e| !used.contains(e));
                f
            })
            .filter(|f| !f.is_empty())
            .collect();
        if families.is_empty() {
            continue;
        }
        let family = &families[rng.random_range(0..families.len())];
        let e = family[rng.random_range(0..family.len())];
        used.push(e);
        let text = e.text();
        out.push(Sample {
            task: TaskKind::Referring,
            index: out.len() as u32,
            question: question(&text),
            answer: ANSWER.to_string(),
            expression: Some(text),
            kind: e.kind(),
            depth_dependent: e.depth_dependent(),
            target_object: Some(t.id),
            points: None,
            marked_rgb: None,
        });
    }
    out
}
