//! [`Scrubbed`]: a parsed JSON value whose strings are zeroized when it is dropped, also when
//! the input turns out to be malformed halfway through it.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::ops::{Deref, DerefMut};
use zeroize::Zeroize;

/// A parsed JSON value whose strings are all zeroized when it is dropped: a report holds
/// plaintext in fields we read (`Secret`, `Raw`) and in fields we ignore (`Match`, `RawV2`).
/// Its `Deserialize` zeroizes what it built so far when the input turns out to be malformed
/// halfway, so a failed parse leaves no copied value behind either.
#[derive(Default)]
pub(crate) struct Scrubbed(Value);

impl Scrubbed {
    /// Parses one JSON text.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The value, leaving `Null` behind (so this wrapper has nothing left to scrub): for
    /// moving it into another `Scrubbed`.
    pub(crate) fn take(mut self) -> Value {
        std::mem::take(&mut self.0)
    }

    /// Sets `key` of this object to `value` (scrubbing a value it replaces); nothing when
    /// this is not an object.
    pub(crate) fn insert(&mut self, key: String, value: Scrubbed) {
        if let Value::Object(fields) = &mut self.0
            && let Some(mut replaced) = fields.insert(key, value.take())
        {
            scrub(&mut replaced);
        }
    }

    /// An empty object.
    pub(crate) fn object() -> Self {
        Self(Value::Object(Map::new()))
    }
}

impl Deref for Scrubbed {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl DerefMut for Scrubbed {
    fn deref_mut(&mut self) -> &mut Value {
        &mut self.0
    }
}

impl Drop for Scrubbed {
    fn drop(&mut self) {
        scrub(&mut self.0);
    }
}

/// Zeroizes every string in `value`. Object keys cannot be changed in place; they are field
/// names and file paths, not values. Depth is bounded by serde_json's recursion limit.
pub(super) fn scrub(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(fields) => fields.values_mut().for_each(scrub),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

impl<'de> serde::Deserialize<'de> for Scrubbed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScrubbedVisitor)
    }
}

/// Builds a [`Scrubbed`] the way serde_json builds a `Value`, but inside a `Scrubbed` from the
/// first element on, so an error halfway through drops (and zeroizes) what was built.
pub(super) struct ScrubbedVisitor;

impl<'de> Visitor<'de> for ScrubbedVisitor {
    type Value = Scrubbed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Scrubbed, E> {
        Ok(Scrubbed(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scrubbed, D::Error> {
        serde::Deserialize::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scrubbed, A::Error> {
        let mut out = Scrubbed(Value::Array(Vec::new()));
        while let Some(item) = seq.next_element::<Scrubbed>()? {
            if let Value::Array(items) = &mut out.0 {
                items.push(item.take());
            }
        }
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scrubbed, A::Error> {
        let mut out = Scrubbed(Value::Object(Map::new()));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Scrubbed>()?.take();
            if let Value::Object(fields) = &mut out.0
                && let Some(mut replaced) = fields.insert(key, value)
            {
                // A repeated key: the first value is dropped here, so scrub it.
                scrub(&mut replaced);
            }
        }
        Ok(out)
    }
}
