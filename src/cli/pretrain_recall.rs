//! `perceptio pretrain-recall`: pretrains the LLM part of a Perceptio model directory on the text-only recall
//! task (`perceptio_models::perceptio::recall`): the marked points of a point question are told as "letter
//! level" pairs where the image would be, and the answer states each letter's level, then the nearest letter.
//! Fresh questions every step; `llm.safetensors` is written back atomically. Every `--every` steps it reports,
//! on held-out questions, how many levels are stated exactly and within one, and how many letters are right
//! given the true chain. The model must have the point chain's words (`init-model --point-reasoning`).
//! Why and what it measures: docs/points.md, section 10.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::Device;
use perceptio_models::perceptio::checkpoint::{Part, TOKENIZER_FILE, load_part, read_config, save_part};
use perceptio_models::perceptio::image_pretrain::ImagePretrainConfig;
use perceptio_models::perceptio::model::LlmPart;
use perceptio_models::perceptio::recall::{RecallSample, RecallTask};
use perceptio_models::perceptio::recall_pretrain::{RecallAccuracy, pretrain_recall, recall_accuracy};
use perceptio_models::perceptio::tokens::special_tokens;
use perceptio_models::tokenizer::TextTokenizer;
use perceptio_synth::tasks::POINTS_QUESTION;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::rows::{StepProgress, first_and_last_means};

/// The learning rate and batch of the recall stage (the PyTorch probe's, docs/points.md section 9).
pub const DEFAULT_LR: f64 = 3e-3;
pub const DEFAULT_BATCH: usize = 32;

/// Arguments of `perceptio pretrain-recall`.
#[derive(clap::Args, Debug)]
pub struct PretrainRecallArgs {
    /// Perceptio model directory (perceptio.json, tokenizer.json, llm.safetensors, ...); llm.safetensors is
    /// replaced.
    #[arg(long)]
    pub model: PathBuf,
    /// Optimiser steps, each on fresh questions.
    #[arg(long, default_value_t = 4000)]
    pub steps: usize,
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
    #[arg(long, default_value_t = DEFAULT_LR)]
    pub lr: f64,
    /// Held-out questions measured every `--every` steps and at the end.
    #[arg(long, default_value_t = 512)]
    pub held_out: usize,
    #[arg(long, default_value_t = 500)]
    pub every: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ask the dataset's point question before the told pairs, as the point rows do (it doubles the sequence and
    /// so the time a step takes; without it, the prompt is the chat template around the pairs alone).
    #[arg(long)]
    pub with_question: bool,
    /// Share of the questions whose answer starts with a span of random depth codes, as long as the model's
    /// (the full model writes its span before the chain, so its chain must look back across it; default 0).
    #[arg(long, default_value_t = 0.0)]
    pub span_share: f64,
}

/// How a recall run trains and measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecallTraining {
    /// Held-out questions (0: none measured).
    pub held_out: usize,
    /// Measure them every this many steps (and after the last).
    pub every: usize,
    pub seed: u64,
    /// Ask the point question before the pairs.
    pub with_question: bool,
    /// Share of the questions with a span of random codes before the chain.
    pub span_share: f64,
}

/// What a recall run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallSummary {
    /// Mean loss of the first and last `window` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub window: usize,
    /// Held-out accuracy after each measured step.
    pub held_out: Vec<(usize, RecallAccuracy)>,
    /// Questions trained on.
    pub sequences: usize,
    pub secs: f64,
}

/// "levels 58.3% exact, 65.2% within one; letter 93.9% (512 questions)".
pub fn accuracy_line(a: &RecallAccuracy) -> String {
    let (exact, near, letters) = a.percent();
    format!(
        "levels {exact:.1}% exact, {near:.1}% within one; letter given the chain {letters:.1}% ({} questions)",
        a.questions
    )
}

/// Runs `perceptio pretrain-recall`.
pub fn run(args: &PretrainRecallArgs) -> anyhow::Result<()> {
    let cfg = ImagePretrainConfig::new().with_steps(args.steps).with_batch_size(args.batch_size).with_lr(args.lr);
    let how = RecallTraining {
        held_out: args.held_out,
        every: args.every,
        seed: args.seed,
        with_question: args.with_question,
        span_share: args.span_share,
    };
    let s = pretrain_with(&args.model, &cfg, how)?;
    println!(
        "pretrained the LLM on recall for {} steps ({} questions, {:.1}s): loss {:.4} -> {:.4} (means of the \
         first/last {} steps); wrote {}",
        args.steps,
        s.sequences,
        s.secs,
        s.first_loss,
        s.last_loss,
        s.window,
        args.model.join(Part::Llm.file()).display()
    );
    if let Some((_, a)) = s.held_out.last() {
        println!("held-out: {}", accuracy_line(a));
    }
    Ok(())
}

/// Teacher-forced accuracy of `llm` on `held`, 64 questions at a time.
fn measure(llm: &LlmPart, task: &RecallTask, held: &[RecallSample], pad: u32) -> anyhow::Result<RecallAccuracy> {
    let mut acc = RecallAccuracy::default();
    for chunk in held.chunks(64) {
        acc.add(recall_accuracy(llm, chunk, pad, task.level_ids(), task.letter_ids())?);
    }
    Ok(acc)
}

/// Pretrains the LLM part of the model in `model_dir` on recall questions and writes it back (atomically).
/// `perceptio pretrain-recall` and the demo's stage.
pub fn pretrain_with(
    model_dir: &Path,
    pcfg: &ImagePretrainConfig,
    how: RecallTraining,
) -> anyhow::Result<RecallSummary> {
    let start = Instant::now();
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let tok_path = model_dir.join(TOKENIZER_FILE);
    let tok = TextTokenizer::from_file(&tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
    let sp = special_tokens(&tok, cfg.num_codes()).with_context(|| format!("{}", tok_path.display()))?;
    let question = if how.with_question { POINTS_QUESTION } else { "" };
    if !(0.0..=1.0).contains(&how.span_share) {
        anyhow::bail!("the span share {} is not in [0, 1]", how.span_share);
    }
    let task = RecallTask::new(&tok, &sp, question, cfg.image_last)
        .with_context(|| format!("{}: the recall task", model_dir.display()))?
        .with_span(cfg.vqvae.num_tokens(), how.span_share);
    let device = Device::flex().autodiff();
    device.seed(how.seed);
    let llm = load_part(model_dir, Part::Llm, cfg.init_llm(&device)?)?;

    // held-out questions from a seed of their own, training questions from another
    let mut held_rng = ChaCha8Rng::seed_from_u64(how.seed ^ 0x5eed_0f_4e1d);
    let held: Vec<RecallSample> = (0..how.held_out).map(|_| task.sample(&mut held_rng)).collect::<Result<_, _>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(how.seed);
    let mut next = |n: usize| (0..n).map(|_| task.sample(&mut rng)).collect::<Result<Vec<_>, _>>();

    let steps = pcfg.steps;
    let progress = StepProgress::new(steps)?;
    let mut history = Vec::with_capacity(steps);
    let mut measured = Vec::new();
    let mut failure = None;
    let every = how.every.max(1);
    let llm = pretrain_recall(llm, pcfg, sp.pad, &mut next, &mut |step, loss, m| {
        history.push(loss);
        let numbers = format!("loss {loss:.4}");
        if !held.is_empty() && (step % every == 0 || step == steps) && failure.is_none() {
            match measure(&m.valid(), &task, &held, sp.pad) {
                Ok(a) => {
                    let (exact, near, letters) = a.percent();
                    progress.step_and_print(
                        step,
                        format!("{numbers}, held-out levels {exact:.1}% ({near:.1}% within one), letter {letters:.1}%"),
                    );
                    measured.push((step, a));
                    return;
                }
                Err(e) => failure = Some(e),
            }
        }
        progress.step(step, numbers);
    })
    .context("training on recall questions")?;
    progress.finish();
    if let Some(e) = failure {
        return Err(e.context("measuring the held-out recall questions"));
    }
    save_part(model_dir, Part::Llm, &llm)?;

    let (first_loss, last_loss, window) = first_and_last_means(&history, steps);
    Ok(RecallSummary {
        first_loss,
        last_loss,
        window,
        held_out: measured,
        sequences: steps * pcfg.batch_size,
        secs: start.elapsed().as_secs_f64(),
    })
}
