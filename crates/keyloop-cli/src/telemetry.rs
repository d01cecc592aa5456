//! Traces over OTLP: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable; also
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`), every span
//! at info and above from keyloop's crates is exported as OTLP/HTTP protobuf (http or https,
//! on rustls with the system's roots), the process named `keyloop-<command>` (`keyloop-worker-
//! revoker`) as its `service.name`. Without it nothing is recorded or sent. The W3C trace
//! context travels in NATS headers (`keyloop_nats::trace`), so one leak is one trace across
//! `keyloop ingest` and the workers.

use crate::cli::{Cli, Command};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;

/// How long an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter, kept to flush what is buffered when the process ends.
pub(crate) struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    /// Sends what is buffered; called before the runtime stops.
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            eprintln!(
                "warning: could not send the last traces to OTEL_EXPORTER_OTLP_ENDPOINT: {e}"
            );
        }
    }
}

/// The `service.name` of this process.
pub(crate) fn service_name(cli: &Cli) -> String {
    match &cli.command {
        Command::Worker(args) => format!(
            "keyloop-worker-{}",
            args.roles
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join("-")
        ),
        other => {
            let name = format!("{other:?}");
            let word: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            format!("keyloop-{}", word.to_ascii_lowercase())
        }
    }
}

/// The OpenTelemetry layer and its provider when an OTLP endpoint is configured. Runs inside
/// the tokio runtime (the batch exporter is a task on it).
pub(crate) fn layer<S>(
    cli: &Cli,
) -> (
    Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>,
    Telemetry,
)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !configured {
        return (None, Telemetry(None));
    }
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map(|b| b.https_or_http().enable_http1().build());
    let https = match https {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "warning: traces are off: cannot load the system's TLS roots for OTEL_EXPORTER_OTLP_ENDPOINT: {e}"
            );
            return (None, Telemetry(None));
        }
    };
    let client = opentelemetry_http::hyper::HyperClient::new(https, EXPORT_TIMEOUT, None);
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: traces are off: OTEL_EXPORTER_OTLP_ENDPOINT: {e}");
            return (None, Telemetry(None));
        }
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name(cli))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("keyloop");
    (
        Some(tracing_opentelemetry::layer().with_tracer(tracer)),
        Telemetry(Some(provider)),
    )
}
