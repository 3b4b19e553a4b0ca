//! Synthetic-world throughput: scenes/s for rendering alone, for the whole per-scene pipeline (render, tasks,
//! PNG encoding) on one thread, and for `write_dataset` (the `perceptio synth --scenes N --size 128` work) on all
//! cores; prints the multi-thread / one-thread ratio.
//! Run: `cargo bench -p perceptio-synth --bench scenes` (SYNTH_BENCH_SCENES=N to change the dataset size).

use std::time::Instant;

use perceptio_synth::pipeline::{Split, encode_scene, generate_scene, threads};
use perceptio_synth::render::render;
use perceptio_synth::scene::sample_scene;
use perceptio_synth::{SynthConfig, write_dataset};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() {
    let scenes: usize = std::env::var("SYNTH_BENCH_SCENES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let cfg = SynthConfig { size: 128, scenes, ..Default::default() };
    let n_single = 200u64;

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let sampled: Vec<_> = (0..n_single).map(|_| sample_scene(&mut rng, &cfg.scene, cfg.size, cfg.size)).collect();
    let t = Instant::now();
    let mut checksum = 0u64;
    for s in &sampled {
        checksum += render(s, cfg.antialias).rgb[0] as u64;
    }
    let render_rate = n_single as f64 / t.elapsed().as_secs_f64();
    println!("render only, 1 thread, 128x128:            {render_rate:8.1} scenes/s  (checksum {checksum})");

    let t = Instant::now();
    let mut rows = 0usize;
    for i in 0..n_single {
        let rec = generate_scene(&cfg, 7, i);
        rows += encode_scene(&rec, 7, Split::Train).expect("encode").samples.len();
    }
    let single = n_single as f64 / t.elapsed().as_secs_f64();
    println!("scene + tasks + PNG, 1 thread:             {single:8.1} scenes/s  ({rows} rows)");

    let dir = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let summary = write_dataset(dir.path(), &cfg, 0, |_| {}).expect("write dataset");
    let secs = t.elapsed().as_secs_f64();
    let total_rows: u64 = summary.files.iter().map(|f| f.2).sum();
    let bytes: u64 = summary.files.iter().map(|f| std::fs::metadata(&f.1).map_or(0, |m| m.len())).sum();
    let rate = scenes as f64 / secs;
    println!(
        "write_dataset {scenes} scenes, {} threads:     {rate:8.1} scenes/s  ({secs:.2} s, {total_rows} rows, {:.1} MB)",
        threads(&cfg),
        bytes as f64 / 1e6
    );
    println!("ratio dataset ({} threads) / pipeline (1 thread): {:.2}x", threads(&cfg), rate / single);
}
