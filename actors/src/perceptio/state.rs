//! `trainer.json`: the trainer's position in a checkpoint directory (micro-batches and optimiser steps done,
//! dataset rows consumed), written by the loss aggregator and read back on resume.

use std::path::Path;

use perceptio_runtime::NodeError;

pub const TRAINER_FILE: &str = "trainer.json";

/// Where a run stands at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub micro_steps: u64,
    pub optimizer_steps: u64,
    /// Dataset rows before the first row of the next micro-batch (the replay position to resume from).
    pub rows_consumed: u64,
}

impl TrainerState {
    pub fn read(dir: &Path) -> Result<Self, NodeError> {
        let path = dir.join(TRAINER_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| NodeError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| NodeError::msg(format!("{}: {e}", path.display())))
    }

    pub fn write(&self, dir: &Path) -> Result<(), NodeError> {
        let path = dir.join(TRAINER_FILE);
        let json = serde_json::to_string_pretty(self).map_err(|e| NodeError::msg(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| NodeError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| NodeError::io(format!("renaming to {}", path.display()), e))
    }
}
