//! Procedural depth maps for training the tokenizer before (or without) the synthetic world: a pinhole
//! camera above a ground plane looking slightly down at random boxes and spheres, ray-cast per
//! pixel, turned into disparity and min-max normalised to [-1, 1] (brighter = closer).

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Depth of rays that hit nothing (sky).
const FAR: f32 = 60.0;

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Centre and radius.
    Sphere { c: [f32; 3], r: f32 },
    /// Centre, half extents, yaw (radians, about the vertical axis).
    Box { c: [f32; 3], half: [f32; 3], yaw: f32 },
}

/// A seeded stream of procedural depth maps of side `size`.
#[derive(Debug)]
pub struct ProceduralDepth {
    size: usize,
    rng: StdRng,
}

impl ProceduralDepth {
    /// A stream of `size x size` maps; the same seed gives the same maps.
    pub fn new(size: usize, seed: u64) -> Self {
        Self { size, rng: StdRng::seed_from_u64(seed) }
    }

    /// Side of the maps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// One normalised map, row-major, values in [-1, 1] (1 = closest).
    pub fn sample(&mut self) -> Vec<f32> {
        let rng = &mut self.rng;
        let height: f32 = rng.random_range(0.8..2.2);
        let pitch: f32 = rng.random_range(0.05..0.45);
        let fov: f32 = rng.random_range(0.8..1.2);
        let focal = 0.5 * self.size as f32 / (0.5 * fov).tan();
        let mut shapes = Vec::new();
        for _ in 0..rng.random_range(1..=7) {
            let x: f32 = rng.random_range(-5.0..5.0);
            let z: f32 = rng.random_range(2.5..14.0);
            if rng.random_bool(0.5) {
                let r: f32 = rng.random_range(0.3..1.4);
                shapes.push(Shape::Sphere { c: [x, -height + r, z], r });
            } else {
                let half = [rng.random_range(0.2..1.5), rng.random_range(0.2..1.8), rng.random_range(0.2..1.5)];
                shapes.push(Shape::Box {
                    c: [x, -height + half[1], z],
                    half,
                    yaw: rng.random_range(0.0..std::f32::consts::PI),
                });
            }
        }
        // Sometimes a back wall closes the scene.
        let wall = rng.random_bool(0.3).then(|| rng.random_range(10.0..25.0f32));

        let (sp, cp) = pitch.sin_cos();
        let c = 0.5 * (self.size as f32 - 1.0);
        let mut disparity = Vec::with_capacity(self.size * self.size);
        for v in 0..self.size {
            for u in 0..self.size {
                // Camera-frame direction with unit forward component, so the hit parameter is the
                // depth along the optical axis; then pitch it down about the x axis.
                let dc = [(u as f32 - c) / focal, -(v as f32 - c) / focal, 1.0];
                let d = [dc[0], dc[1] * cp - dc[2] * sp, dc[1] * sp + dc[2] * cp];
                let mut t = FAR;
                if d[1] < 0.0 {
                    t = t.min(height / -d[1]);
                }
                if let Some(zw) = wall
                    && d[2] > 0.0
                {
                    t = t.min(zw / d[2]);
                }
                for s in &shapes {
                    if let Some(hit) = intersect(s, d) {
                        t = t.min(hit);
                    }
                }
                disparity.push(1.0 / t.max(1e-3));
            }
        }
        normalise(&mut disparity);
        disparity
    }

    /// `n` maps as a tensor `[n, 1, size, size]`.
    pub fn batch(&mut self, n: usize, device: &Device) -> Tensor<4> {
        let mut data = Vec::with_capacity(n * self.size * self.size);
        for _ in 0..n {
            data.extend(self.sample());
        }
        Tensor::<1>::from_data(data.as_slice(), device).reshape([n, 1, self.size, self.size]) // [n, 1, S, S]
    }
}

/// Min-max normalises in place to [-1, 1]; a constant map becomes all zeros.
pub fn normalise(values: &mut [f32]) {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let span = hi - lo;
    for x in values.iter_mut() {
        *x = if span > 1e-12 { 2.0 * (*x - lo) / span - 1.0 } else { 0.0 };
    }
}

/// Nearest positive hit of the ray `o = 0, dir = d` with a shape.
fn intersect(shape: &Shape, d: [f32; 3]) -> Option<f32> {
    match *shape {
        Shape::Sphere { c, r } => {
            // |t d - c|^2 = r^2
            let a = dot(d, d);
            let b = -2.0 * dot(d, c);
            let cc = dot(c, c) - r * r;
            let disc = b * b - 4.0 * a * cc;
            if disc < 0.0 {
                return None;
            }
            let t = (-b - disc.sqrt()) / (2.0 * a);
            (t > 1e-3).then_some(t)
        }
        Shape::Box { c, half, yaw } => {
            // Into the box frame: translate by -c, rotate by -yaw about y.
            let (s, co) = yaw.sin_cos();
            let rot = |p: [f32; 3]| [co * p[0] - s * p[2], p[1], s * p[0] + co * p[2]];
            let o = rot([-c[0], -c[1], -c[2]]);
            let dir = rot(d);
            let (mut t0, mut t1) = (f32::NEG_INFINITY, f32::INFINITY);
            for i in 0..3 {
                if dir[i].abs() < 1e-9 {
                    if o[i].abs() > half[i] {
                        return None;
                    }
                    continue;
                }
                let a = (-half[i] - o[i]) / dir[i];
                let b = (half[i] - o[i]) / dir[i];
                t0 = t0.max(a.min(b));
                t1 = t1.min(a.max(b));
            }
            (t1 >= t0 && t0 > 1e-3).then_some(t0)
        }
    }
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
