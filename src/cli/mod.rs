//! The `perceptio` command line: one module per subcommand.

pub mod ask;
pub mod dataflow;
pub mod demo;
pub mod depth;
pub mod eval;
pub mod generate;
pub mod init_model;
pub mod pretrain_appearance;
pub mod pretrain_image;
pub mod pretrain_markers;
pub mod pretrain_recall;
pub mod pretrain_sam2;
pub mod pretrain_tied_markers;
pub mod rows;
pub mod segment;
pub mod synth;
pub mod train_vqvae;
