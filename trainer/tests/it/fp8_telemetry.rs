//! The FP8 telemetry of a training run: `fp8_stats.csv` holds one set of rows per sampled step
//! (the FP8 layers' casts in cast order, under Hugging Face names, from the first micro-batch;
//! none from evaluations), step 1's as `dump-step` reports them, each weight row's amax that of
//! the parameter of its name; the figure shows the CSV it is drawn from; a tensor whose
//! saturation crosses `precision.warn_saturation` is warned about once.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::common;
use crate::common::jobs::*;

/// fp8_stats.csv rows (without the header), split into cells.
fn fp8_stats(run: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(run.join("fp8_stats.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("step,layer,role,amax,bias,underflow_frac,saturated_frac")
    );
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// The telemetry figure (`fp8_stats.png` / `.svg`) is drawn from the run's own `fp8_stats.csv`:
/// every FP8 layer named, each role's bias range as the CSV has it; a run without statistics
/// has no figure.
#[test]
fn fp8_stats_figure_shows_the_csv_it_is_drawn_from() {
    let dir = scratch("fp8-figure");
    let mut config = tiny_job(&dir, "figure");
    config["steps"] = json!(6);
    config["precision"] = json!({"mode": "fp8-amax", "stats_every": 2});
    let path = write_config(&dir, "figure.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/figure");
    let svg = std::fs::read_to_string(run.join("fp8_stats.svg")).unwrap();
    assert!(run.join("fp8_stats.png").is_file());
    let rows = fp8_stats(&run);
    for role in ["weight", "activation", "gradient"] {
        let biases: Vec<i64> = (rows.iter())
            .filter(|r| r[2] == role)
            .map(|r| r[4].parse().unwrap())
            .collect();
        let (lo, hi) = (biases.iter().min().unwrap(), biases.iter().max().unwrap());
        let caption = format!("{role}s: bias {lo} (dark blue) .. {hi} (yellow)");
        assert!(svg.contains(&caption), "{caption} not in the figure");
    }
    for layer in [
        "h.0.attn.c_attn",
        "h.0.attn.c_proj",
        "h.1.mlp.c_fc",
        "h.1.mlp.c_proj",
    ] {
        assert!(svg.contains(&format!("\n{layer}\n")), "{layer} is labelled");
    }

    let mut config = tiny_job(&dir, "no-figure");
    config["steps"] = json!(2);
    config["precision"] = json!({"mode": "fp8-amax", "stats_every": 0});
    let path = write_config(&dir, "no-figure.json", &config);
    assert_ok(&train(&path, &[], &[]));
    assert!(!dir.join("runs/no-figure/fp8_stats.svg").exists());
}

/// fp8_stats.csv holds for every step exactly one set of rows: the filtered layers' activation
/// and weight in forward order, then their gradients in backward order, under HF names, from the
/// first micro-batch (docs/design.md "Run directory", "Training loop"); evaluation passes add
/// none. Step 1's rows are those of `dump-step` on the same job's first batch, except that the
/// training step's loss is divided by grad_accum = 2 before the backward: every gradient is
/// exactly half (power-of-two scaling), so its amax halves and its AMAX bias grows by one. And
/// each row's name is the layer it measured: a weight row's amax is that of the parameter of
/// that name in the previous step's checkpoint.
#[test]
fn fp8_stats_hold_one_set_of_filtered_layers_per_step() {
    let dir = scratch("fp8-stats");
    let mut config = tiny_job(&dir, "stats");
    config["precision"] = json!({
        "mode": "fp8-amax", "stats_every": 1, "layers": ["h.0.mlp.*", "h.1.attn.c_attn"]
    });
    config["grad_accum"] = json!(2);
    config["steps"] = json!(4);
    config["eval_every"] = json!(2);
    config["checkpoint_every"] = json!(1);
    config["keep_checkpoints"] = json!(10);
    let path = write_config(&dir, "stats.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/stats");
    let rows = fp8_stats(&run);

    let layers = ["h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.1.attn.c_attn"];
    let forward = layers
        .iter()
        .flat_map(|l| [(*l, "activation"), (*l, "weight")]);
    let backward = layers.iter().rev().map(|l| (*l, "gradient"));
    let per_step: Vec<(&str, &str)> = forward.chain(backward).collect();
    let expected: Vec<(String, &str, &str)> = (1..=4)
        .flat_map(|step| {
            per_step
                .iter()
                .map(move |(l, r)| (step.to_string(), *l, *r))
        })
        .collect();
    let ours: Vec<(String, &str, &str)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[1].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(ours, expected, "one set per step, in cast order");
    let evaluated: Vec<String> = metrics(&run)
        .into_iter()
        .filter(|r| !r[3].is_empty())
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(evaluated, ["0", "2", "4"], "evaluations ran in between");

    // Each name is its own layer: the weight cast of step s + 1 sees the weights that
    // checkpoint s holds under that name, so its amax is theirs, bit for bit.
    for step in 1..4 {
        let checkpoint = run.join(format!("checkpoints/step-{step}/model.safetensors"));
        let tensors = common::read_tensors(&checkpoint);
        let next = (step + 1).to_string();
        for row in rows.iter().filter(|r| r[0] == next && r[2] == "weight") {
            let name = format!("transformer.{}.weight", row[1]);
            let weight = tensors.iter().find(|t| t.name == name).unwrap();
            let amax = weight.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let ours: f32 = row[3].parse().unwrap();
            assert_eq!(
                ours.to_bits(),
                amax.to_bits(),
                "step {next} {name}: {ours} vs {amax}"
            );
        }
    }

    // Step 1 against dump-step of the same job (same initial weights, same first batch).
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let out = Command::new(common::trainer_bin())
        .args(["dump-step", "--config"])
        .arg(&path)
        .arg("--out")
        .arg(dump.join("step.safetensors"))
        .arg("--fp8-stats")
        .arg(dump.join("fp8_stats.csv"))
        .output()
        .unwrap();
    assert_ok(&out);
    let single = fp8_stats(&dump);
    assert_eq!(single.len(), per_step.len());
    for (ours, theirs) in rows.iter().zip(&single) {
        if ours[2] != "gradient" {
            assert_eq!(ours, theirs, "forward casts of step 1's first micro-batch");
            continue;
        }
        let amax = |r: &[String]| r[3].parse::<f32>().unwrap();
        let bias = |r: &[String]| r[4].parse::<i32>().unwrap();
        assert_eq!(
            amax(ours).to_bits(),
            (amax(theirs) / 2.0).to_bits(),
            "{ours:?}"
        );
        assert_eq!(bias(ours), bias(theirs) + 1, "{ours:?}");
        assert_eq!(ours[5..], theirs[5..], "the same fractions: {ours:?}");
    }
}

/// A tensor whose saturation crosses `precision.warn_saturation` is named in a warning once;
/// with the threshold at 1 nothing is said.
#[test]
fn saturating_tensors_are_warned_about() {
    let dir = scratch("telemetry");
    let run_with = |name: &str, warn: f64| {
        let mut job = tiny_job(&dir, name);
        // 2^12 times every value: weights and activations far beyond E4's 240.
        job["precision"] = json!({"mode": "fp8-cscale", "cscale_bias": 12, "stats_every": 1,
                                  "warn_saturation": warn});
        job["steps"] = json!(3);
        assert_ok(&train(
            &write_config(&dir, &format!("{name}.json"), &job),
            &[],
            &[],
        ));
        std::fs::read_to_string(dir.join("runs").join(name).join("log.txt")).unwrap()
    };
    let log = run_with("warned", 0.01);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FP8 saturation in the"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("step 1: FP8 saturation in the activation of h.0.attn.c_attn")),
        "{log}"
    );
    let once = warnings
        .iter()
        .filter(|l| l.contains("activation of h.0.attn.c_attn:"))
        .count();
    assert_eq!(once, 1, "said once while it stays over: {warnings:?}");
    assert!(!run_with("quiet", 1.0).contains("FP8 saturation"));
}
