//! What a sweep does with a run directory that is already there: a finished run of the same
//! config is reused as it is (nothing in it is touched), an unfinished one is continued as
//! `train --resume` would, and one trained with another config is refused (exit 2) unless
//! `--overwrite` starts it over. The run's own `config.json` (the resolved config `train`
//! writes) and its newest checkpoint's `trainer_state/state.json` decide.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::Error;
use crate::job::assemble::{open_data, total_steps};
use crate::job::JobConfig;
use crate::train::checkpoints::{latest_checkpoint, TrainerState, TRAINER_STATE_DIR};

/// What to do with one run of the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAction {
    /// Train it from the start (nothing to continue, or `--overwrite`).
    Train,
    /// Continue from its newest checkpoint (`train --resume`).
    Resume { step: u64, total: u64 },
    /// Its job is done: read its metrics, train nothing.
    Reuse { step: u64 },
}

impl RunAction {
    /// `reused` or `resumed` (`None` for a run trained from the start), for the summary.
    pub fn verb(&self) -> Option<&'static str> {
        match self {
            Self::Train => None,
            Self::Resume { .. } => Some("resumed"),
            Self::Reuse { .. } => Some("reused"),
        }
    }

    /// The decision for `job`'s run directory (`config` is the user's config file, for data
    /// errors). `overwrite`: every run is trained from the start.
    pub fn decide(job: &JobConfig, config: &Path, overwrite: bool) -> Result<Self, Error> {
        let root = job.out_dir.join(&job.name);
        if overwrite {
            return Ok(Self::Train);
        }
        let Some((_, checkpoint)) = latest_checkpoint(&root.join("checkpoints")) else {
            return Ok(Self::Train);
        };
        if let Some(difference) = config_difference(&root, job)? {
            return Err(Error::BadFile {
                path: root,
                message: format!(
                    "holds a run of another config than this sweep's ({difference}); pass \
                     --overwrite to train it again (deletes its checkpoints), or give the job \
                     another `name`"
                ),
            });
        }
        let state = read_trainer_state(&checkpoint)?;
        let total = planned_steps(job, config)?;
        Ok(if state.stopped_early || state.step >= total {
            Self::Reuse { step: state.step }
        } else {
            Self::Resume {
                step: state.step,
                total,
            }
        })
    }
}

/// The first leaf where the run's `config.json` differs from `job` (`key: old -> new`), or
/// `None` when they are equal. Both sides go through the same JSON text, so numbers compare
/// exactly as `train` wrote them.
fn config_difference(root: &Path, job: &JobConfig) -> Result<Option<String>, Error> {
    let path = root.join("config.json");
    let old: Value = match datasets::input::read_text_limited(
        &path,
        datasets::input::CONFIG_LIMIT,
        "job config",
    ) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.clone(),
            message: format!("not valid JSON: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some("it has no config.json".into()))
        }
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let text = serde_json::to_string(job).expect("config serialises");
    let new: Value = serde_json::from_str(&text).expect("config serialises");
    Ok(first_difference(String::new(), &with_defaults(old), &new))
}

/// A run's `config.json` as this version writes it: read back as a [`JobConfig`] and written
/// again, so a field added since the run (absent there, its default here) is no difference.
/// A file this version cannot read stays as it is, and its differences are named.
fn with_defaults(old: Value) -> Value {
    match serde_json::from_value::<JobConfig>(old.clone()) {
        Ok(job) => {
            let text = serde_json::to_string(&job).expect("config serialises");
            serde_json::from_str(&text).expect("config serialises")
        }
        Err(_) => old,
    }
}

/// The dotted key of the first leaf (in key order) that differs, with both values.
fn first_difference(key: String, old: &Value, new: &Value) -> Option<String> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                let null = Value::Null;
                first_difference(sub, a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null))
            })
        }
        (a, b) if a != b => Some(format!("{key}: {a} -> {b}")),
        _ => None,
    }
}

/// A checkpoint's `trainer_state/state.json`.
fn read_trainer_state(checkpoint: &Path) -> Result<TrainerState, Error> {
    let path: PathBuf = checkpoint.join(TRAINER_STATE_DIR).join("state.json");
    let text =
        datasets::input::read_text_limited(&path, datasets::input::CONFIG_LIMIT, "training state")
            .map_err(Error::io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path,
        message: format!("bad training state: {e}"),
    })
}

/// The steps the job runs: `steps`, or (for `epochs`) what its training data makes of them.
fn planned_steps(job: &JobConfig, config: &Path) -> Result<u64, Error> {
    if let Some(steps) = job.steps {
        return Ok(steps);
    }
    let data = open_data(job, config)?;
    let loader = (data.dataset.train_loader(job.batch_size)).map_err(data.err())?;
    Ok(total_steps(job, &loader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A run written before `devices` and `nodes` existed (its config.json lacks them) is the
    /// same config as today's job with their defaults; a changed value, or a field this
    /// version does not know, is still a difference.
    #[test]
    fn fields_added_since_a_run_are_not_a_difference() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/quickstart.json");
        let job = crate::job::load::load_job_config(&path, &[]).unwrap();
        let new = serde_json::to_value(&job).unwrap();
        let mut old = new.clone();
        let fields = old.as_object_mut().unwrap();
        assert!(fields.remove("devices").is_some());
        fields.remove("nodes");
        assert!(first_difference(String::new(), &old, &new).is_some());
        assert_eq!(
            first_difference(String::new(), &with_defaults(old.clone()), &new),
            None
        );

        let mut changed = old.clone();
        changed["optimizer"]["lr"] = json!(0.5);
        let named = first_difference(String::new(), &with_defaults(changed), &new).unwrap();
        assert!(named.starts_with("optimizer.lr: 0.5 -> "), "{named}");

        let mut unknown = old;
        unknown["gone"] = json!(1);
        let named = first_difference(String::new(), &with_defaults(unknown), &new).unwrap();
        assert!(named.starts_with("devices: null -> "), "{named}");
    }

    #[test]
    fn the_first_differing_leaf_is_named() {
        let old = json!({"name": "a", "optimizer": {"lr": 0.001, "eps": 1e-8}, "steps": 8});
        let mut new = old.clone();
        assert_eq!(first_difference(String::new(), &old, &new), None);
        new["optimizer"]["lr"] = json!(0.002);
        new["steps"] = json!(9);
        assert_eq!(
            first_difference(String::new(), &old, &new).as_deref(),
            Some("optimizer.lr: 0.001 -> 0.002")
        );
        new["optimizer"]["lr"] = json!(0.001);
        new["extra"] = json!(true);
        assert_eq!(
            first_difference(String::new(), &old, &new).as_deref(),
            Some("extra: null -> true")
        );
    }
}
