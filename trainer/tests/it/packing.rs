//! Packed examples (`data.packing`) end to end on the shipped conversations: a packed job
//! trains, states its padding share at the start (and an unpacked one what packing would
//! leave), evaluates the initial model to the unpacked job's validation loss (each example
//! attends to itself only, at its own positions, so the loss is the same sum over the same loss
//! tokens), and trains the same with activation checkpointing, bit for bit. (Packed logits,
//! loss and gradients against each example alone: `trainer/src/model/segments.rs`.)

use std::path::Path;

use serde_json::{json, Value};

use crate::common;
use crate::common::jobs::*;

/// Step 0's validation loss, packed against unpacked: the same f32 log-probabilities up to
/// the attention's summation order (the model test measures 3.6e-7 on logits), summed over
/// other batches (a mean of batch means weighted by loss tokens). Packed rows run as plain
/// ones (every example seeing the ones before it) move it by 5e-4 here, although the initial
/// model's loss is near uniform (ln 257).
const VAL_LOSS_REL_TOL: f64 = 1e-5;

/// A 4-step fp32 job on the shipped conversations (ChatML, byte tokens), `packing` or not,
/// whose step-0 evaluation covers the whole validation split.
fn chat_job(dir: &Path, name: &str, packing: bool) -> Value {
    let mut job = tiny_job(dir, name);
    job["model"]["n_positions"] = json!(256);
    job["data"] = json!({
        "train": common::repo_root().join("datasets/data/chat_example"),
        "validation": {"fraction": 0.1}, "seq_len": 256, "shuffle": true, "seed": 3,
        "packing": packing, "chat": {"template": "chatml"}, "cache_dir": dir.join("cache")
    });
    job["precision"] = json!({"mode": "fp32"});
    job["steps"] = json!(4);
    job["eval_every"] = json!(4);
    job["eval_batches"] = json!(1000);
    job["checkpoint_every"] = json!(4);
    job
}

fn run(dir: &Path, job: &Value) -> (Vec<Vec<String>>, String) {
    let name = job["name"].as_str().unwrap();
    let path = write_config(dir, &format!("{name}.json"), job);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs").join(name);
    (metrics(&run), read(&run.join("log.txt")))
}

/// The `data:` line of a run's log.
fn data_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("data: "))
        .unwrap_or_else(|| panic!("no data line in {log}"))
}

#[test]
fn a_packed_chat_job_trains_states_its_padding_and_evaluates_to_the_unpacked_loss() {
    let dir = scratch("packing");
    let (packed, packed_log) = run(&dir, &chat_job(&dir, "packed", true));
    let (plain, plain_log) = run(&dir, &chat_job(&dir, "plain", false));
    let (packed_line, plain_line) = (data_line(&packed_log), data_line(&plain_log));
    println!("{packed_line}\n{plain_line}");
    assert!(packed_line.contains("packed into"), "{packed_line}");
    assert!(
        plain_line.contains("data.packing would take"),
        "{plain_line}"
    );
    // Both state the same two shares: packed, less padding.
    let shares = |line: &str| -> Vec<f64> {
        line.split_whitespace()
            .filter_map(|w| w.trim_end_matches([',', ')']).strip_suffix('%'))
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let (p, u) = (shares(packed_line), shares(plain_line));
    assert_eq!((p[0], p[1]), (u[1], u[0]), "{packed_line} / {plain_line}");
    assert!(p[0] < p[1], "{packed_line}");
    // The initial model's validation loss (step 0, val_loss) is the unpacked one's.
    let (a, b) = (&packed[0][3], &plain[0][3]);
    assert!(rel(a, b) < VAL_LOSS_REL_TOL, "val loss {a} packed vs {b}");
    // Training losses are finite and the job trained.
    let losses: Vec<f64> = packed[1..]
        .iter()
        .filter(|r| !r[2].is_empty())
        .map(|r| r[2].parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 4);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert_ne!(losses[0], losses[3]);
    // `tokens` counts real tokens, not window positions: below 4 steps x 4 rows x 256 for both
    // (both pad), and more for the packed job, whose windows hold more of the data.
    let tokens = |m: &[Vec<String>]| -> u64 { m.last().unwrap()[1].parse().unwrap() };
    let (tp, tu) = (tokens(&packed), tokens(&plain));
    println!(
        "tokens after 4 steps: packed {tp}, unpacked {tu}, positions {}",
        4 * 4 * 256
    );
    assert!(tu < tp && tp < 4 * 4 * 256, "packed {tp}, unpacked {tu}");
}

#[test]
fn packed_training_with_activation_checkpointing_is_bit_for_bit_the_same() {
    let dir = scratch("packing-ac");
    let (plain, _) = run(&dir, &chat_job(&dir, "plain", true));
    let mut checkpointed = chat_job(&dir, "checkpointed", true);
    checkpointed["activation_checkpointing"] = json!(true);
    let (checkpointed, log) = run(&dir, &checkpointed);
    assert!(log.contains("activation checkpointing"), "{log}");
    assert_eq!(exact(&checkpointed), exact(&plain), "metrics");
    let weights = |name: &str| {
        std::fs::read(dir.join(format!("runs/{name}/checkpoints/step-4/model.safetensors")))
            .unwrap()
    };
    assert!(
        weights("plain") == weights("checkpointed"),
        "weights differ"
    );
}

#[test]
fn packing_language_model_data_exits_2_naming_the_config_and_the_field() {
    let dir = scratch("packing-lm");
    let mut job = tiny_job(&dir, "lm");
    job["data"]["packing"] = json!(true);
    let path = write_config(&dir, "lm.json", &job);
    let out = train(&path, &[], &[]);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    let config = path.display().to_string();
    for wanted in [config.as_str(), "`packing`", "remove `data.packing`"] {
        assert!(message.contains(wanted), "{wanted:?} not in: {message}");
    }
    assert!(!dir.join("runs/lm").exists(), "a refused job writes no run");
}

/// Two data-parallel peers on packed batches: each peer computes its own windows padding-free
/// (rows of different lengths on the two peers), and the step is the one-device step's, to the
/// peers' tolerance (their gradient sums add in another order).
#[test]
fn two_peers_train_packed_batches_as_one_device_does() {
    let dir = scratch("packing-peers");
    let one = chat_job(&dir, "one", true);
    let mut two = chat_job(&dir, "two", true);
    two["devices"] = json!(["cpu", "cpu"]);
    two["batch_size"] = json!(2);
    let (one, _) = run(&dir, &one);
    let (two, two_log) = run(&dir, &two);
    assert!(two_log.contains("data-parallel"), "{two_log}");
    crate::data_parallel::assert_same_training_to(&two, &one, crate::data_parallel::PEER_TOLERANCE);
}
