//! Decoding JSON the way Go's `encoding/json` does, for the documents nsqd
//! reads (`nsqd.dat`, IDENTIFY): object keys match struct fields
//! case-insensitively, `null` leaves a field at its zero value, unknown keys
//! are ignored, and an empty input is "unexpected end of JSON input".
//!
//! Structs decoded through here derive `Deserialize` with `#[serde(default)]`
//! and `deserialize_with = "gojson::null_as_default"` on every field
//! (`null_as_empty_list` on lists), and name their fields in lower case.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GoJsonError {
    /// Go's text for input that stops early, an empty file included.
    #[error("unexpected end of JSON input")]
    Eof,
    #[error("{0}")]
    Syntax(serde_json::Error),
    /// A value of the wrong type for its field (Go's UnmarshalTypeError).
    #[error("{0}")]
    Type(serde_json::Error),
}

/// Decodes `bytes` into `T` with Go's key matching.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GoJsonError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Eof {
            GoJsonError::Eof
        } else {
            GoJsonError::Syntax(e)
        }
    })?;
    // A top-level `null` leaves the whole struct at its zero value.
    let value = match value {
        Value::Null => Value::Object(Map::new()),
        v => fold_keys(v),
    };
    T::deserialize(value).map_err(GoJsonError::Type)
}

/// Go's encoding/json leaves a field alone when the JSON value is `null`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A list as Go decodes a slice: `null` is empty, and a `null` item is the
/// item type's zero value.
pub fn null_as_empty_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    let items = Option::<Vec<Option<T>>>::deserialize(d)?.unwrap_or_default();
    Ok(items.into_iter().map(Option::unwrap_or_default).collect())
}

/// Lower-cases every object key, so that `"Name"` and `"NAME"` reach the
/// field `name`. Where several keys fold to one, the exact (already lower
/// case) spelling wins; Go takes the last in document order, which a sorted
/// map no longer knows.
fn fold_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut folded = Map::new();
            let mut exact = Vec::new();
            for (key, v) in map {
                let lower = fold_key(&key);
                if lower == key {
                    exact.push((key, fold_keys(v)));
                } else {
                    folded.insert(lower, fold_keys(v));
                }
            }
            folded.extend(exact);
            Value::Object(folded)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(fold_keys).collect()),
        v => v,
    }
}

/// ASCII lower case plus the two non-ASCII letters Go's key folding maps onto
/// ASCII ones: the long s and the Kelvin sign.
fn fold_key(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Doc {
        #[serde(deserialize_with = "null_as_default")]
        name: String,
        #[serde(deserialize_with = "null_as_empty_list")]
        list: Vec<u32>,
        #[serde(deserialize_with = "null_as_default")]
        flag: bool,
    }

    #[test]
    fn keys_fold_nulls_zero_and_unknown_keys_pass() {
        let d: Doc = from_slice(br#"{"NAME":"a","List":null,"other":{"x":1},"fLaG":true}"#)
            .expect("decodes");
        assert_eq!(
            d,
            Doc {
                name: "a".into(),
                list: vec![],
                flag: true
            }
        );
        let d: Doc = from_slice(br#"{"list":[1,null,3]}"#).expect("decodes");
        assert_eq!(d.list, vec![1, 0, 3]);
        let d: Doc = from_slice(br#"{"Name":"folded","name":"exact"}"#).expect("decodes");
        assert_eq!(d.name, "exact");
        let d: Doc =
            from_slice("{\"\u{017F}\u{212A}ip\":1,\"name\":\"x\"}".as_bytes()).expect("decodes");
        assert_eq!(d.name, "x");
        assert_eq!(from_slice::<Doc>(b"null").expect("decodes"), Doc::default());
    }

    #[test]
    fn errors_read_as_go() {
        let e = from_slice::<Doc>(b"").expect_err("empty");
        assert_eq!(e.to_string(), "unexpected end of JSON input");
        let e = from_slice::<Doc>(b"  {\"name\":").expect_err("cut short");
        assert_eq!(e.to_string(), "unexpected end of JSON input");
        assert!(matches!(
            from_slice::<Doc>(b"{x}"),
            Err(GoJsonError::Syntax(_))
        ));
        assert!(matches!(
            from_slice::<Doc>(br#"{"name":5}"#),
            Err(GoJsonError::Type(_))
        ));
        assert!(matches!(
            from_slice::<Doc>(b"[1]"),
            Err(GoJsonError::Type(_))
        ));
    }
}
