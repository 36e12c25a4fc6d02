//! Bad checkpoints are refused with typed errors that name the file and the tensor or field (a
//! missing, transposed, unexpected or non-finite tensor, a tied head that differs from `wte`, a
//! truncated file, one that is not safetensors or whose header lies, a missing `config.json`
//! field, pickle weights), and the CLI exits with code 2 and a one-line message (no panic, no
//! backtrace).

use std::path::Path;
use std::process::Command;

use crate::common;
use crate::common::jobs::{fp8_trainer, stderr};
use crate::common::process::assert_exit;
use burn::backend::NdArray;
use trainer::checkpoint::{CheckpointError, NamedTensor};
use trainer::{load_checkpoint, ModelConfigError, ModelOptions};

/// The model runs on the FP8 decorator (with FP8 off, bit-identical to plain ndarray).
type Cpu = fp8_backend::Fp8<NdArray<f32>>;

fn load_err(dir: &Path) -> CheckpointError {
    match load_checkpoint::<Cpu>(dir, &ModelOptions::default(), &Default::default()) {
        Ok(_) => panic!("{} loaded, but it is broken", dir.display()),
        Err(e) => e,
    }
}

/// Runs `fp8-trainer logits` on `dir`; returns (exit code, stderr). The output goes to a folder
/// of its own per checkpoint folder (the tests run in parallel; each test's folder has its own
/// name).
fn cli_logits(dir: &Path) -> (i32, String) {
    let name = dir.file_name().unwrap().to_string_lossy();
    let out = common::scratch_dir(&format!("cli-out-{name}")).join("logits.json");
    let output = Command::new(common::trainer_bin())
        .args(["logits", "--checkpoint"])
        .arg(dir)
        .args(["--tokens", "1,2,3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The error, and the CLI on the same checkpoint, both name `file` and `what`.
fn assert_named(dir: &Path, error: &CheckpointError, file: &str, what: &str) {
    let message = error.to_string();
    assert!(
        message.contains(file) && message.contains(what),
        "error should name {file} and {what}: {message}"
    );
    let (code, stderr) = cli_logits(dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(file) && stderr.contains(what), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

fn remove(tensors: &mut Vec<NamedTensor>, name: &str) -> NamedTensor {
    let i = tensors.iter().position(|t| t.name == name).unwrap();
    tensors.remove(i)
}

#[test]
fn missing_tensor() {
    let dir = common::edited_fixture("missing", |t| {
        drop(remove(t, "transformer.h.1.mlp.c_proj.weight"))
    });
    let error = load_err(&dir);
    assert!(
        matches!(&error, CheckpointError::MissingTensor { tensor, .. } if tensor == "transformer.h.1.mlp.c_proj.weight")
    );
    assert_named(
        &dir,
        &error,
        "model.safetensors",
        "transformer.h.1.mlp.c_proj.weight",
    );
}

/// A Conv1D weight stored transposed, as torch's nn.Linear would hold it: [out, in].
/// c_fc is 64x192, so the transposed tensor cannot pass for the right one.
#[test]
fn transposed_weight_is_a_shape_error() {
    let name = "transformer.h.0.mlp.c_fc.weight";
    let dir = common::edited_fixture("transposed", |tensors| {
        let mut t = remove(tensors, name);
        let [rows, cols] = [t.shape[0], t.shape[1]];
        t.values = (0..rows * cols)
            .map(|i| t.values[(i % rows) * cols + i / rows])
            .collect();
        t.shape = vec![cols, rows];
        tensors.push(t);
    });
    let error = load_err(&dir);
    assert!(
        matches!(&error, CheckpointError::ShapeMismatch { expected, found, .. }
        if expected == &vec![64, 192] && found == &vec![192, 64])
    );
    assert_named(&dir, &error, "model.safetensors", name);
}

#[test]
fn unexpected_tensor() {
    let dir = common::edited_fixture("unexpected", |t| {
        t.push(NamedTensor {
            name: "transformer.h.0.attn.q_attn.weight".into(),
            shape: vec![2],
            values: vec![0.0; 2],
        })
    });
    assert_named(
        &dir,
        &load_err(&dir),
        "model.safetensors",
        "transformer.h.0.attn.q_attn.weight",
    );
}

#[test]
fn tied_head_that_differs_from_wte() {
    let dir = common::edited_fixture("untied", |tensors| {
        let wte = tensors
            .iter()
            .find(|t| t.name == "transformer.wte.weight")
            .unwrap();
        let mut values = wte.values.clone();
        values[0] += 1.0;
        tensors.push(NamedTensor {
            name: "lm_head.weight".into(),
            shape: wte.shape.clone(),
            values,
        });
    });
    let error = load_err(&dir);
    assert!(matches!(error, CheckpointError::UntiedHead { .. }));
    assert_named(&dir, &error, "model.safetensors", "lm_head.weight");
}

#[test]
fn truncated_file() {
    let dir = common::scratch_dir("truncated");
    std::fs::copy(
        common::fixture_dir().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(common::fixture_dir().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    let error = load_err(&dir);
    // Tensors are stored sorted by name; the last one is cut short.
    assert!(
        matches!(&error, CheckpointError::Truncated { tensor, .. } if tensor == "transformer.wte.weight"),
        "{error}"
    );
    assert_named(&dir, &error, "model.safetensors", "transformer.wte.weight");
}

#[test]
fn not_safetensors() {
    for (case, bytes) in [
        ("text", b"this is not a checkpoint".to_vec()),
        ("zip", b"PK\x03\x04\x14\x00\x00\x00".repeat(20)),
    ] {
        let dir = common::scratch_dir(&format!("not-safetensors-{case}"));
        std::fs::copy(
            common::fixture_dir().join("config.json"),
            dir.join("config.json"),
        )
        .unwrap();
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let error = load_err(&dir);
        assert!(
            matches!(error, CheckpointError::NotSafetensors { .. }),
            "{error}"
        );
        assert_named(&dir, &error, "model.safetensors", "not a safetensors file");
    }
}

#[test]
fn missing_config_field() {
    let dir = common::fixture_with_config("config-field", |config| {
        config.as_object_mut().unwrap().remove("n_head");
    });
    let error = load_err(&dir);
    assert!(
        matches!(
            &error,
            CheckpointError::Config(ModelConfigError::MissingField { field, .. }) if field == "n_head"
        ),
        "{error}"
    );
    assert_named(&dir, &error, "config.json", "n_head");
}

#[test]
fn no_weights_and_pickle_weights() {
    let dir = common::scratch_dir("no-weights");
    std::fs::copy(
        common::fixture_dir().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    assert!(matches!(load_err(&dir), CheckpointError::NoWeights { .. }));
    std::fs::write(dir.join("pytorch_model.bin"), b"PK").unwrap();
    let error = load_err(&dir);
    assert_named(&dir, &error, "pytorch_model.bin", "not supported");
}

#[test]
fn a_checkpoint_with_nan_weights_exits_2_naming_the_tensor() {
    let dir = common::edited_fixture("reliability-nan-weights", |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.name.ends_with("h.1.mlp.c_fc.weight"))
            .unwrap();
        t.values[5] = f32::NAN;
    });
    let out_path = dir.join("logits.json");
    let out = fp8_trainer(&[
        "logits",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_exit(
        "NaN weight",
        &out,
        2,
        &["model.safetensors", "h.1.mlp.c_fc.weight"],
    );
    assert!(!out_path.exists());
}

#[test]
fn a_bad_safetensors_header_is_described_in_words() {
    let dir = common::scratch_dir("reliability-bad-header");
    std::fs::copy(
        common::fixture_dir().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    // Offsets that do not match the shape: 4 f32 need 16 bytes, the header declares 12.
    let header =
        br#"{"transformer.wte.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 12]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let out_path = dir.join("logits.json");
    let out = fp8_trainer(&[
        "logits",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--tokens",
        "1",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_exit(
        "bad offsets",
        &out,
        2,
        &["model.safetensors", "transformer.wte.weight"],
    );
    assert!(!err.contains("TensorInvalidInfo"), "{err}");
}
