//! A Perceptio model directory: `perceptio.json` (the config), `tokenizer.json`, and one safetensors file per
//! part (`image`, `llm`, `seg`, `vqvae`), so each dataflow node loads and saves only the part it owns.
//! Every file is written atomically (temp file + rename).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn_store::ModuleSnapshot;

use super::model::{ModelError, Perceptio, PerceptioConfig};
use crate::config_json::fill_missing;
use crate::weights::{Checkpoint, KeyTable, LoadOptions, load_module, save_module};

pub const CONFIG_FILE: &str = "perceptio.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The parts of a model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Image,
    Llm,
    Seg,
    VqVae,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Image, Part::Llm, Part::Seg, Part::VqVae];

    /// File name of the part's weights.
    pub fn file(self) -> &'static str {
        match self {
            Part::Image => "image.safetensors",
            Part::Llm => "llm.safetensors",
            Part::Seg => "seg.safetensors",
            Part::VqVae => "vqvae.safetensors",
        }
    }
}

/// Errors reading or writing a model directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Writes `bytes` to `path` through a temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// Reads `perceptio.json` of a model directory.
pub fn read_config(dir: &Path) -> Result<PerceptioConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    let cfg: PerceptioConfig = match serde_json::from_str(&text) {
        Ok(cfg) => cfg,
        Err(first) => {
            // a model directory from before a field was added: fill in its default, else report the first error
            // (it has the line and column)
            let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(&path, e))?;
            let mut filled = false;
            for (path, default) in added_fields() {
                filled |= fill_missing(&mut value, path, default);
            }
            if !filled {
                return Err(file_err(&path, first));
            }
            serde_json::from_value(value).map_err(|e| file_err(&path, e))?
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `perceptio.json` fields (dotted paths) that older model directories lack, with the value they mean there.
fn added_fields() -> [(&'static str, serde_json::Value); 7] {
    [
        ("image_last", false.into()),
        ("point_reasoning", false.into()),
        ("span_at_image_positions", false.into()),
        ("seg_point_from_map", false.into()),
        ("sam2.prompt_encoder_config.scale", 1.0.into()),
        ("sam2.mask_decoder_config.use_high_res_features", true.into()),
        ("vlm.vision.conv_stem", serde_json::Value::Array(Vec::new())),
    ]
}

/// Writes `perceptio.json`.
pub fn write_config(dir: &Path, cfg: &PerceptioConfig) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let json = serde_json::to_string_pretty(cfg).map_err(|e| file_err(&dir.join(CONFIG_FILE), e))?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Saves one part's weights into `dir`.
pub fn save_part<M: Module + ModuleSnapshot>(dir: &Path, part: Part, module: &M) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let path = dir.join(part.file());
    save_module(module, &path, &KeyTable::identity()).map_err(|e| file_err(&path, e))?;
    Ok(())
}

/// Loads one part's weights from `dir` into `module` (every key must match by name and shape).
pub fn load_part<M: Module + ModuleSnapshot>(dir: &Path, part: Part, mut module: M) -> Result<M, CheckpointError> {
    let path = dir.join(part.file());
    let ckpt = Checkpoint::open(&path).map_err(|e| file_err(&path, e))?;
    load_module(&mut module, &ckpt, &KeyTable::identity(), &LoadOptions::default()).map_err(|e| file_err(&path, e))?;
    Ok(module)
}

/// Saves every part and the config.
pub fn save_model(dir: &Path, cfg: &PerceptioConfig, model: &Perceptio) -> Result<(), CheckpointError> {
    write_config(dir, cfg)?;
    save_part(dir, Part::Image, &model.image)?;
    save_part(dir, Part::Llm, &model.llm)?;
    save_part(dir, Part::Seg, &model.seg)?;
    save_part(dir, Part::VqVae, &model.vqvae)
}

/// Loads a whole model directory onto `device` (an autodiff device for training), with the freezing its config
/// asks for.
pub fn load_model(dir: &Path, device: &Device) -> Result<(PerceptioConfig, Perceptio), CheckpointError> {
    let cfg = read_config(dir)?;
    let fresh = cfg.init(device)?;
    let model = Perceptio {
        image: load_part(dir, Part::Image, fresh.image)?,
        llm: load_part(dir, Part::Llm, fresh.llm)?,
        seg: load_part(dir, Part::Seg, fresh.seg)?,
        vqvae: load_part(dir, Part::VqVae, fresh.vqvae)?,
    };
    let model = cfg_freeze(&cfg, model);
    Ok((cfg, model))
}

/// Re-applies the config's freezing (loading replaces parameters).
pub fn cfg_freeze(cfg: &PerceptioConfig, mut model: Perceptio) -> Perceptio {
    if !cfg.trainable.vision_encoder {
        model.image.vision_tower = model.image.vision_tower.no_grad();
    }
    model.seg.sam2.vision_encoder = model.seg.sam2.vision_encoder.no_grad();
    model.vqvae = model.vqvae.no_grad();
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_a_later_field_reads_with_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = PerceptioConfig::tiny(64, 5).with_image_last(true);
        cfg.sam2.prompt_encoder_config.scale = 3.0;
        write_config(dir.path(), &cfg).unwrap();
        let read = read_config(dir.path()).unwrap();
        assert_eq!((read.image_last, read.sam2.prompt_encoder_config.scale), (true, 3.0));
        // a model directory written before `image_last` existed
        let path = dir.path().join(CONFIG_FILE);
        let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        value.as_object_mut().unwrap().remove("image_last").unwrap();
        std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        let old = read_config(dir.path()).unwrap();
        assert!(!old.image_last);
        // and one from before `sam2.prompt_encoder_config.scale` as well
        value["sam2"]["prompt_encoder_config"].as_object_mut().unwrap().remove("scale").unwrap();
        std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        let older = read_config(dir.path()).unwrap();
        assert_eq!((older.image_last, older.sam2.prompt_encoder_config.scale), (false, 1.0));
        // and one from before the InternViT's `conv_stem`
        value["vlm"]["vision"].as_object_mut().unwrap().remove("conv_stem").unwrap();
        // and the point chain of thought
        value.as_object_mut().unwrap().remove("point_reasoning").unwrap();
        std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        let oldest = read_config(dir.path()).unwrap();
        assert!(oldest.vlm.vision.conv_stem.is_empty());
        assert!(!oldest.point_reasoning && !oldest.sequence_config().point_reasoning);
        assert_eq!(oldest.vlm.vision, cfg.vlm.vision);
        assert_eq!(old.image_tokens(), cfg.image_tokens());
        // and from before the span positions, the point from the map and SAM2's high-res switch
        value.as_object_mut().unwrap().remove("span_at_image_positions").unwrap();
        value.as_object_mut().unwrap().remove("seg_point_from_map").unwrap();
        value["sam2"]["mask_decoder_config"].as_object_mut().unwrap().remove("use_high_res_features").unwrap();
        std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        let before = read_config(dir.path()).unwrap();
        assert!(!before.span_at_image_positions && !before.seg_point_from_map);
        assert!(before.sam2.mask_decoder_config.use_high_res_features);
        // a field of the wrong type is still an error naming the file, with serde's line and column
        value["sam2"]["prompt_encoder_config"].as_object_mut().unwrap().insert("scale".into(), 1.0.into());
        value["vlm"]["vision"].as_object_mut().unwrap().insert("conv_stem".into(), serde_json::json!([]));
        value.as_object_mut().unwrap().insert("point_reasoning".into(), false.into());
        value.as_object_mut().unwrap().insert("span_at_image_positions".into(), false.into());
        value.as_object_mut().unwrap().insert("seg_point_from_map".into(), false.into());
        value["sam2"]["mask_decoder_config"]
            .as_object_mut()
            .unwrap()
            .insert("use_high_res_features".into(), true.into());
        value.as_object_mut().unwrap().insert("image_last".into(), "yes".into());
        std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        let err = read_config(dir.path()).unwrap_err().to_string();
        assert!(err.contains("perceptio.json") && err.contains("expected a boolean at line"), "{err}");
    }
}
