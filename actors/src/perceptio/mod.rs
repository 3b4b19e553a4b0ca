//! The Perceptio model nodes: the batcher that turns dataset rows into micro-batches, one node per model part
//! (image encoder, SAM2 encoder, LLM, mask decoder, depth decoder), the token router and the loss aggregator.
//! In training, frames carry autodiff tensors between them; the aggregator runs backward and every trainable node
//! steps its own optimiser (see `perceptio_runtime::train`).
//! For serving, one node per part again, plus a request check, a token router and the event egress (see
//! [`serve`]).
//! For evaluation, `perceptio-infer` answers rows with a trained model and `perceptio-score` scores the answers.

pub mod aggregator;
pub mod batch;
pub mod common;
pub mod depth_decoder;
pub mod image_encoder;
pub mod infer;
pub mod init;
pub mod llm;
pub mod mask_decoder;
pub mod router;
pub mod sam2_encoder;
pub mod score;
pub mod serve;
pub mod state;
