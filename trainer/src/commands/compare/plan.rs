//! What a `compare` sweep runs: its recipes (each precision of `--precisions`, then FP8-CSCALE
//! at each bias of `--cscale-biases`) times its seeds, each run a job of its own, made from the
//! user's config by the same `--set` overrides a user would type.

use std::path::Path;

use fp8_backend::Precision;

use crate::error::Error;
use crate::job::{load_job_config, JobConfig};

/// One way of training: a precision, and for a CSCALE sweep point its bias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub precision: Precision,
    /// `precision.cscale_bias` of a `--cscale-biases` point (`None`: the config's own).
    pub cscale_bias: Option<i32>,
}

impl Recipe {
    /// The recipe's name in run directories and reports: the precision (`fp8-amax`), or
    /// `fp8-cscale-b{bias}` for a CSCALE sweep point.
    pub fn label(&self) -> String {
        match self.cscale_bias {
            Some(bias) => format!("{}-b{bias}", self.precision),
            None => self.precision.to_string(),
        }
    }
}

/// One job of the sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Index into [`Plan::recipes`].
    pub recipe: usize,
    /// The job's `seed` (with `--seeds`, also its `data.seed` and `model.init_seed`).
    pub seed: u64,
    pub job: JobConfig,
}

/// The whole sweep.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The user's job (run names derive from its `name`, the compare folder from `out_dir`).
    pub base: JobConfig,
    /// The baseline first.
    pub recipes: Vec<Recipe>,
    /// Whether `--seeds` was given (run folders then end in `-s{seed}`).
    pub seeded: bool,
    /// Recipe-major: every seed of the first recipe, then of the second, ...
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    /// The runs of `precisions` (the first is the baseline), FP8-CSCALE at `biases` and
    /// `seeds` (empty: once, with the config's own seeds), on the job `config` + `overrides`.
    pub fn new(
        config: &Path,
        overrides: &[String],
        precisions: &[Precision],
        biases: &[i32],
        seeds: &[u64],
    ) -> Result<Self, Error> {
        let base = load_job_config(config, overrides)?;
        let recipes: Vec<Recipe> = (precisions.iter())
            .map(|&precision| Recipe {
                precision,
                cscale_bias: None,
            })
            .chain(biases.iter().map(|&bias| Recipe {
                precision: Precision::Fp8Cscale,
                cscale_bias: Some(bias),
            }))
            .collect();
        if recipes.is_empty() {
            return Err(Error::Argument {
                flag: "--precisions",
                message: "no recipe to run (give at least the baseline precision)".into(),
            });
        }
        refuse_repeats("--precisions", recipes.iter().map(Recipe::label))?;
        refuse_repeats("--seeds", seeds.iter().map(u64::to_string))?;
        let seeded = !seeds.is_empty();
        let seed_list: Vec<Option<u64>> = if seeded {
            seeds.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let mut runs = Vec::new();
        for (index, recipe) in recipes.iter().enumerate() {
            for &seed in &seed_list {
                let mut sets = overrides.to_vec();
                sets.extend(run_overrides(&base.name, recipe, seed));
                let job = load_job_config(config, &sets)?;
                runs.push(PlannedRun {
                    recipe: index,
                    seed: job.seed,
                    job,
                });
            }
        }
        Ok(Self {
            base,
            recipes,
            seeded,
            runs,
        })
    }

    /// The runs of recipe `index`, in seed order.
    pub fn runs_of(&self, index: usize) -> impl Iterator<Item = (usize, &PlannedRun)> {
        (self.runs.iter().enumerate()).filter(move |(_, r)| r.recipe == index)
    }

    /// `{out_dir}/{name}-compare`.
    pub fn compare_dir(&self) -> std::path::PathBuf {
        self.base
            .out_dir
            .join(format!("{}-compare", self.base.name))
    }
}

/// The `--set` overrides that turn the user's job into one run: its `name`
/// (`{name}-{recipe}`, `-s{seed}` with a seed), `precision.mode` (and `precision.cscale_bias`),
/// and with a seed `seed`, `data.seed` and `model.init_seed`. Values are JSON, so a name that
/// happens to parse as a number stays a string.
fn run_overrides(name: &str, recipe: &Recipe, seed: Option<u64>) -> Vec<String> {
    let mut run_name = format!("{name}-{}", recipe.label());
    if let Some(seed) = seed {
        run_name += &format!("-s{seed}");
    }
    let mut sets = vec![
        format!("name={}", json(&run_name)),
        format!("precision.mode={}", json(&recipe.precision)),
    ];
    if let Some(bias) = recipe.cscale_bias {
        sets.push(format!("precision.cscale_bias={bias}"));
    }
    if let Some(seed) = seed {
        for key in ["seed", "data.seed", "model.init_seed"] {
            sets.push(format!("{key}={seed}"));
        }
    }
    sets
}

/// JSON text of an override value (a name, a precision as the config spells it).
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("names and precisions serialise")
}

/// A list flag naming the same recipe or seed twice would train two runs into one folder.
fn refuse_repeats(flag: &'static str, items: impl Iterator<Item = String>) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for item in items {
        if !seen.insert(item.clone()) {
            return Err(Error::Argument {
                flag,
                message: format!("`{item}` is listed twice"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_and_overrides() {
        let amax = Recipe {
            precision: Precision::Fp8Amax,
            cscale_bias: None,
        };
        let cscale = Recipe {
            precision: Precision::Fp8Cscale,
            cscale_bias: Some(-4),
        };
        assert_eq!(cscale.label(), "fp8-cscale-b-4");
        assert_eq!(
            run_overrides("123", &amax, None),
            ["name=\"123-fp8-amax\"", "precision.mode=\"fp8-amax\""]
        );
        assert_eq!(
            run_overrides("q", &cscale, Some(2)),
            [
                "name=\"q-fp8-cscale-b-4-s2\"",
                "precision.mode=\"fp8-cscale\"",
                "precision.cscale_bias=-4",
                "seed=2",
                "data.seed=2",
                "model.init_seed=2"
            ]
        );
        let err = refuse_repeats("--seeds", ["1", "2", "1"].map(String::from).into_iter());
        assert!(err.unwrap_err().to_string().contains("`1` is listed twice"));
    }
}
