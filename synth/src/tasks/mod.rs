//! The samples a scene yields: referring segmentation, HardBLINK-style point questions, depth questions and short
//! VQA. Each task draws from its own RNG stream (seed, scene, task), so enabling or disabling one task leaves the
//! others' samples unchanged.

pub mod expr;
pub mod points;
pub mod referring;
pub mod vqa;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{SynthConfig, TaskKind};
use crate::render::Rendered;
use crate::scene::Scene;
use expr::{Margins, ObjInfo};

pub use points::PointSet;

/// The question every depth sample asks (AURORA's depth-generation prompt).
pub const DEPTH_QUESTION: &str = "What is the depth map for the image?";
/// The HardBLINK question.
pub const POINTS_QUESTION: &str = "Multiple points are circled on the image, labeled by letters beside each circle. \
                                   Which point is the closest to the camera?";

/// One dataset row before encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub task: TaskKind,
    /// Index of this sample among the scene's samples of the same task.
    pub index: u32,
    pub question: String,
    pub answer: String,
    /// Referring expression (referring samples).
    pub expression: Option<String>,
    /// Fine-grained kind: attribute / beside / extreme / depth_order (referring), colour / shape / count / closer
    /// (vqa), points, depth.
    pub kind: &'static str,
    /// Whether answering needs depth reasoning.
    pub depth_dependent: bool,
    /// The object the sample is about: referring target (its visible mask is the target mask).
    pub target_object: Option<u8>,
    /// Point questions: the marked points and their true depths.
    pub points: Option<PointSet>,
    /// Point questions: the image with the markers drawn (RGB8); other tasks use the plain render.
    pub marked_rgb: Option<Vec<u8>>,
}

/// Mix a seed, a scene index and a stream tag into one RNG seed (splitmix64 finaliser on each step).
pub fn stream_seed(seed: u64, scene: u64, tag: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    mix(mix(mix(seed) ^ scene) ^ tag)
}

/// The resolver's view of a rendered scene's objects.
pub fn object_infos(scene: &Scene, rendered: &Rendered) -> Vec<ObjInfo> {
    let frame = scene.camera.frame();
    let counts = rendered.pixel_counts();
    scene
        .objects
        .iter()
        .map(|o| {
            let (x, _, z) = frame.project(o.centre()).unwrap_or((f32::NAN, f32::NAN, f32::INFINITY));
            ObjInfo {
                id: o.id,
                shape: o.shape,
                colour: o.colour,
                size: o.size,
                image_x: x,
                depth: z,
                visible_pixels: counts[o.id as usize],
            }
        })
        .collect()
}

/// The relation margins for an image of `size` pixels.
pub fn margins(size: u32) -> Margins {
    Margins { side_px: (size as f32 * 0.06).max(2.0), depth_ratio: 1.15 }
}

/// Every sample of one scene, in a fixed task order (`held_out`: the scene belongs to the validation or test
/// split).
pub fn scene_samples(
    scene: &Scene,
    rendered: &Rendered,
    cfg: &SynthConfig,
    seed: u64,
    scene_index: u64,
    held_out: bool,
) -> Vec<Sample> {
    let infos = object_infos(scene, rendered);
    let m = margins(cfg.size);
    let min_px = cfg.min_visible_pixels();
    let mut out = Vec::new();
    for task in TaskKind::ALL {
        let n = cfg.per_scene_in(task, held_out);
        if n == 0 {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, scene_index, 1 + task as u64));
        match task {
            TaskKind::Referring => {
                out.extend(referring::generate(&mut rng, &infos, &m, min_px, n, cfg.depth_expression_share))
            }
            TaskKind::Points => {
                for k in 0..n {
                    let g = scene_index * n as u64 + k as u64;
                    if let Some(s) = points::generate(&mut rng, rendered, cfg, g, k) {
                        out.push(s);
                    }
                }
            }
            TaskKind::Depth => out.extend((0..n).map(|k| Sample {
                task,
                index: k,
                question: DEPTH_QUESTION.to_string(),
                answer: String::new(),
                expression: None,
                kind: "depth",
                depth_dependent: true,
                target_object: None,
                points: None,
                marked_rgb: None,
            })),
            TaskKind::Vqa => out.extend(vqa::generate(&mut rng, &infos, &m, min_px, n, cfg.depth_expression_share)),
        }
    }
    out
}
