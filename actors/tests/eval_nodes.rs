//! The evaluation nodes: `perceptio-infer` answers every usable row through a real graph (one output row per
//! input, in order, with a mask for `[SEG]` and a depth span of exactly N codes decoded into a map; a span cut
//! short by the token budget is not decoded), honours `limit`, and sends undecodable images and over-long prompts
//! to `errors` with their ids; `perceptio-score` turns hand-made predictions into the numbers worked out by hand,
//! and its table through the graph accounts for exactly the rows answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, Float32Builder, Int32Array, Int32Builder, ListArray,
    ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};
use perceptio_actors::image_decode::image_bytes;
use perceptio_actors::perceptio::infer::{GENERATED, PRED_DEPTH, PRED_DEPTH_CODES, PRED_MASK, SEG};
use perceptio_actors::perceptio::init::{init_tiny_model, write_untrained_vqvae};
use perceptio_actors::perceptio::score::{EvalTable, Scorer};
use perceptio_models::depth::depth_target_from_png;
use perceptio_models::perceptio::checkpoint::{load_model, save_model};
use perceptio_runtime::{Graph, RunOptions};
use perceptio_synth::{Split, SynthConfig, SynthStream};

#[path = "support/parquet_io.rs"]
mod parquet_io;
use parquet_io::{read_all, strings, write_parquet};

/// Codes per depth span of the tiny preset (80 px maps, 10x10 grid) and the decoded map's side.
const SPAN: usize = 100;
const DEPTH_SIDE: usize = 80;
/// K, the tiny tokenizer's codebook size.
const NUM_CODES: i32 = 128;
/// The tiny SAM2 input size (the predicted masks' side).
const MASK_SIDE: u32 = 128;

fn synth_rows(scenes: usize, seed: u64) -> RecordBatch {
    let cfg = SynthConfig {
        size: 64,
        scenes,
        val_fraction: 0.0,
        test_fraction: 0.0,
        threads: 1,
        batch_rows: 64,
        ..SynthConfig::default()
    };
    let batches: Vec<RecordBatch> = SynthStream::new(cfg, seed, Split::Train).unwrap().map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// A tiny model directory for `rows`: word tokenizer from their texts, a random VQ-VAE, other parts from a seed.
/// The head rows of `[SEG]` and `<d_start>` are set to 2000 u and 1000 u (u random): where the last hidden state
/// leans along u, an answer starts with `[SEG]` and opens the depth span right after it.
fn model_dir(dir: &Path, rows: &RecordBatch) -> PathBuf {
    let device = Device::flex();
    let vq_dir = dir.join("vqvae");
    write_untrained_vqvae(&vq_dir, 5).unwrap();
    let mut texts = strings(rows, "question");
    texts.extend(strings(rows, "answer"));
    let out = dir.join("model");
    init_tiny_model(&texts, &vq_dir, &out, 11).unwrap();

    let (cfg, mut model) = load_model(&out, &device).unwrap();
    let head = model.llm.new_head.val(); // [A, d]
    let [a, d] = head.dims();
    let u = Tensor::<2>::random([1, d], Distribution::Normal(0.0, 1.0), &device).mul_scalar(-1000.0); // [1, d]
    let rest = head.slice([2..a, 0..d]); // [A - 2, d]
    let head = Tensor::cat(vec![u.clone().mul_scalar(2.0), u, rest], 0); // [A, d]: [SEG] = 2u, <d_start> = u
    model.llm.new_head = Param::from_tensor(head);
    save_model(&out, &cfg, &model).unwrap();
    out
}

/// `rows` with row `bad_image`'s image replaced by bytes that are no PNG (the image column becomes plain
/// binary) and row `long`'s question made longer than the model's 512-token limit.
fn with_bad_rows(rows: &RecordBatch, bad_image: usize, long: usize) -> RecordBatch {
    let image = rows.column_by_name("image").unwrap();
    let images: BinaryArray = (0..rows.num_rows())
        .map(|r| Some(if r == bad_image { b"not a png".as_slice() } else { image_bytes(image, r).unwrap() }))
        .collect();
    let questions = strings(rows, "question");
    let mut q = StringBuilder::new();
    for (r, text) in questions.iter().enumerate() {
        if r == long { q.append_value("closer ".repeat(600)) } else { q.append_value(text) }
    }
    let schema = rows.schema();
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in schema.fields().iter().zip(rows.columns()) {
        match f.name().as_str() {
            "image" => {
                fields.push(Field::new("image", DataType::Binary, false));
                cols.push(Arc::new(images.clone()));
            }
            "question" => {
                fields.push(f.as_ref().clone());
                cols.push(Arc::new(q.finish_cloned()));
            }
            _ => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// Runs replay -> perceptio-infer -> (answers sink, perceptio-score, errors sink) over `data`; returns the
/// answers, the error records and the table.
fn run_eval_graph(
    data: &Path,
    model: &Path,
    out: &Path,
    max_new: usize,
    limit: usize,
) -> (RecordBatch, RecordBatch, EvalTable) {
    let yaml = format!(
        r#"
name: eval-test
nodes:
  - id: replay
    kind: parquet-replay
    params: {{ paths: ["{data}"], batch_rows: 5, id_column: sample_id }}
  - id: infer
    kind: perceptio-infer
    params: {{ model: "{model}", batch_size: 3, max_new_tokens: {max_new}, limit: {limit} }}
    inputs: {{ in: replay/out }}
  - id: answers
    kind: parquet-sink
    params: {{ path: "{out}/answers.parquet" }}
    inputs: {{ in: infer/out }}
  - id: score
    kind: perceptio-score
    params: {{ out: "{out}/eval.json" }}
    inputs: {{ in: infer/out }}
  - id: errors
    kind: parquet-sink
    params: {{ path: "{out}/errors.parquet" }}
    inputs: {{ in: infer/errors }}
"#,
        data = data.display(),
        model = model.display(),
        out = out.display(),
    );
    let graph =
        Graph::from_yaml("eval-test.yaml", &yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    graph.run_blocking(RunOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let table = EvalTable::read_json(&out.join("eval.json")).unwrap();
    (read_all(&out.join("answers.parquet")), read_all(&out.join("errors.parquet")), table)
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
}

#[test]
fn infer_answers_every_usable_row_and_score_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = synth_rows(2, 3);
    let model = model_dir(tmp.path(), &rows);
    let n = rows.num_rows();
    assert!(n >= 8, "{n} rows");
    let rows = with_bad_rows(&rows, 1, 4);
    let ids = strings(&rows, "sample_id");
    let data = tmp.path().join("rows.parquet");
    write_parquet(&data, &rows);
    let (answers, errors, table) = run_eval_graph(&data, &model, &tmp.path().join("full"), 160, 0);

    // the two bad rows are errors, named by id
    let (err_ids, reasons) = (strings(&errors, "id"), strings(&errors, "error"));
    assert_eq!(err_ids, vec![ids[1].clone(), ids[4].clone()], "{reasons:?}");
    assert!(reasons[0].contains("image"), "{}", reasons[0]);
    assert!(reasons[1].contains("longer than max_len"), "{}", reasons[1]);

    // every other row once, in order, with its input columns
    let expected: Vec<String> =
        ids.iter().enumerate().filter(|(r, _)| *r != 1 && *r != 4).map(|(_, s)| s.clone()).collect();
    assert_eq!(strings(&answers, "sample_id"), expected);
    assert_eq!(strings(&answers, "question").len(), n - 2);
    let text: &StringArray = col(&answers, GENERATED);
    let seg: &BooleanArray = col(&answers, SEG);
    let mask: &BinaryArray = col(&answers, PRED_MASK);
    let depth: &ListArray = col(&answers, PRED_DEPTH);
    let codes: &ListArray = col(&answers, PRED_DEPTH_CODES);
    assert_eq!(text.null_count(), 0);
    // the forced head makes every answer `[SEG]`, then a span; the decoder closes it after exactly N codes
    for r in 0..answers.num_rows() {
        assert!(seg.value(r) && !mask.is_null(r), "row {r}: [SEG] and its mask");
        let (m, w, h) = perceptio_synth::codec::decode_mask(mask.value(r)).unwrap();
        assert_eq!((w, h, m.len()), (MASK_SIDE, MASK_SIDE, (MASK_SIDE * MASK_SIDE) as usize));
        assert!(!codes.is_null(r), "row {r}: no depth span");
        let c = codes.value(r);
        let c = c.as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(c.len(), SPAN, "row {r}: a span holds exactly N codes");
        assert!(c.values().iter().all(|&k| (0..NUM_CODES).contains(&k)), "row {r}: codes out of range");
        assert!(!depth.is_null(r), "row {r}: a complete span is decoded");
        assert_eq!(depth.value(r).len(), DEPTH_SIDE * DEPTH_SIDE);
    }

    // the table accounts for exactly the rows answered
    let tasks = strings(&answers, "task");
    let count = |t: &str| tasks.iter().filter(|x| *x == t).count() as u64;
    assert_eq!(table.rows, (n - 2) as u64);
    assert_eq!((table.referring.samples, table.referring.missing), (count("referring"), 0));
    assert_eq!((table.points.samples, table.points.with_depth_span), (count("points"), count("points")));
    assert_eq!((table.depth.samples, table.depth.missing), (count("depth"), 0));
    assert_eq!(table.vqa.samples, count("vqa"));
    assert!(count("vqa") > 0, "the default world asks VQA questions");
    {
        // both numbers group the questions by the rows' `kind` column: per kind, the most common normalised
        // truth (the constant baseline) and the most common normalised answer given (the repeats)
        use std::collections::BTreeMap;
        let kinds = strings(&answers, "kind");
        let per_kind_best = |values: &[String]| -> BTreeMap<String, u64> {
            let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
            for r in (0..tasks.len()).filter(|&r| tasks[r] == "vqa") {
                let v = perceptio_synth::metrics::normalize_answer(&values[r]);
                *groups.entry((kinds[r].clone(), v)).or_insert(0) += 1;
            }
            let mut best = BTreeMap::new();
            for ((kind, _), n) in groups {
                let b = best.entry(kind).or_insert(0);
                *b = n.max(*b);
            }
            best
        };
        let truths = per_kind_best(&strings(&answers, "answer"));
        let want = truths.values().sum::<u64>() as f64 / count("vqa") as f64;
        let got = table.vqa.constant_answer_accuracy.unwrap();
        assert!((got - want).abs() < 1e-12, "constant baseline {got} vs {want}");
        let given_best = per_kind_best(&strings(&answers, GENERATED));
        assert_eq!(table.vqa.repeated_answers, given_best.values().sum::<u64>());
        assert_eq!(table.vqa.kinds(), truths.keys().map(String::as_str).collect::<Vec<_>>());
        // per kind: its questions, its right answers and its constant answer's score
        let by_kind = &table.vqa.by_kind;
        let (given, truth) = (strings(&answers, GENERATED), strings(&answers, "answer"));
        for k in by_kind {
            let rows: Vec<usize> = (0..tasks.len()).filter(|&r| tasks[r] == "vqa" && kinds[r] == k.kind).collect();
            let norm = perceptio_synth::metrics::normalize_answer;
            let right = rows.iter().filter(|&&r| norm(&given[r]) == norm(&truth[r])).count();
            assert_eq!(k.samples, rows.len() as u64, "{}", k.kind);
            assert!((k.accuracy.unwrap() - right as f64 / rows.len() as f64).abs() < 1e-12, "{}", k.kind);
            let constant = truths[&k.kind] as f64 / rows.len() as f64;
            assert!((k.constant_answer_accuracy.unwrap() - constant).abs() < 1e-12, "{}", k.kind);
            assert_eq!(k.most_common_count, given_best[&k.kind], "{}", k.kind);
        }
        let md = table.markdown();
        let first = &by_kind[0];
        assert!(md.contains(&format!("| vqa | `{}` questions: accuracy (constant answer) (%) |", first.kind)), "{md}");
    }
    if count("depth") > 0 {
        let mse = table.depth_mse().unwrap();
        assert!(mse.is_finite() && (0.0..=4.0).contains(&mse), "{mse}");
    }

    // a token budget that ends inside the span: the span is cut short (not decoded, nothing after it);
    // `limit: 4` answers the first four rows only (row 1 among them fails)
    let (answers, errors, table) = run_eval_graph(&data, &model, &tmp.path().join("short"), 40, 4);
    assert_eq!(strings(&errors, "id"), vec![ids[1].clone()]);
    assert_eq!(strings(&answers, "sample_id"), vec![ids[0].clone(), ids[2].clone(), ids[3].clone()]);
    let (text, depth, codes): (&StringArray, &ListArray, &ListArray) =
        (col(&answers, GENERATED), col(&answers, PRED_DEPTH), col(&answers, PRED_DEPTH_CODES));
    for r in 0..answers.num_rows() {
        // 40 tokens: [SEG], <d_start>, 38 codes
        assert_eq!(codes.value(r).len(), 38, "row {r}");
        assert!(depth.is_null(r) && text.value(r).is_empty(), "row {r}");
    }
    assert_eq!(table.rows, 3);
}

/// An 8-bit grey mask PNG of `side x side` with the square [x0, x1) x [y0, y1) set.
fn square_png(side: u32, x0: u32, x1: u32, y0: u32, y1: u32) -> Vec<u8> {
    let m: Vec<bool> =
        (0..side * side).map(|i| (x0..x1).contains(&(i % side)) && (y0..y1).contains(&(i / side))).collect();
    perceptio_synth::codec::encode_mask(&m, side, side).unwrap()
}

/// Hand-made infer rows: task, answer, generated, pred_mask, pred_depth, mask, depth, point count.
struct Hand {
    task: &'static str,
    answer: &'static str,
    generated: &'static str,
    pred_mask: Option<Vec<u8>>,
    pred_depth: Option<Vec<f32>>,
    mask: Option<Vec<u8>>,
    depth: Option<Vec<u8>>,
    points: Option<usize>,
}

fn hand(task: &'static str, answer: &'static str, generated: &'static str) -> Hand {
    Hand { task, answer, generated, pred_mask: None, pred_depth: None, mask: None, depth: None, points: None }
}

fn hand_batch(rows: &[Hand], depth_scale: f32) -> RecordBatch {
    let n = rows.len();
    let s = |f: &dyn Fn(usize, &Hand) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().enumerate().map(|(i, h)| f(i, h))))
    };
    let bin = |f: &dyn Fn(&Hand) -> Option<&Vec<u8>>| -> ArrayRef {
        Arc::new(rows.iter().map(|h| f(h).map(Vec::as_slice)).collect::<BinaryArray>())
    };
    let mut depth = ListBuilder::new(Float32Builder::new());
    let mut codes = ListBuilder::new(Int32Builder::new());
    let mut labels = ListBuilder::new(StringBuilder::new());
    for h in rows {
        match &h.pred_depth {
            Some(d) => {
                depth.values().append_slice(d);
                depth.append(true);
                codes.values().append_slice(&vec![0; SPAN]);
                codes.append(true);
            }
            None => {
                depth.append(false);
                codes.append(false);
            }
        }
        match h.points {
            Some(k) => {
                for l in ["A", "B", "C", "D", "E"].iter().take(k) {
                    labels.values().append_value(l);
                }
                labels.append(true);
            }
            None => labels.append(false),
        }
    }
    let depth: ListArray = depth.finish();
    let codes: ListArray = codes.finish();
    let labels: ListArray = labels.finish();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("sample_id", s(&|i, _| format!("row-{i}"))),
        ("task", s(&|_, h| h.task.to_string())),
        ("answer", s(&|_, h| h.answer.to_string())),
        (GENERATED, s(&|_, h| h.generated.to_string())),
        (SEG, Arc::new(rows.iter().map(|h| Some(h.pred_mask.is_some())).collect::<BooleanArray>())),
        (PRED_MASK, bin(&|h| h.pred_mask.as_ref())),
        (PRED_DEPTH, Arc::new(depth)),
        (PRED_DEPTH_CODES, Arc::new(codes)),
        ("mask", bin(&|h| h.mask.as_ref())),
        ("depth", bin(&|h| h.depth.as_ref())),
        ("depth_scale", Arc::new(Float32Array::from(vec![depth_scale; n]))),
        ("point_labels", Arc::new(labels)),
    ];
    let fields: Vec<Field> = cols.iter().map(|(name, c)| Field::new(*name, c.data_type().clone(), true)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, c)| c).collect()).unwrap()
}

#[test]
fn score_gives_the_hand_computed_numbers() {
    // depth: a 16x16 map from 1 m (left) to 4 m (right)
    let metres: Vec<f32> = (0..256).map(|i| 1.0 + 3.0 * (i % 16) as f32 / 15.0).collect();
    let (depth_png, scale) = perceptio_synth::codec::encode_depth(&metres, 16, 16).unwrap();
    let side = 8;
    let target = depth_target_from_png(&depth_png, scale, side).unwrap();
    let gt_sq = target.iter().map(|&v| (v * v) as f64).sum::<f64>() / target.len() as f64;

    let rows = vec![
        // referring: a miss first (its ground truth, 2x2 of 8x8, is 4x4 = 16 pixels at the 16x16 prediction size),
        // then a perfect mask (4x4 of 8x8 -> 8x8 = 64 pixels at 16x16): cIoU = 64 / (64 + 16) = 0.8
        Hand { mask: Some(square_png(8, 0, 2, 0, 2)), ..hand("referring", "Sure, [SEG].", "Sure.") },
        Hand {
            mask: Some(square_png(8, 2, 6, 2, 6)),
            pred_mask: Some(square_png(16, 4, 12, 4, 12)),
            ..hand("referring", "Sure, [SEG].", "It is the cube.")
        },
        // points: 3 points 1 of 2 right, 4 points 1 of 1 right -> 50%, 100%, average 75%
        Hand { points: Some(3), ..hand("points", "(A)", "(A)") },
        Hand { points: Some(3), ..hand("points", "(C)", "(B)") },
        Hand { points: Some(4), ..hand("points", "(B)", "the answer is (B).") },
        // depth: a perfect map, a flat 0 map (MSE = mean of gt^2), and one without a span
        Hand { depth: Some(depth_png.clone()), pred_depth: Some(target.clone()), ..hand("depth", "", "") },
        Hand { depth: Some(depth_png.clone()), pred_depth: Some(vec![0.0; side * side]), ..hand("depth", "", "") },
        Hand { depth: Some(depth_png.clone()), ..hand("depth", "", "") },
        // vqa: "Two." normalises to "2" (not an exact match); "red" vs "blue" is wrong
        hand("vqa", "2", "Two."),
        hand("vqa", "blue", "red"),
        // failures: an unknown task, a referring row without its ground truth
        hand("captioning", "x", "y"),
        hand("referring", "Sure, [SEG].", "Sure."),
    ];
    let batch = hand_batch(&rows, scale);
    let mut scorer = Scorer::new(0);
    let failed = scorer.add_batch(&batch);
    assert_eq!(failed.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![10, 11], "{failed:?}");
    assert!(failed[0].1.contains("unknown task"), "{}", failed[0].1);
    assert!(failed[1].1.contains("mask"), "{}", failed[1].1);
    let t = scorer.table();
    assert_eq!(t.rows, 10);

    let r = &t.referring;
    assert_eq!((r.samples, r.missing, r.intersection, r.union), (2, 1, 64, 80));
    assert!((t.ciou().unwrap() - 0.8).abs() < 1e-12);
    assert!((r.ciou_answered.unwrap() - 1.0).abs() < 1e-12);
    assert!((r.mean_iou.unwrap() - 0.5).abs() < 1e-12);
    assert!((r.precision_at_half.unwrap() - 0.5).abs() < 1e-12);
    // the one predicted mask covers a quarter of its image; the targets 4 and 16 of 64 pixels
    assert!((r.mean_mask_area.unwrap() - 0.25).abs() < 1e-12, "{:?}", r.mean_mask_area);
    assert!((r.mean_target_area.unwrap() - (4.0 / 64.0 + 0.25) / 2.0).abs() < 1e-12, "{:?}", r.mean_target_area);

    assert_eq!(t.points.samples, 3);
    assert!((t.points_at(3).unwrap() - 0.5).abs() < 1e-12);
    assert!((t.points_at(4).unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(t.points_at(5), None);
    assert!((t.points_average().unwrap() - 0.75).abs() < 1e-12);
    // answered (A), (B), (B); the best constant answer: 1 of 2 truths (A, C) at 3 points, 1 of 1 at 4 points
    assert_eq!((t.points.most_common_answer.as_deref(), t.points.most_common_count), (Some("(B)"), 2));
    assert!((t.points.constant_answer_average.unwrap() - 0.75).abs() < 1e-12);

    let d = &t.depth;
    assert_eq!((d.samples, d.missing), (3, 1));
    assert!((t.depth_mse().unwrap() - gt_sq / 2.0).abs() < 1e-6, "{:?} vs {}", d.mse, gt_sq / 2.0);
    assert!(gt_sq > 0.1, "the ground truth is not flat");
    // the perfect map orders every pair (1.0); the flat map predicts ties only (0.0)
    assert!((t.depth_order_accuracy().unwrap() - 0.5).abs() < 1e-9, "{:?}", d.order_accuracy);
    // both scored rows share one ground truth (a constant map matches it: blind MSE 0); the predictions are the
    // target and 0, whose per-pixel variance is (t / 2)^2
    assert!(d.blind_mse.unwrap().abs() < 1e-9, "{:?}", d.blind_mse);
    assert!((d.prediction_spread.unwrap() - gt_sq / 4.0).abs() < 1e-6, "{:?} vs {}", d.prediction_spread, gt_sq / 4.0);

    assert_eq!((t.vqa.samples, t.vqa.exact, t.vqa.normalized), (2, 0, 1));
    assert!((t.vqa_accuracy().unwrap() - 0.5).abs() < 1e-12);
    // no `kind` column: one group; truths 2 and blue -> a constant answer gets one of two; answers 2 and red
    assert!((t.vqa.constant_answer_accuracy.unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(t.vqa.repeated_answers, 1);
    assert!(t.vqa.by_kind.is_empty(), "{:?}", t.vqa.kinds());

    let md = t.markdown();
    assert!(md.contains("| referring | cIoU (misses count) | 0.800 | 2 (1 without [SEG]) |"), "{md}");
    assert!(md.contains("| points | average accuracy (%) | 75.0 |"), "{md}");
    assert!(md.contains("| points | most common answer | (B) for 2 | 3 |"), "{md}");
    assert!(md.contains("| referring | mean predicted mask area (% of image) | 25.0 | 1 |"), "{md}");
    assert!(md.contains("| referring | mean target area (% of image) | 15.6 | 2 |"), "{md}");
    assert!(md.contains("| vqa | accuracy of the best constant answer per question kind (%) | 50.0 | 2 |"), "{md}");
    assert!(md.contains("| vqa | answers repeating the model's most common one for their kind | 1 | 2 |"), "{md}");
    assert!(md.contains("| points | average accuracy of the best constant answer (%) | 75.0 | 3 |"), "{md}");
    assert!(md.contains("| vqa | accuracy, normalised (%) | 50.0 | 2 |"), "{md}");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sub/eval.json");
    t.write_json(&path).unwrap();
    assert_eq!(EvalTable::read_json(&path).unwrap(), t);
}

#[test]
fn score_tells_an_image_blind_depth_map() {
    // two scenes whose depth runs opposite ways; the model answers both with the first scene's map
    let left: Vec<f32> = (0..256).map(|i| 1.0 + 3.0 * (i % 16) as f32 / 15.0).collect();
    let right: Vec<f32> = (0..256).map(|i| 4.0 - 3.0 * (i % 16) as f32 / 15.0).collect();
    let (png_a, scale) = perceptio_synth::codec::encode_depth(&left, 16, 16).unwrap();
    let (png_b, scale_b) = perceptio_synth::codec::encode_depth(&right, 16, 16).unwrap();
    assert_eq!(scale, scale_b);
    let side = 8;
    let a = depth_target_from_png(&png_a, scale, side).unwrap();
    let b = depth_target_from_png(&png_b, scale, side).unwrap();
    let rows = vec![
        Hand { depth: Some(png_a), pred_depth: Some(a.clone()), ..hand("depth", "", "") },
        Hand { depth: Some(png_b), pred_depth: Some(a.clone()), ..hand("depth", "", "") },
    ];
    let mut scorer = Scorer::new(0);
    assert!(scorer.add_batch(&hand_batch(&rows, scale)).is_empty());
    let d = scorer.table().depth;
    // the best constant map is (a + b) / 2: its MSE is the mean of ((a - b) / 2)^2
    let blind = a.iter().zip(&b).map(|(&x, &y)| (((x - y) / 2.0) as f64).powi(2)).sum::<f64>() / a.len() as f64;
    assert!(blind > 0.1, "the two scenes differ");
    assert!((d.blind_mse.unwrap() - blind).abs() < 1e-6, "{:?} vs {blind}", d.blind_mse);
    assert!(d.prediction_spread.unwrap().abs() < 1e-12, "one map for both images: {:?}", d.prediction_spread);
    // the model's MSE (0 on the first, 4 * blind on the second) is twice the blind one
    assert!((d.mse.unwrap() - 2.0 * blind).abs() < 1e-6, "{:?}", d.mse);
}

/// Point rows of an 8x8 image with their predicted 4x4 depth maps: (answer, generated, points (x, y), nearest
/// map cell (col, row)).
fn map_point_rows(rows: &[(&str, &str, &[(i32, i32)], (usize, usize))]) -> RecordBatch {
    let mut depth = ListBuilder::new(Float32Builder::new());
    let mut codes = ListBuilder::new(Int32Builder::new());
    let mut labels = ListBuilder::new(StringBuilder::new());
    let (mut xs, mut ys) = (ListBuilder::new(Int32Builder::new()), ListBuilder::new(Int32Builder::new()));
    for &(_, _, points, (col, row)) in rows {
        let mut map = vec![-0.5f32; 16];
        map[row * 4 + col] = 0.9;
        depth.values().append_slice(&map);
        depth.append(true);
        codes.values().append_slice(&[0; SPAN]);
        codes.append(true);
        for (k, &(x, y)) in points.iter().enumerate() {
            labels.values().append_value(["A", "B", "C", "D", "E"][k]);
            xs.values().append_value(x);
            ys.values().append_value(y);
        }
        labels.append(true);
        xs.append(true);
        ys.append(true);
    }
    let n = rows.len();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("sample_id", Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("p-{i}"))))),
        ("task", Arc::new(StringArray::from(vec!["points"; n]))),
        ("answer", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0)))),
        (GENERATED, Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1)))),
        (PRED_DEPTH, Arc::new(depth.finish())),
        (PRED_DEPTH_CODES, Arc::new(codes.finish())),
        ("point_labels", Arc::new(labels.finish())),
        ("point_x", Arc::new(xs.finish())),
        ("point_y", Arc::new(ys.finish())),
        ("width", Arc::new(Int32Array::from(vec![8; n]))),
        ("height", Arc::new(Int32Array::from(vec![8; n]))),
    ];
    let fields: Vec<Field> = cols.iter().map(|(name, c)| Field::new(*name, c.data_type().clone(), true)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, c)| c).collect()).unwrap()
}

#[test]
fn score_reads_the_answer_off_the_predicted_depth_map() {
    // on an 8x8 image a 4x4 map cell covers 2x2 pixels: pixel (5, 1) lies in cell (2, 0), (0, 7) in (0, 3)
    let three: &[(i32, i32)] = &[(0, 7), (5, 1), (3, 3)];
    let four: &[(i32, i32)] = &[(0, 0), (2, 0), (4, 0), (7, 6)];
    let rows = [
        // the map puts B nearest, as the truth does; the text says A
        ("(B)", "(A)", three, (2, 0)),
        // the map puts A nearest, the truth and the text say C
        ("(C)", "(C)", three, (0, 3)),
        // the map puts D nearest, as the truth does; the text says A
        ("(D)", "(A)", four, (3, 3)),
    ];
    let mut scorer = Scorer::new(0);
    assert!(scorer.add_batch(&map_point_rows(&rows)).is_empty());
    let p = scorer.table().points;
    // text: 3 points 1 of 2, 4 points 0 of 1 -> 0.25; map: 1 of 2 and 1 of 1 -> 0.75
    assert!((p.average.unwrap() - 0.25).abs() < 1e-12, "{:?}", p.average);
    assert!((p.from_depth_map.unwrap() - 0.75).abs() < 1e-12, "{:?}", p.from_depth_map);
    assert_eq!((p.samples, p.with_depth_span, p.with_depth_map), (3, 3, 3));
    // each question's outcome, by its sample id, for comparing two models question by question
    let outcomes: Vec<(&str, u32, bool)> = p.answers.iter().map(|a| (a.id.as_str(), a.points, a.correct)).collect();
    assert_eq!(outcomes, vec![("p-0", 3, false), ("p-1", 3, true), ("p-2", 4, false)]);
    let md = scorer.table().markdown();
    assert!(
        md.contains("| points | average accuracy read off its depth map (%) | 75.0 | 3 with a depth map |"),
        "{md}"
    );

    // a point outside the image is that row's error, named
    let mut scorer = Scorer::new(0);
    let failed = scorer.add_batch(&map_point_rows(&[("(A)", "(A)", &[(8, 0), (1, 1), (2, 2)], (0, 0))]));
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.contains("point A at (8, 0) is outside the 8x8 image"), "{}", failed[0].1);
}
