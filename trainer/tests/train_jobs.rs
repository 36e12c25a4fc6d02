//! `fp8-trainer train` end to end on a tiny byte-level GPT (2 blocks, 32 wide, 32 tokens) and
//! the shipped sonnets: config errors, SIGKILL + `--resume`, a checkpoint write interrupted by a
//! crash, gradient accumulation, both non-finite policies, FP8 statistics per step, `compare`.
//! (More of the non-finite policy: non_finite.rs; example data: example_data.rs.) The job and
//! its run-directory readers are in common/jobs.rs.
//!
//! Test-only environment knobs of the binary (documented in `trainer/src/train/`):
//! `FP8_TRAINER_FAIL_CHECKPOINT_AT=N` aborts while checkpoint N is half written;
//! `FP8_TRAINER_INJECT_NAN_STEP=N` (`_INF_STEP=N`) multiplies the loss of step N by NaN (+inf).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::jobs::*;
use serde_json::{json, Value};

/// Gradient accumulation (4 x batch 2) vs one batch of 8: the same token rows, summed in a
/// different order; f32 reassociation of the loss mean and gradient sums stays near 1e-6
/// relative, far below this.
const ACCUM_REL_TOL: f64 = 1e-4;

/// `compare` of fp32 and fp8-amax on the tiny job (30 steps): the final validation losses may
/// differ by at most this many nats. Measured here: -1.3e-4. A broken FP8 path (a wrong scale,
/// an unscaled cast that flushes the small gradients to zero) slows or stalls training, which
/// shows as a gap of tenths of a nat after 30 steps.
const FP8_PARITY_TOL_NATS: f64 = 0.02;

/// The `val_gap` of summary.csv against the gap recomputed (in f64) from the two runs'
/// metrics.csv cells: the f32 subtraction of two nearby losses is exact (Sterbenz), and each
/// loss read back from its shortest decimal form is within half an f32 ulp (2.4e-7 at 4 nats),
/// so the two agree to about 5e-7. Measured here: 3.1e-8 (ndarray), 5.9e-9 (flex). The gap
/// itself is 1.3e-4 nats; with the sign reversed (a broken build) the check is off by 2.6e-4.
const SUMMARY_GAP_TOL: f64 = 1e-6;

/// How far 12 steps of the tiny job (lr 3e-3, one step skipped) must bring the `eval` loss of
/// its final checkpoint below the run's own initial validation loss (metrics.csv row 0, 5.551).
/// Measured here: 4.723 after 12 steps, a drop of 0.83 nats; the untrained model (a 1-step run
/// at lr 1e-30) evaluates to 5.555 on the same `eval` batches, 0.004 from row 0, so the
/// different batches account for hundredths at most. A run that did not train stays within
/// those hundredths.
const TRAINED_MARGIN_NATS: f64 = 0.3;

/// Another device (or CPU backend) vs the default CPU one, fp32, same initial weights and batch:
/// the initial validation loss and the first step's training loss differ only by f32
/// reassociation in matmuls and reductions (and the driver's exp/log). Measured on lavapipe:
/// 1.6e-7 relative; 1e-4 leaves room for GPU drivers.
const DEVICE_F32_REL_TOL: f64 = 1e-4;

/// The same with FP8-AMAX: an element whose f32 value differs in the last bits can round to the
/// neighbouring FP8 value (a 1/8 relative step for E4M3), so a few elements per tensor may move.
/// Measured on lavapipe: 1.4e-7 relative (no element moved); 1e-2 allows some that do.
const DEVICE_FP8_REL_TOL: f64 = 1e-2;

#[test]
fn config_errors_exit_2_naming_the_field() {
    let dir = scratch("config-errors");
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: [(&str, Edit, &[&str]); 3] = [
        (
            "unknown key",
            Box::new(|c| {
                c["optimizer"] = json!({"lrr": 0.1});
            }),
            &["optimizer.lrr", "did you mean `optimizer.lr`"],
        ),
        (
            "wrong type",
            Box::new(|c| c["batch_size"] = json!("eight")),
            &["batch_size", "invalid type"],
        ),
        (
            "missing data file",
            Box::new(|c| c["data"]["train"] = json!("/nonexistent/corpus.txt")),
            &["data", "/nonexistent/corpus.txt"],
        ),
    ];
    for (what, edit, needles) in cases {
        let mut config = tiny_job(&dir, "errors");
        edit(&mut config);
        let path = write_config(&dir, "job.json", &config);
        let out = train(&path, &[], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("job.json"), "{what}: the file is named: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: `{needle}` in: {err}");
        }
        assert!(!err.contains("panicked"), "{what}: no panic: {err}");
    }
    // --set goes through the same checks.
    let path = write_config(&dir, "job.json", &tiny_job(&dir, "errors"));
    let out = train(&path, &["--set", "schedule.kind=linear"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("schedule.kind"), "{}", stderr(&out));
}

/// The uninterrupted reference run of a job (FP8-AMAX, shuffled data, evaluations).
fn reference_metrics(dir: &Path, config: &Value) -> Vec<Vec<String>> {
    let mut reference = config.clone();
    reference["name"] = json!("reference");
    let path = write_config(dir, "reference.json", &reference);
    assert_ok(&train(&path, &[], &[]));
    metrics(&dir.join("runs/reference"))
}

/// Starts `train --config path` and returns once `run/log.txt` has the line of `step` (written
/// after its `metrics.csv` row, so that row is there too).
fn spawn_until_step(path: &Path, run: &Path, step: u64) -> std::process::Child {
    let child = Command::new(common::trainer_bin())
        .args(["train", "--config"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = format!("step {step}/");
    while !std::fs::read_to_string(run.join("log.txt"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&line))
    {
        assert!(
            Instant::now() < deadline,
            "the run never reached step {step}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// How many `step N/TOTAL:` lines `log.txt` of `run` holds for `step` (the log is appended to
/// on `--resume`, so a step done twice shows twice).
fn step_log_lines(run: &Path, step: u64, total: u64) -> usize {
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    let line = format!("step {step}/{total}: ");
    log.lines().filter(|l| l.starts_with(&line)).count()
}

#[test]
fn sigkill_then_resume_equals_the_uninterrupted_run() {
    let dir = scratch("sigkill");
    let mut config = tiny_job(&dir, "killed");
    config["steps"] = json!(40);
    config["checkpoint_every"] = json!(5);
    let expected = reference_metrics(&dir, &config);
    let path = write_config(&dir, "killed.json", &config);
    let run = dir.join("runs/killed");

    // Kill after step 7 is logged: checkpoint 5 exists, steps 6-7 must be redone on resume.
    let mut child = spawn_until_step(&path, &run, 7);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let before = metrics(&run);
    let last = before.last().unwrap()[0].parse::<u64>().unwrap();
    println!("killed after step {last}");
    // Steps take milliseconds: the kill lands before step 10 (the next checkpoint) is logged.
    assert!(
        (7..10).contains(&last),
        "killed after step 7, before 10: {last}"
    );
    assert_eq!(
        exact(&before),
        exact(&expected[..before.len()]),
        "each step once up to the kill"
    );
    let ckpts = run.join("checkpoints");
    assert!(ckpts.join("step-5/trainer_state/state.json").is_file());
    assert!(!ckpts.join("step-10").exists());

    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "resumed from {} (step 5)",
            ckpts.join("step-5").display()
        )),
        "{stdout}"
    );
    // Steps 6..=last ran before the kill and again after it; step 5 and the steps after the
    // kill ran once. (The kill may land between the metrics row of `last` and its log line.)
    // metrics.csv holds each step once, as the uninterrupted run wrote it.
    for step in [5, last + 1, 40] {
        assert_eq!(step_log_lines(&run, step, 40), 1, "step {step} logged once");
    }
    for step in 6..=last {
        let lines = step_log_lines(&run, step, 40);
        let allowed = if step == last && last > 7 {
            1..=2
        } else {
            2..=2
        };
        assert!(
            allowed.contains(&lines),
            "step {step} redone once: {lines} lines"
        );
    }
    let after = metrics(&run);
    let steps: Vec<String> = after.iter().map(|r| r[0].clone()).collect();
    let once: Vec<String> = (0..=40).map(|s| s.to_string()).collect();
    assert_eq!(steps, once, "every step once, in order");
    assert_eq!(
        exact(&after),
        exact(&expected),
        "metrics after resume differ"
    );
    // fp8_stats.csv too: step 6 (sampled) was written before the kill and again after it.
    let stats = |run: &Path| std::fs::read_to_string(run.join("fp8_stats.csv")).unwrap();
    assert_eq!(
        stats(&run),
        stats(&dir.join("runs/reference")),
        "fp8_stats.csv after resume differs"
    );
}

#[test]
fn crash_while_writing_a_checkpoint_keeps_the_last_good_one() {
    let dir = scratch("crash-write");
    let config = tiny_job(&dir, "crash");
    let expected = reference_metrics(&dir, &config);
    let path = write_config(&dir, "crash.json", &config);
    let run = dir.join("runs/crash");

    let out = train(&path, &[], &[("FP8_TRAINER_FAIL_CHECKPOINT_AT", "8")]);
    assert!(
        !out.status.success(),
        "the injected fault aborts the process"
    );
    let ckpts = run.join("checkpoints");
    assert!(ckpts.join("step-4/trainer_state/state.json").is_file());
    assert!(
        ckpts.join(".step-8.tmp").is_dir(),
        "the half-written checkpoint is left as a temporary"
    );
    assert!(!ckpts.join("step-8").exists(), "and never becomes step-8");

    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(step 4)"));
    assert!(
        !ckpts.join(".step-8.tmp").exists(),
        "stale temporaries are cleaned up"
    );
    assert_eq!(exact(&metrics(&run)), exact(&expected));
    // keep_checkpoints = 2
    let mut kept: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-12", "step-8"]);
}

#[test]
fn accumulating_4_batches_of_2_equals_one_batch_of_8() {
    let dir = scratch("accum");
    let run_with = |name: &str, batch: usize, accum: usize| {
        let mut c = tiny_job(&dir, name);
        c["data"]["shuffle"] = json!(false);
        train_fp32_steps(&dir, name, c, batch, accum)
    };
    let accumulated = run_with("accum", 2, 4);
    let single = run_with("single", 8, 1);
    for (a, b) in accumulated
        .iter()
        .zip(&single)
        .filter(|(a, _)| !a[2].is_empty())
    {
        assert_eq!(a[1], b[1], "same tokens per step");
        for col in [2, 5] {
            let r = rel(&a[col], &b[col]);
            assert!(
                r < ACCUM_REL_TOL,
                "step {} column {col}: {} vs {} (rel {r:e})",
                a[0],
                a[col],
                b[col]
            );
        }
    }
}

/// `eval` of `checkpoint` on two batches of the sonnets (bytes, 32 tokens) in `precision` on
/// `device`, run in `dir` (its token cache goes to `dir/runs/.token-cache`); the JSON it wrote.
fn eval_json(dir: &Path, checkpoint: &Path, precision: &str, device: &str) -> Value {
    let result = dir.join(format!("eval-{precision}-{device}.json"));
    let out = Command::new(common::trainer_bin())
        .current_dir(dir)
        .args(["eval", "--checkpoint"])
        .arg(checkpoint)
        .args([
            "--data",
            &sonnets(),
            "--tokenizer",
            "bytes",
            "--seq-len",
            "32",
        ])
        .args([
            "--max-batches",
            "2",
            "--precision",
            precision,
            "--device",
            device,
        ])
        .arg("--out")
        .arg(&result)
        .output()
        .unwrap();
    assert_ok(&out);
    serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap()
}

#[test]
fn non_finite_policy_skip_and_stop() {
    let dir = scratch("non-finite");
    let nan_at_3 = [("FP8_TRAINER_INJECT_NAN_STEP", "3")];

    let mut stop = tiny_job(&dir, "stop");
    stop["non_finite"] = json!("stop");
    stop["checkpoint_every"] = json!(2);
    let path = write_config(&dir, "stop.json", &stop);
    let out = train(&path, &[], &nan_at_3);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("step 3") && err.contains("layer h."),
        "names step and layer: {err}"
    );
    let ckpts = dir.join("runs/stop/checkpoints");
    assert!(ckpts.join("step-2").is_dir());
    assert!(
        !ckpts.join("step-4").exists(),
        "no checkpoint after the NaN"
    );

    let skip = tiny_job(&dir, "skip");
    let path = write_config(&dir, "skip.json", &skip);
    let out = train(&path, &[], &nan_at_3);
    assert_ok(&out);
    let rows = metrics(&dir.join("runs/skip"));
    let row3 = rows.iter().find(|r| r[0] == "3").unwrap();
    assert_eq!(row3[2], "NaN", "the skipped step's loss is logged as NaN");
    let last = rows.last().unwrap();
    assert!(
        last[2].parse::<f32>().unwrap().is_finite(),
        "training went on: {last:?}"
    );
    let log = std::fs::read_to_string(dir.join("runs/skip/log.txt")).unwrap();
    assert!(log.contains("step skipped (1 so far)"), "{log}");

    // The run's other outputs: FP8 statistics every 3 steps under HF layer names, and `eval`
    // of its final checkpoint.
    let stats = std::fs::read_to_string(dir.join("runs/skip/fp8_stats.csv")).unwrap();
    assert!(stats.starts_with("step,layer,role,amax,bias,underflow_frac,saturated_frac\n"));
    assert!(stats.contains("\n6,h.1.mlp.c_proj,gradient,"), "{stats}");
    assert!(!stats.contains("\n5,"), "only sampled steps");
    let r = eval_json(
        &dir,
        &dir.join("runs/skip/checkpoints/step-12"),
        "fp8-amax",
        "cpu",
    );
    let (loss, ppl) = (
        r["loss"].as_f64().unwrap(),
        r["perplexity"].as_f64().unwrap(),
    );
    let initial: f64 = rows[0][3].parse().unwrap();
    println!("eval of step 12: {loss} (initial validation loss {initial})");
    assert!(
        loss < initial - TRAINED_MARGIN_NATS,
        "12 steps (one skipped) lower the loss: {loss} vs {initial} at step 0"
    );
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl);
}

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

/// With a layer filter, two micro-batches per step and evaluations every other step,
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

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_continues_exactly() {
    let dir = scratch("ctrl-c");
    let mut config = tiny_job(&dir, "interrupted");
    config["steps"] = json!(40);
    config["checkpoint_every"] = json!(100); // only the interrupt and the end write checkpoints
    let expected = reference_metrics(&dir, &config);
    let path = write_config(&dir, "interrupted.json", &config);
    let run = dir.join("runs/interrupted");

    let mut child = spawn_until_step(&path, &run, 3);
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT delivered");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted runs exit 130");
    let last = metrics(&run).last().unwrap()[0].parse::<u64>().unwrap();
    assert!(last < 40, "stopped early (step {last})");
    assert!(run
        .join(format!("checkpoints/step-{last}/trainer_state/state.json"))
        .is_file());

    // A setting changed for the resumed part is reported (log_every leaves the metrics alone).
    let out = train(&path, &["--resume", "--set", "log_every=2"], &[]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("config changed since the last run: log_every: 1 -> 2"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("config changed since the last run: name"),
        "{stdout}"
    );
    assert_eq!(exact(&metrics(&run)), exact(&expected));
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

#[test]
fn compare_runs_each_precision_and_summarises_the_gap() {
    let dir = scratch("compare");
    let mut config = tiny_job(&dir, "parity");
    config["steps"] = json!(30);
    config["eval_every"] = json!(10);
    config["checkpoint_every"] = json!(0);
    let path = write_config(&dir, "parity.json", &config);
    let out = Command::new(common::trainer_bin())
        .args(["compare", "--config"])
        .arg(&path)
        .args(["--precisions", "fp32,fp8-amax"])
        .output()
        .unwrap();
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let runs = dir.join("runs");
    let compare = runs.join("parity-compare");
    for file in ["loss.png", "loss.svg", "summary.csv"] {
        assert!(compare.join(file).is_file(), "{file} written: {stdout}");
    }
    let svg = std::fs::read_to_string(compare.join("loss.svg")).unwrap();
    assert!(
        svg.contains("fp32") && svg.contains("fp8-amax"),
        "both curves are labelled"
    );

    // summary.csv against the runs' own metrics.
    let summary = std::fs::read_to_string(compare.join("summary.csv")).unwrap();
    let lines: Vec<Vec<&str>> = summary.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "precision",
            "steps",
            "final_val_loss",
            "best_val_loss",
            "final_train_loss",
            "val_gap",
            "train_gap",
            "tokens_per_s",
            "speed_ratio"
        ]
    );
    assert_eq!(lines.len(), 3, "{summary}");
    let last_val = |name: &str| {
        metrics(&runs.join(name))
            .iter()
            .rev()
            .find(|r| !r[3].is_empty())
            .map(|r| r[3].clone())
            .unwrap()
    };
    let fp32 = last_val("parity-fp32");
    let fp8 = last_val("parity-fp8-amax");
    assert_eq!(
        (lines[1][0], lines[1][1], lines[1][2]),
        ("fp32", "30", fp32.as_str())
    );
    assert_eq!(
        (lines[2][0], lines[2][1], lines[2][2]),
        ("fp8-amax", "30", fp8.as_str())
    );
    assert_eq!(lines[1][5], "0", "the baseline's gap to itself");
    assert_eq!(lines[1][8], "1.000", "the baseline's speed ratio");
    assert!(lines[2][7].parse::<f64>().unwrap() > 0.0, "{summary}");
    let gap: f64 = lines[2][5].parse().unwrap();
    let expected_gap = fp8.parse::<f64>().unwrap() - fp32.parse::<f64>().unwrap();
    println!(
        "summary gap - gap of the runs' own losses: {:e}",
        gap - expected_gap
    );
    assert!(
        (gap - expected_gap).abs() < SUMMARY_GAP_TOL,
        "{gap} vs {expected_gap}"
    );
    println!("fp8-amax - fp32 final val loss after 30 steps: {gap:+.5} nats");
    assert!(gap != 0.0, "FP8 ran: the losses differ");
    assert!(
        gap.abs() < FP8_PARITY_TOL_NATS,
        "FP8-AMAX keeps the loss: gap {gap} ({fp8} vs {fp32})"
    );
    assert!(
        fp32.parse::<f64>().unwrap()
            < metrics(&runs.join("parity-fp32"))[0][3]
                .parse::<f64>()
                .unwrap(),
        "the loss fell"
    );
    assert!(
        stdout.contains("fp8-amax") && stdout.contains("summary.csv"),
        "{stdout}"
    );
}

/// A few training steps on burn-ndarray, the other supported CPU backend, against the default.
#[test]
fn a_few_steps_on_ndarray_match_the_default_cpu_backend() {
    few_steps_match_the_cpu("ndarray");
}

/// The same on wgpu (Mesa's lavapipe in CI).
#[cfg(feature = "wgpu")]
#[test]
fn a_few_steps_on_wgpu_match_the_cpu() {
    few_steps_match_the_cpu("wgpu");
}

/// The same on CUDA (`scripts/device-check` runs it on a machine with an NVIDIA GPU).
#[cfg(feature = "cuda")]
#[test]
fn a_few_steps_on_cuda_match_the_cpu() {
    few_steps_match_the_cpu("cuda");
}

/// A few training steps on `device` against the same job on the default CPU backend: same
/// initial weights (a preset is initialised on the CPU), so the first losses agree to f32
/// tolerance and the weights' FP8 statistics of step 1 are identical; the run writes a
/// checkpoint that the CPU `eval` reads.
fn few_steps_match_the_cpu(device: &str) {
    let dir = scratch(device);
    for (precision, tol) in [
        ("fp32", DEVICE_F32_REL_TOL),
        ("fp8-amax", DEVICE_FP8_REL_TOL),
    ] {
        let run = |device: &str| {
            let name = format!("{precision}-{device}");
            let mut c = tiny_job(&dir, &name);
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
            assert_eq!(wc.len(), 8, "4 projections x 2 blocks: {wc:?}");
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

/// Every shipped config runs (two steps, shrunk with `--set`) from the repository root, as the
/// README tells users to. The Hugging Face configs cannot fetch `gpt2` or Cerebras-GPT here, so
/// they fine-tune the tiny HF-layout fixture instead: the same config keys, data paths, the
/// checkpoint-folder loading path and the checkpoint writing path.
#[test]
fn shipped_configs_run_from_the_repository_root() {
    let dir = scratch("shipped");
    let root = common::repo_root();
    let fixture = root.join("tests/fixtures/gpt2-tiny");
    let mut names: Vec<String> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names {
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("configs").join(name)).unwrap(),
        )
        .unwrap();
        let mut sets = vec![
            format!("out_dir={}", dir.join("runs").display()),
            format!("data.cache_dir={}", dir.join("cache").display()),
            "steps=2".into(),
            "batch_size=2".into(),
            "grad_accum=1".into(),
            "data.seq_len=32".into(),
            "eval_every=2".into(),
            "eval_batches=1".into(),
        ];
        if config["model"]["checkpoint"].is_string() {
            sets.push(format!("model.checkpoint={}", fixture.display()));
            sets.push("tokenizer=bytes".into()); // the fixture has 512 embeddings
        }
        let mut args = vec![
            "train".to_string(),
            "--config".into(),
            format!("configs/{name}"),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s);
        }
        let out = Command::new(common::trainer_bin())
            .current_dir(&root)
            .args(&args)
            .output()
            .unwrap();
        assert_ok(&out);
        let run = dir.join("runs").join(config["name"].as_str().unwrap());
        let rows = metrics(&run);
        assert_eq!(rows.len(), 3, "{name}: row 0 and two steps");
        for r in &rows[1..] {
            assert!(r[2].parse::<f64>().unwrap().is_finite(), "{name}: {r:?}");
        }
        assert!(
            run.join("checkpoints/step-2/model.safetensors").is_file(),
            "{name}"
        );
        assert!(run.join("loss.png").is_file(), "{name}");
    }
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
