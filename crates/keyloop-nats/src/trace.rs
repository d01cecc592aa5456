//! W3C trace context across NATS: every message keyloop publishes carries the current span's
//! `traceparent` header (and a CloudEvent its `traceparent` attribute, the CloudEvents
//! distributed-tracing extension), and the span of every handled message continues the trace of
//! the message it handles. One leak is one trace: `keyloop ingest` → leak-responder → revoker →
//! rotator, across processes. Without an OpenTelemetry layer (no `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! spans have no trace context and nothing is added.

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and CloudEvents attribute) of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// `00-<trace id>-<span id>-<flags>` of a valid span context.
fn format(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The span context a `traceparent` names (version 00), remote; `None` when it is not one.
pub fn parse(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The current span's `traceparent`, when it belongs to a recorded trace.
pub fn current() -> Option<String> {
    let cx = tracing::Span::current().context();
    format(cx.span().span_context())
}

/// Adds the current span's `traceparent` to `headers` (nothing outside a trace).
pub fn inject(headers: &mut HeaderMap) {
    if headers.get(TRACEPARENT).is_none()
        && let Some(tp) = current()
    {
        headers.insert(TRACEPARENT, tp.as_str());
    }
}

/// Makes `span` continue the trace of the message whose headers are `headers` (nothing when
/// they carry no valid `traceparent`).
pub fn continue_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(sc) = headers
        .and_then(|h| h.get(TRACEPARENT))
        .and_then(|v| parse(v.as_str()))
    else {
        return;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    let _ = span.set_parent(cx);
}

/// Links the current span to the span `traceparent` names (a lease's revocation to the
/// request that issued it: another trace, so a link rather than a parent).
pub fn link_to(traceparent: &str) {
    if let Some(sc) = parse(traceparent) {
        tracing::Span::current().add_link(sc);
    }
}

/// A span for a request served on `subject` (request/reply: JIT, the control plane) that
/// continues the requester's trace.
pub fn request_span(subject: &str, headers: Option<&HeaderMap>) -> tracing::Span {
    let span = tracing::info_span!("request", %subject);
    continue_from(&span, headers);
    span
}

/// The headers a request should carry: the `traceparent` of a new root span for it, when
/// traces are recorded. The span is returned to keep the request inside it.
pub fn request_headers(subject: &str) -> (tracing::Span, HeaderMap) {
    let span = tracing::info_span!(parent: None, "request", %subject);
    let mut headers = HeaderMap::new();
    {
        let _in = span.enter();
        inject(&mut headers);
    }
    (span, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_anything_else_is_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse(tp).expect("a valid traceparent");
        assert_eq!(format(&sc).as_deref(), Some(tp));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-zz-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn outside_a_trace_nothing_is_added() {
        let mut headers = HeaderMap::new();
        inject(&mut headers);
        assert!(headers.get(TRACEPARENT).is_none());
        assert!(current().is_none());
    }
}
