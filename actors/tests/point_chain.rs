//! The point chain of thought as the training batcher builds it from dataset rows: each marked point's label and
//! the depth level read off the row's depth map, in letter order, then the answer; the nearest point has the
//! highest level.

use arrow::array::{Array, Float32Array, ListArray, StringArray};
use burn::tensor::Device;
use perceptio_actors::perceptio::batch::{Preparer, prepare_frame};
use perceptio_actors::perceptio::common::{StepInfo, read_sequences};
use perceptio_actors::perceptio::init::{dataset_texts, init_tiny_model_with};

#[path = "support/perceptio_fixture.rs"]
mod perceptio_fixture;
use perceptio_fixture::{fixture, read_parquet};

fn strings(a: &dyn Array) -> Vec<String> {
    let s = a.as_any().downcast_ref::<StringArray>().unwrap();
    (0..s.len()).map(|i| s.value(i).to_string()).collect()
}

#[test]
fn point_answers_state_each_points_level_and_the_nearest_is_highest() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = fixture(tmp.path(), 6);
    let texts = dataset_texts(std::slice::from_ref(&data)).unwrap();
    let model = tmp.path().join("chain-model");
    let (cfg, _) =
        init_tiny_model_with(&texts, &tmp.path().join("vqvae"), &model, 11, &|c| c.point_reasoning = true).unwrap();
    assert!(cfg.point_reasoning);

    let rows = arrow::compute::concat_batches(&read_parquet(&data)[0].schema(), &read_parquet(&data)).unwrap();
    let (prep, _) = Preparer::from_model_dir(&model, true, true, 512).unwrap();
    assert!(prep.sequence.point_reasoning, "the model directory turns the chain on");
    let info = StepInfo { step: 0, apply: true, rows_consumed: 0 };
    let frame = prepare_frame(&prep, &rows, info, &Device::flex()).unwrap();
    let seqs = read_sequences(frame.batch()).unwrap();
    let frame_ids = strings(frame.batch().column_by_name("sample_id").unwrap().as_ref());
    let row_ids = strings(rows.column_by_name("sample_id").unwrap().as_ref());
    let tasks = strings(rows.column_by_name("task").unwrap().as_ref());
    let answers = strings(rows.column_by_name("answer").unwrap().as_ref());
    let labels = rows.column_by_name("point_labels").unwrap().as_any().downcast_ref::<ListArray>().unwrap().clone();
    let depths = rows.column_by_name("point_depth").unwrap().as_any().downcast_ref::<ListArray>().unwrap().clone();

    let (mut checked, mut distinct) = (0, 0);
    for (r, id) in row_ids.iter().enumerate() {
        if tasks[r] != "points" {
            continue;
        }
        let k = frame_ids.iter().position(|f| f == id).expect("every point row is prepared");
        let seq = &seqs[k];
        let end = seq.depth_end.expect("the full model's point answer has a span");
        let text = prep.tokenizer.decode(&seq.ids[end + 1..], true).unwrap();
        // "A 12, B 7, C 15. (C)"
        let (chain, answer) = text.split_once(". ").unwrap_or_else(|| panic!("{id}: {text:?}"));
        assert_eq!(answer, answers[r], "{id}: the chain ends with the dataset's answer");
        let stated: Vec<(String, u32)> = chain
            .split(", ")
            .map(|p| {
                let (l, v) = p.split_once(' ').unwrap_or_else(|| panic!("{id}: {p:?}"));
                (l.to_string(), v.parse().unwrap())
            })
            .collect();
        let want_labels = strings(labels.value(r).as_ref());
        assert_eq!(stated.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(), want_labels, "{id}");
        // the levels follow the true depths: the nearest point (smallest depth) has the highest level, and a
        // point at least 15% farther than another never has a higher level
        let d = depths.value(r);
        let d = d.as_any().downcast_ref::<Float32Array>().unwrap();
        let nearest = (0..d.len()).min_by(|&a, &b| d.value(a).total_cmp(&d.value(b))).unwrap();
        assert_eq!(format!("({})", want_labels[nearest]), answers[r], "{id}");
        for a in 0..d.len() {
            assert!(stated[nearest].1 >= stated[a].1, "{id}: {text:?}");
            for b in 0..d.len() {
                if d.value(a) >= 1.15 * d.value(b) {
                    assert!(stated[a].1 <= stated[b].1, "{id}: {text:?} with depths {d:?}");
                }
            }
        }
        distinct += usize::from(stated.iter().filter(|(_, v)| *v == stated[nearest].1).count() == 1);
        checked += 1;
    }
    assert!(checked >= 3, "the fixture has {checked} point rows");
    assert!(distinct * 2 > checked, "the nearest point's level is its own in {distinct} of {checked} rows");
}
