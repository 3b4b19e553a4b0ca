//! Evaluation metrics other crates use: referring segmentation (cIoU = sum of intersections / sum of unions, a
//! missing prediction counting as an empty mask; mean IoU; precision@0.5), point-question accuracy per point
//! count, exact-match and normalised answer accuracy, and depth errors (AbsRel, delta < 1.25, relative-order
//! accuracy on pixel pairs).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::SynthError;

fn same_len(what: &str, a: usize, b: usize) -> Result<(), SynthError> {
    if a == b {
        Ok(())
    } else {
        Err(SynthError::Invalid { what: what.to_string(), message: format!("prediction has {a} pixels, truth {b}") })
    }
}

/// Intersection and union pixel counts; a missing prediction is an empty mask.
pub fn intersection_union(pred: Option<&[bool]>, gt: &[bool]) -> Result<(u64, u64), SynthError> {
    match pred {
        None => Ok((0, gt.iter().filter(|&&g| g).count() as u64)),
        Some(p) => {
            same_len("mask", p.len(), gt.len())?;
            let (mut i, mut u) = (0u64, 0u64);
            for (&a, &b) in p.iter().zip(gt) {
                i += u64::from(a && b);
                u += u64::from(a || b);
            }
            Ok((i, u))
        }
    }
}

/// Referring-segmentation accumulator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaskMetrics {
    pub intersection: u64,
    pub union: u64,
    pub samples: u64,
    /// Samples without a prediction (counted as empty masks).
    pub missing: u64,
    iou_sum: f64,
    at_half: u64,
    /// Sums of the share of the image each predicted mask (answered samples) and each target (all samples) covers.
    pred_area_sum: f64,
    gt_area_sum: f64,
}

impl MaskMetrics {
    /// Add one sample; returns its IoU (1 when both masks are empty).
    pub fn add(&mut self, pred: Option<&[bool]>, gt: &[bool]) -> Result<f64, SynthError> {
        let (i, u) = intersection_union(pred, gt)?;
        let iou = if u == 0 { 1.0 } else { i as f64 / u as f64 };
        if !gt.is_empty() {
            let target = gt.iter().filter(|&&g| g).count() as u64;
            // |pred| = |pred or gt| + |pred and gt| - |gt|, so the prediction needs no second pass
            let predicted = if pred.is_some() { u + i - target } else { 0 };
            self.pred_area_sum += predicted as f64 / gt.len() as f64;
            self.gt_area_sum += target as f64 / gt.len() as f64;
        }
        self.intersection += i;
        self.union += u;
        self.samples += 1;
        self.missing += u64::from(pred.is_none());
        self.iou_sum += iou;
        self.at_half += u64::from(iou >= 0.5);
        Ok(iou)
    }
    /// Sum of intersections over sum of unions.
    pub fn ciou(&self) -> f64 {
        if self.union == 0 { 0.0 } else { self.intersection as f64 / self.union as f64 }
    }
    pub fn mean_iou(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { self.iou_sum / self.samples as f64 }
    }
    /// Share of samples with IoU >= 0.5.
    pub fn precision_at_half(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { self.at_half as f64 / self.samples as f64 }
    }
    /// Mean share of the image a predicted mask covers, over the samples with a prediction (None without any).
    pub fn mean_predicted_area(&self) -> Option<f64> {
        let answered = self.samples - self.missing;
        (answered > 0).then(|| self.pred_area_sum / answered as f64)
    }
    /// Mean share of the image a target mask covers (None before any sample).
    pub fn mean_target_area(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.gt_area_sum / self.samples as f64)
    }
}

/// The letter a point-question answer names: the first "(X)", else the first standalone letter A-E.
pub fn extract_choice(text: &str) -> Option<char> {
    let b: Vec<char> = text.chars().collect();
    for w in b.windows(3) {
        if w[0] == '(' && w[2] == ')' && w[1].is_ascii_alphabetic() {
            return Some(w[1].to_ascii_uppercase());
        }
    }
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|t| t.len() == 1 && ('A'..='E').contains(&t.chars().next().unwrap_or(' ')))
        .and_then(|t| t.chars().next())
}

/// The commonest key of a histogram with its count: on a tie the first in key order (None when it is empty).
fn most_common<K>(counts: &BTreeMap<K, u64>) -> Option<(&K, u64)> {
    // iteration is in key order and max_by_key keeps the last maximum, so walk it backwards
    counts.iter().rev().max_by_key(|(_, n)| **n).map(|(k, n)| (k, *n))
}

/// The largest count in a histogram (0 when it is empty).
fn largest<K>(counts: &BTreeMap<K, u64>) -> u64 {
    most_common(counts).map_or(0, |(_, n)| n)
}

/// Point-question accuracy per number of points, and how the answers and the truths spread over the letters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PointMetrics {
    /// points -> (correct, total)
    pub by_points: BTreeMap<u32, (u64, u64)>,
    /// The letters answered, over every count (None: no letter in the answer).
    pub answered: BTreeMap<Option<char>, u64>,
    /// points -> true letter -> questions.
    pub truths: BTreeMap<u32, BTreeMap<char, u64>>,
}

impl PointMetrics {
    /// Add one question with `n_points`; `pred` is the model's text (None = no answer, counted wrong).
    pub fn add(&mut self, n_points: u32, pred: Option<&str>, truth: &str) -> bool {
        let (pred, truth) = (pred.and_then(extract_choice), extract_choice(truth));
        let ok = match (pred, truth) {
            (Some(p), Some(t)) => p == t,
            _ => false,
        };
        let e = self.by_points.entry(n_points).or_insert((0, 0));
        e.0 += u64::from(ok);
        e.1 += 1;
        *self.answered.entry(pred).or_insert(0) += 1;
        if let Some(t) = truth {
            *self.truths.entry(n_points).or_default().entry(t).or_insert(0) += 1;
        }
        ok
    }
    /// The letter answered most often (None: answers without a letter), with its number of questions. Ties go to
    /// the first in key order: no letter, then A to E. None before any question.
    pub fn most_common_answer(&self) -> Option<(Option<char>, u64)> {
        most_common(&self.answered).map(|(c, n)| (*c, n))
    }
    /// The average accuracy of the best answer that ignores the image: for each count, the letter that is right
    /// most often among these questions, always given. It is what a model that learned only the letter
    /// frequencies (and the count, from the image) would score.
    pub fn constant_answer_average(&self) -> Option<f64> {
        let accs: Vec<f64> = self
            .by_points
            .iter()
            .filter(|(_, (_, total))| *total > 0)
            .map(|(n, (_, total))| {
                let best = self.truths.get(n).map_or(0, largest);
                best as f64 / *total as f64
            })
            .collect();
        (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
    }
    pub fn accuracy(&self, n_points: u32) -> Option<f64> {
        self.by_points.get(&n_points).filter(|(_, t)| *t > 0).map(|(c, t)| *c as f64 / *t as f64)
    }
    /// Mean of the per-count accuracies (the HardBLINK average).
    pub fn average(&self) -> Option<f64> {
        let accs: Vec<f64> = self.by_points.keys().filter_map(|&n| self.accuracy(n)).collect();
        (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
    }
}

const NUMBERS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

/// VQA-style normalisation: lower case, punctuation dropped, articles dropped, number words to digits, single
/// spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let cleaned: String =
        lower.chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| NUMBERS.iter().position(|n| *n == w).map_or_else(|| w.to_string(), |k| k.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact-match and normalised answer accuracy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnswerMetrics {
    pub exact: u64,
    pub normalized: u64,
    pub total: u64,
    /// Question kind -> normalised true answer -> questions.
    pub truths: BTreeMap<String, BTreeMap<String, u64>>,
    /// Question kind -> normalised answer given (None: no answer) -> questions.
    pub answered: BTreeMap<String, BTreeMap<Option<String>, u64>>,
    /// Question kind -> questions answered right (normalised).
    pub right: BTreeMap<String, u64>,
}

/// The answers to one kind of question.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindAnswers {
    pub kind: String,
    pub questions: u64,
    /// Answered right (normalised).
    pub right: u64,
    /// Questions whose true answer is the commonest one of the kind: what always giving it scores.
    pub constant_right: u64,
    /// The answer given most often (None: no answer; ties: the first in order) and how often.
    pub most_common: Option<String>,
    pub most_common_count: u64,
}

impl AnswerMetrics {
    /// Add one answer (None = no answer, wrong under both measures).
    pub fn add(&mut self, pred: Option<&str>, truth: &str) {
        self.add_of_kind("", pred, truth);
    }
    /// Add one answer to a question of `kind` (colour, shape, count, ...; the kinds only group the answers).
    pub fn add_of_kind(&mut self, kind: &str, pred: Option<&str>, truth: &str) {
        self.total += 1;
        if let Some(p) = pred {
            self.exact += u64::from(p.trim() == truth.trim());
            let right = normalize_answer(p) == normalize_answer(truth);
            self.normalized += u64::from(right);
            *self.right.entry(kind.to_string()).or_insert(0) += u64::from(right);
        }
        *self.truths.entry(kind.to_string()).or_default().entry(normalize_answer(truth)).or_insert(0) += 1;
        *self.answered.entry(kind.to_string()).or_default().entry(pred.map(normalize_answer)).or_insert(0) += 1;
    }
    /// The normalised accuracy of the best answers that ignore the image: per question kind, the true answer
    /// most common among these questions, always given. None before any question.
    pub fn constant_answer_accuracy(&self) -> Option<f64> {
        let best: u64 = self.truths.values().map(largest).sum();
        (self.total > 0).then(|| best as f64 / self.total as f64)
    }
    /// How many answers repeat the answer given most often to their question kind: `total` when every kind
    /// always gets the same answer.
    pub fn repeated_answers(&self) -> u64 {
        self.answered.values().map(largest).sum()
    }
    /// Per question kind (in order): questions, right answers, the constant answer's score and the commonest
    /// answer given.
    pub fn by_kind(&self) -> Vec<KindAnswers> {
        self.truths
            .iter()
            .map(|(kind, truths)| {
                let most = self.answered.get(kind).and_then(most_common);
                KindAnswers {
                    kind: kind.clone(),
                    questions: truths.values().sum(),
                    right: self.right.get(kind).copied().unwrap_or(0),
                    constant_right: largest(truths),
                    most_common: most.and_then(|(k, _)| k.clone()),
                    most_common_count: most.map_or(0, |(_, n)| n),
                }
            })
            .collect()
    }
    pub fn exact_accuracy(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.exact as f64 / self.total as f64 }
    }
    pub fn normalized_accuracy(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.normalized as f64 / self.total as f64 }
    }
}

fn valid(d: f32) -> bool {
    d.is_finite() && d > 0.0
}

/// Mean |pred - gt| / gt over pixels where both are finite and positive; None if there are none.
pub fn abs_rel(pred: &[f32], gt: &[f32]) -> Result<Option<f64>, SynthError> {
    same_len("depth", pred.len(), gt.len())?;
    let (mut sum, mut n) = (0f64, 0u64);
    for (&p, &g) in pred.iter().zip(gt) {
        if valid(p) && valid(g) {
            sum += ((p - g).abs() / g) as f64;
            n += 1;
        }
    }
    Ok((n > 0).then(|| sum / n as f64))
}

/// Share of valid pixels with max(pred/gt, gt/pred) < `threshold` (1.25 for delta_1).
pub fn delta_accuracy(pred: &[f32], gt: &[f32], threshold: f32) -> Result<Option<f64>, SynthError> {
    same_len("depth", pred.len(), gt.len())?;
    let (mut ok, mut n) = (0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gt) {
        if valid(p) && valid(g) {
            ok += u64::from((p / g).max(g / p) < threshold);
            n += 1;
        }
    }
    Ok((n > 0).then(|| ok as f64 / n as f64))
}

/// The factor that matches the prediction's median to the truth's (for scale-free predictions).
pub fn median_scale(pred: &[f32], gt: &[f32]) -> Option<f32> {
    let med = |v: &[f32]| {
        let mut s: Vec<f32> = v.iter().copied().filter(|&d| valid(d)).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f32::total_cmp);
        Some(s[s.len() / 2])
    };
    Some(med(gt)? / med(pred)?)
}

/// `count` pixel-index pairs drawn with `seed` from `n_pixels` pixels (never a pixel with itself).
pub fn sample_pairs(n_pixels: usize, count: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if n_pixels < 2 {
        return Vec::new();
    }
    (0..count)
        .map(|_| {
            let a = rng.random_range(0..n_pixels);
            let mut b = rng.random_range(0..n_pixels - 1);
            if b >= a {
                b += 1;
            }
            (a, b)
        })
        .collect()
}

/// Share of pairs whose predicted depth order matches the true order. Pairs whose true depths differ by less
/// than the ratio `tie_ratio` (e.g. 1.02), or with an invalid depth, are skipped; a predicted tie is wrong.
pub fn relative_order_accuracy(
    pred: &[f32],
    gt: &[f32],
    pairs: &[(usize, usize)],
    tie_ratio: f32,
) -> Result<Option<f64>, SynthError> {
    same_len("depth", pred.len(), gt.len())?;
    let (mut ok, mut n) = (0u64, 0u64);
    for &(a, b) in pairs {
        let (Some(&ga), Some(&gb), Some(&pa), Some(&pb)) = (gt.get(a), gt.get(b), pred.get(a), pred.get(b)) else {
            return Err(SynthError::Invalid { what: "pixel pair".into(), message: format!("({a}, {b}) out of range") });
        };
        if !valid(ga) || !valid(gb) || ga.max(gb) < tie_ratio * ga.min(gb) {
            continue;
        }
        n += 1;
        ok += u64::from(pa.is_finite() && pb.is_finite() && (pa < pb) == (ga < gb) && pa != pb);
    }
    Ok((n > 0).then(|| ok as f64 / n as f64))
}

/// Per-image depth metrics averaged over images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DepthMetrics {
    pub images: u64,
    abs_rel_sum: f64,
    delta_sum: f64,
    order_sum: f64,
    order_images: u64,
}

impl DepthMetrics {
    /// Add one image (pairs for the order accuracy are drawn with `pair_seed`; 1000 pairs, ties within 2%).
    pub fn add(&mut self, pred: &[f32], gt: &[f32], pair_seed: u64) -> Result<(), SynthError> {
        let (Some(ar), Some(d1)) = (abs_rel(pred, gt)?, delta_accuracy(pred, gt, 1.25)?) else {
            return Err(SynthError::Invalid { what: "depth".into(), message: "no valid pixels".into() });
        };
        self.images += 1;
        self.abs_rel_sum += ar;
        self.delta_sum += d1;
        let pairs = sample_pairs(gt.len(), 1000, pair_seed);
        if let Some(o) = relative_order_accuracy(pred, gt, &pairs, 1.02)? {
            self.order_sum += o;
            self.order_images += 1;
        }
        Ok(())
    }
    pub fn abs_rel(&self) -> f64 {
        if self.images == 0 { 0.0 } else { self.abs_rel_sum / self.images as f64 }
    }
    pub fn delta1(&self) -> f64 {
        if self.images == 0 { 0.0 } else { self.delta_sum / self.images as f64 }
    }
    pub fn order_accuracy(&self) -> f64 {
        if self.order_images == 0 { 0.0 } else { self.order_sum / self.order_images as f64 }
    }
}

/// Per-pixel sums over maps of one side, for their mean per-pixel (population) variance across maps: how much the
/// maps differ from image to image, and the MSE of the best constant map (their per-pixel mean).
#[derive(Debug, Clone, Default)]
pub struct MapMoments {
    maps: u64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    /// A map of another size was seen: no variance.
    mixed: bool,
}

impl MapMoments {
    /// Adds one map (a map of another size than the first makes the variance undefined).
    pub fn add(&mut self, map: &[f32]) {
        if self.maps == 0 {
            self.sum = vec![0.0; map.len()];
            self.sum_sq = vec![0.0; map.len()];
        } else if map.len() != self.sum.len() {
            self.mixed = true;
            return;
        }
        for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(map) {
            *s += v as f64;
            *q += (v as f64).powi(2);
        }
        self.maps += 1;
    }

    /// Mean over pixels of the population variance across maps (None without maps or with mixed sizes).
    pub fn mean_variance(&self) -> Option<f64> {
        if self.maps == 0 || self.mixed || self.sum.is_empty() {
            return None;
        }
        let n = self.maps as f64;
        let total: f64 = self.sum.iter().zip(&self.sum_sq).map(|(&s, &q)| (q / n - (s / n).powi(2)).max(0.0)).sum();
        Some(total / self.sum.len() as f64)
    }
}
