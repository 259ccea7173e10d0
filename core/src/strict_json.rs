//! JSON parsing that refuses a duplicated object key. serde_json keeps the last of two
//! equal keys without a word, so `{"repository":"a/ok","repository":"b/evil"}` reads as
//! `b/evil` here and, to a proxy, a log reader or another JSON library that keeps the
//! first, as `a/ok`. A body that means two things is refused instead.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::fmt;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    /// An object holds the same key twice; `path` names it from the top, e.g.
    /// `agent_options.behaviour` or `labels[2].name`.
    #[error("the key {path} appears twice")]
    DuplicateKey { path: String },
    /// Not JSON at all (serde_json's message, with line and column).
    #[error("{0}")]
    Syntax(String),
}

/// Parses `bytes` as one JSON value, refusing duplicated keys at any depth. Nesting is
/// bounded by serde_json's own recursion limit.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue {
        path: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some(path)) => Err(StrictJsonError::DuplicateKey { path }),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(StrictJsonError::Syntax(e.to_string())),
    }
}

/// One value at `path`; the first duplicated key found is left in `duplicate` (the
/// deserializer's own error type can only carry a message).
struct StrictValue<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl StrictValue<'_> {
    fn child(&self, segment: fmt::Arguments<'_>) -> Self {
        StrictValue {
            path: format!("{}{segment}", self.path),
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so a parsed f64 always makes a Number.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) =
            seq.next_element_seed(self.child(format_args!("[{}]", items.len())))?
        {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let separator = if self.path.is_empty() { "" } else { "." };
            let child = self.child(format_args!("{separator}{key}"));
            if object.contains_key(&key) {
                let message = format!("duplicate key {}", child.path);
                *self.duplicate.borrow_mut() = Some(child.path);
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(json: &str) -> Option<String> {
        match parse(json.as_bytes()) {
            Err(StrictJsonError::DuplicateKey { path }) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn a_duplicated_key_is_named_at_any_depth() {
        assert_eq!(duplicate(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate(r#"{"agent_options":{"behaviour":"normal","behaviour":"crash:plan"}}"#)
                .as_deref(),
            Some("agent_options.behaviour")
        );
        assert_eq!(
            duplicate(r#"{"x":[{"ok":1},{"b":1,"b":1}]}"#).as_deref(),
            Some("x[1].b")
        );
        // Equal after JSON's escapes are read: "\u0061" is "a".
        assert_eq!(duplicate(r#"{"a":1,"\u0061":2}"#).as_deref(), Some("a"));
    }

    #[test]
    fn what_serde_json_reads_is_read_the_same() {
        for json in [
            r#"{"a":1,"b":[true,null,-2,3.5,"x"],"c":{"d":{}},"e":18446744073709551615}"#,
            "[]",
            "\"text\"",
            " 12 ",
            r#"{"a":{"k":1},"b":{"k":1}}"#,
        ] {
            let lenient: Option<Value> = serde_json::from_str(json).ok();
            assert_eq!(parse(json.as_bytes()).ok(), lenient, "{json}");
        }
    }

    #[test]
    fn what_is_not_json_is_a_syntax_error() {
        for bad in ["", "{", r#"{"a":1} x"#, "[1,]", r#"{"a":1,}"#, "NaN"] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(StrictJsonError::Syntax(_))),
                "{bad}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(StrictJsonError::Syntax(_))
        ));
    }
}
