//! `SynthConfig`: every knob of the synthetic world (image size, scene ranges, which tasks and how many samples of
//! each per scene, the share of depth-dependent expressions, batching and threads). Deserialises from JSON/YAML
//! with defaults for every missing field.

use serde::{Deserialize, Serialize};

use crate::error::SynthError;

/// The sample kinds the world produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Referring segmentation: an expression that picks one object; target = its visible mask.
    Referring,
    /// HardBLINK-style point questions: which marked point is closest to the camera?
    Points,
    /// "What is the depth map for the image?"; target = the depth map.
    Depth,
    /// Short questions: colour, count, shape, "is X closer than Y?".
    Vqa,
}

impl TaskKind {
    pub const ALL: [TaskKind; 4] = [TaskKind::Referring, TaskKind::Points, TaskKind::Depth, TaskKind::Vqa];
    /// The value of the dataset's `task` column.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Referring => "referring",
            TaskKind::Points => "points",
            TaskKind::Depth => "depth",
            TaskKind::Vqa => "vqa",
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "referring" | "refer" | "seg" => Ok(TaskKind::Referring),
            "points" | "point" | "hardblink" => Ok(TaskKind::Points),
            "depth" => Ok(TaskKind::Depth),
            "vqa" => Ok(TaskKind::Vqa),
            other => Err(SynthError::Config {
                field: "tasks",
                message: format!("unknown task {other:?} (expected referring, points, depth or vqa)"),
            }),
        }
    }
}

/// Ranges the scene sampler draws from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SceneConfig {
    /// Camera height above the ground, metres [min, max].
    pub camera_height: [f32; 2],
    /// Vertical field of view, degrees [min, max].
    pub fov_deg: [f32; 2],
    /// Downward pitch beyond half the field of view, degrees [min, max] (> 0 keeps the horizon out of view, so
    /// every pixel sees the ground or an object and has a finite depth).
    pub pitch_over_half_fov_deg: [f32; 2],
    /// Number of objects [min, max], within 1..=8.
    pub objects: [u32; 2],
    /// Minimum free space between two objects' footprints, metres.
    pub min_gap: f32,
    /// Objects are placed no farther than this ray distance from the camera, metres.
    pub max_object_depth: f32,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            camera_height: [2.0, 3.5],
            fov_deg: [40.0, 60.0],
            pitch_over_half_fov_deg: [6.0, 22.0],
            objects: [2, 8],
            min_gap: 0.15,
            max_object_depth: 11.0,
        }
    }
}

/// Every knob of the synthetic world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Image width and height in pixels.
    pub size: u32,
    /// Scenes over all splits.
    pub scenes: usize,
    /// Shares of the scenes that go to the validation and test splits (the rest is train).
    pub val_fraction: f32,
    pub test_fraction: f32,
    /// Which sample kinds to produce.
    pub tasks: Vec<TaskKind>,
    /// Samples per scene for each task (a scene may yield fewer when no valid sample exists).
    pub referring_per_scene: u32,
    pub points_per_scene: u32,
    /// Point questions per validation or test scene (0: `points_per_scene`). More held-out questions make the
    /// point accuracies less noisy without changing what training sees.
    pub eval_points_per_scene: u32,
    pub depth_per_scene: u32,
    pub vqa_per_scene: u32,
    /// Share of referring expressions (and VQA questions) that need depth: "closest to the camera", "behind".
    pub depth_expression_share: f32,
    /// Point counts the point questions cycle through.
    pub point_counts: Vec<u32>,
    /// Point questions: the depths of any two points differ by at least this ratio.
    pub min_point_depth_ratio: f32,
    /// Point questions: the closest point is the lowest one in the image only as often as chance (1 in n), as
    /// HardBLINK picks its points so that a shortcut does not answer them. Without it the ground plane makes the
    /// lowest marker the answer in about 80% of the questions, which a model can read off the image without any
    /// depth.
    pub balance_lowest_point: bool,
    /// Point markers: letters drawn this many times the 5x7 pixel font (0: one step per 128 px of image side).
    pub marker_scale: u32,
    /// An object counts as visible (may be referred to or counted) from this share of the image's pixels.
    pub min_visible_fraction: f32,
    /// Colour samples per pixel along each axis (1 = none, 2 = 2x2 supersampling). Depth and ids always come from
    /// the pixel centre.
    pub antialias: u32,
    /// Rows per RecordBatch from the stream.
    pub batch_rows: usize,
    /// Rendering threads (0 = all available cores).
    pub threads: usize,
    pub scene: SceneConfig,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            size: 128,
            scenes: 1000,
            val_fraction: 0.1,
            test_fraction: 0.1,
            tasks: TaskKind::ALL.to_vec(),
            referring_per_scene: 2,
            points_per_scene: 1,
            eval_points_per_scene: 0,
            depth_per_scene: 1,
            vqa_per_scene: 2,
            depth_expression_share: 0.5,
            point_counts: vec![3, 4, 5],
            min_point_depth_ratio: 1.15,
            balance_lowest_point: true,
            marker_scale: 0,
            min_visible_fraction: 0.002,
            antialias: 1,
            batch_rows: 256,
            threads: 0,
            scene: SceneConfig::default(),
        }
    }
}

impl SynthConfig {
    /// Reject values the generator cannot honour, naming the field.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |field: &'static str, message: String| Err(SynthError::Config { field, message });
        if !(32..=4096).contains(&self.size) {
            return bad("size", format!("{} is outside 32..=4096", self.size));
        }
        if !(0.0..1.0).contains(&(self.val_fraction + self.test_fraction))
            || self.val_fraction < 0.0
            || self.test_fraction < 0.0
        {
            return bad("val_fraction", "val_fraction and test_fraction must be >= 0 and sum below 1".into());
        }
        if self.tasks.is_empty() {
            return bad("tasks", "at least one task is needed".into());
        }
        if !(0.0..=1.0).contains(&self.depth_expression_share) {
            return bad("depth_expression_share", format!("{} is outside [0, 1]", self.depth_expression_share));
        }
        if self.point_counts.is_empty() || self.point_counts.iter().any(|&n| !(2..=5).contains(&n)) {
            return bad("point_counts", format!("{:?}: each must be within 2..=5", self.point_counts));
        }
        if self.min_point_depth_ratio < 1.0 {
            return bad("min_point_depth_ratio", format!("{} is below 1", self.min_point_depth_ratio));
        }
        if !(1..=4).contains(&self.antialias) {
            return bad("antialias", format!("{} is outside 1..=4", self.antialias));
        }
        if self.batch_rows == 0 {
            return bad("batch_rows", "must be positive".into());
        }
        let [lo, hi] = self.scene.objects;
        if lo < 1 || hi > 8 || lo > hi {
            return bad("scene.objects", format!("[{lo}, {hi}] must satisfy 1 <= min <= max <= 8"));
        }
        Ok(())
    }

    /// Samples this config asks for per scene of a validation or test split (`held_out`) or of the training
    /// split, per task.
    pub fn per_scene_in(&self, task: TaskKind, held_out: bool) -> u32 {
        match task {
            TaskKind::Points if held_out && self.eval_points_per_scene > 0 && self.tasks.contains(&task) => {
                self.eval_points_per_scene
            }
            _ => self.per_scene(task),
        }
    }

    /// Samples this config asks for per training scene, per task.
    pub fn per_scene(&self, task: TaskKind) -> u32 {
        if !self.tasks.contains(&task) {
            return 0;
        }
        match task {
            TaskKind::Referring => self.referring_per_scene,
            TaskKind::Points => self.points_per_scene,
            TaskKind::Depth => self.depth_per_scene,
            TaskKind::Vqa => self.vqa_per_scene,
        }
    }

    /// Visible-pixel threshold for the configured image size.
    pub fn min_visible_pixels(&self) -> usize {
        ((self.size as f32 * self.size as f32 * self.min_visible_fraction).ceil() as usize).max(1)
    }
}
