//! The `tests/` workspace member holds the fixture generators and their committed outputs
//! (`tests/README.md`); it has no Rust code of its own. The tests that use the fixtures drive the
//! `fp8-trainer` binary and so live in `trainer/tests/it/`.
