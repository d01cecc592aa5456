//! Arbitrary JSON for the property tests of keyloop's decoders, shared by the crates' test
//! targets (each includes this file with `#[path]`; it is not a crate, so no crate depends on
//! proptest outside its tests).
//!
//! A document is a tree rendered to text by hand, so it can hold what a serializer never
//! writes: numbers beyond every integer type, lone surrogate escapes, duplicate keys, control
//! characters. A [`Planted`] secret is put into string values; the tests check that it never
//! comes back in an error or a rejection.

#![allow(dead_code, unreachable_pub)]

use proptest::prelude::*;

/// A JSON document as a tree.
#[derive(Debug, Clone)]
pub enum Json {
    /// A token written as it is: `null`, `true`, `-0`, `1e999`, `18446744073709551616`.
    Raw(String),
    /// A string, escaped when rendered.
    Str(String),
    /// The inside of a string literal written as it is, such as a lone `\ud800` escape.
    RawStr(String),
    /// The planted secret, as a string (see [`Planted`]).
    Planted,
    /// An array.
    Array(Vec<Json>),
    /// An object; keys (strings or the planted secret) may repeat.
    Object(Vec<(Json, Json)>),
    /// Not JSON but JSON lines: each item rendered on its own line (`\n`, or `\r\n` when the
    /// flag is set).
    Lines(Vec<Json>, bool),
}

impl Json {
    /// The document as JSON text, with `planted` where the tree says [`Json::Planted`].
    pub fn render(&self, planted: &Planted) -> String {
        let mut out = String::new();
        self.write(&mut out, planted);
        out
    }

    fn write(&self, out: &mut String, planted: &Planted) {
        match self {
            Self::Raw(token) => out.push_str(token),
            Self::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings encode")),
            Self::Planted => {
                out.push_str(&serde_json::to_string(&planted.value).expect("strings encode"))
            }
            Self::RawStr(inner) => {
                out.push('"');
                out.push_str(inner);
                out.push('"');
            }
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out, planted);
                }
                out.push(']');
            }
            Self::Lines(lines, crlf) => {
                for (i, line) in lines.iter().enumerate() {
                    if i > 0 {
                        out.push_str(if *crlf { "\r\n" } else { "\n" });
                    }
                    line.write(out, planted);
                }
            }
            Self::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match key {
                        Self::Str(_) | Self::Planted | Self::RawStr(_) => key.write(out, planted),
                        // Only strings are keys; anything else is written as its text.
                        other => {
                            let text = other.render(planted);
                            out.push_str(&serde_json::to_string(&text).expect("keys encode"));
                        }
                    }
                    out.push(':');
                    value.write(out, planted);
                }
                out.push('}');
            }
        }
    }
}

/// A secret planted in generated input. `value` goes into the input; `marker`, a distinctive
/// part of it that no escaping changes, is what the tests look for in every output.
#[derive(Debug, Clone)]
pub struct Planted {
    /// What is put into string values.
    pub value: String,
    /// `PLANTED` and 24 to 40 random letters and digits, inside `value`.
    pub marker: String,
}

impl Planted {
    /// True when `text` shows the secret (its marker).
    pub fn is_in(&self, text: &str) -> bool {
        text.contains(&self.marker)
    }
}

/// A planted secret with odd text around its marker.
pub fn planted() -> BoxedStrategy<Planted> {
    ("[A-Za-z0-9]{24,40}", short_odd_text(), short_odd_text())
        .prop_map(|(core, before, after)| {
            let marker = format!("PLANTED{core}");
            Planted {
                value: format!("{before}{marker}{after}"),
                marker,
            }
        })
        .boxed()
}

fn short_odd_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just(String::new()),
        2 => "\\PC{0,6}",
        1 => "[\\x00-\\x1f\\u{85}\\u{2028}\\u{202e}\\u{feff}\"\\\\]{1,3}",
    ]
    .boxed()
}

/// Strings a decoder may meet: printable text in any script, control and direction marks,
/// quotes and backslashes, emoji, empty, whitespace only, and long runs.
pub fn odd_text() -> BoxedStrategy<String> {
    prop_oneof![
        12 => "\\PC{0,24}",
        2 => "[\\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{202e}\\u{feff}\\u{fffd}\"\\\\/]{1,8}",
        1 => "[\\u{1f600}-\\u{1f64f}\\u{10000}\\u{10ffff}]{1,4}",
        1 => Just(String::new()),
        1 => "[ \\t\\r\\n]{1,4}",
        1 => "[a-z]{300,1200}",
    ]
    .boxed()
}

/// Numbers: every integer width, floats, and tokens no integer type holds (or that are not
/// JSON at all: `NaN`, `01`, `+1`).
pub fn number() -> BoxedStrategy<Json> {
    prop_oneof![
        3 => any::<i64>().prop_map(|n| Json::Raw(n.to_string())),
        3 => any::<u64>().prop_map(|n| Json::Raw(n.to_string())),
        2 => proptest::num::f64::NORMAL.prop_map(|f| Json::Raw(format!("{f:e}"))),
        2 => proptest::sample::select(vec![
            "0", "-0", "0.0", "1E+2", "4.9e-324", "1e-400", "1e999", "-1e999",
            "18446744073709551616", "-9223372036854775809",
            "123456789012345678901234567890123456789",
        ])
        .prop_map(|t| Json::Raw(t.to_owned())),
        1 => proptest::sample::select(vec!["NaN", "Infinity", "01", "+1", ".5", "1.", "0x10", "1e"])
            .prop_map(|t| Json::Raw(t.to_owned())),
    ]
    .boxed()
}

/// String literals that are not valid text once unescaped, or not valid escapes at all.
fn odd_string_literal() -> BoxedStrategy<Json> {
    proptest::sample::select(vec![
        "\\ud800",
        "\\udc00\\ud800",
        "\\ud83d\\ude00",
        "\\u0000",
        "\\uFFFF",
        "\\u12",
        "\\x41",
        "\\",
        "tab\there",
    ])
    .prop_map(|inner| Json::RawStr(inner.to_owned()))
    .boxed()
}

/// Any scalar, the planted secret among the strings.
pub fn scalar() -> BoxedStrategy<Json> {
    prop_oneof![
        1 => Just(Json::Raw("null".into())),
        1 => any::<bool>().prop_map(|b| Json::Raw(b.to_string())),
        3 => number(),
        4 => odd_text().prop_map(Json::Str),
        3 => Just(Json::Planted),
        1 => odd_string_literal(),
    ]
    .boxed()
}

/// Object keys: mostly odd text, sometimes the planted secret.
pub fn key() -> BoxedStrategy<Json> {
    prop_oneof![
        4 => odd_text().prop_map(Json::Str),
        1 => Just(Json::Planted),
    ]
    .boxed()
}

/// Any JSON value up to four levels deep, the planted secret among its strings and keys.
pub fn value() -> BoxedStrategy<Json> {
    value_keyed(key())
}

/// Any JSON value up to four levels deep whose object keys come from `keys`: for positions
/// where a parser reads keys as names (file names, say), which it may quote.
pub fn value_keyed(keys: BoxedStrategy<Json>) -> BoxedStrategy<Json> {
    scalar()
        .prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                proptest::collection::vec((keys.clone(), inner), 0..6).prop_map(Json::Object),
            ]
        })
        .boxed()
}

/// A name or location (a file, a rule, a repository): odd text, never the planted secret,
/// since parsers pass these on by design.
pub fn label() -> BoxedStrategy<Json> {
    odd_text().prop_map(Json::Str).boxed()
}

/// Mostly `valid`, sometimes (one in thirteen) any value at all: a wrong type, the planted
/// secret, an odd number. Rare enough that a good share of shaped documents is valid as a
/// whole, so decoding goes past the first field.
pub fn mostly(valid: BoxedStrategy<Json>) -> BoxedStrategy<Json> {
    prop_oneof![
        12 => valid,
        1 => value(),
    ]
    .boxed()
}

/// An object with the named fields, each usually (97 %) present with a value of its strategy,
/// plus sometimes (one in eight) unexpected fields, in a shuffled order.
pub fn object(fields: Vec<(&'static str, BoxedStrategy<Json>)>) -> BoxedStrategy<Json> {
    let present: Vec<_> = fields
        .into_iter()
        .map(|(name, strategy)| {
            proptest::option::weighted(
                0.97,
                strategy.prop_map(move |v| (Json::Str(name.to_owned()), v)),
            )
        })
        .collect();
    let extra = prop_oneof![
        7 => Just(Vec::new()),
        1 => proptest::collection::vec((key(), value()), 1..3),
    ];
    (present, extra)
        .prop_map(|(present, extra)| {
            present
                .into_iter()
                .flatten()
                .chain(extra)
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
        .prop_map(Json::Object)
        .boxed()
}

/// An object with exactly the named fields and values: a valid shape, for positive checks.
pub fn exact_object(fields: Vec<(&'static str, BoxedStrategy<Json>)>) -> BoxedStrategy<Json> {
    let values: Vec<_> = fields
        .into_iter()
        .map(|(name, strategy)| strategy.prop_map(move |v| (Json::Str(name.to_owned()), v)))
        .collect();
    values.prop_map(Json::Object).boxed()
}

/// Damage done to a rendered document: none most of the time, else the text cut short, a
/// byte changed or a byte inserted, at a random place.
#[derive(Debug, Clone)]
pub struct Damage {
    how: u8,
    at: proptest::sample::Index,
    byte: u8,
}

impl Damage {
    /// `doc` rendered with `planted`, then damaged.
    pub fn apply(&self, doc: &Json, planted: &Planted) -> Vec<u8> {
        let mut bytes = doc.render(planted).into_bytes();
        let at = self.at.index(bytes.len() + 1);
        match self.how {
            0 => bytes.truncate(at),
            1 if at < bytes.len() => bytes[at] = self.byte,
            2 => bytes.insert(at, self.byte),
            _ => {}
        }
        bytes
    }
}

/// Damage, or none (five times in eight).
pub fn damage() -> BoxedStrategy<Damage> {
    (0..8u8, any::<proptest::sample::Index>(), any::<u8>())
        .prop_map(|(how, at, byte)| Damage { how, at, byte })
        .boxed()
}

/// A string value from a regex.
pub fn text(regex: &'static str) -> BoxedStrategy<Json> {
    proptest::string::string_regex(regex)
        .expect("a valid regex")
        .prop_map(Json::Str)
        .boxed()
}

/// A string value chosen from `options`.
pub fn one_of(options: &'static [&'static str]) -> BoxedStrategy<Json> {
    proptest::sample::select(options)
        .prop_map(|s| Json::Str(s.to_owned()))
        .boxed()
}

/// An RFC 3339 timestamp with or without fractions and offsets.
pub fn timestamp() -> BoxedStrategy<Json> {
    text(
        "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])",
    )
}

/// A UUID in its hyphenated form.
pub fn uuid() -> BoxedStrategy<Json> {
    text("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
}

/// A valid credential id (`pg/app`).
pub fn credential_id() -> BoxedStrategy<Json> {
    text("[a-z0-9][a-z0-9_-]{0,12}(/[a-z0-9_-]{1,12}){0,3}")
}

/// A non-negative integer.
pub fn unsigned() -> BoxedStrategy<Json> {
    any::<u64>().prop_map(|n| Json::Raw(n.to_string())).boxed()
}

/// Any `i64`.
pub fn signed() -> BoxedStrategy<Json> {
    any::<i64>().prop_map(|n| Json::Raw(n.to_string())).boxed()
}

/// A boolean.
pub fn boolean() -> BoxedStrategy<Json> {
    any::<bool>().prop_map(|b| Json::Raw(b.to_string())).boxed()
}

/// Text a person might write: any printable characters, the planted secret sometimes.
pub fn free_text() -> BoxedStrategy<Json> {
    prop_oneof![
        3 => odd_text().prop_map(Json::Str),
        1 => Just(Json::Planted),
    ]
    .boxed()
}

/// JSON lines: each line from `line`, with blank lines and lines that are not JSON among them.
pub fn lines(line: BoxedStrategy<Json>) -> BoxedStrategy<Json> {
    let any_line = prop_oneof![
        12 => line,
        1 => Just(Json::Raw(String::new())),
        1 => "\\PC{1,30}".prop_map(Json::Raw),
        1 => Just(Json::Planted),
    ];
    (proptest::collection::vec(any_line, 1..6), any::<bool>())
        .prop_map(|(lines, crlf)| Json::Lines(lines, crlf))
        .boxed()
}
