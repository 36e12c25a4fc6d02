//! `report.json`: per recipe, over its seeds, the spread of the final and best validation loss
//! (and accuracy), perplexity, the gap to the baseline, throughput and the step where its curve
//! leaves the baseline's seed spread; for a CSCALE sweep, the biases that keep the paper's
//! 99.5% of the baseline. `report.md` (see [`super::markdown`]) shows the same numbers with
//! their definitions.

use fp8_backend::Precision;
use serde::Serialize;

use super::plan::Recipe;
use super::stats::{aligned, mean, Spread};
use super::summary::CompareRow;
use crate::train::run_dir::MetricsRow;

/// The paper's criterion for a usable FP8-CSCALE bias (Perez et al., section 4): FP8 keeps at
/// least 99.5% of the higher-precision accuracy.
pub const KEPT_FRACTION: f64 = 0.995;

/// One run as the report reads it.
pub struct SweepRun<'a> {
    pub summary: &'a CompareRow,
    pub metrics: &'a [MetricsRow],
}

/// A recipe with its runs, in seed order.
pub struct RecipeRuns<'a> {
    pub recipe: &'a Recipe,
    pub runs: Vec<SweepRun<'a>>,
}

impl<'a> RecipeRuns<'a> {
    /// Each run with the `baseline` run of the same seed.
    pub fn pairs_with<'b>(
        &'b self,
        baseline: &'b RecipeRuns<'a>,
    ) -> Vec<(&'b SweepRun<'a>, &'b SweepRun<'a>)> {
        (self.runs.iter())
            .filter_map(|r| {
                let b = baseline
                    .runs
                    .iter()
                    .find(|b| b.summary.seed == r.summary.seed)?;
                Some((r, b))
            })
            .collect()
    }

    /// The metrics of the runs, in seed order.
    pub fn metrics(&self) -> Vec<&'a [MetricsRow]> {
        self.runs.iter().map(|r| r.metrics).collect()
    }
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The baseline recipe (the first precision listed).
    pub baseline: String,
    /// The job `seed` of each run of a recipe.
    pub seeds: Vec<u64>,
    /// The baseline first.
    pub recipes: Vec<RecipeReport>,
    /// The recipes of `--cscale-biases` (absent without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cscale: Option<CscaleRange>,
}

/// One recipe over its seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecipeReport {
    pub recipe: String,
    pub precision: Precision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cscale_bias: Option<i32>,
    pub final_val_loss: Option<Spread>,
    pub best_val_loss: Option<Spread>,
    /// exp(final validation loss) of each run.
    pub final_val_perplexity: Option<Spread>,
    /// Classification data only.
    pub final_val_accuracy: Option<Spread>,
    pub best_val_accuracy: Option<Spread>,
    /// Mean over seeds of (final val loss - the baseline's of the same seed).
    pub val_gap: Option<f64>,
    /// Mean over seeds of that gap / the baseline's final val loss of the same seed.
    pub val_gap_relative: Option<f64>,
    /// Mean over seeds of (final val accuracy - the baseline's of the same seed).
    pub val_accuracy_gap: Option<f64>,
    /// The standard errors of those three means: the sample standard deviation of the
    /// per-seed gaps over sqrt(seeds) (`None` with fewer than two seeds). The gaps are paired
    /// by seed (same data order), so this is the uncertainty of the gap itself, smaller than
    /// the two recipes' seed spreads together when the seeds move both alike.
    pub val_gap_se: Option<f64>,
    pub val_gap_relative_se: Option<f64>,
    pub val_accuracy_gap_se: Option<f64>,
    /// Mean over seeds of each run's median tokens/s.
    pub tokens_per_s: Option<f64>,
    /// `tokens_per_s` / the baseline's.
    pub speed_ratio: Option<f64>,
    /// Where the mean validation curve first leaves the seed spread of the two recipes.
    pub separation: Separation,
}

/// The first evaluation step at which |mean val loss - the baseline's mean val loss| exceeds
/// the sum of the two recipes' seed ranges (max - min over seeds). Step 0 does not count: it
/// evaluates the initial model, which a fine-tune shares across seeds, so that it has no spread
/// and any FP8 rounding there would count as a separation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Separation {
    /// The recipe is the baseline.
    Baseline,
    /// One seed has no spread to compare against.
    OneSeed,
    /// At no common evaluation step.
    Never,
    AtStep(u64),
}

impl std::fmt::Display for Separation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Baseline => f.write_str("(baseline)"),
            Self::OneSeed => f.write_str("n/a (one seed)"),
            Self::Never => f.write_str("none"),
            Self::AtStep(step) => write!(f, "step {step}"),
        }
    }
}

/// What the CSCALE criterion is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CscaleMetric {
    /// Mean final validation accuracy; kept = accuracy / the baseline's.
    ValAccuracy,
    /// Data without accuracy: mean final validation perplexity; kept = the baseline's / ppl.
    ValPerplexity,
}

impl CscaleMetric {
    /// The fraction of the baseline's `base` that `value` keeps: accuracy / the baseline's, or
    /// the baseline's perplexity / this one's (higher is better either way).
    pub fn kept(self, value: Option<f64>, base: Option<f64>) -> Option<f64> {
        match (self, value, base) {
            (Self::ValAccuracy, Some(v), Some(b)) if b > 0.0 => Some(v / b),
            (Self::ValPerplexity, Some(v), Some(b)) if v > 0.0 => Some(b / v),
            _ => None,
        }
    }
}

/// The FP8-CSCALE sweep against the paper's criterion.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CscaleRange {
    pub metric: CscaleMetric,
    pub threshold: f64,
    /// The baseline's mean of the metric.
    pub baseline: Option<f64>,
    /// By increasing bias.
    pub points: Vec<CscalePoint>,
    /// The widest run of consecutive swept biases that all pass: [lowest, highest].
    pub usable_range: Option<[i32; 2]>,
}

/// One bias of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CscalePoint {
    pub bias: i32,
    /// The recipe's mean of the metric.
    pub value: Option<f64>,
    /// The fraction of the baseline kept.
    pub kept: Option<f64>,
    pub passes: bool,
}

impl Report {
    /// The report of `recipes` (the first is the baseline), each with its runs in seed order.
    pub fn of(recipes: &[RecipeRuns<'_>]) -> Self {
        let baseline = recipes.first();
        let reports: Vec<RecipeReport> = recipes
            .iter()
            .enumerate()
            .map(|(i, r)| RecipeReport::of(r, baseline, i == 0))
            .collect();
        let points: Vec<(i32, &RecipeReport)> = (recipes.iter().zip(&reports))
            .filter_map(|(r, report)| Some((r.recipe.cscale_bias?, report)))
            .collect();
        Self {
            baseline: baseline.map(|b| b.recipe.label()).unwrap_or_default(),
            seeds: baseline
                .map(|b| b.runs.iter().map(|r| r.summary.seed).collect())
                .unwrap_or_default(),
            cscale: match (reports.first(), points.is_empty()) {
                (Some(base), false) => Some(CscaleRange::of(base, &points)),
                _ => None,
            },
            recipes: reports,
        }
    }
}

impl RecipeReport {
    /// `recipe` over its runs, against `baseline` (itself when `is_baseline`: gap 0).
    fn of(recipe: &RecipeRuns<'_>, baseline: Option<&RecipeRuns<'_>>, is_baseline: bool) -> Self {
        let final_loss = |r: &CompareRow| r.final_val_loss.map(f64::from);
        let spread = |f: &dyn Fn(&CompareRow) -> Option<f64>| Spread::of(&each_of(recipe, f));
        // The spread over seeds of f(run) against f(baseline run of the same seed).
        let paired = |f: &dyn Fn(&CompareRow) -> Option<f64>, g: fn(f64, f64) -> f64| {
            let values: Vec<f64> = (recipe.pairs_with(baseline?).into_iter())
                .filter_map(|(r, b)| Some(g(f(r.summary)?, f(b.summary)?)))
                .collect();
            Spread::of(&values)
        };
        let gap = paired(&final_loss, |v, b| v - b);
        let relative = paired(&final_loss, |v, b| (v - b) / b);
        let accuracy_gap = paired(&|r| r.final_val_accuracy, |v, b| v - b);
        let speed = |r: &CompareRow| r.tokens_per_s;
        let tokens_per_s = mean(&each_of(recipe, &speed));
        let base_speed = baseline.and_then(|b| mean(&each_of(b, &speed)));
        Self {
            recipe: recipe.recipe.label(),
            precision: recipe.recipe.precision,
            cscale_bias: recipe.recipe.cscale_bias,
            final_val_loss: spread(&final_loss),
            best_val_loss: spread(&|r| r.best_val_loss.map(f64::from)),
            final_val_perplexity: spread(&|r| final_loss(r).map(f64::exp)),
            final_val_accuracy: spread(&|r| r.final_val_accuracy),
            best_val_accuracy: spread(&|r| r.best_val_accuracy),
            val_gap: gap.as_ref().map(|s| s.mean),
            val_gap_relative: relative.as_ref().map(|s| s.mean),
            val_accuracy_gap: accuracy_gap.as_ref().map(|s| s.mean),
            val_gap_se: gap.as_ref().and_then(Spread::standard_error),
            val_gap_relative_se: relative.as_ref().and_then(Spread::standard_error),
            val_accuracy_gap_se: accuracy_gap.as_ref().and_then(Spread::standard_error),
            speed_ratio: match (tokens_per_s, base_speed) {
                (Some(s), Some(b)) if b > 0.0 => Some(s / b),
                _ => None,
            },
            tokens_per_s,
            separation: match baseline {
                Some(base) if !is_baseline => separation(recipe, base),
                _ => Separation::Baseline,
            },
        }
    }
}

/// `f` of each run of `recipe` that has it.
fn each_of(recipe: &RecipeRuns<'_>, f: &dyn Fn(&CompareRow) -> Option<f64>) -> Vec<f64> {
    recipe.runs.iter().filter_map(|r| f(r.summary)).collect()
}

/// See [`Separation`].
fn separation(recipe: &RecipeRuns<'_>, baseline: &RecipeRuns<'_>) -> Separation {
    if recipe.runs.len() < 2 || baseline.runs.len() < 2 {
        return Separation::OneSeed;
    }
    let val = |r: &MetricsRow| r.val_loss;
    let (ours, theirs) = (
        aligned(&recipe.metrics(), val),
        aligned(&baseline.metrics(), val),
    );
    for (step, a) in ours.range(1..) {
        let Some(b) = theirs.get(step) else { continue };
        let (a, b) = (Spread::of(a), Spread::of(b));
        let (Some(a), Some(b)) = (a, b) else { continue };
        if (a.mean - b.mean).abs() > a.range() + b.range() {
            return Separation::AtStep(*step);
        }
    }
    Separation::Never
}

impl CscaleRange {
    /// The criterion on `points` (bias, its recipe's report) against the baseline's report.
    fn of(baseline: &RecipeReport, points: &[(i32, &RecipeReport)]) -> Self {
        let accuracy = |r: &RecipeReport| r.final_val_accuracy.as_ref().map(|s| s.mean);
        let perplexity = |r: &RecipeReport| r.final_val_perplexity.as_ref().map(|s| s.mean);
        let has_accuracy =
            accuracy(baseline).is_some() && points.iter().all(|(_, r)| accuracy(r).is_some());
        let (metric, value): (_, &Metric) = if has_accuracy {
            (CscaleMetric::ValAccuracy, &accuracy)
        } else {
            (CscaleMetric::ValPerplexity, &perplexity)
        };
        let points = points.iter().map(|&(bias, report)| (bias, value(report)));
        Self::of_values(metric, value(baseline), points)
    }

    /// The criterion on each bias's value of `metric` against the baseline's `base`.
    pub fn of_values(
        metric: CscaleMetric,
        base: Option<f64>,
        points: impl IntoIterator<Item = (i32, Option<f64>)>,
    ) -> Self {
        let mut points: Vec<CscalePoint> = points
            .into_iter()
            .map(|(bias, value)| {
                let kept = metric.kept(value, base);
                CscalePoint {
                    bias,
                    value,
                    kept,
                    passes: kept.is_some_and(|k| k >= KEPT_FRACTION),
                }
            })
            .collect();
        points.sort_by_key(|p| p.bias);
        Self {
            metric,
            threshold: KEPT_FRACTION,
            baseline: base,
            usable_range: widest_passing_run(&points),
            points,
        }
    }
}

/// One number of a recipe's report.
type Metric = dyn Fn(&RecipeReport) -> Option<f64>;

/// The longest run of consecutive passing points (sorted by bias), the lowest one on a tie.
fn widest_passing_run(points: &[CscalePoint]) -> Option<[i32; 2]> {
    let mut best: Option<(usize, [i32; 2])> = None;
    let mut start = None;
    for (i, p) in points.iter().enumerate() {
        if !p.passes {
            start = None;
            continue;
        }
        let first = *start.get_or_insert(i);
        let len = i - first + 1;
        if best.is_none_or(|(l, _)| len > l) {
            best = Some((len, [points[first].bias, p.bias]));
        }
    }
    best.map(|(_, range)| range)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's rows: validation loss `vals[k]` at step 10 k, accuracy `acc` at the end.
    fn rows(vals: &[f32], acc: Option<f64>) -> Vec<MetricsRow> {
        let last = vals.len() - 1;
        (vals.iter().enumerate())
            .map(|(k, &v)| MetricsRow {
                step: 10 * k as u64,
                val_loss: Some(v),
                train_loss: (k > 0).then_some(v + 0.5),
                val_accuracy: acc.filter(|_| k == last),
                ..MetricsRow::default()
            })
            .collect()
    }

    /// Owns the recipes, summaries and metrics that [`RecipeRuns`] borrow.
    struct Sweep {
        recipes: Vec<Recipe>,
        /// Per recipe, per seed: (summary, metrics).
        runs: Vec<Vec<(CompareRow, Vec<MetricsRow>)>>,
    }

    impl Sweep {
        /// `runs[recipe][seed]`: each run's validation losses and final accuracy.
        fn new(recipes: Vec<Recipe>, runs: Vec<Vec<(Vec<f32>, Option<f64>)>>) -> Self {
            let runs = (recipes.iter().zip(runs))
                .map(|(recipe, seeds)| {
                    (seeds.into_iter().enumerate())
                        .map(|(s, (vals, acc))| {
                            let metrics = rows(&vals, acc);
                            let summary = CompareRow::of(
                                recipe.label(),
                                recipe.precision,
                                s as u64,
                                &metrics,
                            );
                            (summary, metrics)
                        })
                        .collect()
                })
                .collect();
            Self { recipes, runs }
        }

        fn report(&self) -> Report {
            let recipes: Vec<RecipeRuns<'_>> = (self.recipes.iter().zip(&self.runs))
                .map(|(recipe, runs)| RecipeRuns {
                    recipe,
                    runs: (runs.iter())
                        .map(|(summary, metrics)| SweepRun { summary, metrics })
                        .collect(),
                })
                .collect();
            Report::of(&recipes)
        }
    }

    fn recipe(precision: Precision, cscale_bias: Option<i32>) -> Recipe {
        Recipe {
            precision,
            family: None,
            cscale_bias,
        }
    }

    #[test]
    fn the_curves_separate_where_the_gap_exceeds_both_seed_ranges() {
        // Baseline seeds: range 0.2 at every step. The other recipe: range 0.1; its mean
        // (4.55, 3.6, 2.45) against the baseline's (4.5, 3.4, 2.2): gaps 0.05, 0.2, 0.25 within
        // the 0.3 allowed; then at step 30 a gap of 0.35 > 0.3.
        let sweep = Sweep::new(
            vec![
                recipe(Precision::Fp32, None),
                recipe(Precision::Fp8Amax, None),
            ],
            vec![
                vec![
                    (vec![4.6, 3.5, 2.3, 2.0], None),
                    (vec![4.4, 3.3, 2.1, 1.8], None),
                ],
                vec![
                    (vec![4.6, 3.65, 2.5, 2.3], None),
                    (vec![4.5, 3.55, 2.4, 2.2], None),
                ],
            ],
        );
        let report = sweep.report();
        assert_eq!(report.recipes[0].separation, Separation::Baseline);
        assert_eq!(report.recipes[1].separation, Separation::AtStep(30));
        // Gap 0.35 at the end: the mean of the paired gaps 0.3 and 0.4 (f32 inputs); their
        // sample sd is 0.0707, over sqrt(2) a standard error of 0.05. Relative: 0.3/2.0 and
        // 0.4/1.8 (0.15 and 0.2222), mean 0.1861, standard error 0.0361.
        let fp8 = &report.recipes[1];
        assert!((fp8.val_gap.unwrap() - 0.35).abs() < 1e-6);
        assert!((fp8.val_gap_se.unwrap() - 0.05).abs() < 1e-6);
        assert!((fp8.val_gap_relative.unwrap() - (0.15 + 0.4 / 1.8) / 2.0).abs() < 1e-6);
        assert!((fp8.val_gap_relative_se.unwrap() - (0.4 / 1.8 - 0.15) / 2.0).abs() < 1e-6);
        assert_eq!(
            report.recipes[0].val_gap_se,
            Some(0.0),
            "the baseline against itself"
        );

        // Curves inside the spread after step 0: never (at step 0, the fine-tune's shared
        // initial model, the seeds agree and any difference would exceed their zero range);
        // one seed: no spread to judge by.
        let close = Sweep::new(
            sweep.recipes.clone(),
            vec![
                vec![(vec![4.5, 3.5], None), (vec![4.5, 3.3], None)],
                vec![(vec![4.52, 3.45], None), (vec![4.52, 3.35], None)],
            ],
        );
        assert_eq!(close.report().recipes[1].separation, Separation::Never);
        let single = Sweep::new(
            sweep.recipes.clone(),
            vec![vec![(vec![4.6, 3.5], None)], vec![(vec![9.0, 9.0], None)]],
        );
        let report = single.report();
        assert_eq!(report.recipes[1].separation, Separation::OneSeed);
        assert_eq!(report.recipes[1].separation.to_string(), "n/a (one seed)");
    }

    #[test]
    fn cscale_range_by_accuracy_is_the_widest_run_of_passing_biases() {
        // Baseline accuracy 0.80 (mean of 0.78 and 0.82): 99.5% of it is 0.796.
        let biases = [8, -8, -4, 0, 4, 12, 16];
        let accuracies = [0.80, 0.50, 0.797, 0.81, 0.795, 0.799, 0.805];
        let mut recipes = vec![recipe(Precision::Fp32, None)];
        recipes.extend(biases.map(|b| recipe(Precision::Fp8Cscale, Some(b))));
        let mut runs = vec![vec![(vec![2.0], Some(0.78)), (vec![2.0], Some(0.82))]];
        runs.extend(
            accuracies.map(|a| vec![(vec![2.0], Some(a - 0.01)), (vec![2.0], Some(a + 0.01))]),
        );
        let cscale = Sweep::new(recipes, runs).report().cscale.unwrap();
        assert_eq!(cscale.metric, CscaleMetric::ValAccuracy);
        assert!((cscale.baseline.unwrap() - 0.80).abs() < 1e-12);
        let sorted: Vec<(i32, bool)> = cscale.points.iter().map(|p| (p.bias, p.passes)).collect();
        // -8 fails, -4 and 0 pass, 4 fails (0.795 < 0.796), 8 .. 16 pass: the run 8 ..= 16 is
        // wider than -4 ..= 0.
        assert_eq!(
            sorted,
            [
                (-8, false),
                (-4, true),
                (0, true),
                (4, false),
                (8, true),
                (12, true),
                (16, true)
            ]
        );
        assert_eq!(cscale.usable_range, Some([8, 16]));
        assert!((cscale.points[2].kept.unwrap() - 0.81 / 0.80).abs() < 1e-12);
    }

    #[test]
    fn cscale_range_without_accuracy_uses_perplexity() {
        // Baseline ppl e^2; kept = e^2 / e^loss = e^(2 - loss): loss 2.004 keeps 0.996 (passes),
        // 2.006 keeps 0.994 (fails); ties in width go to the lower biases.
        let losses = [(-2, 2.004f32), (0, 2.0), (2, 2.006), (4, 1.9), (6, 1.95)];
        let mut recipes = vec![recipe(Precision::Fp32, None)];
        let mut runs = vec![vec![(vec![5.0, 2.0], None)]];
        for (bias, loss) in losses {
            recipes.push(recipe(Precision::Fp8Cscale, Some(bias)));
            runs.push(vec![(vec![5.0, loss], None)]);
        }
        let cscale = Sweep::new(recipes, runs).report().cscale.unwrap();
        assert_eq!(cscale.metric, CscaleMetric::ValPerplexity);
        let passes: Vec<bool> = cscale.points.iter().map(|p| p.passes).collect();
        assert_eq!(passes, [true, true, false, true, true]);
        assert_eq!(cscale.usable_range, Some([-2, 0]));
        // No point passes: no range.
        let none = [CscalePoint {
            bias: 0,
            value: None,
            kept: None,
            passes: false,
        }];
        assert_eq!(widest_passing_run(&none), None);
    }
}
