//! `fp8-trainer eval --checkpoint DIR (--data PATH | --config JOB.json) [--precision P]`:
//! loss and perplexity of a checkpoint on language-model data, and accuracy on classification
//! data (each label word scored by its log-likelihood), in any precision.
//!
//! With `--config`, the job's `data` section is used (its validation split when it has one,
//! else the training split) and its FP8 options; with `--data`, a text/JSONL file or folder.

use std::path::PathBuf;

use datasets::{DataConfig, SplitName, TokenizerSpec};
use fp8_backend::{BaseStorage, Fp8Family, Fp8Kernels, Fp8Policy, Precision};
use serde::Serialize;

use super::compare::plan::{Recipe, RecipeSpec};
use super::compare::report::{CscaleMetric, CscaleRange};
use crate::checkpoint::load_checkpoint_storing;
use crate::device::{Device, InferenceBackend};
use crate::error::{Error, FieldError};
use crate::job::assemble::{model_config_of_checkpoint, open_data_from, DataOrigin, JobData};
use crate::job::{check, load_job_config, JobConfig, JobConfigError, ModelSource};
use crate::model::loss::{mean_loss, row_scores};
use crate::model::{Model, ModelOptions};
use crate::train::checkpoints::inference_histories;

/// Arguments of `eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text/JSONL file or folder to evaluate on (language-model data).
    #[arg(long, required_unless_present = "config")]
    pub data: Option<PathBuf>,
    /// Or: a job config whose data section (validation split if any) and FP8 options to use.
    #[arg(long, conflicts_with = "data")]
    pub config: Option<PathBuf>,
    /// Config overrides with --config: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// fp32 | fp8-amax | fp8-cscale | fp8-delayed (default: the job's, or fp32 with --data).
    #[arg(long, conflicts_with = "precisions")]
    pub precision: Option<Precision>,
    /// FP8 inference table: evaluate under each of these recipes (the first is the baseline;
    /// an FP8 one may name its family: fp8-amax-ocp), then FP8-CSCALE at each of
    /// --cscale-biases, and report what each keeps of the baseline and the CSCALE biases that
    /// keep at least 99.5% (accuracy on classification data, else 1 / perplexity).
    #[arg(long, value_delimiter = ',')]
    pub precisions: Vec<RecipeSpec>,
    /// FP8-CSCALE biases of the inference table, e.g. -8,-4,0,4,8 (baseline: the first of
    /// --precisions, fp32 by default).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "BIAS,...",
        value_parser = super::cscale_bias_arg
    )]
    pub cscale_biases: Vec<i32>,
    /// Tokenizer with --data: gpt2, bytes, or a tokenizer.json / folder (default: the checkpoint's).
    #[arg(long)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Tokens per sequence with --data (default min(256, n_positions)).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences (or classification examples) per batch (at least 1; its logits must fit in
    /// memory).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    /// Batches to evaluate (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_batches: usize,
    /// Also write the result as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu | wgpu | cuda (default: the job's with --config, else cpu; wgpu and cuda need the
    /// cargo feature of that name).
    #[arg(long)]
    pub device: Option<Device>,
    /// f32 | fp8: with one FP8 recipe (fp8-amax, fp8-cscale), fp8 keeps each projection weight
    /// as its FP8 cast (one byte a parameter), made as the checkpoint is read: the same result
    /// in about a quarter of the projections' memory.
    #[arg(long, default_value = "f32", value_parser = super::base_storage_arg)]
    pub base_storage: BaseStorage,
}

/// What `eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub precision: Precision,
    /// Mean next-token cross-entropy (nats/token); absent for classification data.
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    pub tokens: u64,
    /// Fraction of examples whose true label word scores highest.
    pub accuracy: Option<f64>,
    pub examples: usize,
}

impl EvalResult {
    /// What `eval` prints.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        if let (Some(loss), Some(ppl)) = (self.loss, self.perplexity) {
            lines.push(format!(
                "precision {}: loss {loss:.4}, perplexity {ppl:.2} over {} tokens",
                self.precision, self.tokens
            ));
        }
        if let Some(acc) = self.accuracy {
            lines.push(format!(
                "precision {}: accuracy {acc:.4} over {} examples",
                self.precision, self.examples
            ));
        }
        lines.join("\n")
    }
}

/// One recipe of an inference table and what it measured.
#[derive(Clone, Debug, Serialize)]
pub struct RecipeResult {
    /// `fp32`, `fp8-amax`, `fp8-amax-ocp`, `fp8-cscale-b4`, ...
    pub recipe: String,
    /// The FP8 format family the recipe ran with.
    pub family: Fp8Family,
    pub cscale_bias: Option<i32>,
    #[serde(flatten)]
    pub result: EvalResult,
    /// The fraction of the baseline kept: accuracy / the baseline's on classification data,
    /// else the baseline's perplexity / this one's.
    pub kept: Option<f64>,
}

/// What `eval` measured: one result, or an inference table.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum EvalOutcome {
    Single(EvalResult),
    Table {
        recipes: Vec<RecipeResult>,
        /// The CSCALE biases against the paper's criterion (when --cscale-biases was given).
        cscale: Option<CscaleRange>,
    },
}

impl EvalOutcome {
    /// What `eval` prints.
    pub fn summary(&self) -> String {
        match self {
            Self::Single(result) => result.summary(),
            Self::Table { recipes, cscale } => table(recipes, cscale.as_ref()),
        }
    }
}

/// The inference table as text (markdown).
fn table(recipes: &[RecipeResult], cscale: Option<&CscaleRange>) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
    let num = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let mut out =
        String::from("| recipe | loss | perplexity | accuracy | kept of the baseline |\n");
    out += "|---|---|---|---|---|\n";
    for r in recipes {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.recipe,
            num(r.result.loss, 4),
            num(r.result.perplexity, 3),
            pct(r.result.accuracy),
            pct(r.kept),
        );
    }
    if let Some(c) = cscale {
        let metric = match c.metric {
            CscaleMetric::ValAccuracy => "accuracy",
            CscaleMetric::ValPerplexity => "1 / perplexity",
        };
        out += &match c.usable_range {
            Some([lo, hi]) => format!(
                "\nFP8-CSCALE biases that keep >= {:.1}% of the baseline's {metric}: {lo} to {hi}",
                100.0 * c.threshold
            ),
            None => format!(
                "\nno FP8-CSCALE bias keeps >= {:.1}% of the baseline's {metric}",
                100.0 * c.threshold
            ),
        };
    }
    out.trim_end().to_string()
}

/// Runs `eval`.
pub fn run_eval(args: &EvalArgs) -> Result<EvalOutcome, Error> {
    let model_config = model_config_of_checkpoint(&args.checkpoint)?;
    let (mut job, config_path) = match (&args.config, &args.data) {
        (Some(path), _) => (load_job_config(path, &args.overrides)?, path.clone()),
        (None, Some(data)) => {
            let seq = args
                .seq_len
                .unwrap_or(model_config.max_positions().min(256));
            let job = JobConfig {
                tokenizer: args.tokenizer.clone(),
                data: DataConfig::new(data.clone(), seq),
                precision: Fp8Policy::off(),
                ..minimal_job(&args.checkpoint)
            };
            (job, data.clone())
        }
        (None, None) => {
            return Err(Error::Argument {
                flag: "--data",
                message: "give --data PATH or --config JOB.json".into(),
            })
        }
    };
    job.model = ModelSource {
        checkpoint: Some(args.checkpoint.clone()),
        preset: None,
        ..job.model
    };
    if let Some(p) = args.precision {
        job.precision.mode = p;
    }
    let from_flags = args.config.is_none();
    let origin = match from_flags {
        true => DataOrigin::Flags,
        false => DataOrigin::Config(config_path.clone()),
    };
    let data = open_data_from(&job, origin)?;
    let vocab = data.tokenizer.vocab_size();
    // Eval's batches are --batch-size rows: checked (their logits must fit) as a job's are.
    job.batch_size = args.batch_size;
    check::model(&job, &config_path, &model_config, vocab).map_err(|e| match e {
        JobConfigError::Field(FieldError { field, message, .. }) if field == "batch_size" => {
            Error::Argument {
                flag: "--batch-size",
                message,
            }
        }
        // With --data there is no job config: name the flag the setting came from.
        JobConfigError::Field(FieldError { field, message, .. }) if from_flags => Error::Argument {
            flag: match field.as_str() {
                "data.seq_len" => "--seq-len",
                "model.vocab_size" => "--tokenizer",
                _ => "--precision",
            },
            message,
        },
        other => other.into(),
    })?;
    match args.device {
        Some(device) if !device.available() => {
            let message = Error::DeviceUnavailable(device).to_string();
            return Err(Error::Argument {
                flag: "--device",
                message,
            });
        }
        Some(device) => job.device = device,
        None => check::device(&job, &config_path)?,
    }
    let recipes = recipes_of(args, &job.precision);
    if args.base_storage == BaseStorage::Fp8 && recipes.len() > 1 {
        let names: Vec<&str> = recipes.iter().map(|(label, _)| label.as_str()).collect();
        return Err(Error::Argument {
            flag: "--base-storage",
            message: format!(
                "fp8 keeps the weights as one recipe's FP8 cast, and this table has {} ({}): \
                 evaluate one FP8 recipe at a time (--precision, or one --precisions entry \
                 without --cscale-biases)",
                names.len(),
                names.join(", ")
            ),
        });
    }
    let results = on_device!(job.device, eval_on(args, &job, &data, &recipes))?;
    let outcome = if args.precisions.is_empty() && args.cscale_biases.is_empty() {
        EvalOutcome::Single(results.into_iter().next().expect("one recipe").result)
    } else {
        table_outcome(results, !args.cscale_biases.is_empty())
    };
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&outcome).expect("serialises");
        datasets::atomic::write_atomic(out, text.as_bytes()).map_err(Error::io(out))?;
    }
    Ok(outcome)
}

/// The FP8 policies to evaluate, each with its recipe name: the job's own (one), or the
/// inference table's (`--precisions`, fp32 by default, then CSCALE at each bias).
fn recipes_of(args: &EvalArgs, base: &Fp8Policy) -> Vec<(String, Fp8Policy)> {
    if args.precisions.is_empty() && args.cscale_biases.is_empty() {
        return vec![(base.mode.to_string(), base.clone())];
    }
    let specs = match args.precisions.as_slice() {
        [] => vec![RecipeSpec {
            precision: Precision::Fp32,
            family: None,
        }],
        specs => specs.to_vec(),
    };
    let recipes = specs.into_iter().map(|spec| Recipe {
        precision: spec.precision,
        family: spec.family,
        cscale_bias: None,
    });
    let cscale = args.cscale_biases.iter().map(|&bias| Recipe {
        precision: Precision::Fp8Cscale,
        family: None,
        cscale_bias: Some(bias),
    });
    recipes
        .chain(cscale)
        .map(|recipe| {
            let policy = Fp8Policy {
                mode: recipe.precision,
                family: recipe.family.unwrap_or(base.family),
                cscale_bias: recipe.cscale_bias.unwrap_or(base.cscale_bias),
                ..base.clone()
            };
            (recipe.label(), policy)
        })
        .collect()
}

/// The table's results with what each keeps of the first (the baseline), and the CSCALE
/// criterion over its sweep points.
fn table_outcome(mut recipes: Vec<RecipeResult>, sweep: bool) -> EvalOutcome {
    let classification = recipes.iter().all(|r| r.result.accuracy.is_some());
    let metric = match classification {
        true => CscaleMetric::ValAccuracy,
        false => CscaleMetric::ValPerplexity,
    };
    let value = |r: &EvalResult| match metric {
        CscaleMetric::ValAccuracy => r.accuracy,
        CscaleMetric::ValPerplexity => r.perplexity,
    };
    let base = recipes.first().and_then(|r| value(&r.result));
    let cscale = sweep.then(|| {
        let points = recipes
            .iter()
            .filter_map(|r| Some((r.cscale_bias?, value(&r.result))));
        CscaleRange::of_values(metric, base, points)
    });
    for r in &mut recipes {
        r.kept = metric.kept(value(&r.result), base);
    }
    EvalOutcome::Table { recipes, cscale }
}

/// The evaluation itself, on `device` of the backend `B`: the checkpoint loaded once, then
/// evaluated under each recipe's FP8 policy.
fn eval_on<B: Fp8Kernels + crate::host::HostTensors>(
    args: &EvalArgs,
    job: &JobConfig,
    data: &JobData,
    recipes: &[(String, Fp8Policy)],
    device: B::Device,
) -> Result<Vec<RecipeResult>, Error> {
    let (_, first) = recipes.first().expect("at least one recipe");
    let mut options = ModelOptions {
        dropout: 0.0,
        fp8: first.clone(),
    };
    let storage = super::inference_storage(&args.checkpoint, &mut options.fp8, args.base_storage)?;
    let mut model = load_checkpoint_storing::<InferenceBackend<B>>(
        &args.checkpoint,
        &options,
        &device,
        storage,
    )?;
    if let Some(line) = super::stored_base_line(&model) {
        log::info!("{line}");
    }
    let mut results = Vec::new();
    for (label, policy) in recipes {
        model.set_fp8(policy.clone()).map_err(|e| Error::Argument {
            flag: "--precisions",
            message: e.to_string(),
        })?;
        // Delayed scaling evaluates with the checkpoint's histories, frozen.
        let _frozen = inference_histories(&args.checkpoint, &model)?;
        let result = eval_model(args, job, data, &model, policy.mode, &device)?;
        log::info!("eval {label}: {}", result.summary().replace('\n', "; "));
        results.push(RecipeResult {
            recipe: label.clone(),
            family: policy.family,
            cscale_bias: (policy.mode == Precision::Fp8Cscale).then_some(policy.cscale_bias),
            result,
            kept: None,
        });
    }
    Ok(results)
}

/// Loss and perplexity (language-model data) or accuracy (classification data) of `model`.
fn eval_model<B: Fp8Kernels + crate::host::HostTensors>(
    args: &EvalArgs,
    job: &JobConfig,
    data: &JobData,
    model: &Model<InferenceBackend<B>>,
    precision: Precision,
    device: &B::Device,
) -> Result<EvalResult, Error> {
    let (model, device) = (model, device.clone());
    let limit = if args.max_batches == 0 {
        usize::MAX
    } else {
        args.max_batches
    };

    let split = if job.data.validation != datasets::Validation::None {
        SplitName::Validation
    } else {
        SplitName::Train
    };
    let mut result = EvalResult {
        precision,
        loss: None,
        perplexity: None,
        tokens: 0,
        accuracy: None,
        examples: 0,
    };
    if let Some(set) = data.dataset.classification(split) {
        let mut correct = 0;
        for batch in set
            .scoring_batches(args.batch_size, job.data.seq_len)
            .take(limit)
        {
            let scores = row_scores(model, &batch.batch, &device);
            correct += batch.num_correct(&scores);
            result.examples += batch.gold.len();
        }
        result.accuracy = Some(correct as f64 / result.examples.max(1) as f64);
    } else {
        let loader = match split {
            SplitName::Validation => data
                .dataset
                .validation_loader(args.batch_size)
                .map_err(data.err())?,
            SplitName::Train => Some(
                data.dataset
                    .train_loader(args.batch_size)
                    .map_err(data.err())?,
            ),
        }
        .expect("the split exists");
        let pass = mean_loss(model, loader.eval_pass().take(limit), &device);
        let loss = pass.map_or(0.0, |p| p.loss);
        result.loss = Some(loss);
        result.perplexity = Some(loss.exp());
        result.tokens = pass.map_or(0, |p| p.tokens);
    }
    Ok(result)
}

fn minimal_job(checkpoint: &std::path::Path) -> JobConfig {
    serde_json::from_value(serde_json::json!({
        "name": "eval",
        "model": {"checkpoint": checkpoint},
        "data": {"train": ".", "seq_len": 1},
        "steps": 1
    }))
    .expect("a valid minimal job")
}
