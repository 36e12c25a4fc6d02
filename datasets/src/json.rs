//! Naming JSON values in error messages ("field `text` must be a string, found a number").

use serde_json::Value;

/// The type of `v` as an error message names it: "null", "a boolean", "a number", "a string",
/// "an array" or "an object".
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::json_type_name;
    use serde_json::json;

    #[test]
    fn names_every_json_type() {
        let cases = [
            (json!(null), "null"),
            (json!(true), "a boolean"),
            (json!(1.5), "a number"),
            (json!("s"), "a string"),
            (json!([1]), "an array"),
            (json!({"a": 1}), "an object"),
        ];
        for (value, name) in cases {
            assert_eq!(json_type_name(&value), name, "{value}");
        }
    }
}
