//! `perceptio pretrain-appearance`: pretrains the image encoder part (InternViT + projector) of a Perceptio model
//! directory to see the synthetic world's objects: each image token says, through throw-away linear heads, the
//! shape and colour of the object covering its patch. Every batch is fresh scenes drawn and ray-traced on the
//! spot (the synth world's scene distribution, no dataset needed), so nothing can be memorised; held-out scenes
//! come from a separate random stream. Writes `image.safetensors` back atomically. Measurements: docs/points.md,
//! section 6.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::Device;
use perceptio_models::perceptio::appearance_pretrain::{
    AppearanceAccuracy, AppearanceBatch, EncoderWithAppearanceHeads, NOT_SCORED, TokenAppearanceHeads,
    appearance_accuracy, pretrain_appearance,
};
use perceptio_models::perceptio::checkpoint::{Part, load_part, read_config, save_part};
use perceptio_models::perceptio::image::{encoder_input, planar_from_rgb8};
use perceptio_models::perceptio::image_pretrain::{ImagePretrainConfig, token_grid};
use perceptio_synth::SceneConfig;
use perceptio_synth::render::render;
use perceptio_synth::scene::{Colour, Scene, Shape, sample_scene};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::rows::{StepProgress, first_and_last_means};

/// The learning rate and object-token weight of a run unless told otherwise (the CLI's and the demo's).
pub const DEFAULT_LR: f64 = 3e-3;
pub const DEFAULT_OBJECT_WEIGHT: f32 = 4.0;

/// Shape classes: none, then [`Shape::ALL`] in order.
pub const SHAPE_CLASSES: usize = Shape::ALL.len() + 1;
/// Colour classes: none, then [`Colour::ALL`] in order.
pub const COLOUR_CLASSES: usize = Colour::ALL.len() + 1;

/// Arguments of `perceptio pretrain-appearance`.
#[derive(clap::Args, Debug)]
pub struct PretrainAppearanceArgs {
    /// Perceptio model directory (perceptio.json, image.safetensors, ...); image.safetensors is replaced.
    #[arg(long)]
    pub model: PathBuf,
    /// Optimiser steps, each on `batch_size` fresh scenes.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = DEFAULT_LR)]
    pub lr: f64,
    /// Loss weight of a token on an object against a token on the ground.
    #[arg(long, default_value_t = DEFAULT_OBJECT_WEIGHT)]
    pub object_weight: f32,
    /// Side of the rendered images in pixels (the demo world's is 128).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Objects per scene, least and most (the synth world's default: 2 8).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [2, 8])]
    pub objects: Vec<u32>,
    /// Which object tokens are asked their shape: `tokens`, every token an object covers enough of; `centres`,
    /// only the token at the centre of each object's visible pixels, so that it has to gather the outline
    /// (colour is asked of every object token either way).
    #[arg(long, value_enum, default_value_t = ShapeTarget::Tokens)]
    pub shape_target: ShapeTarget,
    /// Held-out scenes to measure on after training (0: none).
    #[arg(long, default_value_t = 128)]
    pub val_scenes: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from freshly initialised encoder weights (the config's shapes) instead of image.safetensors: to try
    /// another encoder size written into perceptio.json.
    #[arg(long)]
    pub fresh: bool,
}

/// Which object tokens the shape head is trained and measured on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeTarget {
    /// Every token an object covers at least [`MIN_SHARE`] of.
    Tokens,
    /// The token holding the centroid of each object's visible pixels, when that token is the object's.
    Centres,
}

/// What an appearance pretraining run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct AppearanceSummary {
    /// Mean loss of the first and last `window` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub window: usize,
    pub secs: f64,
    /// Token accuracy of the trained encoder and heads on held-out scenes (None without any).
    pub held_out: Option<AppearanceAccuracy>,
}

/// How a run trains.
#[derive(Debug, Clone, PartialEq)]
pub struct AppearanceTraining {
    pub object_weight: f32,
    pub shape_target: ShapeTarget,
    /// Side of the rendered images.
    pub size: u32,
    /// The scenes drawn (the world's camera ranges and object counts).
    pub scene: SceneConfig,
    pub val_scenes: usize,
    pub seed: u64,
    /// Start from fresh encoder weights instead of the directory's.
    pub fresh: bool,
}

/// Runs `perceptio pretrain-appearance`.
pub fn run(args: &PretrainAppearanceArgs) -> anyhow::Result<()> {
    let cfg = ImagePretrainConfig::new().with_steps(args.steps).with_batch_size(args.batch_size).with_lr(args.lr);
    let how = AppearanceTraining {
        object_weight: args.object_weight,
        shape_target: args.shape_target,
        size: args.size,
        scene: SceneConfig { objects: objects_range(&args.objects)?, ..SceneConfig::default() },
        val_scenes: args.val_scenes,
        seed: args.seed,
        fresh: args.fresh,
    };
    let s = pretrain_with(&args.model, &cfg, &how)?;
    println!(
        "pretrained the image encoder on object shapes and colours ({} steps on {} fresh scenes, {:.1}s): loss \
         {:.4} -> {:.4} (means of the first/last {} steps); wrote {}",
        args.steps,
        args.steps * args.batch_size,
        s.secs,
        s.first_loss,
        s.last_loss,
        s.window,
        args.model.join(Part::Image.file()).display()
    );
    if let Some(a) = &s.held_out {
        println!("held-out scenes: {}", accuracy_line(a));
    }
    Ok(())
}

/// `--objects MIN MAX` as the scene config's range.
fn objects_range(v: &[u32]) -> anyhow::Result<[u32; 2]> {
    match *v {
        [lo, hi] if (1..=hi).contains(&lo) && hi <= 8 => Ok([lo, hi]),
        _ => anyhow::bail!("--objects {v:?}: want MIN MAX with 1 <= MIN <= MAX <= 8"),
    }
}

/// "1234 object tokens (1234 asked their shape): shape 81.2% (the commonest shape: 31.0%), colour 93.0%, both 77.9%; 98.8% of 11566
/// ground tokens left empty; shapes predicted: sphere 20.1%, ...".
pub fn accuracy_line(a: &AppearanceAccuracy) -> String {
    let predicted: Vec<String> = Shape::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = a.predicted_shapes.get(i + 1).copied().unwrap_or(0);
            format!("{} {:.1}%", s.name(), 100.0 * n as f64 / a.shape_scored.max(1) as f64)
        })
        .collect();
    format!(
        "{} object tokens ({} asked their shape): shape {:.1}% (the commonest shape: {:.1}%), colour {:.1}%, both \
         {:.1}%; {:.1}% of {} ground tokens left empty; shapes predicted: {}",
        a.objects,
        a.shape_scored,
        100.0 * a.shape_rate(),
        100.0 * a.shape_majority_rate(),
        100.0 * a.colour_rate(),
        100.0 * a.both_rate(),
        100.0 * a.ground_rate(),
        a.ground,
        predicted.join(", ")
    )
}

/// Pretrains the image encoder part of the model in `model_dir` on fresh scenes and writes it back (atomically);
/// measures it on held-out scenes.
pub fn pretrain_with(
    model_dir: &std::path::Path,
    pcfg: &ImagePretrainConfig,
    how: &AppearanceTraining,
) -> anyhow::Result<AppearanceSummary> {
    pcfg.check().context("appearance pretraining")?;
    if how.size < 16 {
        anyhow::bail!("--size {}: images of fewer than 16 pixels a side hold no objects to see", how.size);
    }
    let start = Instant::now();
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let device = Device::flex().autodiff();
    device.seed(how.seed);
    let part =
        if how.fresh { cfg.init_image(&device) } else { load_part(model_dir, Part::Image, cfg.init_image(&device))? };
    let enc = cfg.vlm.vision.image_size;
    let grid = token_grid(&part, enc);
    let heads = TokenAppearanceHeads::init(cfg.vlm.text.hidden_size, SHAPE_CLASSES, COLOUR_CLASSES, &device);
    let model = EncoderWithAppearanceHeads { part, heads };
    let mut world = FreshScenes::new(how.size, enc, grid, how.scene.clone(), how.seed, how.shape_target);
    let mut held =
        FreshScenes::new(how.size, enc, grid, how.scene.clone(), how.seed ^ 0x5EED_0F_4E1D, how.shape_target);

    let steps = pcfg.steps;
    let progress = StepProgress::new(steps)?;
    let mut history = Vec::with_capacity(steps);
    let model = pretrain_appearance(
        model,
        pcfg,
        how.object_weight,
        &mut |n| Ok::<_, std::convert::Infallible>(world.batch(n)),
        &mut |step, loss| {
            history.push(loss);
            progress.step(step, format!("loss {loss:.4}"));
        },
    )
    .context("training on object shapes and colours")?;
    progress.finish();
    save_part(model_dir, Part::Image, &model.part)?;
    // the held-out scenes in batches of up to 32
    let trained = model.valid();
    let mut held_out = None;
    let mut left = how.val_scenes;
    while left > 0 {
        let n = left.min(32);
        let acc = appearance_accuracy(&trained, &held.batch(n)).context("measuring on held-out scenes")?;
        held_out.get_or_insert_with(AppearanceAccuracy::default).add(acc);
        left -= n;
    }
    let (first_loss, last_loss, window) = first_and_last_means(&history, steps);
    Ok(AppearanceSummary { first_loss, last_loss, window, secs: start.elapsed().as_secs_f64(), held_out })
}

/// A seeded stream of fresh scenes of the synth world, rendered and labelled per image token.
struct FreshScenes {
    size: u32,
    encoder_size: usize,
    grid: usize,
    scene: SceneConfig,
    shape_target: ShapeTarget,
    rng: ChaCha8Rng,
}

impl FreshScenes {
    fn new(size: u32, encoder_size: usize, grid: usize, scene: SceneConfig, seed: u64, target: ShapeTarget) -> Self {
        Self { size, encoder_size, grid, scene, shape_target: target, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The next `n` scenes as a batch.
    fn batch(&mut self, n: usize) -> AppearanceBatch {
        let (s, g) = (self.size as usize, self.grid);
        let (mut pixels, mut shapes, mut colours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let scene = sample_scene(&mut self.rng, &self.scene, self.size, self.size);
            let image = render(&scene, 1);
            pixels.extend(encoder_input(&planar_from_rgb8(&image.rgb, s, s), s, s, self.encoder_size));
            let tokens = token_objects(&image.ids, s, s, g, MIN_SHARE);
            let centres = match self.shape_target {
                ShapeTarget::Tokens => None,
                ShapeTarget::Centres => Some(centre_tokens(&image.ids, s, s, g, &tokens)),
            };
            for (t, &id) in tokens.iter().enumerate() {
                let (shape, colour) = classes_of(&scene, id);
                let scored = centres.as_ref().is_none_or(|c| c[t] || id == 0);
                shapes.push(if scored { shape } else { NOT_SCORED });
                colours.push(colour);
            }
        }
        AppearanceBatch { image_size: self.encoder_size, grid: g, pixels, shapes, colours }
    }
}

/// The share of a token's patch an object must cover to be that token's object.
const MIN_SHARE: f64 = 0.2;

/// Which tokens of a `grid x grid` split of a `w x h` instance-id map hold the centroid of their object's visible
/// pixels; `tokens` is each token's object ([`token_objects`]): an object whose centroid token belongs to another
/// object (or to none) has no centre token.
fn centre_tokens(ids: &[u8], w: usize, h: usize, grid: usize, tokens: &[u8]) -> Vec<bool> {
    let mut sums = [(0usize, 0usize, 0usize); 256]; // (sum x, sum y, pixels) per id
    for (i, &id) in ids.iter().enumerate() {
        let e = &mut sums[id as usize];
        e.0 += i % w;
        e.1 += i / w;
        e.2 += 1;
    }
    let mut centre = vec![false; grid * grid];
    for (id, &(sx, sy, n)) in sums.iter().enumerate().skip(1) {
        if n == 0 {
            continue;
        }
        // the centroid's pixel, then the token whose patch holds it
        let t = patch_of(sy / n, h, grid) * grid + patch_of(sx / n, w, grid);
        if tokens[t] == id as u8 {
            centre[t] = true;
        }
    }
    centre
}

/// The pixels `start..end` that patch `i` of `grid` covers along a side of `n` pixels.
fn patch_span(i: usize, n: usize, grid: usize) -> (usize, usize) {
    (i * n / grid, (i + 1) * n / grid)
}

/// The patch of `grid` whose [`patch_span`] holds pixel `x` of a side of `n` pixels (`x < n`).
fn patch_of(x: usize, n: usize, grid: usize) -> usize {
    (0..grid).find(|&i| x < patch_span(i, n, grid).1).unwrap_or(grid - 1)
}

/// The (shape, colour) classes of instance `id` of `scene` (0, 0 for the ground or an id no object has).
fn classes_of(scene: &Scene, id: u8) -> (i64, i64) {
    let Some(o) = scene.objects.iter().find(|o| o.id == id && id != 0) else { return (0, 0) };
    let shape = Shape::ALL.iter().position(|&s| s == o.shape).map_or(0, |i| i as i64 + 1);
    let colour = Colour::ALL.iter().position(|&c| c == o.colour).map_or(0, |i| i as i64 + 1);
    (shape, colour)
}

/// The object of each token of a `grid x grid` split of a `w x h` instance-id map (row-major, 0 = ground): the id
/// covering the most pixels of the token's patch when it covers at least `min_share` of them, else 0.
fn token_objects(ids: &[u8], w: usize, h: usize, grid: usize, min_share: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(grid * grid);
    for row in 0..grid {
        let (y0, y1) = patch_span(row, h, grid);
        for col in 0..grid {
            let (x0, x1) = patch_span(col, w, grid);
            let mut counts = [0usize; 256];
            for y in y0..y1 {
                for &id in &ids[y * w + x0..y * w + x1] {
                    counts[id as usize] += 1;
                }
            }
            let area = ((y1 - y0) * (x1 - x0)).max(1);
            let (best, &n) =
                counts.iter().enumerate().skip(1).max_by_key(|&(i, &n)| (n, std::cmp::Reverse(i))).unwrap();
            out.push(if n > 0 && n as f64 >= min_share * area as f64 { best as u8 } else { 0 });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_takes_the_object_covering_enough_of_its_patch() {
        // a 4x4 id map on a 2x2 grid: patches of 2x2 pixels
        #[rustfmt::skip]
        let ids = [
            1, 1, 0, 3,
            1, 2, 0, 0,
            2, 2, 0, 0,
            2, 0, 0, 0,
        ];
        // top-left: 1 has 3 of 4 pixels; top-right: 3 has 1 of 4 (25%); bottom-left: 2 has 3; bottom-right: none
        assert_eq!(token_objects(&ids, 4, 4, 2, 0.2), vec![1, 3, 2, 0]);
        assert_eq!(token_objects(&ids, 4, 4, 2, 0.5), vec![1, 0, 2, 0]);
        // a tie goes to the lower id
        assert_eq!(token_objects(&[4, 4, 2, 2], 2, 2, 1, 0.2), vec![2]);
    }

    #[test]
    fn centre_tokens_mark_the_token_under_each_objects_centroid_when_it_is_the_objects() {
        // 4x4 ids on a 2x2 grid: 1 fills the top-left patch; 2's two pixels have their centroid at (3, 2), in the
        // bottom-right patch, where 2 covers half; 3 has one pixel (25%) in the bottom-left patch
        #[rustfmt::skip]
        let ids = [
            1, 1, 0, 0,
            1, 1, 0, 0,
            0, 0, 0, 2,
            0, 3, 0, 2,
        ];
        let tokens = token_objects(&ids, 4, 4, 2, 0.2);
        assert_eq!(tokens, vec![1, 0, 3, 2]);
        assert_eq!(centre_tokens(&ids, 4, 4, 2, &tokens), vec![true, false, true, true]);
        // a ring of 2 around 1: both centroids fall in the top-left patch, which 2 holds; 1 has no centre token
        #[rustfmt::skip]
        let ring = [
            2, 2, 2, 2,
            2, 1, 1, 2,
            2, 1, 1, 2,
            2, 2, 2, 2,
        ];
        let tokens = token_objects(&ring, 4, 4, 2, 0.2);
        assert_eq!(tokens, vec![2, 2, 2, 2]);
        assert_eq!(centre_tokens(&ring, 4, 4, 2, &tokens), vec![true, false, false, false]);
        // patches of a side that the grid does not divide: 10 px in 3 patches of 3, 3 and 4 px
        assert_eq!((0..10).map(|x| patch_of(x, 10, 3)).collect::<Vec<_>>(), vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn the_centre_target_asks_one_shape_per_object_and_every_colour() {
        let tokens = FreshScenes::new(64, 28, 4, SceneConfig::default(), 7, ShapeTarget::Tokens).batch(4);
        let centres = FreshScenes::new(64, 28, 4, SceneConfig::default(), 7, ShapeTarget::Centres).batch(4);
        // the same scenes, the same colours; a shape only where the token target has that same shape
        assert_eq!((&centres.pixels, &centres.colours), (&tokens.pixels, &tokens.colours));
        for (i, (&c, &t)) in centres.shapes.iter().zip(&tokens.shapes).enumerate() {
            assert!(c == t || (c == NOT_SCORED && t > 0), "token {i}: centre target {c}, token target {t}");
        }
        let scored = centres.shapes.iter().filter(|&&c| c > 0).count();
        let unscored = centres.shapes.iter().filter(|&&c| c == NOT_SCORED).count();
        assert!(scored > 0 && unscored > 0, "{scored} scored, {unscored} not");
        // the first scene's asked shapes sit exactly on its objects' centre tokens
        let scene = sample_scene(&mut ChaCha8Rng::seed_from_u64(7), &SceneConfig::default(), 64, 64);
        let ids = render(&scene, 1).ids;
        let objects = token_objects(&ids, 64, 64, 4, MIN_SHARE);
        let expected: Vec<bool> =
            centre_tokens(&ids, 64, 64, 4, &objects).iter().zip(&objects).map(|(&c, &id)| c && id != 0).collect();
        let asked: Vec<bool> = centres.shapes[..16].iter().map(|&c| c > 0).collect();
        assert_eq!(asked, expected);
    }

    #[test]
    fn the_objects_range_is_checked() {
        assert_eq!(objects_range(&[1, 1]).unwrap(), [1, 1]);
        assert_eq!(objects_range(&[2, 8]).unwrap(), [2, 8]);
        for bad in [&[0, 3][..], &[3, 2], &[1, 9], &[1]] {
            let err = objects_range(bad).unwrap_err().to_string();
            assert!(err.contains("1 <= MIN <= MAX <= 8"), "{err}");
        }
    }

    #[test]
    fn fresh_scenes_label_their_objects_with_shape_and_colour() {
        let mut world = FreshScenes::new(64, 28, 4, SceneConfig::default(), 7, ShapeTarget::Tokens);
        let batch = world.batch(3);
        assert_eq!((batch.len(), batch.pixels.len()), (3, 3 * 3 * 28 * 28));
        assert!(batch.shapes.iter().all(|&s| (0..SHAPE_CLASSES as i64).contains(&s)));
        assert!(batch.colours.iter().all(|&c| (0..COLOUR_CLASSES as i64).contains(&c)));
        assert!(batch.shapes.iter().zip(&batch.colours).all(|(&s, &c)| (s == 0) == (c == 0)));
        assert!(batch.shapes.iter().any(|&s| s != 0), "some token sees an object");
        // the same seed draws the same scenes; another does not
        assert_eq!(FreshScenes::new(64, 28, 4, SceneConfig::default(), 7, ShapeTarget::Tokens).batch(3), batch);
        assert_ne!(
            FreshScenes::new(64, 28, 4, SceneConfig::default(), 8, ShapeTarget::Tokens).batch(3).pixels,
            batch.pixels
        );
        // the classes follow Shape::ALL and Colour::ALL, 1-based
        let scene = sample_scene(&mut ChaCha8Rng::seed_from_u64(1), &SceneConfig::default(), 64, 64);
        let o = &scene.objects[0];
        let (s, c) = classes_of(&scene, o.id);
        assert_eq!((Shape::ALL[s as usize - 1], Colour::ALL[c as usize - 1]), (o.shape, o.colour));
        assert_eq!(classes_of(&scene, 0), (0, 0));
    }
}
