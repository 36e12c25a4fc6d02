//! Every backend trains what the default CPU backend (burn-flex) trains: a few steps on
//! burn-ndarray, wgpu (Mesa's lavapipe in CI) and CUDA (`scripts/device-check`) give the CPU's
//! initial validation loss and first training loss to f32 rounding in fp32 (FP8 rounding in
//! fp8-amax), the same weight statistics, and a checkpoint that `eval` scores alike on the CPU
//! and on the device. A device the build lacks, or a wgpu job without a GPU adapter, stops with
//! a message saying what to install or enable.

use std::path::Path;

use serde_json::json;

use crate::common::jobs::*;

/// Another device (or CPU backend) vs the default CPU one, fp32, same initial weights and batch:
/// the initial validation loss and the first step's training loss differ only by f32
/// reassociation in matmuls and reductions (and the driver's exp/log). Measured on lavapipe:
/// 1.6e-7 relative; 1e-4 leaves room for GPU drivers.
const DEVICE_F32_REL_TOL: f64 = 1e-4;

/// The same with FP8-AMAX: an element whose f32 value differs in the last bits can round to the
/// neighbouring FP8 value (a 1/8 relative step for E4M3), so a few elements per tensor may move.
/// Measured on lavapipe: 1.4e-7 relative (no element moved); 1e-2 allows some that do.
const DEVICE_FP8_REL_TOL: f64 = 1e-2;

/// A few training steps on burn-ndarray, the other supported CPU backend, against the default.
#[test]
fn a_few_steps_on_ndarray_match_the_default_cpu_backend() {
    few_steps_match_the_cpu("ndarray", false);
}

/// The same on wgpu (Mesa's lavapipe in CI), where the fused ops run as device kernels.
#[cfg(feature = "wgpu")]
#[test]
fn a_few_steps_on_wgpu_match_the_cpu() {
    few_steps_match_the_cpu("wgpu", false);
}

/// A Llama (grouped-query rotary attention, RMSNorm, SwiGLU) on wgpu.
#[cfg(feature = "wgpu")]
#[test]
fn a_few_llama_steps_on_wgpu_match_the_cpu() {
    few_steps_match_the_cpu("wgpu", true);
}

/// The same on CUDA (`scripts/device-check` runs it on a machine with an NVIDIA GPU).
#[cfg(feature = "cuda")]
#[test]
fn a_few_steps_on_cuda_match_the_cpu() {
    few_steps_match_the_cpu("cuda", false);
    few_steps_match_the_cpu("cuda", true);
}

/// A few training steps on `device` against the same job on the default CPU backend: same
/// initial weights (a preset is initialised on the CPU), so the first losses agree to f32
/// tolerance and the weights' FP8 statistics of step 1 are identical; the run writes a
/// checkpoint that the CPU `eval` reads. `llama`: the tiny Llama (4 query heads on 2 key/value
/// heads) instead of the tiny GPT-2.
fn few_steps_match_the_cpu(device: &str, llama: bool) {
    let dir = scratch(&format!(
        "{device}-{}",
        if llama { "llama" } else { "gpt2" }
    ));
    for (precision, tol) in [
        ("fp32", DEVICE_F32_REL_TOL),
        ("fp8-amax", DEVICE_FP8_REL_TOL),
    ] {
        let run = |device: &str| {
            let name = format!("{precision}-{device}");
            let mut c = tiny_job(&dir, &name);
            if llama {
                c["model"]["preset"] = json!("llama-tiny");
                c["model"]["n_head"] = json!(4);
                c["model"]["n_inner"] = json!(48);
            }
            c["device"] = json!(device);
            c["steps"] = json!(3);
            c["eval_every"] = json!(3);
            c["checkpoint_every"] = json!(0);
            c["precision"] = json!({"mode": precision, "stats_every": 1});
            let path = write_config(&dir, &format!("{name}.json"), &c);
            let out = train(&path, &[], &[]);
            assert_ok(&out);
            dir.join("runs").join(name)
        };
        let (cpu, gpu) = (run("cpu"), run(device));
        let log = std::fs::read_to_string(gpu.join("log.txt")).unwrap();
        assert!(
            log.contains(&format!("precision {precision} on {device}")),
            "{log}"
        );
        let (mc, mg) = (metrics(&cpu), metrics(&gpu));
        assert_eq!(mc.len(), mg.len());
        // Row 0: initial validation loss; row 1: step 1's training loss.
        for (row, col) in [(0, 3), (1, 2)] {
            let r = rel(&mg[row][col], &mc[row][col]);
            println!(
                "{precision}: row {row} col {col}: {device} {} cpu {} (rel {r:.2e})",
                mg[row][col], mc[row][col]
            );
            assert!(
                r < tol,
                "{precision}: {device} {} vs cpu {} (rel {r:e})",
                mg[row][col],
                mc[row][col]
            );
        }
        for r in &mg[1..] {
            assert!(
                r[2].parse::<f64>().unwrap().is_finite(),
                "{precision}: {r:?}"
            );
        }
        if precision == "fp8-amax" {
            // Weight statistics of step 1 come from the initial weights: bit-identical.
            let weights = |run: &Path| -> Vec<String> {
                std::fs::read_to_string(run.join("fp8_stats.csv"))
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with("1,") && l.contains(",weight,"))
                    .map(str::to_string)
                    .collect()
            };
            let (wc, wg) = (weights(&cpu), weights(&gpu));
            let projections = if llama { 7 } else { 4 };
            assert_eq!(wc.len(), 2 * projections, "projections x 2 blocks: {wc:?}");
            assert_eq!(wg, wc, "device statistics equal the CPU's");
        }
        // The device's checkpoint is an ordinary one: the CPU evaluates it, and `eval` on the
        // device agrees with the CPU's.
        let eval = |on: &str| {
            let r = eval_json(&dir, &gpu.join("checkpoints/step-3"), precision, on);
            r["loss"].as_f64().unwrap().to_string()
        };
        let (on_cpu, on_gpu) = (eval("cpu"), eval(device));
        let r = rel(&on_gpu, &on_cpu);
        println!("{precision}: eval {device} {on_gpu} cpu {on_cpu} (rel {r:.2e})");
        assert!(
            r < tol,
            "{precision} eval: {device} {on_gpu} vs cpu {on_cpu} (rel {r:e})"
        );
    }
}

/// A device the build lacks is a config error naming the field and the cargo feature.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_not_in_the_build_exits_2() {
    let dir = scratch("no-cuda");
    let mut config = tiny_job(&dir, "cuda");
    config["device"] = json!("cuda");
    let path = write_config(&dir, "cuda.json", &config);
    let out = train(&path, &[], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in ["cuda.json", "`device`", "--features trainer/cuda"] {
        assert!(err.contains(needle), "`{needle}` in: {err}");
    }
    assert!(!dir.join("runs/cuda").exists(), "nothing written: {err}");
}

/// Without any Vulkan driver (the loader pointed at none), a wgpu job stops with a clear message
/// and exit 1 instead of a panic's backtrace.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_without_an_adapter_says_what_to_install() {
    let dir = scratch("no-adapter");
    let mut config = tiny_job(&dir, "no-adapter");
    config["device"] = json!("wgpu");
    let path = write_config(&dir, "no-adapter.json", &config);
    let out = train(&path, &[], &[("VK_ICD_FILENAMES", "/nonexistent/icd.json")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no usable GPU adapter"), "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
}
