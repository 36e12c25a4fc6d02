//! trainer (placeholder)
