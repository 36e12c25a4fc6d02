//! Every check of a job, in one place, each error naming the config file and the field (exit
//! code 2), all made before anything on disk changes: [`config`] right after parsing (what the
//! config alone can say), [`device`], [`model`] once the model's architecture and the
//! tokenizer are known, [`same_shape`] on `--resume`, [`data`] once the data is open.

use std::path::Path;

use datasets::{Dataset, SplitName};

use super::{BestMetric, InitOptimizer, JobConfig, JobConfigError};
use crate::device::Device;
use crate::model::config::physical_memory;
use crate::model::ModelConfig;

/// Bytes a step holds for each of its tokens before the model sees them: the id and the target
/// as `u32` in the batch and as the backend's 64-bit integers in the tensors, and the f32 loss
/// mask (a lower bound: what any step needs, whatever the model).
const STEP_BYTES_PER_TOKEN: f64 = 28.0;

/// What can be checked of the config alone, right after it is parsed: the relations serde
/// cannot check.
pub fn config(c: &JobConfig, path: &Path) -> Result<(), JobConfigError> {
    let err = |field: &str, message: &str| Err(JobConfigError::field(path, field, message));
    if c.name.is_empty()
        || c.name.contains(['/', '\\'])
        || c.name.starts_with('.')
        || c.name.contains(char::is_control)
    {
        return err(
            "name",
            "must be a plain folder name (no slashes, no control characters such as NUL, not \
             empty, not starting with a dot)",
        );
    }
    if let Some((field, message)) = c.lora.as_ref().and_then(|l| l.problem()) {
        return err(&format!("lora.{field}"), &message);
    }
    let mut seen = Vec::new();
    for slot in &c.devices {
        let gpu = !matches!(slot.kind, Device::Cpu | Device::Ndarray);
        if gpu && seen.contains(slot) {
            return err(
                "devices",
                &format!("lists `{slot}` twice (one peer per GPU)"),
            );
        }
        seen.push(*slot);
    }
    if let Some(nodes) = &c.nodes {
        if nodes.count < 2 {
            return err(
                "nodes.count",
                "must be at least 2 (one node needs no `nodes`)",
            );
        }
        if nodes.rank >= nodes.count {
            return err(
                "nodes.rank",
                &format!(
                    "must be below `nodes.count` ({}); ranks are 0-based",
                    nodes.count
                ),
            );
        }
        for (field, address) in [
            ("nodes.orchestrator", &nodes.orchestrator),
            ("nodes.address", &nodes.address),
        ] {
            if super::spec::port_of(address).is_none() {
                return err(field, &format!("`{address}` is not `ws://HOST:PORT`"));
            }
        }
        if nodes.timeout_s == 0 {
            return err("nodes.timeout_s", "must be at least 1 second");
        }
        if nodes.host().is_none() {
            return err("nodes.address", &format!("`{}` has no host", nodes.address));
        }
        if let Some(file) = &nodes.secret_file {
            if let Err(e) = super::spec::read_secret(file) {
                return err("nodes.secret_file", &e);
            }
        }
    }
    match (&c.model.checkpoint, &c.model.preset) {
        (Some(_), Some(_)) => return err("model", "give `checkpoint` or `preset`, not both"),
        (None, None) => return err("model", "give `checkpoint` (a folder) or `preset` (a name)"),
        _ => {}
    }
    if let Some(dir) = &c.model.checkpoint {
        if !dir.join("config.json").is_file() && !crate::model::lora::is_adapter_dir(dir) {
            return err(
                "model.checkpoint",
                &format!(
                    "{} holds no config.json (expected a Hugging Face checkpoint folder, or a \
                     LoRA adapter folder with its adapter_config.json)",
                    dir.display()
                ),
            );
        }
    }
    if c.model.checkpoint.is_some() {
        let m = &c.model;
        let overrides: Vec<&str> = [
            ("model.vocab_size", m.vocab_size.is_some()),
            ("model.n_positions", m.n_positions.is_some()),
            ("model.n_embd", m.n_embd.is_some()),
            ("model.n_layer", m.n_layer.is_some()),
            ("model.n_head", m.n_head.is_some()),
            ("model.n_inner", m.n_inner.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        if let Some(first) = overrides.first() {
            return err(
                first,
                &format!(
                    "{} change a preset's shape, but with `model.checkpoint` the shape is the \
                     checkpoint's config.json; remove them (or use `model.preset`)",
                    overrides.join(", ")
                ),
            );
        }
    }
    if !(0.0..1.0).contains(&c.model.dropout) {
        return err("model.dropout", "must be in [0, 1)");
    }
    if c.batch_size == 0 {
        return err("batch_size", "must be at least 1");
    }
    if c.grad_accum == 0 {
        return err("grad_accum", "must be at least 1");
    }
    // A step's batches are held at once (token ids, targets, loss mask): a count that cannot
    // fit is refused here, not when its allocation aborts the process.
    let memory = physical_memory().unwrap_or(isize::MAX as u64) as f64;
    let step_tokens = c.batch_size as f64 * c.grad_accum as f64 * c.data.seq_len as f64;
    if step_tokens * STEP_BYTES_PER_TOKEN > memory {
        let field = if c.grad_accum > c.batch_size {
            "grad_accum"
        } else {
            "batch_size"
        };
        return err(
            field,
            &format!(
                "batch_size {} x grad_accum {} x data.seq_len {} = {step_tokens:.3e} tokens a \
                 step, more than this machine's {:.1} GiB of memory can hold",
                c.batch_size,
                c.grad_accum,
                c.data.seq_len,
                memory / (1u64 << 30) as f64
            ),
        );
    }
    match (c.steps, c.epochs) {
        (Some(_), Some(_)) => return err("steps", "give `steps` or `epochs`, not both"),
        (None, None) => return err("steps", "give `steps` or `epochs`"),
        (Some(0), _) => return err("steps", "must be at least 1"),
        (_, Some(e)) if !(e > 0.0) => return err("epochs", "must be positive"),
        _ => {}
    }
    if c.keep_checkpoints == 0 {
        return err("keep_checkpoints", "must be at least 1");
    }
    if let Some(stop) = &c.early_stopping {
        if stop.patience == 0 {
            return err("early_stopping.patience", "must be at least 1");
        }
        if !stop.min_delta.is_finite() || stop.min_delta < 0.0 {
            return err("early_stopping.min_delta", "must be >= 0 and finite");
        }
    }
    if c.model.optimizer_state == InitOptimizer::FromCheckpoint {
        let state = c
            .model
            .checkpoint
            .as_ref()
            .map(|dir| dir.join("trainer_state").join("optimizer.safetensors"));
        match state {
            None => {
                return err(
                    "model.optimizer_state",
                    "`from_checkpoint` needs `model.checkpoint`",
                )
            }
            Some(file) if !file.is_file() => {
                return err(
                    "model.optimizer_state",
                    &format!(
                        "`from_checkpoint`: {} does not exist (only checkpoints written by \
                         fp8-trainer carry AdamW's state; use `fresh`)",
                        file.display()
                    ),
                )
            }
            Some(_) => {}
        }
    }
    if c.log_every == 0 {
        return err("log_every", "must be at least 1");
    }
    if !(c.optimizer.lr > 0.0) {
        return err("optimizer.lr", "must be positive");
    }
    if !c.optimizer.eps.is_finite() || c.optimizer.eps <= 0.0 {
        return err(
            "optimizer.eps",
            "must be positive and finite (AdamW divides by sqrt(v) + eps)",
        );
    }
    if !c.optimizer.weight_decay.is_finite() || c.optimizer.weight_decay < 0.0 {
        return err(
            "optimizer.weight_decay",
            "must be >= 0 and finite (0 turns it off)",
        );
    }
    let (b1, b2) = c.optimizer.betas;
    if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
        return err("optimizer.betas", "each beta must be in [0, 1)");
    }
    if !(0.0..=1.0).contains(&c.schedule.min_lr_ratio) {
        return err("schedule.min_lr_ratio", "must be in [0, 1]");
    }
    if c.grad_clip < 0.0 {
        return err("grad_clip", "must be >= 0 (0 turns clipping off)");
    }
    if c.data.seq_len == 0 {
        return err("data.seq_len", "must be at least 1");
    }
    if let Err((field, message)) = c.precision.validate() {
        return err(&format!("precision.{field}"), &message);
    }
    if c.precision.base_storage == fp8_backend::BaseStorage::Fp8 {
        if c.lora.is_none() {
            return err(
                "precision.base_storage",
                "\"fp8\" stores the frozen base weights of a LoRA job, and this job trains every \
                 weight (no `lora` section): add a `lora` section, or set it to \"f32\"",
            );
        }
        if !c.precision.is_fp8() {
            return err(
                "precision.base_storage",
                &format!(
                    "\"fp8\" stores each frozen weight as the FP8 cast the precision makes of \
                     it, and `precision.mode` \"{}\" makes none: use an FP8 mode, or set it \
                     to \"f32\"",
                    c.precision.mode
                ),
            );
        }
    }
    Ok(())
}

/// The job's device is in this build.
pub fn device(job: &JobConfig, path: &Path) -> Result<(), JobConfigError> {
    if job.device.available() {
        return Ok(());
    }
    let why = crate::Error::DeviceUnavailable(job.device).to_string();
    Err(JobConfigError::field(path, "device", why))
}

/// The model fits the machine and the job: a preset's weights fit in memory (a checkpoint's
/// exist already), the tokenizer's vocabulary fits its embeddings, `data.seq_len` its context, and every pattern of the FP8
/// layer filter names one of its projections.
pub fn model(
    job: &JobConfig,
    path: &Path,
    model: &ModelConfig,
    vocab: usize,
) -> Result<(), JobConfigError> {
    if job.model.preset.is_some() {
        // (A checkpoint's `config.json` had the same check when it was read.)
        model
            .check_size(path, "model.")
            .map_err(|e| JobConfigError::Field(e))?;
    }
    let err = |field: &str, message: String| Err(JobConfigError::field(path, field, message));
    // A micro-batch's logits (f32, one row per token) must fit, or their allocation aborts.
    let memory = physical_memory().unwrap_or(isize::MAX as u64) as f64;
    let logits = job.batch_size as f64 * job.data.seq_len as f64 * model.vocab_size() as f64 * 4.0;
    if logits > memory {
        return err(
            "batch_size",
            format!(
                "batch_size {} x data.seq_len {} x the vocabulary's {} entries: the logits of one \
                 micro-batch alone ({:.1} GiB) exceed this machine's {:.1} GiB of memory; use a \
                 smaller batch_size and a larger grad_accum",
                job.batch_size,
                job.data.seq_len,
                model.vocab_size(),
                logits / (1u64 << 30) as f64,
                memory / (1u64 << 30) as f64
            ),
        );
    }
    if vocab > model.vocab_size() {
        return err(
            "model.vocab_size",
            format!(
                "the tokenizer has {vocab} tokens but the model only {} embeddings",
                model.vocab_size()
            ),
        );
    }
    if job.data.seq_len > model.max_positions() {
        return err(
            "data.seq_len",
            format!(
                "{} exceeds the model's context length {} = {}",
                job.data.seq_len,
                model.max_positions_field(),
                model.max_positions()
            ),
        );
    }
    if let Some(lora) = &job.lora {
        let names = model.projection_names();
        let targets = lora.targets(model.lora_default_targets());
        if let Some(name) = targets.unmatched(&names) {
            return err(
                "lora.target_modules",
                format!(
                    "`{name}` names no projection of this {} model ({}; a \
                     name matches a module name or its last dot-separated parts)",
                    model.family_name(),
                    model.projection_names_hint()
                ),
            );
        }
    }
    if job.precision.is_on() {
        let names = model.projection_names();
        (job.precision
            .layers
            .check(&names, &model.projection_names_hint()))
        .map_err(|e| JobConfigError::field(path, "precision.layers", e.to_string()))?;
        if !names.iter().any(|n| job.precision.layers.matches(n)) {
            return err(
                "precision.layers",
                format!(
                    "{:?} makes no projection FP8 under mode `{}`; name some layers (`[\"*\"]` \
                     is every one), or set `precision.mode` to `fp32`",
                    job.precision.layers.patterns(),
                    job.precision.mode
                ),
            );
        }
    }
    Ok(())
}

/// The job's training fits this machine's memory (`super::memory`), or it is refused with what
/// would fit.
pub fn training_memory(
    job: &JobConfig,
    path: &Path,
    model: &ModelConfig,
) -> Result<(), JobConfigError> {
    match physical_memory() {
        Some(memory) => super::memory::check(job, path, model, memory as f64),
        None => Ok(()),
    }
}

/// On `--resume`: the job's model (`wanted`) must have the shape of the run's checkpoint
/// (`checkpoint`, in `dir`), since resuming continues that model; names every field that
/// differs.
pub fn same_shape(
    job: &JobConfig,
    path: &Path,
    wanted: &ModelConfig,
    checkpoint: &ModelConfig,
    dir: &Path,
) -> Result<(), JobConfigError> {
    let prefix = if job.model.checkpoint.is_some() {
        "model.checkpoint's "
    } else {
        "model."
    };
    let (ours, theirs) = (wanted.shape_fields(), checkpoint.shape_fields());
    let differs = |i: &usize| {
        let (name, a) = &ours[*i];
        theirs.get(*i).is_none_or(|(n, b)| n != name || a != b)
    };
    let changed: Vec<String> = (0..ours.len())
        .filter(differs)
        .map(|i| {
            let (name, a) = &ours[i];
            let b = theirs
                .get(i)
                .map_or("another architecture", |(_, b)| b.as_str());
            format!("`{prefix}{name}` is {a}, the run's checkpoint has {b}")
        })
        .collect();
    let family_changed = wanted.model_type() != checkpoint.model_type();
    if changed.is_empty() && !family_changed {
        return Ok(());
    }
    let field = match (0..ours.len()).find(differs) {
        _ if job.model.checkpoint.is_some() => "model.checkpoint".to_string(),
        Some(i) => format!("model.{}", ours[i].0),
        None => "model.preset".to_string(),
    };
    let mut what = changed;
    if family_changed {
        what.insert(
            0,
            format!(
                "the job's model is {}, the run's checkpoint {}",
                wanted.family_name(),
                checkpoint.family_name()
            ),
        );
    }
    Err(JobConfigError::field(
        path,
        &field,
        format!(
            "{} ({}): --resume continues the run's model, whose shape cannot change; restore \
             the setting, or start a new run (--overwrite, or another `name`)",
            what.join("; "),
            dir.display()
        ),
    ))
}

/// What the job asks of its data: validation data for `keep_best_checkpoint` and
/// `early_stopping`, classification data for `best_metric: val_accuracy`.
pub fn data(
    job: &JobConfig,
    path: &Path,
    dataset: &Dataset,
    has_validation: bool,
) -> Result<(), JobConfigError> {
    if !has_validation {
        let needs = [
            ("keep_best_checkpoint", job.keep_best_checkpoint),
            ("early_stopping", job.early_stopping.is_some()),
        ];
        if let Some((field, _)) = needs.iter().find(|(_, on)| *on) {
            return Err(JobConfigError::field(
                path,
                field,
                "needs validation data (set `data.validation`)",
            ));
        }
    }
    let ranks = job.keep_best_checkpoint || job.early_stopping.is_some();
    if ranks
        && job.best_metric == BestMetric::ValAccuracy
        && dataset.classification(SplitName::Validation).is_none()
    {
        return Err(JobConfigError::field(
            path,
            "best_metric",
            "`val_accuracy` needs classification data (CSV rows with a label and \
             `data.csv.verbalizer`) with validation examples; use `val_loss`",
        ));
    }
    Ok(())
}
