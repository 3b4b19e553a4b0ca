//! SAM2 Hiera-tiny speed vs PyTorch on the same machine (not run in CI).
//!
//!     cargo bench -p perceptio-models --bench sam2_tiny
//!
//! Builds the tiny preset (1024x1024 input, random weights), times image encoding and mask decoding
//! (one point, three masks) per image on the CPU (flex backend), runs
//! benches/reference/sam2_tiny.py with the venv at $PERCEPTIO_VENV (default /work/.venv-perceptio)
//! and prints both timings and the ratios burn / PyTorch. `SAM2_BENCH_ITERS` sets the iterations
//! (default 3). The PyTorch side uses the same number of threads (`SAM2_BENCH_THREADS`, default:
//! all cores).

use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use perceptio_models::sam2::{Prompts, Sam2Config};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let iters: usize = std::env::var("SAM2_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let threads = std::env::var("SAM2_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let device = Device::flex();
    let sam = Sam2Config::hiera_tiny().init(&device).expect("tiny preset is valid");
    let pixels = Tensor::<4>::random([1, 3, 1024, 1024], Distribution::Normal(0.0, 1.0), &device);
    let prompts = Prompts {
        points: Some((
            Tensor::<1>::from_data([500.0f32, 375.0].as_slice(), &device).reshape([1, 1, 1, 2]),
            Tensor::<1>::from_data([1.0f32].as_slice(), &device).reshape([1, 1, 1]),
        )),
        ..Prompts::default()
    };
    // Warm-up, and force the results to the host so lazy backends finish the work.
    let mut emb = sam.image_embeddings(pixels.clone()).expect("shape is right");
    let _ = emb.embedding.clone().into_data();
    let mut enc = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        emb = sam.image_embeddings(pixels.clone()).expect("shape is right");
        let _ = emb.embedding.clone().into_data();
        if let Some(fine) = &emb.high_res {
            let _ = fine.feat_s0.clone().into_data();
        }
        enc.push(t.elapsed().as_secs_f64());
    }
    let mut dec = Vec::new();
    for _ in 0..iters * 5 {
        let t = Instant::now();
        let out = sam.predict(&emb, &prompts, true).expect("prompts are valid");
        let _ = out.masks.into_data();
        let _ = out.iou_scores.into_data();
        dec.push(t.elapsed().as_secs_f64());
    }
    let (enc, dec) = (median(enc), median(dec));
    println!("burn (flex, CPU): encode {enc:.3} s/image, decode {:.2} ms/prompt", dec * 1e3);

    let venv = std::env::var("PERCEPTIO_VENV").unwrap_or_else(|_| "/work/.venv-perceptio".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/reference/sam2_tiny.py");
    let out = Command::new(format!("{venv}/bin/python"))
        .args([script, "--threads", &threads.to_string(), "--iters", &iters.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let line = String::from_utf8_lossy(&o.stdout);
            let v: serde_json::Value = match serde_json::from_str(line.trim()) {
                Ok(v) => v,
                Err(e) => {
                    println!("could not parse the reference output `{line}`: {e}");
                    return;
                }
            };
            let (pe, pd) = (v["encode_s"].as_f64().unwrap_or(f64::NAN), v["decode_s"].as_f64().unwrap_or(f64::NAN));
            println!("PyTorch ({threads} threads): encode {pe:.3} s/image, decode {:.2} ms/prompt", pd * 1e3);
            println!("ratio burn/PyTorch: encode {:.2}x, decode {:.2}x", enc / pe, dec / pd);
        }
        Ok(o) => println!("reference failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => println!("reference not run ({venv}/bin/python: {e}); burn timings only"),
    }
}
