//! The run directory (DESIGN.md "Run directory"): `config.json`, `metrics.csv`,
//! `fp8_stats.csv`, `log.txt`, `loss.png` / `loss.svg`, `checkpoints/`.
//!
//! On resume, the CSV files keep only rows up to the checkpoint's step (a killed run may have
//! logged steps after its last checkpoint), so the files read as if the run had never stopped.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::TrainError;

/// Header of `metrics.csv`.
pub const METRICS_HEADER: &str =
    "step,tokens,train_loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s";
/// Header of `fp8_stats.csv`.
pub const FP8_STATS_HEADER: &str = "step,layer,role,amax,bias,underflow_frac,saturated_frac";

/// One row of `metrics.csv`; `None` is an empty cell (not measured at that step).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsRow {
    pub step: u64,
    pub tokens: u64,
    pub train_loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: f64,
}

impl MetricsRow {
    fn to_csv(&self) -> String {
        fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        format!(
            "{},{},{},{},{},{},{},{:.3}",
            self.step,
            self.tokens,
            cell(self.train_loss),
            cell(self.val_loss),
            // f32: the precision the optimizer uses; shortest round-trip form.
            cell(self.lr.map(|v| v as f32)),
            cell(self.grad_norm.map(|v| v as f32)),
            cell(self.tokens_per_s.map(|t| format!("{t:.1}"))),
            self.elapsed_s
        )
    }

    fn from_csv(line: &str) -> Option<Self> {
        let c: Vec<&str> = line.split(',').collect();
        if c.len() != 8 {
            return None;
        }
        let opt = |s: &str| if s.is_empty() { None } else { s.parse().ok() };
        Some(Self {
            step: c[0].parse().ok()?,
            tokens: c[1].parse().ok()?,
            train_loss: opt(c[2]),
            val_loss: opt(c[3]),
            lr: c[4].parse().ok(),
            grad_norm: c[5].parse().ok(),
            tokens_per_s: c[6].parse().ok(),
            elapsed_s: c[7].parse().ok()?,
        })
    }
}

/// Open files of a run.
pub struct RunDir {
    pub root: PathBuf,
    metrics: File,
    fp8_stats: File,
    log: File,
    /// Every metrics row of the run (for the plot).
    pub rows: Vec<MetricsRow>,
}

impl RunDir {
    /// Opens `root`; fresh runs truncate the files, resumed runs keep rows up to `resume_step`.
    pub fn open(root: &Path, resume_step: Option<u64>) -> Result<Self, TrainError> {
        fs::create_dir_all(root).map_err(TrainError::io(root))?;
        let metrics_path = root.join("metrics.csv");
        let stats_path = root.join("fp8_stats.csv");
        let (kept_metrics, kept_stats) = match resume_step {
            Some(step) => (
                keep_rows_up_to(&metrics_path, step)?,
                keep_rows_up_to(&stats_path, step)?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let metrics = rewrite(&metrics_path, METRICS_HEADER, &kept_metrics)?;
        let fp8_stats = rewrite(&stats_path, FP8_STATS_HEADER, &kept_stats)?;
        let log_path = root.join("log.txt");
        let log = OpenOptions::new()
            .create(true)
            .append(resume_step.is_some())
            .write(true)
            .truncate(resume_step.is_none())
            .open(&log_path)
            .map_err(TrainError::io(&log_path))?;
        let rows = kept_metrics
            .iter()
            .filter_map(|l| MetricsRow::from_csv(l))
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            metrics,
            fp8_stats,
            log,
            rows,
        })
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Appends a metrics row (flushed: a killed run keeps every row it wrote).
    pub fn metrics_row(&mut self, row: MetricsRow) -> Result<(), TrainError> {
        writeln!(self.metrics, "{}", row.to_csv())
            .and_then(|_| self.metrics.flush())
            .map_err(TrainError::io(self.root.join("metrics.csv")))?;
        self.rows.push(row);
        Ok(())
    }

    /// Appends `fp8_stats.csv` rows (already formatted, without the newline).
    pub fn fp8_rows(&mut self, lines: &[String]) -> Result<(), TrainError> {
        for line in lines {
            writeln!(self.fp8_stats, "{line}")
                .map_err(TrainError::io(self.root.join("fp8_stats.csv")))?;
        }
        self.fp8_stats
            .flush()
            .map_err(TrainError::io(self.root.join("fp8_stats.csv")))
    }

    /// Appends a line to `log.txt`.
    pub fn log(&mut self, line: &str) -> Result<(), TrainError> {
        writeln!(self.log, "{line}")
            .and_then(|_| self.log.flush())
            .map_err(TrainError::io(self.root.join("log.txt")))
    }
}

/// The data lines of a CSV whose first column (step) is <= `step`.
fn keep_rows_up_to(path: &Path, step: u64) -> Result<Vec<String>, TrainError> {
    let Ok(file) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    for line in BufReader::new(file).lines().skip(1) {
        let line = line.map_err(TrainError::io(path))?;
        let row_step = line.split(',').next().and_then(|s| s.parse::<u64>().ok());
        if row_step.is_some_and(|s| s <= step) {
            kept.push(line);
        }
    }
    Ok(kept)
}

fn rewrite(path: &Path, header: &str, lines: &[String]) -> Result<File, TrainError> {
    let mut f = File::create(path).map_err(TrainError::io(path))?;
    writeln!(f, "{header}").map_err(TrainError::io(path))?;
    for line in lines {
        writeln!(f, "{line}").map_err(TrainError::io(path))?;
    }
    f.flush().map_err(TrainError::io(path))?;
    Ok(f)
}

/// The rows of a run's `metrics.csv` (empty if it has none).
pub fn read_metrics(run: &Path) -> Vec<MetricsRow> {
    fs::read_to_string(run.join("metrics.csv"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(MetricsRow::from_csv)
        .collect()
}

/// Writes the resolved job config to `root/config.json` (a temporary file, then renamed) and
/// returns what differs from the one already there, as `key.sub: old -> new` lines (for a
/// resumed run whose settings were changed).
pub fn write_resolved_config(
    root: &Path,
    job: &crate::job::JobConfig,
) -> Result<Vec<String>, TrainError> {
    let path = root.join("config.json");
    let new = serde_json::to_value(job).expect("config serialises");
    let old: Option<serde_json::Value> = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut changes = Vec::new();
    if let Some(old) = &old {
        diff_json("", old, &new, &mut changes);
    }
    let staging = root.join(".config.json.tmp");
    let text = serde_json::to_string_pretty(&new).expect("config serialises") + "\n";
    fs::write(&staging, text).map_err(TrainError::io(&staging))?;
    fs::rename(&staging, &path).map_err(TrainError::io(&path))?;
    Ok(changes)
}

/// Leaf differences between two JSON values, by dotted key.
fn diff_json(key: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                let missing = Value::Null;
                diff_json(
                    &sub,
                    a.get(k).unwrap_or(&missing),
                    b.get(k).unwrap_or(&missing),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{key}: {a} -> {b}")),
        _ => {}
    }
}
