//! What the pretraining and init subcommands share: listing a parquet glob, reading its rows through a per-row
//! closure (errors name the file and row), reading a row's text and image columns, picking one plain image per
//! scene, seeded shuffled epochs over the rows, and the step progress and loss summary of a training loop.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, bail};
use arrow::array::{Array, Float32Array, RecordBatch, StringArray};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_actors::image_decode::image_bytes;
use perceptio_models::depth::depth_target_from_png;

/// The files `glob` matches, sorted; an error when it matches none.
pub fn parquet_files(glob: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = glob::glob(glob)
        .with_context(|| format!("bad pattern `{glob}`"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing `{glob}`"))?;
    files.sort();
    if files.is_empty() {
        bail!("`{glob}` matches no file");
    }
    Ok(files)
}

/// `keep(batch, row)` over every row of the files of `glob` in order, collecting what it returns (None skips the
/// row), until `limit` rows are kept; an error names the file and row.
pub fn read_rows<T>(
    glob: &str,
    limit: Option<usize>,
    keep: &mut dyn FnMut(&RecordBatch, usize) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Vec<T>> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    for path in parquet_files(glob)? {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .with_context(|| format!("reading {}", path.display()))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            for r in 0..batch.num_rows() {
                if rows.len() >= limit {
                    return Ok(rows);
                }
                rows.extend(keep(&batch, r).with_context(|| format!("{} row {r}", path.display()))?);
            }
        }
    }
    Ok(rows)
}

/// The text of column `name` at row `r`; an error names the column.
pub fn row_text(batch: &RecordBatch, name: &str, r: usize) -> anyhow::Result<String> {
    let col = batch.column_by_name(name).with_context(|| format!("column `{name}` is missing"))?;
    let col = col.as_any().downcast_ref::<StringArray>().with_context(|| format!("column `{name}` is not text"))?;
    if col.is_null(r) {
        bail!("`{name}` is null");
    }
    Ok(col.value(r).to_string())
}

/// The PNG bytes of image column `name` at row `r`; an error names sample `id` and the column.
pub fn row_png<'a>(batch: &'a RecordBatch, name: &str, r: usize, id: &str) -> anyhow::Result<&'a [u8]> {
    let col = batch.column_by_name(name).with_context(|| format!("column `{name}` is missing"))?;
    image_bytes(col, r).map_err(|e| anyhow::anyhow!("sample {id}: {name}: {e}"))
}

/// (scene id, sample id) of row `r` when it shows a plain render (any task but points, whose images carry
/// markers) of a scene not in `seen`. The caller marks the scene seen once it keeps the row.
pub fn unseen_plain_scene(
    batch: &RecordBatch,
    r: usize,
    seen: &HashSet<String>,
) -> anyhow::Result<Option<(String, String)>> {
    if row_text(batch, "task", r)? == "points" {
        return Ok(None);
    }
    let scene = row_text(batch, "scene_id", r)?;
    if seen.contains(&scene) {
        return Ok(None);
    }
    Ok(Some((scene, row_text(batch, "sample_id", r)?)))
}

/// The progress bar of a `steps`-step training loop (position = step, message = running numbers).
pub fn step_bar(steps: usize) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .context("progress bar template")?,
    );
    Ok(bar)
}

/// The progress of a pretraining loop: the step bar, with a printed line every sixth of the run (so that a log
/// without a terminal still shows the numbers).
pub struct StepProgress {
    bar: ProgressBar,
    every: usize,
}

impl StepProgress {
    pub fn new(steps: usize) -> anyhow::Result<Self> {
        Ok(Self { bar: step_bar(steps)?, every: (steps / 6).max(1) })
    }

    /// Step `step` is done; `numbers` are its running numbers ("depth MSE 0.0210").
    pub fn step(&self, step: usize, numbers: String) {
        if step % self.every == 0 {
            return self.step_and_print(step, numbers);
        }
        self.bar.set_position(step as u64);
        self.bar.set_message(numbers);
    }

    /// Step `step` is done, and `numbers` are printed now (measurements the periodic line would repeat).
    pub fn step_and_print(&self, step: usize, numbers: String) {
        self.bar.set_position(step as u64);
        let line = format!("step {step}: {numbers}");
        if self.bar.is_hidden() {
            println!("{line}")
        } else {
            self.bar.println(line)
        }
        self.bar.set_message(numbers);
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Means of the first and of the last `window` values of a loop's history, with the window a tenth of its
/// `steps` (1 to 20): (first, last, window).
pub fn first_and_last_means(history: &[f64], steps: usize) -> (f64, f64, usize) {
    let window = (steps / 10).clamp(1, 20);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    (mean(&history[..window.min(history.len())]), mean(&history[history.len().saturating_sub(window)..]), window)
}

/// Endless epochs over `0..n`, each in a fresh order drawn from a seeded SplitMix64 stream.
pub struct Shuffled {
    order: Vec<usize>,
    pos: usize,
    state: u64,
}

impl Shuffled {
    pub fn new(n: usize, seed: u64) -> Self {
        Self { order: (0..n).collect(), pos: n, state: seed ^ 0x5EED_5A42 }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next `k` indices (wrapping into a new epoch as needed).
    pub fn take(&mut self, k: usize) -> Vec<usize> {
        (0..k)
            .map(|_| {
                if self.pos >= self.order.len() {
                    for i in (1..self.order.len()).rev() {
                        let j = (self.next_u64() % (i as u64 + 1)) as usize;
                        self.order.swap(i, j);
                    }
                    self.pos = 0;
                }
                self.pos += 1;
                self.order[self.pos - 1]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_epochs_visit_every_index_once() {
        let mut s = Shuffled::new(10, 3);
        for _ in 0..3 {
            let mut epoch = s.take(10);
            epoch.sort();
            assert_eq!(epoch, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(Shuffled::new(10, 3).take(10), Shuffled::new(10, 4).take(10));
    }
}

/// Row `r`'s depth target, `side x side` in the tokenizer's units (+1 = nearest), from its `depth` PNG and
/// `depth_scale`; None when the row has no depth (a null `depth` or a scale of 0). Errors name the column or the
/// sample `id`.
pub fn row_depth_target(batch: &RecordBatch, r: usize, id: &str, side: usize) -> anyhow::Result<Option<Vec<f32>>> {
    let scale_col = batch.column_by_name("depth_scale").context("column `depth_scale` is missing")?;
    let scale =
        scale_col.as_any().downcast_ref::<Float32Array>().context("column `depth_scale` is not float32")?.value(r);
    let depth_col = batch.column_by_name("depth").context("column `depth` is missing")?;
    if depth_col.is_null(r) || scale <= 0.0 {
        return Ok(None);
    }
    let png = row_png(batch, "depth", r, id)?;
    let map = depth_target_from_png(png, scale, side).map_err(|e| anyhow::anyhow!("sample {id}: depth: {e}"))?;
    Ok(Some(map))
}
