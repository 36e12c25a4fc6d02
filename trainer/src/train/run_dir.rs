//! The run directory (docs/design.md, "Run directory"): `config.json`, `metrics.csv` and the
//! same rows as `metrics.jsonl`, `fp8_stats.csv`, `log.txt`, `loss.png` / `loss.svg`,
//! `checkpoints/`.
//!
//! On resume, the CSV files keep only rows up to the checkpoint's step (a killed run may have
//! logged steps after its last checkpoint), so the files read as if the run had never stopped.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use datasets::atomic::{write_atomic, AtomicFile};
use serde::Deserialize;

use super::lock::open_no_follow;
use crate::error::Error;
use crate::logging::{tee_to, TeeGuard};

/// Columns of `metrics.csv`.
pub const METRICS_HEADER: [&str; 9] = [
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
    "val_accuracy",
];
/// Columns of `fp8_stats.csv`.
pub const FP8_STATS_HEADER: [&str; 7] = [
    "step",
    "layer",
    "role",
    "amax",
    "bias",
    "underflow_frac",
    "saturated_frac",
];

/// `metrics.jsonl`: one JSON object per `metrics.csv` row, every column named, for tools that
/// tail a running job.
pub const METRICS_JSONL: &str = "metrics.jsonl";

/// One row of `metrics.csv`; `None` is an empty cell (not measured at that step).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub tokens: u64,
    pub train_loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: f64,
    /// Classification data: the fraction of validation examples whose gold label word scores
    /// highest. (Absent from files written before the column existed.)
    #[serde(default)]
    pub val_accuracy: Option<f64>,
}

impl MetricsRow {
    /// The cells as written: losses as f32 and lr / grad norm in the f32 the optimizer uses
    /// (shortest round-trip forms), tokens/s to 0.1, elapsed time to the millisecond.
    fn cells(&self) -> [String; 9] {
        fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        [
            self.step.to_string(),
            self.tokens.to_string(),
            cell(self.train_loss),
            cell(self.val_loss),
            cell(self.lr.map(|v| v as f32)),
            cell(self.grad_norm.map(|v| v as f32)),
            cell(self.tokens_per_s.map(|t| format!("{t:.1}"))),
            format!("{:.3}", self.elapsed_s),
            cell(self.val_accuracy),
        ]
    }

    /// The row as a `metrics.jsonl` line: the CSV cells as JSON numbers under their column
    /// names, an empty cell (not measured) or a non-finite one (JSON has no NaN) as `null`.
    pub fn json_line(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = METRICS_HEADER
            .iter()
            .zip(self.cells())
            .map(|(name, cell)| {
                let value = serde_json::from_str::<serde_json::Number>(&cell)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null);
                (name.to_string(), value)
            })
            .collect();
        serde_json::Value::Object(object).to_string() + "\n"
    }
}

/// One row of `fp8_stats.csv`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Fp8StatsRow {
    pub step: u64,
    /// Hugging Face module name of the layer (`h.1.mlp.c_fc`).
    pub layer: String,
    /// `weight`, `activation` or `gradient`.
    pub role: String,
    pub amax: f32,
    pub bias: i32,
    pub underflow_frac: f32,
    pub saturated_frac: f32,
}

impl Fp8StatsRow {
    /// The row of one cast of step `step`.
    pub fn of(step: u64, record: &fp8_backend::QuantRecord) -> Self {
        Self {
            step,
            layer: record.layer.to_string(),
            role: record.role.to_string(),
            amax: record.stats.amax,
            bias: record.stats.bias,
            underflow_frac: record.stats.underflow_frac,
            saturated_frac: record.stats.saturated_frac,
        }
    }

    fn cells(&self) -> [String; 7] {
        [
            self.step.to_string(),
            self.layer.clone(),
            self.role.clone(),
            self.amax.to_string(),
            self.bias.to_string(),
            self.underflow_frac.to_string(),
            self.saturated_frac.to_string(),
        ]
    }
}

/// The open files of a run. While it lives, log lines also go to `log.txt`.
pub struct RunDir {
    pub root: PathBuf,
    metrics: csv::Writer<File>,
    metrics_jsonl: File,
    fp8_stats: csv::Writer<File>,
    _log: TeeGuard,
    /// Every metrics row of the run (for the plot).
    pub rows: Vec<MetricsRow>,
    /// Every `fp8_stats.csv` row of the run (for the telemetry plot).
    pub stats: Vec<Fp8StatsRow>,
}

impl RunDir {
    /// Opens `root`; fresh runs start the files empty, resumed runs keep rows up to `resume_step`.
    pub fn open(root: &Path, resume_step: Option<u64>) -> Result<Self, Error> {
        fs::create_dir_all(root).map_err(Error::io(root))?;
        let metrics_path = root.join("metrics.csv");
        let stats_path = root.join("fp8_stats.csv");
        let (rows, stats) = match resume_step {
            Some(step) => (
                read_rows::<MetricsRow>(&metrics_path)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .collect(),
                read_rows::<Fp8StatsRow>(&stats_path)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let metrics = rewrite(
            &metrics_path,
            &METRICS_HEADER,
            rows.iter().map(MetricsRow::cells),
        )?;
        let metrics_jsonl = rewrite_jsonl(&root.join(METRICS_JSONL), &rows)?;
        let fp8_stats = rewrite(
            &stats_path,
            &FP8_STATS_HEADER,
            stats.iter().map(Fp8StatsRow::cells),
        )?;
        let log_path = root.join("log.txt");
        let log = match resume_step {
            // Appended to: never through a symbolic link planted in its place.
            Some(_) => open_no_follow(&log_path, OpenOptions::new().create(true).append(true))?,
            // A fresh, empty file replaces whatever is there (a link is replaced, not followed).
            None => AtomicFile::create(&log_path)
                .and_then(AtomicFile::commit_keep_open)
                .map_err(Error::io(&log_path))?,
        };
        Ok(Self {
            root: root.to_path_buf(),
            metrics,
            metrics_jsonl,
            fp8_stats,
            _log: tee_to(log),
            rows,
            stats,
        })
    }

    /// Appends a metrics row (flushed: a killed run keeps every row it wrote).
    pub fn metrics_row(&mut self, row: MetricsRow) -> Result<(), Error> {
        let path = self.root.join("metrics.csv");
        append(&mut self.metrics, &[row.cells()], &path)?;
        let path = self.root.join(METRICS_JSONL);
        (self.metrics_jsonl.write_all(row.json_line().as_bytes())).map_err(Error::io(&path))?;
        self.rows.push(row);
        Ok(())
    }

    /// Fills in the validation loss (and accuracy) of the row of `step` (an evaluation done
    /// after a resume), rewriting `metrics.csv`.
    pub fn set_val_loss(
        &mut self,
        step: u64,
        val_loss: f32,
        val_accuracy: Option<f64>,
    ) -> Result<(), Error> {
        if let Some(row) = self.rows.iter_mut().rev().find(|r| r.step == step) {
            row.val_loss = Some(val_loss);
            row.val_accuracy = val_accuracy;
        }
        let path = self.root.join("metrics.csv");
        self.metrics = rewrite(
            &path,
            &METRICS_HEADER,
            self.rows.iter().map(MetricsRow::cells),
        )?;
        self.metrics_jsonl = rewrite_jsonl(&self.root.join(METRICS_JSONL), &self.rows)?;
        Ok(())
    }

    /// Appends `fp8_stats.csv` rows.
    pub fn fp8_rows(&mut self, rows: &[Fp8StatsRow]) -> Result<(), Error> {
        let cells: Vec<[String; 7]> = rows.iter().map(Fp8StatsRow::cells).collect();
        append(
            &mut self.fp8_stats,
            &cells,
            &self.root.join("fp8_stats.csv"),
        )?;
        self.stats.extend_from_slice(rows);
        Ok(())
    }
}

fn append<const N: usize>(
    writer: &mut csv::Writer<File>,
    rows: &[[String; N]],
    path: &Path,
) -> Result<(), Error> {
    let io = |e: csv::Error| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    for row in rows {
        writer.write_record(row).map_err(io)?;
    }
    writer.flush().map_err(Error::io(path))
}

/// Writes an `fp8_stats.csv`-style file with `rows` (atomically).
pub fn write_fp8_stats(path: &Path, rows: &[Fp8StatsRow]) -> Result<(), Error> {
    rewrite(path, &FP8_STATS_HEADER, rows.iter().map(Fp8StatsRow::cells)).map(drop)
}

/// Replaces `path` (atomically) with the header and `rows`, and opens it for appending.
fn rewrite<const N: usize>(
    path: &Path,
    header: &[&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> Result<csv::Writer<File>, Error> {
    let mut bytes = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    bytes.write_record(header).map_err(io)?;
    for row in rows {
        bytes.write_record(&row).map_err(io)?;
    }
    let bytes = bytes.into_inner().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    // Kept open from the atomic write: appended to without opening the path again.
    let mut out = AtomicFile::create(path).map_err(Error::io(path))?;
    out.write_all(&bytes).map_err(Error::io(path))?;
    let file = out.commit_keep_open().map_err(Error::io(path))?;
    Ok(csv::Writer::from_writer(file))
}

/// Replaces `path` (atomically) with `rows` as JSON lines, and opens it for appending.
fn rewrite_jsonl(path: &Path, rows: &[MetricsRow]) -> Result<File, Error> {
    let mut out = AtomicFile::create(path).map_err(Error::io(path))?;
    for row in rows {
        out.write_all(row.json_line().as_bytes())
            .map_err(Error::io(path))?;
    }
    out.commit_keep_open().map_err(Error::io(path))
}

/// Removes what writers killed or failed mid-write left in the run directory `root`: atomic
/// writes' temporaries (`.NAME.XXXXXX.tmp`) in it, and unfinished or retired checkpoint folders
/// (`checkpoints/.step-N.tmp`, `.step-N.old`). Called with the run's lock held.
pub fn remove_leftovers(root: &Path) -> Result<(), Error> {
    let removed = datasets::atomic::remove_stale_temporaries(root).map_err(Error::io(root))?;
    if removed > 0 {
        log::info!(
            "{}: removed {removed} temporary file(s) of interrupted writes",
            root.display()
        );
    }
    super::checkpoints::remove_unfinished_checkpoints(&root.join("checkpoints"))
}

/// The rows of a CSV file written by this module (none when the file does not exist).
pub fn read_rows<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, Error> {
    let file = match datasets::input::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    csv::Reader::from_reader(file)
        .deserialize()
        .enumerate()
        .map(|(i, row)| {
            row.map_err(|e| Error::BadFile {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 2),
            })
        })
        .collect()
}

/// The rows of a run's `metrics.csv`.
pub fn read_metrics(run: &Path) -> Result<Vec<MetricsRow>, Error> {
    read_rows(&run.join("metrics.csv"))
}

/// Writes the resolved job config to `root/config.json` (atomically) and returns what differs
/// from the one already there, as `key.sub: old -> new` lines (for a resumed run whose settings
/// were changed).
pub fn write_resolved_config(
    root: &Path,
    job: &crate::job::JobConfig,
) -> Result<Vec<String>, Error> {
    let path = root.join("config.json");
    let new = serde_json::to_value(job).expect("config serialises");
    let old: Option<serde_json::Value> =
        datasets::input::read_text_limited(&path, datasets::input::CONFIG_LIMIT, "job config")
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    let mut changes = Vec::new();
    if let Some(old) = &old {
        diff_json("", old, &new, &mut changes);
    }
    let text = serde_json::to_string_pretty(&new).expect("config serialises") + "\n";
    write_atomic(&path, text.as_bytes()).map_err(Error::io(&path))?;
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
