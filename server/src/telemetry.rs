//! Logs and traces of the process.
//!
//! - Logs go to stderr (stdout carries what a command prints for people and scripts:
//!   `sync-catalog --json`, `dev-token`, the start-up report), filtered by `RUST_LOG`, as text
//!   or (`LOG_FORMAT=json`) one JSON object per line carrying the current span's fields (task,
//!   resource, request ids).
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//!   set, every span — an API request, a task run, a backend call — is also exported with the
//!   OpenTelemetry protocol, OTLP/HTTP with protobuf bodies (OTLP specification 1.x,
//!   "OTLP/HTTP"), to `<endpoint>/v1/traces`, in batches from a thread of its own. The
//!   standard `OTEL_*` variables of the OpenTelemetry SDK configure it (`OTEL_SERVICE_NAME`,
//!   default `slices-blueprint`; `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_EXPORTER_OTLP_HEADERS`;
//!   `OTEL_BSP_*`). The endpoint is plain `http://` (an OpenTelemetry Collector next to the
//!   process, e.g. in the cluster, forwards further): this build has no TLS for it. Unset:
//!   nothing is exported and no exporter is built.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The trace exporter of the process, if any; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (waits for the exporter, at most its timeout) and
    /// stops the export thread. Call it outside the async runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces {
            if let Err(e) = provider.shutdown() {
                eprintln!("slices-blueprint: exporting the last traces failed: {e}");
            }
        }
    }
}

/// Whether the OTLP trace export is asked for (the SDK's own variables).
fn otlp_wanted() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The OTLP/HTTP trace pipeline; `Err` names what is wrong with the endpoint settings.
fn otlp_provider() -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| anyhow::anyhow!("configuration error: OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "slices-blueprint".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Installs the log output (`format`: `text` or `json`) and, when asked for, the OTLP trace
/// export. Call it once, before the async runtime starts (the exporter's HTTP client runs a
/// runtime of its own). Errors: a malformed OTLP endpoint.
pub fn init(format: &str) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_sessions=warn,kube=warn".into());
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let logs = if format == "json" {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        logs.boxed()
    };
    let traces = if otlp_wanted() {
        Some(otlp_provider()?)
    } else {
        None
    };
    let export = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("slices-blueprint"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(export)
        .init();
    Ok(Telemetry { traces })
}
