//! Sample answers for the demo report: a few held-out rows of each task answered by the trained model, drawn as
//! (image with the predicted mask, predicted depth) pairs with the question, the answer and the truth.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use arrow::array::{Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_actors::image_decode::image_bytes;
use perceptio_models::perceptio::predict::{AskOptions, Predictor, Query};
use perceptio_synth::pictures::{Tile, grid, overlay_mask, side_by_side, turbo, write_png};

/// One answered sample, for the report's text.
#[derive(Debug, Clone)]
pub struct SampleLine {
    pub id: String,
    pub task: String,
    pub question: String,
    pub answer: String,
    pub truth: String,
    pub seg: bool,
    pub depth_codes: Option<usize>,
}

struct Row {
    id: String,
    task: String,
    question: String,
    truth: String,
    png: Vec<u8>,
}

/// Reads up to `per_task` rows of each task from `test`.
fn pick_rows(test: &Path, per_task: usize) -> anyhow::Result<Vec<Row>> {
    let file = File::open(test).with_context(|| format!("opening {}", test.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .with_context(|| format!("reading {}", test.display()))?;
    let mut rows: Vec<Row> = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for batch in reader {
        let batch: RecordBatch = batch.with_context(|| format!("reading {}", test.display()))?;
        let text = |name: &str| -> anyhow::Result<&StringArray> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .with_context(|| format!("{}: no utf8 column `{name}`", test.display()))
        };
        let (ids, tasks, questions, answers) = (text("sample_id")?, text("task")?, text("question")?, text("answer")?);
        let image = batch.column_by_name("image").with_context(|| format!("{}: no `image` column", test.display()))?;
        for r in 0..batch.num_rows() {
            let task = tasks.value(r).to_string();
            let n = counts.entry(task.clone()).or_default();
            if *n >= per_task {
                continue;
            }
            *n += 1;
            let png = image_bytes(image, r).map_err(|e| anyhow::anyhow!("{}: row {r}: {e}", test.display()))?;
            rows.push(Row {
                id: ids.value(r).to_string(),
                task,
                question: questions.value(r).to_string(),
                truth: if answers.is_null(r) { String::new() } else { answers.value(r).to_string() },
                png: png.to_vec(),
            });
        }
    }
    rows.sort_by(|a, b| a.task.cmp(&b.task));
    Ok(rows)
}

/// Nearest-neighbour resize of a `side x side` map to `w x h`.
fn resize_nearest<T: Copy>(src: &[T], side: usize, w: usize, h: usize) -> Vec<T> {
    (0..h).flat_map(|y| (0..w).map(move |x| src[(y * side / h) * side + x * side / w])).collect()
}

/// Answers `per_task` test rows of each task with the model in `checkpoint` and writes the picture grid to `png`.
pub fn write_samples(checkpoint: &Path, test: &Path, png: &Path, per_task: usize) -> anyhow::Result<Vec<SampleLine>> {
    let predictor = Predictor::load(checkpoint, &burn::tensor::Device::flex())
        .with_context(|| format!("loading {}", checkpoint.display()))?;
    let rows = pick_rows(test, per_task.div_ceil(4).max(1))?;
    let queries = rows
        .iter()
        .map(|r| Query::from_png(&r.png, r.question.clone()).with_context(|| format!("sample {}", r.id)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answers = predictor.answer(&queries, &AskOptions::default())?;
    let mut tiles = Vec::new();
    let mut lines = Vec::new();
    for (row, answer) in rows.iter().zip(&answers) {
        let img = perceptio_models::internvl::decode_png_rgb(&row.png).map_err(|e| anyhow::anyhow!(e))?;
        let (w, h) = (img.width, img.height);
        let left = match &answer.mask {
            Some(m) => overlay_mask(
                &img.data,
                w as u32,
                h as u32,
                &resize_nearest(&m.binary(), m.size, w, h),
                [255, 64, 0],
                0.45,
            ),
            None => img.data.clone(),
        };
        let right = match &answer.depth {
            // normalised disparity in [-1, 1], +1 = nearest: the red end of turbo
            Some(d) => resize_nearest(&d.values, d.size, w, h)
                .iter()
                .flat_map(|&v| turbo((v + 1.0) / 2.0).map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
                .collect(),
            None => vec![40; 3 * w * h],
        };
        let shown = if answer.text.is_empty() { "(no text)" } else { answer.text.as_str() };
        tiles.push(Tile {
            rgb: side_by_side(&left, &right, w as u32, h as u32),
            width: 2 * w as u32,
            height: h as u32,
            caption: format!("[{}] {} -> {} (truth: {})", row.task, row.question, shown, row.truth),
        });
        lines.push(SampleLine {
            id: row.id.clone(),
            task: row.task.clone(),
            question: row.question.clone(),
            answer: answer.text.clone(),
            truth: row.truth.clone(),
            seg: answer.seg,
            depth_codes: answer.depth_codes.as_ref().map(Vec::len),
        });
    }
    let (rgb, w, h) = grid(&tiles, 2, 6);
    write_png(png, &rgb, w, h).with_context(|| format!("writing {}", png.display()))?;
    Ok(lines)
}
