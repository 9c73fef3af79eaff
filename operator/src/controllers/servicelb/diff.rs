//! "Does the live object already hold what we want?" checks, so a resync with nothing new makes
//! no request. The API server adds defaults to what we apply, so desired objects are compared as
//! a subset of the live ones.

use serde_json::Value;

/// True when every field of `desired` is present in `live` with the same value: objects
/// recursively, arrays element by element (same length), scalars by equality.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| is_subset(dv, lv)) || dv.is_null()),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b))
        }
        (d, l) => d == l,
    }
}

/// [`is_subset`] of two serializable values.
pub fn serialized_subset<A: serde::Serialize, B: serde::Serialize>(desired: &A, live: &B) -> bool {
    match (serde_json::to_value(desired), serde_json::to_value(live)) {
        (Ok(d), Ok(l)) => is_subset(&d, &l),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_do_not_count_as_a_difference() {
        let desired = json!({"a": 1, "b": [{"x": "y"}], "c": {"d": true}});
        let live = json!({"a": 1, "b": [{"x": "y", "z": 0}], "c": {"d": true, "e": 2}, "f": 3});
        assert!(is_subset(&desired, &live));
        assert!(!is_subset(&json!({"a": 2}), &live));
        assert!(!is_subset(&json!({"b": []}), &live), "array length differs");
        assert!(!is_subset(&json!({"g": 1}), &live), "missing key");
    }
}
