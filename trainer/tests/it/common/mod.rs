//! Helpers shared by the integration tests: the committed fixture, scratch folders and
//! checkpoints (here), training jobs and their run directories (`jobs`), child processes and
//! their exit (`process`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use trainer::checkpoint::{write_safetensors, NamedTensor, WeightFiles};

pub mod jobs;
pub mod process;

/// The repository root, from the `CARGO_MANIFEST_DIR` that `cargo test` sets when it runs the
/// test (not the one compiled in: a shared target directory can hold a binary built from a
/// clone at another path, which cargo reuses without rebuilding).
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest).join("..")
}

/// The `fp8-trainer` binary under test: Cargo's own build of it, or `FP8_TRAINER_BIN` where the
/// test binary runs on another machine than the one that built it (`scripts/device-check`
/// carries prebuilt binaries to a GPU machine without a Rust toolchain).
pub fn trainer_bin() -> PathBuf {
    std::env::var_os("FP8_TRAINER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fp8-trainer")))
}

/// `tests/fixtures/gpt2-tiny`, made by `tests/fixtures/gen_gpt2.py`.
pub fn fixture_dir() -> PathBuf {
    fixture_named("gpt2-tiny")
}

/// `tests/fixtures/NAME` (llama-tiny, gpt2-tiny-lora, ...; tests/README.md says which
/// generator made each).
pub fn fixture_named(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A fresh, empty directory under Cargo's per-test-target scratch space (one name per process:
/// [`claim`]).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    claim(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every tensor of a safetensors file, as f32, in file order (sorted by name).
pub fn read_tensors(path: &Path) -> Vec<NamedTensor> {
    let files = WeightFiles::open_files(&[path.to_path_buf()], path.to_path_buf()).unwrap();
    let names: Vec<String> = files.names().map(str::to_string).collect();
    names
        .into_iter()
        .map(|name| NamedTensor {
            shape: files.entry(&name).unwrap().shape.clone(),
            values: files.read_f32(&name).unwrap(),
            name,
        })
        .collect()
}

/// A copy of the fixture checkpoint whose tensors went through `edit`, in `scratch_dir(name)`.
pub fn edited_fixture(name: &str, edit: impl FnOnce(&mut Vec<NamedTensor>)) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::copy(fixture_dir().join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = read_tensors(&fixture_dir().join("model.safetensors"));
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    dir
}

/// A copy of the fixture checkpoint whose `config.json` went through `edit`, in
/// `scratch_dir(name)`.
pub fn fixture_with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::copy(
        fixture_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// The `__metadata__` of a safetensors file (its header: an 8-byte little-endian length, then
/// JSON); empty when the file has none.
pub fn safetensors_metadata(path: &Path) -> std::collections::BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len])
        .unwrap_or_else(|e| panic!("{}: header: {e}", path.display()));
    serde_json::from_value(header["__metadata__"].clone()).unwrap_or_default()
}

/// max |a - b| over the elements; NaN when either side has a NaN (so a `<=` bound fails on it,
/// where `f32::max` would skip it).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m: f32, (x, y)| {
        let d = (x - y).abs();
        if m.is_nan() || d.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

/// The committed fixture checkpoint's folder as a command-line argument.
pub fn fixture() -> String {
    fixture_dir().to_str().unwrap().to_string()
}

/// Registers a scratch folder as this process's. The tests of the binary run on threads of one
/// process, and a scratch folder is emptied when it is handed out: two tests asking for the same
/// name would delete each other's files. A second request for a folder panics instead.
fn claim(dir: &Path) {
    static CLAIMED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        claimed.insert(dir.to_path_buf()),
        "{}: two tests ask for this scratch folder; give one of them another name",
        dir.display()
    );
}

#[test]
fn max_abs_diff_does_not_hide_a_nan() {
    assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
    assert!(max_abs_diff(&[f32::NAN, 2.0], &[1.0, 9.0]).is_nan());
    assert!(max_abs_diff(&[1.0, 2.0], &[1.0, f32::NAN]).is_nan());
}
