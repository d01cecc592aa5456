//! The spans an OTLP/HTTP exporter posted to a [`Receiver`] (`/v1/traces`, protobuf), decoded
//! with the OpenTelemetry protocol's own types.

use crate::receiver::{Received, Receiver};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

/// One exported span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The trace id, hex.
    pub trace_id: String,
    /// Its own id, hex.
    pub span_id: String,
    /// Its parent's id, hex (empty for a root).
    pub parent_id: String,
    /// Its name (`message`, `leak`).
    pub name: String,
    /// The `service.name` of the process that exported it.
    pub service: String,
    /// Its attributes, as `key=value` text.
    pub attributes: Vec<String>,
    /// The spans it links to, as `<trace id>-<span id>`.
    pub links: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span of every `/v1/traces` request in `received`.
pub fn spans(received: &[Received]) -> Vec<Span> {
    let mut out = Vec::new();
    for r in received.iter().filter(|r| r.path.starts_with("/v1/traces")) {
        let Ok(request) = ExportTraceServiceRequest::decode(r.body.as_slice()) else {
            continue;
        };
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    out.push(Span {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        service: service.clone(),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| format!("{}={:?}", a.key, a.value))
                            .collect(),
                        links: span
                            .links
                            .iter()
                            .map(|l| format!("{}-{}", hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

/// Waits until the spans received satisfy `done`; returns them.
pub async fn wait_for(
    receiver: &Receiver,
    what: &str,
    timeout: std::time::Duration,
    done: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    spans(&receiver.wait(what, timeout, |r| done(&spans(r))).await)
}
