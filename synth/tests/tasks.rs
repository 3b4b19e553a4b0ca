//! Task ground truth: every referring expression, parsed back from its text, resolves to exactly its target under
//! the generator's resolver, and the target is visible; every point answer is the argmin of the true depth at the
//! marked pixels, markers never cover another point, answer letters are balanced; VQA answers agree with the scene.

use std::collections::HashMap;

use perceptio_synth::tasks::expr::{Expression, Resolution, resolve};
use perceptio_synth::tasks::{DEPTH_QUESTION, POINTS_QUESTION, margins, object_infos};
use perceptio_synth::{SynthConfig, TaskKind, generate_scene};

fn cfg() -> SynthConfig {
    SynthConfig { size: 96, ..Default::default() }
}

#[test]
fn referring_expressions_pick_exactly_their_target() {
    let cfg = SynthConfig { referring_per_scene: 4, ..cfg() };
    let m = margins(cfg.size);
    let (mut total, mut depth_dep) = (0usize, 0usize);
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for i in 0..150 {
        let rec = generate_scene(&cfg, 5, i);
        let infos = object_infos(&rec.scene, &rec.rendered);
        let refs: Vec<_> = rec.samples.iter().filter(|s| s.task == TaskKind::Referring).collect();
        for s in &refs {
            let text = s.expression.as_deref().unwrap();
            let e = Expression::parse(text).unwrap_or_else(|| panic!("unparsable expression {text:?}"));
            let target = s.target_object.unwrap();
            assert_eq!(resolve(&e, &infos, &m), Resolution::Unique(target), "scene {i}: {text:?}");
            assert_eq!(e.depth_dependent(), s.depth_dependent);
            assert_eq!(s.question, format!("Please segment {text} in this image."));
            let visible = rec.rendered.mask(target).iter().filter(|&&v| v).count();
            assert!(visible >= cfg.min_visible_pixels(), "scene {i}: target has {visible} pixels");
            *kinds.entry(s.kind).or_default() += 1;
            total += 1;
            depth_dep += usize::from(s.depth_dependent);
        }
        // distinct expressions within a scene
        let mut texts: Vec<_> = refs.iter().map(|s| s.expression.clone()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), refs.len());
    }
    assert!(total > 450, "{total} referring samples from 150 scenes");
    let share = depth_dep as f64 / total as f64;
    assert!((0.35..0.65).contains(&share), "depth-dependent share {share} for a configured 0.5");
    for k in ["attribute", "beside", "extreme", "depth_order"] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 20, "kind {k}: {kinds:?}");
    }
}

#[test]
fn depth_expression_share_is_honoured_at_the_extremes() {
    for (share, want) in [(0.0f32, false), (1.0, true)] {
        let cfg = SynthConfig { depth_expression_share: share, ..cfg() };
        for i in 0..30 {
            for s in generate_scene(&cfg, 9, i).samples.iter().filter(|s| s.task == TaskKind::Referring) {
                assert_eq!(s.depth_dependent, want, "share {share}: {:?}", s.expression);
            }
        }
    }
}

#[test]
fn point_answers_are_the_closest_marked_point_and_markers_hide_no_point() {
    let cfg = cfg();
    let style = perceptio_synth::draw::MarkerStyle::for_size(cfg.size);
    let mut letters: HashMap<(usize, char), usize> = HashMap::new();
    let mut questions = 0;
    for i in 0..120 {
        let rec = generate_scene(&cfg, 21, i);
        let r = &rec.rendered;
        for s in rec.samples.iter().filter(|s| s.task == TaskKind::Points) {
            questions += 1;
            assert_eq!(s.question, POINTS_QUESTION);
            let p = s.points.as_ref().unwrap();
            let n = p.labels.len();
            assert!((3..=5).contains(&n));
            let true_depth: Vec<f32> = (0..n).map(|k| r.depth[(p.y[k] * r.width + p.x[k]) as usize]).collect();
            assert_eq!(true_depth, p.depth, "stored depths are the depth map at the marked pixels");
            let argmin = (0..n).min_by(|&a, &b| true_depth[a].total_cmp(&true_depth[b])).unwrap();
            assert_eq!(s.answer, format!("({})", p.labels[argmin]));
            assert_eq!(p.labels, ['A', 'B', 'C', 'D', 'E'][..n].to_vec());
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        let (da, db) = (true_depth[a], true_depth[b]);
                        assert!(da.max(db) >= cfg.min_point_depth_ratio * da.min(db), "depths too close");
                        assert!(!style.footprint(p.x[a] as i32, p.y[a] as i32).contains(p.x[b] as i32, p.y[b] as i32));
                    }
                }
            }
            // each marked pixel and its 4-neighbours look as in the clean render
            let marked = s.marked_rgb.as_ref().unwrap();
            for k in 0..n {
                for (dx, dy) in [(0i32, 0i32), (1, 0), (-1, 0), (0, 1), (0, -1)] {
                    let j = 3 * (((p.y[k] as i32 + dy) * r.width as i32) + p.x[k] as i32 + dx) as usize;
                    assert_eq!(&marked[j..j + 3], &r.rgb[j..j + 3], "point {} covered", p.labels[k]);
                }
            }
            assert_ne!(marked, &r.rgb, "markers are drawn");
            *letters.entry((n, p.labels[p.answer])).or_default() += 1;
        }
    }
    assert!(questions >= 110, "{questions} point questions from 120 scenes");
    for n in 3..=5usize {
        let counts: Vec<usize> =
            ['A', 'B', 'C', 'D', 'E'][..n].iter().map(|&l| letters.get(&(n, l)).copied().unwrap_or(0)).collect();
        let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(hi - lo <= 2 && lo > 0, "answer letters for {n} points: {counts:?}");
    }
}

/// Share of point questions whose closest point is also the lowest marked point in the image.
fn lowest_is_closest_share(cfg: &SynthConfig, scenes: u64) -> (f64, usize) {
    let (mut lowest, mut questions) = (0, 0);
    for i in 0..scenes {
        for s in generate_scene(cfg, 5, i).samples.iter().filter(|s| s.task == TaskKind::Points) {
            let p = s.points.as_ref().unwrap();
            let max_row = *p.y.iter().max().unwrap();
            lowest += usize::from(p.y[p.answer] == max_row);
            questions += 1;
        }
    }
    (lowest as f64 / questions.max(1) as f64, questions)
}

#[test]
fn the_lowest_point_is_the_closest_only_as_often_as_chance() {
    let balanced = cfg();
    let (share, questions) = lowest_is_closest_share(&balanced, 150);
    // chance over the 3/4/5-point cycle: (1/3 + 1/4 + 1/5) / 3 = 0.26
    assert!(questions >= 120, "{questions} point questions from 150 scenes");
    assert!((share - 0.26).abs() < 0.1, "lowest point is the answer in {share:.2} of {questions} questions");
    let plain = SynthConfig { balance_lowest_point: false, ..cfg() };
    let (share, questions) = lowest_is_closest_share(&plain, 150);
    assert!(share > 0.6, "without the balance the ground plane decides: {share:.2} of {questions}");
}

#[test]
fn vqa_answers_agree_with_the_scene_and_depth_rows_ask_for_depth() {
    let cfg = SynthConfig { vqa_per_scene: 4, ..cfg() };
    let min_px = cfg.min_visible_pixels();
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for i in 0..80 {
        let rec = generate_scene(&cfg, 8, i);
        let infos = object_infos(&rec.scene, &rec.rendered);
        for s in &rec.samples {
            match s.task {
                TaskKind::Depth => assert_eq!(s.question, DEPTH_QUESTION),
                TaskKind::Vqa => {
                    *kinds.entry(s.kind).or_default() += 1;
                    match s.kind {
                        "colour" => {
                            let o = infos.iter().find(|o| Some(o.id) == s.target_object).unwrap();
                            assert_eq!(s.answer, o.colour.name());
                        }
                        "shape" => {
                            let o = infos.iter().find(|o| Some(o.id) == s.target_object).unwrap();
                            assert_eq!(s.answer, o.shape.name());
                        }
                        "count" => {
                            let n: usize = s.answer.parse().unwrap();
                            assert!(n >= 1 && n <= infos.iter().filter(|o| o.visible_pixels >= min_px).count());
                        }
                        "closer" => {
                            assert!(s.depth_dependent);
                            // "Is the A closer to the camera than the B?": resolve A and B, compare their depths
                            let body = s.question.trim_start_matches("Is ").trim_end_matches('?');
                            let (a, b) = body.split_once(" closer to the camera than ").unwrap();
                            let m = margins(cfg.size);
                            let id = |t: &str| match resolve(&Expression::parse(t).unwrap(), &infos, &m) {
                                Resolution::Unique(id) => infos.iter().find(|o| o.id == id).unwrap().depth,
                                other => panic!("{t:?} resolves to {other:?}"),
                            };
                            let want = if id(a) < id(b) { "yes" } else { "no" };
                            assert_eq!(s.answer, want, "{}", s.question);
                        }
                        other => panic!("unknown vqa kind {other}"),
                    }
                }
                _ => {}
            }
        }
    }
    for k in ["colour", "shape", "count", "closer"] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 10, "{kinds:?}");
    }
}

#[test]
fn held_out_scenes_get_eval_points_per_scene_point_questions() {
    // 20 scenes: 0..16 train, 16..18 validation, 18..20 test
    let config = SynthConfig { scenes: 20, eval_points_per_scene: 3, ..cfg() };
    let points = |i: u64| generate_scene(&config, 4, i).samples.iter().filter(|s| s.task == TaskKind::Points).count();
    let train: Vec<usize> = (0..16).map(points).collect();
    let held_out: Vec<usize> = (16..20).map(points).collect();
    assert!(train.iter().all(|&n| n <= 1), "training scenes keep points_per_scene = 1: {train:?}");
    assert!(held_out.iter().all(|&n| n <= 3), "{held_out:?}");
    assert!(held_out.iter().sum::<usize>() >= 9, "held-out scenes ask three point questions each: {held_out:?}");
    // the training split is the same rows as without the setting
    let plain = SynthConfig { scenes: 20, ..cfg() };
    for i in 0..16 {
        let (a, b) = (generate_scene(&config, 4, i).samples, generate_scene(&plain, 4, i).samples);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.question == y.question && x.answer == y.answer));
    }
    // 0 means "as many as points_per_scene"
    assert_eq!(SynthConfig { eval_points_per_scene: 0, ..cfg() }.per_scene_in(TaskKind::Points, true), 1);
}
