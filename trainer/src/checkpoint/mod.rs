//! Hugging Face checkpoints: `config.json` + `model.safetensors`, loaded strictly and
//! written in the same layout.

pub mod error;
pub mod load;
pub mod safetensors_file;
pub mod save;

pub use error::CheckpointError;
pub use load::{
    adapter_and_base, load_adapter_weights, load_checkpoint, load_checkpoint_storing, load_weights,
    CONFIG_FILE,
};
pub use safetensors_file::{f32_from_le, WeightFiles, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
pub use save::{
    adapter_tensors, model_tensors, save_checkpoint, staging_dir, write_checkpoint_files,
    write_checkpoint_tensors, write_safetensors, NamedTensor,
};
