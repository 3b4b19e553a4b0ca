//! Small 3D vector maths and the pinhole camera: everything the ray tracer and the tasks share about space.

use serde::{Deserialize, Serialize};

/// A 3D vector in world units (metres). World frame: y is up, the ground is the plane y = 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vec3 {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

impl Vec3 {
    pub const fn new(x: f32, y: f32, z: f32) -> Self {
        Self { x, y, z }
    }
    pub fn dot(self, o: Vec3) -> f32 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    pub fn cross(self, o: Vec3) -> Vec3 {
        Vec3::new(self.y * o.z - self.z * o.y, self.z * o.x - self.x * o.z, self.x * o.y - self.y * o.x)
    }
    pub fn length(self) -> f32 {
        self.dot(self).sqrt()
    }
    pub fn normalized(self) -> Vec3 {
        self * (1.0 / self.length())
    }
}

impl std::ops::Add for Vec3 {
    type Output = Vec3;
    fn add(self, o: Vec3) -> Vec3 {
        Vec3::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl std::ops::Sub for Vec3 {
    type Output = Vec3;
    fn sub(self, o: Vec3) -> Vec3 {
        Vec3::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

impl std::ops::Mul<f32> for Vec3 {
    type Output = Vec3;
    fn mul(self, s: f32) -> Vec3 {
        Vec3::new(self.x * s, self.y * s, self.z * s)
    }
}

impl std::ops::Neg for Vec3 {
    type Output = Vec3;
    fn neg(self) -> Vec3 {
        Vec3::new(-self.x, -self.y, -self.z)
    }
}

/// A pinhole camera at `position`, looking along +z (world) tilted down by `pitch_deg`, with a vertical field of
/// view `fov_deg`. Its right axis is world +x; image x grows to the right, image y grows downwards.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    pub position: Vec3,
    pub pitch_deg: f32,
    pub fov_deg: f32,
    pub width: u32,
    pub height: u32,
}

/// The camera's orthonormal basis and the per-pixel ray parameters, computed once per image.
#[derive(Clone, Copy, Debug)]
pub struct CameraFrame {
    pub origin: Vec3,
    pub forward: Vec3,
    pub right: Vec3,
    pub up: Vec3,
    /// tan(fov / 2): half the image height at unit forward distance.
    pub tan_half: f32,
    pub aspect: f32,
    pub width: u32,
    pub height: u32,
}

impl Camera {
    pub fn frame(&self) -> CameraFrame {
        let p = self.pitch_deg.to_radians();
        CameraFrame {
            origin: self.position,
            forward: Vec3::new(0.0, -p.sin(), p.cos()),
            right: Vec3::new(1.0, 0.0, 0.0),
            up: Vec3::new(0.0, p.cos(), p.sin()),
            tan_half: (self.fov_deg.to_radians() * 0.5).tan(),
            aspect: self.width as f32 / self.height as f32,
            width: self.width,
            height: self.height,
        }
    }
}

impl CameraFrame {
    /// Ray direction through image position (px, py) (pixel units, pixel centres at +0.5). The direction's
    /// forward component is exactly 1, so a ray parameter `t` is the hit's z-distance (metric depth).
    pub fn ray_dir(&self, px: f32, py: f32) -> Vec3 {
        let sx = (2.0 * px / self.width as f32 - 1.0) * self.tan_half * self.aspect;
        let sy = (1.0 - 2.0 * py / self.height as f32) * self.tan_half;
        self.forward + self.right * sx + self.up * sy
    }

    /// Camera-space coordinates (right, up, forward) of a world point.
    pub fn to_camera(&self, p: Vec3) -> Vec3 {
        let d = p - self.origin;
        Vec3::new(d.dot(self.right), d.dot(self.up), d.dot(self.forward))
    }

    /// Image position (pixel units) of a world point in front of the camera, and its z-depth.
    pub fn project(&self, p: Vec3) -> Option<(f32, f32, f32)> {
        let c = self.to_camera(p);
        if c.z <= 1e-6 {
            return None;
        }
        let sx = c.x / c.z / (self.tan_half * self.aspect);
        let sy = c.y / c.z / self.tan_half;
        let px = (sx + 1.0) * 0.5 * self.width as f32;
        let py = (1.0 - sy) * 0.5 * self.height as f32;
        Some((px, py, c.z))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_inverts_ray_direction() {
        let cam = Camera { position: Vec3::new(0.0, 2.0, 0.0), pitch_deg: 30.0, fov_deg: 50.0, width: 96, height: 64 };
        let f = cam.frame();
        for &(px, py) in &[(0.5, 0.5), (48.0, 32.0), (95.5, 10.25)] {
            let d = f.ray_dir(px, py);
            let p = f.origin + d * 7.0;
            let (qx, qy, z) = f.project(p).unwrap();
            assert!((qx - px).abs() < 1e-3 && (qy - py).abs() < 1e-3, "{qx} {qy} vs {px} {py}");
            assert!((z - 7.0).abs() < 1e-4);
        }
        assert!(f.forward.dot(f.up).abs() < 1e-6 && f.forward.dot(f.right).abs() < 1e-6);
    }
}
