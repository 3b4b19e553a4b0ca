//! perceptio's synthetic spatial world: procedurally ray-traced scenes with exact depth and instance masks,
//! the Perceptio tasks built on them (referring segmentation, HardBLINK-style point questions, depth questions,
//! short VQA), parquet datasets in the HuggingFace layout, a streaming source for the dataflow, metrics and
//! pictures.

pub mod codec;
pub mod config;
pub mod draw;
pub mod error;
pub mod font;
pub mod geom;
pub mod metrics;
pub mod paired;
pub mod pictures;
pub mod pipeline;
pub mod preview;
pub mod render;
pub mod rows;
pub mod scene;
pub mod stream;
pub mod tasks;
pub mod write;

pub use config::{SceneConfig, SynthConfig, TaskKind};
pub use error::SynthError;
pub use pipeline::{SceneRecord, Split, generate_scene, split_range};
pub use stream::SynthStream;
pub use write::{DatasetSummary, Progress, write_dataset};
