//! `fp8-trainer bench --config FILE`: times training steps of a job, per device and precision,
//! and optionally the PyTorch peer of the model's family (`bench/peers/torch_gpt2.py`,
//! `bench/peers/torch_llama.py`) on the same shapes and threads, side by side in one run.
//!
//! Each (device, precision) runs in a child process of its own (`--single`), so its peak
//! memory is its own. A step is what the training loop does: forward/backward of every
//! micro-batch, the one read of loss and gradient norms, and the AdamW update; `--warmup`
//! steps run first, untimed. No checkpoints, evaluations or run directory.
//!
//! Measured per configuration: the median step time and tokens/s over the timed steps, the
//! share of step time spent in GEMMs (CPU devices only: see `fp8_backend::profile`), the share
//! spent in the optimizer (after the gradients' norms are read, which waits for the device), the
//! peak resident memory of the process (`VmHWM`) and, on CUDA, the GPU memory it holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::backend::Backend;
use fp8_backend::{HeadPrecision, Precision};
use serde::{Deserialize, Serialize};

use crate::device::{Device, DeviceBackend, TrainBackend};
use crate::error::Error;
use crate::job::assemble::{build_model, open_data};
use crate::job::{check, load_job_config, JobConfig};
use crate::model::names::param_shapes;
use crate::model::ModelConfig;
use crate::train::optimizer::{AdamW, AdamWStep};
use crate::train::parallel::{self, Group, Peers};
use crate::train::step::{apply_adamw, clip_factor, StepOptions};

/// Arguments of `bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Job config (JSON): model, data, batch size, grad_accum, optimizer.
    #[arg(long)]
    pub config: PathBuf,
    /// Config overrides: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Timed steps per configuration (at least 1: a median of none is no figure).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Precisions to time (the first is the baseline of the overhead ratio); `MODE+bf16-head`
    /// runs the mode with its LM head in bf16 (`precision.head`).
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp8-amax")]
    pub precisions: Vec<BenchPrecision>,
    /// Devices to time (default: the job's).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<Device>,
    /// Also time the PyTorch peer with this Python (needs torch and torchao): eager f32 and
    /// torchao float8 emulation on the CPU, same shapes and threads.
    #[arg(long, value_name = "PYTHON")]
    pub peer: Option<PathBuf>,
    /// Also write every result as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run one configuration in this process and print its result as a JSON line (what the
    /// parent spawns).
    #[arg(long, hide = true)]
    pub single: bool,
}

/// A precision `bench` times: a mode, and how the LM head multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPrecision {
    pub mode: Precision,
    pub head: HeadPrecision,
}

/// The suffix of a [`BenchPrecision`] whose head is bf16.
const BF16_HEAD: &str = "+bf16-head";

impl std::str::FromStr for BenchPrecision {
    type Err = fp8_backend::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mode, head) = match s.strip_suffix(BF16_HEAD) {
            Some(mode) => (mode, HeadPrecision::Bf16),
            None => (s, HeadPrecision::F32),
        };
        Ok(Self {
            mode: mode.parse()?,
            head,
        })
    }
}

impl std::fmt::Display for BenchPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.head {
            HeadPrecision::F32 => write!(f, "{}", self.mode),
            HeadPrecision::Bf16 => write!(f, "{}{BF16_HEAD}", self.mode),
        }
    }
}

/// The figures of one configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    /// `fp8-trainer` or the peer's mode name.
    pub program: String,
    pub device: String,
    pub precision: String,
    pub threads: usize,
    pub params: usize,
    pub tokens_per_step: usize,
    pub steps: usize,
    pub step_time_median_s: f64,
    pub tokens_per_s: f64,
    /// Median share of a step spent in GEMMs (CPU devices; the peer's is an estimate).
    pub gemm_share: Option<f64>,
    /// Median share of a step spent after the gradients and their norms were read: the AdamW
    /// update of every parameter and the device sync that ends the step.
    #[serde(default)]
    pub optimizer_share: Option<f64>,
    pub peak_rss_mb: f64,
    /// GPU memory the process holds after its timed steps, as `nvidia-smi` reports it (CUDA
    /// devices; the pool of Burn's allocator or PyTorch's caching allocator included).
    #[serde(default)]
    pub gpu_mem_mb: Option<f64>,
    pub loss_first: f32,
    pub loss_last: f32,
    /// Data-parallel peers of the job (`devices`; 1 without).
    #[serde(default = "one")]
    pub peers: usize,
    /// Median share of a step peer 0 spent in collective calls (the gradients' all-reduce and
    /// the FP8 amax reductions, waiting for the slowest peer included); data-parallel jobs.
    #[serde(default)]
    pub collective_share: Option<f64>,
}

fn one() -> usize {
    1
}

/// Runs `bench`; returns the table to print.
pub fn run_bench(args: &BenchArgs) -> Result<String, Error> {
    let job = load_job_config(&args.config, &args.overrides)?;
    if args.single {
        let result = bench_single(args, job)?;
        return Ok(serde_json::to_string(&result).expect("serialises"));
    }
    let devices = match args.devices.as_slice() {
        [] => vec![job.device],
        d => d.to_vec(),
    };
    let mut results = Vec::new();
    for device in &devices {
        for precision in &args.precisions {
            results.push(spawn_single(args, *device, *precision)?);
        }
    }
    if let Some(python) = &args.peer {
        let mut peer_devices: Vec<&str> = Vec::new();
        for device in devices.iter().filter_map(|d| peer_device(*d)) {
            if !peer_devices.contains(&device) {
                peer_devices.push(device);
            }
        }
        for peer_device in peer_devices {
            results.extend(run_peer(python, args, &job, peer_device)?);
        }
    }
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&results).expect("serialises") + "\n";
        datasets::atomic::write_atomic(out, text.as_bytes()).map_err(Error::io(out))?;
    }
    Ok(table(&job, args, &results))
}

/// One configuration in a child process.
fn spawn_single(
    args: &BenchArgs,
    device: Device,
    precision: BenchPrecision,
) -> Result<BenchResult, Error> {
    let exe = std::env::current_exe().map_err(Error::io("fp8-trainer"))?;
    let mut command = Command::new(&exe);
    command.arg("bench").arg("--config").arg(&args.config);
    for o in &args.overrides {
        command.arg("--set").arg(o);
    }
    command
        .args([
            "--steps",
            &args.steps.to_string(),
            "--warmup",
            &args.warmup.to_string(),
        ])
        .args([
            "--precisions",
            &precision.to_string(),
            "--devices",
            device.name(),
            "--single",
        ]);
    log::info!("bench: {} {precision} ...", device.name());
    let out = command.output().map_err(Error::io(&exe))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match (out.status.success(), line) {
        (true, Some(line)) => Ok(serde_json::from_str(line).expect("our own JSON")),
        _ => Err(Error::Io {
            path: exe,
            source: std::io::Error::other(format!(
                "bench of {} {precision} failed ({}): {}",
                device.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }),
    }
}

fn bench_single(args: &BenchArgs, mut job: JobConfig) -> Result<BenchResult, Error> {
    let (Some(&precision), [device]) = (args.precisions.first(), args.devices.as_slice()) else {
        return Err(Error::Argument {
            flag: "--single",
            message: "needs one --precisions and one --devices".into(),
        });
    };
    job.precision.mode = precision.mode;
    job.precision.head = precision.head;
    job.precision.stats_every = 0;
    job.device = *device;
    check::device(&job, &args.config)?;
    on_device!(job.device, bench_on(args, &job))
}

/// The timed loop on `device` of the inner backend `B` (with the job's data-parallel peers,
/// when it has several `devices`).
fn bench_on<B: DeviceBackend>(
    args: &BenchArgs,
    job: &JobConfig,
    device: B::Device,
) -> Result<BenchResult, Error>
where
    B::Device: Send + Sync,
{
    let devices: Vec<B::Device> = match job.devices.as_slice() {
        [] => vec![device],
        slots => slots.iter().map(|s| B::device_at(s.index)).collect(),
    };
    let device = devices[0].clone();
    let data = open_data(job, &args.config)?;
    let mut model = build_model::<B>(job, &args.config, data.tokenizer.vocab_size(), &device)?;
    let mut optimizer = AdamW::<fp8_backend::Fp8<B>>::new(param_shapes(&model), &device);
    let group = Group {
        devices: devices.clone(),
        nodes: None,
        fingerprint: 0,
    };
    let global_batch = job.batch_size * devices.len();
    let mut loader = data
        .dataset
        .train_loader(global_batch)
        .map_err(data.err())?;
    let peers = (devices.len() > 1)
        .then(|| Peers::start::<B>(&model, &optimizer, &group).expect("one node agrees"));
    let o = &job.optimizer;
    let hyper = AdamWStep {
        lr: o.lr as f32,
        beta1: o.betas.0 as f32,
        beta2: o.betas.1 as f32,
        eps: o.eps as f32,
        weight_decay: o.weight_decay as f32,
    };
    let on_cpu = matches!(job.device, Device::Cpu | Device::Ndarray);
    let (mut times, mut gemm_shares, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    let (mut optimizer_shares, mut collective_shares) = (Vec::new(), Vec::new());
    for i in 0..args.warmup + args.steps {
        let timed = i >= args.warmup;
        fp8_backend::profile::set_enabled(timed && on_cpu);
        fp8_backend::profile::take();
        let start = Instant::now();
        // Returns after reading the loss and the gradients' norms: the device has finished
        // the forward and backward passes.
        if let Some(peers) = &peers {
            peers.take_collective_seconds();
        }
        let options = StepOptions {
            grad_accum: job.grad_accum,
            stats: false,
            loss_factor: None,
            activation_checkpointing: job.activation_checkpointing,
            seed: job.seed,
        };
        let out =
            parallel::step_gradients::<B>(peers.as_ref(), &model, &mut loader, &options, &device);
        let gradients_done = start.elapsed().as_secs_f64();
        let scale = clip_factor(out.global_norm(), job.grad_clip);
        if let Some(peers) = &peers {
            peers.send_update(hyper, scale);
        }
        let coefficients = optimizer.begin_step(hyper, scale);
        model = apply_adamw(model, &mut optimizer, out.grads, &coefficients);
        TrainBackend::<B>::sync(&device).map_err(|e| Error::Io {
            path: PathBuf::from(job.device.name()),
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        let elapsed = start.elapsed().as_secs_f64();
        let (gemm, _) = fp8_backend::profile::take();
        losses.push(out.loss);
        log::info!(
            "bench {} {}: step {i}{}: loss {:.4}, {:.3} s",
            job.device.name(),
            BenchPrecision {
                mode: job.precision.mode,
                head: job.precision.head
            },
            if timed { "" } else { " (warmup)" },
            out.loss,
            elapsed
        );
        if timed {
            times.push(elapsed);
            gemm_shares.push(gemm.as_secs_f64() / elapsed);
            optimizer_shares.push((elapsed - gradients_done) / elapsed);
            if let Some(peers) = &peers {
                collective_shares.push(peers.take_collective_seconds() / elapsed);
            }
        }
    }
    fp8_backend::profile::set_enabled(false);
    drop(peers);
    let tokens_per_step = global_batch * job.grad_accum * job.data.seq_len;
    let median_time = median(&times);
    Ok(BenchResult {
        program: "fp8-trainer".into(),
        device: match devices.len() {
            1 => job.device.name().into(),
            n => format!("{} x{n}", job.device.name()),
        },
        precision: BenchPrecision {
            mode: job.precision.mode,
            head: job.precision.head,
        }
        .to_string(),
        threads: rayon::current_num_threads(),
        params: model.config().num_params(),
        tokens_per_step,
        steps: args.steps,
        step_time_median_s: median_time,
        tokens_per_s: tokens_per_step as f64 / median_time,
        // The GEMM profile adds up every thread's time: with peers on threads it is no share.
        gemm_share: (on_cpu && devices.len() == 1).then(|| median(&gemm_shares)),
        optimizer_share: Some(median(&optimizer_shares)),
        peak_rss_mb: peak_rss_mb(),
        gpu_mem_mb: matches!(job.device, Device::Cuda)
            .then(nvidia_smi_process_mb)
            .flatten(),
        loss_first: losses.first().copied().unwrap_or(f32::NAN),
        loss_last: losses.last().copied().unwrap_or(f32::NAN),
        peers: devices.len(),
        collective_share: (devices.len() > 1).then(|| median(&collective_shares)),
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Peak resident memory of this process in MiB (`VmHWM` of /proc/self/status; NaN elsewhere).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.map_or(f64::NAN, |k| k / 1024.0)
}

/// GPU memory used by this process according to `nvidia-smi` (MiB), if it answers.
fn nvidia_smi_process_mb() -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let (p, mb) = line.split_once(',')?;
            (p.trim() == pid).then(|| mb.trim().parse().ok()).flatten()
        })
}

/// The peer's device for one of ours: torch on the CPU for the CPU backends, torch CUDA for
/// cuda; none for wgpu (the peer has no such device).
fn peer_device(device: Device) -> Option<&'static str> {
    match device {
        Device::Cpu | Device::Ndarray => Some("cpu"),
        Device::Cuda => Some("cuda"),
        Device::Wgpu => None,
    }
}

/// The peer's programs to compare our precision with on a device: its counterpart, and for
/// FP8 and bf16 also torch's bf16 autocast (the baseline FP8 users compare against).
fn peer_counterparts(device: &str, precision: &str) -> Vec<&'static str> {
    let mode = precision.strip_suffix(BF16_HEAD).unwrap_or(precision);
    match (device, mode) {
        (_, "fp32") => vec!["torch eager-f32"],
        (_, "bf16") => vec!["torch bf16-autocast"],
        ("cpu", m) if m.starts_with("fp8") => {
            vec!["torch torchao-float8-emulate", "torch bf16-autocast"]
        }
        ("cuda", m) if m.starts_with("fp8") => vec!["torch torchao-float8", "torch bf16-autocast"],
        _ => vec![],
    }
}

/// The peer on the job's shapes and `device` (`cpu` with the same thread count, or `cuda`);
/// its JSON results, as ours.
fn run_peer(
    python: &Path,
    args: &BenchArgs,
    job: &JobConfig,
    device: &str,
) -> Result<Vec<BenchResult>, Error> {
    let threads = rayon::current_num_threads();
    let batch = job.batch_size * job.grad_accum;
    let (script, shapes, cpu_modes) = match crate::job::assemble::model_config(job, &args.config)? {
        ModelConfig::Gpt2(c) => (
            "torch_gpt2.py",
            vec![
                ("--vocab", c.vocab_size.to_string()),
                ("--n-layer", c.n_layer.to_string()),
                ("--n-embd", c.n_embd.to_string()),
                ("--n-head", c.n_head.to_string()),
                ("--n-inner", c.inner_dim().to_string()),
                ("--n-positions", c.n_positions.to_string()),
            ],
            "eager-f32,bf16-autocast,torchao-float8-emulate",
        ),
        ModelConfig::Llama(c) => (
            "torch_llama.py",
            vec![
                ("--vocab", c.vocab_size.to_string()),
                ("--n-layer", c.num_hidden_layers.to_string()),
                ("--hidden", c.hidden_size.to_string()),
                ("--n-head", c.num_attention_heads.to_string()),
                ("--n-kv-head", c.num_key_value_heads.to_string()),
                ("--head-dim", c.head_dim.to_string()),
                ("--intermediate", c.intermediate_size.to_string()),
                ("--rope-theta", c.rope_theta.to_string()),
                ("--rms-eps", c.rms_norm_eps.to_string()),
                (
                    if c.tie_word_embeddings {
                        "--tie"
                    } else {
                        "--no-tie"
                    },
                    String::new(),
                ),
            ],
            "eager-f32,bf16-autocast,torchao-float8-emulate",
        ),
    };
    let mut shapes = shapes;
    let mut cpu_modes = cpu_modes;
    if let Some(lora) = &job.lora {
        // PyTorch + PEFT on the same adapters (the Llama peer; float8 has no LoRA mode there).
        if script != "torch_llama.py" {
            return Err(Error::Argument {
                flag: "--peer",
                message: "the PyTorch peer runs LoRA jobs of the Llama family only".into(),
            });
        }
        let targets = match lora.targets(&["q_proj", "v_proj"]) {
            crate::model::lora::TargetModules::AllLinear => "all-linear".to_string(),
            crate::model::lora::TargetModules::Names(names) => names.join(","),
        };
        shapes.extend([
            ("--lora-r", lora.r.to_string()),
            ("--lora-alpha", lora.lora_alpha.to_string()),
            ("--lora-targets", targets),
        ]);
        cpu_modes = "eager-f32,bf16-autocast";
    }
    shapes.extend([
        ("--seq", job.data.seq_len.to_string()),
        ("--batch", batch.to_string()),
        ("--steps", args.steps.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--threads", threads.to_string()),
    ]);
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bench/peers")
        .join(script);
    let script = match local.is_file() {
        true => local,
        false => Path::new("bench/peers").join(script),
    };
    let out = std::env::temp_dir().join(format!("fp8-bench-peer-{}.json", std::process::id()));
    let mut command = Command::new(python);
    command.arg(&script);
    for (flag, value) in shapes {
        command.arg(flag);
        if !value.is_empty() {
            command.arg(value);
        }
    }
    let modes = match device {
        "cuda" => "eager-f32,bf16-autocast,torchao-float8",
        _ => cpu_modes,
    };
    command
        .args(["--device", device, "--modes", modes, "--out"])
        .arg(&out);
    log::info!(
        "bench: the PyTorch peer on {device} ({}) ...",
        script.display()
    );
    let status = command.status().map_err(Error::io(python))?;
    let text = std::fs::read_to_string(&out).map_err(|e| Error::Io {
        path: out.clone(),
        source: std::io::Error::other(format!("the peer ({status}) wrote no results: {e}")),
    })?;
    let _ = std::fs::remove_file(&out);
    let peer: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: out,
        message: e.to_string(),
    })?;
    Ok(peer
        .iter()
        .filter(|r| r.get("error").is_none())
        .map(|r| BenchResult {
            program: format!("torch {}", r["mode"].as_str().unwrap_or("?")),
            device: device.into(),
            precision: match r["mode"].as_str() {
                Some("eager-f32") => "fp32".into(),
                Some("bf16-autocast") => "bf16".into(),
                Some("torchao-float8") => "float8".into(),
                _ => "float8-emulate".into(),
            },
            threads: r["threads"].as_u64().unwrap_or(0) as usize,
            params: r["params"].as_u64().unwrap_or(0) as usize,
            tokens_per_step: batch * job.data.seq_len,
            steps: args.steps,
            step_time_median_s: r["step_time_median_s"].as_f64().unwrap_or(f64::NAN),
            tokens_per_s: r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            gemm_share: r["gemm_share_estimate"].as_f64(),
            optimizer_share: None,
            peak_rss_mb: r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            gpu_mem_mb: r["nvidia_smi_used_mb"].as_f64(),
            loss_first: r["loss_first"].as_f64().unwrap_or(f64::NAN) as f32,
            loss_last: r["loss_last"].as_f64().unwrap_or(f64::NAN) as f32,
            peers: 1,
            collective_share: None,
        })
        .collect())
}

/// The results side by side, with the ratios the issue tracks.
fn table(job: &JobConfig, args: &BenchArgs, results: &[BenchResult]) -> String {
    let mut out = format!(
        "bench {}: {} tokens per step ({} x {} x {}), {} timed steps after {} warmup, {} threads\n",
        job.name,
        job.batch_size * job.devices.len().max(1) * job.grad_accum * job.data.seq_len,
        job.batch_size * job.devices.len().max(1),
        job.grad_accum,
        job.data.seq_len,
        args.steps,
        args.warmup,
        rayon::current_num_threads()
    );
    let gpu = results.iter().any(|r| r.gpu_mem_mb.is_some());
    let label = |r: &BenchResult| format!("{} / {} / {}", r.program, r.device, r.precision);
    let width = results
        .iter()
        .map(|r| label(r).len() + 2)
        .max()
        .unwrap_or(0)
        .max(30);
    out += &format!(
        "{:<width$}{:>10}{:>11}{:>11}{:>11}{:>10}{}{:>20}\n",
        "program / device / precision",
        "step s",
        "tokens/s",
        "GEMM share",
        "optimizer",
        "peak MB",
        if gpu {
            format!("{:>10}", "GPU MB")
        } else {
            String::new()
        },
        "loss first -> last"
    );
    for r in results {
        let percent = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.0}%", 100.0 * s));
        let (share, optimizer) = (percent(r.gemm_share), percent(r.optimizer_share));
        let gpu_mb = match (gpu, r.gpu_mem_mb) {
            (false, _) => String::new(),
            (true, Some(mb)) => format!("{mb:>10.0}"),
            (true, None) => format!("{:>10}", "-"),
        };
        out += &format!(
            "{:<width$}{:>10.3}{:>11.1}{:>11}{:>11}{:>10.0}{gpu_mb}{:>11.4} -> {:.4}\n",
            label(r),
            r.step_time_median_s,
            r.tokens_per_s,
            share,
            optimizer,
            r.peak_rss_mb,
            r.loss_first,
            r.loss_last
        );
    }
    let find = |program: &str, device: &str, precision: &str| {
        results
            .iter()
            .find(|r| r.program == program && r.device == device && r.precision == precision)
    };
    let mut ratios = Vec::new();
    for r in results
        .iter()
        .filter(|r| r.program == "fp8-trainer" && r.precision != "fp32")
    {
        if let Some(f32) = find("fp8-trainer", &r.device, "fp32") {
            ratios.push(format!(
                "{} / fp32 step time on {}: {:.3} (peak memory {:.2}x)",
                r.precision,
                r.device,
                r.step_time_median_s / f32.step_time_median_s,
                r.peak_rss_mb / f32.peak_rss_mb
            ));
        }
    }
    for r in results.iter().filter(|r| r.program == "fp8-trainer") {
        let Some(peer_device) = r.device.parse::<Device>().ok().and_then(peer_device) else {
            continue;
        };
        let peers = peer_counterparts(peer_device, &r.precision)
            .into_iter()
            .filter_map(|program| {
                results
                    .iter()
                    .find(|p| p.program == program && p.device == peer_device)
            });
        for p in peers {
            let memory = match (r.gpu_mem_mb, p.gpu_mem_mb) {
                (Some(ours), Some(theirs)) => format!("GPU memory {:.2}x", ours / theirs),
                _ => format!("peak memory {:.2}x", r.peak_rss_mb / p.peak_rss_mb),
            };
            ratios.push(format!(
                "{} {} vs {} ({}): tokens/s {:.2}x, {memory}",
                r.device,
                r.precision,
                p.program,
                p.device,
                r.tokens_per_s / p.tokens_per_s,
            ));
        }
    }
    for r in results {
        if let Some(share) = r.collective_share {
            ratios.push(format!(
                "{} {}: collective calls {:.1}% of the step (peer 0's gradients all-reduce and \
                 FP8 amax reductions, waiting for the slowest of {} peers included)",
                r.device,
                r.precision,
                100.0 * share,
                r.peers
            ));
        }
    }
    out + &ratios.join("\n")
}
