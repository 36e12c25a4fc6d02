//! What a `compare` sweep runs: its recipes (each precision of `--precisions`, then FP8-CSCALE
//! at each bias of `--cscale-biases`) times its seeds, each run a job of its own, made from the
//! user's config by the same `--set` overrides a user would type.

use std::path::Path;

use fp8_backend::{Fp8Family, Precision};

use crate::error::Error;
use crate::job::{load_job_config, JobConfig};

/// A `--precisions` entry: a precision, optionally with an FP8 format family (`fp8-amax-ocp`,
/// `fp8-delayed-graphcore`); without one the config's `precision.family` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecipeSpec {
    pub precision: Precision,
    pub family: Option<Fp8Family>,
}

impl std::str::FromStr for RecipeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let families = [
            ("-ocp", Fp8Family::Ocp),
            ("-graphcore", Fp8Family::Graphcore),
        ];
        let (base, family) = families
            .iter()
            .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|b| (b, Some(*f))))
            .unwrap_or((s, None));
        let precision: Precision = base
            .parse()
            .map_err(|e| format!("{e} (optionally with a family suffix: `-ocp`, `-graphcore`)"))?;
        if family.is_some() && precision == Precision::Fp32 {
            return Err(format!("`{s}`: fp32 has no FP8 format family"));
        }
        Ok(Self { precision, family })
    }
}

/// One way of training: a precision, its format family when the recipe names one, and for a
/// CSCALE sweep point its bias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub precision: Precision,
    /// `precision.family` when the recipe names one (`None`: the config's own).
    pub family: Option<Fp8Family>,
    /// `precision.cscale_bias` of a `--cscale-biases` point (`None`: the config's own).
    pub cscale_bias: Option<i32>,
}

impl Recipe {
    /// The recipe's name in run directories and reports: the precision (`fp8-amax`), with its
    /// family when named (`fp8-amax-ocp`), or `fp8-cscale-b{bias}` for a CSCALE sweep point.
    pub fn label(&self) -> String {
        let mut label = self.precision.to_string();
        if let Some(family) = self.family {
            label += &format!("-{}", family_name(family));
        }
        if let Some(bias) = self.cscale_bias {
            label += &format!("-b{bias}");
        }
        label
    }
}

/// The family as the config spells it.
fn family_name(family: Fp8Family) -> String {
    json(&family).trim_matches('"').to_string()
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
        precisions: &[RecipeSpec],
        biases: &[i32],
        seeds: &[u64],
    ) -> Result<Self, Error> {
        let base = load_job_config(config, overrides)?;
        let recipes: Vec<Recipe> = (precisions.iter())
            .map(|spec| Recipe {
                precision: spec.precision,
                family: spec.family,
                cscale_bias: None,
            })
            .chain(biases.iter().map(|&bias| Recipe {
                precision: Precision::Fp8Cscale,
                family: None,
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
/// (`{name}-{recipe}`, `-s{seed}` with a seed), `precision.mode` (and `precision.cscale_bias`;
/// `precision.base_storage` `f32` for `fp32` and `bf16`),
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
    if let Some(family) = recipe.family {
        sets.push(format!("precision.family={}", json(&family)));
    }
    if let Some(bias) = recipe.cscale_bias {
        sets.push(format!("precision.cscale_bias={bias}"));
    }
    // A LoRA job's FP8-stored base is the FP8 recipes' (`fp32` and `bf16` cast no weight to
    // FP8, and refuse the setting): their runs hold the base in f32.
    if matches!(recipe.precision, Precision::Fp32 | Precision::Bf16) {
        sets.push("precision.base_storage=\"f32\"".to_string());
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
            family: None,
            cscale_bias: None,
        };
        let cscale = Recipe {
            precision: Precision::Fp8Cscale,
            family: None,
            cscale_bias: Some(-4),
        };
        let ocp = Recipe {
            precision: Precision::Fp8Delayed,
            family: Some(Fp8Family::Ocp),
            cscale_bias: None,
        };
        assert_eq!(ocp.label(), "fp8-delayed-ocp");
        assert_eq!(
            run_overrides("q", &ocp, None),
            [
                "name=\"q-fp8-delayed-ocp\"",
                "precision.mode=\"fp8-delayed\"",
                "precision.family=\"ocp\""
            ]
        );
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
        let fp32 = Recipe {
            precision: Precision::Fp32,
            family: None,
            cscale_bias: None,
        };
        assert_eq!(
            run_overrides("q", &fp32, None),
            [
                "name=\"q-fp32\"",
                "precision.mode=\"fp32\"",
                "precision.base_storage=\"f32\""
            ]
        );
        let err = refuse_repeats("--seeds", ["1", "2", "1"].map(String::from).into_iter());
        assert!(err.unwrap_err().to_string().contains("`1` is listed twice"));
    }

    #[test]
    fn recipe_specs_parse_with_and_without_a_family() {
        let spec = |s: &str| s.parse::<RecipeSpec>();
        assert_eq!(
            spec("fp8-amax-ocp"),
            Ok(RecipeSpec {
                precision: Precision::Fp8Amax,
                family: Some(Fp8Family::Ocp)
            })
        );
        assert_eq!(
            spec("fp8-cscale-graphcore").unwrap().family,
            Some(Fp8Family::Graphcore)
        );
        assert_eq!(spec("fp32").unwrap().family, None);
        assert!(spec("fp32-ocp")
            .unwrap_err()
            .contains("no FP8 format family"));
        assert!(spec("fp8-amx").unwrap_err().contains("-ocp"));
    }
}
