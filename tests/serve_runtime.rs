//! The embedded serving runtime end to end, on a tiny random model: constrained depth spans, batching that does
//! not change answers, cancellation and the in-flight bound, and bad requests failing alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use perceptio::actors::perceptio::init::{init_tiny_model, init_tiny_model_with, write_untrained_vqvae};
use perceptio::models::perceptio::checkpoint::{TOKENIZER_FILE, save_model};
use perceptio::models::perceptio::image::encoder_input;
use perceptio::models::perceptio::predict::{AskOptions, Predictor, Query};
use perceptio::serve::{
    Event, ImageInput, RequestHandle, ServeConfig, ServeError, ServeRuntime, SubmitError, SubmitOptions, WhenFull,
};

/// The tokenizer's corpus: every word a test question uses.
const CORPUS: [&str; 6] = [
    "where is the red cube ?",
    "which object is closer to the camera , the blue sphere or the green cone ?",
    "how far is the yellow cylinder ?",
    "It is the red cube .",
    "the sphere is closer .",
    "point to the nearest object",
];

/// A random tiny model directory (random VQ-VAE too) under `dir`.
fn tiny_model(dir: &Path) -> PathBuf {
    let vq_dir = dir.join("vqvae");
    write_untrained_vqvae(&vq_dir, 3).unwrap();
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
    let model = dir.join("model");
    init_tiny_model(&texts, &vq_dir, &model, 11).unwrap();
    model
}

/// A `w x h` RGB PNG with a pattern that depends on `seed`.
fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let data: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37 + seed * 101) % 251) as u8).collect();
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    }
    out
}

fn config(max_in_flight: usize, max_batch: usize, window_ms: u64, when_full: WhenFull) -> ServeConfig {
    ServeConfig { max_in_flight, max_batch, batch_window_ms: window_ms, when_full, device: "cpu".into() }
}

/// Every event of a request, to the end of its stream.
async fn events(mut h: RequestHandle) -> Vec<Event> {
    let mut all = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(120), h.next()).await.expect("an event in time") {
        all.push(e);
    }
    all
}

fn done(events: &[Event]) -> (&perceptio::serve::Answer, &perceptio::serve::Timings) {
    match events.last() {
        Some(Event::Done { answer, timings }) => (answer, timings),
        other => panic!("the stream should end with Done, got {other:?}"),
    }
}

fn token_ids(events: &[Event]) -> Vec<u32> {
    events.iter().filter_map(|e| if let Event::Token { id, .. } = e { Some(*id) } else { None }).collect()
}

/// Makes the random model open its answer with `[SEG]` and then `<d_start>` for `query`: the head rows of both
/// tokens point along the hidden states at those two steps. Everything after `<d_start>` is left to the weights
/// and the decoding constraint.
fn force_span_opening(model: &Path, query: &Query, out: &Path) {
    let device = Device::flex();
    let mut p = Predictor::load(model, &device).unwrap();
    let sp = p.text.specials;
    let prompt = p.prompt(&query.question).unwrap();
    let size = p.cfg.vlm.vision.image_size;
    let pixels = encoder_input(&query.rgb, query.height, query.width, size);
    let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, size, size]), &device); // [1, 3, p, p]
    let image = p.model.image.forward(pixels); // [1, T, d]
    let last_hidden = |ids: Vec<u32>| -> Vec<f32> {
        let h = p.model.llm.forward(&[ids], Some(image.clone())).unwrap().hidden; // [1, S, d]
        let [_, s, d] = h.dims();
        h.slice([0..1, s - 1..s, 0..d]).into_data().convert::<f32>().try_to_vec::<f32>().unwrap() // [1, 1, d]
    };
    let h1 = last_hidden(prompt.clone());
    let h2 = last_hidden([prompt, vec![sp.seg]].concat());
    let head = p.model.llm.new_head.val(); // [A, d]
    let [a, d] = head.dims();
    let mut rows = head.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let base = p.model.llm.base_vocab();
    for (token, h, scale) in [(sp.seg, &h1, 400.0), (sp.d_start, &h2, 100.0)] {
        let norm2: f32 = h.iter().map(|x| x * x).sum();
        let r = token as usize - base;
        for k in 0..d {
            rows[r * d + k] = scale * h[k] / norm2;
        }
    }
    p.model.llm.new_head = Param::from_tensor(Tensor::<2>::from_data(TensorData::new(rows, [a, d]), &device));
    save_model(out, &p.cfg, &p.model).unwrap();
    std::fs::copy(model.join(TOKENIZER_FILE), out.join(TOKENIZER_FILE)).unwrap();
}

/// A tiny model under `dir` whose answer to its (image, question) opens with `[SEG] <d_start>`, so a depth span of
/// exactly span_len forced codes follows. Its mask decoder has the grounding map, so serving must carry each
/// request's image-token states to it.
fn forced_model(dir: &Path) -> (PathBuf, Vec<u8>, &'static str) {
    let vq_dir = dir.join("vqvae");
    write_untrained_vqvae(&vq_dir, 3).unwrap();
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
    let model = dir.join("model");
    init_tiny_model_with(&texts, &vq_dir, &model, 11, &|cfg| cfg.seg_grounding = true).unwrap();
    let image = png(40, 30, 1);
    let question = "where is the red cube ?";
    let forced = dir.join("forced");
    force_span_opening(&model, &Query::from_png(&image, question).unwrap(), &forced);
    (forced, image, question)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depth_span_holds_exactly_span_len_codes_and_streams_mask_depth_and_done() {
    let dir = tempfile::tempdir().unwrap();
    let (forced, image, question) = forced_model(dir.path());
    let p = Predictor::load(&forced, &Device::flex()).unwrap();
    let (sp, n) = (p.text.specials, p.span_len());
    assert!(p.cfg.seg_grounding);
    let direct = p.answer(&[Query::from_png(&image, question).unwrap()], &AskOptions::default()).unwrap().remove(0);
    drop(p);

    let rt = ServeRuntime::new(&forced, config(4, 1, 0, WhenFull::Wait)).await.unwrap();
    let opts = SubmitOptions { max_new_tokens: 160 };
    let all = events(rt.submit(ImageInput::Png(image.clone()), question, opts).await.unwrap()).await;
    let (answer, timings) = done(&all);
    let ids = token_ids(&all);
    assert_eq!(ids, answer.ids, "the streamed tokens are the answer's ids");
    assert_eq!(&ids[..2], &[sp.seg, sp.d_start], "the forced opening");
    let end = ids.iter().position(|&t| t == sp.d_end).expect("the span closes");
    assert_eq!(end - 2, n, "exactly span_len codes between the markers");
    assert!(ids[2..end].iter().all(|&t| sp.is_code(t)));
    assert_eq!(answer.depth_codes.as_ref().map(Vec::len), Some(n));
    assert!(answer.seg);
    let mask = all.iter().position(|e| matches!(e, Event::Mask { .. })).expect("a mask event");
    let depth = all.iter().position(|e| matches!(e, Event::Depth { .. })).expect("a depth event");
    let token_at = |t: u32| all.iter().position(|e| matches!(e, Event::Token { id, .. } if *id == t)).unwrap();
    assert!(mask > token_at(sp.seg) && mask < all.len() - 1, "the mask follows [SEG] and comes before Done");
    assert!(depth > token_at(sp.d_end) && depth < all.len() - 1, "the depth map follows <d_end>, before Done");
    if let Event::Mask { probs, size } = &all[mask] {
        assert_eq!(probs.len(), size * size);
        assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
        // the served mask (grounding map included) is the one the model gives when called directly
        let want = direct.mask.as_ref().expect("the direct answer has a mask too");
        let diff = probs.iter().zip(&want.probs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "served and direct masks differ by {diff}");
    }
    if let Event::Depth { values, size } = &all[depth] {
        assert_eq!(values.len(), size * size);
        assert!(values.iter().all(|v| v.is_finite()));
    }
    assert!(timings.total >= timings.generate && timings.generate > Duration::ZERO);
    assert!(timings.mask > Duration::ZERO && timings.depth > Duration::ZERO, "the heads' decode times: {timings:?}");

    // eager SAM2 encoding (every image encoded beside the LLM) gives the same stream and the same mask
    let eager_yaml = perceptio::serve::SERVE_YAML
        .replace("eager: false", "eager: true")
        .replace("${PERCEPTIO_MODEL:-runs/demo/model-init}", &forced.display().to_string());
    assert_ne!(eager_yaml, perceptio::serve::SERVE_YAML);
    let eager = ServeRuntime::from_dataflow(&eager_yaml, config(4, 1, 0, WhenFull::Wait)).await.unwrap();
    let again = events(eager.submit(ImageInput::Png(image.clone()), question, opts).await.unwrap()).await;
    eager.shutdown().await.unwrap();
    assert_eq!(done(&again).0.ids, answer.ids);
    let mask_of = |events: &[Event]| {
        events.iter().find_map(|e| if let Event::Mask { probs, .. } = e { Some(probs.clone()) } else { None })
    };
    let (lazy_mask, eager_mask) = (mask_of(&all).unwrap(), mask_of(&again).expect("a mask event"));
    let diff = lazy_mask.iter().zip(&eager_mask).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "lazy and eager SAM2 encoding give the same mask (max difference {diff})");

    // cut short inside the span: no depth map, the codes so far
    let short = SubmitOptions { max_new_tokens: 20 };
    let all = events(rt.submit(ImageInput::Png(image), question, short).await.unwrap()).await;
    let (answer, _) = done(&all);
    assert_eq!(answer.ids.len(), 20);
    assert_eq!(answer.depth_codes.as_ref().map(Vec::len), Some(18));
    assert!(!all.iter().any(|e| matches!(e, Event::Depth { .. })));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_joins_the_running_batch_between_decode_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (forced, image, question) = forced_model(dir.path());
    let rt = ServeRuntime::new(&forced, config(4, 4, 0, WhenFull::Wait)).await.unwrap();
    // the long request has at least 103 tokens to go ([SEG], <d_start>, 100 forced codes, <d_end>)
    let long_before = Instant::now();
    let mut long = rt.submit(ImageInput::Png(image), question, SubmitOptions { max_new_tokens: 160 }).await.unwrap();
    let first = long.next().await;
    assert!(matches!(first, Some(Event::Token { .. })), "the long request is decoding: {first:?}");
    let short =
        rt.submit(ImageInput::Png(png(16, 16, 3)), "where ?", SubmitOptions { max_new_tokens: 3 }).await.unwrap();
    let short_after = Instant::now();
    let read = |h| tokio::spawn(events(h));
    let (long, short) = (read(long), read(short));
    let (long, short) = (long.await.unwrap(), short.await.unwrap());
    let ((long, long_t), (short, short_t)) = (done(&long), done(&short));
    assert!(long.ids.len() >= 103, "{} ids", long.ids.len());
    assert_eq!((long.batch_size, short.batch_size), (1, 2), "the short request joined the running one");
    assert_eq!(short.ids.len(), 3);
    // When each request's generation ended, by the runtime's own clock: submission + queue + generate. Each was
    // stamped inside `submit`, so between the instants taken around it. (Not when the streams were read: `Done`
    // also waits for the heads, and the reading tasks may be scheduled late on a busy machine.)
    let short_end = short_after + short_t.queue + short_t.generate;
    let long_end = long_before + long_t.queue + long_t.generate;
    assert!(short_end < long_end, "the short request finished generating while the long one was still decoding");
    rt.shutdown().await.unwrap();
}

/// Four different requests: images of different sizes and formats, different questions and token limits.
fn mixed_requests() -> Vec<(ImageInput, &'static str, usize)> {
    let rgb: Vec<u8> = (0..24 * 20 * 3).map(|i| (i * 13 % 256) as u8).collect();
    vec![
        (ImageInput::Png(png(40, 30, 1)), "where is the red cube ?", 24),
        (ImageInput::Png(png(64, 64, 2)), "how far is the yellow cylinder ?", 9),
        (ImageInput::Rgb8 { width: 24, height: 20, pixels: rgb }, "point to the nearest object", 40),
        (
            ImageInput::Png(png(17, 50, 3)),
            "which object is closer to the camera , the blue sphere or the green cone ?",
            16,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_mixed_requests_answers_as_the_same_requests_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());

    let batched = ServeRuntime::new(&model, config(8, 4, 500, WhenFull::Wait)).await.unwrap();
    let mut handles = Vec::new();
    for (image, q, max) in mixed_requests() {
        handles.push(batched.submit(image, q, SubmitOptions { max_new_tokens: max }).await.unwrap());
    }
    let mut together = Vec::new();
    for h in handles {
        together.push(events(h).await);
    }
    batched.shutdown().await.unwrap();
    let sizes: Vec<usize> = together.iter().map(|e| done(e).0.batch_size).collect();
    assert_eq!(sizes, vec![4; 4], "all four ran as one batch");

    let single = ServeRuntime::new(&model, config(8, 1, 0, WhenFull::Wait)).await.unwrap();
    for ((image, q, max), batch_events) in mixed_requests().into_iter().zip(&together) {
        let alone = events(single.submit(image, q, SubmitOptions { max_new_tokens: max }).await.unwrap()).await;
        let (a, b) = (done(&alone).0, done(batch_events).0);
        assert_eq!(a.ids, b.ids, "`{q}`: batched and alone generate the same ids");
        assert!(!a.ids.is_empty() && a.ids.len() <= max);
        assert_eq!(token_ids(batch_events), b.ids, "`{q}`: streamed tokens");
        assert_eq!((&a.text, a.seg, &a.depth_codes), (&b.text, b.seg, &b.depth_codes));
    }
    single.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_or_dropping_a_request_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let image = || ImageInput::Png(png(32, 32, 4));
    let long = SubmitOptions { max_new_tokens: 400 };

    // a one-second batch window keeps a lone request queued in the answer node: its slot stays taken
    let rt = ServeRuntime::new(&model, config(1, 4, 1000, WhenFull::Reject)).await.unwrap();
    let first = rt.submit(image(), "where is the red cube ?", long).await.unwrap();
    assert_eq!(
        rt.submit(image(), "where is the red cube ?", long).await.err(),
        Some(SubmitError::Busy { max_in_flight: 1 })
    );
    first.cancel();
    assert_eq!(rt.in_flight(), 0);
    let second = rt.submit(image(), "where is the red cube ?", long).await.expect("the slot is free after cancel");
    drop(second);
    let third = rt.submit(image(), "how far is the yellow cylinder ?", SubmitOptions { max_new_tokens: 8 });
    let all = events(third.await.expect("the slot is free after drop")).await;
    assert!(done(&all).0.ids.len() <= 8);
    // the cancelled stream ends after what was already delivered
    let rest = events(first).await;
    assert!(!rest.iter().any(|e| matches!(e, Event::Done { .. })), "a cancelled request gets no answer");
    rt.shutdown().await.unwrap();

    // waiting mode: submit waits for the slot and gets it once the holder cancels
    let rt = ServeRuntime::new(&model, config(1, 4, 3000, WhenFull::Wait)).await.unwrap();
    let holder = rt.submit(image(), "where is the red cube ?", long).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(200), rt.submit(image(), "where ?", long)).await;
    assert!(waiting.is_err(), "submit waits while the only slot is taken");
    holder.cancel();
    let next = tokio::time::timeout(Duration::from_secs(10), rt.submit(image(), "where ?", SubmitOptions::default()));
    assert!(next.await.expect("submit proceeds once the slot is freed").is_ok());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_alone_while_their_batch_completes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let rt = ServeRuntime::new(&model, config(8, 4, 300, WhenFull::Wait)).await.unwrap();
    let opts = SubmitOptions { max_new_tokens: 12 };
    let too_long = "the red cube ".repeat(200);
    let bad_png = rt.submit(ImageInput::Png(b"\x89PNG not really".to_vec()), "where is the red cube ?", opts);
    let bad_png = bad_png.await.unwrap();
    let long = rt.submit(ImageInput::Png(png(32, 32, 5)), too_long, opts).await.unwrap();
    let good = rt.submit(ImageInput::Png(png(32, 32, 6)), "where is the red cube ?", opts).await.unwrap();
    let short_rgb = ImageInput::Rgb8 { width: 10, height: 10, pixels: vec![0; 299] };
    let bad_rgb = rt.submit(short_rgb, "where is the red cube ?", opts).await.unwrap();
    let too_many = rt.submit(ImageInput::Png(png(8, 8, 7)), "where ?", SubmitOptions { max_new_tokens: 10_000 });
    let too_many = too_many.await.unwrap();

    let error = |all: Vec<Event>| match all.as_slice() {
        [Event::Error { message }] => message.clone(),
        other => panic!("expected exactly one Error event, got {other:?}"),
    };
    assert!(error(events(bad_png).await).contains("PNG"));
    let m = error(events(long).await);
    assert!(m.contains("longer than max_len 512"), "{m}");
    assert!(error(events(bad_rgb).await).contains("299 bytes for a 10x10 RGB image"));
    assert!(error(events(too_many).await).contains("max_new_tokens 10000"));
    let all = events(good).await;
    assert!(!done(&all).0.ids.is_empty(), "the good request completes");
    // and the runtime keeps serving
    let again = rt.submit(ImageInput::Png(png(20, 20, 8)), "where is the red cube ?", opts).await.unwrap();
    done(&events(again).await);
    let summary = rt.shutdown().await.unwrap();
    assert_eq!(summary.read, 6, "every submitted request entered the graph");
    assert_eq!(summary.failed, 4, "the four bad requests are counted as failed rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_returns_busy_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // requests wait for the one-second window, so both slots are surely taken when the third comes
    let rt = ServeRuntime::new(&model, config(2, 4, 1000, WhenFull::Reject)).await.unwrap();
    let opts = SubmitOptions { max_new_tokens: 6 };
    let a = rt.submit(ImageInput::Png(png(16, 16, 1)), "where ?", opts).await.unwrap();
    let b = rt.submit(ImageInput::Png(png(16, 16, 2)), "where ?", opts).await.unwrap();
    assert_eq!(rt.in_flight(), 2);
    let busy = rt.submit(ImageInput::Png(png(16, 16, 3)), "where ?", opts).await;
    assert_eq!(busy.err(), Some(SubmitError::Busy { max_in_flight: 2 }));
    assert!(a.finish().await.is_ok());
    let c = rt.submit(ImageInput::Png(png(16, 16, 3)), "where ?", opts).await.expect("a slot freed by Done");
    assert!(b.finish().await.is_ok() && c.finish().await.is_ok());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_dataflow_validates_and_needs_the_runtime() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = perceptio::Graph::from_file(&repo.join("dataflows/serve.yaml"), &perceptio::registry()).unwrap();
    let err = graph.start(Default::default()).await.err().expect("serve-requests cannot build detached");
    assert!(err.to_string().contains("ServeRuntime"), "{err}");

    let not_serving = "nodes:\n  - id: s\n    kind: serve-requests\n";
    match ServeRuntime::from_dataflow(not_serving, ServeConfig::default()).await {
        Err(ServeError::NotServing { kind, .. }) => assert_eq!(kind, "serve-events"),
        Err(e) => panic!("expected NotServing, got {e}"),
        Ok(_) => panic!("expected NotServing"),
    }
    match ServeRuntime::new("/nonexistent/model", ServeConfig::default()).await {
        Err(e) => assert!(e.to_string().contains("/nonexistent/model"), "{e}"),
        Ok(_) => panic!("a missing model directory fails at start"),
    }
}
