//! `eval --precisions ... --cscale-biases ...`: the FP8 inference table (the paper's claim 2 in
//! small). Each row must be what a single `eval` of that recipe gives, "kept" must be the
//! row's own arithmetic against the baseline's, and the usable CSCALE range the widest run of
//! biases that keep >= 99.5%.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common;
use crate::common::jobs::*;

/// The paper's criterion (report.rs `KEPT_FRACTION`).
const KEPT: f64 = 0.995;

/// A tiny fp32 model trained for 12 steps on the sonnets; its last checkpoint.
fn trained(dir: &Path) -> PathBuf {
    let mut job = tiny_job(dir, "table");
    job["precision"] = json!({"mode": "fp32"});
    let path = write_config(dir, "table.json", &job);
    assert_ok(&train(&path, &[], &[]));
    dir.join("runs/table/checkpoints/step-12")
}

/// `fp8-trainer eval` with `args` (and `--out`), run in `dir`; the JSON it wrote.
fn eval(dir: &Path, checkpoint: &Path, args: &[&str], out: &str) -> Value {
    let out = dir.join(out);
    let run = fp8_trainer(
        &[
            &["eval", "--checkpoint", checkpoint.to_str().unwrap()],
            args,
            &["--out", out.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_ok(&run);
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// The widest run of consecutive passing biases (sorted), the lowest on a tie.
fn widest(points: &[(i64, bool)]) -> Option<[i64; 2]> {
    let (mut best, mut start): (Option<(usize, [i64; 2])>, Option<usize>) = (None, None);
    for (i, &(bias, passes)) in points.iter().enumerate() {
        if !passes {
            start = None;
            continue;
        }
        let first = *start.get_or_insert(i);
        if best.is_none_or(|(len, _)| i - first + 1 > len) {
            best = Some((i - first + 1, [points[first].0, bias]));
        }
    }
    best.map(|(_, r)| r)
}

/// Checks a table's "kept" column and CSCALE range against its own values (`metric`:
/// `accuracy` or `perplexity`).
fn check_arithmetic(table: &Value, metric: &str) -> Vec<(String, f64)> {
    let recipes = table["recipes"].as_array().unwrap();
    let value = |r: &Value| r[metric].as_f64().unwrap();
    let base = value(&recipes[0]);
    let mut kept_of = Vec::new();
    let mut points = Vec::new();
    for r in recipes {
        let kept = match metric {
            "accuracy" => value(r) / base,
            _ => base / value(r),
        };
        let reported = r["kept"].as_f64().unwrap();
        assert!(
            (reported - kept).abs() < 1e-12,
            "{r}: kept {reported} vs {kept}"
        );
        kept_of.push((r["recipe"].as_str().unwrap().to_string(), kept));
        if let Some(bias) = r["cscale_bias"].as_i64() {
            points.push((bias, kept >= KEPT));
        }
    }
    points.sort();
    let range = table["cscale"]["usable_range"]
        .as_array()
        .map(|a| [a[0].as_i64().unwrap(), a[1].as_i64().unwrap()]);
    assert_eq!(range, widest(&points), "{table}");
    kept_of
}

#[test]
fn inference_table_rows_equal_single_evals_and_its_arithmetic_holds() {
    let dir = scratch("inference-table");
    let checkpoint = trained(&dir);
    let sonnets = sonnets();
    let data = [
        "--data",
        &sonnets,
        "--tokenizer",
        "bytes",
        "--seq-len",
        "32",
        "--max-batches",
        "3",
    ];
    let table = eval(
        &dir,
        &checkpoint,
        &[
            &data[..],
            &[
                "--precisions",
                "fp32,fp8-amax,fp8-amax-ocp",
                "--cscale-biases=-30,-2,0,3,31",
            ],
        ]
        .concat(),
        "table.json",
    );
    let recipes = table["recipes"].as_array().unwrap();
    let names: Vec<&str> = recipes
        .iter()
        .map(|r| r["recipe"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fp32",
            "fp8-amax",
            "fp8-amax-ocp",
            "fp8-cscale-b-30",
            "fp8-cscale-b-2",
            "fp8-cscale-b0",
            "fp8-cscale-b3",
            "fp8-cscale-b31"
        ]
    );
    assert_eq!(recipes[2]["family"], "ocp");
    // Rows equal single evaluations of the same recipe (same batches, same model).
    for (row, precision) in [(0, "fp32"), (1, "fp8-amax"), (5, "fp8-cscale")] {
        let single = eval(
            &dir,
            &checkpoint,
            &[&data[..], &["--precision", precision]].concat(),
            &format!("single-{precision}.json"),
        );
        assert_eq!(recipes[row]["loss"], single["loss"], "{precision}");
        assert_eq!(recipes[row]["tokens"], single["tokens"], "{precision}");
    }
    let kept = check_arithmetic(&table, "perplexity");
    // FP8 is on in the FP8 rows; a bias of -30 flushes every projection operand to zero and
    // one of +31 (the largest a job takes) saturates them: both outside the usable range (this
    // barely trained model loses only ~5% of 1 / perplexity without its projections).
    assert!(kept[1].1 != 1.0 && kept[1].1 > KEPT, "{kept:?}");
    assert!(kept[3].1 < KEPT && kept[7].1 < KEPT, "{kept:?}");
    assert_eq!(table["cscale"]["metric"], "val_perplexity");
    let printed = fp8_trainer(
        &[
            &["eval", "--checkpoint", checkpoint.to_str().unwrap()],
            &data[..],
            &["--cscale-biases=-30,0"],
        ]
        .concat(),
    );
    assert_ok(&printed);
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(
        stdout.contains("| fp32 |") && stdout.contains("| fp8-cscale-b-30 |"),
        "{stdout}"
    );
}

#[test]
fn inference_table_on_classification_data_keeps_accuracy() {
    let dir = scratch("inference-table-cls");
    let checkpoint = trained(&dir);
    let root = common::repo_root();
    let mut job = tiny_job(&dir, "cls");
    job["data"] = json!({
        "train": root.join("datasets/data/author/train.tsv"),
        "validation": {"paths": root.join("datasets/data/author/validation.tsv")},
        "seq_len": 32,
        "cache_dir": dir.join("cache"),
        "csv": {"template": "{sentence}\n:", "verbalizer": {"0": "S", "1": "M"}}
    });
    let config = write_config(&dir, "cls.json", &job);
    let table = eval(
        &dir,
        &checkpoint,
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-batches",
            "4",
            "--cscale-biases=-30,0",
        ],
        "cls.json",
    );
    assert_eq!(
        table["recipes"][0]["recipe"], "fp32",
        "the default baseline"
    );
    assert_eq!(table["cscale"]["metric"], "val_accuracy");
    assert_eq!(table["recipes"][0]["examples"], 32, "4 batches of 8");
    check_arithmetic(&table, "accuracy");
}
