//! The `podium` binary.

mod model;
mod serve;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;

/// Podium: a real-time ad decisioning engine with its own model-serving tier.
#[derive(Parser)]
#[command(name = "podium", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the decision server.
    ///
    /// With no options it serves a generated demo marketplace with demo models trained at first
    /// start and cached under --data-dir, using only embedded stores (no external service).
    ///
    /// Example:
    ///   podium serve --listen 127.0.0.1:8080 --data-dir ./podium-data
    Serve(serve::ServeArgs),
    /// Package, validate, inspect, score and benchmark model bundles.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Structured JSON when a machine reads the logs; readable lines on a terminal.
    if std::io::stderr().is_terminal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Model(cmd) => model::run(cmd),
    }
}
