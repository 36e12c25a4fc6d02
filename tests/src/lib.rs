//! tests (placeholder)
