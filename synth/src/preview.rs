//! Contact sheets: for each task, a captioned grid of the first samples of a world, so a person can look at what
//! the model is taught (referring: mask overlay + expression; points: the marked image + answer; depth: image and
//! colour depth; vqa: question and answer).

use std::path::{Path, PathBuf};

use crate::config::{SynthConfig, TaskKind};
use crate::error::SynthError;
use crate::pictures::{Tile, depth_to_rgb, grid, overlay_mask, side_by_side, write_png};
use crate::pipeline::generate_scene;

/// Up to `n` tiles of `task`, from scenes 0, 1, ... of world `(cfg, seed)`.
pub fn task_tiles(cfg: &SynthConfig, seed: u64, task: TaskKind, n: usize) -> Vec<Tile> {
    let mut tiles = Vec::with_capacity(n);
    let mut index = 0u64;
    while tiles.len() < n && index < (n as u64) * 20 + 20 {
        let rec = generate_scene(cfg, seed, index);
        index += 1;
        let r = &rec.rendered;
        // one sample per scene keeps a sheet varied
        let Some(s) = rec.samples.iter().find(|s| s.task == task) else { continue };
        let (rgb, width, caption) = match task {
            TaskKind::Referring => {
                let id = s.target_object.unwrap_or(0);
                let over = overlay_mask(&r.rgb, r.width, r.height, &r.mask(id), [255, 40, 200], 0.45);
                (over, r.width, s.expression.clone().unwrap_or_default())
            }
            TaskKind::Points => {
                let img = s.marked_rgb.clone().unwrap_or_else(|| r.rgb.clone());
                let p = s.points.as_ref();
                let depths = p
                    .map(|p| {
                        p.labels.iter().zip(&p.depth).map(|(l, d)| format!("{l}={d:.1}")).collect::<Vec<_>>().join(" ")
                    })
                    .unwrap_or_default();
                (img, r.width, format!("closest: {}  {depths}", s.answer))
            }
            TaskKind::Depth => {
                let both = side_by_side(&r.rgb, &depth_to_rgb(&r.depth), r.width, r.height);
                let (lo, hi) = r.depth.iter().fold((f32::INFINITY, 0.0f32), |(a, b), &d| (a.min(d), b.max(d)));
                (both, 2 * r.width, format!("depth {lo:.1}-{hi:.1} m (red = near)"))
            }
            TaskKind::Vqa => (r.rgb.clone(), r.width, format!("{} -> {}", s.question, s.answer)),
        };
        tiles.push(Tile { rgb, width, height: r.height, caption });
    }
    tiles
}

/// Write one contact sheet per configured task into `dir` (`synth-{task}.png`); returns the files.
pub fn write_contact_sheets(dir: &Path, cfg: &SynthConfig, seed: u64, n: usize) -> Result<Vec<PathBuf>, SynthError> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|source| SynthError::Io { path: dir.to_path_buf(), source })?;
    let mut out = Vec::new();
    for &task in &cfg.tasks {
        let tiles = task_tiles(cfg, seed, task, n);
        let cols = if task == TaskKind::Depth { 2 } else { 4 };
        let lines = if task == TaskKind::Depth { 1 } else { 4 };
        let (rgb, w, h) = grid(&tiles, cols, lines);
        let path = dir.join(format!("synth-{}.png", task.name()));
        write_png(&path, &rgb, w, h)?;
        out.push(path);
    }
    Ok(out)
}
