//! Two models on the same point questions: the gap between their HardBLINK averages (each the unweighted mean of
//! its per-count accuracies), how many questions only one of them gets right, and a paired bootstrap interval for
//! the gap that resamples questions within each point count (so every resample keeps the counts' sizes, and both
//! models are always scored on the same questions).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One question answered by both models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairedAnswer {
    /// Number of marked points (the stratum).
    pub points: u32,
    pub first_right: bool,
    pub second_right: bool,
}

/// The comparison of the first model against the second.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedGap {
    pub questions: u64,
    /// First average minus second average, as a fraction (0.1 = ten points).
    pub gap: f64,
    /// Questions only the first model gets right.
    pub only_first: u64,
    /// Questions only the second model gets right.
    pub only_second: u64,
    /// The central 95% of the bootstrap gaps (2.5th and 97.5th percentiles, nearest rank).
    pub low: f64,
    pub high: f64,
    pub resamples: usize,
}

impl PairedGap {
    /// Whether the interval excludes a gap of zero.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// Per count, (first right, second right) of each question.
fn strata(answers: &[PairedAnswer]) -> Vec<Vec<(bool, bool)>> {
    let mut by_count: BTreeMap<u32, Vec<(bool, bool)>> = BTreeMap::new();
    for a in answers {
        by_count.entry(a.points).or_default().push((a.first_right, a.second_right));
    }
    by_count.into_values().collect()
}

/// The gap of the count-averaged accuracies over `groups`, the questions of each group picked by `pick`.
fn average_gap(groups: &[Vec<(bool, bool)>], mut pick: impl FnMut(&[(bool, bool)]) -> (u64, u64)) -> f64 {
    let sum: f64 = groups
        .iter()
        .map(|g| {
            let (first, second) = pick(g);
            (first as f64 - second as f64) / g.len() as f64
        })
        .sum();
    sum / groups.len() as f64
}

/// Compares the two models' answers (None without questions). `resamples` bootstrap draws from `seed`.
pub fn paired_gap(answers: &[PairedAnswer], resamples: usize, seed: u64) -> Option<PairedGap> {
    if answers.is_empty() {
        return None;
    }
    let groups = strata(answers);
    let count = |g: &[(bool, bool)]| g.iter().fold((0, 0), |(f, s), &(a, b)| (f + u64::from(a), s + u64::from(b)));
    let gap = average_gap(&groups, count);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            average_gap(&groups, |g| {
                (0..g.len()).fold((0, 0), |(f, s), _| {
                    let (a, b) = g[rng.random_range(0..g.len())];
                    (f + u64::from(a), s + u64::from(b))
                })
            })
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    let rank = |q: f64| draws[((q * draws.len() as f64).ceil() as usize).clamp(1, draws.len()) - 1];
    Some(PairedGap {
        questions: answers.len() as u64,
        gap,
        only_first: answers.iter().filter(|a| a.first_right && !a.second_right).count() as u64,
        only_second: answers.iter().filter(|a| !a.first_right && a.second_right).count() as u64,
        low: rank(0.025),
        high: rank(0.975),
        resamples: draws.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(rows: &[(u32, bool, bool)]) -> Vec<PairedAnswer> {
        rows.iter()
            .map(|&(points, first_right, second_right)| PairedAnswer { points, first_right, second_right })
            .collect()
    }

    #[test]
    fn identical_answers_have_a_zero_gap_and_a_zero_interval() {
        let a = answers(&[(3, true, true), (3, false, false), (4, true, true), (5, false, false)]);
        let g = paired_gap(&a, 500, 1).unwrap();
        assert_eq!((g.gap, g.low, g.high, g.only_first, g.only_second), (0.0, 0.0, 0.0, 0, 0));
        assert!(!g.excludes_zero());
        assert_eq!(paired_gap(&[], 500, 1), None);
    }

    #[test]
    fn the_gap_is_the_difference_of_count_averages_not_of_pooled_accuracy() {
        // 3 points: first 2/2, second 0/2; 4 points: both 1/4 (the same question)
        let a = answers(&[
            (3, true, false),
            (3, true, false),
            (4, true, true),
            (4, false, false),
            (4, false, false),
            (4, false, false),
        ]);
        let g = paired_gap(&a, 2000, 7).unwrap();
        // averages: first (1 + 0.25) / 2, second (0 + 0.25) / 2: gap 0.5 (pooled would be 2/6)
        assert!((g.gap - 0.5).abs() < 1e-12, "{}", g.gap);
        // within each count every resample gives the same difference: 3 points always +1, 4 points always 0
        assert!((g.low - 0.5).abs() < 1e-12 && (g.high - 0.5).abs() < 1e-12, "{g:?}");
        assert_eq!((g.only_first, g.only_second), (2, 0));
        assert!(g.excludes_zero());
    }

    #[test]
    fn the_interval_matches_the_normal_approximation_of_the_paired_difference() {
        // three counts of 200 questions; per question, first right w.p. 0.6, second w.p. 0.4, independently
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut a = Vec::new();
        for points in 3..=5 {
            for _ in 0..200 {
                a.push(PairedAnswer { points, first_right: rng.random_bool(0.6), second_right: rng.random_bool(0.4) });
            }
        }
        let g = paired_gap(&a, 4000, 11).unwrap();
        // standard error of the count-averaged paired difference: sqrt(sum_k var_k / n_k) / K
        let mut var_sum = 0.0;
        for points in 3..=5 {
            let d: Vec<f64> = a
                .iter()
                .filter(|x| x.points == points)
                .map(|x| f64::from(u8::from(x.first_right)) - f64::from(u8::from(x.second_right)))
                .collect();
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            let var = d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d.len() as f64;
            var_sum += var / d.len() as f64;
        }
        let se = var_sum.sqrt() / 3.0;
        let half = (g.high - g.low) / 2.0;
        assert!((half / (1.96 * se) - 1.0).abs() < 0.15, "half width {half} against 1.96 se {}", 1.96 * se);
        assert!(g.low < g.gap && g.gap < g.high, "{g:?}");
        // the sample's gap is near the true 0.2, and the interval excludes zero at this size
        assert!((g.gap - 0.2).abs() < 0.08 && g.excludes_zero(), "{g:?}");
        // the same seed gives the same interval
        assert_eq!(paired_gap(&a, 4000, 11).unwrap(), g);
    }
}
