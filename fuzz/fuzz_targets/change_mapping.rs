//! The change-to-event mapping on malformed and unusual rows: arbitrary bytes become a
//! public [`Change`], which goes through `capture::log::publishable` (change -> `Event::of` ->
//! `events::frame`), the path every captured row takes to subscribers, with and without
//! event rules that read the row (every kind of rule, on the columns `status`, `at` and
//! `n`).
//!
//! Input layout (see `fuzz/seeds/change_mapping/`):
//!
//! ```text
//! byte 0       op: INSERT, UPDATE, DELETE, TRUNCATE (value modulo 4); bit 7: with rules
//! bytes 1..9   pos, little-endian i64 (missing bytes are zero)
//! rest         fields separated by NUL: table, ts, data, old, topic, topic, ...
//! ```
//!
//! `data` and `old` are used as row JSON when they are UTF-8 and parse as JSON (the
//! check `capture::log` makes on a log row), and are absent otherwise or when empty;
//! every op gets every combination, as a hand-edited log can have.
//!
//! Invariants: nothing panics; the frame is valid JSON with exactly the documented
//! keys; `pos`, `table`, `op`, `topics` and `ts` are the change's; `event` is
//! `Event::of`'s name; `data` and `old` are the row JSON byte for byte; the published
//! position, name and topics are the change's.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rowcast::capture::log;
use rowcast::events::{self, Change, Event, Mapping, Mappings, Op, Rule, When};
use serde_json::Value;
use serde_json::value::RawValue;

const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

fn row_json(field: Option<&[u8]>) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(field?).ok()?;
    if text.is_empty() {
        return None;
    }
    let raw = RawValue::from_string(text.to_string()).ok()?;
    // The raw value is the input minus surrounding JSON whitespace, nothing else.
    assert_eq!(raw.get(), text.trim_matches(JSON_WHITESPACE));
    Some(raw)
}

fn too_deep(err: &serde_json::Error) -> bool {
    err.to_string().starts_with("recursion limit exceeded")
}

fn text(field: Option<&[u8]>) -> String {
    String::from_utf8_lossy(field.unwrap_or_default()).into_owned()
}

/// Rules of every kind, as `rowcast.watch` could store them.
fn rules() -> Mapping {
    let values = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Mapping::new(
        1,
        vec![
            Rule::new("t.created", When::Op(Op::Insert)),
            Rule::new("t.gone", When::Never),
            Rule::new(
                "t.done",
                When::Becomes("status".into(), values(&["done", "1.50", "true"])),
            ),
            Rule::new("t.set", When::Set("at".into())),
            Rule::new("t.cleared", When::Cleared("at".into())),
            Rule::new("t.moved", When::BecomesAny("n".into())),
            Rule::new("t.changed", When::Changed("status".into())),
            Rule::new("t.deleted", When::Op(Op::Delete)),
        ],
    )
}

fuzz_target!(|input: &[u8]| {
    let Some((&op, rest)) = input.split_first() else {
        return;
    };
    let with_rules = op & 0x80 != 0;
    let op = [Op::Insert, Op::Update, Op::Delete, Op::Truncate][usize::from(op % 4)];
    let mut pos = [0u8; 8];
    let n = rest.len().min(8);
    pos[..n].copy_from_slice(&rest[..n]);
    let pos = i64::from_le_bytes(pos);
    let mut fields = rest[n..].split(|&b| b == 0);
    let table = text(fields.next());
    let ts = text(fields.next());
    let data = row_json(fields.next());
    let old = row_json(fields.next());
    let topics: Vec<String> = fields.map(|t| text(Some(t))).collect();
    let topics_len = topics.len();
    let left_key = old.clone();
    let change = Change {
        pos,
        table,
        op,
        topics,
        ts,
        data,
        old,
        mapping_id: with_rules.then_some(1),
        // Some UPDATEs moved the row off their last topics: those get `row.left` with the
        // row's key, here the old row.
        kept: (op == Op::Update && topics_len > 1)
            .then(|| 1 + pos.unsigned_abs() as usize % (topics_len - 1)),
        left_key: left_key.clone(),
    };

    let mappings = Mappings::new();
    mappings.insert(rules());
    let published = log::publishable(&change, &mappings);
    let mapping = mappings.for_change(&change).expect("mapping 1 is loaded");
    let event = Event::of(&change, Ok(mapping.as_deref()));
    assert_eq!(published.pos, change.pos);
    assert_eq!(published.event, event);
    assert_eq!(published.topics, change.topics);
    // The topics a row left get a key-only frame of valid JSON, and only those topics.
    if let Some(left) = &published.left {
        let kept = change.kept.expect("a left frame only with kept");
        assert_eq!(left.topics, change.topics[kept..]);
        assert_eq!(left.event.name(), "row.left");
        if let Err(err) = serde_json::from_str::<Value>(left.frame.as_str())
            && !too_deep(&err)
        {
            panic!("left frame {:?}: {err}", left.frame.as_str());
        }
    }
    let frame = published.frame.as_str();
    assert_eq!(
        frame,
        events::frame(&change, &event),
        "one frame per change"
    );

    // Valid JSON: an object of raw values, every key once. Row JSON nested as deep as
    // serde_json's recursion limit (128) is one level deeper inside the frame, which
    // serde_json then refuses to read back; browsers read it, so that is not a defect
    // of the frame.
    let keys: BTreeMap<&str, &RawValue> = match serde_json::from_str(frame) {
        Ok(keys) => keys,
        Err(err) if too_deep(&err) => return,
        Err(err) => panic!("frame {frame:?}: {err}"),
    };
    let mut expected = vec!["type", "pos", "event", "table", "op", "topics", "ts"];
    expected.extend(change.data.as_ref().map(|_| "data"));
    expected.extend(change.old.as_ref().map(|_| "old"));
    expected.sort_unstable();
    assert_eq!(keys.keys().copied().collect::<Vec<_>>(), expected);
    let field = |key: &str| -> Value {
        serde_json::from_str(keys[key].get()).unwrap_or_else(|err| panic!("{key}: {err}"))
    };
    assert_eq!(field("type"), "event");
    assert_eq!(field("pos").as_i64(), Some(change.pos));
    assert_eq!(field("event"), event.name());
    assert_eq!(field("table"), change.table.as_str());
    assert_eq!(field("op"), change.op.as_str());
    assert_eq!(field("ts"), change.ts.as_str());
    assert_eq!(field("topics"), serde_json::json!(change.topics));
    if let Some(data) = &change.data {
        assert_eq!(keys["data"].get(), data.get(), "data byte for byte");
    }
    if let Some(old) = &change.old {
        assert_eq!(keys["old"].get(), old.get(), "old byte for byte");
    }

    // Where the row JSON also reads as plain values (lone surrogate escapes do not),
    // so does the whole frame, with the same values.
    let plain = |raw: &Option<Box<RawValue>>| {
        raw.as_ref()
            .map(|r| serde_json::from_str::<Value>(r.get()))
            .transpose()
    };
    if let (Ok(data), Ok(old)) = (plain(&change.data), plain(&change.old)) {
        let whole: Value =
            serde_json::from_str(frame).unwrap_or_else(|err| panic!("frame {frame:?}: {err}"));
        assert_eq!(whole.get("data"), data.as_ref());
        assert_eq!(whole.get("old"), old.as_ref());
    }
});
