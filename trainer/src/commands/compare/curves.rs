//! The curves of the `compare` plot: per recipe, the mean over seeds of its training and
//! validation loss, and per evaluation the difference of each seed's validation loss to the
//! baseline run of the same seed (mean, min, max).

use super::report::RecipeRuns;
use super::stats::{aligned, mean, Column, Spread};
use crate::train::plot::RecipeCurves;
use crate::train::run_dir::MetricsRow;

/// The plot's curves of `recipes` (the first is the baseline).
pub fn recipe_curves(recipes: &[RecipeRuns<'_>]) -> Vec<RecipeCurves> {
    let val: Column = |r| r.val_loss;
    // Row 0 holds only the initial evaluation.
    let train: Column = |r| r.train_loss.filter(|_| r.step > 0);
    recipes
        .iter()
        .enumerate()
        .map(|(i, recipe)| {
            let metrics = recipe.metrics();
            let means = |column: Column| -> Vec<(f64, f64)> {
                (aligned(&metrics, column).into_iter())
                    .filter_map(|(step, values)| Some((step as f64, mean(&values)?)))
                    .collect()
            };
            RecipeCurves {
                label: recipe.recipe.label(),
                train: means(train),
                val: means(val),
                gap: match (i, recipes.first()) {
                    (1.., Some(baseline)) => gap_to(recipe, baseline, val),
                    _ => Vec::new(),
                },
            }
        })
        .collect()
}

/// Per step where every run of both has `column`: (step, mean, min, max) over seeds of the
/// recipe's value minus the baseline run's of the same seed.
fn gap_to(
    recipe: &RecipeRuns<'_>,
    baseline: &RecipeRuns<'_>,
    column: Column,
) -> Vec<(f64, f64, f64, f64)> {
    let pairs = recipe.pairs_with(baseline);
    let n = pairs.len();
    let runs: Vec<&[MetricsRow]> = (pairs.iter().map(|(r, _)| r.metrics))
        .chain(pairs.iter().map(|(_, b)| b.metrics))
        .collect();
    (aligned(&runs, column).into_iter())
        .filter_map(|(step, v)| {
            let gaps: Vec<f64> = (0..n).map(|k| v[k] - v[n + k]).collect();
            let s = Spread::of(&gaps)?;
            Some((step as f64, s.mean, s.min, s.max))
        })
        .collect()
}
