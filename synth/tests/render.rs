//! Renderer exactness: analytic depth of a sphere on the optical axis, and every pixel's depth lying on the
//! surface its instance id names (checked with implicit surface equations written independently of the tracer).

use perceptio_synth::geom::{Camera, Vec3};
use perceptio_synth::render::{Prim, render};
use perceptio_synth::scene::{Colour, Light, Object, Scene, Shape, Size, sample_scene};
use perceptio_synth::{SceneConfig, generate_scene};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn one_object_scene(shape: Shape, base: Vec3, size: u32) -> Scene {
    Scene {
        camera: Camera {
            position: Vec3::new(0.0, 2.0, 0.0),
            pitch_deg: 30.0,
            fov_deg: 50.0,
            width: size,
            height: size,
        },
        light: Light { to_light: Vec3::new(0.3, 0.8, -0.5).normalized(), ambient: 0.3 },
        objects: vec![Object { id: 1, shape, colour: Colour::Red, size: Size::Large, base, yaw_deg: 0.0 }],
    }
}

#[test]
fn sphere_on_the_optical_axis_has_the_exact_depth_at_the_centre_pixel() {
    // the optical axis descends at 30 degrees from (0, 2, 0); a large sphere (r = 0.7) whose centre is on it
    // sits at distance D = (2 - 0.7) / sin 30 = 2.6, so the centre pixel sees its front at depth D - r = 1.9
    let r = Size::Large.scale();
    let dist = (2.0 - r) / 30f32.to_radians().sin();
    let centre_z = dist * 30f32.to_radians().cos();
    let scene = one_object_scene(Shape::Sphere, Vec3::new(0.0, 0.0, centre_z), 65);
    let out = render(&scene, 1);
    let i = 32 * 65 + 32;
    assert_eq!(out.ids[i], 1);
    assert!((out.depth[i] - (dist - r)).abs() < 1e-4, "depth {} vs {}", out.depth[i], dist - r);
    assert!((out.depth[i] - 1.9).abs() < 1e-4);

    // an off-centre pixel against a direct solution of |o + t d - c| = r
    let f = scene.camera.frame();
    let c = Vec3::new(0.0, r, centre_z);
    for (x, y) in [(36u32, 30u32), (28, 35), (32, 26)] {
        let d = f.ray_dir(x as f32 + 0.5, y as f32 + 0.5);
        let oc = f.origin - c;
        let (a, b, cc) = (d.dot(d) as f64, oc.dot(d) as f64, (oc.dot(oc) - r * r) as f64);
        let t = (-b - (b * b - a * cc).sqrt()) / a;
        let got = out.depth[(y * 65 + x) as usize] as f64;
        assert!((got - t).abs() < 1e-4, "pixel ({x},{y}): {got} vs {t}");
    }
    // a ground pixel at the top-left: depth where the ray meets y = 0
    let d = f.ray_dir(0.5, 0.5);
    assert_eq!(out.ids[0], 0);
    assert!((out.depth[0] - (-2.0 / d.y)).abs() < 1e-4);
}

#[test]
fn cube_face_depth_is_exact() {
    // an axis-aligned large cube (half edge 0.56) straight ahead: its front face is the plane z = cz - 0.56; the
    // pixel through the face centre sees it at the z-depth of that point along the camera axis
    let scene = one_object_scene(Shape::Cube, Vec3::new(0.0, 0.0, 4.0), 129);
    let out = render(&scene, 1);
    let f = scene.camera.frame();
    let h = 0.8 * Size::Large.scale();
    let face_centre = Vec3::new(0.0, h, 4.0 - h);
    let (px, py, z) = f.project(face_centre).unwrap();
    let (x, y) = (px as usize, py as usize);
    let d = f.ray_dir(x as f32 + 0.5, y as f32 + 0.5);
    let t = (4.0 - h - f.origin.z) / d.z; // hit of this pixel's ray with the face plane
    assert_eq!(out.ids[y * 129 + x], 1);
    assert!((out.depth[y * 129 + x] - t).abs() < 1e-4, "{} vs {t}", out.depth[y * 129 + x]);
    assert!((t - z).abs() < 0.05, "nearby pixel, nearby depth");
}

/// Signed-ish distance of `p` from object `o`'s surface (0 on it), from the shapes' definitions.
fn surface_error(o: &Object, p: Vec3) -> f32 {
    let (dx, dz) = (p.x - o.base.x, p.z - o.base.z);
    let r = o.radius();
    let h = o.height();
    match o.shape {
        Shape::Sphere => ((p - o.centre()).length() - r).abs(),
        Shape::Cube => {
            let (s, c) = o.yaw_deg.to_radians().sin_cos();
            let lx = c * dx - s * dz;
            let lz = s * dx + c * dz;
            (lx.abs().max((p.y - r).abs()).max(lz.abs()) - r).abs()
        }
        Shape::Cylinder => {
            let rho = (dx * dx + dz * dz).sqrt();
            let side = if (-1e-3..=h + 1e-3).contains(&p.y) { (rho - r).abs() } else { f32::INFINITY };
            let cap = if rho <= r + 1e-3 { (p.y - h).abs() } else { f32::INFINITY };
            side.min(cap)
        }
        Shape::Cone => {
            let rho = (dx * dx + dz * dz).sqrt();
            if (-1e-3..=h + 1e-3).contains(&p.y) { (rho - r / h * (h - p.y)).abs() } else { f32::INFINITY }
        }
    }
}

#[test]
fn every_pixel_depth_lies_on_the_surface_its_id_names() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let cfg = SceneConfig::default();
    let mut seen = [0usize; 4];
    for _ in 0..25 {
        let scene = sample_scene(&mut rng, &cfg, 72, 56);
        let out = render(&scene, 1);
        let f = scene.camera.frame();
        let prims: Vec<Prim> = scene.objects.iter().map(Prim::new).collect();
        for y in 0..56u32 {
            for x in 0..72u32 {
                let i = (y * 72 + x) as usize;
                let d = f.ray_dir(x as f32 + 0.5, y as f32 + 0.5);
                let t = out.depth[i];
                assert!(t.is_finite() && t > 0.0);
                let p = f.origin + d * t;
                // the hit point's z-depth is the depth value
                assert!((f.to_camera(p).z - t).abs() < 1e-3 * t.max(1.0));
                match out.ids[i] {
                    0 => assert!(p.y.abs() < 1e-3 * t.max(1.0), "ground pixel off the plane: {p:?}"),
                    id => {
                        let o = &scene.objects[id as usize - 1];
                        assert_eq!(o.id, id);
                        let err = surface_error(o, p);
                        assert!(err < 2e-3, "{:?} pixel ({x},{y}) is {err} off its surface", o.shape);
                        seen[o.shape as usize] += 1;
                    }
                }
                // nothing is hit in front of the visible surface
                for pr in &prims {
                    assert!(pr.intersect(f.origin, d, t * (1.0 - 1e-4)).is_none(), "occluder in front at ({x},{y})");
                }
            }
        }
    }
    assert!(seen.iter().all(|&n| n > 100), "every shape covered: {seen:?}");
}

#[test]
fn rendering_is_deterministic_and_objects_do_not_interpenetrate() {
    let cfg = perceptio_synth::SynthConfig { size: 64, ..Default::default() };
    for i in 0..40 {
        let a = generate_scene(&cfg, 3, i);
        let b = generate_scene(&cfg, 3, i);
        assert_eq!(a.rendered, b.rendered);
        assert_eq!(a.samples, b.samples);
        let n = a.scene.objects.len();
        assert!((2..=8).contains(&n), "{n} objects");
        for (k, o) in a.scene.objects.iter().enumerate() {
            for q in &a.scene.objects[k + 1..] {
                let dist = ((o.base.x - q.base.x).powi(2) + (o.base.z - q.base.z).powi(2)).sqrt();
                assert!(dist >= o.footprint_radius() + q.footprint_radius(), "objects {} and {} overlap", o.id, q.id);
            }
        }
    }
    assert_ne!(generate_scene(&cfg, 3, 0).rendered, generate_scene(&cfg, 4, 0).rendered);
}
