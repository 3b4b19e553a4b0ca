//! Serving overhead: requests per second and time to first token at batch 1, 4 and 16, through the embedded
//! runtime (ServeRuntime over dataflows/serve.yaml: request check, the two encoders, LLM, router, the two heads and
//! the event egress as separate nodes, per-request streams) and by calling the Predictor directly on the same
//! batch, printed with the runtime / direct ratios.
//!
//!   cargo bench --bench serve
//!
//! A random tiny model (the test preset) is written to a temporary folder; answers run to `PERCEPTIO_BENCH_TOKENS`
//! new tokens (default 32), `PERCEPTIO_BENCH_ROUNDS` rounds per batch size (default 3) after one warm-up round.
//! `PERCEPTIO_BENCH_EAGER=1` serves with `eager: true` on the SAM2 encoder (every image encoded beside the LLM).
//! Ratios are served / direct: below 1 for requests per second and above 1 for time to first token is the cost of
//! the runtime. Not run in CI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use perceptio::actors::perceptio::init::{init_tiny_model, write_untrained_vqvae};
use perceptio::models::perceptio::predict::{AskOptions, PredictEvent, Predictor, Query};
use perceptio::serve::{Event, ImageInput, ServeConfig, ServeRuntime, SubmitOptions, WhenFull};

const QUESTIONS: [&str; 3] = [
    "where is the red cube ?",
    "how far is the yellow cylinder ?",
    "which object is closer , the sphere or the cone ?",
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tiny_model(dir: &Path) -> anyhow::Result<PathBuf> {
    let vq_dir = dir.join("vqvae");
    write_untrained_vqvae(&vq_dir, 3)?;
    let texts: Vec<String> = QUESTIONS.iter().map(|s| s.to_string()).collect();
    let model = dir.join("model");
    init_tiny_model(&texts, &vq_dir, &model, 11)?;
    Ok(model)
}

fn png(w: u32, h: u32, seed: u32) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let data: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37 + seed * 101) % 251) as u8).collect();
        enc.write_header()?.write_image_data(&data)?;
    }
    Ok(out)
}

/// Requests per second and mean time to first token over `rounds` batches.
#[derive(Debug, Clone, Copy)]
struct Measure {
    rps: f64,
    ttft: Duration,
    /// Served only: the mean of the answers' timings (queue, generate, mask + depth, total).
    timings: [Duration; 4],
}

fn direct(p: &Predictor, queries: &[Query], tokens: usize, rounds: usize) -> anyhow::Result<Measure> {
    let opts = AskOptions { max_new_tokens: tokens };
    let b = queries.len();
    let (mut busy, mut ttft) = (Duration::ZERO, Duration::ZERO);
    for round in 0..=rounds {
        let started = Instant::now();
        let mut first: Vec<Option<Duration>> = vec![None; b];
        p.answer_streaming(queries, &opts, &mut |e| {
            let PredictEvent::Token { row, .. } = e;
            first[row].get_or_insert_with(|| started.elapsed());
            true
        })?;
        if round > 0 {
            busy += started.elapsed();
            ttft += first.iter().map(|f| f.unwrap_or_default()).sum::<Duration>();
        }
    }
    let (rps, ttft) = ((b * rounds) as f64 / busy.as_secs_f64(), ttft / (b * rounds) as u32);
    Ok(Measure { rps, ttft, timings: [Duration::ZERO; 4] })
}

async fn served(rt: &ServeRuntime, images: &[Vec<u8>], tokens: usize, rounds: usize) -> anyhow::Result<Measure> {
    let b = images.len();
    let (mut busy, mut ttft, mut timings) = (Duration::ZERO, Duration::ZERO, [Duration::ZERO; 4]);
    for round in 0..=rounds {
        let started = Instant::now();
        let mut handles = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let q = QUESTIONS[i % QUESTIONS.len()];
            let opts = SubmitOptions { max_new_tokens: tokens };
            handles.push(rt.submit(ImageInput::Png(image.clone()), q, opts).await?);
        }
        let mut readers = Vec::new();
        for mut h in handles {
            readers.push(tokio::spawn(async move {
                let (mut first, mut times) = (None, [Duration::ZERO; 4]);
                while let Some(e) = h.next().await {
                    match e {
                        Event::Token { .. } => {
                            first.get_or_insert_with(|| started.elapsed());
                        }
                        Event::Done { timings: t, .. } => times = [t.queue, t.generate, t.mask + t.depth, t.total],
                        Event::Error { message } => return Err(anyhow::anyhow!(message)),
                        _ => {}
                    }
                }
                anyhow::Ok((first.unwrap_or_default(), times))
            }));
        }
        let mut firsts = Duration::ZERO;
        let mut times = [Duration::ZERO; 4];
        for r in readers {
            let (first, t) = r.await??;
            firsts += first;
            for (sum, t) in times.iter_mut().zip(t) {
                *sum += t;
            }
        }
        if round > 0 {
            busy += started.elapsed();
            ttft += firsts;
            for (sum, t) in timings.iter_mut().zip(times) {
                *sum += t;
            }
        }
    }
    let n = (b * rounds) as u32;
    Ok(Measure { rps: (b * rounds) as f64 / busy.as_secs_f64(), ttft: ttft / n, timings: timings.map(|t| t / n) })
}

fn main() -> anyhow::Result<()> {
    let tokens = env_or("PERCEPTIO_BENCH_TOKENS", 32);
    let rounds = env_or("PERCEPTIO_BENCH_ROUNDS", 3).max(1);
    let eager = env_or("PERCEPTIO_BENCH_EAGER", 0) != 0;
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let predictor = Predictor::load(&model, &Device::flex())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mode = if eager { "eager" } else { "on [SEG]" };
    println!(
        "serve bench: tiny random model, {tokens} new tokens per answer, {rounds} rounds after a warm-up, SAM2 \
         encoding {mode}"
    );
    println!(
        "{:>5} | {:>12} {:>12} {:>7} | {:>12} {:>12} {:>7}",
        "batch", "direct req/s", "served req/s", "ratio", "direct ttft", "served ttft", "ratio"
    );
    let mut breakdown = Vec::new();
    for b in [1usize, 4, 16] {
        let images: Vec<Vec<u8>> = (0..b as u32).map(|i| png(64, 48, i)).collect::<Result<_, _>>()?;
        let queries: Vec<Query> = images
            .iter()
            .enumerate()
            .map(|(i, png)| Query::from_png(png, QUESTIONS[i % QUESTIONS.len()]))
            .collect::<Result<_, _>>()?;
        let d = direct(&predictor, &queries, tokens, rounds)?;
        let config = ServeConfig {
            max_in_flight: b,
            max_batch: b,
            batch_window_ms: 2,
            when_full: WhenFull::Wait,
            device: "cpu".into(),
        };
        let s = rt.block_on(async {
            let serve = if eager {
                let yaml = perceptio::serve::SERVE_YAML
                    .replace("eager: false", "eager: true")
                    .replace("${PERCEPTIO_MODEL:-runs/demo/model-init}", &model.display().to_string());
                ServeRuntime::from_dataflow(&yaml, config).await?
            } else {
                ServeRuntime::new(&model, config).await?
            };
            let m = served(&serve, &images, tokens, rounds).await?;
            serve.shutdown().await?;
            anyhow::Ok(m)
        })?;
        println!(
            "{b:>5} | {:>12.2} {:>12.2} {:>7.3} | {:>10.1}ms {:>10.1}ms {:>7.3}",
            d.rps,
            s.rps,
            s.rps / d.rps,
            d.ttft.as_secs_f64() * 1e3,
            s.ttft.as_secs_f64() * 1e3,
            s.ttft.as_secs_f64() / d.ttft.as_secs_f64()
        );
        breakdown.push((b, s.timings));
    }
    println!("served answers' own timings (means, ms): queue | generate | mask + depth | total");
    for (b, [queue, generate, heads, total]) in breakdown {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("{b:>5} | {:>8.1} {:>8.1} {:>8.1} {:>8.1}", ms(queue), ms(generate), ms(heads), ms(total));
    }
    Ok(())
}
