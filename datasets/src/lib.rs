//! datasets (placeholder)
