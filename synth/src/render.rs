//! The ray tracer: analytic ray-object intersections (sphere, yawed cube, cylinder, cone, ground plane), one
//! directional light with hard shadows and an ambient term, a checkered ground whose contrast fades with the
//! pixel footprint. Produces RGB, metric z-depth and the instance id map; depth and ids come from the pixel-centre
//! ray, so they are exact for that ray.

use crate::geom::{CameraFrame, Vec3};
use crate::scene::{Object, Scene, Shape};

/// Rays start this far off a surface to avoid self-hits.
const EPS: f32 = 1e-4;

/// One rendered scene. Pixel (x, y) is at index `y * width + x`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub width: u32,
    pub height: u32,
    /// RGB, 3 bytes per pixel.
    pub rgb: Vec<u8>,
    /// z-distance from the camera plane, metres (ray parameter along a direction whose forward component is 1).
    pub depth: Vec<f32>,
    /// Instance id per pixel: 0 = ground, k = the object with `id == k`.
    pub ids: Vec<u8>,
}

impl Rendered {
    /// The visible mask of instance `id`.
    pub fn mask(&self, id: u8) -> Vec<bool> {
        self.ids.iter().map(|&v| v == id).collect()
    }
    /// Visible pixel count per instance id (index = id).
    pub fn pixel_counts(&self) -> [usize; 256] {
        let mut c = [0usize; 256];
        for &v in &self.ids {
            c[v as usize] += 1;
        }
        c
    }
}

/// An object in the form the intersection code wants: footprint centre, yaw as cos/sin, dimensions and a
/// bounding sphere.
#[derive(Clone, Copy, Debug)]
pub struct Prim {
    pub shape: Shape,
    pub id: u8,
    pub base: Vec3,
    pub cos_yaw: f32,
    pub sin_yaw: f32,
    pub radius: f32,
    pub height: f32,
    pub bound_centre: Vec3,
    pub bound_r2: f32,
    pub albedo: [f32; 3],
}

impl Prim {
    pub fn new(o: &Object) -> Self {
        let yaw = o.yaw_deg.to_radians();
        let radius = o.radius();
        let height = o.height();
        let bound_centre = Vec3::new(o.base.x, 0.5 * height, o.base.z);
        let horiz = o.footprint_radius();
        let bound_r2 = (horiz * horiz + 0.25 * height * height) * 1.0001 + 1e-6;
        Prim {
            shape: o.shape,
            id: o.id,
            base: o.base,
            cos_yaw: yaw.cos(),
            sin_yaw: yaw.sin(),
            radius,
            height,
            bound_centre,
            bound_r2,
            albedo: o.colour.albedo(),
        }
    }

    /// Nearest hit with `t` in (EPS, t_max): (t, outward unit normal).
    pub fn intersect(&self, o: Vec3, d: Vec3, t_max: f32) -> Option<(f32, Vec3)> {
        // bounding sphere rejection
        let oc = o - self.bound_centre;
        let a = d.dot(d);
        let b = oc.dot(d);
        let c = oc.dot(oc) - self.bound_r2;
        if c > 0.0 && (b > 0.0 || b * b - a * c < 0.0) {
            return None;
        }
        match self.shape {
            Shape::Sphere => self.hit_sphere(o, d, t_max),
            Shape::Cube => self.hit_cube(o, d, t_max),
            Shape::Cylinder => self.hit_cylinder(o, d, t_max),
            Shape::Cone => self.hit_cone(o, d, t_max),
        }
    }

    fn hit_sphere(&self, o: Vec3, d: Vec3, t_max: f32) -> Option<(f32, Vec3)> {
        let c0 = self.bound_centre; // sphere centre = bounding centre (height = 2r)
        let oc = o - c0;
        let a = d.dot(d);
        let b = oc.dot(d);
        let c = oc.dot(oc) - self.radius * self.radius;
        let disc = b * b - a * c;
        if disc < 0.0 {
            return None;
        }
        let sq = disc.sqrt();
        let mut t = (-b - sq) / a;
        if t <= EPS {
            t = (-b + sq) / a;
        }
        if t <= EPS || t >= t_max {
            return None;
        }
        let p = o + d * t;
        Some((t, (p - c0) * (1.0 / self.radius)))
    }

    fn hit_cube(&self, o: Vec3, d: Vec3, t_max: f32) -> Option<(f32, Vec3)> {
        let h = self.radius;
        let (cs, sn) = (self.cos_yaw, self.sin_yaw);
        // into the cube's frame: centre at origin, axes aligned
        let ow = o - Vec3::new(self.base.x, h, self.base.z);
        let lo = [cs * ow.x - sn * ow.z, ow.y, sn * ow.x + cs * ow.z];
        let ld = [cs * d.x - sn * d.z, d.y, sn * d.x + cs * d.z];
        let mut t_near = f32::NEG_INFINITY;
        let mut t_far = f32::INFINITY;
        let mut axis_near = 0usize;
        let mut axis_far = 0usize;
        for k in 0..3 {
            let inv = 1.0 / ld[k];
            let mut t1 = (-h - lo[k]) * inv;
            let mut t2 = (h - lo[k]) * inv;
            if t1 > t2 {
                std::mem::swap(&mut t1, &mut t2);
            }
            if t1 > t_near {
                t_near = t1;
                axis_near = k;
            }
            if t2 < t_far {
                t_far = t2;
                axis_far = k;
            }
        }
        if t_near > t_far {
            return None;
        }
        let (t, axis, sign) = if t_near > EPS {
            (t_near, axis_near, -ld[axis_near].signum())
        } else {
            (t_far, axis_far, ld[axis_far].signum())
        };
        if t <= EPS || t >= t_max {
            return None;
        }
        let mut ln = [0.0f32; 3];
        ln[axis] = sign;
        // back to world: inverse of the rotation above
        let n = Vec3::new(cs * ln[0] + sn * ln[2], ln[1], -sn * ln[0] + cs * ln[2]);
        Some((t, n))
    }

    fn hit_cylinder(&self, o: Vec3, d: Vec3, t_max: f32) -> Option<(f32, Vec3)> {
        let r = self.radius;
        let ox = o.x - self.base.x;
        let oz = o.z - self.base.z;
        let mut best: Option<(f32, Vec3)> = None;
        let a = d.x * d.x + d.z * d.z;
        if a > 1e-12 {
            let b = ox * d.x + oz * d.z;
            let c = ox * ox + oz * oz - r * r;
            let disc = b * b - a * c;
            if disc >= 0.0 {
                let sq = disc.sqrt();
                for t in [(-b - sq) / a, (-b + sq) / a] {
                    let y = o.y + t * d.y;
                    if t > EPS && t < t_max && (0.0..=self.height).contains(&y) {
                        let n = Vec3::new(ox + t * d.x, 0.0, oz + t * d.z) * (1.0 / r);
                        best = Some((t, n));
                        break;
                    }
                }
            }
        }
        if d.y.abs() > 1e-12 {
            let t = (self.height - o.y) / d.y;
            let limit = best.map_or(t_max, |(bt, _)| bt);
            if t > EPS && t < limit {
                let x = ox + t * d.x;
                let z = oz + t * d.z;
                if x * x + z * z <= r * r {
                    best = Some((t, Vec3::new(0.0, 1.0, 0.0)));
                }
            }
        }
        best
    }

    fn hit_cone(&self, o: Vec3, d: Vec3, t_max: f32) -> Option<(f32, Vec3)> {
        let h = self.height;
        let k = self.radius / h;
        let k2 = k * k;
        let ox = o.x - self.base.x;
        let oz = o.z - self.base.z;
        let w = h - o.y;
        let a = d.x * d.x + d.z * d.z - k2 * d.y * d.y;
        let b = ox * d.x + oz * d.z + k2 * w * d.y;
        let c = ox * ox + oz * oz - k2 * w * w;
        let mut roots = [f32::INFINITY; 2];
        if a.abs() < 1e-12 {
            if b.abs() > 1e-12 {
                roots[0] = -c / (2.0 * b);
            }
        } else {
            let disc = b * b - a * c;
            if disc < 0.0 {
                return None;
            }
            let sq = disc.sqrt();
            let (r1, r2) = ((-b - sq) / a, (-b + sq) / a);
            roots = if r1 < r2 { [r1, r2] } else { [r2, r1] };
        }
        for t in roots {
            if t > EPS && t < t_max {
                let y = o.y + t * d.y;
                if (0.0..=h).contains(&y) {
                    let x = ox + t * d.x;
                    let z = oz + t * d.z;
                    let n = Vec3::new(x, k2 * (h - y), z).normalized();
                    return Some((t, n));
                }
            }
        }
        None
    }
}

/// What a ray hit: `id` 0 is the ground.
#[derive(Clone, Copy, Debug)]
struct Hit {
    t: f32,
    id: u8,
    normal: Vec3,
    albedo: [f32; 3],
}

fn trace(prims: &[Prim], o: Vec3, d: Vec3) -> Option<Hit> {
    let mut best: Option<Hit> = None;
    let mut t_max = if d.y < 0.0 { -o.y / d.y } else { f32::INFINITY };
    if t_max.is_finite() {
        best = Some(Hit { t: t_max, id: 0, normal: Vec3::new(0.0, 1.0, 0.0), albedo: [0.0; 3] });
    }
    for p in prims {
        if let Some((t, n)) = p.intersect(o, d, t_max) {
            t_max = t;
            best = Some(Hit { t, id: p.id, normal: n, albedo: p.albedo });
        }
    }
    best
}

fn in_shadow(prims: &[Prim], o: Vec3, to_light: Vec3) -> bool {
    prims.iter().any(|p| p.intersect(o, to_light, f32::INFINITY).is_some())
}

/// Ground albedo: a 1 m checkerboard whose contrast fades once a pixel covers a large part of a square.
fn ground_albedo(p: Vec3, footprint: f32) -> [f32; 3] {
    let base = [0.74f32, 0.72, 0.68];
    let parity = ((p.x.floor() as i64 + p.z.floor() as i64) & 1) as f32 * 2.0 - 1.0;
    let contrast = 0.06 * (1.0 - (footprint / 0.5)).clamp(0.0, 1.0);
    [base[0] + parity * contrast, base[1] + parity * contrast, base[2] + parity * contrast]
}

fn shade(prims: &[Prim], scene: &Scene, frame: &CameraFrame, d: Vec3, hit: &Hit) -> [f32; 3] {
    let p = frame.origin + d * hit.t;
    let l = scene.light.to_light;
    let albedo = if hit.id == 0 {
        let footprint = hit.t * 2.0 * frame.tan_half / frame.height as f32;
        ground_albedo(p, footprint)
    } else {
        hit.albedo
    };
    let mut diffuse = hit.normal.dot(l).max(0.0);
    if diffuse > 0.0 && in_shadow(prims, p + hit.normal * 1e-3, l) {
        diffuse = 0.0;
    }
    let amb = scene.light.ambient;
    let k = amb + (1.0 - amb) * diffuse;
    [albedo[0] * k, albedo[1] * k, albedo[2] * k]
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// Render `scene` at its camera's resolution with `aa x aa` colour samples per pixel.
pub fn render(scene: &Scene, aa: u32) -> Rendered {
    let frame = scene.camera.frame();
    let prims: Vec<Prim> = scene.objects.iter().map(Prim::new).collect();
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    let mut depth = vec![0f32; w * h];
    let mut ids = vec![0u8; w * h];
    let aa = aa.max(1);
    let inv = 1.0 / aa as f32;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let d = frame.ray_dir(x as f32 + 0.5, y as f32 + 0.5);
            let centre = trace(&prims, frame.origin, d);
            let colour = match centre {
                Some(hit) => {
                    depth[i] = hit.t;
                    ids[i] = hit.id;
                    if aa == 1 {
                        shade(&prims, scene, &frame, d, &hit)
                    } else {
                        let mut acc = [0f32; 3];
                        for sy in 0..aa {
                            for sx in 0..aa {
                                let ds = frame
                                    .ray_dir(x as f32 + (sx as f32 + 0.5) * inv, y as f32 + (sy as f32 + 0.5) * inv);
                                let c = match trace(&prims, frame.origin, ds) {
                                    Some(hs) => shade(&prims, scene, &frame, ds, &hs),
                                    None => [0.6, 0.7, 0.9],
                                };
                                acc = [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2]];
                            }
                        }
                        let n = (aa * aa) as f32;
                        [acc[0] / n, acc[1] / n, acc[2] / n]
                    }
                }
                None => {
                    depth[i] = f32::INFINITY;
                    [0.6, 0.7, 0.9]
                }
            };
            rgb[3 * i] = to_u8(colour[0]);
            rgb[3 * i + 1] = to_u8(colour[1]);
            rgb[3 * i + 2] = to_u8(colour[2]);
        }
    }
    Rendered { width: frame.width, height: frame.height, rgb, depth, ids }
}
