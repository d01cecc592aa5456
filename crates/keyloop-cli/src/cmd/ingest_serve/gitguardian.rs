//! `POST /gitguardian`: GitGuardian custom webhooks.
//!
//! GitGuardian signs each request with HMAC-SHA256 over the raw body, keyed by the `Timestamp`
//! header's text followed by the webhook's signature token, and sends `Gitguardian-Signature:
//! sha256=<hex>` (the deprecated `X-GitGuardian-Signature` is read too). The tag is compared in
//! constant time (ring), then the timestamp (Unix seconds, possibly with a fraction) must lie
//! within `--gitguardian-max-skew` of this machine's clock either way, so a captured request
//! cannot be replayed later; one replayed within the window publishes the same leak ids again,
//! which the stream drops.
//!
//! What the payloads carry, and so what keyloop can do with them:
//! - **Incident and occurrence events** (`incident_triggered`, `new_occurrence`,
//!   `incident_regression`, …) carry no secret value. They name the detector, the incident
//!   and its links, and two hashes: `secret_hash` (GitGuardian's own, not reproducible
//!   outside GitGuardian) and `hmsl_hash` (HasMySecretLeaked's: scrypt of the value with a
//!   published pepper), neither of which is a SHA-256 or SHA-1 of the value, which is all
//!   keyloop's fingerprint index matches. Such an event is acknowledged (200) and nothing is
//!   published; the answer's `not_acted_on` says so, and the log too. Acting on them would
//!   take an index of HMSL hashes of keyloop's own values.
//! - **Scan results** (GitGuardian's test message, and the payload of its first webhooks:
//!   `{"type", "gitguardian_link", "matches": [{"type", "match"}]}`) carry the matched values in
//!   `matches[].match`. Each is hashed and published as a leak (detector `gitguardian:<type>`,
//!   the incident link as the location; published as the `generic` format's findings are).

use super::Server;
use super::body;
use super::github::not_enabled;
use super::github_keys::header;
use super::reply::{Reply, Request};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use keyloop_core::ingest::{Entry, Rejected};
use keyloop_core::{Fingerprint, LeakFinding, LeakLocation, Secret};
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The endpoint's path.
pub(crate) const PATH: &str = "/gitguardian";

const SIGNATURE_HEADER: &str = "Gitguardian-Signature";
const LEGACY_SIGNATURE_HEADER: &str = "X-GitGuardian-Signature";
const TIMESTAMP_HEADER: &str = "Timestamp";

/// The GitGuardian endpoint: the webhook's signature token and the replay window.
pub(crate) struct Endpoint {
    token: Secret,
    max_skew: Duration,
}

/// Why a request's signature or timestamp was refused. Each is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MissingTimestamp,
    MissingSignature,
    MalformedSignature,
    BadSignature,
    MalformedTimestamp,
    /// The timestamp is this many seconds away from now (either way).
    OutsideWindow,
}

impl Refusal {
    fn message(self, max_skew: Duration) -> String {
        match self {
            Self::MissingTimestamp => "missing Timestamp header".to_owned(),
            Self::MissingSignature => "missing Gitguardian-Signature header".to_owned(),
            Self::MalformedSignature => {
                "Gitguardian-Signature is not `sha256=` and 64 hex characters".to_owned()
            }
            Self::BadSignature => {
                "the signature does not verify for this body, timestamp and signature token"
                    .to_owned()
            }
            Self::MalformedTimestamp => "Timestamp is not a number of Unix seconds".to_owned(),
            Self::OutsideWindow => format!(
                "Timestamp is more than {}s away from this server's clock: refused as a replay \
                 (check both clocks, or --gitguardian-max-skew)",
                max_skew.as_secs()
            ),
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Self::MissingTimestamp | Self::MissingSignature => "unsigned",
            Self::MalformedSignature | Self::BadSignature => "bad_signature",
            Self::MalformedTimestamp | Self::OutsideWindow => "replay_window",
        }
    }
}

impl Endpoint {
    pub(crate) fn new(token: Secret, max_skew: Duration) -> Self {
        Self { token, max_skew }
    }

    /// Whether a request carries both headers: checked before its body is read.
    fn signed(headers: &HeaderMap) -> Result<(), Refusal> {
        header(headers, TIMESTAMP_HEADER).ok_or(Refusal::MissingTimestamp)?;
        header(headers, SIGNATURE_HEADER)
            .or_else(|| header(headers, LEGACY_SIGNATURE_HEADER))
            .ok_or(Refusal::MissingSignature)?;
        Ok(())
    }

    /// Checks the signature of `body` and its timestamp against `now`.
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Refusal> {
        let timestamp = header(headers, TIMESTAMP_HEADER).ok_or(Refusal::MissingTimestamp)?;
        let signature = header(headers, SIGNATURE_HEADER)
            .or_else(|| header(headers, LEGACY_SIGNATURE_HEADER))
            .ok_or(Refusal::MissingSignature)?;
        let tag = signature
            .trim()
            .strip_prefix("sha256=")
            .and_then(|h| hex::decode(h).ok())
            .filter(|t| t.len() == 32)
            .ok_or(Refusal::MalformedSignature)?;
        // The key is the timestamp's text as sent, then the token, as GitGuardian computes it.
        let mut key = zeroize::Zeroizing::new(timestamp.as_bytes().to_vec());
        key.extend_from_slice(self.token.expose().as_bytes());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        ring::hmac::verify(&key, body, &tag).map_err(|_| Refusal::BadSignature)?;
        let sent = unix_seconds(timestamp).ok_or(Refusal::MalformedTimestamp)?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        if (now - sent).abs() > self.max_skew.as_secs_f64() {
            return Err(Refusal::OutsideWindow);
        }
        Ok(())
    }
}

/// `1718000000` or `1718000000.123456` (what Python's `str(time.time())` writes) as seconds.
fn unix_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 12 || !digits(whole) || !digits(fraction) {
        return None;
    }
    text.parse().ok()
}

pub(crate) async fn handle(
    State(server): State<Arc<Server>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Reply {
    let request = Request::new("gitguardian", client);
    let Some(endpoint) = &server.gitguardian else {
        return request.done(not_enabled(), 0, "not_enabled");
    };
    let refused = |refusal: Refusal| {
        let reply = Reply::error(StatusCode::UNAUTHORIZED, refusal.message(endpoint.max_skew));
        request.done(reply, 0, refusal.outcome())
    };
    // The headers first: an unsigned request is refused before its body is read.
    if let Err(refusal) = Endpoint::signed(&headers) {
        return refused(refusal);
    }
    let body = match body::read(&headers, body, server.max_body_mib).await {
        Ok(body) => body,
        Err(reply) => return request.done(reply, 0, "unreadable"),
    };
    if let Err(refusal) = endpoint.verify(&headers, &body, SystemTime::now()) {
        return refused(refusal);
    }
    let payload = match read(&body) {
        Ok(payload) => payload,
        Err(reason) => {
            return request.done(
                Reply::error(StatusCode::BAD_REQUEST, reason),
                0,
                "malformed",
            );
        }
    };
    drop(body);
    match payload {
        Payload::Event { action, incident } => {
            tracing::info!(
                action = %action,
                incident = ?incident,
                "GitGuardian event without the secret value: nothing published"
            );
            let reply = Reply::json(
                StatusCode::OK,
                &serde_json::json!({
                    "action": action,
                    "incident": incident,
                    "published": 0,
                    "not_acted_on": NO_VALUE,
                }),
            );
            request.done(reply, 0, "no_value")
        }
        Payload::Matches(entries) => {
            let size = entries.len();
            let (reply, outcome) = super::store(&server.bus, entries, PATH).await;
            request.done(reply, size, outcome)
        }
    }
}

/// What an incident event lacks, in the answer.
pub(crate) const NO_VALUE: &str = "GitGuardian incident events carry no secret value, only \
    `secret_hash` (GitGuardian's own) and `hmsl_hash` (HasMySecretLeaked's scrypt hash), which \
    keyloop cannot match to its fingerprints (SHA-256/SHA-1 of the value): nothing was \
    published or revoked. Send the value itself: `keyloop ingest` a detector's report, or POST \
    it to /generic";

/// What a GitGuardian payload is to keyloop.
#[derive(Debug)]
enum Payload {
    /// An incident or occurrence event: no value.
    Event {
        action: String,
        incident: Option<u64>,
    },
    /// A scan result's matches, hashed.
    Matches(Vec<Entry>),
}

/// Reads a payload. The values of a scan result go into [`Secret`]s and are hashed; no
/// message quotes the body.
fn read(body: &[u8]) -> Result<Payload, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| body::json_problem(&e))?;
    let Some(object) = value.as_object_mut() else {
        return Err(format!(
            "expected a GitGuardian webhook payload (a JSON object), found {}",
            body::kind(&value)
        ));
    };
    if object.contains_key("matches") {
        return Ok(Payload::Matches(matches(object)?));
    }
    if let Some(incident) = object.get("incident").and_then(Value::as_object) {
        let action = text(object, "action").unwrap_or_else(|| "unknown".to_owned());
        return Ok(Payload::Event {
            action,
            incident: incident.get("id").and_then(Value::as_u64),
        });
    }
    Err(
        "not a GitGuardian webhook payload: expected an event with `incident`, or a scan \
         result with `matches`"
            .to_owned(),
    )
}

/// The findings of a scan result's `matches`, each value hashed; unusable ones rejected by
/// position.
fn matches(object: &mut Map<String, Value>) -> Result<Vec<Entry>, String> {
    let link = text(object, "gitguardian_link");
    let policy_type = text(object, "type");
    let Some(Value::Array(matches)) = object.get_mut("matches") else {
        return Err("`matches` is not an array".to_owned());
    };
    let mut entries = Vec::with_capacity(matches.len());
    for (index, item) in matches.iter_mut().enumerate() {
        let position = || format!("matches[{index}]");
        let Some(item) = item.as_object_mut() else {
            entries.push(Entry::Rejected(Rejected {
                position: position(),
                reason: format!("expected an object, found {}", body::kind(item)),
            }));
            continue;
        };
        let kind = text(item, "type").or_else(|| policy_type.clone());
        match item.get_mut("match") {
            Some(Value::String(value)) if !value.trim().is_empty() => {
                let secret = Secret::new(std::mem::take(value));
                entries.push(Entry::Finding(LeakFinding {
                    fingerprint: Fingerprint::of(&secret),
                    detector: kind
                        .map_or_else(|| "gitguardian".to_owned(), |k| format!("gitguardian:{k}")),
                    location: LeakLocation {
                        url: link.clone(),
                        ..LeakLocation::default()
                    },
                }));
            }
            Some(Value::String(_)) => entries.push(Entry::Rejected(Rejected {
                position: position(),
                reason: "`match` is empty".to_owned(),
            })),
            found => entries.push(Entry::Rejected(Rejected {
                position: position(),
                reason: format!(
                    "`match` is {}, expected the matched value as a string",
                    found.map_or("missing", |v| body::kind(v))
                ),
            })),
        }
    }
    Ok(entries)
}

fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_testkit::webhook::gitguardian_headers;

    const TOKEN: &str = "FAKE-gg-signature-token-0001";
    const NOW: u64 = 1_800_000_000;

    fn endpoint() -> Endpoint {
        Endpoint::new(Secret::from(TOKEN), Duration::from_secs(300))
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn signed(token: &str, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in gitguardian_headers(token, timestamp, body) {
            headers.insert(name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn gitguardians_documented_example_verifies() {
        // From GitGuardian's docs: timestamp "0", token "foo", payload "bar".
        let endpoint = Endpoint::new(Secret::from("foo"), Duration::from_secs(60));
        let mut headers = HeaderMap::new();
        headers.insert("Timestamp", "0".parse().unwrap());
        headers.insert(
            "Gitguardian-Signature",
            "sha256=172fe3d694b734aa53dc892fd3b8d62163fc240064de570ba006900bb54a0fc2"
                .parse()
                .unwrap(),
        );
        let at_zero = SystemTime::UNIX_EPOCH + Duration::from_secs(30);
        assert_eq!(endpoint.verify(&headers, b"bar", at_zero), Ok(()));
    }

    #[test]
    fn a_valid_signature_within_the_window_verifies_with_either_header() {
        let body = br#"{"action":"incident_triggered","incident":{"id":1}}"#;
        for timestamp in [NOW.to_string(), format!("{}.123456", NOW - 299)] {
            let headers = signed(TOKEN, &timestamp, body);
            assert_eq!(
                endpoint().verify(&headers, body, now()),
                Ok(()),
                "{timestamp}"
            );
            let mut legacy = HeaderMap::new();
            legacy.insert("Timestamp", headers["Timestamp"].clone());
            legacy.insert(
                "X-GitGuardian-Signature",
                headers["Gitguardian-Signature"].clone(),
            );
            assert_eq!(endpoint().verify(&legacy, body, now()), Ok(()));
        }
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let body = b"{}";
        let ts = NOW.to_string();
        let e = endpoint();
        let wrong_token = signed("FAKE-gg-other-token", &ts, body);
        assert_eq!(
            e.verify(&wrong_token, body, now()),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            e.verify(&signed(TOKEN, &ts, body), b"{ }", now()),
            Err(Refusal::BadSignature),
            "another body"
        );
        // The timestamp is part of the key: a signature made for another one fails.
        let mut moved = signed(TOKEN, &ts, body);
        moved.insert("Timestamp", (NOW + 1).to_string().parse().unwrap());
        assert_eq!(e.verify(&moved, body, now()), Err(Refusal::BadSignature));
        let mut garbled = signed(TOKEN, &ts, body);
        garbled.insert("Gitguardian-Signature", "sha256=zz".parse().unwrap());
        assert_eq!(
            e.verify(&garbled, body, now()),
            Err(Refusal::MalformedSignature)
        );
        garbled.insert("Gitguardian-Signature", "md5=abcd".parse().unwrap());
        assert_eq!(
            e.verify(&garbled, body, now()),
            Err(Refusal::MalformedSignature)
        );
        garbled.remove("Gitguardian-Signature");
        assert_eq!(
            e.verify(&garbled, body, now()),
            Err(Refusal::MissingSignature)
        );
        garbled.remove("Timestamp");
        assert_eq!(
            e.verify(&garbled, body, now()),
            Err(Refusal::MissingTimestamp)
        );
    }

    #[test]
    fn an_expired_or_future_timestamp_is_refused_even_when_signed() {
        let body = b"{}";
        for ts in [NOW - 301, NOW + 301, 0] {
            let headers = signed(TOKEN, &ts.to_string(), body);
            assert_eq!(
                endpoint().verify(&headers, body, now()),
                Err(Refusal::OutsideWindow),
                "{ts}"
            );
        }
        for ts in ["soon", "-5", "1.2.3", "", "1e9", "99999999999999"] {
            let headers = signed(TOKEN, ts, body);
            let expected = if ts.is_empty() {
                Refusal::MissingTimestamp
            } else {
                Refusal::MalformedTimestamp
            };
            assert_eq!(
                endpoint().verify(&headers, body, now()),
                Err(expected),
                "{ts:?}"
            );
        }
        let message = Refusal::OutsideWindow.message(Duration::from_secs(300));
        assert!(message.contains("300s"), "{message}");
    }

    #[test]
    fn incident_events_carry_no_value_and_scan_results_carry_theirs() {
        let event = br#"{"source":"GitGuardian","action":"incident_triggered","incident":{"id":31542,"secret_hash":"xxx","hmsl_hash":"yyy","detector":{"name":"generic_password"}}}"#;
        let Payload::Event { action, incident } = read(event).unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            (action.as_str(), incident),
            ("incident_triggered", Some(31542))
        );

        let scan = br#"{"type":"Welcome Message Token","gitguardian_link":"http://dashboard.gitguardian.com/workspace/1/incidents/8","matches":[{"type":"client_secret","match":"FAKE-gg-match-0001"},{"type":"client_id","match":42},{"match":""}]}"#;
        let Payload::Matches(entries) = read(scan).unwrap() else {
            panic!("matches")
        };
        let [
            Entry::Finding(finding),
            Entry::Rejected(number),
            Entry::Rejected(empty),
        ] = &entries[..]
        else {
            panic!("{entries:?}")
        };
        assert_eq!(
            finding.fingerprint,
            Fingerprint::of(&Secret::from("FAKE-gg-match-0001"))
        );
        assert_eq!(finding.detector, "gitguardian:client_secret");
        assert_eq!(
            finding.location.url.as_deref(),
            Some("http://dashboard.gitguardian.com/workspace/1/incidents/8")
        );
        assert_eq!(number.position, "matches[1]");
        assert!(number.reason.contains("is a number"), "{}", number.reason);
        assert_eq!(empty.reason, "`match` is empty");
        assert!(!format!("{entries:?}").contains("FAKE-gg"));
    }

    #[test]
    fn payloads_that_are_not_gitguardians_are_refused_without_their_text() {
        for (body, expected) in [
            (r#"["FAKE-gg-0002"]"#, "found an array"),
            (
                r#"{"note":"FAKE-gg-0002"}"#,
                "not a GitGuardian webhook payload",
            ),
            (r#"{"matches":"FAKE-gg-0002"}"#, "`matches` is not an array"),
            (r#"{"matches":["FAKE-gg-0002""#, "not valid JSON"),
        ] {
            let err = read(body.as_bytes()).expect_err(expected);
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("FAKE-gg"), "{err}");
        }
    }
}
