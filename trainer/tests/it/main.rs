//! The trainer's integration tests: one test binary (each binary links all of Burn: one per crate
//! keeps test builds short and small), one module per behaviour. Most drive the `fp8-trainer`
//! binary on tiny models, the committed fixture (tests/fixtures/gpt2-tiny) and the shipped data;
//! `cargo test -p trainer --test it resume::` runs one module. The helpers are in `common/`.
//!
//! The tests run on threads of one process, so what one changes for the process it changes for
//! all. None changes the environment or the current directory (children get theirs through
//! `Command`). None trains or seeds a backend's random number generator in this process: jobs
//! run in child processes, whose generator and burn-collective group (one per process) are their
//! own, and the one random model built here (hf_checkpoints) is compared only with its own save.
//! Every folder a test writes is its own: `common::scratch_dir` and `common::jobs::scratch` hand
//! out a name once per process. The exception is the token cache of an `eval --data` run without
//! a folder of its own (inference_table), under the working directory's `runs/.token-cache`,
//! which concurrent runs may share: cache files are written atomically, under a lock.
//!
//! Test-only environment knobs of the binary (documented in `trainer/src/train/`):
//! `FP8_TRAINER_FAIL_CHECKPOINT_AT=N` aborts while checkpoint N is half written;
//! `FP8_TRAINER_INJECT_NAN_STEP=N` (`_INF_STEP=N`) multiplies the loss of step N by NaN (+inf);
//! `FP8_TRAINER_INJECT_PEER_PANIC=P:N` makes data-parallel peer P panic at step N;
//! `FP8_TRAINER_REPORT_PEAK_RSS=1` prints the process's peak RSS (`VmHWM`) as it ends;
//! `FP8_TRAINER_PHYSICAL_MEMORY_BYTES=N` stands in for the machine's memory in the memory checks.

mod common;

mod accumulation;
mod activation_checkpointing;
mod bad_checkpoints;
mod bad_input;
mod base_storage;
mod best_and_early_stopping;
mod chat_data;
mod compare;
mod data_parallel;
mod delayed_scaling;
mod devices;
mod example_data;
mod experiments;
mod fine_tuning;
mod fp8_telemetry;
mod generate;
mod gguf;
mod hf_checkpoints;
mod inference_table;
mod llama_family;
mod lora;
mod memory_check;
mod node_security;
mod non_finite;
mod packing;
mod parity;
mod parser_fuzz;
mod red_team;
mod resume;
mod run_dir_safety;
mod shipped_configs;
mod signals;
