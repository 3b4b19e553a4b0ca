//! The demo's `report.md`: what ran and how long it took, the depth tokenizer's validation, the results table of
//! the full model against the no-depth-tokens ablation (as the paper's Tables 2 and 3), the goals (with the two
//! models' point answers compared question by question, and a bootstrap interval for their gap), the training
//! curves read back from each run's `metrics.parquet`, and sample answers.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow::array::{Array, Float64Array, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_actors::perceptio::aggregator::TERM_COLUMNS;
use perceptio_actors::perceptio::score::{EvalTable, PointsScore};
use perceptio_models::depth::train::ValMetrics;
use perceptio_models::perceptio::PerceptioConfig;
use perceptio_synth::paired::paired_gap;
use perceptio_synth::pictures::write_png;

use super::EncoderKind;
use super::Plan;
use super::plot::{Series, line_plot, smooth};
use super::samples::SampleLine;
use crate::cli::pretrain_appearance::{AppearanceSummary, ShapeTarget, accuracy_line};
use crate::cli::pretrain_markers::LabelAt;
use crate::cli::pretrain_markers::MarkerPretrainSummary;
use crate::cli::pretrain_recall::{RecallSummary, accuracy_line as recall_line};
use crate::cli::pretrain_sam2::{PointIou, PretrainSummary};
use crate::cli::pretrain_tied_markers::held_out_line as tied_line;
use perceptio_models::perceptio::tied_marker_pretrain::TiedAccuracy;

/// Per-micro-batch loss terms of one training run (`None` where a batch had no such term).
#[derive(Debug, Clone, Default)]
pub struct Curve {
    pub steps: Vec<f64>,
    /// (term, values) in `TERM_COLUMNS` order, `total` first.
    pub terms: Vec<(String, Vec<Option<f64>>)>,
}

impl Curve {
    /// Mean of `term` over the first (or last) `n` micro-batches that have it.
    pub fn mean(&self, term: &str, n: usize, last: bool) -> Option<f64> {
        let (_, v) = self.terms.iter().find(|(t, _)| t == term)?;
        let present: Vec<f64> = v.iter().flatten().copied().collect();
        if present.is_empty() {
            return None;
        }
        let k = n.min(present.len());
        let part = if last { &present[present.len() - k..] } else { &present[..k] };
        Some(part.iter().sum::<f64>() / k as f64)
    }

    /// Appends a later stage's curve, its steps shifted by `offset`.
    pub fn append(&mut self, later: Curve, offset: f64) {
        let before = self.steps.len();
        self.steps.extend(later.steps.iter().map(|s| s + offset));
        for (term, values) in later.terms {
            match self.terms.iter_mut().find(|(t, _)| *t == term) {
                Some((_, mine)) => mine.extend(values),
                None => self.terms.push((term, std::iter::repeat_n(None, before).chain(values).collect())),
            }
        }
        // a term the later stage lacks stays aligned with the steps
        let n = self.steps.len();
        for (_, values) in &mut self.terms {
            values.resize(n, None);
        }
    }
}

/// Reads a trainer's `metrics.parquet`.
pub fn read_metrics(path: &Path) -> anyhow::Result<Curve> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .with_context(|| format!("reading {}", path.display()))?;
    let mut curve =
        Curve { steps: Vec::new(), terms: TERM_COLUMNS.iter().map(|t| (t.to_string(), Vec::new())).collect() };
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let step = batch
            .column_by_name("step")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .with_context(|| format!("{}: no uint64 `step` column", path.display()))?;
        curve.steps.extend(step.values().iter().map(|&s| s as f64 + 1.0));
        for (term, values) in &mut curve.terms {
            let col = batch
                .column_by_name(term)
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                .with_context(|| format!("{}: no float64 `{term}` column", path.display()))?;
            values.extend((0..col.len()).map(|i| (!col.is_null(i)).then(|| col.value(i))));
        }
    }
    Ok(curve)
}

/// Bootstrap resamples of the paired point-question comparison.
pub const GAP_RESAMPLES: usize = 10_000;

/// The report's sub-item comparing the two models' point answers question by question: who alone gets which right,
/// and a 95% interval for the gap between their averages.
fn paired_points_line(full: &PointsScore, ablation: &PointsScore, seed: u64) -> String {
    let pairs = match full.paired_with(ablation) {
        Ok(pairs) => pairs,
        Err(e) => return format!("  - The two models' point answers cannot be compared question by question: {e}."),
    };
    let Some(g) = paired_gap(&pairs, GAP_RESAMPLES, seed) else {
        return "  - No point question was answered by both models.".to_string();
    };
    let verdict = match (g.excludes_zero(), g.gap > 0.0) {
        (true, true) => "it excludes 0, so the full model is ahead by more than sampling noise",
        (true, false) => "it excludes 0, so the no-depth-tokens model is ahead by more than sampling noise",
        (false, _) => "it includes 0, so these questions do not tell the two models apart",
    };
    format!(
        "  - Question by question ({} questions): only the full model is right on {}, only the no-depth-tokens \
         model on {}. The gap's 95% interval ({} bootstrap resamples of the questions within each point count) is \
         {:+.1} to {:+.1} points: {verdict}.",
        g.questions,
        g.only_first,
        g.only_second,
        g.resamples,
        100.0 * g.low,
        100.0 * g.high
    )
}

/// The segmenter stage: point-prompted SAM2 IoU on held-out masks before and after pretraining.
pub struct SegmenterResult {
    pub before: PointIou,
    pub after: PointIou,
    pub train: PretrainSummary,
}

/// One trained and evaluated model.
pub struct RunResult {
    pub name: String,
    pub checkpoint: PathBuf,
    pub train_secs: f64,
    pub eval_secs: f64,
    /// The stages, e.g. "300 steps on depth questions alone, then 250 steps on the task mixture".
    pub schedule: String,
    pub curve: Curve,
    pub table: EvalTable,
}

/// Everything the report says.
pub struct Report {
    pub quick: bool,
    pub seed: u64,
    pub plan: Plan,
    pub stages: Vec<(String, f64)>,
    pub dataset: Vec<(String, PathBuf, u64, u64)>,
    pub vqvae: Option<ValMetrics>,
    pub segmenter: Option<SegmenterResult>,
    /// The image-encoder stage on fresh scenes' objects, when it ran.
    pub appearance: Option<AppearanceSummary>,
    /// The LLM's text-only recall stage, when it ran.
    pub recall: Option<RecallSummary>,
    /// The image encoder's tied-marker stage and its held-out measure, when it ran.
    pub tied_markers: Option<(MarkerPretrainSummary, Option<TiedAccuracy>)>,
    pub model: Option<PerceptioConfig>,
    pub runs: Vec<RunResult>,
    pub curves_png: Option<PathBuf>,
    pub samples_png: Option<PathBuf>,
    pub samples: Vec<SampleLine>,
    pub total_secs: f64,
}

const COLOURS: [[u8; 3]; 8] = [
    [20, 20, 20],
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
];

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

impl Report {
    pub fn new(quick: bool, seed: u64, plan: Plan) -> Self {
        Self {
            quick,
            seed,
            plan,
            stages: Vec::new(),
            dataset: Vec::new(),
            vqvae: None,
            segmenter: None,
            appearance: None,
            recall: None,
            tied_markers: None,
            model: None,
            runs: Vec::new(),
            curves_png: None,
            samples_png: None,
            samples: Vec::new(),
            total_secs: 0.0,
        }
    }

    pub fn stage(&mut self, name: &str, secs: f64) {
        self.stages.push((name.to_string(), secs));
    }

    /// One plot per run (every term, smoothed), stacked; returns the path.
    pub fn write_curves(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let (w, h) = (640u32, 300u32);
        let mut rgb = Vec::new();
        for run in &self.runs {
            let series: Vec<Series> = run
                .curve
                .terms
                .iter()
                .enumerate()
                .filter_map(|(k, (term, values))| {
                    let pts: Vec<(f64, f64)> =
                        run.curve.steps.iter().zip(values).filter_map(|(&s, v)| v.map(|v| (s, v))).collect();
                    (!pts.is_empty()).then(|| Series {
                        name: term.clone(),
                        colour: COLOURS[k % COLOURS.len()],
                        points: smooth(&pts, 9),
                    })
                })
                .collect();
            let title = format!("{}: loss terms per micro-batch (moving average of 9)", run.name);
            rgb.extend(line_plot(&title, "step", &series, w, h));
        }
        let rows = self.runs.len().max(1) as u32;
        if self.runs.is_empty() {
            rgb = vec![255; (w * h * 3) as usize];
        }
        write_png(path, &rgb, w, h * rows).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// The results table (markdown), full model against the ablation.
    pub fn results_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| model | referring cIoU | points 3 | points 4 | points 5 | points avg | depth MSE | depth order acc | \
             VQA acc |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            let t = &r.table;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                opt(t.ciou(), 3),
                opt(t.points_at(3).map(|x| 100.0 * x), 1),
                opt(t.points_at(4).map(|x| 100.0 * x), 1),
                opt(t.points_at(5).map(|x| 100.0 * x), 1),
                opt(t.points_average().map(|x| 100.0 * x), 1),
                opt(t.depth_mse(), 4),
                opt(t.depth_order_accuracy(), 3),
                opt(t.vqa_accuracy().map(|x| 100.0 * x), 1),
            );
        }
        s
    }

    fn goals(&self) -> String {
        let mut s = String::new();
        let (Some(full), Some(abl)) = (self.runs.first(), self.runs.get(1)) else { return s };
        match (full.table.points_average(), abl.table.points_average()) {
            (Some(a), Some(b)) => {
                let gap = 100.0 * (a - b);
                let verdict =
                    if gap >= 10.0 { "met".to_string() } else { format!("missed by {:.1} points", 10.0 - gap) };
                let _ = writeln!(
                    s,
                    "- Point questions (3/4/5-point average): full {:.1}% vs no depth tokens {:.1}%, a gap of {gap:+.1} \
                     points; goal >= +10 points: **{verdict}**.",
                    100.0 * a,
                    100.0 * b
                );
                let _ = writeln!(s, "{}", paired_points_line(&full.table.points, &abl.table.points, self.seed));
            }
            _ => {
                let _ = writeln!(s, "- Point questions: no point rows were evaluated.");
            }
        }
        match full.table.ciou() {
            Some(c) => {
                let verdict = if c >= 0.7 { "met".to_string() } else { format!("missed by {:.3}", 0.7 - c) };
                let _ =
                    writeln!(s, "- Referring segmentation cIoU of the full model: {c:.3}; goal >= 0.7: **{verdict}**.");
            }
            None => {
                let _ = writeln!(s, "- Referring segmentation: no referring rows were evaluated.");
            }
        }
        if let (Some(text), Some(map)) = (full.table.points_average(), full.table.points.from_depth_map) {
            let _ = writeln!(
                s,
                "- Does the full model use its depth map on point questions? Its answers score {:.1}%; the answer its \
                 own decoded depth map gives (the marked point where the map is nearest) would score {:.1}%.",
                100.0 * text,
                100.0 * map
            );
        }
        let r = &full.table.referring;
        if let (Some(pred), Some(target), Some(half)) = (r.mean_mask_area, r.mean_target_area, r.precision_at_half) {
            let _ = writeln!(
                s,
                "- Do the full model's masks pick out the named object? They cover {:.1}% of the image on average, \
                 the named objects {:.1}%; {:.1}% of the questions get a mask with IoU >= 0.5.",
                100.0 * pred,
                100.0 * target,
                100.0 * half
            );
        }
        let (fp, ap) = (&full.table.points, &abl.table.points);
        if let (Some(f_ans), Some(a_ans), Some(constant)) =
            (&fp.most_common_answer, &ap.most_common_answer, fp.constant_answer_average)
        {
            let _ = writeln!(
                s,
                "- Do the answers to point questions depend on the image? The full model answers {f_ans} to {} of {} \
                 questions, the no-depth-tokens model {a_ans} to {} of {}. Always giving, per point count, the letter \
                 that is right most often on these questions would score {:.1}%: an answer that ignores the image \
                 scores no more.",
                fp.most_common_count,
                fp.samples,
                ap.most_common_count,
                ap.samples,
                100.0 * constant
            );
        }
        let (fv, av) = (&full.table.vqa, &abl.table.vqa);
        if let (Some(f_acc), Some(a_acc), Some(constant)) = (fv.accuracy, av.accuracy, fv.constant_answer_accuracy) {
            let kinds = if fv.by_kind.is_empty() { "one kind".to_string() } else { fv.kinds().join(", ") };
            let _ = writeln!(
                s,
                "- Do the VQA answers depend on the image? The full model scores {:.1}%, the no-depth-tokens model \
                 {:.1}%; always giving each question kind ({kinds}) its most common true answer would score \
                 {:.1}%. {} of the full model's {} answers, and {} of the other's, repeat the answer each model \
                 gives most often to their kind.",
                100.0 * f_acc,
                100.0 * a_acc,
                100.0 * constant,
                fv.repeated_answers,
                fv.samples,
                av.repeated_answers,
            );
        }
        let d = &full.table.depth;
        if let (Some(mse), Some(blind), Some(spread)) = (d.mse, d.blind_mse, d.prediction_spread) {
            let verdict = if mse < blind {
                "better than any map that ignores the image"
            } else {
                "no better than a map that ignores the image: the answers do not yet depend on the picture"
            };
            let _ = writeln!(
                s,
                "- Does the full model look at the image? Its depth maps score MSE {mse:.4} against {blind:.4} for the \
                 best image-blind map (the per-pixel mean of the test maps), so they are {verdict}. They vary across \
                 images by {spread:.4} (mean per-pixel variance), the test maps by {blind:.4}."
            );
        }
        s
    }

    pub fn markdown(&self, out: &Path) -> String {
        let rel = |p: &Path| p.strip_prefix(out).unwrap_or(p).display().to_string();
        let mut s = String::new();
        let _ = writeln!(s, "# perceptio demo\n");
        let p = &self.plan;
        let mut flags = String::from(if self.quick { " --quick" } else { "" });
        if p.appearance_steps > 0 {
            flags += &format!(" --appearance-steps {}", p.appearance_steps);
        }
        if p.shape_target != ShapeTarget::Tokens {
            flags += " --shape-target centres";
        }
        if p.encoder != EncoderKind::Vit {
            flags += " --encoder hybrid";
        }
        if p.freeze_encoder {
            flags += " --freeze-encoder";
        }
        if p.point_reasoning {
            flags += " --point-reasoning";
        }
        if p.points_per_scene != 1 {
            flags += &format!(" --points-per-scene {}", p.points_per_scene);
        }
        if p.span_at_image_positions {
            flags += " --span-at-image-positions";
        }
        if p.high_res_features {
            flags += " --high-res-features";
        }
        if !p.seg_point_from_map {
            flags += " --no-seg-point";
        }
        if p.recall_steps > 0 {
            flags += &format!(" --recall-steps {}", p.recall_steps);
        }
        if p.tied_marker_steps > 0 {
            flags += &format!(" --tied-marker-steps {}", p.tied_marker_steps);
            if p.tied_label_at == LabelAt::Letter {
                flags += " --tied-label-at letter";
            }
        }
        let _ = writeln!(
            s,
            "Command: `perceptio demo{}` (seed {}): {} scenes, depth tokenizer {} steps,{} segmenter {} steps, \
             Perceptio {} steps on the task mixture per model (the full model after {} steps on depth questions \
             alone){}, {} test rows per evaluation. {:.0} s in total on this machine.\n",
            flags,
            self.seed,
            p.scenes,
            p.vqvae_steps,
            if p.appearance_steps > 0 {
                format!(" image encoder {} steps on objects' shapes and colours,", p.appearance_steps)
            } else {
                String::new()
            },
            p.sam2_steps,
            p.steps,
            p.depth_steps,
            if p.referring_steps > 0 {
                format!(", then {} steps on referring questions with the other tasks rehearsed", p.referring_steps)
            } else {
                String::new()
            },
            p.eval_rows.map_or("all".to_string(), |n| format!("up to {n}")),
            self.total_secs
        );
        let _ = writeln!(s, "## Results on the held-out test split\n");
        s.push_str(&self.results_table());
        let _ = writeln!(
            s,
            "\ncIoU counts a referring question without `[SEG]` as a miss. Points: accuracy (%) of the multiple-choice \
             answer by number of marked points. Depth: the depth map decoded from the answer's 100 codes against the \
             row's depth in the tokenizer's normalised units (order accuracy = pixel pairs ordered correctly). The \
             no-depth-tokens model writes no depth span, so it has no depth numbers.\n"
        );
        let _ = writeln!(s, "### Goals\n\n{}", self.goals());
        for r in &self.runs {
            let _ = writeln!(
                s,
                "### `{}` (trained {:.0} s: {}; evaluated {:.0} s; checkpoint `{}`)\n\n{}\n",
                r.name,
                r.train_secs,
                r.schedule,
                r.eval_secs,
                rel(&r.checkpoint),
                r.table.markdown()
            );
        }
        let _ = writeln!(s, "## Training (`dataflows/train.yaml`)\n");
        let _ = writeln!(
            s,
            "Mean loss terms over the first and the last 10 micro-batches that have them, over each model's whole \
             schedule (a model trained in stages starts with its first stage):\n"
        );
        let _ = writeln!(s, "| run | term | first 10 | last 10 |\n|---|---|---|---|");
        for r in &self.runs {
            for (term, _) in &r.curve.terms {
                let (a, b) = (r.curve.mean(term, 10, false), r.curve.mean(term, 10, true));
                if a.is_some() {
                    let _ = writeln!(s, "| {} | {term} | {} | {} |", r.name, opt(a, 4), opt(b, 4));
                }
            }
        }
        if let Some(png) = &self.curves_png {
            let _ = writeln!(s, "\n![training curves]({})\n", rel(png));
        }
        if let Some(m) = &self.model {
            let t = &m.vlm.text;
            let _ = writeln!(
                s,
                "Model: the tiny preset with its image aligned to the depth-code grid: {}px images -> {} image \
                 tokens (one per depth code), placed after the question; LLM {} layers of width {} ({} heads, {} kv \
                 heads, RoPE base {}), vocabulary {} + {} added tokens; LLM training mode `{}`; image encoder {}; SAM2-tiny mask decoder \
                 and `[SEG]` projection trained{}; SAM2 image encoder and depth tokenizer frozen. Every weight starts \
                 random (no pretrained checkpoints exist for the tiny preset); {}.\n",
                m.vlm.vision.image_size,
                m.image_tokens(),
                t.num_hidden_layers,
                t.hidden_size,
                t.num_attention_heads,
                t.num_key_value_heads,
                t.rope_theta,
                t.vocab_size,
                m.added_tokens,
                m.trainable.llm,
                if m.trainable.vision_encoder { "trained" } else { "frozen" },
                if m.seg_grounding {
                    ", with the grounding map (the `[SEG]` state scored against the image-token states and SAM2's \
                     finest features, added to SAM2's mask logits and trained by its own cross-entropy, `seg_ground`)"
                } else {
                    ""
                },
                if self.segmenter.is_some() {
                    "the SAM2 image encoder Perceptio training freezes was pretrained first (below)"
                } else {
                    "the segmenter stage was skipped, so the frozen SAM2 encoder gives the mask decoder random \
                     (if spatially faithful) features"
                }
            );
        }
        if let Some(a) = &self.appearance {
            let _ = writeln!(s, "## Image encoder (`perceptio pretrain-appearance`)\n");
            let what = match p.shape_target {
                ShapeTarget::Tokens => "the shape and colour of the object under it",
                ShapeTarget::Centres => "the colour of the object under it and, at each object's centre, its shape",
            };
            let _ = writeln!(
                s,
                "The {} and projector of the initial model, trained for {} steps ({:.0} s) to say, for each image \
                 token, {what}, on fresh scenes of the same world drawn every step; both models start from it{}. \
                 Loss {:.3} -> {:.3} (means of the first and last {} steps).\n",
                match p.encoder {
                    EncoderKind::Vit => "InternViT",
                    EncoderKind::Hybrid => "InternViT (with its convolutional stem)",
                },
                p.appearance_steps,
                a.secs,
                if p.freeze_encoder { ", and Perceptio training keeps the InternViT fixed" } else { "" },
                a.first_loss,
                a.last_loss,
                a.window
            );
            if let Some(held) = &a.held_out {
                let _ = writeln!(s, "Held-out scenes: {}.\n", accuracy_line(held));
            }
        }
        if let Some(r) = &self.recall {
            let _ = writeln!(s, "## LLM recall (`perceptio pretrain-recall`)\n");
            let _ = writeln!(
                s,
                "The initial model's LLM, trained for {} steps ({} questions, {:.0} s) on text-only point questions \
                 whose points are told as \"letter level\" pairs where the image would be; its answer states each \
                 letter's level, then the nearest letter. Both models start from it. Loss {:.3} -> {:.3} (means of \
                 the first and last {} steps).\n",
                p.recall_steps, r.sequences, r.secs, r.first_loss, r.last_loss, r.window
            );
            for (step, a) in &r.held_out {
                let _ = writeln!(s, "- after step {step}: {}", recall_line(a));
            }
            s.push('\n');
        }
        if let Some((t, held)) = &self.tied_markers {
            let _ = writeln!(s, "## Image encoder, tied markers (`perceptio pretrain-tied-markers`)\n");
            let _ = writeln!(
                s,
                "The image encoder and projector, trained for {} steps ({:.0} s, fresh markers on {} scenes) so that \
                 each image token names the depth level of its cell, and the token {} names the marker's letter and \
                 its point's level, by the LLM's own embeddings of those words. Loss {:.3} -> {:.3} (means of the \
                 first and last {} steps).\n",
                p.tied_marker_steps,
                t.secs,
                t.images,
                match p.tied_label_at {
                    LabelAt::Point => "over a marked point",
                    LabelAt::Letter => "over a marker's letter box",
                },
                t.first_loss,
                t.last_loss,
                t.window
            );
            if let Some(a) = held {
                let _ = writeln!(s, "Validation point questions, {}.\n", tied_line(a));
            }
        }
        if let Some(g) = &self.segmenter {
            let _ = writeln!(s, "## Segmenter (`perceptio pretrain-sam2`)\n");
            let _ = writeln!(
                s,
                "SAM2-tiny trained on the training split's referring masks, one positive point prompt per mask, every \
                 weight trained ({:.0} s). Point-prompted mean IoU on {} held-out masks: {:.3} before, {:.3} after \
                 (single-mask output: {:.3} -> {:.3}). Training loss {:.3} -> {:.3}, IoU {:.3} -> {:.3} (means of the \
                 first and last {} steps).\n",
                g.train.secs,
                g.after.masks,
                g.before.configured,
                g.after.configured,
                g.before.single_token,
                g.after.single_token,
                g.train.first_loss,
                g.train.last_loss,
                g.train.first_iou,
                g.train.last_iou,
                g.train.window
            );
            let _ = writeln!(
                s,
                "{} {}\n",
                if self.plan.high_res_features {
                    "Its mask decoder adds the backbone's high-resolution maps while upscaling, as SAM2 does; trained \
                     from scratch so, it marks every object whatever its prompt (docs/referring.md)."
                } else {
                    "Its mask decoder upscales without the backbone's high-resolution maps, so that it learns to follow \
                     its prompt (with them it marks every object; docs/referring.md)."
                },
                if self.plan.seg_point_from_map {
                    "Perceptio prompts it with the `[SEG]` state and a point at the grounding map's soft arg-max."
                } else {
                    "Perceptio prompts it with the `[SEG]` state alone."
                }
            );
        }
        let _ = writeln!(s, "## Depth tokenizer\n");
        match &self.vqvae {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "Validation after training: reconstruction MSE {:.5} (normalised units), relative-order accuracy \
                     {:.4}, codebook perplexity {:.1}, {} codes used.\n",
                    m.mse, m.order_accuracy, m.perplexity, m.codes_used
                );
            }
            None => {
                let _ = writeln!(s, "No validation ran.\n");
            }
        }
        if !self.samples.is_empty() {
            let _ = writeln!(s, "## Sample answers (full model)\n");
            if let Some(png) = &self.samples_png {
                let _ = writeln!(
                    s,
                    "![samples]({}) (left: image with the predicted mask; right: predicted depth)\n",
                    rel(png)
                );
            }
            let _ = writeln!(
                s,
                "| sample | task | question | answer | truth | [SEG] | depth codes |\n|---|---|---|---|---|---|---|"
            );
            for l in &self.samples {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {} | {} | {} | {} | {} |",
                    l.id,
                    l.task,
                    l.question.replace('|', "/"),
                    l.answer.replace('|', "/"),
                    l.truth.replace('|', "/"),
                    if l.seg { "yes" } else { "no" },
                    l.depth_codes.map_or("–".to_string(), |n| n.to_string())
                );
            }
        }
        let _ = writeln!(s, "\n## Data\n\n| split | file | rows | scenes |\n|---|---|---|---|");
        for (split, path, rows, scenes) in &self.dataset {
            let _ = writeln!(s, "| {split} | `{}` | {rows} | {scenes} |", rel(path));
        }
        let _ = writeln!(s, "\n## Time per stage\n\n| stage | seconds |\n|---|---|");
        for (name, secs) in &self.stages {
            let _ = writeln!(s, "| {name} | {secs:.1} |");
        }
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| train `{}` | {:.1} |\n| evaluate `{}` | {:.1} |",
                r.name, r.train_secs, r.name, r.eval_secs
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Curve;
    use super::{
        AppearanceSummary, EncoderKind, PointsScore, Report, SegmenterResult, ShapeTarget, paired_points_line,
    };
    use crate::cli::demo::Plan;

    fn plan() -> Plan {
        Plan {
            scenes: 10,
            vqvae_steps: 1,
            appearance_steps: 0,
            points_per_scene: 1,
            span_at_image_positions: false,
            high_res_features: false,
            seg_point_from_map: true,
            recall_steps: 0,
            tied_marker_steps: 0,
            tied_label_at: crate::cli::pretrain_markers::LabelAt::Point,
            shape_target: ShapeTarget::Tokens,
            encoder: EncoderKind::Vit,
            freeze_encoder: false,
            point_reasoning: false,
            sam2_steps: 1,
            depth_steps: 1,
            steps: 1,
            referring_steps: 1,
            eval_rows: None,
        }
    }

    #[test]
    fn the_command_line_names_every_encoder_option_that_is_not_the_default() {
        let out = std::path::Path::new("/tmp/out");
        let segmenter = || {
            use crate::cli::pretrain_sam2::{PointIou, PretrainSummary};
            let iou = |v| PointIou { configured: v, single_token: v, masks: 4 };
            let train = PretrainSummary {
                first_loss: 4.0,
                last_loss: 2.0,
                first_iou: 0.1,
                last_iou: 0.4,
                window: 1,
                secs: 9.0,
            };
            Some(SegmenterResult { before: iou(0.01), after: iou(0.44), train })
        };
        let mut r = Report::new(false, 0, plan());
        r.segmenter = segmenter();
        let plain = r.markdown(out);
        assert!(plain.contains("Command: `perceptio demo` (seed 0)"), "{plain}");
        assert!(plain.contains("upscales without the backbone's high-resolution maps"), "{plain}");
        assert!(plain.contains("the `[SEG]` state and a point at the grounding map's soft arg-max"), "{plain}");
        let p = Plan {
            appearance_steps: 5,
            points_per_scene: 1,
            recall_steps: 0,
            tied_marker_steps: 0,
            tied_label_at: crate::cli::pretrain_markers::LabelAt::Point,
            shape_target: ShapeTarget::Centres,
            encoder: EncoderKind::Hybrid,
            freeze_encoder: true,
            point_reasoning: true,
            span_at_image_positions: true,
            high_res_features: true,
            seg_point_from_map: false,
            ..plan()
        };
        let mut r = Report::new(true, 3, p);
        r.appearance =
            Some(AppearanceSummary { first_loss: 2.0, last_loss: 1.0, window: 1, secs: 4.0, held_out: None });
        r.segmenter = segmenter();
        let md = r.markdown(out);
        assert!(md.contains("adds the backbone's high-resolution maps while upscaling"), "{md}");
        assert!(md.contains("prompts it with the `[SEG]` state alone"), "{md}");
        let cmd = "`perceptio demo --quick --appearance-steps 5 --shape-target centres --encoder hybrid \
                   --freeze-encoder --point-reasoning --span-at-image-positions --high-res-features \
                   --no-seg-point` (seed 3)";
        assert!(md.contains(cmd), "{md}");
        assert!(md.contains("The InternViT (with its convolutional stem) and projector"), "{md}");
        assert!(md.contains("at each object's centre, its shape"), "{md}");
        assert!(md.contains("Perceptio training keeps the InternViT fixed"), "{md}");
    }

    /// Point answers of ids q0.. at `points` marked points, right where `right` says.
    fn answered(points: u32, right: &[bool]) -> PointsScore {
        use perceptio_actors::perceptio::score::PointAnswer;
        let answers = right
            .iter()
            .enumerate()
            .map(|(i, &correct)| PointAnswer { id: format!("q{i}"), points, correct })
            .collect();
        PointsScore { answers, ..PointsScore::default() }
    }

    #[test]
    fn the_paired_point_line_counts_the_questions_only_one_model_gets_right() {
        // 60 questions: the full model right on the first 40, the ablation on the first 10
        let full = answered(3, &(0..60).map(|i| i < 40).collect::<Vec<_>>());
        let ablation = answered(3, &(0..60).map(|i| i < 10).collect::<Vec<_>>());
        let line = paired_points_line(&full, &ablation, 0);
        assert!(
            line.contains("(60 questions): only the full model is right on 30, only the no-depth-tokens model on 0")
        );
        assert!(line.contains("so the full model is ahead by more than sampling noise"), "{line}");
        // a gap of one question in 60 cannot be told from noise
        let near = answered(3, &(0..60).map(|i| i < 11).collect::<Vec<_>>());
        let line = paired_points_line(&near, &ablation, 0);
        assert!(line.contains("right on 1, only the no-depth-tokens model on 0"), "{line}");
        assert!(line.contains("it includes 0, so these questions do not tell the two models apart"), "{line}");
        // different questions are said to be so, not compared
        let other = answered(3, &[true; 59]);
        let line = paired_points_line(&full, &other, 0);
        assert!(line.contains("cannot be compared question by question: 60 answers against 59"), "{line}");
    }

    fn curve(steps: &[f64], terms: &[(&str, &[Option<f64>])]) -> Curve {
        Curve { steps: steps.to_vec(), terms: terms.iter().map(|(t, v)| (t.to_string(), v.to_vec())).collect() }
    }

    #[test]
    fn appended_stages_continue_the_steps_and_keep_terms_aligned() {
        let mut c = Curve::default();
        c.append(curve(&[1.0, 2.0], &[("total", &[Some(4.0), Some(3.0)]), ("token", &[Some(2.0), Some(1.5)])]), 0.0);
        // the later stage has no `token` term and a new `seg_bce` one
        c.append(
            curve(&[1.0, 2.0, 3.0], &[("total", &[Some(5.0), Some(2.0), Some(1.0)]), ("seg_bce", &[Some(0.5); 3])]),
            2.0,
        );
        assert_eq!(c.steps, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let term = |name: &str| c.terms.iter().find(|(t, _)| t == name).unwrap().1.clone();
        assert_eq!(term("total"), vec![Some(4.0), Some(3.0), Some(5.0), Some(2.0), Some(1.0)]);
        assert_eq!(term("token"), vec![Some(2.0), Some(1.5), None, None, None]);
        assert_eq!(term("seg_bce"), vec![None, None, Some(0.5), Some(0.5), Some(0.5)]);
        assert_eq!(c.mean("total", 2, true), Some(1.5));
    }
}
