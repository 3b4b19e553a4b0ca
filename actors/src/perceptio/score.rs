//! `perceptio-score`: scores `perceptio-infer` rows against the synthetic world's ground truth, per task, and at
//! the end writes the [`EvalTable`] as JSON (param `out`) and logs it as a markdown table.
//!
//! What is computed, exactly:
//! - **referring** (`task = referring`): cIoU = sum of intersections / sum of unions over all rows. The ground
//!   truth mask (`mask`, PNG) is resized nearest-neighbour (pixel centres) to the predicted mask's size
//!   (`pred_mask`, PNG, the SAM2 input size); a row without a predicted mask (no `[SEG]`) is a miss: an empty
//!   prediction whose union is the ground truth's pixel count at the predicted masks' size. Also reported: cIoU
//!   over the answered rows only, mean IoU and the share of rows with IoU >= 0.5 (misses included).
//! - **points** (`task = points`): accuracy of the letter named in `generated` (the first `(X)`, else the first
//!   standalone A-E) against `answer`, per number of marked points (the length of `point_labels`), and their
//!   unweighted mean (the HardBLINK average). For rows whose answer decoded a depth map (`pred_depth`), also the
//!   same accuracy of the answer the map itself gives: the marked point where the map is nearest (the largest
//!   value at the map pixel under `point_x`, `point_y` of the `width` x `height` image; ties go to the first
//!   point). It says whether the chain of thought holds the answer that the text then has to give.
//!   Every question's outcome is kept too (`answers`: sample id, point count, right or not), so that two models
//!   can be compared question by question ([`PointsScore::paired_with`]).
//! - **depth** (`task = depth`): the ground truth is the tokenizer target of the row's depth PNG
//!   (`depth_target_from_png(depth, depth_scale, D)`, D = side of `pred_depth`, values in [-1, 1], +1 = nearest),
//!   the model's target units. Per image: MSE over all D*D pixels in those units. Then both maps are mapped to
//!   relative disparity `(v + 1) / 2` in [0, 1] (1 = nearest, 0 = the farthest ground-truth pixel).
//!   Relative-order accuracy = share of 1000 seeded random pixel pairs (seed from `seed` and the sample id) whose
//!   order in the prediction matches the ground truth's; pairs with a ground truth of 0 or differing by less than
//!   2% (ratio) are skipped, a predicted tie counts wrong. AbsRel = mean |p - g| / g and delta1 = share of
//!   max(p/g, g/p) < 1.25 over the pixels with g >= 0.1 ([`DEPTH_FLOOR`]: near 0 the ratio explodes) and p > 0,
//!   after median scaling the prediction on those pixels (p times median(g) / median(p)). Each metric is averaged
//!   over the images that have it; a depth row without a complete span (`pred_depth` null) counts as missing
//!   and has no numbers.
//!   Two numbers say whether the maps depend on the image at all: the **image-blind MSE**, the MSE of the best
//!   constant map (the per-pixel mean of the scored ground truths, i.e. their mean per-pixel variance; a model
//!   that ignores its image cannot beat it), and the **prediction spread**, the mean per-pixel variance of the
//!   predicted maps across the scored images (0 when every image gets the same map). Both need maps of one side.
//! - **vqa** (`task = vqa`): accuracy of `generated` against `answer` after VQA normalisation (lower case, no
//!   punctuation or articles, number words as digits); exact-match accuracy too.
//!
//! Rows whose ground truth cannot be read (missing column, undecodable PNG, unknown task) go to `errors`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, Float32Array, Float64Array, Int32Array, ListArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use perceptio_models::depth::depth_target_from_png;
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, parse_params,
};
use perceptio_synth::metrics::{
    AnswerMetrics, MapMoments, MaskMetrics, PointMetrics, abs_rel, delta_accuracy, median_scale,
    relative_order_accuracy, sample_pairs,
};
use perceptio_synth::paired::PairedAnswer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::infer::{GENERATED, PRED_DEPTH, PRED_MASK};
use crate::image_decode::image_bytes;

/// Pixel pairs per image for the relative-order accuracy.
pub const ORDER_PAIRS: usize = 1000;
/// Ground-truth pairs closer than this ratio count as ties and are skipped.
pub const ORDER_TIE_RATIO: f32 = 1.02;
/// AbsRel and delta1 leave out pixels whose ground-truth relative disparity `(v + 1) / 2` is below this (the
/// farthest tenth of each map's range, where dividing by the ground truth blows up; the farthest pixel is 0).
pub const DEPTH_FLOOR: f32 = 0.1;

/// Errors of reading or writing an evaluation table.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Referring segmentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferringScore {
    pub samples: u64,
    /// Rows without a predicted mask (no `[SEG]`), counted as empty masks.
    pub missing: u64,
    pub intersection: u64,
    pub union: u64,
    /// Sum of intersections / sum of unions, misses included (the headline).
    pub ciou: Option<f64>,
    /// cIoU over the rows with a predicted mask only.
    pub ciou_answered: Option<f64>,
    pub mean_iou: Option<f64>,
    /// Share of rows with IoU >= 0.5.
    pub precision_at_half: Option<f64>,
    /// Mean share of the image the predicted masks cover (rows with a mask).
    #[serde(default)]
    pub mean_mask_area: Option<f64>,
    /// Mean share of the image the target masks cover.
    #[serde(default)]
    pub mean_target_area: Option<f64>,
}

/// Accuracy at one number of marked points.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointsAccuracy {
    pub points: u32,
    pub correct: u64,
    pub total: u64,
    pub accuracy: f64,
}

/// Point questions ("which point is closest?").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointsScore {
    pub samples: u64,
    /// Rows whose answer held a depth span (the chain of thought of the full model).
    pub with_depth_span: u64,
    /// Per number of points, ascending.
    pub by_points: Vec<PointsAccuracy>,
    /// Unweighted mean of the per-count accuracies.
    pub average: Option<f64>,
    /// Rows whose answer decoded a depth map (a complete span).
    #[serde(default)]
    pub with_depth_map: u64,
    /// The same average for the answers read off the rows' own decoded depth maps (None without such rows).
    #[serde(default)]
    pub from_depth_map: Option<f64>,
    /// The answer given most often: "(C)", or "no letter" for answers that name none.
    #[serde(default)]
    pub most_common_answer: Option<String>,
    /// How many questions got that answer.
    #[serde(default)]
    pub most_common_count: u64,
    /// The average accuracy of the best answer that ignores the image: per point count, the letter that is
    /// right most often on these questions, always given.
    #[serde(default)]
    pub constant_answer_average: Option<f64>,
    /// Every question's outcome, in the order scored, so that two models can be compared question by question.
    #[serde(default)]
    pub answers: Vec<PointAnswer>,
}

/// The outcome of one point question.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointAnswer {
    /// The row's `sample_id` ("row N", its place among the scored rows, where the column is absent or null).
    pub id: String,
    pub points: u32,
    pub correct: bool,
}

impl PointsScore {
    /// This model's answers paired with `other`'s on the same questions (matched by id), for
    /// [`perceptio_synth::paired::paired_gap`]; an error names a question only one of them answered, or one whose
    /// point count differs.
    pub fn paired_with(&self, other: &PointsScore) -> Result<Vec<PairedAnswer>, String> {
        let theirs: HashMap<&str, &PointAnswer> = other.answers.iter().map(|a| (a.id.as_str(), a)).collect();
        let mine: HashSet<&str> = self.answers.iter().map(|a| a.id.as_str()).collect();
        if theirs.len() != other.answers.len() || mine.len() != self.answers.len() {
            return Err(format!(
                "question ids repeat ({} answers with {} ids against {} with {}): cannot pair them",
                self.answers.len(),
                mine.len(),
                other.answers.len(),
                theirs.len()
            ));
        }
        if self.answers.len() != other.answers.len() {
            return Err(format!("{} answers against {}: not the same questions", self.answers.len(), theirs.len()));
        }
        self.answers
            .iter()
            .map(|mine| {
                let Some(their) = theirs.get(mine.id.as_str()) else {
                    return Err(format!("question `{}` was answered by one model only", mine.id));
                };
                if their.points != mine.points {
                    return Err(format!("question `{}` has {} points, then {}", mine.id, mine.points, their.points));
                }
                Ok(PairedAnswer { points: mine.points, first_right: mine.correct, second_right: their.correct })
            })
            .collect()
    }
}

/// Depth generation (see the module docs for the exact definitions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepthScore {
    pub samples: u64,
    /// Depth rows without a complete span (no map to score).
    pub missing: u64,
    /// Mean squared error in the tokenizer's [-1, 1] units.
    pub mse: Option<f64>,
    /// AbsRel of median-scaled relative disparity.
    pub abs_rel: Option<f64>,
    /// delta < 1.25 of median-scaled relative disparity.
    pub delta1: Option<f64>,
    /// Relative-order accuracy of pixel pairs.
    pub order_accuracy: Option<f64>,
    /// MSE of the best image-blind prediction: the per-pixel mean of the scored ground truths.
    #[serde(default)]
    pub blind_mse: Option<f64>,
    /// Mean per-pixel variance of the predicted maps across the scored images (0: one map for every image).
    #[serde(default)]
    pub prediction_spread: Option<f64>,
}

/// Visual questions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VqaScore {
    pub samples: u64,
    pub exact: u64,
    pub normalized: u64,
    /// Normalised-answer accuracy (the headline).
    pub accuracy: Option<f64>,
    pub exact_accuracy: Option<f64>,
    /// The accuracy of the best answers that ignore the image: per question kind (the rows' `kind` column), the
    /// most common true answer, always given.
    #[serde(default)]
    pub constant_answer_accuracy: Option<f64>,
    /// Answers that repeat the answer the model gave most often to their question kind.
    #[serde(default)]
    pub repeated_answers: u64,
    /// Per question kind (the rows' `kind` column), in order; empty when the rows have none.
    #[serde(default)]
    pub by_kind: Vec<VqaKindScore>,
}

impl VqaScore {
    /// The question kinds seen, in order (empty when the rows have no `kind`).
    pub fn kinds(&self) -> Vec<&str> {
        self.by_kind.iter().map(|k| k.kind.as_str()).collect()
    }
}

/// The answers to one kind of VQA question.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VqaKindScore {
    pub kind: String,
    pub samples: u64,
    /// Normalised-answer accuracy.
    pub accuracy: Option<f64>,
    /// What always giving the kind's commonest true answer scores.
    pub constant_answer_accuracy: Option<f64>,
    /// The answer the model gave most often (None: no answer) and how often.
    pub most_common_answer: Option<String>,
    pub most_common_count: u64,
}

/// The evaluation results of one model on one dataset, per task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalTable {
    /// Rows scored (rows that failed are not counted).
    pub rows: u64,
    pub referring: ReferringScore,
    pub points: PointsScore,
    pub depth: DepthScore,
    pub vqa: VqaScore,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn fmt_opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{:.*}", digits, x * scale))
}

impl EvalTable {
    /// Referring cIoU with misses counted (None without referring rows).
    pub fn ciou(&self) -> Option<f64> {
        self.referring.ciou
    }

    /// Point accuracy at `n` points (None without such rows).
    pub fn points_at(&self, n: u32) -> Option<f64> {
        self.points.by_points.iter().find(|p| p.points == n && p.total > 0).map(|p| p.accuracy)
    }

    /// The mean of the per-count point accuracies.
    pub fn points_average(&self) -> Option<f64> {
        self.points.average
    }

    /// Depth MSE in normalised units (None without scored depth maps).
    pub fn depth_mse(&self) -> Option<f64> {
        self.depth.mse
    }

    /// Depth relative-order accuracy.
    pub fn depth_order_accuracy(&self) -> Option<f64> {
        self.depth.order_accuracy
    }

    /// Normalised VQA accuracy.
    pub fn vqa_accuracy(&self) -> Option<f64> {
        self.vqa.accuracy
    }

    /// One markdown table: task, metric, value, rows.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| task | metric | value | rows |");
        let _ = writeln!(s, "|---|---|---|---|");
        let mut row = |task: &str, metric: &str, value: String, rows: String| {
            let _ = writeln!(s, "| {task} | {metric} | {value} | {rows} |");
        };
        let r = &self.referring;
        let refer_rows = format!("{} ({} without [SEG])", r.samples, r.missing);
        row("referring", "cIoU (misses count)", fmt_opt(r.ciou, 1.0, 3), refer_rows.clone());
        row("referring", "cIoU (answered only)", fmt_opt(r.ciou_answered, 1.0, 3), (r.samples - r.missing).to_string());
        row("referring", "mean IoU", fmt_opt(r.mean_iou, 1.0, 3), refer_rows.clone());
        row("referring", "IoU >= 0.5 (%)", fmt_opt(r.precision_at_half, 100.0, 1), refer_rows);
        let answered = (r.samples - r.missing).to_string();
        row("referring", "mean predicted mask area (% of image)", fmt_opt(r.mean_mask_area, 100.0, 1), answered);
        row("referring", "mean target area (% of image)", fmt_opt(r.mean_target_area, 100.0, 1), r.samples.to_string());
        let p = &self.points;
        if p.by_points.is_empty() {
            row("points", "accuracy (%)", "-".into(), "0".into());
        }
        for a in &p.by_points {
            row("points", &format!("accuracy, {} points (%)", a.points), format!("{:.1}", 100.0 * a.accuracy), {
                a.total.to_string()
            });
        }
        row(
            "points",
            "average accuracy (%)",
            fmt_opt(p.average, 100.0, 1),
            format!("{} ({} with a depth span)", p.samples, p.with_depth_span),
        );
        if let Some(answer) = &p.most_common_answer {
            row("points", "most common answer", format!("{answer} for {}", p.most_common_count), p.samples.to_string());
        }
        if p.constant_answer_average.is_some() {
            row(
                "points",
                "average accuracy of the best constant answer (%)",
                fmt_opt(p.constant_answer_average, 100.0, 1),
                p.samples.to_string(),
            );
        }
        if p.from_depth_map.is_some() {
            row(
                "points",
                "average accuracy read off its depth map (%)",
                fmt_opt(p.from_depth_map, 100.0, 1),
                format!("{} with a depth map", p.with_depth_map),
            );
        }
        let d = &self.depth;
        let depth_rows = format!("{} ({} without a span)", d.samples, d.missing);
        row("depth", "MSE (normalised [-1, 1])", fmt_opt(d.mse, 1.0, 4), depth_rows.clone());
        row("depth", "relative-order accuracy (%)", fmt_opt(d.order_accuracy, 100.0, 1), depth_rows.clone());
        row("depth", "AbsRel (median-scaled disparity)", fmt_opt(d.abs_rel, 1.0, 3), depth_rows.clone());
        row("depth", "delta < 1.25 (%)", fmt_opt(d.delta1, 100.0, 1), depth_rows.clone());
        row("depth", "MSE of the best image-blind map", fmt_opt(d.blind_mse, 1.0, 4), depth_rows.clone());
        row("depth", "prediction spread across images", fmt_opt(d.prediction_spread, 1.0, 4), depth_rows);
        let v = &self.vqa;
        row("vqa", "accuracy, normalised (%)", fmt_opt(v.accuracy, 100.0, 1), v.samples.to_string());
        row("vqa", "accuracy, exact match (%)", fmt_opt(v.exact_accuracy, 100.0, 1), v.samples.to_string());
        if v.samples > 0 {
            let constant = fmt_opt(v.constant_answer_accuracy, 100.0, 1);
            row("vqa", "accuracy of the best constant answer per question kind (%)", constant, v.samples.to_string());
            row(
                "vqa",
                "answers repeating the model's most common one for their kind",
                v.repeated_answers.to_string(),
                v.samples.to_string(),
            );
        }
        for k in &v.by_kind {
            let answer = k.most_common_answer.as_deref().map_or("no answer".to_string(), |a| format!("\"{a}\""));
            row(
                "vqa",
                &format!("`{}` questions: accuracy (constant answer) (%)", k.kind),
                format!("{} ({})", fmt_opt(k.accuracy, 100.0, 1), fmt_opt(k.constant_answer_accuracy, 100.0, 1)),
                format!("{} ({answer} for {})", k.samples, k.most_common_count),
            );
        }
        s
    }

    /// Writes the table as pretty JSON, atomically (temporary file, then rename); creates the folder.
    pub fn write_json(&self, path: &Path) -> Result<(), ScoreError> {
        let err =
            |p: &Path, e: &dyn std::fmt::Display| ScoreError::File { path: p.to_path_buf(), reason: e.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| err(path, &e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "eval.json".into());
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, text + "\n").map_err(|e| err(&tmp, &e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(path, &e))
    }

    /// Reads a table written by [`EvalTable::write_json`].
    pub fn read_json(path: &Path) -> Result<Self, ScoreError> {
        let err = |e: &dyn std::fmt::Display| ScoreError::File { path: path.to_path_buf(), reason: e.to_string() };
        let text = std::fs::read_to_string(path).map_err(|e| err(&e))?;
        serde_json::from_str(&text).map_err(|e| err(&e))
    }
}

/// Nearest-neighbour resize (pixel centres) of a `w x h` mask to `ow x oh`.
pub fn resize_mask_nearest(m: &[bool], w: usize, h: usize, ow: usize, oh: usize) -> Vec<bool> {
    if (w, h) == (ow, oh) {
        return m.to_vec();
    }
    let mut out = vec![false; ow * oh];
    for y in 0..oh {
        let sy = (((y as f64 + 0.5) * h as f64 / oh as f64) as usize).min(h - 1);
        for x in 0..ow {
            let sx = (((x as f64 + 0.5) * w as f64 / ow as f64) as usize).min(w - 1);
            out[y * ow + x] = m[sy * w + sx];
        }
    }
    out
}

/// Sums behind the per-image depth averages.
#[derive(Debug, Clone, Default)]
struct DepthSums {
    samples: u64,
    missing: u64,
    mse: (f64, u64),
    abs_rel: (f64, u64),
    delta1: (f64, u64),
    order: (f64, u64),
    gt_moments: MapMoments,
    pred_moments: MapMoments,
}

fn mean((sum, n): (f64, u64)) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

fn add(acc: &mut (f64, u64), v: Option<f64>) {
    if let Some(v) = v {
        acc.0 += v;
        acc.1 += 1;
    }
}

/// The depth numbers of one image (see the module docs); None where no pixel or pair qualifies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthNumbers {
    pub mse: f64,
    pub abs_rel: Option<f64>,
    pub delta1: Option<f64>,
    pub order: Option<f64>,
}

/// The depth numbers of one prediction against its ground truth (both in [-1, 1], same length).
pub fn depth_numbers(pred: &[f32], gt: &[f32], pair_seed: u64) -> Result<DepthNumbers, String> {
    if pred.len() != gt.len() || gt.is_empty() {
        return Err(format!("predicted depth has {} values, ground truth {}", pred.len(), gt.len()));
    }
    let mse = pred.iter().zip(gt).map(|(&p, &g)| ((p - g) as f64).powi(2)).sum::<f64>() / gt.len() as f64;
    let g: Vec<f32> = gt.iter().map(|&v| (v + 1.0) / 2.0).collect();
    let p: Vec<f32> = pred.iter().map(|&v| (v + 1.0) / 2.0).collect();
    let e = |e: perceptio_synth::SynthError| e.to_string();
    let pairs = sample_pairs(g.len(), ORDER_PAIRS, pair_seed);
    let order = relative_order_accuracy(&p, &g, &pairs, ORDER_TIE_RATIO).map_err(e)?;
    // AbsRel and delta1 on the pixels whose ground truth is at least DEPTH_FLOOR (and prediction positive)
    let (kept_p, kept_g): (Vec<f32>, Vec<f32>) =
        p.iter().zip(&g).filter(|&(&pv, &gv)| gv >= DEPTH_FLOOR && pv > 0.0 && pv.is_finite()).unzip();
    let (abs_rel, delta1) = match median_scale(&kept_p, &kept_g).filter(|s| s.is_finite() && *s > 0.0) {
        Some(scale) => {
            let scaled: Vec<f32> = kept_p.iter().map(|&v| v * scale).collect();
            (abs_rel(&scaled, &kept_g).map_err(e)?, delta_accuracy(&scaled, &kept_g, 1.25).map_err(e)?)
        }
        None => (None, None),
    };
    Ok(DepthNumbers { mse, abs_rel, delta1, order })
}

/// The score accumulator (the node's state; also usable on its own).
#[derive(Debug, Clone, Default)]
pub struct Scorer {
    seed: u64,
    rows: u64,
    masks: MaskMetrics,
    answered: MaskMetrics,
    /// The predicted masks' size (width, height), once one was seen.
    mask_size: Option<(usize, usize)>,
    /// Ground truth of misses seen before any predicted mask (the size to score them at is not known yet).
    pending: Vec<(Vec<bool>, usize, usize)>,
    points: PointMetrics,
    points_with_span: u64,
    point_answers: Vec<PointAnswer>,
    /// The answers the predicted depth maps give at the marked points, and how many rows had a map.
    points_from_map: PointMetrics,
    points_with_map: u64,
    depth: DepthSums,
    vqa: AnswerMetrics,
}

/// Row `r` of utf8 column `name` (None when null).
fn text<'a>(batch: &'a RecordBatch, name: &str, r: usize) -> Result<Option<&'a str>, String> {
    let c = batch.column_by_name(name).ok_or_else(|| format!("column `{name}` is missing"))?;
    let a = c.as_any().downcast_ref::<StringArray>().ok_or_else(|| format!("column `{name}` is not utf8"))?;
    Ok((!a.is_null(r)).then(|| a.value(r)))
}

/// The bytes of an optional binary/image cell (None when the column is absent or the cell null).
fn bytes<'a>(batch: &'a RecordBatch, name: &str, r: usize) -> Result<Option<&'a [u8]>, String> {
    match batch.column_by_name(name) {
        Some(c) if !c.is_null(r) => image_bytes(c, r).map(Some).map_err(|e| format!("{name}: {e}")),
        _ => Ok(None),
    }
}

/// The values of an optional list cell (None when the column is absent or the cell null).
fn list(batch: &RecordBatch, name: &str, r: usize) -> Result<Option<ArrayRef>, String> {
    let Some(c) = batch.column_by_name(name) else { return Ok(None) };
    let l = c.as_any().downcast_ref::<ListArray>().ok_or_else(|| format!("column `{name}` is not a list"))?;
    Ok((!l.is_null(r)).then(|| l.value(r)))
}

/// The decoded depth map of row `r` and its side (None without one).
fn pred_depth_map(batch: &RecordBatch, r: usize) -> Result<Option<(Vec<f32>, usize)>, String> {
    let Some(pred) = list(batch, PRED_DEPTH, r)? else { return Ok(None) };
    let pred = pred
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| format!("column `{PRED_DEPTH}` is not a list of float32"))?
        .values()
        .to_vec();
    let side = (pred.len() as f64).sqrt().round() as usize;
    if side == 0 || side * side != pred.len() {
        return Err(format!("predicted depth has {} values, not a square map", pred.len()));
    }
    Ok(Some((pred, side)))
}

/// Row `r` of int32 column `name`.
fn int(batch: &RecordBatch, name: &str, r: usize) -> Result<i64, String> {
    let c = batch.column_by_name(name).ok_or_else(|| format!("column `{name}` is missing"))?;
    let a = c.as_any().downcast_ref::<Int32Array>().ok_or_else(|| format!("column `{name}` is not int32"))?;
    if a.is_null(r) {
        return Err(format!("{name} is null"));
    }
    Ok(i64::from(a.value(r)))
}

/// The int32 values of list column `name` at row `r`.
fn int_list(batch: &RecordBatch, name: &str, r: usize) -> Result<Vec<i64>, String> {
    let values = list(batch, name, r)?.ok_or_else(|| format!("{name} is missing or null"))?;
    let a = values
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| format!("column `{name}` is not a list of int32"))?;
    Ok(a.values().iter().map(|&v| i64::from(v)).collect())
}

/// The marked points of a point-question row: the image size, and each point's pixel and label in letter order.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkedPoints {
    pub width: i64,
    pub height: i64,
    /// (x, y) pixel of each point, inside the image.
    pub points: Vec<(i64, i64)>,
    pub labels: Vec<String>,
}

/// The marked points of row `r` (`width`, `height`, `point_x`, `point_y`, `point_labels`); an error names the
/// column or the point that is wrong.
pub fn marked_points(batch: &RecordBatch, r: usize) -> Result<MarkedPoints, String> {
    let (w, h) = (int(batch, "width", r)?, int(batch, "height", r)?);
    if w <= 0 || h <= 0 {
        return Err(format!("image size {w}x{h}"));
    }
    let (xs, ys) = (int_list(batch, "point_x", r)?, int_list(batch, "point_y", r)?);
    let labels = list(batch, "point_labels", r)?.ok_or("point_labels is missing or null")?;
    let labels = labels.as_any().downcast_ref::<StringArray>().ok_or("column `point_labels` is not a list of utf8")?;
    if xs.len() != labels.len() || ys.len() != labels.len() || labels.is_empty() {
        return Err(format!("{} point labels but {} x and {} y values", labels.len(), xs.len(), ys.len()));
    }
    let labels: Vec<String> = (0..labels.len()).map(|k| labels.value(k).to_string()).collect();
    let points: Vec<(i64, i64)> = xs.into_iter().zip(ys).collect();
    if let Some((k, (x, y))) = points.iter().enumerate().find(|(_, (x, y))| !(0..w).contains(x) || !(0..h).contains(y))
    {
        return Err(format!("point {} at ({x}, {y}) is outside the {w}x{h} image", labels[k]));
    }
    Ok(MarkedPoints { width: w, height: h, points, labels })
}

/// The index of the pixel of a `side` x `side` map that holds the centre of pixel (x, y) of a `w` x `h` image
/// (x, y inside the image).
pub fn map_cell(x: i64, y: i64, w: i64, h: i64, side: i64) -> usize {
    let (col, row) = ((2 * x + 1) * side / (2 * w), (2 * y + 1) * side / (2 * h));
    (row * side + col) as usize
}

/// The label of the marked point the `side` x `side` depth map `map` (+1 = nearest) puts nearest: the largest
/// value at the map pixel under each point's pixel centre.
fn nearest_marked_point(batch: &RecordBatch, r: usize, map: &[f32], side: usize) -> Result<String, String> {
    let MarkedPoints { width: w, height: h, points, labels } = marked_points(batch, r)?;
    let s = side as i64;
    let mut best: Option<(usize, f32)> = None;
    for (k, &(x, y)) in points.iter().enumerate() {
        let v = map[map_cell(x, y, w, h, s)];
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((k, v));
        }
    }
    let (k, _) = best.expect("at least one point");
    Ok(labels[k].clone())
}

fn scale(batch: &RecordBatch, r: usize) -> Result<f32, String> {
    let c = batch.column_by_name("depth_scale").ok_or("column `depth_scale` is missing")?;
    if c.is_null(r) {
        return Err("depth_scale is null".into());
    }
    if let Some(a) = c.as_any().downcast_ref::<Float32Array>() {
        Ok(a.value(r))
    } else if let Some(a) = c.as_any().downcast_ref::<Float64Array>() {
        Ok(a.value(r) as f32)
    } else {
        Err(format!("column `depth_scale` has type {}, expected Float32", c.data_type()))
    }
}

fn decode_mask(what: &str, png: &[u8]) -> Result<(Vec<bool>, usize, usize), String> {
    let (m, w, h) = perceptio_synth::codec::decode_mask(png).map_err(|e| format!("{what}: {e}"))?;
    if w == 0 || h == 0 {
        return Err(format!("{what}: empty mask"));
    }
    Ok((m, w as usize, h as usize))
}

/// The id of row `r`: its `sample_id`, or "row N" (N = `scored`, the rows scored before it) where the column is
/// absent or the cell null; a `sample_id` column that is not utf8 is an error.
fn row_id(batch: &RecordBatch, r: usize, scored: u64) -> Result<String, String> {
    let id = match batch.column_by_name("sample_id") {
        Some(_) => text(batch, "sample_id", r)?.map(str::to_string),
        None => None,
    };
    Ok(id.unwrap_or_else(|| format!("row {scored}")))
}

fn id_seed(seed: u64, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    seed ^ h.finish()
}

impl Scorer {
    /// A scorer whose depth pixel pairs are drawn from `seed` (and each row's id).
    pub fn new(seed: u64) -> Self {
        Self { seed, ..Self::default() }
    }

    /// Scores row `r` of `batch` (an infer output row); Err(reason) when its ground truth cannot be read.
    pub fn add_row(&mut self, batch: &RecordBatch, r: usize) -> Result<(), String> {
        let task = text(batch, "task", r)?.ok_or("task is null")?;
        let generated = text(batch, GENERATED, r)?.unwrap_or("");
        match task {
            "referring" => self.add_referring(batch, r)?,
            "points" => {
                let truth = text(batch, "answer", r)?.ok_or("answer is null")?;
                let n = list(batch, "point_labels", r)?.ok_or("point_labels is missing or null")?.len();
                let n = u32::try_from(n).map_err(|_| format!("{n} point labels"))?;
                // everything is read before anything is counted, so a row that fails counts nowhere
                let with_span = list(batch, super::infer::PRED_DEPTH_CODES, r)?.is_some();
                let from_map = match pred_depth_map(batch, r)? {
                    Some((map, side)) => Some(nearest_marked_point(batch, r, &map, side)?),
                    None => None,
                };
                let id = row_id(batch, r, self.rows)?;
                let correct = self.points.add(n, Some(generated), truth);
                self.point_answers.push(PointAnswer { id, points: n, correct });
                self.points_with_span += u64::from(with_span);
                if let Some(letter) = from_map {
                    self.points_from_map.add(n, Some(&format!("({letter})")), truth);
                    self.points_with_map += 1;
                }
            }
            "depth" => self.add_depth(batch, r)?,
            "vqa" => {
                let truth = text(batch, "answer", r)?.ok_or("answer is null")?;
                // datasets without a `kind` column put every question in one group
                let kind = match batch.column_by_name("kind") {
                    Some(_) => text(batch, "kind", r)?.unwrap_or(""),
                    None => "",
                };
                self.vqa.add_of_kind(kind, Some(generated), truth);
            }
            other => return Err(format!("unknown task `{other}` (expected referring, points, depth or vqa)")),
        }
        self.rows += 1;
        Ok(())
    }

    fn add_referring(&mut self, batch: &RecordBatch, r: usize) -> Result<(), String> {
        let gt_png = bytes(batch, "mask", r)?.ok_or("a referring row without a ground-truth `mask`")?;
        let (gt, gw, gh) = decode_mask("mask", gt_png)?;
        match bytes(batch, PRED_MASK, r)? {
            Some(png) => {
                let (pred, pw, ph) = decode_mask(PRED_MASK, png)?;
                let gt = resize_mask_nearest(&gt, gw, gh, pw, ph);
                self.masks.add(Some(&pred), &gt).map_err(|e| e.to_string())?;
                self.answered.add(Some(&pred), &gt).map_err(|e| e.to_string())?;
                if self.mask_size.is_none() {
                    self.mask_size = Some((pw, ph));
                    for (m, w, h) in std::mem::take(&mut self.pending) {
                        let m = resize_mask_nearest(&m, w, h, pw, ph);
                        self.masks.add(None, &m).map_err(|e| e.to_string())?;
                    }
                }
            }
            None => match self.mask_size {
                Some((pw, ph)) => {
                    let gt = resize_mask_nearest(&gt, gw, gh, pw, ph);
                    self.masks.add(None, &gt).map_err(|e| e.to_string())?;
                }
                None => self.pending.push((gt, gw, gh)),
            },
        }
        Ok(())
    }

    fn add_depth(&mut self, batch: &RecordBatch, r: usize) -> Result<(), String> {
        let Some((pred, side)) = pred_depth_map(batch, r)? else {
            self.depth.samples += 1;
            self.depth.missing += 1;
            return Ok(());
        };
        let png = bytes(batch, "depth", r)?.ok_or("a depth row without a ground-truth `depth`")?;
        let gt = depth_target_from_png(png, scale(batch, r)?, side).map_err(|e| format!("depth: {e}"))?;
        let id = row_id(batch, r, self.rows)?;
        let x = depth_numbers(&pred, &gt, id_seed(self.seed, &id))?;
        self.depth.samples += 1;
        add(&mut self.depth.mse, Some(x.mse));
        add(&mut self.depth.abs_rel, x.abs_rel);
        add(&mut self.depth.delta1, x.delta1);
        add(&mut self.depth.order, x.order);
        self.depth.gt_moments.add(&gt);
        self.depth.pred_moments.add(&pred);
        Ok(())
    }

    /// Scores every row of `batch`; returns the rows that failed (row index, reason).
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Vec<(usize, String)> {
        (0..batch.num_rows()).filter_map(|r| self.add_row(batch, r).err().map(|e| (r, e))).collect()
    }

    /// The table of everything scored so far.
    pub fn table(&self) -> EvalTable {
        // misses seen before any predicted mask are scored at their own size
        let mut masks = self.masks.clone();
        for (m, _, _) in &self.pending {
            let _ = masks.add(None, m);
        }
        let referring = ReferringScore {
            samples: masks.samples,
            missing: masks.missing,
            intersection: masks.intersection,
            union: masks.union,
            ciou: (masks.samples > 0).then(|| masks.ciou()),
            ciou_answered: (self.answered.samples > 0).then(|| self.answered.ciou()),
            mean_iou: (masks.samples > 0).then(|| masks.mean_iou()),
            precision_at_half: (masks.samples > 0).then(|| masks.precision_at_half()),
            mean_mask_area: masks.mean_predicted_area(),
            mean_target_area: masks.mean_target_area(),
        };
        let by_points: Vec<PointsAccuracy> = self
            .points
            .by_points
            .iter()
            .map(|(&points, &(correct, total))| PointsAccuracy {
                points,
                correct,
                total,
                accuracy: ratio(correct, total).unwrap_or(0.0),
            })
            .collect();
        let most_common = self.points.most_common_answer();
        let points = PointsScore {
            samples: by_points.iter().map(|p| p.total).sum(),
            with_depth_span: self.points_with_span,
            average: self.points.average(),
            with_depth_map: self.points_with_map,
            from_depth_map: self.points_from_map.average(),
            most_common_answer: most_common.map(|(c, _)| match c {
                Some(c) => format!("({c})"),
                None => "no letter".to_string(),
            }),
            most_common_count: most_common.map_or(0, |(_, n)| n),
            constant_answer_average: self.points.constant_answer_average(),
            answers: self.point_answers.clone(),
            by_points,
        };
        let d = &self.depth;
        let depth = DepthScore {
            samples: d.samples,
            missing: d.missing,
            mse: mean(d.mse),
            abs_rel: mean(d.abs_rel),
            delta1: mean(d.delta1),
            order_accuracy: mean(d.order),
            blind_mse: d.gt_moments.mean_variance(),
            prediction_spread: d.pred_moments.mean_variance(),
        };
        let v = &self.vqa;
        let vqa = VqaScore {
            samples: v.total,
            exact: v.exact,
            normalized: v.normalized,
            accuracy: ratio(v.normalized, v.total),
            exact_accuracy: ratio(v.exact, v.total),
            constant_answer_accuracy: v.constant_answer_accuracy(),
            repeated_answers: v.repeated_answers(),
            by_kind: v
                .by_kind()
                .into_iter()
                .filter(|k| !k.kind.is_empty())
                .map(|k| VqaKindScore {
                    accuracy: ratio(k.right, k.questions),
                    constant_answer_accuracy: ratio(k.constant_right, k.questions),
                    samples: k.questions,
                    most_common_answer: k.most_common,
                    most_common_count: k.most_common_count,
                    kind: k.kind,
                })
                .collect(),
        };
        EvalTable { rows: self.rows, referring, points, depth, vqa }
    }
}

/// Params of `perceptio-score`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// Write the table here as JSON at the end (atomically).
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Seed of the depth pixel pairs.
    #[serde(default)]
    pub seed: u64,
}

pub struct PerceptioScoreKind;

impl NodeKind for PerceptioScoreKind {
    fn name(&self) -> &'static str {
        "perceptio-score"
    }

    fn about(&self) -> &'static str {
        "score perceptio-infer rows per task (cIoU, point accuracy, depth errors, VQA) and write the table as JSON"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ScoreParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ScoreParams = parse_params(ctx.params)?;
        let input = PortSchema::default()
            .with_field(FieldSpec::any("task"))
            .with_field(FieldSpec::any("answer"))
            .with_field(FieldSpec::new(GENERATED, DataType::Utf8))
            .with_field(FieldSpec::any(PRED_MASK))
            .with_field(FieldSpec::any(PRED_DEPTH));
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![PortDecl::optional(ERROR_PORT, error_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let params: ScoreParams = parse_params(ctx.params)?;
        Ok(NodeImpl::Node(Box::new(PerceptioScore::new(params))))
    }
}

/// The running node.
pub struct PerceptioScore {
    params: ScoreParams,
    scorer: Scorer,
}

impl PerceptioScore {
    pub fn new(params: ScoreParams) -> Self {
        let scorer = Scorer::new(params.seed);
        Self { params, scorer }
    }

    /// The table so far.
    pub fn table(&self) -> EvalTable {
        self.scorer.table()
    }
}

impl Node for PerceptioScore {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let batch = frame.batch();
        let failed = self.scorer.add_batch(batch);
        if !failed.is_empty() {
            let ids = batch.column_by_name("sample_id");
            let (ids, reasons): (Vec<String>, Vec<String>) = failed
                .into_iter()
                .map(|(r, reason)| {
                    let id = ids
                        .and_then(|c| arrow::util::display::array_value_to_string(c, r).ok())
                        .unwrap_or_else(|| format!("row {r} of frame"));
                    (id, reason)
                })
                .unzip();
            out.reject(ids, reasons)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let table = self.scorer.table();
        if let Some(path) = &self.params.out {
            table.write_json(path).map_err(|e| NodeError::msg(e.to_string()))?;
        }
        tracing::info!(node = out.node_id(), rows = table.rows, "evaluation\n{}", table.markdown());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_resize_keeps_blocks() {
        // 2x2 -> 4x4: each source pixel becomes a 2x2 block
        let m = [true, false, false, true];
        let r = resize_mask_nearest(&m, 2, 2, 4, 4);
        assert_eq!(r.iter().filter(|&&v| v).count(), 8);
        assert!(r[0] && r[1] && r[4] && r[5] && !r[2] && r[15]);
        // 4x4 -> 2x2 samples pixel centres (1, 1) -> (1, 1) of the 4x4 grid
        let back = resize_mask_nearest(&r, 4, 4, 2, 2);
        assert_eq!(back, m.to_vec());
    }

    #[test]
    fn perfect_depth_has_zero_error_and_full_order() {
        let gt: Vec<f32> = (0..64).map(|i| -1.0 + 2.0 * i as f32 / 63.0).collect();
        let x = depth_numbers(&gt, &gt, 1).unwrap();
        assert!(x.mse.abs() < 1e-12);
        assert!(x.abs_rel.unwrap().abs() < 1e-6 && (x.delta1.unwrap() - 1.0).abs() < 1e-9);
        assert!((x.order.unwrap() - 1.0).abs() < 1e-9);
        // half the scale: median scaling undoes it; MSE sees it
        let half: Vec<f32> = gt.iter().map(|&v| (v + 1.0) / 2.0 - 1.0).collect();
        let y = depth_numbers(&half, &gt, 1).unwrap();
        assert!(y.abs_rel.unwrap() < 1e-6 && (y.order.unwrap() - 1.0).abs() < 1e-9);
        assert!(y.mse > 0.1);
        // a reversed map orders every pair wrongly; its MSE is the mean of (2 g)^2
        let rev: Vec<f32> = gt.iter().map(|v| -v).collect();
        let z = depth_numbers(&rev, &gt, 1).unwrap();
        let expect = gt.iter().map(|&g| 4.0 * (g as f64).powi(2)).sum::<f64>() / 64.0;
        assert!((z.mse - expect).abs() < 1e-6, "{} vs {expect}", z.mse);
        assert!(z.order.unwrap() < 1e-9);
    }

    fn scored(answers: &[(&str, u32, bool)]) -> PointsScore {
        let answers =
            answers.iter().map(|&(id, points, correct)| PointAnswer { id: id.to_string(), points, correct }).collect();
        PointsScore { answers, ..PointsScore::default() }
    }

    #[test]
    fn point_answers_pair_by_id_and_refuse_different_questions() {
        let full = scored(&[("q1", 3, true), ("q2", 4, false), ("q3", 5, true)]);
        let ablation = scored(&[("q3", 5, false), ("q1", 3, true), ("q2", 4, true)]);
        let pairs = full.paired_with(&ablation).unwrap();
        let flat: Vec<(u32, bool, bool)> = pairs.iter().map(|p| (p.points, p.first_right, p.second_right)).collect();
        assert_eq!(flat, vec![(3, true, true), (4, false, true), (5, true, false)]);

        let missing = full.paired_with(&scored(&[("q1", 3, true), ("q2", 4, true), ("q9", 5, true)])).unwrap_err();
        assert!(missing.contains("question `q3` was answered by one model only"), "{missing}");
        let fewer = full.paired_with(&scored(&[("q1", 3, true)])).unwrap_err();
        assert!(fewer.contains("3 answers against 1"), "{fewer}");
        let count = full.paired_with(&scored(&[("q1", 4, true), ("q2", 4, true), ("q3", 5, true)])).unwrap_err();
        assert!(count.contains("question `q1` has 3 points, then 4"), "{count}");
        let repeated = scored(&[("q1", 3, true), ("q1", 3, true), ("q3", 5, true)]);
        assert!(full.paired_with(&repeated).unwrap_err().contains("ids repeat"));
        assert!(repeated.paired_with(&full).unwrap_err().contains("ids repeat"));
    }
}
