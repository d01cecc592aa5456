//! GitHub secret scanning alerts. Accepted shapes, pragmatically: a `secret_scanning_alert`
//! webhook payload (`{"action", "alert", "repository", …}`), a JSON array of such payloads, or
//! what the REST API returns for alerts (one alert object, or the array of
//! `GET /repos/{owner}/{repo}/secret-scanning/alerts`, whose alerts carry `repository` on
//! organization-level lists). Webhook alerts usually omit the value; such an alert is rejected
//! with the REST call that returns it.

use super::json::{self, Document, SecretField};
use super::sink::{Hashed, Sink};
use crate::leak::LeakLocation;
use serde::de::{MapAccess, SeqAccess};
use serde_json::{Map, Value};
use std::io::Read;

const EXPECTED: &str = "a GitHub secret_scanning_alert webhook payload, a JSON array of them, or \
                        secret scanning alerts from the REST API";

/// Parses GitHub secret scanning alerts: one payload, or an array of them one at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::walk::<Github>(input, sink)
}

/// The top-level value: one payload or alert, or an array of them.
struct Github;

impl Document for Github {
    const EXPECTED: &'static str = EXPECTED;

    fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, map: A) -> Result<(), A::Error> {
        let mut doc = json::collect_map(map)?;
        match &mut *doc {
            Value::Object(object) if is_alert_like(object) => {
                let _ = sink.outcome(|| "finding 1".to_owned(), finding(object));
                Ok(())
            }
            _ => Err(json::refuse(
                sink,
                format!(
                    "expected {EXPECTED}, found an object with neither `alert` nor `secret_type`"
                ),
            )),
        }
    }

    fn array<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
        json::each_element(seq, |index, mut item| {
            let found = json::kind(&item);
            let outcome = match item.as_object_mut() {
                Some(object) if is_alert_like(object) => finding(object),
                Some(_) => Err("expected an alert or a webhook payload, found an object \
                                with neither `alert` nor `secret_type`"
                    .to_owned()),
                None => Err(format!(
                    "expected an alert or a webhook payload, found {found}"
                )),
            };
            sink.outcome(|| format!("finding {}", index + 1), outcome)
        })
    }
}

fn is_alert_like(object: &Map<String, Value>) -> bool {
    object.contains_key("alert") || object.contains_key("secret_type")
}

/// One payload or alert. A payload names the repository beside the alert (and, for
/// `secret_scanning_alert_location` events, the location); a REST alert is the alert itself.
fn finding(object: &mut Map<String, Value>) -> Result<Hashed, String> {
    let outer_repo = full_name(object);
    let outer_location = object
        .get("location")
        .and_then(|location| location.get("details"))
        .and_then(Value::as_object)
        .map(commit_location);
    let alert = if object.contains_key("alert") {
        match object.get_mut("alert") {
            Some(Value::Object(alert)) => alert,
            other => {
                let found = other.map_or("missing", |value| json::kind(value));
                return Err(format!("`alert` is {found}, expected an object"));
            }
        }
    } else {
        object
    };
    if !alert.contains_key("secret_type") && !alert.contains_key("secret") {
        return Err("alert has no `secret_type`: not a secret scanning alert".to_owned());
    }
    let repo = outer_repo.or_else(|| full_name(alert));
    let number = alert.get("number").and_then(Value::as_u64);
    let secret = match json::take_secret(alert, "secret") {
        SecretField::Value(secret) => secret,
        SecretField::Missing | SecretField::Empty => {
            return Err(no_secret(repo.as_deref(), number));
        }
        SecretField::NotAString(found) => {
            return Err(format!("`secret` is {found}, expected a string"));
        }
    };
    let detector = match json::text(alert, "secret_type") {
        Some(kind) => format!("github:{kind}"),
        None => "github".to_owned(),
    };
    let found_at = alert_location(alert).or(outer_location).unwrap_or_default();
    let location = LeakLocation {
        repo,
        url: json::text(alert, "html_url"),
        ..found_at
    };
    Ok(Hashed::of(&secret, detector, location))
}

/// The advice for an alert without its value: the REST API returns it.
fn no_secret(repo: Option<&str>, number: Option<u64>) -> String {
    let repo = repo.unwrap_or("{owner}/{repo}");
    match number {
        Some(n) => format!(
            "alert {n} carries no secret value; fetch it with \
             GET /repos/{repo}/secret-scanning/alerts/{n} and ingest that"
        ),
        None => format!(
            "alert carries no secret value; fetch it with \
             GET /repos/{repo}/secret-scanning/alerts/{{alert_number}} and ingest that"
        ),
    }
}

fn full_name(object: &Map<String, Value>) -> Option<String> {
    object
        .get("repository")
        .and_then(Value::as_object)
        .and_then(|repository| json::text(repository, "full_name"))
}

/// Where the alert says the value was first seen: `first_location_detected` (REST), else the
/// first entry of an embedded `locations` list (`GET …/alerts/{n}/locations` items).
fn alert_location(alert: &Map<String, Value>) -> Option<LeakLocation> {
    let first = alert
        .get("first_location_detected")
        .and_then(Value::as_object);
    let listed = || {
        alert
            .get("locations")
            .and_then(Value::as_array)
            .and_then(|locations| locations.first())
            .and_then(|location| location.get("details"))
            .and_then(Value::as_object)
    };
    first.or_else(listed).map(commit_location)
}

/// A commit location's details. Locations in issues, pull requests or wikis have other fields
/// and leave these empty.
fn commit_location(details: &Map<String, Value>) -> LeakLocation {
    LeakLocation {
        file: json::text(details, "path"),
        line: json::line(details, "start_line"),
        commit: json::text(details, "commit_sha"),
        ..LeakLocation::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::ingest::Rejected;
    use crate::leak::LeakFinding;
    use crate::secret::Secret;

    const WEBHOOK: &str = include_str!("../../../../tests/fixtures/ingest/github-webhook.json");
    const ALERTS: &str = include_str!("../../../../tests/fixtures/ingest/github-alerts.json");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn github_webhook_yields_hashed_finding_with_repo_and_alert_url() {
        let parsed = parse(WEBHOOK).expect("a valid payload");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(
            parsed.findings,
            vec![LeakFinding {
                fingerprint: fingerprint("FAKE-github-adafruit-0001-not-a-real-key"),
                detector: "github:adafruit_io_key".into(),
                location: LeakLocation {
                    repo: Some("acme/payments".into()),
                    file: Some("scripts/feed.py".into()),
                    line: Some(8),
                    commit: Some("f14d7debf9775f957cf4f1e8176da0786431f72b".into()),
                    url: Some(
                        "https://github.com/acme/payments/security/secret-scanning/42".into()
                    ),
                },
            }]
        );
    }

    #[test]
    fn rest_alert_list_yields_findings_and_asks_for_missing_values() {
        let parsed = parse(ALERTS).expect("a valid alert list");
        assert_eq!(
            parsed.findings,
            vec![LeakFinding {
                fingerprint: fingerprint("FAKE-github-mailchimp-0002-not-a-real-key"),
                detector: "github:mailchimp_api_key".into(),
                location: LeakLocation {
                    repo: Some("acme/billing".into()),
                    file: Some("billing/mail.rb".into()),
                    line: Some(19),
                    commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                    url: Some("https://github.com/acme/billing/security/secret-scanning/7".into()),
                },
            }]
        );
        assert_eq!(
            parsed.rejected,
            vec![Rejected {
                position: "finding 2".into(),
                reason: "alert 8 carries no secret value; fetch it with \
                         GET /repos/acme/billing/secret-scanning/alerts/8 and ingest that"
                    .into(),
            }]
        );
    }

    #[test]
    fn array_of_payloads_uses_locations_list_and_location_events() {
        let payloads = r#"[
            {"action": "created", "repository": {"full_name": "acme/web"},
             "alert": {"number": 3, "secret_type": "npm_access_token", "secret": "FAKE-github-0003",
                       "locations": [{"type": "commit", "details": {"path": "a/.npmrc", "start_line": 2, "commit_sha": "abc"}}]}},
            {"action": "created", "repository": {"full_name": "acme/web"},
             "location": {"type": "commit", "details": {"path": "b.txt", "start_line": 5, "commit_sha": "def"}},
             "alert": {"number": 4, "secret_type": "npm_access_token", "secret": "FAKE-github-0004"}},
            {"action": "created", "alert": {"number": 5, "secret_type": "npm_access_token"}},
            {"zen": "Keep it logically awesome.", "hook_id": 1},
            {"action": "created", "alert": {"number": 6, "rule": {"id": "js/xss"}}}
        ]"#;
        let parsed = parse(payloads).expect("payloads");
        let files: Vec<_> = parsed
            .findings
            .iter()
            .map(|f| {
                (
                    f.location.file.as_deref(),
                    f.location.line,
                    f.location.commit.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                (Some("a/.npmrc"), Some(2), Some("abc")),
                (Some("b.txt"), Some(5), Some("def"))
            ]
        );
        let reasons: Vec<_> = parsed.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "alert 5 carries no secret value; fetch it with \
                 GET /repos/{owner}/{repo}/secret-scanning/alerts/5 and ingest that",
                "expected an alert or a webhook payload, found an object with neither `alert` \
                 nor `secret_type`",
                "alert has no `secret_type`: not a secret scanning alert",
            ]
        );
        assert_eq!(parsed.rejected[0].position, "finding 3");
    }

    #[test]
    fn malformed_github_input_is_an_error() {
        let ping = parse(r#"{"zen": "Design for failure.", "hook_id": 1}"#).expect_err("a ping");
        assert!(ping.contains("neither `alert` nor `secret_type`"), "{ping}");
        assert!(
            parse(r#""FAKE-github-0005""#)
                .expect_err("a string")
                .ends_with("found a string")
        );
        assert!(parse(r#"{"alert": {"secret": "FAKE-github-0006""#).is_err());
    }
}
