//! `perceptio demo`: the main job on the embedded default, with no downloads. It renders the synthetic world,
//! trains the depth tokenizer on the training split's depth maps, caches every row's depth codes
//! (`dataflows/cache-depth-codes.yaml`), initialises a tiny Perceptio with its image aligned to the depth-code
//! grid, pretrains its SAM2 on the world's masks (`perceptio pretrain-sam2`; its mask decoder without the
//! high-resolution skips, so that it follows its prompt), trains it twice through the actor
//! graph (`dataflows/train.yaml`: the full model, first on depth questions alone, then on the task mixture, then
//! mostly on referring questions; the "no depth tokens" ablation for the same mixture and referring steps),
//! evaluates both on the held-out test split (`dataflows/eval.yaml`) and writes `report.md` with the results
//! table, training curves and sample answers. `--quick` runs the same stages smaller.

mod plot;
mod report;
mod samples;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use perceptio::runtime::{Graph, RunOptions, RunSummary};
use perceptio_actors::perceptio::init::{dataset_texts, init_tiny_model_with};
use perceptio_models::perceptio::PerceptioConfig;
use perceptio_models::perceptio::checkpoint::{read_config, write_config};
use perceptio_synth::SynthConfig;

use super::eval::evaluate;
use super::pretrain_appearance::{self, AppearanceTraining, ShapeTarget};
use super::pretrain_markers::LabelAt;
use super::pretrain_recall::{self, RecallTraining};
use super::pretrain_sam2;
use super::pretrain_tied_markers;
use super::train_vqvae::{self, TrainVqvaeArgs};
use perceptio_models::perceptio::image_pretrain::ImagePretrainConfig;
use perceptio_models::sam2::pretrain::Sam2PretrainConfig;
use report::{Report, RunResult, SegmenterResult};

const CACHE_FLOW: &str = include_str!("../../../dataflows/cache-depth-codes.yaml");
const TRAIN_FLOW: &str = include_str!("../../../dataflows/train.yaml");

/// `perceptio demo`
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output folder (data, tokenizer, models, evaluation and report.md).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// A smaller run (fewer scenes and steps) that still produces a complete report.
    #[arg(long)]
    pub quick: bool,
    /// Scenes to render (default 600, or 120 with --quick).
    #[arg(long)]
    pub scenes: Option<usize>,
    /// Depth-tokenizer training steps (default 400, or 60 with --quick).
    #[arg(long)]
    pub vqvae_steps: Option<usize>,
    /// Image-encoder pretraining steps on the shapes and colours of fresh scenes' objects, before Perceptio
    /// training, shared by both models (default 0: off; see docs/points.md, section 6).
    #[arg(long)]
    pub appearance_steps: Option<usize>,
    /// Which object tokens the image-encoder stage asks their shape (`pretrain-appearance --shape-target`).
    #[arg(long, value_enum, default_value_t = ShapeTarget::Tokens)]
    pub shape_target: ShapeTarget,
    /// The image encoder: `vit`, the tiny InternViT on 14 px patches; `hybrid`, the same with a convolutional stem
    /// (3x3 layers of 32, 64, 64, 64 and 64 channels) before 16 px patches, which learns object shape where the
    /// plain one does not (docs/points.md, section 7).
    #[arg(long, value_enum, default_value_t = EncoderKind::Vit)]
    pub encoder: EncoderKind,
    /// Keep the InternViT fixed in Perceptio training, after its own stage (the projector still trains): trained
    /// with the tasks, it loses what that stage taught it (docs/points.md, sections 2 and 7).
    #[arg(long)]
    pub freeze_encoder: bool,
    /// Both models answer point questions with a chain of thought: each marked point's depth level, then the
    /// letter ("A 12, B 7, C 15. (C)"; docs/points.md, section 8).
    #[arg(long)]
    pub point_reasoning: bool,
    /// Point questions per training scene (default 1): each is a fresh set of 3 to 5 marked points on the scene's
    /// image, so more of them give the point answers more variety at no cost in steps.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub points_per_scene: u32,
    /// The full model's depth codes take the RoPE positions of the image tokens of their cells, so that its
    /// answer sits as close to the image as the ablation's (`init-model --span-at-image-positions`).
    #[arg(long)]
    pub span_at_image_positions: bool,
    /// Keep SAM2's high-resolution skips in the mask decoder (SAM2's own upscaling, as the demo had before
    /// 2026-11-25). Trained from scratch with them, the tiny SAM2 marks every object and ignores its prompt; the
    /// demo's default upscales without them (`init-model --no-high-res-features`; docs/referring.md).
    #[arg(long)]
    pub high_res_features: bool,
    /// Prompt SAM2 with the `[SEG]` state alone (and add the grounding map to its logits), without the point at
    /// the grounding map's soft arg-max that the demo adds by default (`init-model --seg-point-from-map`).
    #[arg(long)]
    pub no_seg_point: bool,
    /// LLM pretraining steps on text-only recall questions (`perceptio pretrain-recall`), before Perceptio
    /// training, shared by both models (default 0: off; needs --point-reasoning; docs/points.md, section 10).
    #[arg(long, requires = "point_reasoning")]
    pub recall_steps: Option<usize>,
    /// Image-encoder pretraining steps that make each token name its marked letter and depth level in the LLM's
    /// embeddings (`perceptio pretrain-tied-markers`), after the recall stage (default 0: off; needs
    /// --point-reasoning).
    #[arg(long, requires = "point_reasoning")]
    pub tied_marker_steps: Option<usize>,
    /// Which token the tied-marker stage teaches a marker's letter and its point's level
    /// (`pretrain-tied-markers --label-at`).
    #[arg(long, value_enum, default_value_t = LabelAt::Point)]
    pub tied_label_at: LabelAt,
    /// Segmenter (SAM2) pretraining steps on the world's masks before Perceptio training (default 1500, or 100
    /// with --quick; 0 skips the stage).
    #[arg(long)]
    pub sam2_steps: Option<usize>,
    /// Perceptio optimiser steps on the task mixture (default 250, or 150 with --quick).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Steps on depth questions alone before the full model's mixture, where it learns to read depth from the
    /// image (default 300, or 40 with --quick; 0 skips the stage). The ablation has no such stage: without depth
    /// tokens a depth question has no answer, so it drops these rows as it drops them from its mixture.
    #[arg(long)]
    pub depth_steps: Option<usize>,
    /// Steps on referring questions after the mixture, for both models, with the other tasks rehearsed at 0.15
    /// of their weight: the grounding map learns from referring rows alone, and the mixture holds few (default
    /// 300, or 30 with --quick; 0 skips the stage).
    #[arg(long)]
    pub referring_steps: Option<usize>,
    /// Test rows evaluated per model (default: all, or 48 with --quick).
    #[arg(long)]
    pub eval_rows: Option<usize>,
    /// World and initialisation seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The image encoders `perceptio demo` can build.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// The tiny InternViT: 14 px patches, linear patch projection.
    Vit,
    /// The tiny InternViT after a convolutional stem, on 16 px patches.
    Hybrid,
}

impl EncoderKind {
    /// Sets the encoder's patch and stem in `cfg` (before the image is laid out on the depth grid).
    fn apply(self, cfg: &mut PerceptioConfig) {
        if self == EncoderKind::Hybrid {
            cfg.vlm.vision.patch_size = 16;
            cfg.vlm.vision.conv_stem = vec![32, 64, 64, 64, 64];
        }
    }
}

/// What one demo run does: the sizes of its stages and its image-encoder options.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub scenes: usize,
    pub vqvae_steps: usize,
    pub appearance_steps: usize,
    pub shape_target: ShapeTarget,
    pub encoder: EncoderKind,
    pub freeze_encoder: bool,
    pub point_reasoning: bool,
    pub points_per_scene: u32,
    pub span_at_image_positions: bool,
    pub high_res_features: bool,
    pub seg_point_from_map: bool,
    pub recall_steps: usize,
    pub tied_marker_steps: usize,
    pub tied_label_at: LabelAt,
    pub sam2_steps: usize,
    pub depth_steps: usize,
    pub steps: usize,
    pub referring_steps: usize,
    pub eval_rows: Option<usize>,
}

impl DemoArgs {
    fn plan(&self) -> Plan {
        let q = self.quick;
        Plan {
            scenes: self.scenes.unwrap_or(if q { 120 } else { 600 }),
            vqvae_steps: self.vqvae_steps.unwrap_or(if q { 60 } else { 400 }),
            appearance_steps: self.appearance_steps.unwrap_or(0),
            shape_target: self.shape_target,
            encoder: self.encoder,
            freeze_encoder: self.freeze_encoder,
            point_reasoning: self.point_reasoning,
            points_per_scene: self.points_per_scene,
            span_at_image_positions: self.span_at_image_positions,
            high_res_features: self.high_res_features,
            seg_point_from_map: !self.no_seg_point,
            recall_steps: self.recall_steps.unwrap_or(0),
            tied_marker_steps: self.tied_marker_steps.unwrap_or(0),
            tied_label_at: self.tied_label_at,
            sam2_steps: self.sam2_steps.unwrap_or(if q { 100 } else { 1500 }),
            depth_steps: self.depth_steps.unwrap_or(if q { 40 } else { 300 }),
            steps: self.steps.unwrap_or(if q { 150 } else { 250 }),
            referring_steps: self.referring_steps.unwrap_or(if q { 30 } else { 300 }),
            eval_rows: self.eval_rows.or(if q { Some(48) } else { None }),
        }
    }
}

fn bar(len: u64, prefix: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}").expect("valid"),
    );
    b.set_prefix(prefix.to_string());
    b
}

/// What a progress bar follows while a dataflow runs.
enum Track<'a> {
    /// Rows read by the sources.
    Rows,
    /// Rows a node emitted, out of a known total (a trainer's metrics rows: one per step).
    NodeOut(&'a str, u64),
}

/// Runs an embedded dataflow with `vars` in place of the environment, with a progress bar.
async fn run_flow(
    label: &str,
    file: &str,
    yaml: &str,
    vars: &[(&str, String)],
    track: Track<'_>,
) -> anyhow::Result<RunSummary> {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let lookup = move |name: &str| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
    };
    let graph = Graph::from_yaml_with(file, yaml, &perceptio::registry(), &lookup)?;
    let handle = graph.start(RunOptions::default()).await?;
    let pb = bar(0, label);
    if let Track::NodeOut(_, total) = track {
        pb.set_length(total);
    }
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(stats) = handle.stats().await {
            match track {
                Track::Rows => {
                    pb.set_length(stats.expected());
                    pb.set_position(stats.read());
                }
                Track::NodeOut(node, _) => {
                    if let Some((_, _, n)) = stats.nodes.iter().find(|(id, _, _)| id == node) {
                        pb.set_position(n.rows_out);
                        pb.set_message(n.status.clone());
                    }
                }
            }
        }
    }
    pb.finish_and_clear();
    let summary = handle.wait().await.with_context(|| format!("running {file}"))?;
    if summary.failed > 0 {
        println!("{label}: {} rows failed (see the error files)", summary.failed);
    }
    Ok(summary)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = args.plan();
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = Report::new(args.quick, args.seed, plan);

    // 1. The synthetic world.
    let t = Instant::now();
    // Three point questions per held-out scene: on the default test split each point count has 60 questions
    // instead of 20, so one question moves its accuracy by 1.7 points instead of 5 (training sees the same rows).
    let cfg = SynthConfig {
        scenes: plan.scenes,
        points_per_scene: plan.points_per_scene,
        eval_points_per_scene: 3,
        ..SynthConfig::default()
    };
    let pb = bar(plan.scenes as u64, "world");
    let (dir, seed, synth_cfg, pb2) = (out.clone(), args.seed, cfg.clone(), pb.clone());
    let dataset = tokio::task::spawn_blocking(move || {
        perceptio_synth::write::write_dataset(&dir, &synth_cfg, seed, |p| {
            pb2.set_position(p.scenes_done);
            pb2.set_message(format!("{} rows", p.rows_written));
        })
    })
    .await??;
    pb.finish_and_clear();
    report.stage("synthetic world", secs(t));
    report.dataset = dataset.files.iter().map(|(s, p, r, n)| (s.name().to_string(), p.clone(), *r, *n)).collect();
    println!("world: {} scenes -> {} ({:.1}s)", plan.scenes, out.join("data").display(), secs(t));
    let data_dir = out.join("data");

    // 2. The depth tokenizer, on the training split's depth maps.
    let t = Instant::now();
    let vqvae = out.join("vqvae");
    let vq_args = TrainVqvaeArgs {
        out: vqvae.clone(),
        preset: "tiny".into(),
        source: "parquet".into(),
        data: vec![data_dir.join("train-*.parquet").display().to_string()],
        synth_size: 128,
        steps: plan.vqvae_steps,
        batch_size: 16,
        lr: 1e-3,
        val_every: plan.vqvae_steps.div_ceil(4).max(1),
        val_size: 64,
        seed: args.seed,
        resume: false,
        png: None,
    };
    println!("depth tokenizer: {} steps", plan.vqvae_steps);
    let vq_metrics = tokio::task::spawn_blocking(move || train_vqvae::run(&vq_args)).await??;
    report.vqvae = vq_metrics;
    report.stage("depth tokenizer", secs(t));

    // 3. Depth codes for every row of the training and test splits.
    let t = Instant::now();
    let codes = out.join("codes");
    for split in ["train", "test"] {
        let vars = [
            ("PERCEPTIO_DATA", data_dir.display().to_string()),
            ("PERCEPTIO_VQVAE", vqvae.display().to_string()),
            ("PERCEPTIO_OUT", codes.display().to_string()),
            ("PERCEPTIO_SPLIT", split.to_string()),
        ];
        let label = format!("codes {split}");
        run_flow(&label, "dataflows/cache-depth-codes.yaml", CACHE_FLOW, &vars, Track::Rows).await?;
    }
    report.stage("depth codes", secs(t));

    // 4. The initial model.
    let train_files = vec![codes.join("train-00000-of-00001.parquet")];
    let texts = dataset_texts(&train_files)?;
    let init = out.join("model-init");
    let demo_layout = |cfg: &mut PerceptioConfig| {
        plan.encoder.apply(cfg);
        cfg.align_image_with_depth_grid();
        cfg.seg_grounding = true;
        cfg.point_reasoning = plan.point_reasoning;
        cfg.span_at_image_positions = plan.span_at_image_positions;
        cfg.sam2.mask_decoder_config.use_high_res_features = plan.high_res_features;
        cfg.seg_point_from_map = plan.seg_point_from_map;
    };
    let (model_cfg, _) = init_tiny_model_with(&texts, &vqvae, &init, args.seed, &demo_layout)?;
    report.model = Some(model_cfg);

    // 5. The image encoder, pretrained on the objects of fresh scenes (both models start from it).
    if plan.appearance_steps > 0 {
        let t = Instant::now();
        println!("image encoder: {} steps on object shapes and colours", plan.appearance_steps);
        let pcfg =
            ImagePretrainConfig::new().with_steps(plan.appearance_steps).with_lr(pretrain_appearance::DEFAULT_LR);
        let how = AppearanceTraining {
            object_weight: pretrain_appearance::DEFAULT_OBJECT_WEIGHT,
            shape_target: plan.shape_target,
            size: cfg.size,
            scene: cfg.scene.clone(),
            val_scenes: if args.quick { 32 } else { 128 },
            seed: args.seed,
            fresh: false,
        };
        let dir = init.clone();
        let summary =
            tokio::task::spawn_blocking(move || pretrain_appearance::pretrain_with(&dir, &pcfg, &how)).await??;
        if let Some(a) = &summary.held_out {
            println!("image encoder: held-out {}", pretrain_appearance::accuracy_line(a));
        }
        report.appearance = Some(summary);
        report.stage("image encoder", secs(t));
    }

    // 5b. The LLM, pretrained to look a value up by its key in text, then the image encoder, taught to name each
    //     token's marked letter and depth level in the LLM's embeddings (docs/points.md, section 10).
    if plan.recall_steps > 0 {
        let t = Instant::now();
        println!("LLM: {} steps on text-only recall questions", plan.recall_steps);
        let pcfg = ImagePretrainConfig::new()
            .with_steps(plan.recall_steps)
            .with_batch_size(pretrain_recall::DEFAULT_BATCH)
            .with_lr(pretrain_recall::DEFAULT_LR);
        let how = RecallTraining {
            held_out: if args.quick { 128 } else { 512 },
            every: plan.recall_steps.div_ceil(4).max(1),
            seed: args.seed,
            with_question: false,
            // no span: with half the questions spanned, 1000 steps leave the levels at 17% (docs/points.md, section 10)
            span_share: 0.0,
        };
        let dir = init.clone();
        let summary = tokio::task::spawn_blocking(move || pretrain_recall::pretrain_with(&dir, &pcfg, how)).await??;
        if let Some((_, a)) = summary.held_out.last() {
            println!("LLM: held-out recall {}", pretrain_recall::accuracy_line(a));
        }
        report.recall = Some(summary);
        report.stage("LLM recall", secs(t));
    }
    if plan.tied_marker_steps > 0 {
        let t = Instant::now();
        println!("image encoder: {} steps on markers and levels in the LLM's embeddings", plan.tied_marker_steps);
        let pcfg =
            ImagePretrainConfig::new().with_steps(plan.tied_marker_steps).with_lr(pretrain_tied_markers::DEFAULT_LR);
        let (dir, train_glob, val_glob, seed) = (
            init.clone(),
            data_dir.join("train-*.parquet").display().to_string(),
            data_dir.join("validation-*.parquet").display().to_string(),
            args.seed,
        );
        let result = tokio::task::spawn_blocking(move || {
            let how = pretrain_tied_markers::TiedTraining {
                label_at: plan.tied_label_at,
                target: pretrain_tied_markers::TargetKind::Scores,
                marker_weight: pretrain_tied_markers::DEFAULT_MARKER_WEIGHT,
                seed,
            };
            pretrain_tied_markers::pretrain_with(&dir, &train_glob, Some(&val_glob), &pcfg, how)
        })
        .await??;
        if let Some(a) = &result.1 {
            println!("image encoder: validation point questions: {}", pretrain_tied_markers::held_out_line(a));
        }
        report.tied_markers = Some(result);
        report.stage("tied markers", secs(t));
    }

    if plan.freeze_encoder {
        if plan.appearance_steps == 0 && plan.tied_marker_steps == 0 {
            println!(
                "image encoder: kept fixed at its initial (random) weights: --appearance-steps and \
                 --tied-marker-steps are 0"
            );
        }
        let mut cfg = read_config(&init)?;
        cfg.trainable.vision_encoder = false;
        write_config(&init, &cfg)?;
    }

    // 6. The segmenter: SAM2 pretrained on the training split's masks with point prompts, so that the image encoder
    //    Perceptio training keeps frozen gives the mask decoder learned features.
    if plan.sam2_steps > 0 {
        let t = Instant::now();
        println!("segmenter: {} steps of point-prompted SAM2 pretraining", plan.sam2_steps);
        let pcfg = Sam2PretrainConfig::new()
            .with_steps(plan.sam2_steps)
            .with_seed(args.seed)
            .with_warmup((plan.sam2_steps / 10).min(50));
        let (model_dir, train_glob, val_glob) = (
            init.clone(),
            data_dir.join("train-*.parquet").display().to_string(),
            data_dir.join("validation-*.parquet").display().to_string(),
        );
        let val_rows = if args.quick { 32 } else { 128 };
        let seed = args.seed;
        let seg = tokio::task::spawn_blocking(move || -> anyhow::Result<SegmenterResult> {
            let before = pretrain_sam2::evaluate(&model_dir, &val_glob, val_rows, seed)?;
            let train = pretrain_sam2::pretrain_with(&model_dir, &train_glob, &pcfg)?;
            let after = pretrain_sam2::evaluate(&model_dir, &val_glob, val_rows, seed)?;
            Ok(SegmenterResult { before, after, train })
        })
        .await??;
        println!(
            "segmenter: held-out point-prompt IoU {:.3} -> {:.3} ({} masks, {:.0}s)",
            seg.before.configured,
            seg.after.configured,
            seg.after.masks,
            secs(t)
        );
        report.segmenter = Some(seg);
        report.stage("segmenter", secs(t));
    }

    // 7. Train twice: the full model (depth questions alone, then the mixture, then referring questions with the
    //    rest rehearsed) and the no-depth-tokens ablation (the mixture, which for it has no depth questions, and the
    //    referring stage, for the same numbers of steps).
    let test_glob = codes.join("test-*.parquet").display().to_string();
    let train_glob = codes.join("train-*.parquet").display().to_string();
    for (name, depth_tokens) in [("full", true), ("no depth tokens", false)] {
        let dir = out.join(if depth_tokens { "train-full" } else { "train-no-depth" });
        let mut stages = Vec::new();
        if depth_tokens && plan.depth_steps > 0 {
            stages.push(Stage {
                label: "train-dep",
                what: "depth questions alone",
                dir: out.join("train-full-depth"),
                steps: plan.depth_steps,
                weights: TaskWeights::DEPTH_ONLY,
            });
        }
        stages.push(Stage {
            label: if depth_tokens { "train" } else { "train-abl" },
            what: "the task mixture",
            dir: dir.clone(),
            steps: plan.steps,
            weights: TaskWeights::MIXTURE,
        });
        if plan.referring_steps > 0 {
            stages.push(Stage {
                label: if depth_tokens { "train-ref" } else { "train-abl-ref" },
                what: "referring questions (the other tasks rehearsed)",
                dir: out.join(if depth_tokens { "train-full-referring" } else { "train-no-depth-referring" }),
                steps: plan.referring_steps,
                weights: TaskWeights::REFERRING_REHEARSED,
            });
        }
        let t = Instant::now();
        let mut model = init.clone();
        let mut curve = report::Curve::default();
        let mut schedule = Vec::new();
        let mut steps_done = 0;
        for stage in &stages {
            println!("training `{name}`: {} steps on {}", stage.steps, stage.what);
            let summary = train_stage(stage, &train_glob, &model, depth_tokens).await?;
            let part = report::read_metrics(&stage.dir.join("metrics.parquet"))?;
            curve.append(part, steps_done as f64);
            let done = summary.stats.nodes.iter().find(|(id, _, _)| id == "loss").map_or(0, |(_, _, n)| n.rows_out);
            steps_done += done;
            schedule.push(format!("{done} steps on {}", stage.what));
            model = latest(&stage.dir)?;
        }
        let train_secs = secs(t);
        let t = Instant::now();
        println!("evaluating `{name}` on the test split");
        let table = evaluate(&model, &test_glob, plan.eval_rows, &dir.join("eval.json")).await?;
        report.runs.push(RunResult {
            name: name.to_string(),
            checkpoint: model,
            train_secs,
            eval_secs: secs(t),
            schedule: schedule.join(", then "),
            curve,
            table,
        });
    }

    // 8. Pictures and the report.
    let t = Instant::now();
    let docs = out.join("report");
    std::fs::create_dir_all(&docs).with_context(|| format!("creating {}", docs.display()))?;
    report.curves_png = Some(report.write_curves(&docs.join("training-curves.png"))?);
    let full = report.runs.first().map(|r| r.checkpoint.clone()).context("no training run")?;
    let test_file = data_dir.join("test-00000-of-00001.parquet");
    let samples_png = docs.join("samples.png");
    let (full2, test2, png2) = (full.clone(), test_file.clone(), samples_png.clone());
    report.samples = tokio::task::spawn_blocking(move || samples::write_samples(&full2, &test2, &png2, 8)).await??;
    report.samples_png = Some(samples_png);
    report.stage("pictures", secs(t));
    report.total_secs = secs(started);
    let path = out.join("report.md");
    let tmp = out.join(".report.md.tmp");
    std::fs::write(&tmp, report.markdown(&out)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", report.results_table());
    println!("report: {} ({:.0}s in total)", path.display(), report.total_secs);
    Ok(())
}

/// One training run of `dataflows/train.yaml` within a model's schedule.
struct Stage {
    label: &'static str,
    what: &'static str,
    dir: PathBuf,
    steps: usize,
    weights: TaskWeights,
}

/// A stage's task mixture: the relative weights of `dataflows/train.yaml`'s `task_weights`.
#[derive(Debug, Clone, Copy)]
struct TaskWeights {
    referring: f64,
    points: f64,
    depth: f64,
    vqa: f64,
}

impl TaskWeights {
    const DEPTH_ONLY: Self = Self { referring: 0.0, points: 0.0, depth: 1.0, vqa: 0.0 };
    const MIXTURE: Self = Self { referring: 1.0, points: 1.0, depth: 1.0, vqa: 1.0 };
    /// Referring rows, with the other tasks at 0.15 so that the answers they need are not forgotten: 300 steps of
    /// referring rows alone after the demo's mixture left the full model with no correct point or VQA answer
    /// (docs/referring.md).
    const REFERRING_REHEARSED: Self = Self { referring: 1.0, points: 0.15, depth: 0.15, vqa: 0.15 };
}

/// Runs one stage from the model directory `model`, into a cleared `stage.dir`.
async fn train_stage(stage: &Stage, train_glob: &str, model: &Path, depth_tokens: bool) -> anyhow::Result<RunSummary> {
    if stage.dir.exists() {
        std::fs::remove_dir_all(&stage.dir).with_context(|| format!("clearing {}", stage.dir.display()))?;
    }
    let mut vars = vec![
        ("PERCEPTIO_DATA", train_glob.to_string()),
        ("PERCEPTIO_MODEL", model.display().to_string()),
        ("PERCEPTIO_OUT", stage.dir.display().to_string()),
        ("PERCEPTIO_STEPS", stage.steps.to_string()),
        ("PERCEPTIO_DEPTH_TOKENS", depth_tokens.to_string()),
        ("PERCEPTIO_RESUME", "false".to_string()),
    ];
    let w = stage.weights;
    vars.push(("PERCEPTIO_WEIGHT_REFERRING", w.referring.to_string()));
    vars.push(("PERCEPTIO_WEIGHT_POINTS", w.points.to_string()));
    vars.push(("PERCEPTIO_WEIGHT_DEPTH", w.depth.to_string()));
    vars.push(("PERCEPTIO_WEIGHT_VQA", w.vqa.to_string()));
    run_flow(stage.label, "dataflows/train.yaml", TRAIN_FLOW, &vars, Track::NodeOut("loss", stage.steps as u64)).await
}

/// The checkpoint a training output folder's `latest` file names.
fn latest(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = std::fs::read_to_string(dir.join("latest"))
        .with_context(|| format!("{}: training wrote no checkpoint", dir.display()))?;
    Ok(dir.join(name.trim()))
}
