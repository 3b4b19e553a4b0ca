//! The assembled InternVL2.5 model: config and presets, image-token merge, generation, key
//! tables of the transformers-native and original InternVL/Sa2VA layouts.

mod checkpoint;
mod config;
mod model;
mod runner;
mod tiling;

pub use checkpoint::{LoadedInternVl, internvl_key_table, load_internvl};
pub use config::{InternVlConfig, InternVlLayout};
pub use model::{InternVl, InternVlError};
pub use runner::{Pixels, RunError, Runner};
pub use tiling::{ImageError, RgbImage, TilingConfig, best_grid, decode_png_rgb, load_png, resize, tile_image};
