//! Event rules: how a table's registration names the event of a change.
//!
//! A [`Rule`] pairs a condition on the change ([`When`]) with an event name. The rules of
//! a table are tried in order and the first that holds names the event. They come from
//! `rowcast.mappings.rules`, resolved by `rowcast.watch()` (which checked them against
//! the table), with each column under the name it had when the rules were made, the same
//! name the captured rows use. Reading a change never touches the database.
//!
//! Strings compare without regard to case (`pending` to `PENDING` is not a change, and
//! `status -> confirmed` matches `CONFIRMED`); numbers compare by value; booleans are
//! `true` and `false`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::events::Op;

/// A condition on a change, as `rowcast.watch` resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// The row was inserted, updated or deleted (`insert`, `update`, `delete`).
    Op(Op),
    /// UPDATE: the column went from null to a value (`<column> set`).
    Set(String),
    /// UPDATE: the column went from a value to null (`<column> cleared`).
    Cleared(String),
    /// UPDATE: the column's value changed (`<column> changed`).
    Changed(String),
    /// UPDATE: the column became one of the values, from none of them (`<column> -> v, ...`).
    Becomes(String, Vec<String>),
    /// UPDATE: the column became another non-null value (`<column> -> *`).
    BecomesAny(String),
    /// Never holds: the table's own rules removed this event of its preset.
    Never,
}

impl When {
    /// The column the condition reads, if any.
    pub(crate) fn column(&self) -> Option<&str> {
        match self {
            When::Set(c)
            | When::Cleared(c)
            | When::Changed(c)
            | When::Becomes(c, _)
            | When::BecomesAny(c) => Some(c),
            When::Op(_) | When::Never => None,
        }
    }
}

/// One rule: when it holds, the change is the event `event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The event's name on the wire.
    pub(crate) event: Arc<str>,
    /// When the rule holds.
    pub(crate) when: When,
}

/// A rule as `rowcast.mappings.rules` stores it.
#[derive(Deserialize)]
struct Stored {
    event: String,
    op: Option<String>,
    test: Option<String>,
    column: Option<String>,
    #[serde(default)]
    values: Vec<String>,
}

impl Rule {
    /// A rule naming `event` when `when` holds.
    pub fn new(event: &str, when: When) -> Rule {
        Rule {
            event: event.into(),
            when,
        }
    }

    /// Reads the stored rules of a mapping (a JSON array); `None` if any rule is not one
    /// this service knows, so that the whole mapping is refused rather than half read.
    pub fn parse_all(json: &str) -> Option<Vec<Rule>> {
        let stored: Vec<Stored> = serde_json::from_str(json).ok()?;
        stored.into_iter().map(Rule::from_stored).collect()
    }

    fn from_stored(s: Stored) -> Option<Rule> {
        let when = match (s.op.as_deref(), s.test.as_deref(), s.column) {
            (None, None, None) => When::Never,
            (Some(op), None, None) => When::Op(
                Op::parse(op).filter(|op| matches!(op, Op::Insert | Op::Update | Op::Delete))?,
            ),
            (Some("UPDATE"), Some(test), Some(column)) => match test {
                "set" => When::Set(column),
                "cleared" => When::Cleared(column),
                "changed" => When::Changed(column),
                "becomes_any" => When::BecomesAny(column),
                "becomes" if !s.values.is_empty() => When::Becomes(column, s.values),
                _ => return None,
            },
            _ => return None,
        };
        Some(Rule::new(&s.event, when))
    }

    /// Whether the rule holds for a change `op` whose new row is `row` and, for an
    /// UPDATE, whose previous values of the changed columns are `old`.
    pub(crate) fn holds(&self, op: Op, row: &Columns<'_>, old: &Columns<'_>) -> bool {
        let (column, test) = match &self.when {
            When::Op(wanted) => return *wanted == op,
            When::Never => return false,
            when => (when.column().unwrap_or_default(), when),
        };
        if op != Op::Update {
            return false;
        }
        // A column absent from `old` did not change.
        let (Some(before), Some(now)) = (old.get(column), row.get(column)) else {
            return false;
        };
        let (before, now) = (Value::of(before), Value::of(now));
        match test {
            When::Set(_) => before.is_null() && !now.is_null(),
            When::Cleared(_) => !before.is_null() && now.is_null(),
            When::Changed(_) => !before.same(&now),
            When::BecomesAny(_) => !now.is_null() && !before.same(&now),
            When::Becomes(_, values) => now.is_one_of(values) && !before.is_one_of(values),
            When::Op(_) | When::Never => false,
        }
    }
}

/// The columns of a row's JSON object, each with its unparsed value.
#[derive(Debug, Default)]
pub(crate) struct Columns<'a>(BTreeMap<String, &'a RawValue>);

impl<'a> Columns<'a> {
    /// Splits a JSON object into its columns without parsing the values; `None` if it is
    /// not an object.
    pub(crate) fn of(raw: &'a RawValue) -> Option<Columns<'a>> {
        serde_json::from_str(raw.get()).ok().map(Columns)
    }

    /// The value of `column`, if the row has it.
    pub(crate) fn get(&self, column: &str) -> Option<&'a RawValue> {
        self.0.get(column).copied()
    }
}

/// A column's value as rules compare it.
#[derive(Debug)]
enum Value<'a> {
    Null,
    Text(Cow<'a, str>),
    /// A number or a boolean, as its JSON text.
    Literal(&'a str),
}

impl<'a> Value<'a> {
    fn of(raw: &'a RawValue) -> Value<'a> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<Cow<'a, str>>(text)
                .map(Value::Text)
                .unwrap_or(Value::Literal(text)),
            _ if text == "null" => Value::Null,
            _ => Value::Literal(text),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn same(&self, other: &Value<'_>) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Text(a), Value::Text(b)) => same_text(a, b),
            (Value::Literal(a), Value::Literal(b)) => same_literal(a, b),
            _ => false,
        }
    }

    fn is_one_of(&self, values: &[String]) -> bool {
        match self {
            Value::Null => false,
            Value::Text(text) => values.iter().any(|v| same_text(text, v)),
            Value::Literal(text) => values.iter().any(|v| same_literal(text, v)),
        }
    }
}

fn same_text(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!a.is_ascii() && a.to_lowercase() == b.to_lowercase())
}

/// Booleans by name, numbers by value (`1.50` is `1.5`).
fn same_literal(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    match (decimal(a), decimal(b)) {
        (Some(a), Some(b)) => a == b,
        _ => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
    }
}

/// A plain decimal number in a canonical form (sign, digits without leading zeros, and a
/// fraction without trailing zeros); `None` for anything else (an exponent, say).
fn decimal(text: &str) -> Option<(bool, String, String)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0').to_string();
    let frac = frac.trim_end_matches('0').to_string();
    let zero = int.is_empty() && frac.is_empty();
    Some((negative && !zero, int, frac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    fn holds(rule: &Rule, op: Op, row: &str, old: &str) -> bool {
        let (row, old) = (raw(row), raw(old));
        let row = Columns::of(&row).unwrap();
        let old = Columns::of(&old).unwrap();
        rule.holds(op, &row, &old)
    }

    #[test]
    fn stored_rules_are_read_and_unknown_ones_refuse_the_whole_mapping() {
        let rules = Rule::parse_all(
            r#"[{"event":"a.created","op":"INSERT","from":"rules"},
                {"event":"a.done","op":"UPDATE","test":"becomes","column":"State","attnum":3,"values":["done"]},
                {"event":"a.moved","op":"UPDATE","test":"becomes_any","column":"at","attnum":4},
                {"event":"a.gone","op":null}]"#,
        )
        .unwrap();
        assert_eq!(rules[0].when, When::Op(Op::Insert));
        assert_eq!(
            rules[1].when,
            When::Becomes("State".into(), vec!["done".into()])
        );
        assert_eq!(rules[2].when, When::BecomesAny("at".into()));
        assert_eq!(rules[3].when, When::Never);
        assert!(
            Rule::parse_all(r#"[{"event":"x","op":"UPDATE","test":"is","column":"c"}]"#).is_none()
        );
        assert!(Rule::parse_all(r#"[{"event":"x","op":"TRUNCATE"}]"#).is_none());
        assert!(Rule::parse_all(r#"{"event":"x"}"#).is_none());
    }

    #[test]
    fn set_and_cleared_follow_null_and_only_updates_that_changed_the_column() {
        let set = Rule::new("e", When::Set("t".into()));
        let cleared = Rule::new("e", When::Cleared("t".into()));
        assert!(holds(&set, Op::Update, r#"{"t": 1764}"#, r#"{"t": null}"#));
        assert!(!holds(&set, Op::Update, r#"{"t": 1764}"#, r#"{"t": 5}"#));
        assert!(!holds(&set, Op::Update, r#"{"t": 1764}"#, r#"{}"#));
        assert!(!holds(&set, Op::Insert, r#"{"t": 1764}"#, r#"{}"#));
        assert!(holds(
            &cleared,
            Op::Update,
            r#"{"t": null}"#,
            r#"{"t": "x"}"#
        ));
        assert!(!holds(
            &cleared,
            Op::Update,
            r#"{"t": "y"}"#,
            r#"{"t": "x"}"#
        ));
    }

    #[test]
    fn becomes_compares_text_without_case_numbers_by_value_and_booleans_by_name() {
        let accepted = Rule::new(
            "booking.accepted",
            When::Becomes("s".into(), vec!["confirmed".into(), "accepted".into()]),
        );
        assert!(holds(
            &accepted,
            Op::Update,
            r#"{"s": "CONFIRMED"}"#,
            r#"{"s": "PENDING"}"#
        ));
        assert!(holds(
            &accepted,
            Op::Update,
            r#"{"s": "accepted"}"#,
            r#"{"s": null}"#
        ));
        // From one of the values to another is not "became".
        assert!(!holds(
            &accepted,
            Op::Update,
            r#"{"s": "ACCEPTED"}"#,
            r#"{"s": "Confirmed"}"#
        ));
        let refunded = Rule::new("p.refunded", When::Becomes("r".into(), vec!["true".into()]));
        assert!(holds(
            &refunded,
            Op::Update,
            r#"{"r": true}"#,
            r#"{"r": false}"#
        ));
        assert!(!holds(
            &refunded,
            Op::Update,
            r#"{"r": false}"#,
            r#"{"r": true}"#
        ));
        let level = Rule::new("x", When::Becomes("n".into(), vec!["1.50".into()]));
        assert!(holds(&level, Op::Update, r#"{"n": 1.5}"#, r#"{"n": 2}"#));
        assert!(!holds(&level, Op::Update, r#"{"n": 15}"#, r#"{"n": 2}"#));
        let big = Rule::new(
            "x",
            When::Becomes("n".into(), vec!["9007199254740993".into()]),
        );
        assert!(!holds(
            &big,
            Op::Update,
            r#"{"n": 9007199254740992}"#,
            r#"{"n": 1}"#
        ));
        assert!(holds(
            &big,
            Op::Update,
            r#"{"n": 9007199254740993}"#,
            r#"{"n": 1}"#
        ));
    }

    #[test]
    fn changed_ignores_case_and_becomes_any_needs_a_value() {
        let changed = Rule::new("x", When::Changed("s".into()));
        assert!(!holds(
            &changed,
            Op::Update,
            r#"{"s": "PENDING"}"#,
            r#"{"s": "pending"}"#
        ));
        assert!(holds(
            &changed,
            Op::Update,
            r#"{"s": "Ärger"}"#,
            r#"{"s": "ok"}"#
        ));
        assert!(!holds(
            &changed,
            Op::Update,
            r#"{"s": "ärger"}"#,
            r#"{"s": "ÄRGER"}"#
        ));
        assert!(holds(
            &changed,
            Op::Update,
            r#"{"s": null}"#,
            r#"{"s": "x"}"#
        ));
        let any = Rule::new("x", When::BecomesAny("s".into()));
        assert!(holds(&any, Op::Update, r#"{"s": 8}"#, r#"{"s": 7}"#));
        assert!(holds(&any, Op::Update, r#"{"s": 8}"#, r#"{"s": null}"#));
        assert!(!holds(&any, Op::Update, r#"{"s": null}"#, r#"{"s": 7}"#));
    }

    #[test]
    fn decimals_compare_by_value() {
        assert!(same_literal("1.50", "1.5"));
        assert!(same_literal("-0.0", "0"));
        assert!(same_literal("007", "7"));
        assert!(same_literal("1e2", "100"));
        assert!(!same_literal("1.51", "1.5"));
        assert!(same_literal("TRUE", "true"));
        assert!(!same_literal("true", "1"));
    }
}
