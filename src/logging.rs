//! Logging through `tracing`, with nsqd's levels, line layout and prefix
//! (C5), a run-time change of level (PUT /config/log_level, H21), and JSON
//! lines for log shippers (`--log-format=json`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

type Reload = reload::Handle<EnvFilter, Registry>;

static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Set when glommio could not register its io buffers (RLIMIT_MEMLOCK);
/// its own multi-line message per core is dropped and the runtime logs
/// one line instead.
static BUFFERS_UNREGISTERED: AtomicBool = AtomicBool::new(false);

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// nsqd's layout: `<prefix>YYYY/MM/DD HH:MM:SS.micro LEVEL: message`
    Text,
    /// one JSON object per line
    Json,
}

/// nsqd's `lg.LogLevel` values, as /config/log_level reports them.
pub fn level_number(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "debug" => Some(1),
        "info" => Some(2),
        "warn" => Some(3),
        "error" => Some(4),
        "fatal" => Some(5),
        _ => None,
    }
}

fn directive(name: &str) -> &'static str {
    match level_number(name) {
        Some(1) => "debug",
        Some(3) => "warn",
        Some(4) | Some(5) => "error",
        _ => "info",
    }
}

/// True once after glommio failed to register io buffers since the last call.
pub fn take_buffers_unregistered() -> bool {
    BUFFERS_UNREGISTERED.swap(false, Ordering::SeqCst)
}

/// glommio's "registering buffers in the ... ring. Skipping" warning.
fn is_buffer_registration_failure(event: &Event<'_>) -> bool {
    let meta = event.normalized_metadata();
    let meta = meta.as_ref().unwrap_or_else(|| event.metadata());
    if !meta.target().starts_with("glommio") {
        return false;
    }
    let mut message = MessageText(String::new());
    event.record(&mut message);
    message.0.contains("registering buffers")
}

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// nsqd's level names (lg.LogLevel.String()).
fn level_name(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARNING",
        tracing::Level::INFO => "INFO",
        tracing::Level::DEBUG => "DEBUG",
        tracing::Level::TRACE => "TRACE",
    }
}

/// Go's `log.Ldate|log.Ltime|log.Lmicroseconds` in local time, as nsqd.
fn write_local_time(w: &mut Writer<'_>) -> std::fmt::Result {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            libc::gmtime_r(&secs, &mut tm);
        }
        tm
    };
    write!(
        w,
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.{:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_micros()
    )
}

/// nsqd's line layout with `--log-prefix`; spans and fields follow the message.
struct NsqdText {
    prefix: String,
}

impl<S, N> FormatEvent<S, N> for NsqdText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.normalized_metadata();
        let meta = meta.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str(&self.prefix)?;
        write_local_time(&mut w)?;
        write!(w, " {}: ", level_name(meta.level()))?;
        if !meta.target().starts_with("ringsq") {
            write!(w, "[{}] ", meta.target())?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                match ext.get::<FormattedFields<N>>() {
                    Some(f) if !f.is_empty() => write!(w, "{}{{{}}}: ", span.name(), f)?,
                    _ => write!(w, "{}: ", span.name())?,
                }
            }
        }
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Drops glommio's buffer-registration warnings, remembering that one came.
struct DropBufferWarnings;

impl<S: Subscriber> tracing_subscriber::layer::Filter<S> for DropBufferWarnings {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if is_buffer_registration_failure(event) {
            BUFFERS_UNREGISTERED.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// Installs the subscriber; `RINGSQ_LOG` (a tracing filter) wins over the level.
pub fn init(level: &str, prefix: &str, log_format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("RINGSQ_LOG").unwrap_or_else(|_| EnvFilter::new(directive(level)));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_log::LogTracer::init();
    let output = match log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            // Colours would break nsqd's layout for log parsers: never.
            .with_ansi(false)
            .event_format(NsqdText {
                prefix: prefix.to_string(),
            })
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(
                fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(output.with_filter(DropBufferWarnings))
        .try_init();
    if installed.is_ok() {
        let _ = RELOAD.set(handle);
    }
}

/// Changes the level at run time; false if the name is not a level.
pub fn set_level(name: &str) -> bool {
    if level_number(name).is_none() {
        return false;
    }
    if let Some(handle) = RELOAD.get() {
        let _ = handle.reload(EnvFilter::new(directive(name)));
    }
    true
}
