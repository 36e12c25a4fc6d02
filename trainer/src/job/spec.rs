//! The typed job config of `fp8-trainer train` (issue 5). Every section rejects unknown keys;
//! defaults follow nanoGPT's `train.py` where the paper is silent.
//!
//! ```json
//! {"name": "quickstart", "model": {"preset": "tiny", "init_seed": 1337},
//!  "data": {"train": "datasets/data/shakespeare_milton", "seq_len": 64},
//!  "precision": {"mode": "fp8-amax"}, "steps": 300}
//! ```

use std::path::{Path, PathBuf};

use crate::device::{Device, DeviceSlot};
use datasets::{DataConfig, TokenizerSpec};
use fp8_backend::Fp8Policy;
use serde::{Deserialize, Serialize};

/// A whole job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Run name: the job writes `{out_dir}/{name}/`.
    pub name: String,
    /// Where the model comes from.
    pub model: ModelSource,
    /// Tokenizer: `gpt2`, `bytes`, or a tokenizer.json / folder. Default: the checkpoint's own
    /// tokenizer files when `model.checkpoint` has them, else `gpt2`.
    #[serde(default)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Corpus, split, windows (the `datasets` crate's section).
    pub data: DataConfig,
    /// LoRA: train adapters on a frozen base instead of every weight (PEFT's `LoraConfig`:
    /// `r`, `lora_alpha`, `lora_dropout`, `target_modules`, `use_rslora`; `crate::model::lora`).
    /// Checkpoints are then PEFT adapter folders. Absent: full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraConfig>,
    /// Numeric precision of the projections and FP8 options: the FP8 decorator's own policy
    /// (`mode`, `family`, margins, `layers`, `stats_every`; see `fp8_backend::Fp8Policy`).
    #[serde(default)]
    pub precision: Fp8Policy,
    /// AdamW.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Sequences per micro-batch (B).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step; tokens per step = batch_size * grad_accum * seq_len.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value (0 = no clipping).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Optimizer steps to run. Exactly one of `steps` and `epochs`.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Passes over the training data, converted to steps (rounded up).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Evaluate the validation loss every this many steps, and at the end (0 = only at the end).
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Validation batches per evaluation (0 = the whole validation split).
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Write a checkpoint every this many steps, and at the end (0 = only at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept in `checkpoints/` (the oldest are deleted; at least 1).
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Also keep `checkpoints/best/`: the checkpoint of the evaluation with the lowest
    /// validation loss so far, written when an evaluation improves on it (needs validation
    /// data). Not counted in `keep_checkpoints`.
    #[serde(default)]
    pub keep_best_checkpoint: bool,
    /// What "best" means for `keep_best_checkpoint` and `early_stopping`: `val_loss` (lower
    /// is better; default) or `val_accuracy` (higher is better; classification data).
    #[serde(default)]
    pub best_metric: BestMetric,
    /// Stop the job when the validation loss has not improved for this many evaluations in a
    /// row (needs validation data); the last step gets a checkpoint, as at the end of a run.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Write a log line (log.txt, plain progress output) every this many steps.
    #[serde(default = "one_u64")]
    pub log_every: u64,
    /// Seed of dropout: the backend RNG is reseeded before every step with `seed + step` (the
    /// steps already done), so a resumed run draws the same masks. (A preset's initial weights
    /// come from `model.init_seed`.)
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where the job runs: `cpu` (default, Burn's flex backend), `ndarray` (the CPU on Burn's
    /// ndarray backend); `wgpu` / `cuda` need the cargo features of the same name. With an
    /// index (`cuda:1`), the same as `devices: ["cuda:1"]`.
    #[serde(default)]
    pub device: Device,
    /// Data parallelism in this process: one peer per entry (`"cpu"`, `"cuda:0"`, `"wgpu:1"`;
    /// all of one kind, which sets `device`), each running `batch_size` rows of every batch;
    /// gradients are averaged over the peers with burn-collective. One entry picks a device
    /// index for a single-device job. Empty (default): one peer on `device`'s first device.
    #[serde(default)]
    pub devices: Vec<DeviceSlot>,
    /// Data parallelism over several machines: this process is node `rank` of `count`, each
    /// with the same `devices`, joined through burn-collective's global orchestrator
    /// (`fp8-trainer orchestrator`). Absent: this process is the whole group.
    #[serde(default)]
    pub nodes: Option<NodesConfig>,
    /// Parent of the run directory.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// What a NaN/inf loss, gradient or FP8 amax does: `skip` the step or `stop` the job.
    #[serde(default)]
    pub non_finite: NonFinitePolicy,
    /// Keep only each block's input through the forward and recompute the block in the
    /// backward (`torch.utils.checkpoint` per block): activation memory of one block instead of
    /// all, for about one more forward pass. Same gradients (see `train::step`).
    #[serde(default)]
    pub activation_checkpointing: bool,
}

/// The model: exactly one of `checkpoint` (an HF folder or one of ours) and `preset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// A checkpoint folder (config.json + model.safetensors), e.g. a downloaded `gpt2`.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// A preset name (`tiny`, `gpt2`, `cerebras-gpt-111m`, ...), freshly initialised.
    #[serde(default)]
    pub preset: Option<String>,
    /// Seed of the fresh initialisation of a preset.
    #[serde(default = "default_seed")]
    pub init_seed: u64,
    /// Preset override: vocabulary size (e.g. 257 for the byte tokenizer).
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Preset override: context length.
    #[serde(default)]
    pub n_positions: Option<usize>,
    /// Preset override: width.
    #[serde(default)]
    pub n_embd: Option<usize>,
    /// Preset override: blocks.
    #[serde(default)]
    pub n_layer: Option<usize>,
    /// Preset override: heads.
    #[serde(default)]
    pub n_head: Option<usize>,
    /// Preset override: MLP width (default 4 * n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Dropout at HF's three places (0 = none, deterministic).
    #[serde(default)]
    pub dropout: f64,
    /// With `checkpoint`: whether AdamW's state comes from it too (`fresh` (default) or
    /// `from_checkpoint`). FP8 needs no state: FP8-AMAX and FP8-CSCALE choose every scale at
    /// every step from the tensor itself.
    #[serde(default)]
    pub optimizer_state: InitOptimizer,
}

/// The validation metric that ranks evaluations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// The validation loss, lower is better.
    #[default]
    ValLoss,
    /// The validation accuracy (classification data), higher is better.
    ValAccuracy,
}

/// When an evaluation counts as no improvement, and how many in a row stop the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Evaluations in a row without improvement that stop the job (at least 1).
    pub patience: u32,
    /// An evaluation improves when it beats the best so far by more than this, in the units of
    /// `best_metric` (default 0: any improvement).
    #[serde(default)]
    pub min_delta: f64,
}

/// What a job started from `model.checkpoint` takes over from that checkpoint besides the
/// weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitOptimizer {
    /// AdamW starts from zero moments and step 0 (a new fine-tune; what `transformers`'
    /// Trainer does with `from_pretrained`).
    #[default]
    Fresh,
    /// AdamW's moments and step count come from the checkpoint's `trainer_state/` (one of
    /// ours), as if the optimizer had carried on; the new run's step, data position and
    /// schedule still start at 0.
    FromCheckpoint,
}

/// AdamW (Loshchilov & Hutter) with decoupled weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// (beta1, beta2).
    pub betas: (f64, f64),
    /// Added to sqrt(v).
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices (projections, embeddings) but not to biases
    /// or layer-norm parameters (nanoGPT's `configure_optimizers`).
    pub weight_decay: f64,
}

/// Learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// `cosine` (default) or `constant`.
    pub kind: ScheduleKind,
    /// Linear warmup from lr / warmup_steps to lr over this many steps.
    pub warmup_steps: u64,
    /// Cosine: the lr decays to `min_lr_ratio * lr` at the last step.
    pub min_lr_ratio: f64,
}

/// Shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Half a cosine from lr to min_lr.
    #[default]
    Cosine,
    /// lr throughout.
    Constant,
}

/// A multi-node job's group and this node's place in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    /// Nodes (processes) in the group, at least 2.
    pub count: u32,
    /// This node's rank, 0-based: it trains rows `rank * devices * batch_size ..` of every
    /// batch.
    pub rank: u32,
    /// The orchestrator's address, `ws://HOST:PORT` (`fp8-trainer orchestrator --port PORT`).
    pub orchestrator: String,
    /// This node's address as the other nodes reach it, `ws://HOST:PORT`; its tensor service
    /// listens on PORT.
    pub address: String,
    /// Seconds to wait for every node to join, and for any one collective call once training
    /// runs, before the job stops with exit code 1.
    #[serde(default = "default_node_timeout")]
    pub timeout_s: u64,
    /// A file holding the group's shared secret (at least 16 bytes, readable by its owner
    /// only; e.g. `head -c 32 /dev/urandom | base64 > secret`), which the orchestrator
    /// (`--secret-file`) and every node hold: each connection is then authenticated with it
    /// (docs/design.md, "Data parallelism"). Without it, anyone who reaches the ports can join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

fn default_node_timeout() -> u64 {
    300
}

impl NodesConfig {
    /// The port of `address`.
    pub fn data_port(&self) -> Option<u16> {
        port_of(&self.address)
    }

    /// The host of `address`: what this node's tensor service binds.
    pub fn host(&self) -> Option<&str> {
        host_of(&self.address)
    }
}

/// The port of `ws://HOST:PORT` (an optional path after it).
pub fn port_of(address: &str) -> Option<u16> {
    let rest = address.strip_prefix("ws://")?;
    let host_port = rest.split('/').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// The host of `ws://HOST:PORT` (brackets of an IPv6 host removed).
pub fn host_of(address: &str) -> Option<&str> {
    let rest = address.strip_prefix("ws://")?;
    let host = rest.split('/').next()?.rsplit_once(':')?.0;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// The shortest secret accepted: 128 bits of a random source.
pub const MIN_SECRET_BYTES: usize = 16;

/// Reads a shared-secret file (`nodes.secret_file`, `orchestrator --secret-file`): a regular
/// file that only its owner may read or write, holding at least [`MIN_SECRET_BYTES`] bytes
/// (surrounding whitespace, a trailing newline, is not part of it).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = datasets::input::read_limited(path, 4096, "secret file")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{}: group or others may access it (mode {:o}); a secret is for its owner \
                 only: chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    let secret = bytes.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{}: {} bytes, fewer than the {MIN_SECRET_BYTES} a secret needs (e.g. `head -c 32 \
             /dev/urandom | base64 > FILE`)",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret)
}

/// What a non-finite loss, gradient or FP8 amax does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Leave the weights and optimizer state as they are, count the step as skipped, go on.
    #[default]
    Skip,
    /// Stop the job with a message naming the step and the layer (after a last good checkpoint).
    Stop,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 6e-4,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

fn default_batch_size() -> usize {
    8
}
fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_eval_every() -> u64 {
    100
}
fn default_eval_batches() -> usize {
    20
}
fn default_checkpoint_every() -> u64 {
    500
}
fn default_keep_checkpoints() -> usize {
    2
}
fn default_seed() -> u64 {
    1337
}
fn default_out_dir() -> PathBuf {
    PathBuf::from("runs")
}
