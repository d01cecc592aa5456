//! Report formats that are one JSON document: the document walked with serde, handing each
//! entry on as soon as it is parsed (one element in memory at a time), and refused as a whole,
//! in words that never quote it, when it is not of the format.

use super::input::{Input, Utf8, unreadable};
use super::scrubbed::{Scrubbed, ScrubbedVisitor};
use super::syntax_problem;
use crate::ingest::sink::Sink;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::ops::ControlFlow;

/// The serde_json deserializer over an [`Input`], as the format parsers see it.
type JsonDe<'i, R> = serde_json::Deserializer<serde_json::de::IoRead<&'i mut Input<R>>>;

/// Implements the scalar `visit_*` methods of a [`Visitor`] but `visit_unit` (null, which some
/// formats accept) by calling `self.other(found)`, for visitors that want an array or an
/// object: serde's default methods would describe the unexpected value by quoting it.
macro_rules! scalars_are_other {
    () => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a boolean"))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a number"))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a number"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a number"))
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a string"))
        }
    };
}
pub(crate) use scalars_are_other;

/// A report format that is one JSON document: what it does with the top-level value. Whatever
/// it does not take refuses the whole document ("expected …, found …").
pub(crate) trait Document {
    /// What the format looks like, for errors.
    const EXPECTED: &'static str;

    /// Whether a top-level `null` is a report without findings.
    const NULL_IS_EMPTY: bool = false;

    /// The top-level value is an array.
    fn array<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
        let _ = seq;
        Err(refuse_found::<Self, _>(sink, Found("an array")))
    }

    /// The top-level value is an object.
    fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, map: A) -> Result<(), A::Error> {
        let _ = map;
        Err(refuse_found::<Self, _>(sink, Found("an object")))
    }
}

/// Walks a report of document format `D`, handing entries to the sink as they are reached.
pub(crate) fn walk<D: Document>(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    document(input, D::EXPECTED, sink, |de, sink| {
        de.deserialize_any(TopLevel::<D> {
            sink,
            format: PhantomData,
        })
    })
}

/// Walks a report of document format `D` that may be several documents one after the other
/// (Kingfisher writes one report object per repository, one per line), each as [`walk`] does.
pub(crate) fn walk_each<D: Document>(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    document(input, D::EXPECTED, sink, |de, sink| {
        loop {
            de.deserialize_any(TopLevel::<D> {
                sink: &mut *sink,
                format: PhantomData,
            })?;
            // Only white space left (`document` checks that once more), or another document.
            if de.end().is_ok() {
                return Ok(());
            }
        }
    })
}

/// Refuses a document of format `D` whose top-level value is `found`.
fn refuse_found<D: Document + ?Sized, E: de::Error>(sink: &mut Sink<'_>, found: Found) -> E {
    refuse(sink, format!("expected {}, found {}", D::EXPECTED, found.0))
}

/// The top-level value of a document of format `D`.
struct TopLevel<'s, 'a, D> {
    sink: &'s mut Sink<'a>,
    format: PhantomData<D>,
}

impl<D: Document> TopLevel<'_, '_, D> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(refuse_found::<D, E>(self.sink, found))
    }
}

impl<'de, D: Document> Visitor<'de> for TopLevel<'_, '_, D> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(D::EXPECTED)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        D::array(self.sink, seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        D::object(self.sink, map)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if D::NULL_IS_EMPTY {
            Ok(())
        } else {
            self.other(Found("null"))
        }
    }

    scalars_are_other!();
}

/// Walks one JSON document: `walk` drives the deserializer (handing entries to the sink as it
/// reaches them), then nothing but whitespace may follow. Entries already handed on stay
/// handed on when the document turns out to be malformed further down; the error says where.
/// `expected` names what the format looks like.
pub(super) fn document<'s, R: Read>(
    input: R,
    expected: &str,
    sink: &mut Sink<'s>,
    walk: impl FnOnce(&mut JsonDe<'_, R>, &mut Sink<'s>) -> serde_json::Result<()>,
) -> Result<(), String> {
    let mut input = Input::open(input, Utf8::Check)?;
    let result = {
        let mut de = serde_json::Deserializer::from_reader(&mut input);
        walk(&mut de, sink).and_then(|()| de.end())
    };
    let Err(e) = result else {
        return Ok(());
    };
    if sink.stopped {
        return Ok(());
    }
    if let Some(reason) = sink.refused.take() {
        return Err(reason);
    }
    if let Some(at) = input.not_utf8_at {
        return Err(format!(
            "input is not UTF-8 text (invalid byte at offset {at})"
        ));
    }
    if !input.content {
        // An empty report: a clean scan.
        return Ok(());
    }
    if e.classify() == serde_json::error::Category::Io {
        let e: io::Error = e.into();
        return Err(unreadable(&e));
    }
    Err(format!(
        "not JSON ({} at line {} column {}); expected {expected}",
        syntax_problem(&e),
        e.line(),
        e.column()
    ))
}

/// Ends a walk early because the whole document is not of the format: the reason goes to the
/// sink (serde's own messages can quote the input), the error only unwinds the deserializer.
pub(crate) fn refuse<E: de::Error>(sink: &mut Sink<'_>, reason: String) -> E {
    sink.refused = Some(reason);
    E::custom("refused")
}

/// Ends a walk early because the sink asked to stop.
pub(crate) fn stop<E: de::Error>() -> E {
    E::custom("stopped")
}

/// Hands each element of a JSON array to `on_element` (with its 0-based index) as soon as it is
/// parsed; only one element is in memory at a time.
pub(crate) fn each_element<'de, A: SeqAccess<'de>>(
    mut seq: A,
    mut on_element: impl FnMut(usize, Scrubbed) -> ControlFlow<()>,
) -> Result<(), A::Error> {
    let mut index = 0;
    while let Some(item) = seq.next_element::<Scrubbed>()? {
        if on_element(index, item).is_break() {
            return Err(stop());
        }
        index += 1;
    }
    Ok(())
}

/// The JSON type a visitor was handed instead of what it wanted, with an article.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found(pub(crate) &'static str);

/// Consumes the rest of an object a visitor does not want and says it was one.
pub(crate) fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Found, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(Found("an object"))
}

/// Collects the rest of an object into a [`Scrubbed`] value (one alert, one finding).
pub(crate) fn collect_map<'de, A: MapAccess<'de>>(map: A) -> Result<Scrubbed, A::Error> {
    ScrubbedVisitor.visit_map(map)
}
