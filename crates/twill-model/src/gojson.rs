//! Go's `encoding/json` rules for object keys, the one place they live.
//!
//! flanneld decodes the config, every lease and every backend's options
//! with Go's `encoding/json`, which, for each key of an object in order,
//! finds the struct field it names (the exact name if there is one, else
//! the first field whose name matches case-insensitively) and stores the
//! value there. So `"vni":5` sets `VNI`, the *last* key that matches a field
//! wins (`{"VNI":7,"vni":8}` gives 8, `{"vni":8,"VNI":7}` gives 7), `null`
//! leaves the field as it was, and unknown keys are ignored. serde matches
//! names exactly, refuses duplicates and treats `null` as a value, so
//! [`GoValue`] rewrites each object's keys before serde's derived code sees
//! them: it works for any `Deserialize` type, with no attribute on it,
//! because serde hands `deserialize_struct` the struct's field names
//! (renames and aliases included).
//!
//! No crate on crates.io does this: `serde_aux`'s case-insensitive helper
//! lowercases keys (so neither exact-match preference nor `rename`s work)
//! and keeps serde's duplicate and `null` handling.
//!
//! Serialization is untouched: what twill writes has flannel's exact names.

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Error, Map, Value};

/// Deserializes `T` from `value` matching object keys as Go does.
pub(crate) fn from_value<'a, T: serde::Deserialize<'a>>(value: &'a Value) -> Result<T, Error> {
    T::deserialize(GoValue(value))
}

/// The entries of `obj` as Go assigns them to a struct whose fields are
/// named `fields`: a key that names a field (exactly, else case-insensitively:
/// the first such field) is renamed to that field's name, the last key
/// for a field wins, and `null` values are dropped, so the field keeps its
/// default (Go leaves it unchanged; a `null` does not undo an earlier value
/// either). Keys that name no field are kept as they are, for the caller to
/// ignore (or refuse, with `deny_unknown_fields`).
///
/// Field names that differ only in case count as one field: serde lists a
/// field's aliases with its name, so `rename = "VNI", alias = "vni"` must
/// not make `{"VNI":1,"vni":2}` a duplicate. (Go structs with two fields
/// differing only in case are not something flannel has.)
pub(crate) fn struct_entries<'a>(
    obj: &'a Map<String, Value>,
    fields: &[&'a str],
) -> Vec<(&'a str, &'a Value)> {
    // (group, field name, value) for keys that name a field: at most one
    // entry per group, the group being the first field equal up to case.
    let mut known: Vec<(usize, &'a str, &'a Value)> = Vec::new();
    let mut unknown: Vec<(&'a str, &'a Value)> = Vec::new();
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        let field = fields
            .iter()
            .find(|f| **f == key.as_str())
            .or_else(|| fields.iter().find(|f| fold_eq(f, key)));
        let Some(&field) = field else {
            unknown.push((key.as_str(), value));
            continue;
        };
        let group = fields.iter().position(|f| fold_eq(f, field)).unwrap_or(0);
        known.retain(|(g, _, _)| *g != group);
        known.push((group, field, value));
    }
    known
        .into_iter()
        .map(|(_, f, v)| (f, v))
        .chain(unknown)
        .collect()
}

/// Whether two names are equal as Go's encoding/json compares a key with a
/// field name (Unicode simple case folding). Exact for ASCII names, which
/// is what field names are: ASCII letters fold to each other, and the only
/// non-ASCII letters that fold to ASCII ones are the Kelvin sign (K) and
/// the long s (ſ). Other non-ASCII letters are compared by their one-letter
/// lowercase, which is close to, not exactly, Go's simple folding.
fn fold_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.chars().map(fold).eq(b.chars().map(fold))
}

fn fold(c: char) -> char {
    match c {
        '\u{212A}' => 'k',
        '\u{17F}' => 's',
        c if c.is_ascii() => c.to_ascii_lowercase(),
        c => {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        }
    }
}

/// A `serde_json::Value` deserialized with Go's key rules: structs get
/// [`struct_entries`]; options, lists, maps and nested values recurse
/// through `GoValue` so nested structs get them too. Everything else is the
/// `Value` deserializer's own behaviour. (Enums are left to it: Go has none.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct GoValue<'a>(pub(crate) &'a Value);

struct GoMap<'a> {
    entries: std::vec::IntoIter<(&'a str, &'a Value)>,
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for GoMap<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(BorrowedStrDeserializer::new(key))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(GoValue(v)),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct GoSeq<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for GoSeq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoValue(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// As serde_json's `Value` deserializer: every entry must be consumed.
fn visit_map<'de, V: Visitor<'de>>(
    entries: Vec<(&'de str, &'de Value)>,
    visitor: V,
) -> Result<V::Value, Error> {
    let len = entries.len();
    let mut map = GoMap {
        entries: entries.into_iter(),
        value: None,
    };
    let out = visitor.visit_map(&mut map)?;
    if map.entries.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

fn visit_array<'de, V: Visitor<'de>>(items: &'de [Value], visitor: V) -> Result<V::Value, Error> {
    let mut seq = GoSeq(items.iter());
    let out = visitor.visit_seq(&mut seq)?;
    if seq.0.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(
            items.len(),
            &"fewer elements in array",
        ))
    }
}

fn all_entries(obj: &Map<String, Value>) -> Vec<(&str, &Value)> {
    obj.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

/// Forwards to the `Value` deserializer.
macro_rules! forward {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.0.$method(visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for GoValue<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(obj) => visit_map(all_entries(obj), visitor),
            Value::Array(items) => visit_array(items, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visit_array(items, visitor),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            // A map's keys are data, not field names: kept as they are.
            Value::Object(obj) => visit_map(all_entries(obj), visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(obj) => visit_map(struct_entries(obj, fields), visitor),
            Value::Array(items) => visit_array(items, visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    forward! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier deserialize_ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_is_gos_for_ascii_names() {
        assert!(fold_eq("VNI", "vNi"));
        assert!(fold_eq("VtepMAC", "VTEPMAC"));
        assert!(
            fold_eq("Backend", "bac\u{212A}end"),
            "Kelvin sign folds to k"
        );
        assert!(fold_eq("SubnetLen", "\u{17F}ubnetlen"), "long s folds to s");
        assert!(!fold_eq("VNI", "VNI "));
        assert!(!fold_eq("VNI", "VN"));
        assert!(!fold_eq("Port", "P\u{f6}rt"));
        assert!(!fold_eq("SS", "\u{df}"), "no multi-letter folding");
    }

    #[test]
    fn entries_follow_gos_assignment_order() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"vni":1,"Other":2,"VNI":3,"port":null,"Vni":4}"#).unwrap();
        assert_eq!(
            struct_entries(&obj, &["VNI", "Port"]),
            [("VNI", &Value::from(4)), ("Other", &Value::from(2))]
        );
        // Exact matches first: with fields differing only in case, each
        // exact key goes to its own spelling, grouped as one field.
        assert_eq!(
            struct_entries(&obj, &["VNI", "vni"]),
            [("VNI", &Value::from(4)), ("Other", &Value::from(2))]
        );
    }
}
