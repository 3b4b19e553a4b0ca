//! From (config, seed, scene index) to a scene's encoded rows: sample the scene, render it, generate the task
//! samples, PNG-encode images/masks/depth once per scene. Also the split layout (contiguous, disjoint scene index
//! ranges) and rendering a range of scenes in parallel with output order independent of thread timing.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::codec;
use crate::config::SynthConfig;
use crate::error::SynthError;
use crate::render::{Rendered, render};
use crate::scene::{Scene, sample_scene};
use crate::tasks::{Sample, scene_samples, stream_seed};

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];
    /// The name used in file names and the `split` column (the HuggingFace names).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(SynthError::Config { field: "split", message: format!("unknown split {other:?}") }),
        }
    }
}

/// The scene indices of `split`: train, validation and test are consecutive, disjoint ranges of `0..cfg.scenes`.
pub fn split_range(cfg: &SynthConfig, split: Split) -> Range<u64> {
    let n = cfg.scenes as u64;
    let n_val = ((n as f64) * cfg.val_fraction as f64).round() as u64;
    let n_test = ((n as f64) * cfg.test_fraction as f64).round() as u64;
    let n_train = n.saturating_sub(n_val + n_test);
    match split {
        Split::Train => 0..n_train,
        Split::Validation => n_train..n_train + n_val,
        Split::Test => n_train + n_val..n,
    }
}

/// The stable scene id.
pub fn scene_id(seed: u64, index: u64) -> String {
    format!("s{seed}-{index:07}")
}

/// A scene, its render and its samples, before encoding (what tests and pictures use).
#[derive(Clone, Debug)]
pub struct SceneRecord {
    pub index: u64,
    pub scene: Scene,
    pub rendered: Rendered,
    pub samples: Vec<Sample>,
}

/// Draw, render and annotate scene `index` of the world with `seed`.
pub fn generate_scene(cfg: &SynthConfig, seed: u64, index: u64) -> SceneRecord {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, index, 0));
    let scene = sample_scene(&mut rng, &cfg.scene, cfg.size, cfg.size);
    let rendered = render(&scene, cfg.antialias);
    let held_out = !split_range(cfg, Split::Train).contains(&index);
    let samples = scene_samples(&scene, &rendered, cfg, seed, index, held_out);
    SceneRecord { index, scene, rendered, samples }
}

/// One encoded sample.
#[derive(Clone, Debug)]
pub struct EncodedSample {
    pub sample: Sample,
    /// PNG of the marked image (point questions).
    pub marked_png: Option<Vec<u8>>,
}

/// A scene's rows, encoded: shared PNGs once per scene, per-object masks once per referred object.
#[derive(Clone, Debug)]
pub struct SceneRows {
    pub split: Split,
    pub scene_id: String,
    pub width: u32,
    pub height: u32,
    pub image_png: Vec<u8>,
    pub depth_png: Vec<u8>,
    pub depth_scale: f32,
    pub scene_json: String,
    pub masks: Vec<(u8, Vec<u8>)>,
    pub samples: Vec<EncodedSample>,
}

impl SceneRows {
    pub fn mask_png(&self, id: u8) -> Option<&[u8]> {
        self.masks.iter().find(|(i, _)| *i == id).map(|(_, m)| m.as_slice())
    }
}

/// Encode a scene record's rows.
pub fn encode_scene(rec: &SceneRecord, seed: u64, split: Split) -> Result<SceneRows, SynthError> {
    let r = &rec.rendered;
    let (w, h) = (r.width, r.height);
    let image_png = codec::encode_rgb(&r.rgb, w, h)?;
    let (depth_png, depth_scale) = codec::encode_depth(&r.depth, w, h)?;
    let scene_json = serde_json::to_string(&rec.scene)
        .map_err(|e| SynthError::Invalid { what: format!("scene {}", rec.index), message: e.to_string() })?;
    let mut masks: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut samples = Vec::with_capacity(rec.samples.len());
    for s in &rec.samples {
        if s.task == crate::config::TaskKind::Referring
            && let Some(id) = s.target_object
            && !masks.iter().any(|(i, _)| *i == id)
        {
            masks.push((id, codec::encode_mask(&r.mask(id), w, h)?));
        }
        let marked_png = match &s.marked_rgb {
            Some(rgb) => Some(codec::encode_rgb(rgb, w, h)?),
            None => None,
        };
        let mut sample = s.clone();
        sample.marked_rgb = None;
        samples.push(EncodedSample { sample, marked_png });
    }
    Ok(SceneRows {
        split,
        scene_id: scene_id(seed, rec.index),
        width: w,
        height: h,
        image_png,
        depth_png,
        depth_scale,
        scene_json,
        masks,
        samples,
    })
}

/// Number of worker threads for `cfg`.
pub fn threads(cfg: &SynthConfig) -> usize {
    if cfg.threads > 0 { cfg.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
}

/// Generate and encode the scenes `range` of `split` on `threads` threads; results are in index order.
pub fn scenes_parallel(
    cfg: &SynthConfig,
    seed: u64,
    split: Split,
    range: Range<u64>,
    threads: usize,
) -> Result<Vec<SceneRows>, SynthError> {
    let indices: Vec<u64> = range.collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done: Vec<(usize, Result<SceneRows, SynthError>)> = Vec::new();
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= indices.len() {
                break;
            }
            let rec = generate_scene(cfg, seed, indices[k]);
            done.push((k, encode_scene(&rec, seed, split)));
        }
        done
    };
    let threads = threads.clamp(1, indices.len().max(1));
    let mut all: Vec<(usize, Result<SceneRows, SynthError>)> = if threads == 1 {
        work()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles.into_iter().flat_map(|h| h.join().expect("scene worker panicked")).collect()
        })
    };
    all.sort_by_key(|(k, _)| *k);
    all.into_iter().map(|(_, r)| r).collect()
}
