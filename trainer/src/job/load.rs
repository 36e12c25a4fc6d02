//! Loading a job config: the JSON file, `--set key.sub=value` overrides, and errors that name
//! the file and the key (with the closest valid key for a typo).

use std::path::Path;

use serde_json::Value;

use super::check;
use super::{JobConfig, JobConfigError};

/// Reads `path`, applies `overrides` (`key.sub=value`; the value is JSON if it parses, else a
/// string), and checks the result.
pub fn load_job_config(path: &Path, overrides: &[String]) -> Result<JobConfig, JobConfigError> {
    let text =
        datasets::input::read_text_limited(path, datasets::input::CONFIG_LIMIT, "job config")
            .map_err(|source| JobConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| JobConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if !value.is_object() {
        // serde would read an array as the struct's fields in order and blame `[0]`.
        let kind = datasets::json_type_name(&value);
        return Err(JobConfigError::field(
            path,
            "(top level)",
            format!("is {kind}, expected a JSON object of job settings ({{\"name\": ..., \"model\": ..., \"data\": ...}})"),
        ));
    }
    for arg in overrides {
        apply_override(&mut value, arg)?;
    }
    devices_set_device(&mut value, path)?;
    let config: JobConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        typed_error(path, &field, &message)
    })?;
    check::config(&config, path)?;
    Ok(config)
}

/// `devices` names the kind of device, so a config that gives it needs no `device`; one that
/// gives both must agree.
fn devices_set_device(value: &mut Value, path: &Path) -> Result<(), JobConfigError> {
    // `"device": "cuda:1"` is the one-device spelling of `"devices": ["cuda:1"]`.
    if let (Some(Value::String(device)), None) = (value.get("device"), value.get("devices")) {
        if let Some((kind, _)) = device.split_once(':') {
            let slot = Value::String(device.clone());
            value["device"] = Value::String(kind.to_string());
            value["devices"] = Value::Array(vec![slot]);
        }
    }
    let Some(Value::Array(devices)) = value.get("devices") else {
        return Ok(());
    };
    let kinds: Vec<&str> = devices
        .iter()
        .filter_map(Value::as_str)
        .map(|d| d.split(':').next().unwrap_or(d))
        .collect();
    let Some(first) = kinds.first().map(|k| k.to_string()) else {
        return Ok(());
    };
    if let Some(other) = kinds.iter().find(|k| **k != first) {
        return Err(JobConfigError::field(
            path,
            "devices",
            format!("mixes `{first}` and `{other}`: the peers of a job are devices of one kind"),
        ));
    }
    if first.parse::<crate::device::Device>().is_err() {
        // Not a device: the error names `devices[0]` when the entries are parsed.
        return Ok(());
    }
    match value.get("device") {
        None => {
            value["device"] = Value::String(first);
        }
        Some(Value::String(device)) if *device != first => {
            return Err(JobConfigError::field(
                path,
                "devices",
                format!("are `{first}` devices but `device` is `{device}`; drop `device` or make them agree"),
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// Turns serde's message into our error; unknown keys get the closest valid one.
fn typed_error(path: &Path, field: &str, message: &str) -> JobConfigError {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default().to_string();
        // serde lists the valid names as "expected one of `a`, `b`" (or "expected `a`").
        let valid: Vec<&str> = rest
            .split_once("expected")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let closest = valid
            .iter()
            .map(|v| (strsim::levenshtein(&key, v), *v))
            .min()
            .filter(|(d, v)| *d <= (v.len().max(key.len()) / 2).max(2));
        // The path may or may not end with the unknown key itself.
        let parent = field.strip_suffix(key.as_str()).unwrap_or(field);
        let parent = parent.trim_end_matches('.');
        let prefix = match parent {
            "" | "." => String::new(),
            p => format!("{p}."),
        };
        return JobConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: format!("{prefix}{key}"),
            suggestion: closest
                .map(|(_, v)| format!("; did you mean `{prefix}{v}`?"))
                .unwrap_or_default(),
            valid: valid.join(", "),
        };
    }
    let field = if field.is_empty() || field == "." {
        "(top level)"
    } else {
        field
    };
    JobConfigError::field(path, field, message)
}

/// Sets `a.b.c` in a JSON object tree, creating objects on the way.
fn apply_override(root: &mut Value, arg: &str) -> Result<(), JobConfigError> {
    let bad = |message: &str| JobConfigError::Override {
        arg: arg.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected key.sub=value"))?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key component"));
    }
    let mut node = root;
    for part in &parts[..parts.len() - 1] {
        let object = node
            .as_object_mut()
            .ok_or_else(|| bad(&format!("`{part}` is inside a value that is not an object")))?;
        node = object
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    node.as_object_mut()
        .ok_or_else(|| bad("the parent of the key is not an object"))?
        .insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<JobConfig, JobConfigError> {
        let dir = std::env::temp_dir().join(format!("job-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!(
            "{:x}.json",
            json.len() * 7919 + json.as_bytes()[json.len() / 2] as usize
        ));
        std::fs::write(&file, json).unwrap();
        load_job_config(&file, &[])
    }

    const MINIMAL: &str = r#"{"name": "t", "model": {"preset": "tiny"}, "steps": 3,
        "data": {"train": "x.txt", "seq_len": 8}, "optimizer": {"lr": 0.001}}"#;

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.batch_size, 8);
        assert_eq!(c.precision, fp8_backend::Fp8Policy::amax());
        assert_eq!(c.precision.gradient_margin, 3);
    }

    #[test]
    fn devices_set_the_device_and_must_agree() {
        let with = |devices: &str| {
            parse(&MINIMAL.replace("\"steps\": 3", &format!("\"steps\": 3, {devices}")))
        };
        let c = with(r#""devices": ["ndarray", "ndarray"]"#).unwrap();
        assert_eq!(c.device, crate::device::Device::Ndarray);
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[1].to_string(), "ndarray:0");
        let c = with(r#""devices": ["cpu:0", "cpu"], "device": "cpu""#).unwrap();
        assert_eq!(c.device, crate::device::Device::Cpu);
        // A device index in `device` is a one-entry `devices`.
        let c = with(r#""device": "ndarray:0""#).unwrap();
        assert_eq!(c.device, crate::device::Device::Ndarray);
        assert_eq!(c.devices.len(), 1);
        let cases = [
            (
                r#""devices": ["cpu", "ndarray"]"#,
                "mixes `cpu` and `ndarray`",
            ),
            (
                r#""devices": ["cuda:0"], "device": "cpu""#,
                "`device` is `cpu`",
            ),
            (r#""devices": ["cuda:1", "cuda:1"]"#, "lists `cuda:1` twice"),
            (r#""devices": ["cpu:1"]"#, "the CPU has one device"),
            (r#""devices": ["cuda:x"]"#, "must be a number"),
            (r#""devices": ["tpu"]"#, "tpu"),
        ];
        for (devices, says) in cases {
            let err = with(devices).unwrap_err().to_string();
            assert!(err.contains("field `devices"), "{devices}: {err}");
            assert!(err.contains(says), "{devices}: {err}");
        }
    }

    #[test]
    fn nodes_are_checked_naming_the_field() {
        let with = |nodes: &str| {
            parse(&MINIMAL.replace("\"steps\": 3", &format!("\"steps\": 3, \"nodes\": {nodes}")))
        };
        let good = r#"{"count": 2, "rank": 1, "orchestrator": "ws://10.0.0.1:3000", "address": "ws://10.0.0.2:3001"}"#;
        let c = with(good).unwrap();
        let nodes = c.nodes.unwrap();
        assert_eq!(
            (nodes.rank, nodes.timeout_s, nodes.data_port()),
            (1, 300, Some(3001))
        );
        let cases = [
            (good.replace("\"count\": 2", "\"count\": 1"), "nodes.count"),
            (good.replace("\"rank\": 1", "\"rank\": 2"), "nodes.rank"),
            (
                good.replace("ws://10.0.0.1:3000", "10.0.0.1:3000"),
                "nodes.orchestrator",
            ),
            (
                good.replace("ws://10.0.0.2:3001", "ws://10.0.0.2"),
                "nodes.address",
            ),
            (
                good.replace("\"rank\": 1", "\"rank\": 1, \"timeout_s\": 0"),
                "nodes.timeout_s",
            ),
            (good.replace("\"rank\": 1,", ""), "rank"),
        ];
        for (nodes, field) in cases {
            let err = with(&nodes).unwrap_err().to_string();
            assert!(err.contains(field), "{nodes}: {err}");
        }
    }

    #[test]
    fn unknown_nested_key_is_named_with_a_suggestion() {
        let err = parse(&MINIMAL.replace("\"lr\"", "\"lrr\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`optimizer.lrr`"), "{err}");
        assert!(err.contains("did you mean `optimizer.lr`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse(&MINIMAL.replace("\"steps\": 3", "\"steps\": \"many\"")).unwrap_err();
        assert!(err.to_string().contains("field `steps`"), "{err}");
    }

    #[test]
    fn overrides_set_nested_values() {
        let mut v: Value = serde_json::from_str(MINIMAL).unwrap();
        apply_override(&mut v, "optimizer.lr=0.5").unwrap();
        apply_override(&mut v, "precision.mode=fp32").unwrap();
        assert_eq!(v["optimizer"]["lr"], 0.5);
        assert_eq!(v["precision"]["mode"], "fp32");
        assert!(apply_override(&mut v, "noequals").is_err());
    }
}
