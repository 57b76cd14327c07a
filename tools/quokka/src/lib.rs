//! Shared pieces of the `quokka`, `quokka-send`, `quokka-recv` and `quokka-gen` binaries:
//! logging set-up, command-line address and duration parsing, the control endpoint and client,
//! printing to a stdout that may close early, and the built-in demo.

pub mod control;
pub mod demo;
pub mod duration;
pub mod inputs;
pub mod progress;
pub mod scaling;
pub mod stdout;
pub mod web;

/// Logs to stderr; `RUST_LOG` overrides the default level (`info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
