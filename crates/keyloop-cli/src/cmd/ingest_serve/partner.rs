//! The body of a partner-program delivery: a JSON array of matches
//! `{"token", "type", "url", "source"}` (GitHub's docs; `url` may be empty, fields GitHub may
//! add are ignored). Read with serde visitors rather than into a `serde_json::Value`: each
//! `token` goes from the body straight into a [`Secret`] and is hashed, and a batch of tens of
//! thousands of matches costs one small record per match. No message quotes the body: wrong
//! shapes are described by kind and position, never with serde's own words (which quote
//! strings).

use keyloop_core::{Fingerprint, LeakFinding, LeakLocation, Secret};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One match, hashed.
#[derive(Debug)]
pub(crate) struct Match {
    pub(crate) fingerprint: Fingerprint,
    /// GitHub's name of the pattern that matched (`type`).
    pub(crate) token_type: String,
    pub(crate) url: Option<String>,
    pub(crate) source: Option<String>,
}

impl Match {
    /// The SHA-256 hex of the token: GitHub's `token_hash`.
    pub(crate) fn token_hash(&self) -> &str {
        self.fingerprint.sha256.as_deref().unwrap_or_default()
    }

    /// The leak finding: `type` (and `source`, after `@`: the event's location has no field of
    /// its own for it) in the detector, `url` in the location with the repository, commit and
    /// file it names when it is a GitHub blob or commit URL.
    pub(crate) fn finding(&self) -> LeakFinding {
        let detector = match &self.source {
            Some(source) => format!("github:{}@{source}", self.token_type),
            None => format!("github:{}", self.token_type),
        };
        LeakFinding {
            fingerprint: self.fingerprint.clone(),
            detector,
            location: location(self.url.as_deref()),
        }
    }
}

/// A match that could not be used, and why (never its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Rejected {
    /// `match 3` (1-based, in the array's order).
    pub(crate) position: String,
    pub(crate) reason: String,
}

/// A delivery's matches, in order, and the elements that were not matches.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) matches: Vec<Match>,
    pub(crate) rejected: Vec<Rejected>,
}

const EXPECTED: &str = "a JSON array of matches ({\"token\", \"type\", \"url\", \"source\"})";

/// Reads a delivery's body. An error is a body that is not an array of objects at all.
pub(crate) fn parse(body: &[u8]) -> Result<Batch, String> {
    let mut refused = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_any(Top {
            refused: &mut refused,
        })
        .and_then(|batch| de.end().map(|()| batch));
    match (parsed, refused) {
        (Ok(batch), _) => Ok(batch),
        (Err(_), Some(reason)) => Err(reason),
        (Err(e), None) => Err(super::body::json_problem(&e)),
    }
}

/// Where a GitHub URL says the match was: `https://github.com/<owner>/<repo>/blob/<commit>/<path>`
/// or `…/commit/<commit>`; any URL is kept as the location's link.
fn location(url: Option<&str>) -> LeakLocation {
    let url = url.map(str::trim).filter(|u| !u.is_empty());
    let mut location = LeakLocation {
        url: url.map(str::to_owned),
        ..LeakLocation::default()
    };
    let Some(path) = url.and_then(|u| u.strip_prefix("https://github.com/")) else {
        return location;
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let parts: Vec<&str> = path.splitn(5, '/').collect();
    if let [owner, repo, ..] = parts[..]
        && !owner.is_empty()
        && !repo.is_empty()
    {
        location.repo = Some(format!("{owner}/{repo}"));
    }
    match parts[..] {
        [_, _, "blob", commit, file] if !commit.is_empty() && !file.is_empty() => {
            location.commit = Some(commit.to_owned());
            location.file = Some(file.to_owned());
        }
        [_, _, "commit", commit, ..] | [_, _, "commit", commit] if !commit.is_empty() => {
            location.commit = Some(commit.to_owned());
        }
        _ => {}
    }
    location
}

/// The top-level value, which must be an array. Anything else is refused by its kind, the
/// reason kept in `refused` (serde_json's error would add words of its own).
struct Top<'r> {
    refused: &'r mut Option<String>,
}

impl Top<'_> {
    fn refuse<E: de::Error>(self, found: &str) -> E {
        let reason = format!("expected {EXPECTED}, found {found}");
        *self.refused = Some(reason.clone());
        E::custom(reason)
    }
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Batch;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Batch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let mut batch = Batch::default();
        let mut index = 0usize;
        while let Some(Element(outcome)) = seq.next_element()? {
            index += 1;
            match outcome {
                Ok(found) => batch.matches.push(found),
                Err(reason) => batch.rejected.push(Rejected {
                    position: format!("match {index}"),
                    reason,
                }),
            }
        }
        Ok(batch)
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Batch, A::Error> {
        Err(self.refuse("an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Batch, E> {
        Err(self.refuse("a string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Batch, E> {
        Err(self.refuse("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Batch, E> {
        Err(self.refuse("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Batch, E> {
        Err(self.refuse("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Batch, E> {
        Err(self.refuse("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Batch, E> {
        Err(self.refuse("null"))
    }
}

/// One element of the array: a match, or why it is not one.
struct Element(Result<Match, String>);

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

const EXPECTED_ELEMENT: &str = "a match ({\"token\", \"type\", \"url\", \"source\"})";

fn not_a_match(found: &str) -> Element {
    Element(Err(format!("expected {EXPECTED_ELEMENT}, found {found}")))
}

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_ELEMENT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        let (mut token, mut token_type, mut url, mut source) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "token" => &mut token,
                "type" => &mut token_type,
                "url" => &mut url,
                "source" => &mut source,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Field>()?);
        }
        Ok(Element(build(token, token_type, url, source)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_a_match("an array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Element, E> {
        Ok(not_a_match("a string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Element, E> {
        Ok(not_a_match("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Element, E> {
        Ok(not_a_match("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Element, E> {
        Ok(not_a_match("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Element, E> {
        Ok(not_a_match("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Element, E> {
        Ok(not_a_match("null"))
    }
}

/// A field's value: its text (a token's goes straight into a [`Secret`]), or what it was
/// instead.
enum Field {
    Text(Secret),
    Null,
    Other(&'static str),
}

impl Field {
    /// The text of an optional field; empty is none.
    fn optional(field: Option<Self>, name: &str) -> Result<Option<String>, String> {
        match field {
            None | Some(Self::Null) => Ok(None),
            Some(Self::Text(text)) => {
                let text = text.expose().trim();
                Ok((!text.is_empty()).then(|| text.to_owned()))
            }
            Some(Self::Other(kind)) => Err(format!("`{name}` is {kind}, expected a string")),
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(Field::Text(Secret::from(v)))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Field, E> {
        Ok(Field::Text(Secret::new(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field, E> {
        Ok(Field::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Field, E> {
        Ok(Field::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Field, E> {
        Ok(Field::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field, E> {
        Ok(Field::Other("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an object"))
    }
}

/// A match from its fields: `token` and `type` are required strings.
fn build(
    token: Option<Field>,
    token_type: Option<Field>,
    url: Option<Field>,
    source: Option<Field>,
) -> Result<Match, String> {
    let fingerprint = match token {
        Some(Field::Text(token)) if !token.expose().trim().is_empty() => Fingerprint::of(&token),
        Some(Field::Text(_)) => return Err("`token` is empty".to_owned()),
        Some(Field::Other(kind)) => return Err(format!("`token` is {kind}, expected a string")),
        None | Some(Field::Null) => return Err("no `token`".to_owned()),
    };
    let Some(token_type) = Field::optional(token_type, "type")? else {
        return Err("no `type` (the name of the pattern that matched)".to_owned());
    };
    Ok(Match {
        fingerprint,
        token_type,
        url: Field::optional(url, "url")?,
        source: Field::optional(source, "source")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLANTED: &str = "FAKE-partner-planted-0001";

    #[test]
    fn githubs_example_delivery_is_one_hashed_match_with_its_location() {
        let body = br#"[{"token":"NMIfyYncKcRALEXAMPLE","type":"mycompany_api_token","url":"https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt","source":"content"}]"#;
        let batch = parse(body).unwrap();
        assert!(batch.rejected.is_empty());
        let [found] = &batch.matches[..] else {
            panic!("{:?}", batch.matches)
        };
        let expected = Fingerprint::of(&Secret::from("NMIfyYncKcRALEXAMPLE"));
        assert_eq!(found.fingerprint, expected);
        assert_eq!(found.token_hash(), expected.sha256.as_deref().unwrap());
        let finding = found.finding();
        assert_eq!(finding.detector, "github:mycompany_api_token@content");
        assert_eq!(
            finding.location,
            LeakLocation {
                repo: Some("octocat/Hello-World".into()),
                file: Some("foo/bar.txt".into()),
                commit: Some("12345600b9cbe38a219f39a9941c9319b600c002".into()),
                url: Some("https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt".into()),
                line: None,
            }
        );
    }

    #[test]
    fn an_empty_url_and_no_source_leave_only_the_type() {
        let batch = parse(br#"[{"token":"FAKE-partner-0002","type":"t","url":""}]"#).unwrap();
        let finding = batch.matches[0].finding();
        assert_eq!(finding.detector, "github:t");
        assert_eq!(finding.location, LeakLocation::default());
        let commit = location(Some("https://github.com/o/r/commit/abc123#diff"));
        assert_eq!(commit.commit.as_deref(), Some("abc123"));
        assert_eq!(commit.repo.as_deref(), Some("o/r"));
        let elsewhere = location(Some("https://www.npmjs.com/package/x"));
        assert_eq!(elsewhere.repo, None);
    }

    #[test]
    fn elements_that_are_not_matches_are_rejected_by_position_and_the_rest_kept() {
        let p = PLANTED;
        let body = format!(
            r#"[{{"token":"{p}-ok","type":"t"}}, "{p}", {{"token":12,"type":"t"}},
               {{"type":"t"}}, {{"token":"{p}"}}, {{"token":"  ","type":"t"}},
               {{"token":"{p}","type":"t","url":["{p}"]}}, [{{"token":"{p}"}}],
               {{"token":"{p}-ok2","type":"t","extra":{{"{p}":"{p}"}}}}, null]"#
        );
        let batch = parse(body.as_bytes()).unwrap();
        assert_eq!(batch.matches.len(), 2);
        let reasons: Vec<_> = batch
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.position, r.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                "match 2: expected a match ({\"token\", \"type\", \"url\", \"source\"}), found a string",
                "match 3: `token` is a number, expected a string",
                "match 4: no `token`",
                "match 5: no `type` (the name of the pattern that matched)",
                "match 6: `token` is empty",
                "match 7: `url` is an array, expected a string",
                "match 8: expected a match ({\"token\", \"type\", \"url\", \"source\"}), found an array",
                "match 10: expected a match ({\"token\", \"type\", \"url\", \"source\"}), found null",
            ]
        );
        assert!(!format!("{batch:?}").contains("FAKE-partner"));
    }

    #[test]
    fn a_body_that_is_not_an_array_of_matches_is_an_error_without_its_text() {
        let p = PLANTED;
        let cases = [
            (format!(r#"{{"token":"{p}"}}"#), "found an object"),
            (format!(r#""{p}""#), "found a string"),
            ("12".to_owned(), "found a number"),
            (
                format!(r#"[{{"token":"{p}","type":"t"}}"#),
                "not valid JSON: EOF",
            ),
            (
                format!(r#"[{{"token":"{p}","type":"t"}}] {p}"#),
                "trailing characters",
            ),
            (String::new(), "not valid JSON: EOF"),
        ];
        for (body, expected) in cases {
            let err = parse(body.as_bytes()).expect_err(expected);
            assert!(err.contains(expected), "{body:?}: {err}");
            assert!(!err.contains("FAKE-partner"), "{err}");
        }
        assert!(parse(b"[]").unwrap().matches.is_empty());
    }
}
