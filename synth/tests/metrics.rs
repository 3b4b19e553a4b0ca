//! Metrics against hand-computed values on small cases, misses included.

use perceptio_synth::metrics::*;

fn m(bits: &str) -> Vec<bool> {
    bits.chars().map(|c| c == '1').collect()
}

#[test]
fn mask_metrics_match_hand_computed_values() {
    let mut mm = MaskMetrics::default();
    // sample 1: pred 1100, gt 1010 -> I = 1, U = 3, IoU 1/3
    let iou1 = mm.add(Some(&m("1100")), &m("1010")).unwrap();
    assert!((iou1 - 1.0 / 3.0).abs() < 1e-12);
    // sample 2: perfect, I = U = 2
    assert_eq!(mm.add(Some(&m("0011")), &m("0011")).unwrap(), 1.0);
    // sample 3: no prediction -> empty mask: I = 0, U = |gt| = 3
    assert_eq!(mm.add(None, &m("1110")).unwrap(), 0.0);
    assert_eq!((mm.intersection, mm.union, mm.samples, mm.missing), (3, 8, 3, 1));
    assert!((mm.ciou() - 3.0 / 8.0).abs() < 1e-12);
    assert!((mm.mean_iou() - (1.0 / 3.0 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
    assert!((mm.precision_at_half() - 1.0 / 3.0).abs() < 1e-12);
    // an IoU of exactly 0.5 counts for precision@0.5
    let mut half = MaskMetrics::default();
    half.add(Some(&m("1100")), &m("1000")).unwrap();
    assert_eq!(half.precision_at_half(), 1.0);
    // areas: the two predictions cover 2/4 each; the targets 2/4, 2/4 and 3/4 (the miss's target counts too)
    assert!((mm.mean_predicted_area().unwrap() - 0.5).abs() < 1e-12);
    assert!((mm.mean_target_area().unwrap() - (0.5 + 0.5 + 0.75) / 3.0).abs() < 1e-12);
    assert!(mm.add(Some(&m("11")), &m("111")).is_err(), "size mismatch is an error");
    assert_eq!(mm.samples, 3, "a rejected sample is not counted");
    assert!((mm.mean_target_area().unwrap() - (0.5 + 0.5 + 0.75) / 3.0).abs() < 1e-12);
    // no samples, or misses only: no predicted area to average
    let mut misses = MaskMetrics::default();
    assert_eq!((misses.mean_predicted_area(), misses.mean_target_area()), (None, None));
    misses.add(None, &m("1000")).unwrap();
    assert_eq!(misses.mean_predicted_area(), None);
    assert_eq!(misses.mean_target_area(), Some(0.25));
}

#[test]
fn point_accuracy_per_count_and_average() {
    assert_eq!(extract_choice("(B)"), Some('B'));
    assert_eq!(extract_choice("The answer is (c)."), Some('C'));
    assert_eq!(extract_choice("Point D is closer"), Some('D'));
    assert_eq!(extract_choice("no idea"), None);
    let mut pm = PointMetrics::default();
    assert!(pm.add(3, Some("(A)"), "(A)"));
    assert!(!pm.add(3, Some("(B)"), "(A)"));
    assert!(pm.add(3, Some("A"), "(A)"));
    assert!(!pm.add(4, None, "(C)"), "a missing answer is wrong");
    assert!(pm.add(4, Some("(C)"), "(C)"));
    assert!(pm.add(5, Some("(E)"), "(E)"));
    assert!((pm.accuracy(3).unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(pm.accuracy(4), Some(0.5));
    assert_eq!(pm.accuracy(5), Some(1.0));
    assert!((pm.average().unwrap() - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
    // answered letters: A, B, A, none, C, E -> A twice
    assert_eq!(pm.most_common_answer(), Some((Some('A'), 2)));
    // truths: (A) for all 3 questions with 3 points, (C) for both with 4, (E) for the one with 5: one letter per
    // count is always right
    assert!((pm.constant_answer_average().unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn answer_kinds_give_the_constant_baseline_and_the_repeats() {
    let mut am = AnswerMetrics::default();
    assert_eq!(am.constant_answer_accuracy(), None);
    assert_eq!(am.repeated_answers(), 0);
    // closer: truths yes, yes, no; the model says "Yes." every time (normalised: yes)
    for t in ["yes", "yes", "no"] {
        am.add_of_kind("closer", Some("Yes."), t);
    }
    // count: truths 1, 2; answers "one" (normalised: 1) and "3"
    am.add_of_kind("count", Some("one"), "1");
    am.add_of_kind("count", Some("3"), "2");
    assert_eq!((am.normalized, am.total), (3, 5));
    // best constants: yes (2 of 3) and a count (1 of 2)
    assert!((am.constant_answer_accuracy().unwrap() - 3.0 / 5.0).abs() < 1e-12);
    // repeats: yes 3 times; each count answer once
    assert_eq!(am.repeated_answers(), 4);
    // per kind, in order: closer 2 of 3 right, "yes" 3 times; count 1 of 2 right, answers 1 and 3 once each (the
    // tie goes to the first in order, "1")
    let kinds = am.by_kind();
    fn row(k: &KindAnswers) -> (&str, u64, u64, u64, Option<String>) {
        (k.kind.as_str(), k.questions, k.right, k.constant_right, k.most_common.clone())
    }
    assert_eq!(row(&kinds[0]), ("closer", 3, 2, 2, Some("yes".to_string())));
    assert_eq!(kinds[0].most_common_count, 3);
    assert_eq!(row(&kinds[1]), ("count", 2, 1, 1, Some("1".to_string())));
    assert_eq!((kinds.len(), kinds[1].most_common_count), (2, 1));
    // an unanswered question counts as asked, not right, and "no answer" can be the commonest answer
    am.add_of_kind("shape", None, "cube");
    let shape = am.by_kind().pop().unwrap();
    assert_eq!((shape.questions, shape.right, shape.most_common, shape.most_common_count), (1, 0, None, 1));
}

#[test]
fn a_constant_answer_scores_the_constant_baseline() {
    let mut pm = PointMetrics::default();
    assert_eq!(pm.most_common_answer(), None);
    assert_eq!(pm.constant_answer_average(), None);
    // 3 points: truths A, A, B, C; 4 points: truths B, D, D, D, A. The model always says (A).
    for t in ["(A)", "(A)", "(B)", "(C)"] {
        pm.add(3, Some("(A)"), t);
    }
    for t in ["(B)", "(D)", "(D)", "(D)", "(A)"] {
        pm.add(4, Some("(A)"), t);
    }
    assert_eq!(pm.most_common_answer(), Some((Some('A'), 9)));
    // best constant: A for 3 points (2/4), D for 4 points (3/5)
    assert!((pm.constant_answer_average().unwrap() - (0.5 + 0.6) / 2.0).abs() < 1e-12);
    // the model's own constant (A) scores 2/4 and 1/5
    assert!((pm.average().unwrap() - (0.5 + 0.2) / 2.0).abs() < 1e-12);
    // a tie goes to the earlier letter, and an answer without a letter (None) comes before every letter
    let mut tie = PointMetrics::default();
    tie.add(3, Some("(C)"), "(A)");
    tie.add(3, Some("(B)"), "(A)");
    assert_eq!(tie.most_common_answer(), Some((Some('B'), 1)));
    tie.add(3, Some("no idea"), "(A)");
    assert_eq!(tie.most_common_answer(), Some((None, 1)));
}

#[test]
fn answer_accuracy_exact_and_normalised() {
    assert_eq!(normalize_answer("  The Two  cubes! "), "2 cubes");
    assert_eq!(normalize_answer("Yes."), "yes");
    let mut am = AnswerMetrics::default();
    am.add(Some("red"), "red");
    am.add(Some("Red."), "red");
    am.add(Some("two"), "2");
    am.add(Some("blue"), "red");
    am.add(None, "yes");
    assert_eq!((am.exact, am.normalized, am.total), (1, 3, 5));
    assert!((am.exact_accuracy() - 0.2).abs() < 1e-12);
    // without kinds every question is of one kind: the best constant answer is "red" (3 of the 5 truths)
    assert!((am.constant_answer_accuracy().unwrap() - 0.6).abs() < 1e-12);
    // answers given: red, red, 2, blue, none -> "red" twice
    assert_eq!(am.repeated_answers(), 2);
    assert!((am.normalized_accuracy() - 0.6).abs() < 1e-12);
}

#[test]
fn depth_metrics_match_hand_computed_values() {
    let gt = [1.0f32, 2.0, 4.0, 0.0];
    let pred = [1.1f32, 3.0, 4.0, 5.0]; // the last pixel has no truth and is skipped
    // AbsRel = (0.1/1 + 1/2 + 0/4) / 3 = 0.2
    assert!((abs_rel(&pred, &gt).unwrap().unwrap() - 0.2).abs() < 1e-6);
    // delta: ratios 1.1, 1.5, 1.0 -> 2 of 3 below 1.25
    assert!((delta_accuracy(&pred, &gt, 1.25).unwrap().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    // order: (0,1) right, (1,2) right, (0,2) right, (2,1) right; flip one prediction to get a wrong pair
    let pairs = [(0, 1), (1, 2), (0, 2), (0, 3)];
    assert_eq!(relative_order_accuracy(&pred, &gt, &pairs, 1.02).unwrap(), Some(1.0));
    let swapped = [3.0f32, 1.1, 4.0, 5.0];
    // (0,1): pred 3 > 1.1 but gt 1 < 2 -> wrong; (1,2) right; (0,2) right; (0,3) skipped (no truth)
    assert!((relative_order_accuracy(&swapped, &gt, &pairs, 1.02).unwrap().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    // ties in the truth are skipped, ties in the prediction are wrong
    assert_eq!(relative_order_accuracy(&[1.0, 1.0], &[1.0, 1.01], &[(0, 1)], 1.02).unwrap(), None);
    assert_eq!(relative_order_accuracy(&[1.0, 1.0], &[1.0, 2.0], &[(0, 1)], 1.02).unwrap(), Some(0.0));
    assert!(relative_order_accuracy(&pred, &gt, &[(0, 9)], 1.02).is_err());
    assert_eq!(median_scale(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), Some(2.0));

    let mut dm = DepthMetrics::default();
    dm.add(&pred, &gt, 1).unwrap();
    dm.add(&gt, &gt, 1).unwrap();
    assert!((dm.abs_rel() - 0.1).abs() < 1e-6);
    assert!((dm.delta1() - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-6);
    assert!((dm.order_accuracy() - 1.0).abs() < 1e-9);
    assert!(dm.add(&[0.0], &[0.0], 1).is_err(), "an image without valid pixels is an error");
}

#[test]
fn pair_sampling_is_deterministic_and_never_self() {
    let a = sample_pairs(10, 200, 3);
    assert_eq!(a, sample_pairs(10, 200, 3));
    assert_ne!(a, sample_pairs(10, 200, 4));
    assert!(a.iter().all(|&(i, j)| i != j && i < 10 && j < 10));
}

#[test]
fn map_moments_give_the_mean_per_pixel_variance() {
    let mut m = MapMoments::default();
    assert_eq!(m.mean_variance(), None);
    m.add(&[0.0, 1.0]);
    m.add(&[2.0, 1.0]);
    // pixel 0: values 0 and 2 (variance 1); pixel 1: 1 and 1 (variance 0)
    assert!((m.mean_variance().unwrap() - 0.5).abs() < 1e-12);
    m.add(&[1.0, 1.0, 1.0]);
    assert_eq!(m.mean_variance(), None, "maps of different sizes have no per-pixel variance");
}
