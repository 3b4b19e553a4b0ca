//! Every Perceptio loss term as a plain function over the LLM logits `[B, S, V]` of a right-padded
//! [`TokenBatch`] (logits at position `t` predict `ids[t + 1]`), the mask logits and the depth maps, plus the
//! weighted total ([`LossTerms::total`]) and its host read-back ([`LossValues`]). Index lists are built on the
//! host and applied with `select`/`gather` on device, so every term is differentiable on autodiff tensors.
//! A term that has nothing to supervise in a batch is `None`, never NaN.

use burn::config::Config;
use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Int, Tensor, TensorData};

use super::layout::{Sequence, SpecialTokens, TokenBatch};

/// Every loss weight and switch (defaults from the spec: all weights 1.0 except Dice 0.25, N = 100).
#[derive(Config, Debug, PartialEq)]
pub struct LossConfig {
    /// Weight of the next-token cross-entropy on text answer tokens.
    #[config(default = 1.0)]
    pub llm: f64,
    /// `w_seg`: multiplies `seg_bce * bce + seg_dice * dice + seg_ground * ground`.
    #[config(default = 1.0)]
    pub seg: f64,
    /// Weight of the per-pixel sigmoid cross-entropy inside the segmentation loss.
    #[config(default = 1.0)]
    pub seg_bce: f64,
    /// Weight of the Dice loss inside the segmentation loss.
    #[config(default = 0.25)]
    pub seg_dice: f64,
    /// Weight of the grounding-map cross-entropy inside the segmentation loss (models with `seg_grounding` only).
    #[config(default = 1.0)]
    pub seg_ground: f64,
    /// `a`: weight of the `<d_start>`/`<d_end>` marker cross-entropy.
    #[config(default = 1.0)]
    pub marker: f64,
    /// `b`: weight of the code-token cross-entropy inside the span.
    #[config(default = 1.0)]
    pub token: f64,
    /// `c`: weight of the span-length penalty.
    #[config(default = 1.0)]
    pub count: f64,
    /// `w_rec`: weight of the soft depth reconstruction MSE.
    #[config(default = 1.0)]
    pub rec: f64,
    /// N, the number of codes in a depth span.
    #[config(default = 100)]
    pub span_len: usize,
}

/// The terms of one batch (`None` = not present in this batch or switched off).
#[derive(Debug, Clone, Default)]
pub struct LossTerms {
    pub llm: Option<Tensor<1>>,
    pub seg_bce: Option<Tensor<1>>,
    pub seg_dice: Option<Tensor<1>>,
    pub seg_ground: Option<Tensor<1>>,
    pub marker: Option<Tensor<1>>,
    pub token: Option<Tensor<1>>,
    pub count: Option<Tensor<1>>,
    pub rec: Option<Tensor<1>>,
}

/// Host copies of the terms (`None` = absent) and the weighted total (0.0 when every term is absent), for logs
/// and progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossValues {
    pub total: f64,
    pub llm: Option<f64>,
    pub seg_bce: Option<f64>,
    pub seg_dice: Option<f64>,
    pub seg_ground: Option<f64>,
    pub marker: Option<f64>,
    pub token: Option<f64>,
    pub count: Option<f64>,
    pub rec: Option<f64>,
}

impl LossTerms {
    /// Each term with its effective weight, in a fixed order.
    fn weighted(&self, cfg: &LossConfig) -> [(&Option<Tensor<1>>, f64); 8] {
        [
            (&self.llm, cfg.llm),
            (&self.seg_bce, cfg.seg * cfg.seg_bce),
            (&self.seg_dice, cfg.seg * cfg.seg_dice),
            (&self.seg_ground, cfg.seg * cfg.seg_ground),
            (&self.marker, cfg.marker),
            (&self.token, cfg.token),
            (&self.count, cfg.count),
            (&self.rec, cfg.rec),
        ]
    }

    /// `total = llm*L_llm + seg*(seg_bce*L_bce + seg_dice*L_dice + seg_ground*L_ground) + marker*L_marker
    /// + token*L_token + count*L_count + rec*L_rec`. Absent terms and terms whose effective weight is 0 contribute nothing.
    /// `None` when no term contributes.
    pub fn total(&self, cfg: &LossConfig) -> Option<Tensor<1>> {
        self.weighted(cfg)
            .into_iter()
            .filter(|(_, w)| *w != 0.0)
            .filter_map(|(term, w)| term.clone().map(|t| t.mul_scalar(w))) // [1]
            .reduce(|a, b| a + b) // [1]
    }

    /// Reads every term back to the host (one sync per term); `total` is the same weighted sum on the host.
    pub fn values(&self, cfg: &LossConfig) -> LossValues {
        let read = |t: &Option<Tensor<1>>| t.clone().map(|t| t.into_scalar::<f32>() as f64);
        let mut v = LossValues {
            total: 0.0,
            llm: read(&self.llm),
            seg_bce: read(&self.seg_bce),
            seg_dice: read(&self.seg_dice),
            seg_ground: read(&self.seg_ground),
            marker: read(&self.marker),
            token: read(&self.token),
            count: read(&self.count),
            rec: read(&self.rec),
        };
        let weights = self.weighted(cfg).map(|(_, w)| w);
        let host = v.terms().map(|(_, x)| x);
        v.total = host.iter().zip(weights).filter(|(_, w)| *w != 0.0).filter_map(|(x, w)| x.map(|x| x * w)).sum();
        v
    }
}

/// The names of the loss terms, in the order of [`LossValues::terms`] (and of the weights in the total).
pub const TERM_NAMES: [&str; 8] = ["llm", "seg_bce", "seg_dice", "seg_ground", "marker", "token", "count", "rec"];

impl LossValues {
    /// Every term with its name ([`TERM_NAMES`] order), for logs and metrics rows.
    pub fn terms(&self) -> [(&'static str, Option<f64>); 8] {
        let values =
            [self.llm, self.seg_bce, self.seg_dice, self.seg_ground, self.marker, self.token, self.count, self.rec];
        std::array::from_fn(|i| (TERM_NAMES[i], values[i]))
    }
}

/// Host-side list of logit rows (`b * S + t` in the flattened `[B*S, V]` logits) and their target ids.
#[derive(Debug, Default)]
struct Picks {
    rows: Vec<i64>,
    targets: Vec<i64>,
}

impl Picks {
    /// Adds the position predicting `ids[u]` of sample `b` (i.e. logits row `t = u - 1`). Positions outside the
    /// logits and targets outside the vocabulary (an inconsistent batch) are skipped.
    fn push_target(&mut self, dims: [usize; 3], b: usize, seq: &Sequence, u: usize) {
        let [bsz, s, v] = dims;
        let Some(&id) = seq.ids.get(u) else { return };
        debug_assert!(b < bsz && u >= 1 && u - 1 < s && (id as usize) < v, "batch does not match the logits");
        if b < bsz && u >= 1 && u - 1 < s && (id as usize) < v {
            self.rows.push((b * s + u - 1) as i64);
            self.targets.push(id as i64);
        }
    }
}

/// Rows `rows` of the flattened logits: `[M, V]`.
fn select_rows(logits: Tensor<3>, rows: Vec<i64>) -> Tensor<2> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let m = rows.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device); // [M]
    logits.reshape([b * s, v]).select(0, index) // [M, V]
}

/// Mean negative log-likelihood of `picks.targets` at `picks.rows`; `None` when empty.
fn mean_nll(logits: Tensor<3>, picks: Picks) -> Option<Tensor<1>> {
    let m = picks.rows.len();
    if m == 0 {
        return None;
    }
    let device = logits.device();
    let logp = log_softmax(select_rows(logits, picks.rows), 1); // [M, V]
    let targets = Tensor::<2, Int>::from_data(TensorData::new(picks.targets, [m, 1]), &device); // [M, 1]
    Some(logp.gather(1, targets).neg().mean()) // [1]
}

/// Next-token cross-entropy on the text answer:
/// `L_llm = -1/|T| * sum_{(b,t) in T} log softmax(logits[b, t])[ids[b][t+1]]`, where `T` holds the positions whose
/// target `u = t + 1` is an answer token (`prompt_len <= u < len`) outside the depth span (`<d_start>`, the
/// interior and `<d_end>` are excluded; `[SEG]`, text and the final `<|im_end|>` are included). Padding never
/// counts. `None` when no sample has such a token.
pub fn text_ce(logits: Tensor<3>, batch: &TokenBatch, _sp: &SpecialTokens) -> Option<Tensor<1>> {
    let dims = logits.dims();
    let mut picks = Picks::default();
    for (b, seq) in batch.seqs.iter().enumerate() {
        let span = seq.depth_start.map(|s| s..=seq.depth_end.unwrap_or(seq.len().saturating_sub(1)));
        for u in seq.prompt_len.max(1)..seq.len() {
            if !span.as_ref().is_some_and(|r| r.contains(&u)) {
                picks.push_target(dims, b, seq, u);
            }
        }
    }
    mean_nll(logits, picks)
}

/// Marker cross-entropy: `L_marker = -1/|T| * sum log softmax(logits[b, t])[ids[b][t+1]]` over the positions
/// predicting `<d_start>` and `<d_end>`, counted only for samples that contain both markers. `None` when no
/// sample has a closed span.
pub fn marker_ce(logits: Tensor<3>, batch: &TokenBatch, _sp: &SpecialTokens) -> Option<Tensor<1>> {
    let dims = logits.dims();
    let mut picks = Picks::default();
    for (b, seq) in batch.seqs.iter().enumerate() {
        if let (Some(s), Some(e)) = (seq.depth_start, seq.depth_end) {
            picks.push_target(dims, b, seq, s);
            picks.push_target(dims, b, seq, e);
        }
    }
    mean_nll(logits, picks)
}

/// Code-token cross-entropy: `L_token = -1/|T| * sum log softmax(logits[b, t])[ids[b][t+1]]` over the positions
/// predicting the span interior (the teacher's codes), for every sample with a `<d_start>` (closed or not, any
/// interior length). `None` when no sample has an interior token.
pub fn code_ce(logits: Tensor<3>, batch: &TokenBatch, _sp: &SpecialTokens) -> Option<Tensor<1>> {
    let dims = logits.dims();
    let mut picks = Picks::default();
    for (b, seq) in batch.seqs.iter().enumerate() {
        for u in seq.depth_interior() {
            picks.push_target(dims, b, seq, u);
        }
    }
    mean_nll(logits, picks)
}

/// Span-length penalty. For each sample with `<d_start>` at index `s` and interior length `L`:
/// `p_j = softmax(logits[b, s + j])[<d_end>]` for `j = 0..L` (closing the span instead of emitting interior token
/// `j`), survival `q_j = prod_{i <= j} (1 - p_i)`, expected interior length `E = sum_j q_j`,
/// `loss_b = ((E - n) / n)^2`; the result is the mean over those samples (`L = 0` gives 1).
/// The product is `exp(cumsum(log(max(1 - p, 1e-12))))` on device. `None` when no sample has a `<d_start>`,
/// when `n == 0` or when `<d_end>` lies outside the vocabulary.
pub fn count_penalty(logits: Tensor<3>, batch: &TokenBatch, sp: &SpecialTokens, n: usize) -> Option<Tensor<1>> {
    let [bsz, s_len, v] = logits.dims();
    let d_end = sp.d_end as usize;
    if n == 0 || d_end >= v {
        return None;
    }
    let device = logits.device();
    // Per sample: the flat logits rows of its interior steps.
    let mut spans: Vec<Vec<i64>> = Vec::new();
    for (b, seq) in batch.seqs.iter().enumerate() {
        let Some(s) = seq.depth_start else { continue };
        let steps = seq.depth_interior().len();
        debug_assert!(b < bsz && s + steps <= s_len, "batch does not match the logits");
        if b >= bsz {
            continue;
        }
        spans.push((s..s + steps).filter(|&t| t < s_len).map(|t| (b * s_len + t) as i64).collect());
    }
    if spans.is_empty() {
        return None;
    }
    let count = spans.len();
    let nf = n as f64;
    let rows: Vec<i64> = spans.iter().flatten().copied().collect();
    let m = rows.len();
    let lmax = spans.iter().map(Vec::len).max().unwrap_or(0);
    let expected = if m == 0 {
        Tensor::<1>::zeros([count], &device) // [B']
    } else {
        let probs = softmax(select_rows(logits, rows), 1); // [M, V]
        let p_end = probs.narrow(1, d_end, 1).reshape([m]); // [M]
        let log_keep = p_end.neg().add_scalar(1.0).clamp_min(1e-12).log(); // [M]
        // Scatter into a [B', Lmax] grid; slot `m` is a zero used for padding.
        let padded_src = Tensor::cat(vec![log_keep, Tensor::<1>::zeros([1], &device)], 0); // [M + 1]
        let mut index = Vec::with_capacity(count * lmax);
        let mut mask = Vec::with_capacity(count * lmax);
        let mut offset = 0;
        for span in &spans {
            for j in 0..lmax {
                let inside = j < span.len();
                index.push(if inside { (offset + j) as i64 } else { m as i64 });
                mask.push(if inside { 1.0f32 } else { 0.0 });
            }
            offset += span.len();
        }
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [count * lmax]), &device); // [B'*Lmax]
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [count, lmax]), &device); // [B', Lmax]
        let grid = padded_src.select(0, index).reshape([count, lmax]); // [B', Lmax]
        let survival = grid.cumsum(1).exp() * mask; // [B', Lmax]
        survival.sum_dim(1).reshape([count]) // [B']
    };
    let rel = expected.sub_scalar(nf).div_scalar(nf); // [B']
    Some(rel.square().mean()) // [1]
}

/// The logits feeding the soft depth reconstruction: for the samples whose span is closed and has exactly `n`
/// interior positions, the logits at the `n` positions predicting the interior (`logits[b, s + j]`, `j < n`)
/// restricted to the code columns `[code0, code0 + K)`: `[B', n, K]`, with the batch indices of those samples
/// in order. `None` when no sample qualifies or the code columns lie outside the vocabulary.
pub fn span_code_logits(
    logits: Tensor<3>,
    batch: &TokenBatch,
    sp: &SpecialTokens,
    n: usize,
) -> Option<(Tensor<3>, Vec<usize>)> {
    let [bsz, s_len, v] = logits.dims();
    let (code0, k) = (sp.code0 as usize, sp.num_codes);
    if n == 0 || k == 0 || code0 + k > v {
        return None;
    }
    let mut rows = Vec::new();
    let mut samples = Vec::new();
    for (b, seq) in batch.seqs.iter().enumerate() {
        let (Some(s), Some(_)) = (seq.depth_start, seq.depth_end) else { continue };
        if seq.depth_interior().len() != n || b >= bsz || s + n > s_len {
            continue;
        }
        rows.extend((s..s + n).map(|t| (b * s_len + t) as i64));
        samples.push(b);
    }
    if samples.is_empty() {
        return None;
    }
    let count = samples.len();
    let picked = select_rows(logits, rows).narrow(1, code0, k); // [B'*n, K]
    Some((picked.reshape([count, n, k]), samples)) // [B', n, K]
}

/// Soft reconstruction term: `L_rec = mean((pred - target)^2)` over every element; shapes must match.
pub fn depth_mse(pred: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    (pred - target).square().mean() // [1]
}

/// Per-pixel sigmoid cross-entropy `mean(max(x, 0) - x * t + log(1 + exp(-|x|)))` over `[B, H, W]` mask logits
/// `x` and targets `t` in {0, 1}.
pub fn seg_bce(mask_logits: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let x = mask_logits;
    let soft = x.clone().abs().neg().exp().log1p(); // [B, H, W]
    (x.clone().clamp_min(0.0) - x * target + soft).mean() // [1]
}

/// Dice loss: per sample, with `p = sigmoid(x)`, `1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)`; the mean
/// over samples.
pub fn seg_dice(mask_logits: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let [b, h, w] = mask_logits.dims();
    let p = sigmoid(mask_logits).reshape([b, h * w]); // [B, HW]
    let t = target.reshape([b, h * w]); // [B, HW]
    let inter = (p.clone() * t.clone()).sum_dim(1); // [B, 1]
    let denom = p.sum_dim(1) + t.sum_dim(1); // [B, 1]
    let dice = inter.mul_scalar(2.0).add_scalar(1.0) / denom.add_scalar(1.0); // [B, 1]
    dice.neg().add_scalar(1.0).mean() // [1]
}

/// Grounding-map cross-entropy: the map's softmax over its `g x g` cells against the share of the target mask in
/// each cell (the mask area-pooled to the grid and normalised to sum 1). A row with an empty mask adds 0.
/// `map` `[B, 1, g, g]` (logits; the mask decoder's is at its mask-logit resolution), `target` `[B, H, W]` (0/1)
/// -> `[1]`.
pub fn seg_ground(map: Tensor<4>, target: Tensor<3>) -> Tensor<1> {
    let [b, _, g, gw] = map.dims();
    let [_, h, w] = target.dims();
    let share = adaptive_avg_pool2d(target.reshape([b, 1, h, w]), [g, gw]).reshape([b, g * gw]); // [B, T]
    let share = share.clone() / share.sum_dim(1).clamp_min(1e-6); // [B, T]
    let logp = log_softmax(map.reshape([b, g * gw]), 1); // [B, T]
    (share * logp).sum_dim(1).neg().mean() // [1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    const V: usize = 10;
    const TOL: f64 = 1e-5;

    /// pad 0, `<|im_end|>` 1, `[SEG]` 2, `<d_start>` 3, `<d_end>` 4, codes 5..8 (K = 3), text 8, image 9.
    fn sp() -> SpecialTokens {
        SpecialTokens { seg: 2, d_start: 3, d_end: 4, code0: 5, num_codes: 3, im_end: 1, pad: 0, image_context: 9 }
    }

    fn seq(ids: &[u32], prompt_len: usize) -> Sequence {
        let find = |x: u32| ids.iter().position(|&i| i == x);
        Sequence { ids: ids.to_vec(), prompt_len, seg_pos: find(2), depth_start: find(3), depth_end: find(4) }
    }

    /// Closed span with two codes: `img txt | [SEG] <d_start> c0 c1 <d_end> <|im_end|>` (len 8).
    fn full() -> Sequence {
        seq(&[9, 8, 2, 3, 5, 6, 4, 1], 2)
    }
    /// No span: `img txt | txt [SEG] <|im_end|>` (len 5).
    fn text_only() -> Sequence {
        seq(&[9, 8, 8, 2, 1], 2)
    }
    /// Truncated span with three codes and no `<d_end>` (len 6).
    fn truncated() -> Sequence {
        seq(&[9, 8, 3, 5, 6, 7], 2)
    }
    /// Closed span with one code (len 6).
    fn short() -> Sequence {
        seq(&[9, 8, 3, 7, 4, 1], 2)
    }
    /// Closed empty span (len 5).
    fn empty_span() -> Sequence {
        seq(&[9, 8, 3, 4, 1], 2)
    }

    fn batch(seqs: Vec<Sequence>) -> TokenBatch {
        TokenBatch::new(seqs, 0)
    }

    /// Host logits `[B][S][V]`: fixed, varied, not symmetric.
    fn host_logits(b: usize, s: usize) -> Vec<Vec<Vec<f64>>> {
        (0..b)
            .map(|i| {
                (0..s)
                    .map(|t| {
                        (0..V).map(|v| ((i * 7 + t * 3 + v * 5) as f64 * 0.37).sin() * 2.0 + 0.1 * v as f64).collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn to_tensor(host: &[Vec<Vec<f64>>], device: &Device) -> Tensor<3> {
        let (b, s) = (host.len(), host[0].len());
        let flat: Vec<f32> = host.iter().flatten().flatten().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(flat, [b, s, V]), device) // [b, s, V]
    }

    fn scalar(value: f64, device: &Device) -> Tensor<1> {
        Tensor::<1>::from_data(TensorData::new(vec![value as f32], [1]), device) // [1]
    }

    fn host(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }

    fn log_softmax_host(row: &[f64]) -> Vec<f64> {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        row.iter().map(|x| x - lse).collect()
    }

    /// Mean NLL over explicit `(b, t, target)` triples.
    fn nll(l: &[Vec<Vec<f64>>], picks: &[(usize, usize, usize)]) -> f64 {
        picks.iter().map(|&(b, t, y)| -log_softmax_host(&l[b][t])[y]).sum::<f64>() / picks.len() as f64
    }

    /// `((E - n) / n)^2` with `E = sum_j prod_{i<=j} (1 - p_i)`, `p_i` the `<d_end>` probability at `rows[i]`.
    fn count_host(rows: &[&[f64]], n: f64) -> f64 {
        let mut q = 1.0;
        let mut e = 0.0;
        for row in rows {
            q *= 1.0 - log_softmax_host(row)[4].exp();
            e += q;
        }
        ((e - n) / n).powi(2)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < TOL, "{a} vs {b}");
    }

    #[test]
    fn text_ce_on_padded_batch() {
        let device = Device::flex();
        let tb = batch(vec![full(), text_only()]);
        let l = host_logits(2, 8);
        let got = host(text_ce(to_tensor(&l, &device), &tb, &sp()).unwrap());
        // full: [SEG] at u=2 (t=1), <|im_end|> at u=7 (t=6); text_only: u=2,3,4 (t=1,2,3). Padding t>=4 excluded.
        let want = nll(&l, &[(0, 1, 2), (0, 6, 1), (1, 1, 8), (1, 2, 2), (1, 3, 1)]);
        close(got, want);
    }

    #[test]
    fn text_ce_ignores_span_and_padding_logits() {
        let device = Device::flex();
        let tb = batch(vec![full(), text_only()]);
        let l = host_logits(2, 8);
        let base = host(text_ce(to_tensor(&l, &device), &tb, &sp()).unwrap());
        let mut moved = l.clone();
        // Positions predicting <d_start> (t=2), codes (t=3,4), <d_end> (t=5) and padding (sample 1, t>=4).
        for t in 2..=5 {
            moved[0][t][3] += 5.0;
            moved[0][t][4] -= 3.0;
        }
        for t in 4..8 {
            moved[1][t][0] += 7.0;
        }
        close(host(text_ce(to_tensor(&moved, &device), &tb, &sp()).unwrap()), base);
        // The positions predicting [SEG] and <|im_end|> do count.
        let mut seg = l.clone();
        seg[0][1][2] += 1.0;
        assert!((host(text_ce(to_tensor(&seg, &device), &tb, &sp()).unwrap()) - base).abs() > 1e-3);
        let mut end = l;
        end[0][6][1] -= 1.0;
        assert!((host(text_ce(to_tensor(&end, &device), &tb, &sp()).unwrap()) - base).abs() > 1e-3);
    }

    #[test]
    fn text_ce_none_without_answer() {
        let device = Device::flex();
        let tb = batch(vec![seq(&[9, 8, 3], 3)]);
        assert!(text_ce(to_tensor(&host_logits(1, 3), &device), &tb, &sp()).is_none());
    }

    #[test]
    fn marker_and_code_ce_on_padded_batch() {
        let device = Device::flex();
        let tb = batch(vec![full(), short()]);
        let l = host_logits(2, 8);
        let x = to_tensor(&l, &device);
        let marker = host(marker_ce(x.clone(), &tb, &sp()).unwrap());
        // full: <d_start> at u=3 (t=2), <d_end> at u=6 (t=5); short: u=2 (t=1), u=4 (t=3).
        close(marker, nll(&l, &[(0, 2, 3), (0, 5, 4), (1, 1, 3), (1, 3, 4)]));
        let code = host(code_ce(x, &tb, &sp()).unwrap());
        close(code, nll(&l, &[(0, 3, 5), (0, 4, 6), (1, 2, 7)]));
    }

    #[test]
    fn truncated_span_excluded_from_markers_kept_for_codes_and_count() {
        let device = Device::flex();
        let l = host_logits(2, 8);
        let x = to_tensor(&l, &device);
        // The truncated sample is the only one with a span: no marker term.
        let only = batch(vec![truncated(), text_only()]);
        assert!(marker_ce(x.clone(), &only, &sp()).is_none());
        close(host(code_ce(x.clone(), &only, &sp()).unwrap()), nll(&l, &[(0, 2, 5), (0, 3, 6), (0, 4, 7)]));
        let count = host(count_penalty(x.clone(), &only, &sp(), 3).unwrap());
        assert!(count.is_finite());
        close(count, count_host(&[&l[0][2], &l[0][3], &l[0][4]], 3.0));
        // Beside a closed span, only the closed one feeds the markers.
        let mixed = batch(vec![full(), truncated()]);
        close(host(marker_ce(x, &mixed, &sp()).unwrap()), nll(&l, &[(0, 2, 3), (0, 5, 4)]));
    }

    #[test]
    fn count_penalty_hand_values() {
        let device = Device::flex();
        let l = host_logits(2, 8);
        let x = to_tensor(&l, &device);
        // full: s=3, L=2 = n; short: s=2, L=1 != n.
        let tb = batch(vec![full(), short()]);
        let got = host(count_penalty(x.clone(), &tb, &sp(), 2).unwrap());
        let want = (count_host(&[&l[0][3], &l[0][4]], 2.0) + count_host(&[&l[1][2]], 2.0)) / 2.0;
        close(got, want);
        // An empty span contributes exactly 1.
        let tb = batch(vec![short(), empty_span()]);
        let got = host(count_penalty(x.clone(), &tb, &sp(), 2).unwrap());
        close(got, (count_host(&[&l[0][2]], 2.0) + 1.0) / 2.0);
        let tb = batch(vec![empty_span(), empty_span()]);
        close(host(count_penalty(x.clone(), &tb, &sp(), 2).unwrap()), 1.0);
        // No span anywhere.
        assert!(count_penalty(x, &batch(vec![text_only(), text_only()]), &sp(), 2).is_none());
    }

    #[test]
    fn count_penalty_reaches_zero_when_span_is_certain() {
        let device = Device::flex();
        let mut l = host_logits(1, 8);
        for t in 3..5 {
            l[0][t][4] = -60.0; // p(<d_end>) ~ 0 inside the span: E = L = n.
        }
        let got = host(count_penalty(to_tensor(&l, &device), &batch(vec![full()]), &sp(), 2).unwrap());
        close(got, 0.0);
    }

    #[test]
    fn span_code_logits_keeps_exact_spans_only() {
        let device = Device::flex();
        let l = host_logits(3, 8);
        let tb = batch(vec![short(), full(), truncated()]);
        let (out, idx) = span_code_logits(to_tensor(&l, &device), &tb, &sp(), 2).unwrap();
        assert_eq!(idx, vec![1]);
        assert_eq!(out.dims(), [1, 2, 3]);
        let got = out.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let want: Vec<f64> = (3..5).flat_map(|t| (5..8).map(move |v| (t, v))).map(|(t, v)| l[1][t][v]).collect();
        for (g, w) in got.iter().zip(&want) {
            close(*g as f64, *w);
        }
        // The one-code span qualifies for n = 1; the truncated three-code span never does.
        let (_, idx) = span_code_logits(to_tensor(&l, &device), &tb, &sp(), 1).unwrap();
        assert_eq!(idx, vec![0]);
        assert!(span_code_logits(to_tensor(&l, &device), &tb, &sp(), 3).is_none());
    }

    #[test]
    fn gradients_flow_through_count_penalty() {
        let device = Device::flex().autodiff();
        let l = host_logits(2, 8);
        let x = to_tensor(&l, &device).require_grad();
        let tb = batch(vec![full(), text_only()]);
        let loss = count_penalty(x.clone(), &tb, &sp(), 2).unwrap();
        let grads = loss.backward();
        let g = x.grad(&grads).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let at = |b: usize, t: usize| g[(b * 8 + t) * V..(b * 8 + t + 1) * V].iter().map(|x| x.abs()).sum::<f32>();
        assert!(at(0, 3) > 1e-6 && at(0, 4) > 1e-6);
        assert_eq!(at(0, 2) + at(0, 5) + at(1, 3), 0.0);
    }

    #[test]
    fn gradients_flow_through_span_code_logits() {
        let device = Device::flex().autodiff();
        let l = host_logits(2, 8);
        let x = to_tensor(&l, &device).require_grad();
        let tb = batch(vec![text_only(), full()]);
        let (out, idx) = span_code_logits(x.clone(), &tb, &sp(), 2).unwrap();
        assert_eq!(idx, vec![1]);
        let loss = (out.clone() * out).sum(); // d/dx = 2x on the selected entries
        let grads = loss.backward();
        let g = x.grad(&grads).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        for t in 0..8 {
            for v in 0..V {
                let want = if (3..5).contains(&t) && (5..8).contains(&v) { 2.0 * l[1][t][v] } else { 0.0 };
                close(g[(8 + t) * V + v] as f64, want);
                close(g[t * V + v] as f64, 0.0);
            }
        }
    }

    #[test]
    fn seg_and_depth_terms_hand_values() {
        let device = Device::flex();
        let x = [[[0.5, -1.0, 30.0], [2.0, -0.2, 0.0]], [[-3.0, 1.5, -30.0], [0.7, 0.1, -0.4]]];
        let t = [[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]];
        let flat = |a: &[[[f64; 3]; 2]; 2]| a.iter().flatten().flatten().map(|&v| v as f32).collect::<Vec<_>>();
        let xt = Tensor::<3>::from_data(TensorData::new(flat(&x), [2, 2, 3]), &device);
        let tt = Tensor::<3>::from_data(TensorData::new(flat(&t), [2, 2, 3]), &device);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut bce = 0.0;
        let mut dice = 0.0;
        for b in 0..2 {
            let (mut pt, mut ps, mut ts) = (0.0, 0.0, 0.0);
            for i in 0..2 {
                for j in 0..3 {
                    let (p, y) = (sig(x[b][i][j]), t[b][i][j]);
                    // ln p = -ln(1 + e^-x), ln(1 - p) = -ln(1 + e^x): exact in f64 even at |x| = 30.
                    let v = x[b][i][j];
                    bce += y * (-v).exp().ln_1p() + (1.0 - y) * v.exp().ln_1p();
                    pt += p * y;
                    ps += p;
                    ts += y;
                }
            }
            dice += 1.0 - (2.0 * pt + 1.0) / (ps + ts + 1.0);
        }
        close(host(seg_bce(xt.clone(), tt.clone())), bce / 12.0);
        close(host(seg_dice(xt, tt)), dice / 2.0);
        let pred = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]), &device);
        let target = Tensor::<4>::from_data(TensorData::new(vec![1.5f32, 2.0, 1.0, 4.0], [1, 1, 2, 2]), &device);
        close(host(depth_mse(pred, target)), (0.25 + 4.0) / 4.0);
    }

    #[test]
    fn total_weights_terms_and_skips_absent() {
        let device = Device::flex();
        let cfg = LossConfig::new()
            .with_llm(0.5)
            .with_seg(2.0)
            .with_seg_bce(3.0)
            .with_seg_dice(0.25)
            .with_seg_ground(0.5)
            .with_marker(0.1)
            .with_token(7.0)
            .with_count(2.0)
            .with_rec(0.3);
        let terms = LossTerms {
            llm: Some(scalar(2.0, &device)),
            seg_bce: Some(scalar(0.5, &device)),
            seg_dice: None,
            seg_ground: Some(scalar(0.5, &device)),
            marker: Some(scalar(3.0, &device)),
            token: None,
            count: Some(scalar(0.25, &device)),
            rec: Some(scalar(4.0, &device)),
        };
        // 0.5*2 + 2*(3*0.5 + 0.5*0.5) + 0.1*3 + 2*0.25 + 0.3*4
        let want = 1.0 + 3.5 + 0.3 + 0.5 + 1.2;
        close(host(terms.total(&cfg).unwrap()), want);
        let v = terms.values(&cfg);
        close(v.total, want);
        assert_eq!((v.seg_dice, v.token), (None, None));
        close(v.llm.unwrap(), 2.0);
        close(v.rec.unwrap(), 4.0);
        // A switched-off term (weight 0) never contributes, not even a NaN.
        let nan = LossTerms { rec: Some(scalar(f64::NAN, &device)), ..terms.clone() };
        let off = cfg.clone().with_rec(0.0);
        close(host(nan.total(&off).unwrap()), want - 1.2);
        close(nan.values(&off).total, want - 1.2);
        // Nothing present.
        assert!(LossTerms::default().total(&cfg).is_none());
        assert_eq!(LossTerms::default().values(&cfg), LossValues::default());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cfg = LossConfig::new();
        assert_eq!((cfg.llm, cfg.seg, cfg.seg_bce, cfg.seg_dice), (1.0, 1.0, 1.0, 0.25));
        assert_eq!((cfg.marker, cfg.token, cfg.count, cfg.rec, cfg.span_len), (1.0, 1.0, 1.0, 1.0, 100));
    }

    #[test]
    fn the_grounding_term_is_the_cross_entropy_against_the_masks_share_per_cell() {
        let device = Device::flex();
        // 2x2 grid over a 4x4 mask: row 0 covers the top-left cell fully and the top-right cell by a quarter
        let mut m = vec![0.0f32; 2 * 16];
        for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)] {
            m[y * 4 + x] = 1.0;
        }
        let masks = Tensor::<3>::from_data(TensorData::new(m, [2, 4, 4]), &device); // row 1 empty
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let map = Tensor::<4>::from_data(TensorData::new([logits, logits].concat(), [2, 1, 2, 2]), &device);
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        // shares 0.8 / 0.2 / 0 / 0; the empty row adds 0 to the mean over both rows
        let want = -(0.8 * (2.0 - lse) + 0.2 * (1.0 - lse)) / 2.0;
        close(host(seg_ground(map, masks.clone())), want);
        let flat = Tensor::<4>::zeros([2, 1, 2, 2], &device);
        close(host(seg_ground(flat, masks)), (4.0f64).ln() / 2.0);
    }
}
