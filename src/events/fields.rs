//! Reading a captured row through a domain mapping: the typed values of domain fields.
//!
//! A [`Captured`] is the change as the domain modules see it: its table and operation
//! and its rows, whose columns are looked up by *field* name through the table's
//! [`Mapping`]. Values are read from the row's JSON text without going through `f64`:
//! an [`Id`] keeps the exact JSON text PostgreSQL wrote, so a bigint above 2^53 or a
//! 20-digit numeric stays exact.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::capture::log::{Change, Op};
use crate::events::mapping::{Kind, MapError, Mapping};

/// A row id: the exact JSON text of the value, a number (`9007199254740993`) or a string
/// (`"0b9e…"`), as PostgreSQL rendered it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// The id's JSON text, exactly as captured (`42`, `"a-uuid"`).
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// What a status value means, whatever the app calls it (compared case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// `CONFIRMED`, `ACCEPTED`, `APPROVED`.
    Accepted,
    /// `REJECTED`, `DECLINED`.
    Rejected,
    /// `CANCELLED`, `CANCELED`.
    Cancelled,
    /// `COMPLETED`, `DONE`.
    Completed,
    /// Any other value.
    Other,
}

/// A status value as the app wrote it (`"CONFIRMED"`, `"confirmed"`, `"approved"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status(String);

impl Status {
    /// A status holding `value`.
    pub fn new(value: impl Into<String>) -> Status {
        Status(value.into())
    }

    /// The value as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the value means.
    pub fn class(&self) -> StatusClass {
        let value = self.0.to_ascii_uppercase();
        match value.as_str() {
            "CONFIRMED" | "ACCEPTED" | "APPROVED" => StatusClass::Accepted,
            "REJECTED" | "DECLINED" => StatusClass::Rejected,
            "CANCELLED" | "CANCELED" => StatusClass::Cancelled,
            "COMPLETED" | "DONE" => StatusClass::Completed,
            _ => StatusClass::Other,
        }
    }

    /// Whether two values are the same status, ignoring case.
    pub fn same(&self, other: &Status) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

/// A time as PostgreSQL rendered it in the capture trigger (always UTC):
/// `2026-11-22T10:00:00+00:00` for timestamptz, `2026-11-22T10:00:00` for timestamp,
/// `2026-11-22` for date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Time(String);

impl Time {
    /// The rendered time.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The columns of a row's JSON object, in the order PostgreSQL wrote them, each with its
/// unparsed value.
pub(crate) type Entries<'a> = Vec<(String, &'a RawValue)>;

/// Splits a JSON object into its columns without parsing the values.
pub(crate) fn entries(raw: &RawValue) -> Result<Entries<'_>, MapError> {
    struct EntriesVisitor;
    impl<'de> Visitor<'de> for EntriesVisitor {
        type Value = Entries<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
            while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(EntriesVisitor)
        .map_err(|_| MapError::NotAnObject)
}

/// One row of a change (the new or old row, or the previous values of an UPDATE), read
/// by domain field.
#[derive(Debug)]
pub struct Row<'a> {
    entries: Entries<'a>,
    mapping: &'a Mapping,
}

/// JSON types a field's value may have.
#[derive(Clone, Copy)]
enum Json {
    String,
    NumberOrString,
}

impl Row<'_> {
    fn column(&self, field: &'static str) -> Result<&str, MapError> {
        self.mapping.column(field).ok_or(MapError::Unmapped {
            kind: self.mapping.kind,
            field,
        })
    }

    /// The raw value of `field`: `None` when the row does not have the column (or the
    /// field is not mapped), `Some(None)` when it is null.
    fn value(&self, field: &'static str) -> Option<Option<&RawValue>> {
        let column = self.mapping.column(field)?;
        let (_, raw) = self.entries.iter().find(|(name, _)| name == column)?;
        Some((raw.get() != "null").then_some(*raw))
    }

    /// Whether the row has `field`'s column (in an UPDATE's previous values: whether the
    /// field changed).
    pub fn has(&self, field: &'static str) -> bool {
        self.value(field).is_some()
    }

    fn typed(
        &self,
        field: &'static str,
        json: Json,
        required: bool,
    ) -> Result<Option<String>, MapError> {
        let raw = match self.value(field) {
            Some(Some(raw)) => raw,
            Some(None) => return Ok(None),
            None if required => {
                return Err(MapError::Missing {
                    field,
                    column: self.column(field)?.to_string(),
                });
            }
            None => return Ok(None),
        };
        let text = raw.get();
        let ok = matches!(
            (json, text.as_bytes().first()),
            (_, Some(b'"')) | (Json::NumberOrString, Some(b'-' | b'0'..=b'9'))
        );
        if !ok {
            return Err(MapError::WrongType {
                field,
                column: self.column(field)?.to_string(),
                expected: match json {
                    Json::String => "a JSON string",
                    Json::NumberOrString => "a JSON number or string",
                },
            });
        }
        Ok(Some(text.to_string()))
    }

    fn string(&self, field: &'static str, required: bool) -> Result<Option<String>, MapError> {
        self.typed(field, Json::String, required)?
            .map(|text| {
                serde_json::from_str::<String>(&text).map_err(|_| MapError::WrongType {
                    field,
                    column: self.mapping.column(field).unwrap_or_default().to_string(),
                    expected: "a JSON string",
                })
            })
            .transpose()
    }

    /// The row's id (`field`), which must be present and not null.
    pub fn id(&self, field: &'static str) -> Result<Id, MapError> {
        self.typed(field, Json::NumberOrString, true)?
            .map(Id)
            .ok_or_else(|| MapError::NullId {
                field,
                column: self.mapping.column(field).unwrap_or_default().to_string(),
            })
    }

    /// An id that the row must have (it may be null).
    pub fn nullable_id(&self, field: &'static str) -> Result<Option<Id>, MapError> {
        Ok(self.typed(field, Json::NumberOrString, true)?.map(Id))
    }

    /// An optional id; `None` when null or when the table has no such column.
    pub fn opt_id(&self, field: &'static str) -> Result<Option<Id>, MapError> {
        Ok(self.typed(field, Json::NumberOrString, false)?.map(Id))
    }

    /// A status that the row must have (it may be null).
    pub fn status(&self, field: &'static str) -> Result<Option<Status>, MapError> {
        Ok(self.string(field, true)?.map(Status))
    }

    /// An optional status.
    pub fn opt_status(&self, field: &'static str) -> Result<Option<Status>, MapError> {
        Ok(self.string(field, false)?.map(Status))
    }

    /// A time that the row must have (it may be null).
    pub fn time(&self, field: &'static str) -> Result<Option<Time>, MapError> {
        Ok(self.string(field, true)?.map(Time))
    }

    /// An optional time.
    pub fn opt_time(&self, field: &'static str) -> Result<Option<Time>, MapError> {
        Ok(self.string(field, false)?.map(Time))
    }

    /// In an UPDATE's previous values: the previous status if `field` changed.
    pub fn previous_status(&self, field: &'static str) -> Result<Option<Status>, MapError> {
        self.opt_status(field)
    }

    /// In an UPDATE's previous values: whether `field` changed and was null before.
    pub fn was_null(&self, field: &'static str) -> bool {
        matches!(self.value(field), Some(None))
    }
}

/// A captured change as the domain modules read it: the table, the operation, and its
/// rows read through the table's mapping.
#[derive(Debug)]
pub struct Captured<'a> {
    /// The app's table.
    pub table: &'a str,
    /// What happened to the row (never TRUNCATE).
    pub op: Op,
    /// The kind of row the table holds.
    pub kind: Kind,
    /// The new row (INSERT, UPDATE) or the deleted row (DELETE).
    pub row: Row<'a>,
    /// UPDATE: the previous values of the changed columns; otherwise empty.
    pub old: Row<'a>,
}

impl<'a> Captured<'a> {
    /// Reads `change` through `mapping`. Fails for a TRUNCATE (no row) and for a row
    /// that is not a JSON object.
    pub fn new(change: &'a Change, mapping: &'a Mapping) -> Result<Captured<'a>, MapError> {
        let data = change.data.as_deref().ok_or(MapError::NotAnObject)?;
        let old = match change.old.as_deref() {
            Some(old) => entries(old)?,
            None => Vec::new(),
        };
        Ok(Captured {
            table: &change.table,
            op: change.op,
            kind: mapping.kind,
            row: Row {
                entries: entries(data)?,
                mapping,
            },
            old: Row {
                entries: old,
                mapping,
            },
        })
    }

    /// Whether a status field changed, ignoring case; with its previous value.
    pub fn status_change(
        &self,
        field: &'static str,
        now: Option<&Status>,
    ) -> Result<Option<Option<Status>>, MapError> {
        if !self.old.has(field) {
            return Ok(None);
        }
        let before = self.old.previous_status(field)?;
        let same = match (&before, now) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        Ok((!same).then_some(before))
    }

    /// Whether a field went from null to a value in this UPDATE.
    pub fn was_set(&self, field: &'static str) -> bool {
        self.old.was_null(field) && matches!(self.row.value(field), Some(Some(_)))
    }
}
