//! The training-checkpoint store: `checkpoints/step-N/` (and `checkpoints/best/`) hold the model as a
//! self-contained Hugging Face checkpoint (config.json, model.safetensors, generation_config.json,
//! tokenizer.json, tokenizer_config.json) and `trainer_state/` (state.json: step, tokens, data
//! position, RNG rule; optimizer.safetensors: AdamW moments; under `fp8-delayed`,
//! fp8_amax_history.safetensors: every FP8 tensor's amax history). A LoRA job's checkpoint is a
//! PEFT adapter folder instead of a whole model (adapter_config.json, adapter_model.safetensors:
//! the adapters alone; `crate::model::lora`), with the same tokenizer files and training state.
//!
//! A checkpoint is written into `checkpoints/.step-N.tmp/` and renamed when complete, so a crash
//! while writing never leaves a half checkpoint that [`latest_checkpoint`] would pick: it only
//! considers `step-N` folders. Unfinished folders are removed on the next write or resume.
//!
//! Also here: which checkpoint `--resume` continues from ([`resume_point`]), and the files that
//! make every checkpoint self-contained ([`self_contained_files`]).
//!
//! Test-only fault injection: with `FP8_TRAINER_FAIL_CHECKPOINT_AT=N` in the environment the
//! process aborts while checkpoint N is half written (model written, trainer state not).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::Backend;
use datasets::{CheckpointFile, LoaderState};
use fp8_backend::{AmaxHistory, FrozenHistories, Precision, Role};
use serde::{Deserialize, Serialize};

use super::optimizer::AdamW;
use crate::checkpoint::{
    adapter_tensors, f32_from_le, model_tensors, write_checkpoint_tensors, write_safetensors,
    NamedTensor,
};
use crate::error::Error;
use crate::host::HostTensors;
use crate::model::{Model, ModelConfig};

/// `generation_config.json` of a checkpoint.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The folder of training state inside a checkpoint.
pub const TRAINER_STATE_DIR: &str = "trainer_state";
/// `trainer_state/fp8_amax_history.safetensors`: one 1-D f32 tensor `{layer}.{role}` per FP8
/// tensor with a history (`fp8-delayed`), its amaxes oldest first.
pub const AMAX_HISTORY_FILE: &str = "fp8_amax_history.safetensors";
/// `checkpoints/best`: the checkpoint of the best evaluation (`keep_best_checkpoint`).
pub const BEST_DIR: &str = "best";
/// Environment variable of the test-only fault injection (see the module docs).
pub const FAIL_CHECKPOINT_ENV: &str = "FP8_TRAINER_FAIL_CHECKPOINT_AT";

/// Whether this process's job has a checkpoint to continue from (it wrote one, or resumed
/// from one): what a second Ctrl-C may promise (`--resume`).
static RESUMABLE: AtomicBool = AtomicBool::new(false);

/// True once the running job has a complete training checkpoint (written or resumed from).
pub fn resumable() -> bool {
    RESUMABLE.load(Ordering::SeqCst)
}

/// `trainer_state/state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Optimizer steps done (including skipped ones).
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Steps skipped by the non-finite policy.
    pub skipped_steps: u64,
    /// AdamW updates applied (bias correction).
    pub adam_t: u64,
    /// Wall time of the run so far.
    pub elapsed_s: f64,
    /// Position of the training loader.
    pub loader: LoaderState,
    /// The job seed; the backend RNG is reseeded with `seed + step` before every step, so
    /// restoring the step restores the RNG.
    pub seed: u64,
    /// The evaluation due at this step was interrupted (Ctrl-C): the resumed run does it first
    /// and fills in the step's `val_loss`. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eval_pending: bool,
    /// The best value of the job's `best_metric` so far as a score where lower is better (the
    /// validation loss, or minus the validation accuracy), tracked when the job keeps a best
    /// checkpoint or stops early. Absent before the first evaluation, and when not tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_score: Option<f64>,
    /// Evaluations in a row since the best one (early stopping). Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evals_since_best: u32,
    /// Early stopping ended the run at this step: a resumed run has nothing left to do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TrainerState {
    /// A run that has not taken a step yet.
    pub fn start(seed: u64, loader: LoaderState) -> Self {
        Self {
            step: 0,
            tokens: 0,
            skipped_steps: 0,
            adam_t: 0,
            elapsed_s: 0.0,
            loader,
            seed,
            eval_pending: false,
            best_score: None,
            evals_since_best: 0,
            stopped_early: false,
        }
    }
}

/// `checkpoints/step-N` of a run.
pub fn checkpoint_dir(checkpoints: &Path, step: u64) -> PathBuf {
    checkpoints.join(format!("step-{step}"))
}

/// Complete checkpoints, oldest first.
pub fn list_checkpoints(checkpoints: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(checkpoints) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path()
                .join(TRAINER_STATE_DIR)
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint.
pub fn latest_checkpoint(checkpoints: &Path) -> Option<(u64, PathBuf)> {
    list_checkpoints(checkpoints).pop()
}

/// Whether `dir` is a complete training checkpoint (one `--resume` can continue from).
pub fn is_training_checkpoint(dir: &Path) -> bool {
    dir.join(TRAINER_STATE_DIR).join("state.json").is_file()
}

/// Removes the folders of interrupted checkpoint writes (`.step-N.tmp`, `.step-N.old`,
/// `.best.tmp`, ...).
pub fn remove_unfinished_checkpoints(checkpoints: &Path) -> Result<(), Error> {
    let Ok(entries) = fs::read_dir(checkpoints) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") || name.starts_with(&format!(".{BEST_DIR}.")) {
            fs::remove_dir_all(e.path()).map_err(Error::io(e.path()))?;
        }
    }
    Ok(())
}

/// Writes `checkpoints/step-N` atomically (the model, `extra` files such as the tokenizer's,
/// the training state) and keeps the newest `keep`.
pub fn save_training_checkpoint<B: Backend, O: HostTensors>(
    checkpoints: &Path,
    model: &Model<B>,
    optimizer: &AdamW<O>,
    state: &TrainerState,
    extra: &[CheckpointFile],
    keep: usize,
) -> Result<PathBuf, Error> {
    let name = format!("step-{}", state.step);
    let target = write_training_checkpoint(checkpoints, &name, model, optimizer, state, extra)?;
    RESUMABLE.store(true, Ordering::SeqCst);
    let all = list_checkpoints(checkpoints);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        fs::remove_dir_all(old).map_err(Error::io(old))?;
    }
    Ok(target)
}

/// Writes `checkpoints/best` atomically, replacing the one there.
pub fn save_best_checkpoint<B: Backend, O: HostTensors>(
    checkpoints: &Path,
    model: &Model<B>,
    optimizer: &AdamW<O>,
    state: &TrainerState,
    extra: &[CheckpointFile],
) -> Result<PathBuf, Error> {
    write_training_checkpoint(checkpoints, BEST_DIR, model, optimizer, state, extra)
}

/// Writes `checkpoints/{name}` through `.{name}.tmp`, renamed into place when complete.
fn write_training_checkpoint<B: Backend, O: HostTensors>(
    checkpoints: &Path,
    name: &str,
    model: &Model<B>,
    optimizer: &AdamW<O>,
    state: &TrainerState,
    extra: &[CheckpointFile],
) -> Result<PathBuf, Error> {
    // A LoRA job's checkpoint is a PEFT adapter folder: the adapters alone (its
    // adapter_config.json is one of the `extra` files), the frozen base being the job's.
    let adapter = model.has_lora();
    let tensors = match adapter {
        true => adapter_tensors(model),
        false => model_tensors(model),
    };
    if let Some(p) = tensors
        .iter()
        .find(|t| t.values.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::NonFiniteCheckpoint {
            step: state.step,
            param: p.name.clone(),
        });
    }
    remove_unfinished_checkpoints(checkpoints)?;
    fs::create_dir_all(checkpoints).map_err(Error::io(checkpoints))?;
    let step = state.step;
    let staging = checkpoints.join(format!(".{name}.tmp"));
    fs::create_dir(&staging).map_err(Error::io(&staging))?;
    // A write that fails (a full disk) leaves no half-written folder behind; the next start
    // would remove it, but the run directory should be as the README says meanwhile.
    let written = (|| -> Result<PathBuf, Error> {
        if adapter {
            let path = staging.join(crate::model::lora::ADAPTER_WEIGHTS_FILE);
            write_safetensors(&path, &tensors).map_err(Error::io(&path))?;
        } else {
            write_checkpoint_tensors(&model.config(), &tensors, &staging)?;
        }
        for file in extra {
            let path = staging.join(&file.name);
            datasets::atomic::write_atomic(&path, &file.contents).map_err(Error::io(&path))?;
        }

        if std::env::var(FAIL_CHECKPOINT_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(step)
        {
            log::error!(
                "{FAIL_CHECKPOINT_ENV}={step}: aborting while the checkpoint is half written"
            );
            std::process::abort();
        }

        let state_dir = staging.join(TRAINER_STATE_DIR);
        fs::create_dir(&state_dir).map_err(Error::io(&state_dir))?;
        let moments = state_dir.join("optimizer.safetensors");
        optimizer
            .save_moments(&moments)
            .map_err(Error::io(&moments))?;
        save_amax_histories(&state_dir, model)?;
        let state_path = state_dir.join("state.json");
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        datasets::atomic::write_atomic(&state_path, text.as_bytes())
            .map_err(Error::io(&state_path))?;

        let target = checkpoints.join(name);
        let retired = checkpoints.join(format!(".{name}.old"));
        datasets::atomic::replace_dir(&staging, &target, &retired).map_err(Error::io(&target))?;
        Ok(target)
    })();
    if written.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    written
}

/// Reads `trainer_state/` of a checkpoint into `optimizer` (on `device`) and returns the state.
/// What it loads is checked first (exit 2, naming the file): both files present, a state whose
/// step is the one its `step-N` folder names, finite moments.
pub fn load_training_state<O: HostTensors>(
    dir: &Path,
    optimizer: &mut AdamW<O>,
    device: &O::Device,
) -> Result<TrainerState, Error> {
    let state_path = dir.join(TRAINER_STATE_DIR).join("state.json");
    let moments = dir.join(TRAINER_STATE_DIR).join("optimizer.safetensors");
    for path in [&state_path, &moments] {
        if !path.exists() {
            return Err(Error::BadFile {
                path: path.clone(),
                message: "missing: a checkpoint's training state is `trainer_state/state.json` \
                          and `trainer_state/optimizer.safetensors`, written together; this \
                          checkpoint is incomplete or was edited"
                    .into(),
            });
        }
    }
    let text = datasets::input::read_text_limited(
        &state_path,
        datasets::input::CONFIG_LIMIT,
        "training state",
    )
    .map_err(Error::io(&state_path))?;
    let bad_state = |message: String| Error::BadFile {
        path: state_path.clone(),
        message: format!("bad training state: {message}"),
    };
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad_state(e.to_string()))?;
    let folder_step = dir
        .file_name()
        .and_then(|n| n.to_str()?.strip_prefix("step-")?.parse::<u64>().ok());
    if let Some(folder_step) = folder_step.filter(|&s| s != state.step) {
        return Err(bad_state(format!(
            "`step` is {} but the checkpoint folder is `step-{folder_step}`; resuming would \
             repeat or skip steps",
            state.step
        )));
    }
    if state.skipped_steps > state.step {
        return Err(bad_state(format!(
            "`skipped_steps` ({}) exceeds `step` ({})",
            state.skipped_steps, state.step
        )));
    }
    optimizer.load_moments(&moments, device)?;
    optimizer.t = state.adam_t;
    Ok(state)
}

/// Writes the model's amax histories into `state_dir` (nothing when it has none: FP8-AMAX,
/// CSCALE and fp32 keep no FP8 state).
fn save_amax_histories<B: Backend>(state_dir: &Path, model: &Model<B>) -> Result<(), Error> {
    let histories = model.fp8().amax_histories();
    if histories.is_empty() {
        return Ok(());
    }
    let tensors: Vec<NamedTensor> = histories
        .into_iter()
        .map(|h| NamedTensor {
            name: format!("{}.{}", h.layer, h.role.name()),
            shape: vec![h.amaxes.len()],
            values: h.amaxes,
        })
        .collect();
    let path = state_dir.join(AMAX_HISTORY_FILE);
    write_safetensors(&path, &tensors).map_err(Error::io(&path))
}

/// Restores the amax histories of a checkpoint into `model` (`--resume` under `fp8-delayed`).
/// A checkpoint without them (written under another precision) leaves every history empty.
/// Every history must belong to one of the model's FP8 layers.
pub fn load_amax_histories<B: Backend>(dir: &Path, model: &Model<B>) -> Result<(), Error> {
    let path = dir.join(TRAINER_STATE_DIR).join(AMAX_HISTORY_FILE);
    if !path.is_file() {
        log::info!(
            "{} has no FP8 amax histories: every tensor starts with an empty one",
            dir.display()
        );
        model.fp8().restore_amax_histories(Vec::new());
        return Ok(());
    }
    let bad = |message: String| Error::BadFile {
        path: path.clone(),
        message: format!("bad FP8 amax history: {message}"),
    };
    let bytes =
        datasets::input::read_limited(&path, u64::MAX, "amax history").map_err(Error::io(&path))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let layers = model.fp8_layers();
    let mut histories = Vec::new();
    for (name, view) in file.tensors() {
        let (layer, role) = Role::ALL
            .iter()
            .find_map(|&role| Some((name.strip_suffix(&format!(".{role}"))?, role)))
            .ok_or_else(|| bad(format!("tensor `{name}` is not named `{{layer}}.{{role}}`")))?;
        if !layers.iter().any(|l| l == layer) {
            return Err(bad(format!(
                "tensor `{name}`: `{layer}` is not an FP8 layer of this job (`precision.layers`)"
            )));
        }
        if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 1 {
            return Err(bad(format!(
                "tensor `{name}` is {:?} {:?}, expected a 1-D F32 tensor",
                view.dtype(),
                view.shape()
            )));
        }
        histories.push(AmaxHistory {
            layer: layer.to_string(),
            role,
            amaxes: f32_from_le(view.data()),
        });
    }
    model.fp8().restore_amax_histories(histories);
    Ok(())
}

/// For inference (`eval`, `generate`) under `fp8-delayed`: the scales the checkpoint's training
/// had reached (when it has them), held still until the guard is dropped, so that every batch
/// is scored under the same ones. `None` under other precisions.
pub fn inference_histories<B: Backend>(
    dir: &Path,
    model: &Model<B>,
) -> Result<Option<FrozenHistories>, Error> {
    if model.fp8().policy().mode != Precision::Fp8Delayed {
        return Ok(None);
    }
    load_amax_histories(dir, model)?;
    Ok(Some(model.fp8().freeze_amax_histories()))
}

/// Which checkpoint `--resume` continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest complete one in the run's `checkpoints/`.
    Latest,
    /// This folder, one of the run's own (`checkpoints/step-N` or `checkpoints/best`).
    Checkpoint(PathBuf),
}

/// The checkpoint a run continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// Its step.
    pub step: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// The run's checkpoints after it (`--resume DIR --overwrite`), to remove once the job is
    /// built.
    pub later: Vec<PathBuf>,
}

/// The checkpoint to resume from (with `--resume`), after checking the run directory whose
/// checkpoints are in `ckpt_root`. Deletes nothing: with `--overwrite`, the old checkpoints go
/// only once the new job is built.
pub fn resume_point(
    ckpt_root: &Path,
    resume: Option<&ResumeFrom>,
    overwrite: bool,
) -> Result<Option<ResumePoint>, Error> {
    let point = match resume_step(ckpt_root, resume, overwrite)? {
        None => return Ok(None),
        Some(point) => point,
    };
    RESUMABLE.store(true, Ordering::SeqCst);
    let later = list_checkpoints(ckpt_root)
        .into_iter()
        .filter(|(s, _)| *s > point.0)
        .map(|(_, dir)| dir)
        .collect();
    Ok(Some(ResumePoint {
        step: point.0,
        dir: point.1,
        later,
    }))
}

/// [`resume_point`]'s step and folder.
fn resume_step(
    ckpt_root: &Path,
    resume: Option<&ResumeFrom>,
    overwrite: bool,
) -> Result<Option<(u64, PathBuf)>, Error> {
    let latest = latest_checkpoint(ckpt_root);
    let refuse = |path: &Path, message: String| Error::BadFile {
        path: path.to_path_buf(),
        message,
    };
    match resume {
        Some(ResumeFrom::Latest) => latest.map(Some).ok_or_else(|| {
            refuse(
                ckpt_root,
                "no complete checkpoint to resume from (--resume)".into(),
            )
        }),
        Some(ResumeFrom::Checkpoint(dir)) => {
            let point = own_checkpoint(ckpt_root, dir)?;
            let newer: Vec<String> = list_checkpoints(ckpt_root)
                .into_iter()
                .filter(|(s, _)| *s > point.0)
                .map(|(s, _)| format!("step-{s}"))
                .collect();
            if !newer.is_empty() && !overwrite {
                return Err(refuse(
                    ckpt_root,
                    format!(
                        "holds checkpoints after step {} ({}): the resumed run would replace \
                         them; pass --overwrite as well to delete them",
                        point.0,
                        newer.join(", ")
                    ),
                ));
            }
            Ok(Some(point))
        }
        None if latest.is_some() && !overwrite => Err(refuse(
            ckpt_root,
            "holds checkpoints already: pass --resume to continue the run, or --overwrite \
             to start over (deletes them)"
                .into(),
        )),
        None => Ok(None),
    }
}

/// `dir` as a checkpoint of the run whose checkpoints are in `ckpt_root`, with its step.
fn own_checkpoint(ckpt_root: &Path, dir: &Path) -> Result<(u64, PathBuf), Error> {
    let bad = |message: String| Error::BadFile {
        path: dir.to_path_buf(),
        message,
    };
    if !is_training_checkpoint(dir) {
        return Err(bad(format!(
            "is not a training checkpoint (no {TRAINER_STATE_DIR}/state.json) to resume from \
             (--resume)"
        )));
    }
    let canonical = |p: &Path| p.canonicalize().map_err(Error::io(p));
    let parent = dir.parent().map(canonical).transpose()?;
    if parent.as_deref() != Some(canonical(ckpt_root)?.as_path()) {
        return Err(bad(format!(
            "is not a checkpoint of this run (its checkpoints are in {}): --resume continues a \
             run; to start a new run from another run's checkpoint, set `model.checkpoint` to \
             it (and `model.optimizer_state` to `from_checkpoint` to keep AdamW's state)",
            ckpt_root.display()
        )));
    }
    let state_path = dir.join(TRAINER_STATE_DIR).join("state.json");
    let text = datasets::input::read_text_limited(
        &state_path,
        datasets::input::CONFIG_LIMIT,
        "training state",
    )
    .map_err(Error::io(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: state_path.clone(),
        message: format!("bad training state: {e}"),
    })?;
    Ok((state.step, dir.to_path_buf()))
}

/// The tokenizer's files and `generation_config.json` (end-of-text as bos and eos, as GPT-2's
/// own), written into every checkpoint. On chat data `tokenizer_config.json` gets the job's chat
/// template as `chat_template` (where `transformers` and our `"checkpoint"` template look).
pub fn self_contained_files(
    tokenizer: &dyn datasets::Tokenizer,
    chat_template: Option<&str>,
    config: &ModelConfig,
) -> Result<Vec<CheckpointFile>, datasets::TokenizerError> {
    let mut files = tokenizer.checkpoint_files(config.max_positions())?;
    if let Some(template) = chat_template {
        let tok_config = files
            .iter_mut()
            .find(|f| f.name == datasets::TOKENIZER_CONFIG_FILE);
        if let Some(file) = tok_config {
            let mut value: serde_json::Value =
                serde_json::from_slice(&file.contents).map_err(|e| {
                    datasets::TokenizerError::Backend {
                        id: tokenizer.id(),
                        message: format!("its tokenizer_config.json does not parse: {e}"),
                    }
                })?;
            let object = value.as_object_mut();
            if let Some(object) =
                object.filter(|o| o.get("chat_template") != Some(&template.into()))
            {
                object.insert("chat_template".into(), template.into());
                let mut contents = serde_json::to_vec_pretty(&value).expect("JSON serialises");
                contents.push(b'\n');
                file.contents = contents;
            }
        }
    }
    let eot = tokenizer.eot_token();
    let generation = serde_json::json!({
        "_from_model_config": false,
        "bos_token_id": eot,
        "eos_token_id": eot,
    });
    let mut contents = serde_json::to_vec_pretty(&generation).expect("JSON serialises");
    contents.push(b'\n');
    files.push(CheckpointFile {
        name: GENERATION_CONFIG_FILE.into(),
        contents,
    });
    Ok(files)
}
