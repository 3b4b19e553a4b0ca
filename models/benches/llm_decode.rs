//! LLM speed: perceptio's Qwen2 decoder (burn, CPU) against PyTorch eager (transformers'
//! Qwen2ForCausalLM) on the same machine, same shapes, same thread count; prints prefill and
//! decode tokens/s and their ratios (perceptio / PyTorch).
//!
//! Run (needs `[[bench]] name = "llm_decode", harness = false` in models/Cargo.toml):
//!   cargo bench -p perceptio-models --bench llm_decode -- [tiny|0.5b|all] [--threads N]
//!     [--prompt 128] [--decode 32] [--repeats 3] [--no-torch]
//! The PyTorch side is benches/reference/llm_bench.py, run with the venv at $PERCEPTIO_VENV
//! (default /work/.venv-perceptio), which is created with scripts/fixtures/setup-venv.sh if missing.
//! Both sides use randomly initialised f32 weights, batch 1, greedy decoding with a KV cache;
//! each number is the best of `--repeats` runs. Not part of CI.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::prelude::*;
use perceptio_models::llm::{Qwen2Config, argmax, ids_tensor};

struct Args {
    which: String,
    threads: usize,
    prompt: usize,
    decode: usize,
    repeats: usize,
    /// Skip the PyTorch side (perceptio's numbers only, no venv needed).
    no_torch: bool,
}

fn parse() -> Args {
    let mut a = Args {
        which: "all".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        prompt: 128,
        decode: 32,
        repeats: 3,
        no_torch: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match x.as_str() {
            "--threads" => a.threads = num("--threads"),
            "--prompt" => a.prompt = num("--prompt"),
            "--decode" => a.decode = num("--decode"),
            "--repeats" => a.repeats = num("--repeats"),
            "--bench" => {}
            "--no-torch" => a.no_torch = true,
            "tiny" | "0.5b" | "all" => a.which = x,
            other => eprintln!("ignoring argument {other}"),
        }
    }
    a
}

/// (prefill tokens/s, decode tokens/s) of perceptio.
fn perceptio(cfg: &Qwen2Config, a: &Args) -> (f64, f64) {
    let device = Device::flex();
    let model = cfg.init(&device);
    let prompt: Vec<u32> = (0..a.prompt).map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32).collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..a.repeats {
        let mut cache = model.new_cache(1);
        let t0 = Instant::now();
        let x = model.model.embed(ids_tensor(&[prompt.clone()], &device)); // [1, p, d]
        let logits = model.step_embeds(x, &[vec![false; a.prompt]], &mut cache); // [1, v]
        let row = logits.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        let mut next = argmax(&row);
        best_prefill = best_prefill.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for _ in 0..a.decode {
            let x = model.model.embed(ids_tensor(&[vec![next]], &device)); // [1, 1, d]
            let logits = model.step_embeds(x, &[vec![false]], &mut cache); // [1, v]
            let row = logits.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
            next = argmax(&row);
        }
        best_decode = best_decode.min(t0.elapsed().as_secs_f64());
    }
    (a.prompt as f64 / best_prefill, a.decode as f64 / best_decode)
}

fn venv_python() -> PathBuf {
    let venv = std::env::var("PERCEPTIO_VENV").unwrap_or_else(|_| "/work/.venv-perceptio".into());
    let py = PathBuf::from(&venv).join("bin/python");
    if !py.exists() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        eprintln!("creating the PyTorch venv at {venv} (scripts/fixtures/setup-venv.sh)");
        let status = Command::new("bash")
            .arg(root.join("scripts/fixtures/setup-venv.sh"))
            .env("PERCEPTIO_VENV", &venv)
            .status()
            .expect("running setup-venv.sh");
        assert!(status.success(), "setup-venv.sh failed");
    }
    py
}

/// (prefill tokens/s, decode tokens/s) of PyTorch eager.
fn pytorch(cfg: &Qwen2Config, a: &Args) -> (f64, f64) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/reference/llm_bench.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg(script)
        .args(["--hidden", &cfg.hidden_size.to_string()])
        .args(["--layers", &cfg.num_hidden_layers.to_string()])
        .args(["--heads", &cfg.num_attention_heads.to_string()])
        .args(["--kv-heads", &cfg.num_key_value_heads.to_string()])
        .args(["--ffn", &cfg.intermediate_size.to_string()])
        .args(["--vocab", &cfg.vocab_size.to_string()])
        .args(["--prompt", &a.prompt.to_string()])
        .args(["--decode", &a.decode.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args(["--repeats", &a.repeats.to_string()])
        .env("OMP_NUM_THREADS", a.threads.to_string());
    if cfg.tie_word_embeddings {
        cmd.arg("--tied");
    }
    let out = cmd.output().expect("running the PyTorch reference");
    assert!(out.status.success(), "PyTorch reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON from llm_bench.py");
    (v["prefill_tok_s"].as_f64().unwrap_or(0.0), v["decode_tok_s"].as_f64().unwrap_or(0.0))
}

fn main() {
    let a = parse();
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        // SAFETY: set before any thread is started (the first burn op has not run yet).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string()) };
    }
    let mut shapes = Vec::new();
    if a.which == "tiny" || a.which == "all" {
        shapes.push(("tiny", Qwen2Config::tiny()));
    }
    if a.which == "0.5b" || a.which == "all" {
        shapes.push(("qwen2.5-0.5b shape", Qwen2Config::qwen2_5_0_5b()));
    }
    println!(
        "LLM benchmark: batch 1, f32, prompt {} tokens, {} decode steps (KV cache), best of {}, {} threads",
        a.prompt, a.decode, a.repeats, a.threads
    );
    println!(
        "{:<20} {:>14} {:>14} {:>8} {:>14} {:>14} {:>8}",
        "model", "prefill tok/s", "torch", "ratio", "decode tok/s", "torch", "ratio"
    );
    for (name, cfg) in shapes {
        let (p, d) = perceptio(&cfg, &a);
        if a.no_torch {
            println!("{:<20} {:>14.1} {:>14} {:>8} {:>14.2} {:>14} {:>8}", name, p, "-", "-", d, "-", "-");
            continue;
        }
        let (tp, td) = pytorch(&cfg, &a);
        println!("{:<20} {:>14.1} {:>14.1} {:>8.2} {:>14.2} {:>14.2} {:>8.2}", name, p, tp, p / tp, d, td, d / td);
    }
}
