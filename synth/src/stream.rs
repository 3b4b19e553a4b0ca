//! `SynthStream`: the world as an iterator of RecordBatches (at most `batch_rows` rows each) for one split,
//! rendering scenes in parallel chunks; the same (config, seed, split) always yields the same rows.

use std::collections::VecDeque;
use std::ops::Range;

use arrow::record_batch::RecordBatch;

use crate::config::SynthConfig;
use crate::error::SynthError;
use crate::pipeline::{SceneRows, Split, scenes_parallel, split_range, threads};
use crate::rows;

/// A streaming source of dataset rows for one split.
pub struct SynthStream {
    config: SynthConfig,
    seed: u64,
    split: Split,
    next_scene: u64,
    end: u64,
    threads: usize,
    /// Rendered scenes not fully emitted yet, and how many samples of the front one were emitted.
    pending: VecDeque<SceneRows>,
    front_done: usize,
    scenes_done: u64,
    failed: bool,
}

impl SynthStream {
    /// A stream over `split` of the world `(config, seed)`; fails on an invalid config.
    pub fn new(config: SynthConfig, seed: u64, split: Split) -> Result<Self, SynthError> {
        config.validate()?;
        let Range { start, end } = split_range(&config, split);
        let threads = threads(&config);
        Ok(SynthStream {
            config,
            seed,
            split,
            next_scene: start,
            end,
            threads,
            pending: VecDeque::new(),
            front_done: 0,
            scenes_done: 0,
            failed: false,
        })
    }

    /// Scenes in this split.
    pub fn scenes_total(&self) -> u64 {
        let r = split_range(&self.config, self.split);
        r.end - r.start
    }

    /// Scenes rendered so far.
    pub fn scenes_done(&self) -> u64 {
        self.scenes_done
    }

    fn pending_rows(&self) -> usize {
        self.pending.iter().map(|s| s.samples.len()).sum::<usize>() - self.front_done
    }

    fn refill(&mut self) -> Result<(), SynthError> {
        while self.pending_rows() < self.config.batch_rows && self.next_scene < self.end {
            let chunk = (self.threads as u64 * 8).max(1);
            let stop = (self.next_scene + chunk).min(self.end);
            let scenes = scenes_parallel(&self.config, self.seed, self.split, self.next_scene..stop, self.threads)?;
            self.scenes_done += stop - self.next_scene;
            self.next_scene = stop;
            self.pending.extend(scenes);
        }
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>, SynthError> {
        self.refill()?;
        let mut rows = Vec::with_capacity(self.config.batch_rows);
        let mut scene_k = 0usize;
        let mut sample_k = self.front_done;
        while rows.len() < self.config.batch_rows && scene_k < self.pending.len() {
            let sc = &self.pending[scene_k];
            if sample_k < sc.samples.len() {
                rows.push((sc, &sc.samples[sample_k]));
                sample_k += 1;
            } else {
                scene_k += 1;
                sample_k = 0;
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = rows::batch(&rows)?;
        // drop what was emitted
        for _ in 0..scene_k {
            self.pending.pop_front();
        }
        self.front_done = sample_k;
        if self.pending.front().is_some_and(|s| s.samples.len() == self.front_done) {
            self.pending.pop_front();
            self.front_done = 0;
        }
        Ok(Some(batch))
    }
}

impl Iterator for SynthStream {
    type Item = Result<RecordBatch, SynthError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_batch() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
