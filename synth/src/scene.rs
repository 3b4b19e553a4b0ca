//! What a scene is (camera, light, objects with their attributes and 3D placement) and how one is drawn at
//! random: camera height/pitch/field of view, 2-8 objects on the ground without interpenetration.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::SceneConfig;
use crate::geom::{Camera, Vec3};

/// The four object shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Sphere,
    Cube,
    Cylinder,
    Cone,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Sphere, Shape::Cube, Shape::Cylinder, Shape::Cone];
    pub fn name(self) -> &'static str {
        match self {
            Shape::Sphere => "sphere",
            Shape::Cube => "cube",
            Shape::Cylinder => "cylinder",
            Shape::Cone => "cone",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Sphere => "spheres",
            Shape::Cube => "cubes",
            Shape::Cylinder => "cylinders",
            Shape::Cone => "cones",
        }
    }
}

/// The eight object colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Gray,
    Red,
    Blue,
    Green,
    Brown,
    Purple,
    Cyan,
    Yellow,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Gray,
        Colour::Red,
        Colour::Blue,
        Colour::Green,
        Colour::Brown,
        Colour::Purple,
        Colour::Cyan,
        Colour::Yellow,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Colour::Gray => "gray",
            Colour::Red => "red",
            Colour::Blue => "blue",
            Colour::Green => "green",
            Colour::Brown => "brown",
            Colour::Purple => "purple",
            Colour::Cyan => "cyan",
            Colour::Yellow => "yellow",
        }
    }
    /// Albedo in [0, 1].
    pub fn albedo(self) -> [f32; 3] {
        let c: [u8; 3] = match self {
            Colour::Gray => [110, 110, 110],
            Colour::Red => [173, 35, 35],
            Colour::Blue => [42, 75, 215],
            Colour::Green => [29, 125, 20],
            Colour::Brown => [129, 74, 25],
            Colour::Purple => [129, 38, 192],
            Colour::Cyan => [41, 208, 208],
            Colour::Yellow => [255, 228, 51],
        };
        [c[0] as f32 / 255.0, c[1] as f32 / 255.0, c[2] as f32 / 255.0]
    }
}

/// The two object sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
    /// The object's scale `s` in metres (sphere radius; other shapes are sized from it).
    pub fn scale(self) -> f32 {
        match self {
            Size::Small => 0.35,
            Size::Large => 0.7,
        }
    }
}

/// One object standing on the ground.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Instance id in the id map (1-based; 0 is the ground).
    pub id: u8,
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// Centre of the object's footprint on the ground (y = 0).
    pub base: Vec3,
    /// Rotation about the vertical axis, degrees.
    pub yaw_deg: f32,
}

impl Object {
    /// Horizontal radius (sphere, cylinder, cone) or half edge (cube), metres.
    pub fn radius(&self) -> f32 {
        let s = self.size.scale();
        match self.shape {
            Shape::Sphere | Shape::Cone => s,
            Shape::Cube | Shape::Cylinder => 0.8 * s,
        }
    }
    /// Height above the ground, metres.
    pub fn height(&self) -> f32 {
        let s = self.size.scale();
        match self.shape {
            Shape::Sphere => 2.0 * s,
            Shape::Cube => 1.6 * s,
            Shape::Cylinder => 1.6 * s,
            Shape::Cone => 2.0 * s,
        }
    }
    /// Radius of the footprint's bounding circle on the ground.
    pub fn footprint_radius(&self) -> f32 {
        match self.shape {
            Shape::Cube => self.radius() * std::f32::consts::SQRT_2,
            _ => self.radius(),
        }
    }
    /// 3D centre of the object's bounding box.
    pub fn centre(&self) -> Vec3 {
        Vec3::new(self.base.x, 0.5 * self.height(), self.base.z)
    }
    /// "small red cube".
    pub fn full_name(&self) -> String {
        format!("{} {} {}", self.size.name(), self.colour.name(), self.shape.name())
    }
}

/// The directional light: unit vector pointing towards the light, and the ambient share.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Light {
    pub to_light: Vec3,
    pub ambient: f32,
}

/// A complete scene description: everything the renderer and the tasks need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub camera: Camera,
    pub light: Light,
    pub objects: Vec<Object>,
}

/// Draw a random scene. Objects are placed where the camera sees them, at least `cfg.min_gap` apart.
pub fn sample_scene<R: Rng>(rng: &mut R, cfg: &SceneConfig, width: u32, height: u32) -> Scene {
    let fov_deg = rng.random_range(cfg.fov_deg[0]..=cfg.fov_deg[1]);
    let pitch_deg = 0.5 * fov_deg + rng.random_range(cfg.pitch_over_half_fov_deg[0]..=cfg.pitch_over_half_fov_deg[1]);
    let cam_h = rng.random_range(cfg.camera_height[0]..=cfg.camera_height[1]);
    let camera = Camera { position: Vec3::new(0.0, cam_h, 0.0), pitch_deg, fov_deg, width, height };
    let frame = camera.frame();

    let elev = rng.random_range(35.0f32..65.0).to_radians();
    let azim = rng.random_range(0.0f32..360.0).to_radians();
    let light = Light {
        to_light: Vec3::new(elev.cos() * azim.cos(), elev.sin(), elev.cos() * azim.sin()),
        ambient: rng.random_range(0.25f32..0.4),
    };

    let lo = cfg.objects[0].clamp(1, 8);
    let hi = cfg.objects[1].clamp(lo, 8);
    let wanted = rng.random_range(lo..=hi) as usize;
    let mut objects: Vec<Object> = Vec::with_capacity(wanted);
    let mut attempts = 0;
    while objects.len() < wanted && attempts < 1000 {
        attempts += 1;
        let shape = Shape::ALL[rng.random_range(0..4)];
        let colour = Colour::ALL[rng.random_range(0..8)];
        let size = if rng.random_bool(0.5) { Size::Small } else { Size::Large };
        let yaw_deg = rng.random_range(0.0f32..90.0);
        // a ground point seen through the lower part of the image, not too far away
        let px = rng.random_range(0.12f32..0.88) * width as f32;
        let py = rng.random_range(0.2f32..0.95) * height as f32;
        let d = frame.ray_dir(px, py);
        if d.y >= -1e-4 {
            continue;
        }
        let t = -frame.origin.y / d.y;
        let g = frame.origin + d * t;
        let base = Vec3::new(g.x, 0.0, g.z);
        if t > cfg.max_object_depth || base.z < 1.0 {
            continue;
        }
        let candidate = Object { id: objects.len() as u8 + 1, shape, colour, size, base, yaw_deg };
        // keep the whole object in the frame: its bounding sphere projects inside the image
        let c = candidate.centre();
        let bound = (candidate.footprint_radius().powi(2) + 0.25 * candidate.height().powi(2)).sqrt();
        let Some((cx, cy, cz)) = frame.project(c) else { continue };
        let pr = bound * height as f32 / (2.0 * frame.tan_half * cz);
        if cx - pr < 0.0 || cx + pr > width as f32 || cy - pr < 0.0 || cy + pr > height as f32 {
            continue;
        }
        let fits = objects.iter().all(|o| {
            let dx = o.base.x - base.x;
            let dz = o.base.z - base.z;
            (dx * dx + dz * dz).sqrt() >= o.footprint_radius() + candidate.footprint_radius() + cfg.min_gap
        });
        if fits {
            objects.push(candidate);
        }
    }
    Scene { camera, light, objects }
}
