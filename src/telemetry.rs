//! Logging setup: structured `tracing` to stderr (stdout stays clean for `herald
//! token`), text for people, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings, Mode};

/// Installs the global subscriber. `RUST_LOG` overrides the configured level; the
/// `auto` format is JSON in production mode (log pipelines) and text in embedded mode
/// (people). Calling it twice (as tests may) keeps the first subscriber.
pub fn init(settings: &LogSettings, mode: Mode) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let json = match settings.format {
        LogFormat::Auto => mode == Mode::Production,
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            // Every enclosing span, so the request id of the outer HTTP span shows up
            // on events logged inside a handler's own span.
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
