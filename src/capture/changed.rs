//! The previous values of an UPDATE's changed columns.
//!
//! The capture trigger stores a small old row whole (finding its changed columns in the
//! writer's transaction would cost the writer more than storing them), and only a large
//! one trimmed to its changed columns. Readers keep the entries of `old` whose value
//! differs from the new row's: applied to an already trimmed `old`, that changes
//! nothing, so every event reads the same whichever way it was stored.
//!
//! Values are compared as PostgreSQL rendered them (`jsonb` text is canonical: one
//! spelling per value, except numbers that differ only in trailing zeros, `1.0` and
//! `1.00`, which are reported as changed).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The entries of `old` whose value is not the same in `new`, as a JSON object, in
/// `old`'s order. `None` if either is not a JSON object.
pub(crate) fn changed_columns(new: &RawValue, old: &RawValue) -> Option<Box<RawValue>> {
    let old_text = old.get();
    let Entries(new) = serde_json::from_str(new.get()).ok()?;
    let Entries(old) = serde_json::from_str(old_text).ok()?;
    let new: HashMap<&str, &str> = new.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
    let mut out = String::with_capacity(old_text.len());
    out.push('{');
    for (key, value) in &old {
        if new.get(key.as_ref()) == Some(&value.get()) {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).ok()?);
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    RawValue::from_string(out).ok()
}

/// A JSON object's entries, in order, values unparsed.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn changed(new: &str, old: &str) -> String {
        changed_columns(&raw(new), &raw(old))
            .unwrap()
            .get()
            .to_string()
    }

    #[test]
    fn a_whole_old_row_keeps_only_the_columns_that_changed() {
        assert_eq!(
            changed(
                r#"{"id": 1, "status": "CONFIRMED", "note": null}"#,
                r#"{"id": 1, "status": "PENDING", "note": null}"#
            ),
            r#"{"status":"PENDING"}"#
        );
    }

    #[test]
    fn an_old_row_already_trimmed_to_its_changes_is_left_as_it_is() {
        let new = r#"{"id": 1, "status": "CONFIRMED", "n": {"a": [1, 2]}}"#;
        let old = r#"{"status":"PENDING","n":{"a": [1]}}"#;
        assert_eq!(changed(new, old), old);
        assert_eq!(changed(new, &changed(new, old)), old);
    }

    #[test]
    fn keys_that_need_escaping_and_big_numbers_survive() {
        assert_eq!(
            changed(
                r#"{"a\"b": 1, "big": 123456789012345678901234567890}"#,
                r#"{"a\"b": 2, "big": 123456789012345678901234567891}"#
            ),
            r#"{"a\"b":2,"big":123456789012345678901234567891}"#
        );
    }

    #[test]
    fn anything_but_two_objects_is_refused() {
        assert!(changed_columns(&raw("[1]"), &raw("{}")).is_none());
        assert!(changed_columns(&raw("{}"), &raw("null")).is_none());
    }
}
