//! Data parallelism in one process: one peer per device of the job's `devices`, each a thread
//! with its own copy of the model and of AdamW's moments, joined by burn-collective.
//!
//! Peer 0 is the job's own thread ([`super::Run`]): it reads every batch from the one data
//! loader (the job's `batch_size` times the peers), keeps rows `0..batch_size` and sends each
//! other peer its rows, so the data position, and with it resume, is exactly one device's.
//! Every peer runs the forward/backward of its rows; the loss and the gradients are summed
//! over the peers in one all-reduce (each peer's loss weighted by its part of the batch's loss
//! tokens, so the sum is the whole batch's mean), and every FP8 activation and gradient cast
//! takes the peers' largest amax (fp8-backend's [`fp8_backend::peers`]), so the step computes
//! what one device computes on the whole batch, up to f32 summation order. Peer 0 alone
//! decides what the step does (non-finite check, clipping); the others follow its word and
//! apply the same AdamW update, so the weights stay identical. Evaluation, metrics and
//! checkpoints are peer 0's.
//!
//! A peer that fails (a panic) ends the process with exit code 1 and a message naming it:
//! the others would wait for it forever. Checkpoints are written to a temporary folder and
//! renamed, so none is left half written.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use burn_communication::Address;
use datasets::DataLoader;
use fp8_backend::peers::CollectiveAmax;
use fp8_backend::{AmaxReducer, Fp8, Fp8Kernels};

use super::optimizer::{AdamW, AdamWStep};
use super::step::{self, GradReducer, Share, StepGrads, StepOptions};
use crate::device::{DeviceBackend, TrainBackend};
use crate::error::Exit;
use crate::job::{JobConfig, NodesConfig};
use crate::model::Model;

/// Test-only: `PEER:K` makes peer `PEER` (1 or more: peer 0 is the job's own thread) panic at
/// the `K`-th step this process runs, to exercise the failure path.
pub const INJECT_PEER_PANIC_ENV: &str = "FP8_TRAINER_INJECT_PEER_PANIC";

/// burn-collective keeps one group per backend type per process: one data-parallel job at a
/// time (tests run jobs on several threads).
static ONE_GROUP: Mutex<()> = Mutex::new(());

/// How the nodes all-reduce.
const GLOBAL_STRATEGY: AllReduceStrategy = AllReduceStrategy::Tree(2);

/// The peers of a job: this process's devices and, on several machines, this node's place.
pub struct Group<D> {
    /// This process's devices, one peer each.
    pub devices: Vec<D>,
    /// The node group (`nodes` of the job); `None`: this process is the whole group.
    pub nodes: Option<NodesConfig>,
    /// What every node's job must agree on (see [`job_fingerprint`]).
    pub fingerprint: u64,
}

impl<D> Group<D> {
    /// Peers on every node.
    pub fn total(&self) -> usize {
        self.devices.len() * self.nodes.as_ref().map_or(1, |n| n.count as usize)
    }

    /// The slot (over every node) of local peer `peer`.
    fn slot(&self, peer: usize) -> usize {
        self.nodes.as_ref().map_or(0, |n| n.rank as usize) * self.devices.len() + peer
    }

    /// Whether there is anyone to share the work with.
    pub fn is_parallel(&self) -> bool {
        self.total() > 1
    }

    fn config(&self) -> CollectiveConfig {
        let config = CollectiveConfig::default().with_num_devices(self.devices.len());
        let Some(nodes) = &self.nodes else {
            return config;
        };
        let address = |a: &str| Address::from_str(a).expect("an address string");
        config
            .with_num_nodes(nodes.count)
            .with_global_address(address(&nodes.orchestrator))
            .with_node_address(address(&nodes.address))
            .with_data_service_port(nodes.data_port().expect("checked when the job was loaded"))
            .with_global_all_reduce_strategy(GLOBAL_STRATEGY)
    }
}

/// Where this node's tensor service listens (the host of `nodes.address`, not every interface)
/// and the group's shared secret, for burn-communication's servers and clients; the port must
/// be free (burn-collective would only report a node that never joined).
fn configure_network(nodes: &NodesConfig) -> Result<(), String> {
    let host = nodes.host().expect("checked when the job was loaded");
    let port = nodes.data_port().expect("checked when the job was loaded");
    std::net::TcpListener::bind((host, port)).map_err(|e| {
        format!(
            "nodes.address: this node cannot listen on {host}:{port} ({e}); give it a free \
             port of one of this machine's addresses"
        )
    })?;
    burn_communication::websocket::auth::set_bind_host(host.to_string());
    if let Some(file) = &nodes.secret_file {
        let secret =
            crate::job::spec::read_secret(file).map_err(|e| format!("nodes.secret_file: {e}"))?;
        burn_communication::websocket::auth::set_secret(secret);
    }
    Ok(())
}

/// A fingerprint of what must be the same on every node: the job without the settings that
/// are a node's own (`nodes.rank`, `nodes.address`, `nodes.secret_file`, `out_dir`, the
/// device indices).
pub fn job_fingerprint(job: &JobConfig) -> u64 {
    let mut value = serde_json::to_value(job).expect("a job serialises");
    if let Some(nodes) = value.get_mut("nodes").and_then(|n| n.as_object_mut()) {
        nodes.remove("rank");
        nodes.remove("address");
        // Where each node keeps the secret is its own; the secret itself is checked by the
        // handshake.
        nodes.remove("secret_file");
    }
    if let Some(object) = value.as_object_mut() {
        object.remove("out_dir");
        object.insert("devices".into(), serde_json::json!(job.devices.len()));
    }
    datasets::hash::fnv1a64(value.to_string().as_bytes())
}

/// The time peers spend in collective calls (waiting for the others included), and since when
/// the current call has been waiting (for the watchdog).
#[derive(Clone, Default)]
struct Stopwatch {
    spent_ns: Arc<AtomicU64>,
    /// Nanoseconds since `EPOCH` when the current call started; 0 outside calls.
    since_ns: Arc<AtomicU64>,
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64 + 1
}

impl Stopwatch {
    fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        self.since_ns.store(now_ns(), Ordering::Relaxed);
        let out = f();
        self.since_ns.store(0, Ordering::Relaxed);
        let nanos = start.elapsed().as_nanos() as u64;
        self.spent_ns.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    fn take_seconds(&self) -> f64 {
        self.spent_ns.swap(0, Ordering::Relaxed) as f64 * 1e-9
    }

    /// Seconds the current call has been waiting (0 outside calls).
    fn waiting_s(&self) -> f64 {
        match self.since_ns.load(Ordering::Relaxed) {
            0 => 0.0,
            since => now_ns().saturating_sub(since) as f64 * 1e-9,
        }
    }
}

/// A peer's side of the collective: the gradients' all-reduce (sum).
pub struct CollectiveSum {
    peer: usize,
    clock: Stopwatch,
}

/// An amax reducer that keeps the time its calls take.
struct TimedAmax<R> {
    inner: R,
    clock: Stopwatch,
}

impl<R: AmaxReducer> AmaxReducer for TimedAmax<R> {
    fn reduce_max(&self, amax: f32) -> f32 {
        self.clock.time(|| self.inner.reduce_max(amax))
    }
}

impl<B: Backend> GradReducer<B> for CollectiveSum {
    fn sum(&self, flat: Tensor<B, 1>) -> Tensor<B, 1> {
        self.clock
            .time(|| sum_over_peers(self.peer, flat, "the gradients' all-reduce"))
    }
}

/// `flat` summed over every peer of the group (burn-collective's all-reduce from local peer
/// `peer`); a failure panics naming `what`.
fn sum_over_peers<B: Backend>(peer: usize, flat: Tensor<B, 1>, what: &str) -> Tensor<B, 1> {
    let summed = burn_collective::all_reduce::<B>(
        PeerId::from(peer as u32),
        flat.into_primitive().tensor(),
        ReduceOperation::Sum,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{}: peer {peer}: {what}: {e:?}",
            fp8_backend::peers::COLLECTIVE_FAILED
        )
    });
    Tensor::from_primitive(TensorPrimitive::Float(summed))
}

/// What peer 0 tells another peer.
enum Command {
    /// Forward/backward of these micro-batch shares (and the all-reduce).
    Step {
        shares: Vec<Share>,
        /// Activation checkpointing, and the step's seed (see [`StepOptions`]).
        activation_checkpointing: bool,
        seed: u64,
    },
    /// Apply AdamW to the last step's gradients (absent when the step is skipped).
    Update {
        hyper: AdamWStep,
        grad_scale: f32,
    },
    Exit,
}

struct Worker {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// The other peers of a data-parallel job, driven by peer 0 (this process's first device).
pub struct Peers {
    workers: Vec<Worker>,
    /// Peers on every node, and the slot of this process's first.
    total: usize,
    first_slot: usize,
    /// Peer 0's reducers.
    pub amax: Arc<dyn AmaxReducer>,
    pub grads: CollectiveSum,
    /// Peer 0's time in collective calls.
    clock: Stopwatch,
    /// Tells the watchdog (multi-node jobs) to stop.
    watchdog: Option<Arc<AtomicBool>>,
    _group: MutexGuard<'static, ()>,
}

/// A node group whose jobs differ (exit code 2: the configs are the user's to fix).
#[derive(Debug)]
pub struct Mismatch(pub String);

impl Peers {
    /// Starts local peers `1..` with copies of peer 0's `model` and `optimizer` (and FP8 amax
    /// histories), each on its device, and registers every peer with burn-collective (and the
    /// node with the orchestrator: within `nodes.timeout_s`, or the process exits with code 1).
    /// Then the nodes compare their jobs' fingerprints.
    pub fn start<B: DeviceBackend>(
        model: &Model<TrainBackend<B>>,
        optimizer: &AdamW<Fp8<B>>,
        group: &Group<B::Device>,
    ) -> Result<Self, Mismatch>
    where
        B::Device: Send + Sync,
    {
        let lock = ONE_GROUP.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(nodes) = &group.nodes {
            configure_network(nodes).map_err(Mismatch)?;
        }
        let devices = &group.devices;
        let local = devices.len();
        let total = group.total();
        burn_collective::reset_collective::<Fp8<B>>();
        let clock = Stopwatch::default();
        let watchdog = group
            .nodes
            .as_ref()
            .map(|nodes| watch(nodes, clock.clone()));
        let inject = injected_panic();
        let workers = (1..local)
            .map(|peer| {
                let device = devices[peer].clone();
                let mut copy = model.clone().fork(&device);
                copy.set_fp8((*model.fp8().policy()).clone())
                    .expect("the policy already applied to this model");
                copy.fp8()
                    .restore_amax_histories(model.fp8().amax_histories());
                let mut moments = optimizer.clone();
                for slot in &mut moments.slots {
                    slot.m = slot.m.clone().to_device(&device);
                    slot.v = slot.v.clone().to_device(&device);
                }
                let (commands, inbox) = mpsc::channel();
                let panic_at = inject.filter(|(p, _)| *p == peer).map(|(_, step)| step);
                let place = Place {
                    peer,
                    slot: group.slot(peer),
                    total,
                    fingerprint: group.fingerprint,
                    nodes: group.nodes.as_ref().map(|n| n.count as usize),
                };
                let config = group.config();
                let thread = thread::Builder::new()
                    .name(format!("peer-{peer}"))
                    .spawn(move || {
                        let run = std::panic::AssertUnwindSafe(|| {
                            worker::<B>(place, config, device, copy, moments, inbox, panic_at)
                        });
                        if let Err(panic) = std::panic::catch_unwind(run) {
                            let what = panic
                                .downcast_ref::<String>()
                                .map(String::as_str)
                                .or(panic.downcast_ref::<&str>().copied())
                                .unwrap_or("a panic");
                            Exit::Failure.now(&format!(
                                "data-parallel peer {peer} failed ({what}); the other peers \
                                 would wait for it: stopping the job (the last checkpoint \
                                 stays)"
                            ));
                        }
                    })
                    .expect("a thread for a peer");
                Worker {
                    commands,
                    thread: Some(thread),
                }
            })
            .collect();
        let place = Place {
            peer: 0,
            slot: group.slot(0),
            total,
            fingerprint: group.fingerprint,
            nodes: group.nodes.as_ref().map(|n| n.count as usize),
        };
        let device = devices[0].clone();
        let mut peers = Self {
            workers,
            total,
            first_slot: place.slot,
            amax: Arc::new(TimedAmax {
                inner: CollectiveAmax::<Fp8<B>>::in_group(0, place.slot, total, device.clone()),
                clock: clock.clone(),
            }),
            grads: CollectiveSum {
                peer: 0,
                clock: clock.clone(),
            },
            clock,
            watchdog,
            _group: lock,
        };
        let joined = peers
            .clock
            .time(|| join::<B>(&place, group.config(), device));
        if let Err(mismatch) = joined {
            // The workers saw the same answer and have returned; `drop` joins them.
            for worker in &mut peers.workers {
                worker.commands = mpsc::channel().0;
            }
            return Err(mismatch);
        }
        if let Some(nodes) = &group.nodes {
            log::info!(
                "node {} of {} joined the group at {} ({} peers in all)",
                nodes.rank,
                nodes.count,
                nodes.orchestrator,
                total
            );
        }
        peers.clock.take_seconds();
        Ok(peers)
    }

    /// Peers, this process's (peer 0 included).
    pub fn count(&self) -> usize {
        self.workers.len() + 1
    }

    /// Sends each other local peer its shares of the step's micro-batches.
    fn send_step(&self, shares: Vec<Vec<Share>>, options: &StepOptions) {
        for (worker, shares) in self.workers.iter().zip(shares) {
            let command = Command::Step {
                shares,
                activation_checkpointing: options.activation_checkpointing,
                seed: options.seed,
            };
            send(worker, command);
        }
    }

    /// Every other local peer applies the same AdamW update as peer 0.
    pub fn send_update(&self, hyper: AdamWStep, grad_scale: f32) {
        for worker in &self.workers {
            send(worker, Command::Update { hyper, grad_scale });
        }
    }

    /// Seconds peer 0 spent in collective calls (the gradients' all-reduce and the FP8 amax
    /// reductions, waiting for the slowest peer included) since the last call.
    pub fn take_collective_seconds(&self) -> f64 {
        self.clock.take_seconds()
    }
}

/// One step's gradients from `grad_accum` batches of `loader`: on this device alone, or as
/// peer 0 of `peers` (every node reads the same batches), which keeps this process's rows of
/// each (its first peer's) and sends every other local peer its own; the loss and gradients
/// come back summed over all the peers.
pub fn step_gradients<B: DeviceBackend>(
    peers: Option<&Peers>,
    model: &Model<TrainBackend<B>>,
    loader: &mut DataLoader,
    options: &StepOptions,
    device: &B::Device,
) -> StepGrads<Fp8<B>> {
    let Some(peers) = peers else {
        let shares = (0..options.grad_accum)
            .map(|_| Share::whole(loader.next_batch()))
            .collect();
        return step::gradients(model, shares, options, device, None);
    };
    let mut mine = Vec::new();
    let mut theirs: Vec<Vec<Share>> = (1..peers.count()).map(|_| Vec::new()).collect();
    for _ in 0..options.grad_accum {
        let batch = loader.next_batch();
        let mut shares = Share::split(&batch, peers.total)
            .into_iter()
            .skip(peers.first_slot)
            .take(peers.count());
        mine.extend(shares.next());
        for (peer, share) in theirs.iter_mut().zip(shares) {
            peer.push(share);
        }
    }
    peers.send_step(theirs, options);
    // Only the step's casts are the peers' business: evaluations are peer 0's alone.
    model.fp8().set_amax_reducer(Some(peers.amax.clone()));
    let out = step::gradients(
        model,
        mine,
        options,
        device,
        Some(&peers.grads as &dyn GradReducer<Fp8<B>>),
    );
    model.fp8().set_amax_reducer(None);
    out
}

fn send(worker: &Worker, command: Command) {
    // A peer that is gone has already ended the process (see `Peers::start`).
    let _ = worker.commands.send(command);
}

impl Drop for Peers {
    fn drop(&mut self) {
        for worker in &self.workers {
            send(worker, Command::Exit);
        }
        if let Some(stop) = &self.watchdog {
            stop.store(true, Ordering::Relaxed);
        }
        if thread::panicking() {
            // The others may be waiting in a collective call for this thread: do not join them.
            return;
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// A peer's place in the group.
struct Place {
    /// Its id in this process.
    peer: usize,
    /// Its slot over every node, and the peers of every node.
    slot: usize,
    total: usize,
    fingerprint: u64,
    /// Nodes of a multi-node group.
    nodes: Option<usize>,
}

/// Registers the peer and checks that every node runs the same job: each node's first peer
/// puts the job's fingerprint (four 16-bit pieces, exact in f32) in its node's slots of one
/// all-reduce (sum).
fn join<B: Fp8Kernels>(
    place: &Place,
    config: CollectiveConfig,
    device: B::Device,
) -> Result<(), Mismatch> {
    if let Err(e) =
        burn_collective::register::<Fp8<B>>(PeerId::from(place.peer as u32), device.clone(), config)
    {
        // The orchestrator's refusals are the user's setup: said plainly (exit 2).
        let why = format!("{e:?}");
        let message = if why.contains("OrchestratorBusy") {
            "the orchestrator is serving another job whose nodes have all joined; it serves one \
             job at a time: start another orchestrator (another port) or wait for that job"
                .to_string()
        } else if why.contains("DoubleRegister") {
            "nodes.address: another node of this job registered with the same address; every \
             node needs its own `nodes.address`"
                .to_string()
        } else if why.contains("RegisterParamsMismatch") {
            "nodes.count: the orchestrator is gathering a job of another node count".to_string()
        } else {
            format!(
                "peer {}: registering with burn-collective failed: {why}",
                place.peer
            )
        };
        return Err(Mismatch(message));
    }
    let Some(nodes) = place.nodes else {
        return Ok(());
    };
    let local = place.total / nodes;
    let node = place.slot / local;
    // Per node: four 16-bit pieces of the fingerprint, and a count of the nodes with that rank
    // (two nodes given one rank would train the same rows and no node the others').
    const SLOTS: usize = 5;
    let mut pieces = vec![0.0f32; SLOTS * nodes];
    if place.peer == 0 {
        for k in 0..4 {
            pieces[SLOTS * node + k] = ((place.fingerprint >> (16 * k)) & 0xffff) as f32;
        }
        pieces[SLOTS * node + 4] = 1.0;
    }
    let len = pieces.len();
    let flat = Tensor::<Fp8<B>, 1>::from_data(TensorData::new(pieces, [len]), &device);
    let summed = sum_over_peers(place.peer, flat, "the job check's all-reduce");
    let all: Vec<f32> = summed.into_data().convert::<f32>().into_vec().expect("f32");
    let shared: Vec<String> = (0..nodes)
        .filter(|&n| all[SLOTS * n + 4] > 1.0)
        .map(|n| format!("rank {n} is given to {} nodes", all[SLOTS * n + 4]))
        .collect();
    if !shared.is_empty() {
        return Err(Mismatch(format!(
            "nodes.rank: {}; every node needs its own rank, 0 to nodes.count - 1",
            shared.join(", ")
        )));
    }
    let fingerprint =
        |n: usize| (0..4).fold(0u64, |f, k| f | ((all[SLOTS * n + k] as u64) << (16 * k)));
    let differ: Vec<String> = (0..nodes)
        .filter(|&n| fingerprint(n) != place.fingerprint)
        .map(|n| n.to_string())
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Mismatch(format!(
        "node(s) {} run a different job than this node ({}): every node needs the same config \
         except `nodes.rank`, `nodes.address`, `out_dir` and which devices",
        differ.join(", "),
        node
    )))
}

/// The multi-node watchdog: the process exits with code 1 when a collective call (joining the
/// group included) waits longer than `nodes.timeout_s`, so a node that never joins or dies
/// mid-run cannot hang the others. Returns the flag that stops it.
fn watch(nodes: &NodesConfig, clock: Stopwatch) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let limit = nodes.timeout_s as f64;
    let (rank, count) = (nodes.rank, nodes.count);
    thread::Builder::new()
        .name("node-watchdog".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let waited = clock.waiting_s();
                if waited > limit {
                    Exit::Failure.now(&format!(
                        "node {rank} of {count}: a collective call has waited {waited:.0} s \
                         (nodes.timeout_s = {limit:.0}): a node has not joined or has stopped; \
                         stopping the job (the last checkpoint stays)"
                    ));
                }
                thread::sleep(std::time::Duration::from_millis(200));
            }
        })
        .expect("a watchdog thread");
    stop
}

/// `FP8_TRAINER_INJECT_PEER_PANIC=peer:step`.
fn injected_panic() -> Option<(usize, u64)> {
    let text = std::env::var(INJECT_PEER_PANIC_ENV).ok()?;
    let (peer, step) = text.split_once(':')?;
    Some((peer.parse().ok()?, step.parse().ok()?))
}

/// A peer other than 0: runs what peer 0 sends until told to stop.
fn worker<B: DeviceBackend>(
    place: Place,
    config: CollectiveConfig,
    device: B::Device,
    model: Model<TrainBackend<B>>,
    mut optimizer: AdamW<Fp8<B>>,
    inbox: mpsc::Receiver<Command>,
    panic_at: Option<u64>,
) where
    B::Device: Send + Sync,
{
    if join::<B>(&place, config, device.clone()).is_err() {
        return; // peer 0 reports it
    }
    let peer = place.peer;
    model
        .fp8()
        .set_amax_reducer(Some(Arc::new(CollectiveAmax::<Fp8<B>>::in_group(
            peer,
            place.slot,
            place.total,
            device.clone(),
        ))));
    let grads = CollectiveSum {
        peer,
        clock: Stopwatch::default(),
    };
    let mut model = Some(model);
    let mut pending = None;
    let mut steps = 0u64;
    while let Ok(command) = inbox.recv() {
        match command {
            Command::Step {
                shares,
                activation_checkpointing,
                seed,
            } => {
                steps += 1;
                if panic_at == Some(steps) {
                    panic!("injected failure at step {steps} ({INJECT_PEER_PANIC_ENV})");
                }
                let current = model.as_ref().expect("the model between steps");
                // Statistics and the test-only loss factor are peer 0's.
                let options = StepOptions {
                    grad_accum: shares.len(),
                    stats: false,
                    loss_factor: None,
                    activation_checkpointing,
                    seed,
                };
                let out = step::gradients(
                    current,
                    shares,
                    &options,
                    &device,
                    Some(&grads as &dyn GradReducer<Fp8<B>>),
                );
                pending = Some(out.grads);
            }
            Command::Update { hyper, grad_scale } => {
                let grads = pending.take().expect("an update follows a step");
                let coefficients = optimizer.begin_step(hyper, grad_scale);
                let current = model.take().expect("the model between steps");
                model = Some(step::apply_adamw(
                    current,
                    &mut optimizer,
                    grads,
                    &coefficients,
                ));
            }
            Command::Exit => break,
        }
    }
}
