//! One replayed message, what it is (its type, its ids), and how it is printed.

use crate::output;
use keyloop_core::LifecycleEvent;
use keyloop_core::event::LeakDetected;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// The stream a message was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Events,
    Lifecycle,
    Dlq,
}

/// A DLQ entry's metadata (from its headers).
#[derive(Debug, Clone, Default)]
pub(crate) struct DlqEntry {
    pub(crate) role: String,
    pub(crate) original_subject: String,
    pub(crate) reason: String,
    pub(crate) deliveries: String,
}

/// One replayed message.
#[derive(Debug, Clone)]
pub(crate) struct Replayed {
    pub(crate) which: Which,
    pub(crate) stored: OffsetDateTime,
    pub(crate) sequence: u64,
    /// The message as JSON (`Null` for a DLQ payload that is not JSON).
    pub(crate) event: Value,
    /// Set for a DLQ entry.
    pub(crate) dlq: Option<DlqEntry>,
    /// `leak.detected`, `revoked`, `dlq`, …: what `--type` matches.
    pub(crate) kind: String,
}

/// The header of the human table; [`Replayed::render`] aligns with it.
pub(crate) const HEADER: &str =
    "TIME (UTC)               TYPE               SUBJECT                      DETAILS";

/// `2026-12-02 21:15:39.123`: a time for people, to the millisecond, in UTC.
pub(crate) fn human_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

impl Replayed {
    /// A message of `which` stored at `stored`, on `subject` (its type derived from it).
    pub(crate) fn new(
        which: Which,
        prefix: &str,
        sequence: u64,
        stored: OffsetDateTime,
        subject: String,
        event: Value,
        dlq: Option<DlqEntry>,
    ) -> Self {
        let kind = match which {
            Which::Dlq => "dlq".to_owned(),
            Which::Lifecycle => event
                .pointer("/data/kind")
                .and_then(Value::as_str)
                .unwrap_or("lifecycle")
                .to_owned(),
            Which::Events => subject
                .strip_prefix(prefix)
                .and_then(|s| s.strip_prefix('.'))
                .unwrap_or(&subject)
                .to_owned(),
        };
        Self {
            which,
            stored,
            sequence,
            event,
            dlq,
            kind,
        }
    }

    pub(crate) fn lifecycle(&self) -> Option<LifecycleEvent> {
        match self.which {
            Which::Lifecycle => serde_json::from_value(self.event.clone()).ok(),
            _ => None,
        }
    }

    pub(crate) fn leak(&self) -> Option<LeakDetected> {
        match (self.which, self.kind.as_str()) {
            (Which::Events, "leak.detected") => serde_json::from_value(self.event.clone()).ok(),
            _ => None,
        }
    }

    fn str_field(&self, name: &str) -> Option<&str> {
        self.event.get(name).and_then(Value::as_str)
    }

    pub(crate) fn correlation(&self) -> Option<&str> {
        self.str_field("correlationid")
    }

    pub(crate) fn batch(&self) -> Option<&str> {
        self.str_field("batchid")
    }

    pub(crate) fn id(&self) -> Option<&str> {
        self.str_field("id")
    }

    /// The CloudEvent's subject (a credential id), when it has one.
    pub(crate) fn about(&self) -> Option<&str> {
        self.str_field("subject")
    }

    /// What `--json` prints: the CloudEvent, or for a DLQ entry its metadata and the id of the
    /// message it holds (never the payload, which may be anything someone published).
    pub(crate) fn json(&self) -> Value {
        match &self.dlq {
            None => self.event.clone(),
            Some(d) => json!({
                "stream": "dlq",
                "sequence": self.sequence,
                "stored": output::ts(self.stored),
                "role": d.role,
                "original_subject": d.original_subject,
                "deliveries": d.deliveries,
                "reason": d.reason,
                "event_id": self.id(),
            }),
        }
    }

    /// A row for people, aligned with [`HEADER`].
    pub(crate) fn render(&self) -> String {
        if let Some(e) = self.lifecycle() {
            return format!("{}  {}", human_time(e.time), output::lifecycle_columns(&e));
        }
        if let Some(d) = &self.dlq {
            return format!(
                "{}  {:<18} {:<28} from {} after {} deliveries: {} (keyloop dlq show {})",
                human_time(self.stored),
                "dlq",
                d.role,
                d.original_subject,
                d.deliveries,
                d.reason,
                self.sequence
            );
        }
        if let Some(leak) = self.leak() {
            let loc = &leak.data.location;
            let place = match (&loc.repo, &loc.file, loc.line) {
                (r, Some(f), l) => format!(
                    " at {}{f}{}",
                    r.as_ref().map(|r| format!("{r}:")).unwrap_or_default(),
                    l.map(|l| format!(":{l}")).unwrap_or_default()
                ),
                (Some(r), None, _) => format!(" in {r}"),
                _ => String::new(),
            };
            let batch = leak
                .batchid
                .as_ref()
                .map(|b| format!(" batch={b}"))
                .unwrap_or_default();
            return format!(
                "{}  {:<18} {:<28} {} by {}{place} correlation={}{batch}",
                human_time(leak.time),
                "leak.detected",
                "-",
                leak.data.fingerprint,
                leak.data.detector,
                leak.id
            );
        }
        let mut line = format!(
            "{}  {:<18} {:<28}",
            human_time(self.stored),
            self.kind,
            self.about().unwrap_or("-")
        );
        if let Some(c) = self.correlation() {
            line.push_str(&format!(" correlation={c}"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_times_are_utc_to_the_millisecond() {
        let t = OffsetDateTime::parse(
            "2026-12-02T23:15:39.1234+02:00",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(human_time(t), "2026-12-02 21:15:39.123");
        assert_eq!(human_time(t).len() + 2, HEADER.find("TYPE").unwrap());
    }

    #[test]
    fn the_type_of_an_inbound_message_is_its_subject_after_the_prefix() {
        let r = |which, subject: &str, event| {
            Replayed::new(
                which,
                "keyloop",
                1,
                OffsetDateTime::UNIX_EPOCH,
                subject.into(),
                event,
                None,
            )
        };
        assert_eq!(
            r(Which::Events, "keyloop.schedule.tick", Value::Null).kind,
            "schedule.tick"
        );
        assert_eq!(
            r(
                Which::Lifecycle,
                "keyloop.lifecycle.revoked.x",
                json!({"data": {"kind": "revoked"}})
            )
            .kind,
            "revoked"
        );
        assert_eq!(
            r(Which::Dlq, "keyloop.dlq.revoker", Value::Null).kind,
            "dlq"
        );
    }
}
