//! Logs and metrics of the server commands: the log format
//! (`QUOTA_LOG_FORMAT`), the filter (`QUOTA_LOG`), and the Prometheus
//! endpoint of `--metrics-addr`.

use crate::cli::{LogFormat, MetricsAddr};
use anyhow::{Context, Result, anyhow};
use quota_telemetry::exporter::{self, Sampler};
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The filter of log lines when `QUOTA_LOG` is unset: `info`, but for two
/// libraries' lines that say again what quota's own say at start (each
/// migration applied) or nothing an operator acts on (PostgreSQL's notices,
/// such as a table of the migrations that already exists).
pub const DEFAULT_LOG: &str = "info,sea_orm_migration=warn,sqlx::postgres::notice=warn";

/// Sends log lines to stderr as `format` says, filtered by `QUOTA_LOG`
/// (default [`DEFAULT_LOG`], also when it is empty). JSON lines carry the
/// current span's fields (`span`) and every enclosing span (`spans`): a
/// request's id and route or method. A `QUOTA_LOG` that is not a filter
/// (a typo, or not UTF-8) gets the default and a warning saying so, as its
/// first line.
pub fn init_logging(format: LogFormat) {
    // The filter, and what was refused if anything: the value as far as it
    // reads, and why.
    let (filter, refused) = match std::env::var("QUOTA_LOG") {
        Ok(asked) if !asked.trim().is_empty() => match EnvFilter::try_new(&asked) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_LOG), Some((asked, e.to_string()))),
        },
        // Not UTF-8: no filter is.
        Err(std::env::VarError::NotUnicode(raw)) => (
            EnvFilter::new(DEFAULT_LOG),
            Some((raw.to_string_lossy().into_owned(), "not UTF-8".to_owned())),
        ),
        _ => (EnvFilter::new(DEFAULT_LOG), None),
    };
    init_subscriber(format, filter);
    if let Some((asked, e)) = refused {
        tracing::warn!(
            QUOTA_LOG = asked,
            error = %e,
            "QUOTA_LOG is not a log filter; logging with the default, {DEFAULT_LOG}"
        );
    }
}

fn init_subscriber(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text if std::io::stderr().is_terminal() => builder.with_ansi(true).init(),
        LogFormat::Text => builder.with_ansi(false).fmt_fields(PlainFields).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The fields of a line or span, written exactly as tracing-subscriber's
/// default text format writes them without colours (`name=value`, values
/// debugged, separated by spaces), with one formatting call per field
/// instead of three: names and separators are written as they are. Every
/// request's span is formatted as it is made, log line or not. The
/// message, errors and raw or `log.` names are left to [`DefaultVisitor`].
struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Leaves `field` to a [`DefaultVisitor`] writing where this one stands
    /// (it skips `log.` fields, writing nothing).
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.empty = self.empty && field.name().starts_with("log.");
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" || name.starts_with("r#") || name.starts_with("log.") {
            return self.delegate(field, |v| v.record_debug(field, value));
        }
        if self.result.is_err() {
            return;
        }
        let pad = if self.empty { "" } else { " " };
        self.empty = false;
        // Only the value needs `core::fmt`.
        self.result = self
            .writer
            .write_str(pad)
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| write!(self.writer, "{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.delegate(field, |v| v.record_str(field, value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |v| v.record_error(field, value));
    }
}

/// The one line a failed command ends with: plain text, or a JSON log
/// object when every line must be one.
pub fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => tracing::error!("{message}"),
    }
}

/// The metrics listener, bound with the others (before the database is
/// opened) so that a bad or busy address fails at once; `None` when
/// `--metrics-addr` is unset or empty.
pub async fn bind_metrics(args: &MetricsAddr) -> Result<Option<TcpListener>> {
    let Some(addr) = args.metrics_addr.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr:?}"))?;
    Ok(Some(listener))
}

/// Installs the Prometheus recorder and serves `GET /metrics` on `listener`
/// until `shutdown`; `sample` runs before each scrape. Announced as
/// `metrics listening on http://ADDR/metrics`.
pub fn serve_metrics<S>(
    listener: Option<TcpListener>,
    sample: impl Fn() -> S + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<JoinHandle<std::io::Result<()>>>>
where
    S: Future<Output = ()> + Send + 'static,
{
    let Some(listener) = listener else {
        return Ok(None);
    };
    let handle =
        exporter::install().map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))?;
    tracing::info!(
        "metrics listening on http://{}/metrics",
        listener.local_addr()?
    );
    let sample: Sampler = Arc::new(move || Box::pin(sample()));
    Ok(Some(tokio::spawn(exporter::serve(
        listener, handle, sample, shutdown,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::format::DefaultFields;

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The same spans and lines, as a text subscriber without colours
    /// writes them with `fields`.
    fn written<F>(fields: F) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "http",
                method = %"GET",
                route = "/v1/dashboard/billing/subscription",
                attempt = 3,
                later = tracing::field::Empty,
            );
            let _in_span = span.enter();
            span.record("later", "recorded");
            let error = io::Error::other("the database is away");
            tracing::info!(
                status = 401,
                latency_ms = 1.5,
                answered = false,
                quoted = "a \"quoted\" word",
                shown = %"a b\tc",
                error = &error as &(dyn std::error::Error + 'static),
                "request finished"
            );
            tracing::warn!(detail = ?Some("x"), "a message with {} arguments", 2);
            tracing::error!("log.target" = "quotad", r#type = "raw", after = 1);
            tracing::info!(message = "\u{1b}[31mnot red\u{1b}[0m", code = "UNAVAILABLE");
            tracing::debug_span!("inner", request_id = %"req-1").in_scope(|| {
                tracing::info!(empty = "");
            });
        });
        let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn plain_fields_write_what_the_default_text_format_writes() {
        let plain = written(PlainFields);
        assert_eq!(plain, written(DefaultFields::new()));
        // The capture is not empty, and shows a span's fields and a line's.
        assert!(
            plain.contains(r#"http{method=GET route="/v1/dashboard/billing/subscription" attempt=3 later="recorded"}"#),
            "{plain}"
        );
        assert!(plain.contains("request finished status=401"), "{plain}");
    }
}
