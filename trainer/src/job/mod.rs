//! Jobs: the typed config (`spec.rs`), loading it with overrides (`load.rs`), every check of a
//! job (`check.rs`, all made before anything on disk changes), its one error type (`error.rs`),
//! and assembling a job's pieces (`assemble.rs`: tokenizer, data, model, steps), shared by
//! `train`, `eval`, `dump-step` and `bench`.

pub mod assemble;
pub mod check;
mod error;
pub mod load;
pub mod memory;
pub mod spec;

pub use error::JobConfigError;
pub use load::load_job_config;
pub use spec::{
    BestMetric, EarlyStopping, InitOptimizer, JobConfig, ModelSource, NodesConfig, NonFinitePolicy,
    OptimizerConfig, ScheduleConfig, ScheduleKind,
};
