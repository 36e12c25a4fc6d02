//! Parity with independent references, llm.c's habit: the model's logits, loss and every
//! gradient against Hugging Face `transformers` (`model`); AdamW and gradient clipping against
//! `torch.optim.AdamW` (`adamw`); a whole training step through `dump-step`, in fp32 and in each
//! FP8 recipe, against `transformers` and an independent torch + `ml_dtypes` FP8 model, with the
//! per-layer cast statistics (`dump_step`); the `logits` command (`logits`); the Llama family's
//! logits, gradients (fp32 and FP8-AMAX) and a 20-step AdamW curve (`llama`). The fixtures and
//! their generators are in tests/fixtures/ (tests/README.md).

mod adamw;
mod dump_step;
mod llama;
mod logits;
mod model;
