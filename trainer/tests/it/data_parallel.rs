//! Data parallelism on the CPU: `"devices": ["cpu", "cpu"]` runs two peers (threads joined by
//! burn-collective), each on half of every batch. Two peers of 4 rows must train what one
//! device of 8 rows trains, in fp32 and fp8-amax (and a Llama in fp8-amax), also on chat data whose halves hold different
//! numbers of loss tokens; a peer that fails must stop the job with exit code 1; two processes
//! joined through the orchestrator train what two peers of one process train, and refuse each
//! other when their jobs differ or time out when one never joins. (A resumed two-peer run:
//! resume.rs.)

use std::path::Path;

use serde_json::{json, Value};

use crate::common;
use crate::common::jobs::{assert_ok, exact, metrics, scratch, tiny_job, train, write_config};

/// Relative tolerance on losses and gradient norms between 2 peers x 4 rows and 1 device x 8.
/// The peers' sum of two half-batch gradients adds the same terms as one device's GEMM in
/// another order (and the weighted loss, `0.5 * mean(4 rows)` twice, rounds differently from
/// `mean(8 rows)`): f32 rounding, grown by AdamW's normalised update over the steps. Measured
/// here: at most 5e-7 after 6 steps (fp8-amax grad norm); a peer whose AdamW update is left out
/// moves the step-2 loss by 7e-3, an unweighted share loss doubles it.
///
/// (The peers' amax reduction makes no visible difference on this data: LM windows of one
/// corpus give both halves amaxes whose power-of-two scales keep the same FP8 values in the
/// normal range; measured without it, the same 5e-7. `fp8-backend/tests/it/peers.rs` shows it on
/// rows whose magnitudes differ by 1e4.)
pub(crate) const PEER_TOLERANCE: f64 = 1e-5;

/// The same for the Llama job. Its first three steps agree exactly; then AdamW's normalised
/// update turns f32 rounding in near-zero gradient elements into whole-step differences, and the
/// gradient norm drifts faster than GPT-2's (measured: 9e-7 at step 4, 8e-6 at step 5, 2.8e-5 at
/// step 6; losses within 1.6e-6). What the tolerance guards against is far larger: a peer without
/// its AdamW update, or an unweighted share, moves the step-2 loss by 7e-3 (the GPT-2 job's).
const LLAMA_PEER_TOLERANCE: f64 = 1e-4;
/// The Llama job's final weights (measured: 3.0e-5 apart after 6 steps; one AdamW update moves
/// an element by up to 2 * lr = 6e-3).
const LLAMA_WEIGHT_TOLERANCE: f32 = 1e-4;

/// Largest |difference| allowed between the final weights of the two runs (weights are O(0.1);
/// measured: 1.2e-6, the same f32 rounding as above).
pub(crate) const WEIGHT_TOLERANCE: f32 = 1e-5;

pub(crate) fn job(dir: &Path, name: &str, mode: &str, peers: usize) -> Value {
    let mut job = tiny_job(dir, name);
    job["precision"] = json!({"mode": mode, "stats_every": 3});
    job["steps"] = json!(6);
    job["eval_every"] = json!(3);
    job["checkpoint_every"] = json!(3);
    job["batch_size"] = json!(8 / peers);
    if peers > 1 {
        job["devices"] = json!(vec!["cpu"; peers]);
    }
    job
}

pub(crate) fn run(dir: &Path, job: &Value) -> Vec<Vec<String>> {
    let name = job["name"].as_str().unwrap();
    let path = write_config(dir, &format!("{name}.json"), job);
    let out = train(&path, &[], &[]);
    assert_ok(&out);
    metrics(&dir.join("runs").join(name))
}

/// `step, tokens, train_loss, val_loss, lr, grad_norm` of two runs agree: integers and the
/// learning rate exactly, the others to `PEER_TOLERANCE`.
fn assert_same_training(peers: &[Vec<String>], one: &[Vec<String>]) {
    assert_same_training_to(peers, one, PEER_TOLERANCE)
}

/// [`assert_same_training`] to `tolerance`.
pub(crate) fn assert_same_training_to(peers: &[Vec<String>], one: &[Vec<String>], tolerance: f64) {
    assert_eq!(peers.len(), one.len(), "rows");
    for (p, o) in peers.iter().zip(one) {
        assert_eq!(
            [&p[0], &p[1], &p[4]],
            [&o[0], &o[1], &o[4]],
            "step, tokens, lr"
        );
        for col in [2, 3, 5] {
            match (p[col].parse::<f64>(), o[col].parse::<f64>()) {
                (Ok(a), Ok(b)) => {
                    let rel = (a - b).abs() / b.abs().max(1e-12);
                    assert!(
                        rel < tolerance,
                        "step {} column {col}: {a} vs {b} ({rel:e})",
                        p[0]
                    );
                }
                _ => assert_eq!(p[col], o[col], "step {} column {col}", p[0]),
            }
        }
    }
}

fn final_weights(dir: &Path, name: &str) -> Vec<trainer::checkpoint::NamedTensor> {
    common::read_tensors(&dir.join(format!("runs/{name}/checkpoints/step-6/model.safetensors")))
}

/// The tiny job's model as a Llama (4 query heads sharing 2 key/value heads).
fn as_llama(mut job: Value) -> Value {
    job["model"] = json!({"preset": "llama-tiny", "init_seed": 7, "vocab_size": 257,
        "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48});
    job
}

/// Two peers of 4 rows against one device of 8 on `family`'s job: metrics to `tolerance`,
/// final weights to `weight_tolerance`.
fn two_peers_equal_one_device(
    mode: &str,
    family: fn(Value) -> Value,
    tag: &str,
    (tolerance, weight_tolerance): (f64, f32),
) {
    let dir = scratch(&format!("dp-{mode}{tag}"));
    let one = run(&dir, &family(job(&dir, "one", mode, 1)));
    let two = run(&dir, &family(job(&dir, "two", mode, 2)));
    println!("one device: {one:?}\ntwo peers: {two:?}");
    assert_same_training_to(&two, &one, tolerance);
    // The step did move the weights, and both runs moved them alike.
    let (a, b) = (final_weights(&dir, "two"), final_weights(&dir, "one"));
    let mut worst = 0.0f32;
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.name, b.name);
        for (x, y) in a.values.iter().zip(&b.values) {
            worst = worst.max((x - y).abs());
        }
    }
    println!("{mode}: largest weight difference {worst:e}");
    assert!(
        worst < weight_tolerance,
        "{mode}: weights differ by {worst}"
    );
    let log = std::fs::read_to_string(dir.join("runs/two/log.txt")).unwrap();
    assert!(
        log.contains("2 data-parallel peers (cpu:0, cpu:0) of 4 rows each"),
        "{log}"
    );
    // Both runs sample FP8 statistics (stats_every 3): the log says whose they are.
    let says_whose = log.contains("fp8_stats.csv describes peer 0's casts");
    assert_eq!(says_whose, mode != "fp32", "{log}");
}

#[test]
fn two_peers_of_four_rows_train_what_one_device_of_eight_trains_fp32() {
    two_peers_equal_one_device("fp32", |job| job, "", (PEER_TOLERANCE, WEIGHT_TOLERANCE));
}

#[test]
fn two_peers_of_four_rows_train_what_one_device_of_eight_trains_fp8_amax() {
    two_peers_equal_one_device(
        "fp8-amax",
        |job| job,
        "",
        (PEER_TOLERANCE, WEIGHT_TOLERANCE),
    );
}

#[test]
fn two_peers_of_a_llama_train_what_one_device_trains_fp8_amax() {
    let tolerances = (LLAMA_PEER_TOLERANCE, LLAMA_WEIGHT_TOLERANCE);
    two_peers_equal_one_device("fp8-amax", as_llama, "-llama", tolerances);
}

/// A peer that fails ends the job with exit code 1 and a message naming it; the checkpoint
/// before it stays whole.
#[test]
fn a_failing_peer_stops_the_job_with_exit_code_1() {
    let dir = scratch("dp-fail");
    let job = job(&dir, "failing", "fp32", 2);
    let path = write_config(&dir, "failing.json", &job);
    let out = train(&path, &[], &[("FP8_TRAINER_INJECT_PEER_PANIC", "1:5")]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("data-parallel peer 1 failed"), "{said}");
    let checkpoints = dir.join("runs/failing/checkpoints");
    assert!(checkpoints
        .join("step-3/trainer_state/state.json")
        .is_file());
    assert!(!checkpoints.join("step-6").exists());
    // And the job resumes from it.
    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    assert_eq!(metrics(&dir.join("runs/failing")).last().unwrap()[0], "6");
}

/// Chat data puts the loss on the assistant tokens only, so the two halves of a batch hold
/// different numbers of loss tokens: each peer's loss must count by its loss tokens (a plain
/// mean of the peers' means would train something else).
#[test]
fn peers_weigh_their_rows_by_loss_tokens_on_chat_data() {
    let dir = scratch("dp-chat");
    let chat_job = |name: &str, peers: usize| {
        let mut job = job(&dir, name, "fp32", peers);
        job["model"]["n_positions"] = json!(96);
        job["data"] = json!({
            "train": common::repo_root().join("datasets/data/chat_example/train.jsonl"),
            "validation": {"fraction": 0.1}, "seq_len": 96, "shuffle": true, "seed": 3,
            "cache_dir": dir.join("cache"),
            "chat": {"template": "chatml", "loss": "assistant"}
        });
        job
    };
    let one = run(&dir, &chat_job("one", 1));
    let two = run(&dir, &chat_job("two", 2));
    println!("one device: {one:?}\ntwo peers: {two:?}");
    assert_same_training(&two, &one);
}

/// Free TCP ports on the loopback address (bound, read, released).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Every network wait of these tests is bounded: a process still running after this is killed
/// and the test fails.
pub(crate) const PROCESS_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `fp8-trainer orchestrator --port PORT`, killed when dropped.
pub(crate) struct Orchestrator(pub(crate) std::process::Child);

impl Orchestrator {
    pub(crate) fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// The orchestrator on `port` with more arguments (`--secret-file FILE`).
    pub(crate) fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = std::process::Command::new(common::trainer_bin())
            .args(["orchestrator", "--port", &port.to_string()])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `train --config` for each config at once; their outputs, each within `PROCESS_LIMIT`.
pub(crate) fn train_together(configs: &[std::path::PathBuf]) -> Vec<std::process::Output> {
    let children: Vec<std::process::Child> = configs
        .iter()
        .map(|config| {
            std::process::Command::new(common::trainer_bin())
                .args(["train", "--config"])
                .arg(config)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + PROCESS_LIMIT;
    children
        .into_iter()
        .map(|mut child| {
            while child.try_wait().unwrap().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("a node ran past {PROCESS_LIMIT:?}");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            child.wait_with_output().unwrap()
        })
        .collect()
}

/// Node `rank` of two, with one peer, joined through the orchestrator on `ports[0]`; each
/// node writes its own run directory (`runs-<rank>`).
pub(crate) fn node_job(dir: &Path, ports: [u16; 3], rank: usize, timeout_s: u64) -> Value {
    let mut job = job(dir, "nodes", "fp8-amax", 2);
    job["devices"] = json!(["cpu"]);
    job["out_dir"] = json!(dir.join(format!("runs-{rank}")));
    job["nodes"] = json!({
        "count": 2, "rank": rank, "timeout_s": timeout_s,
        "orchestrator": format!("ws://127.0.0.1:{}", ports[0]),
        "address": format!("ws://127.0.0.1:{}", ports[1 + rank]),
    });
    job
}

/// The configs of both nodes of [`node_job`] (each through `edit`), written as
/// `{name}-{rank}.json` in `dir`.
pub(crate) fn node_configs(
    dir: &Path,
    ports: [u16; 3],
    timeout_s: u64,
    edit: impl Fn(&mut Value),
) -> Vec<std::path::PathBuf> {
    (0..2)
        .map(|rank| {
            let mut job = node_job(dir, ports, rank, timeout_s);
            edit(&mut job);
            let name = job["name"].as_str().unwrap().to_string();
            write_config(dir, &format!("{name}-{rank}.json"), &job)
        })
        .collect()
}

pub(crate) fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Two processes joined by burn-collective's global orchestrator on the loopback address (one
/// peer each) train what one process with two peers trains, and each writes the same metrics.
#[test]
fn two_nodes_on_loopback_train_what_two_peers_of_one_process_train() {
    let dir = scratch("dp-nodes");
    let local = run(&dir, &job(&dir, "local", "fp8-amax", 2));
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    let outs = train_together(&node_configs(&dir, ports, 60, |_| {}));
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", said(out));
    }
    assert!(
        said(&outs[1]).contains("node 1 of 2 joined the group"),
        "{}",
        said(&outs[1])
    );
    let node0 = metrics(&dir.join("runs-0/nodes"));
    let node1 = metrics(&dir.join("runs-1/nodes"));
    println!("one process: {local:?}\nnode 0: {node0:?}");
    assert_same_training(&node0, &local);
    assert_eq!(
        exact(&node0),
        exact(&node1),
        "both nodes log the same training"
    );
}

/// A node whose partner never joins stops with exit code 1 once `nodes.timeout_s` has passed,
/// instead of waiting forever.
#[test]
fn a_node_whose_partner_never_joins_stops_with_exit_code_1() {
    let dir = scratch("dp-alone");
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    let config = write_config(&dir, "node0.json", &node_job(&dir, ports, 0, 3));
    let started = std::time::Instant::now();
    let out = train_together(&[config]).remove(0);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("has waited"), "{}", said(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// Nodes whose jobs differ (here the learning rate) are refused when they join: exit code 2,
/// naming `nodes`.
#[test]
fn nodes_running_different_jobs_are_refused_when_they_join() {
    let dir = scratch("dp-mismatch");
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    let mut other = node_job(&dir, ports, 1, 60);
    other["optimizer"]["lr"] = json!(0.001);
    let configs = [
        write_config(&dir, "node0.json", &node_job(&dir, ports, 0, 60)),
        write_config(&dir, "node1.json", &other),
    ];
    for out in train_together(&configs) {
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(said(&out).contains("run a different job"), "{}", said(&out));
        assert!(said(&out).contains("field `nodes`"), "{}", said(&out));
    }
}
