//! The `podium` binary.

mod config;
mod features;
mod forecast;
mod loadgen;
mod model;
mod replay;
mod serve;
mod signals;
mod sim;
mod sim_market;
mod sim_traffic;

use clap::{CommandFactory, Parser, Subcommand};
use std::io::IsTerminal;

/// Podium: a real-time ad decisioning engine with its own model-serving tier.
#[derive(Parser)]
#[command(name = "podium", version, about, long_about = None, args_override_self = true)]
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
    /// `--workload standard` serves the standard workload of ARCHITECTURE.md §7 instead
    /// (generated on first start under ./podium-data-standard); a --data-dir that `podium sim
    /// gen` wrote is recognised by its workload.json.
    ///
    /// Example:
    ///   podium serve --listen 127.0.0.1:8080 --data-dir ./podium-data
    ///   podium serve --workload standard --seed 1
    ///   podium serve --config deploy/podium.toml    # a fleet server (docs/reliability.md)
    #[command(verbatim_doc_comment)]
    Serve(Box<serve::ServeArgs>),
    /// Send open-loop load to a decision server and report latency percentiles.
    ///
    /// Requests leave on a fixed schedule; latency counts from the scheduled send time, so a
    /// stalled server is charged for every request it delayed. Prints a progress line per second
    /// (stderr) and ends with a JSON summary on stdout:
    /// {"sent", "ok", "shed", "errors", "achieved_rps", "p50_ms", "p99_ms", "p999_ms", …};
    /// the percentiles are of admitted requests, shed ones (answered at once with no ads) are
    /// counted apart with their own `shed_p99_ms`.
    ///
    /// Example:
    ///   taskset -c 0 podium loadgen --target http://127.0.0.1:8080 --rate 2000 --duration 30s
    Loadgen(loadgen::LoadgenArgs),
    /// Package, validate, inspect, score and benchmark model bundles.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Generate the standard workload and measure its compute floor.
    ///
    /// Example:
    ///   podium sim gen --seed 1 --out ./podium-data-standard
    ///   podium sim floor --data-dir ./podium-data-standard
    #[command(subcommand, verbatim_doc_comment)]
    Sim(sim::SimCommand),
    /// Backfill features point-in-time from an event log and check served values against it.
    ///
    /// Example:
    ///   podium features backfill --definitions features.toml --events ./logs/events \
    ///       --queries queries.parquet --output backfill.parquet
    ///   podium features consistency --definitions features.toml --events ./logs/events \
    ///       --served ./logs/served --output report.json
    #[command(subcommand, verbatim_doc_comment)]
    Features(features::FeaturesCommand),
    /// Replay logged decisions: exactly, or against candidate models and auction settings.
    ///
    /// Exact (no --models, no --config): each logged decision's auction runs again from the
    /// state the log holds (scores, pacing multipliers, budget leases, reserves, cap history,
    /// exploration draws) and must place the same ads at the same prices; a share of decisions
    /// (--rescore) also has its logged model versions score the rebuilt frame again, bit for bit.
    /// Ends with a JSON line {"decisions", "reproduced", "differences", "examples", …}.
    ///
    /// Candidate: the candidate models score the logged frames and the auction runs with their
    /// scores (and the changed settings); reports score shifts, changed winners, fill rate,
    /// revenue, average price, predicted against observed click and completion rates on the
    /// logged outcomes, latency, and counterfactual estimates when the log explored; as a JSON
    /// line and an HTML report.
    ///
    /// Example:
    ///   podium replay --log ./podium-data/logs
    ///   podium replay --log ./podium-data/logs --models ./candidate/models.toml --config auction.toml
    #[command(verbatim_doc_comment)]
    Replay(replay::ReplayArgs),
    /// Check real-time signal sources against their services; run the demo signal service.
    ///
    /// Example:
    ///   podium signals check --definitions features.toml
    ///   podium signals demo --http 127.0.0.1:9100 --grpc 127.0.0.1:9101 --delay 1ms
    #[command(subcommand, verbatim_doc_comment)]
    Signals(signals::SignalsCommand),
    /// Forecast avails (inventory) for booking guaranteed campaigns, and backtest the forecast.
    ///
    /// Example:
    ///   podium forecast avails --log ./podium-data/logs --targeting "country=US, device=tv" \
    ///       --start 2026-12-07 --end 2026-12-14 --cap 3/day
    ///   podium forecast backtest --log ./traffic/logs --train-days 21 --plot backtest.html
    #[command(subcommand, verbatim_doc_comment)]
    Forecast(forecast::ForecastCommand),
}

fn main() -> anyhow::Result<()> {
    let serve_options = Cli::command()
        .find_subcommand("serve")
        .map(|s| {
            s.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let argv = config::expand(std::env::args_os().collect(), &serve_options)?;
    let cli = Cli::parse_from(argv);
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
        Command::Serve(args) => serve::run(*args),
        Command::Model(cmd) => model::run(cmd),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Features(cmd) => features::run(cmd),
        Command::Replay(args) => replay::run(args),
        Command::Signals(cmd) => signals::run(cmd),
        Command::Forecast(cmd) => forecast::run(cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_given_again_overrides_the_earlier_one() {
        // What `--config` relies on: the file's flags come first, the command line's after.
        let cli = Cli::try_parse_from([
            "podium",
            "serve",
            "--fleet-size=3",
            "--frequency-store=redis://a",
            "--fleet-size=5",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(format!("{args:?}").contains("fleet_size: 5"), "{args:?}");
    }
}
