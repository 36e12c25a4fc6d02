//! `fp8-trainer compare`, the loss-parity experiment: each precision trains the same job, the
//! runs' final losses and their gap are in `summary.csv` (FP8-AMAX within a few hundredths of a
//! nat of fp32 after 30 steps); as a sweep (`--seeds`, `--cscale-biases`) the numbers of
//! `report.json` are the statistics of the runs' own `metrics.csv`, and a second sweep reuses
//! every finished run, continues an unfinished one and refuses a run of another config. (The
//! report's CSCALE range and separation step on hand-made rows: unit tests of
//! `trainer/src/commands/compare/report.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::common;
use crate::common::jobs::*;

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

/// report.json against the same statistics recomputed here in f64 from the metrics.csv cells.
/// The report widens each f32 loss to f64, the test parses its shortest decimal form: the two
/// differ by at most half an f32 ulp (2.4e-7 at 4 nats), and means, spreads and gaps of two
/// such numbers by about twice that; 1e-6 is above that and far below the effects a wrong
/// formula has (a population instead of a sample std changes it by 29% with two seeds, an
/// unpaired gap or a wrong denominator by more than the gap itself, 1e-4 to 1e-2 here).
const REPORT_TOL: f64 = 1e-6;

/// `fp8-trainer compare ARGS` on `config`; its output.
fn compare(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["compare", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    fp8_trainer(&all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The non-empty cells of column `col` of a run's metrics.csv, as numbers, by step.
fn column(run: &Path, col: usize) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter(|r| !r[col].is_empty())
        .map(|r| (r[0].parse().unwrap(), r[col].parse().unwrap()))
        .collect()
}

const VAL_LOSS: usize = 3;
const TOKENS_PER_S: usize = 6;
const VAL_ACCURACY: usize = 8;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n - 1).
fn sample_std(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

fn last(v: &[(u64, f64)]) -> f64 {
    v.last().unwrap().1
}

/// The upper median (the report's: index n / 2 of the sorted values).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn close(what: &str, got: &Value, want: f64) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!(
        (got - want).abs() <= REPORT_TOL,
        "{what}: report {got}, recomputed {want} (diff {:e})",
        got - want
    );
}

/// `{mean, std, min, max}` of a report spread against `values`.
fn check_spread(what: &str, spread: &Value, values: &[f64]) {
    close(&format!("{what} mean"), &spread["mean"], mean(values));
    close(&format!("{what} std"), &spread["std"], sample_std(values));
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    close(&format!("{what} min"), &spread["min"], min);
    close(&format!("{what} max"), &spread["max"], max);
    assert_eq!(spread["n"], json!(values.len()), "{what}");
}

/// The report entry of `recipe`.
fn entry<'a>(report: &'a Value, recipe: &str) -> &'a Value {
    report["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipe"] == recipe)
        .unwrap_or_else(|| panic!("{recipe} in {report}"))
}

/// The first step after 0 at which |mean a - mean b| > range a + range b (the report's
/// definition), over the steps where every run has a validation loss.
fn separation(a: &[PathBuf], b: &[PathBuf]) -> Option<u64> {
    let runs: Vec<Vec<(u64, f64)>> = a.iter().chain(b).map(|r| column(r, VAL_LOSS)).collect();
    let steps: Vec<u64> = runs[0].iter().map(|(s, _)| *s).filter(|&s| s > 0).collect();
    let at = |run: &[(u64, f64)], step| run.iter().find(|(s, _)| *s == step).map(|p| p.1);
    steps.into_iter().find(|&step| {
        let values: Option<Vec<f64>> = runs.iter().map(|r| at(r, step)).collect();
        let Some(values) = values else { return false };
        let (va, vb) = values.split_at(a.len());
        let range = |v: &[f64]| {
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                - v.iter().copied().fold(f64::INFINITY, f64::min)
        };
        (mean(va) - mean(vb)).abs() > range(va) + range(vb)
    })
}

/// The fixture GPT fine-tuned on the shipped author lines (classification: validation accuracy
/// at every evaluation), 6 steps.
fn classification_job(dir: &Path, name: &str) -> Value {
    let author = common::repo_root().join("datasets/data/author");
    let mut job = tiny_job(dir, name);
    job["model"] = json!({"checkpoint": common::fixture_dir()});
    job["data"] = json!({
        "train": author.join("train.tsv"),
        "validation": {"paths": author.join("validation.tsv")},
        "seq_len": 64, "shuffle": true, "seed": 5, "cache_dir": dir.join("cache"),
        "csv": {"template": "Line: {sentence}\nAuthor:",
                "verbalizer": {"0": " Shakespeare", "1": " Milton"}}
    });
    job["optimizer"] = json!({"lr": 0.01});
    job["steps"] = json!(6);
    job["eval_every"] = json!(3);
    job["eval_batches"] = json!(4);
    job["checkpoint_every"] = json!(0);
    job
}

#[test]
fn the_report_is_the_statistics_of_the_runs_own_metrics() {
    let dir = scratch("sweep-report");
    let path = write_config(&dir, "cls.json", &classification_job(&dir, "cls"));
    let out = compare(
        &path,
        &[
            "--precisions",
            "fp32,fp8-amax",
            "--cscale-biases",
            "-2,2",
            "--seeds",
            "1,2",
            "--log-y",
        ],
    );
    assert_ok(&out);
    let runs = dir.join("runs");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("cls-compare/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["baseline"], "fp32");
    assert_eq!(report["seeds"], json!([1, 2]));
    let recipes = ["fp32", "fp8-amax", "fp8-cscale-b-2", "fp8-cscale-b2"];
    let run_dirs = |recipe: &str| -> Vec<PathBuf> {
        [1, 2]
            .map(|s| runs.join(format!("cls-{recipe}-s{s}")))
            .into()
    };

    // Each run is its recipe with its seed.
    for recipe in recipes {
        for (seed, run) in [1, 2].into_iter().zip(run_dirs(recipe)) {
            let config: Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                    .unwrap();
            let seeds = (
                &config["seed"],
                &config["data"]["seed"],
                &config["model"]["init_seed"],
            );
            assert_eq!(seeds, (&json!(seed), &json!(seed), &json!(seed)), "{run:?}");
            let bias = recipe
                .strip_prefix("fp8-cscale-b")
                .map(|b| b.parse::<i32>().unwrap());
            if let Some(bias) = bias {
                assert_eq!(config["precision"]["mode"], "fp8-cscale");
                assert_eq!(config["precision"]["cscale_bias"], json!(bias));
            }
        }
    }

    let final_of = |recipe: &str, col| -> Vec<f64> {
        run_dirs(recipe)
            .iter()
            .map(|r| last(&column(r, col)))
            .collect()
    };
    let base_loss = final_of("fp32", VAL_LOSS);
    let base_accuracy = final_of("fp32", VAL_ACCURACY);
    for recipe in recipes {
        let r = entry(&report, recipe);
        let finals = final_of(recipe, VAL_LOSS);
        check_spread(
            &format!("{recipe} final val loss"),
            &r["final_val_loss"],
            &finals,
        );
        let bests: Vec<f64> = (run_dirs(recipe).iter())
            .map(|run| {
                let vals = column(run, VAL_LOSS);
                vals.iter().map(|p| p.1).fold(f64::INFINITY, f64::min)
            })
            .collect();
        check_spread(
            &format!("{recipe} best val loss"),
            &r["best_val_loss"],
            &bests,
        );
        let ppl: Vec<f64> = finals.iter().map(|l| l.exp()).collect();
        check_spread(
            &format!("{recipe} perplexity"),
            &r["final_val_perplexity"],
            &ppl,
        );
        let accuracies = final_of(recipe, VAL_ACCURACY);
        check_spread(
            &format!("{recipe} accuracy"),
            &r["final_val_accuracy"],
            &accuracies,
        );
        // Gaps: paired by seed, then the mean.
        let gaps: Vec<f64> = finals.iter().zip(&base_loss).map(|(v, b)| v - b).collect();
        let relative: Vec<f64> = gaps.iter().zip(&base_loss).map(|(g, b)| g / b).collect();
        close(&format!("{recipe} gap"), &r["val_gap"], mean(&gaps));
        close(
            &format!("{recipe} relative gap"),
            &r["val_gap_relative"],
            mean(&relative),
        );
        let acc_gaps: Vec<f64> = (accuracies.iter().zip(&base_accuracy))
            .map(|(v, b)| v - b)
            .collect();
        close(
            &format!("{recipe} accuracy gap"),
            &r["val_accuracy_gap"],
            mean(&acc_gaps),
        );
        // Their standard errors: the per-seed gaps' sample sd over sqrt(seeds).
        let se = |v: &[f64]| sample_std(v) / (v.len() as f64).sqrt();
        for (what, key, values) in [
            ("gap", "val_gap_se", &gaps),
            ("relative gap", "val_gap_relative_se", &relative),
            ("accuracy gap", "val_accuracy_gap_se", &acc_gaps),
        ] {
            close(&format!("{recipe} {what} se"), &r[key], se(values));
        }
        let speeds: Vec<f64> = (run_dirs(recipe).iter())
            .map(|run| median(column(run, TOKENS_PER_S).iter().map(|p| p.1).collect()))
            .collect();
        close(
            &format!("{recipe} tokens/s"),
            &r["tokens_per_s"],
            mean(&speeds),
        );
        if recipe != "fp32" {
            let want = separation(&run_dirs(recipe), &run_dirs("fp32"))
                .map_or(json!("never"), |step| json!({"at_step": step}));
            assert_eq!(r["separation"], want, "{recipe}");
        }
    }
    assert_eq!(entry(&report, "fp32")["separation"], "baseline");
    let amax = entry(&report, "fp8-amax");
    println!(
        "fp8-amax - fp32 over two seeds: {:+.5} nats ({:+.4}%), curves separate: {}",
        amax["val_gap"].as_f64().unwrap(),
        100.0 * amax["val_gap_relative"].as_f64().unwrap(),
        amax["separation"]
    );

    // The CSCALE criterion on accuracy: each bias keeps mean accuracy / the baseline's.
    let cscale = &report["cscale"];
    assert_eq!(cscale["metric"], "val_accuracy");
    let mut passing = Vec::new();
    for (point, (bias, recipe)) in cscale["points"]
        .as_array()
        .unwrap()
        .iter()
        .zip([(-2, "fp8-cscale-b-2"), (2, "fp8-cscale-b2")])
    {
        assert_eq!(point["bias"], json!(bias));
        let kept = mean(&final_of(recipe, VAL_ACCURACY)) / mean(&base_accuracy);
        close(&format!("{recipe} kept"), &point["kept"], kept);
        assert_eq!(point["passes"], json!(kept >= 0.995), "{point}");
        if kept >= 0.995 {
            passing.push(bias);
        }
    }
    // Two points: the range is both, one, or none.
    let range = match passing.as_slice() {
        [] => Value::Null,
        [one] => json!([one, one]),
        _ => json!([-2, 2]),
    };
    assert_eq!(cscale["usable_range"], range);

    // The other outputs: one summary line per run, the report's tables, both plot panels.
    let compare_dir = runs.join("cls-compare");
    let summary = std::fs::read_to_string(compare_dir.join("summary.csv")).unwrap();
    let lines: Vec<&str> = summary.lines().collect();
    assert!(lines[0].ends_with(",recipe,seed"), "{summary}");
    assert_eq!(lines.len(), 1 + 8, "{summary}");
    assert!(
        lines[7].ends_with(",fp8-cscale-b2,1"),
        "recipe-major order: {summary}"
    );
    let md = std::fs::read_to_string(compare_dir.join("report.md")).unwrap();
    for needle in [
        "## Definitions",
        "## Validation accuracy",
        "Usable range",
        "99.5%",
    ] {
        assert!(md.contains(needle), "`{needle}` in report.md:\n{md}");
    }
    let svg = std::fs::read_to_string(compare_dir.join("loss.svg")).unwrap();
    assert!(
        svg.contains("fp8-cscale-b-2 - fp32"),
        "the gap panel is labelled"
    );
    assert!(compare_dir.join("loss.png").is_file());
    assert!(stdout(&out).contains("over 2 seeds"), "{}", stdout(&out));
}

/// Modification time and bytes of every run's metrics.csv.
fn snapshot(runs: &[PathBuf]) -> Vec<(SystemTime, Vec<u8>)> {
    runs.iter()
        .map(|r| {
            let path = r.join("metrics.csv");
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            (mtime, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn a_second_sweep_reuses_finished_runs_resumes_unfinished_ones_and_refuses_other_configs() {
    let dir = scratch("sweep-reuse");
    let mut job = tiny_job(&dir, "lm");
    job["steps"] = json!(8);
    job["checkpoint_every"] = json!(4);
    let path = write_config(&dir, "lm.json", &job);
    let args = ["--precisions", "fp32,fp8-amax", "--seeds", "1,2"];
    let first = compare(&path, &args);
    assert_ok(&first);
    assert!(!stdout(&first).contains("reused"), "{}", stdout(&first));
    let runs: Vec<PathBuf> = ["fp32-s1", "fp32-s2", "fp8-amax-s1", "fp8-amax-s2"]
        .map(|r| dir.join(format!("runs/lm-{r}")))
        .into();
    let before = snapshot(&runs);

    // The same sweep again: nothing trains, nothing in the runs changes.
    let second = compare(&path, &args);
    assert_ok(&second);
    assert!(
        stdout(&second).contains("reused 4 run(s)"),
        "{}",
        stdout(&second)
    );
    assert!(snapshot(&runs) == before, "reused runs are not touched");

    // An unfinished run (its last checkpoint gone: stopped at step 4) is continued, exactly.
    let unfinished = &runs[3];
    std::fs::remove_dir_all(unfinished.join("checkpoints/step-8")).unwrap();
    let third = compare(&path, &args);
    assert_ok(&third);
    let said = stdout(&third);
    assert!(said.contains("reused 3 run(s)"), "{said}");
    assert!(
        said.contains(&format!("resumed 1 run(s): {}", unfinished.display())),
        "{said}"
    );
    assert!(unfinished.join("checkpoints/step-8").is_dir());
    let resumed = metrics(unfinished);
    let original: Vec<Vec<String>> = String::from_utf8_lossy(&before[3].1)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(
        exact(&resumed),
        exact(&original),
        "the resumed run's metrics"
    );
    assert!(
        snapshot(&runs[..3]) == before[..3],
        "the finished runs are not touched"
    );

    // Another config (a changed learning rate) is refused, naming the run, before any training.
    let before = snapshot(&runs);
    let changed = compare(
        &path,
        &[&args[..], &["--set", "optimizer.lr=0.002"][..]].concat(),
    );
    assert_eq!(changed.status.code(), Some(2), "{}", stderr(&changed));
    let err = stderr(&changed);
    assert!(
        err.contains(&runs[0].display().to_string()) && err.contains("optimizer.lr"),
        "{err}"
    );
    assert!(err.contains("--overwrite"), "{err}");
    assert!(snapshot(&runs) == before, "nothing trained");
}
