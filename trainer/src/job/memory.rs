//! What a training job needs in memory, checked before anything is allocated: a job that
//! cannot fit is refused up front (exit 2) with what would fit, instead of being killed by the
//! kernel an hour in.
//!
//! The estimate adds what training holds at its peak, by the trainer's own accounting:
//!
//! | part | bytes |
//! |---|---|
//! | weights | 4 per parameter (f32 master weights, or the frozen base); 1 per FP8-stored base projection weight (`precision.base_storage: "fp8"`) |
//! | gradients and AdamW moments | 12 per trainable parameter (all, or the LoRA adapters') |
//! | FP8 / bf16 operand copies | 2 per projection weight when the projections cast (not for FP8-stored weights, whose codes are the operand): the bf16 operand the backward keeps, for every block (one block with activation checkpointing) |
//! | activations | per micro-batch token and block, [`block_floats`] f32 values; with activation checkpointing each block's input and one block's |
//! | logits | 4 bytes per token and vocabulary entry (the fused loss writes their gradient in place) |
//!
//! It is a floor, not a forecast: the allocator's reserve, the initial copy of a preset's
//! weights and the binary come on top (bench/README.md compares it with measured peaks). A job
//! is refused when it exceeds [`USABLE_SHARE`] of the machine's memory.

use std::path::Path;

use super::spec::JobConfig;
use super::JobConfigError;
use crate::model::lora::{LoraConfig, TargetModules};
use crate::model::ModelConfig;

/// The share of physical memory a job may plan to use: the rest is the system's, the
/// allocator's and the binary's (a job planned at 100% would be killed before it ended).
pub const USABLE_SHARE: f64 = 0.9;

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// A training job's memory by part, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub parts: Vec<(&'static str, f64)>,
}

impl MemoryEstimate {
    /// All parts together, in bytes.
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|p| p.1).sum()
    }

    /// `12.3 GiB (weights 4.6, ...)`; below a GiB in MiB (`84 MiB (weights 3, ...)`).
    pub fn describe(&self) -> String {
        let (unit, name, decimals) = match self.total() < GIB {
            true => (MIB, "MiB", 0),
            false => (GIB, "GiB", 1),
        };
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(part, bytes)| format!("{part} {:.*}", decimals, bytes / unit))
            .collect();
        format!(
            "{:.*} {name} ({})",
            decimals,
            self.total() / unit,
            parts.join(", ")
        )
    }
}

/// f32 values one block keeps per token for its backward, fitted to measured peaks
/// (bench/README.md, "Activation checkpointing"): the difference between a run with and
/// without checkpointing is the activations of all blocks but one. GPT-2 (2 blocks' worth of
/// layer-norm inputs and projection operands, the attention's, the MLP's `4C` hidden):
/// about `3C + I`; Llama (wider MLP with gate, up and their product, GQA attention): about
/// `4C + 4I`. `C` the width, `I` the MLP's.
pub fn block_floats(model: &ModelConfig) -> f64 {
    match model {
        ModelConfig::Gpt2(c) => 3.0 * c.n_embd as f64 + c.inner_dim() as f64,
        ModelConfig::Llama(c) => 4.0 * (c.hidden_size + c.intermediate_size) as f64,
    }
}

/// What training `job` on `model` needs (see the module's table).
pub fn training_memory(job: &JobConfig, model: &ModelConfig) -> MemoryEstimate {
    let params: f64 = model.size_parts().iter().map(|p| p.1).sum();
    let shapes = model.projection_shapes();
    let trainable = match &job.lora {
        None => params,
        Some(lora) => {
            let targets = lora.targets(model.lora_default_targets());
            (shapes.iter())
                .filter(|(name, _, _)| targets.matches(name))
                .map(|(_, d_in, d_out)| (lora.r * (d_in + d_out)) as f64)
                .sum()
        }
    };
    let projection_weights: f64 = shapes.iter().map(|(_, i, o)| (i * o) as f64).sum();
    // FP8-stored base weights: the FP8 projections of a LoRA job (`check::job` refuses the
    // setting elsewhere).
    let stored_fp8 = job.precision.base_storage == fp8_backend::BaseStorage::Fp8
        && job.lora.is_some()
        && job.precision.is_fp8();
    let stored: f64 = match stored_fp8 {
        true => (shapes.iter())
            .filter(|(name, _, _)| job.precision.layers.matches(name))
            .map(|(_, i, o)| (i * o) as f64)
            .sum(),
        false => 0.0,
    };
    let tokens = (job.batch_size * job.data.seq_len) as f64;
    let (layers, width) = (model.layers() as f64, model.width() as f64);
    let block = tokens * block_floats(model) * 4.0;
    let activations = if job.activation_checkpointing {
        tokens * layers * width * 4.0 + block
    } else {
        layers * block
    };
    let mut parts = vec![
        ("weights", (params - stored) * 4.0 + stored),
        ("gradients and AdamW moments", trainable * 12.0),
    ];
    if job.precision.is_on() {
        let cast = projection_weights - stored;
        let kept = if job.activation_checkpointing {
            cast / layers
        } else {
            cast
        };
        parts.push(("operand copies", kept * 2.0));
    }
    parts.push(("activations", activations));
    parts.push(("logits", tokens * model.vocab_size() as f64 * 4.0));
    MemoryEstimate { parts }
}

/// Refuses a job whose [`training_memory`] exceeds [`USABLE_SHARE`] of `memory` bytes, naming
/// what would fit: activation checkpointing, LoRA (r 16 on every projection, with
/// checkpointing), a batch of 1 (with `grad_accum` for the same tokens per step).
pub fn check(
    job: &JobConfig,
    path: &Path,
    model: &ModelConfig,
    memory: f64,
) -> Result<(), JobConfigError> {
    let usable = memory * USABLE_SHARE;
    let needed = training_memory(job, model);
    if needed.total() <= usable {
        log::info!(
            "memory: the job needs at least {} by the trainer's accounting, of the {:.1} GiB \
             it may plan for",
            needed.describe(),
            usable / GIB
        );
        return Ok(());
    }
    let mut options = Vec::new();
    let mut consider = |what: String, job: &JobConfig| {
        let total = training_memory(job, model).total();
        if total <= usable {
            options.push(format!("{what} ({:.1} GiB)", total / GIB));
        }
    };
    if !job.activation_checkpointing {
        let mut j = job.clone();
        j.activation_checkpointing = true;
        consider("`activation_checkpointing: true`".into(), &j);
    }
    if job.lora.is_none() {
        let mut j = job.clone();
        j.activation_checkpointing = true;
        j.lora = Some(LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: Some(TargetModules::AllLinear),
            use_rslora: false,
        });
        consider(
            "LoRA on the frozen base with activation checkpointing (`\"lora\": {\"r\": 16, \
             \"lora_alpha\": 32, \"target_modules\": \"all-linear\"}`, \
             `activation_checkpointing: true`)"
                .into(),
            &j,
        );
    }
    if job.batch_size > 1 {
        let mut j = job.clone();
        j.batch_size = 1;
        consider(
            format!(
                "`batch_size: 1` with `grad_accum: {}` (the same tokens per step)",
                job.batch_size * job.grad_accum
            ),
            &j,
        );
    }
    let fits = if options.is_empty() {
        "none of activation checkpointing, LoRA or a batch of 1 fits either: a smaller model \
         or a machine with more memory"
            .to_string()
    } else {
        format!("what would fit: {}", options.join("; or "))
    };
    let field = if job.lora.is_some() { "lora" } else { "model" };
    Err(JobConfigError::field(
        path,
        field,
        format!(
            "training this job needs at least {} by the trainer's accounting, more than the \
             {:.1} GiB it may plan for ({:.0}% of this machine's {:.1} GiB); {fits}",
            needed.describe(),
            usable / GIB,
            USABLE_SHARE * 100.0,
            memory / GIB
        ),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 24 GiB: the development machines' memory (23.5 GiB of it physical).
    const MACHINE: f64 = 24.0 * GIB;

    fn job(extra: serde_json::Value) -> JobConfig {
        let mut job = json!({
            "name": "memory", "model": {"preset": "llama-3.2-1b"},
            "data": {"train": "corpus.txt", "seq_len": 512},
            "precision": {"mode": "fp8-amax"}, "batch_size": 4, "steps": 1,
            "activation_checkpointing": true
        });
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        serde_json::from_value(job).unwrap()
    }

    fn model(job: &JobConfig) -> ModelConfig {
        ModelConfig::preset(job.model.preset.as_deref().unwrap()).unwrap()
    }

    fn part(e: &MemoryEstimate, name: &str) -> f64 {
        e.parts.iter().find(|p| p.0 == name).unwrap().1
    }

    /// The 1B shapes measured on the 24 GiB machine (bench/README.md): LoRA with activation
    /// checkpointing peaked at 7.2 GB, full fine-tuning with it at 22.2 GB (it ran); full
    /// fine-tuning without it cannot fit.
    #[test]
    fn a_1b_llama_full_fine_tuning_without_checkpointing_is_refused_naming_what_fits() {
        let path = Path::new("job.json");
        let lora = job(json!({"lora": {"r": 16, "target_modules": "all-linear"}}));
        assert!(check(&lora, path, &model(&lora), MACHINE).is_ok());
        let checkpointed = job(json!({}));
        assert!(check(&checkpointed, path, &model(&checkpointed), MACHINE).is_ok());
        let plain = job(json!({"activation_checkpointing": false}));
        let estimate = training_memory(&plain, &model(&plain));
        // 1.236e9 parameters: 16 bytes each before activations.
        let params = part(&estimate, "weights") / 4.0;
        assert!((params - 1.2358e9).abs() < 1e6, "{params}");
        let message = check(&plain, path, &model(&plain), MACHINE)
            .unwrap_err()
            .to_string();
        println!("{message}");
        for want in [
            "job.json",
            "`model`",
            "gradients and AdamW moments 13.8",
            "`activation_checkpointing: true` (",
            "LoRA on the frozen base",
        ] {
            assert!(message.contains(want), "{want}: {message}");
        }
    }

    /// FP8-stored base weights count 1 byte each and keep no operand copy; the embeddings (and
    /// layers the filter keeps in f32) stay 4 bytes.
    #[test]
    fn fp8_stored_base_weights_count_one_byte() {
        let lora = json!({"r": 16, "target_modules": "all-linear"});
        let f32_base = job(json!({ "lora": lora }));
        let stored =
            job(json!({ "lora": lora, "precision": {"mode": "fp8-amax", "base_storage": "fp8"} }));
        let c = model(&f32_base);
        let projection: f64 = c
            .projection_shapes()
            .iter()
            .map(|(_, i, o)| (i * o) as f64)
            .sum();
        let (a, b) = (training_memory(&f32_base, &c), training_memory(&stored, &c));
        assert_eq!(part(&a, "weights") - part(&b, "weights"), 3.0 * projection);
        assert_eq!(part(&b, "operand copies"), 0.0);
        assert!(part(&a, "operand copies") > 0.0);
        let filtered = job(json!({ "lora": lora, "precision": {
            "mode": "fp8-amax", "base_storage": "fp8", "layers": ["*", "!*.mlp.*"] } }));
        let w = part(&training_memory(&filtered, &c), "weights");
        assert!(w > part(&b, "weights") && w < part(&a, "weights"), "{w}");
    }

    #[test]
    fn lora_trains_r_times_in_plus_out_per_adapted_projection() {
        // GPT-2 small, PEFT's default target c_attn: 12 layers x r (768 + 2304).
        let j = job(json!({"model": {"preset": "gpt2"}, "lora": {"r": 8}}));
        let e = training_memory(&j, &model(&j));
        let trainable = part(&e, "gradients and AdamW moments") / 12.0;
        assert_eq!(trainable, (12 * 8 * (768 + 3 * 768)) as f64);
        // Activation checkpointing keeps one width-wide input per block and token, plus one
        // block's activations.
        let tokens = 4.0 * 512.0;
        let kept = tokens * 12.0 * 768.0 * 4.0 + tokens * (3.0 * 768.0 + 3072.0) * 4.0;
        assert_eq!(part(&e, "activations"), kept);
        let plain = job(json!({"model": {"preset": "gpt2"}, "activation_checkpointing": false}));
        let e = training_memory(&plain, &model(&plain));
        assert_eq!(
            part(&e, "activations"),
            12.0 * tokens * (3.0 * 768.0 + 3072.0) * 4.0
        );
        assert_eq!(part(&e, "logits"), tokens * 50257.0 * 4.0);
    }
}
