//! The datasets crate's integration tests: one test binary for the crate, one module per
//! behaviour (`cargo test -p datasets --test it chat::` runs one module). Every test writes its
//! files into a temporary folder of its own (`common::Scratch`), so tests running on threads of
//! one process share no files.

mod common;

mod bad_input;
mod cache;
mod chat;
mod formats;
mod hub_tokenizers;
mod packing;
mod shipped_corpora;
mod tokenizer_export;
mod tokenizers;
mod windows;
