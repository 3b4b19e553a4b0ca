//! Dynamic tiling against the reference made by scripts/fixtures/make_tiling.py (transformers' grid
//! choice, torch's antialiased bicubic resize rounded to uint8, ImageNet normalisation).

use std::path::PathBuf;

use burn::tensor::DType;
use perceptio_models::internvl::{RgbImage, TilingConfig, best_grid, tile_image};
use perceptio_models::weights::Checkpoint;

#[test]
fn tiles_match_the_reference_within_one_8bit_level() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/internvl/tiling.safetensors");
    let ck = Checkpoint::open(path).unwrap();
    let cfg = TilingConfig { tile: 28, max_tiles: 6, ..Default::default() };
    for name in ["wide", "tall", "small"] {
        let img = ck.read(&format!("{name}_image"), DType::F32).unwrap();
        let [h, w, _] = [img.shape()[0], img.shape()[1], img.shape()[2]];
        let data: Vec<u8> = img.convert::<u8>().try_into_vec::<u8>().unwrap();
        let img = RgbImage { height: h, width: w, data };
        let grid: Vec<i64> = ck.read(&format!("{name}_grid"), DType::F32).unwrap().try_into_vec::<i64>().unwrap();
        assert_eq!(best_grid(h, w, &cfg), (grid[0] as usize, grid[1] as usize), "{name} grid");
        let want = ck.read(&format!("{name}_pixels"), DType::F32).unwrap();
        let (got, n) = tile_image(&img, &cfg);
        assert_eq!(n, want.shape()[0], "{name} tiles");
        let want = want.try_into_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        // one 8-bit level after normalisation is 1/255/std <= 0.0176
        let max = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let exact = got.iter().zip(&want).filter(|(a, b)| (*a - *b).abs() < 1e-4).count();
        println!("{name}: {n} tiles, max diff {max:.4}, {:.2}% identical", 100.0 * exact as f64 / want.len() as f64);
        assert!(max < 0.018, "{name}: max diff {max}");
        assert!(exact as f64 > 0.95 * want.len() as f64, "{name}: only {exact} identical");
    }
}
