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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use datasets::DataLoader;
use fp8_backend::peers::CollectiveAmax;
use fp8_backend::{AmaxReducer, Fp8, Fp8Kernels};

use super::optimizer::{AdamW, AdamWStep};
use super::step::{self, GradReducer, Share, StepGrads};
use crate::host::HostTensors;
use crate::job::assemble::TrainBackend;
use crate::model::Gpt2;

/// Test-only: `PEER:K` makes peer `PEER` (1 or more: peer 0 is the job's own thread) panic at
/// the `K`-th step this process runs, to exercise the failure path.
pub const INJECT_PEER_PANIC_ENV: &str = "FP8_TRAINER_INJECT_PEER_PANIC";

/// Backends whose devices a job names by index (`cuda:1`).
pub trait PeerDevice: Backend {
    /// Device `index` of this backend (the CPU backends have one device: every index is it).
    fn device_at(index: usize) -> Self::Device;
}

impl PeerDevice for Flex {
    fn device_at(_index: usize) -> FlexDevice {
        FlexDevice
    }
}

impl PeerDevice for NdArray<f32> {
    fn device_at(_index: usize) -> NdArrayDevice {
        NdArrayDevice::Cpu
    }
}

#[cfg(feature = "wgpu")]
impl PeerDevice for burn::backend::Wgpu {
    fn device_at(index: usize) -> burn::backend::wgpu::WgpuDevice {
        use burn::backend::wgpu::WgpuDevice;
        match index {
            0 => WgpuDevice::default(),
            i => WgpuDevice::DiscreteGpu(i),
        }
    }
}

#[cfg(feature = "cuda")]
impl PeerDevice for burn::backend::Cuda {
    fn device_at(index: usize) -> burn::backend::cuda::CudaDevice {
        burn::backend::cuda::CudaDevice::new(index)
    }
}

/// burn-collective keeps one group per backend type per process: one data-parallel job at a
/// time (tests run jobs on several threads).
static ONE_GROUP: Mutex<()> = Mutex::new(());

/// Nanoseconds spent in collective calls (waiting for the other peers included).
#[derive(Clone, Default)]
struct Stopwatch(Arc<AtomicU64>);

impl Stopwatch {
    fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let out = f();
        let nanos = start.elapsed().as_nanos() as u64;
        self.0.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    fn take_seconds(&self) -> f64 {
        self.0.swap(0, Ordering::Relaxed) as f64 * 1e-9
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
        let summed = self
            .clock
            .time(|| {
                burn_collective::all_reduce::<B>(
                    PeerId::from(self.peer as u32),
                    flat.into_primitive().tensor(),
                    ReduceOperation::Sum,
                )
            })
            .unwrap_or_else(|e| {
                panic!(
                    "peer {}: the gradients' all-reduce failed: {e:?}",
                    self.peer
                )
            });
        Tensor::from_primitive(TensorPrimitive::Float(summed))
    }
}

/// What peer 0 tells another peer.
enum Command {
    /// Forward/backward of these micro-batch shares (and the all-reduce).
    Step {
        shares: Vec<Share>,
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

/// The other peers of a data-parallel job, driven by peer 0.
pub struct Peers {
    workers: Vec<Worker>,
    /// Peer 0's reducers.
    pub amax: Arc<dyn AmaxReducer>,
    pub grads: CollectiveSum,
    /// Peer 0's time in collective calls.
    clock: Stopwatch,
    _group: MutexGuard<'static, ()>,
}

impl Peers {
    /// Starts peers `1..devices.len()` with copies of peer 0's `model` and `optimizer` (and
    /// FP8 amax histories), each on its device, and registers every peer with burn-collective.
    pub fn start<B: Fp8Kernels + HostTensors + PeerDevice>(
        model: &Gpt2<TrainBackend<B>>,
        optimizer: &AdamW<Fp8<B>>,
        devices: &[B::Device],
    ) -> Self
    where
        B::Device: Send + Sync,
    {
        let group = ONE_GROUP.lock().unwrap_or_else(|e| e.into_inner());
        let peers = devices.len();
        burn_collective::reset_collective::<Fp8<B>>();
        let inject = injected_panic();
        let workers = (1..peers)
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
                let thread = thread::Builder::new()
                    .name(format!("peer-{peer}"))
                    .spawn(move || {
                        let run = std::panic::AssertUnwindSafe(|| {
                            worker::<B>(peer, peers, device, copy, moments, inbox, panic_at)
                        });
                        if let Err(panic) = std::panic::catch_unwind(run) {
                            let what = panic
                                .downcast_ref::<String>()
                                .map(String::as_str)
                                .or(panic.downcast_ref::<&str>().copied())
                                .unwrap_or("a panic");
                            log::error!(
                                "data-parallel peer {peer} failed ({what}); the other peers \
                                 would wait for it: stopping the job (the last checkpoint \
                                 stays)"
                            );
                            std::process::exit(1);
                        }
                    })
                    .expect("a thread for a peer");
                Worker {
                    commands,
                    thread: Some(thread),
                }
            })
            .collect();
        register::<B>(0, peers, devices[0].clone());
        let clock = Stopwatch::default();
        Self {
            workers,
            amax: Arc::new(TimedAmax {
                inner: CollectiveAmax::<Fp8<B>>::new(0, peers, devices[0].clone()),
                clock: clock.clone(),
            }),
            grads: CollectiveSum {
                peer: 0,
                clock: clock.clone(),
            },
            clock,
            _group: group,
        }
    }

    /// Seconds peer 0 spent in collective calls (the gradients' all-reduce and the FP8 amax
    /// reductions, waiting for the slowest peer included) since the last call.
    pub fn take_collective_seconds(&self) -> f64 {
        self.clock.take_seconds()
    }

    /// Peers, peer 0 included.
    pub fn count(&self) -> usize {
        self.workers.len() + 1
    }

    /// Sends peer `p` (1-based) its shares of the step's micro-batches.
    fn send_step(&self, shares: Vec<Vec<Share>>) {
        for (worker, shares) in self.workers.iter().zip(shares) {
            send(worker, Command::Step { shares });
        }
    }

    /// Peer 0's forward/backward of one step: takes `grad_accum` batches from `loader`, keeps
    /// the first rows of each and sends every other peer its rows; the loss and gradients come
    /// back summed over the peers.
    pub fn forward_backward<B: Fp8Kernels + HostTensors>(
        &self,
        model: &Gpt2<TrainBackend<B>>,
        loader: &mut DataLoader,
        grad_accum: usize,
        sample_stats: bool,
        poison: Option<f32>,
        device: &B::Device,
    ) -> StepGrads<Fp8<B>> {
        let mut mine = Vec::new();
        let mut theirs: Vec<Vec<Share>> = (1..self.count()).map(|_| Vec::new()).collect();
        for _ in 0..grad_accum {
            let batch = loader.next_batch();
            let mut shares = Share::split(&batch, self.count()).into_iter();
            mine.extend(shares.next());
            for (peer, share) in theirs.iter_mut().zip(shares) {
                peer.push(share);
            }
        }
        self.send_step(theirs);
        // Only the step's casts are the peers' business: evaluations are peer 0's alone.
        model.fp8().set_amax_reducer(Some(self.amax.clone()));
        let out = step::forward_backward_shares(
            model,
            mine,
            sample_stats,
            poison,
            device,
            Some(&self.grads as &dyn GradReducer<Fp8<B>>),
        );
        model.fp8().set_amax_reducer(None);
        out
    }

    /// Every other peer applies the same AdamW update as peer 0.
    pub fn send_update(&self, hyper: AdamWStep, grad_scale: f32) {
        for worker in &self.workers {
            send(worker, Command::Update { hyper, grad_scale });
        }
    }
}

/// One step's forward/backward: on this device alone, or as peer 0 of `peers`.
pub fn forward_backward<B: Fp8Kernels + HostTensors>(
    peers: Option<&Peers>,
    model: &Gpt2<TrainBackend<B>>,
    loader: &mut DataLoader,
    grad_accum: usize,
    sample_stats: bool,
    poison: Option<f32>,
    device: &B::Device,
) -> StepGrads<Fp8<B>> {
    match peers {
        None => step::forward_backward(model, loader, grad_accum, sample_stats, poison, device),
        Some(peers) => {
            peers.forward_backward::<B>(model, loader, grad_accum, sample_stats, poison, device)
        }
    }
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

fn register<B: Fp8Kernels>(peer: usize, peers: usize, device: B::Device) {
    let config = CollectiveConfig::default().with_num_devices(peers);
    burn_collective::register::<Fp8<B>>(PeerId::from(peer as u32), device, config)
        .unwrap_or_else(|e| panic!("peer {peer}: registering with burn-collective failed: {e:?}"));
}

/// `FP8_TRAINER_INJECT_PEER_PANIC=peer:step`.
fn injected_panic() -> Option<(usize, u64)> {
    let text = std::env::var(INJECT_PEER_PANIC_ENV).ok()?;
    let (peer, step) = text.split_once(':')?;
    Some((peer.parse().ok()?, step.parse().ok()?))
}

/// A peer other than 0: runs what peer 0 sends until told to stop.
fn worker<B: Fp8Kernels + HostTensors>(
    peer: usize,
    peers: usize,
    device: B::Device,
    model: Gpt2<TrainBackend<B>>,
    mut optimizer: AdamW<Fp8<B>>,
    inbox: mpsc::Receiver<Command>,
    panic_at: Option<u64>,
) where
    B::Device: Send + Sync,
{
    register::<B>(peer, peers, device.clone());
    model
        .fp8()
        .set_amax_reducer(Some(Arc::new(CollectiveAmax::<Fp8<B>>::new(
            peer,
            peers,
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
            Command::Step { shares } => {
                steps += 1;
                if panic_at == Some(steps) {
                    panic!("injected failure at step {steps} ({INJECT_PEER_PANIC_ENV})");
                }
                let current = model.as_ref().expect("the model between steps");
                let out = step::forward_backward_shares(
                    current,
                    shares,
                    false,
                    None,
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
