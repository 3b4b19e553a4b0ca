//! Pretraining the LLM part on the text-only recall task (`recall`): next-token cross-entropy on every answer
//! token, with the optimisation loop of the encoder stages; [`recall_accuracy`] measures how many stated levels
//! and answer letters a model gets right, teacher-forced. What a pretrained LLM brings and our from-scratch one
//! lacks: attention heads that look a value up by its key (docs/points.md, section 9).

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use super::image_pretrain::{ImagePretrainConfig, ImagePretrainError, fit_watched};
use super::model::LlmPart;
use super::recall::RecallSample;
use super::token_classes::{token_nll, weighted_mean};

/// What a batch of recall questions says about a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecallAccuracy {
    /// Stated levels, exactly right, and off by at most one level.
    pub levels: usize,
    pub levels_exact: usize,
    pub levels_near: usize,
    /// Questions, and those whose answer letter (given the true chain) is the nearest point's.
    pub questions: usize,
    pub letters_right: usize,
}

impl RecallAccuracy {
    pub fn add(&mut self, o: RecallAccuracy) {
        self.levels += o.levels;
        self.levels_exact += o.levels_exact;
        self.levels_near += o.levels_near;
        self.questions += o.questions;
        self.letters_right += o.letters_right;
    }

    /// Percentages: levels exact, levels within one, letters.
    pub fn percent(&self) -> (f64, f64, f64) {
        let pct = |a: usize, n: usize| 100.0 * a as f64 / n.max(1) as f64;
        (
            pct(self.levels_exact, self.levels),
            pct(self.levels_near, self.levels),
            pct(self.letters_right, self.questions),
        )
    }
}

/// The samples right-padded with `pad` to one length: ids `[B][S]`, and for every position the next token
/// (`0` where none) with weight 1 where it is an answer token, 0 elsewhere.
fn padded(samples: &[RecallSample], pad: u32) -> (Vec<Vec<u32>>, Vec<i64>, Vec<f32>) {
    let s = samples.iter().map(|x| x.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(samples.len());
    let mut next = Vec::with_capacity(samples.len() * s);
    let mut weight = Vec::with_capacity(samples.len() * s);
    for x in samples {
        let mut row = x.ids.clone();
        row.resize(s, pad);
        for t in 0..s {
            // position t predicts token t + 1
            let target = t + 1 >= x.answer_start && t + 1 < x.ids.len();
            next.push(if target { i64::from(x.ids[t + 1]) } else { 0 });
            weight.push(if target { 1.0 } else { 0.0 });
        }
        ids.push(row);
    }
    (ids, next, weight)
}

fn batch_err(e: impl std::fmt::Display) -> ImagePretrainError {
    ImagePretrainError::Batch(format!("recall batch: {e}"))
}

/// Log-probabilities `[B, S, V]` of the next token at every position.
fn log_probs(llm: &LlmPart, ids: &[Vec<u32>]) -> Result<Tensor<3>, ImagePretrainError> {
    let out = llm.forward(ids, None).map_err(batch_err)?;
    Ok(log_softmax(out.logits, 2)) // [B, S, V]
}

/// Mean cross-entropy of every answer token (chain, letter and `<|im_end|>`) of `samples`.
pub fn recall_loss(llm: &LlmPart, samples: &[RecallSample], pad: u32) -> Result<Tensor<1>, ImagePretrainError> {
    if samples.is_empty() {
        return Err(batch_err("no sample"));
    }
    let (ids, next, weight) = padded(samples, pad);
    let logp = log_probs(llm, &ids)?; // [B, S, V]
    let [b, s, v] = logp.dims();
    Ok(weighted_mean(token_nll(logp.reshape([b * s, v]), next), weight)) // [1]
}

/// Teacher-forced accuracy on `samples`: each stated level's arg-max among `level_ids`, and the answer letter's
/// arg-max among the question's own letters (`letter_ids[..points]`).
pub fn recall_accuracy(
    llm: &LlmPart,
    samples: &[RecallSample],
    pad: u32,
    level_ids: &[u32],
    letter_ids: &[u32],
) -> Result<RecallAccuracy, ImagePretrainError> {
    let mut acc = RecallAccuracy::default();
    if samples.is_empty() {
        return Ok(acc);
    }
    let (ids, _, _) = padded(samples, pad);
    let logp = log_probs(llm, &ids)?; // [B, S, V]
    let [b, s, v] = logp.dims();
    let host: Vec<f32> =
        logp.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| batch_err(format!("{e:?}")))?;
    let row = |i: usize, t: usize| &host[(i * s + t) * v..(i * s + t + 1) * v];
    let best = |scores: &[f32], among: &[u32]| {
        (0..among.len()).max_by(|&a, &c| scores[among[a] as usize].total_cmp(&scores[among[c] as usize]))
    };
    for (i, x) in samples.iter().enumerate().take(b) {
        for &(at, level) in &x.levels {
            let guess = best(row(i, at - 1), level_ids).unwrap_or(usize::MAX) as i64;
            acc.levels += 1;
            acc.levels_exact += usize::from(guess == i64::from(level));
            acc.levels_near += usize::from((guess - i64::from(level)).abs() <= 1);
        }
        let letters = &letter_ids[..x.points.min(letter_ids.len())];
        acc.questions += 1;
        acc.letters_right += usize::from(best(row(i, x.letter_at - 1), letters) == Some(x.nearest));
    }
    Ok(acc)
}

/// Trains the LLM part (on an autodiff device) on batches of `next_batch(batch_size)` recall questions padded
/// with `pad`; `on_step(step, loss, model)` after each step.
pub fn pretrain_recall<E: std::fmt::Display>(
    llm: LlmPart,
    cfg: &ImagePretrainConfig,
    pad: u32,
    next_batch: &mut dyn FnMut(usize) -> Result<Vec<RecallSample>, E>,
    on_step: &mut dyn FnMut(usize, f64, &LlmPart),
) -> Result<LlmPart, ImagePretrainError> {
    let loss = |m: &LlmPart, batch: Vec<RecallSample>| recall_loss(m, &batch, pad);
    fit_watched(llm, cfg, next_batch, &loss, on_step)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::perceptio::PerceptioConfig;
    use crate::perceptio::recall::RecallTask;
    use crate::perceptio::sequence::point_chain_vocabulary;
    use crate::perceptio::tokens::{base_vocab_size, build_word_tokenizer, special_tokens};

    const QUESTION: &str = "Which point is the closest to the camera?";

    fn setup(device: &Device) -> (RecallTask, LlmPart, u32) {
        let chain = point_chain_vocabulary();
        let tok = build_word_tokenizer([QUESTION, chain.as_str(), "(A) (B) (C) (D) (E)"], 8, 1).unwrap();
        let sp = special_tokens(&tok, 8).unwrap();
        let task = RecallTask::new(&tok, &sp, QUESTION, true).unwrap();
        let mut cfg = PerceptioConfig::tiny(base_vocab_size(&tok, 8), sp.image_context as usize);
        cfg.vqvae.num_codes = 8;
        cfg.added_tokens = 11;
        device.seed(5);
        (task, cfg.init_llm(device).unwrap(), sp.pad)
    }

    #[test]
    fn the_loss_is_the_mean_over_answer_tokens_whatever_the_padding() {
        let device = Device::flex();
        let (task, llm, pad) = setup(&device);
        let short = task.sample_of(&[3, 9, 1], &[0, 1, 2]).unwrap();
        let long = task.sample_of(&[3, 9, 1, 14, 7], &[4, 2, 0, 3, 1]).unwrap();
        let scalar = |t: Tensor<1>| t.into_scalar::<f32>() as f64;
        let one = scalar(recall_loss(&llm, std::slice::from_ref(&short), pad).unwrap());
        let two = scalar(recall_loss(&llm, std::slice::from_ref(&long), pad).unwrap());
        let both = scalar(recall_loss(&llm, &[short.clone(), long.clone()], pad).unwrap());
        let (n1, n2) = ((short.ids.len() - short.answer_start) as f64, (long.ids.len() - long.answer_start) as f64);
        let pooled = (one * n1 + two * n2) / (n1 + n2);
        assert!((both - pooled).abs() < 1e-4, "{both} against {pooled}");
        // an untrained model is near the uniform cross-entropy over the vocabulary
        let uniform = (llm.vocab_size() as f64).ln();
        assert!((one - uniform).abs() < 0.5, "{one} against ln V = {uniform}");
        assert!(recall_loss(&llm, &[], pad).is_err());
    }

    #[test]
    fn training_on_one_question_makes_it_answered() {
        let device = Device::flex().autodiff();
        let (task, llm, pad) = setup(&device);
        let fixed = task.sample_of(&[2, 16, 11, 5], &[3, 1, 0, 2]).unwrap();
        let other = task.sample_of(&[18, 0, 7, 12], &[0, 1, 2, 3]).unwrap();
        let acc = |m: &LlmPart, s: &RecallSample| {
            recall_accuracy(m, std::slice::from_ref(s), pad, task.level_ids(), task.letter_ids()).unwrap()
        };
        let before = acc(&llm, &fixed);
        assert_eq!((before.levels, before.questions), (4, 1));
        let cfg = ImagePretrainConfig::new().with_steps(60).with_batch_size(2).with_lr(3e-3);
        let mut losses = Vec::new();
        let trained =
            pretrain_recall(llm, &cfg, pad, &mut |n| Ok::<_, String>(vec![fixed.clone(); n]), &mut |_, loss, _| {
                losses.push(loss)
            })
            .unwrap();
        assert_eq!(losses.len(), 60);
        assert!(losses[59] < 0.1 * losses[0], "loss {} -> {}", losses[0], losses[59]);
        let after = acc(&trained, &fixed);
        assert_eq!((after.levels_exact, after.levels_near, after.letters_right), (4, 4, 1), "{after:?}");
        // a question it has not seen: the memorised levels are not its levels
        let unseen = acc(&trained, &other);
        assert!(unseen.levels_exact < 4, "{unseen:?}");
    }
}
