//! The crate's shared checkpoint layer: safetensors in, safetensors out.
//!
//! - [`Checkpoint`]: a folder or file as users have it (`model.safetensors`, or shards listed by
//!   `model.safetensors.index.json`), f32/f16/bf16/f64, memory-mapped, read lazily.
//! - [`KeyTable`]: how checkpoint keys become module paths: ordered regex renames, ignores and
//!   splits of fused tensors (`attn.qkv`, InternLM2's grouped `wqkv`). Modules name their fields
//!   after the checkpoint keys (candle-style), so a layout is a handful of rules.
//! - [`load_module`]: maps, then checks the whole checkpoint against the module (missing keys,
//!   unexpected keys, shape mismatches, all reported together by name in one
//!   [`WeightsError::Mismatch`]) before any tensor is applied; casts every float tensor to the
//!   module's float dtype.
//! - [`save_module`]: writes a module back to a safetensors file in PyTorch layout (Linear
//!   weights `[out, in]`, norm `weight`/`bias`), optionally renaming module paths.
//!
//! Layout convention: burn's `Linear` stores `[in, out]`; checkpoints store `[out, in]`. The
//! loader compares shapes and applies tensors through burn-store's PyTorch adapters, so module
//! code uses burn's `Linear`, `LayerNorm`, `RmsNorm`, `Embedding`, `Conv2d` unchanged.

mod checkpoint;
mod error;
mod keytable;
mod load;
mod save;

pub use checkpoint::{Checkpoint, Entry, StoredDType};
pub use error::{KeyProblem, WeightsError};
pub use keytable::{KeyTable, Split};
pub use load::{LoadOptions, LoadReport, expected_keys, load_module};
pub use save::{save_module, write_tensors};
