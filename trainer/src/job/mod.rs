//! Jobs: the typed config (`spec.rs`), loading it with overrides (`load.rs`), and assembling a
//! job's pieces (`assemble.rs`: tokenizer, data, model, steps), shared by `train`, `eval` and
//! `dump-step`.

pub mod assemble;
pub mod load;
pub mod spec;

pub use load::{load_job_config, JobConfigError};
pub use spec::{
    BestMetric, Device, DeviceSlot, EarlyStopping, InitOptimizer, JobConfig, ModelSource,
    NodesConfig, NonFinitePolicy, OptimizerConfig, ScheduleConfig, ScheduleKind,
};
