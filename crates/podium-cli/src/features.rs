//! `podium features …`: point-in-time backfill of the aggregated features from an event log, the
//! online/offline consistency report (served-feature log joined with the backfill), and a
//! synthetic event-log generator for tests and benchmarks. The work is done by
//! `podium_features::offline`; this module parses options and prints.

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use podium_features::definitions::{parse_duration, EventType, FeatureKind};
use podium_features::offline::{
    backfill, consistency_with, read_records, write_records, BackfillRow, ConsistencyOptions,
    ConsistencyReport, FeatureStatus, QueryPoint,
};
use podium_features::stream::Event;
use podium_features::{read_events, read_served, write_events, Definitions, Entity};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Offline feature commands.
#[derive(Subcommand, Debug)]
pub enum FeaturesCommand {
    /// Compute the aggregated features point-in-time from an event log.
    ///
    /// For each query point (entity, entity_id, ts_ms) every event with ts_ms at or before it is
    /// folded by the same code the stream uses, and the entity's features are read at ts_ms.
    /// Query points come from a served-feature log (--served: each distinct request time and
    /// entity in it) or a Parquet file (--queries: columns entity, entity_id, ts_ms). Writes one
    /// row per (query point, aggregated feature): entity, entity_id, ts_ms, feature, value.
    /// Stored features have no offline source and are listed as not backfillable. Ends with a
    /// JSON summary on stdout, throughput included.
    ///
    /// Example:
    ///   podium features backfill --definitions features.toml --events ./logs/events \
    ///       --served ./logs/served --output backfill.parquet
    #[command(verbatim_doc_comment)]
    Backfill(BackfillArgs),
    /// Compare served feature values with the backfill, per feature, as Chronon does.
    ///
    /// Joins every served row of an aggregated feature with the point-in-time value at its
    /// request time. Reports per feature the exact rate (|online - offline| <= 1e-6 *
    /// max(1, |offline|)), mismatch, missing (default served, offline has a value) and extra
    /// (a value served, offline knows no event) rates, SMAPE, and explains mismatches by lag:
    /// the served value equals the backfill at its as_of_ms, or what the stream had folded at
    /// that flush (late arrivals; the event log must be in consumption order), or the default
    /// was served before the entity's first flush. Prints a table, then unexplained examples,
    /// and last one JSON line: {"rows", "exact_rate", "unexplained", …}.
    ///
    /// Example:
    ///   podium features consistency --definitions features.toml --events ./logs/events \
    ///       --served ./logs/served --output report.json
    #[command(verbatim_doc_comment)]
    Consistency(ConsistencyArgs),
    /// Write a synthetic event log for the definitions' event types and entities.
    ///
    /// Events are spread over --span with 2 % arriving up to 10 min out of order and 1 %
    /// duplicated; the same seed writes the same events. --queries N also writes N random query
    /// points (for `backfill --queries`).
    ///
    /// Example:
    ///   podium features gen-events --definitions features.toml --output events.parquet \
    ///       --events 1000000 --seed 1 --queries 100000 --queries-output queries.parquet
    #[command(verbatim_doc_comment)]
    GenEvents(GenEventsArgs),
}

/// Options of `podium features backfill`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("points").required(true).args(["served", "queries"])))]
pub struct BackfillArgs {
    /// Feature definitions (TOML).
    #[arg(long)]
    definitions: PathBuf,
    /// Event log: a Parquet file or a directory of them.
    #[arg(long)]
    events: PathBuf,
    /// Served-feature log whose request times and entities are the query points.
    #[arg(long)]
    served: Option<PathBuf>,
    /// Parquet file of query points (entity, entity_id, ts_ms).
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Output Parquet file.
    #[arg(long)]
    output: PathBuf,
}

/// Options of `podium features consistency`.
#[derive(Args, Debug)]
pub struct ConsistencyArgs {
    /// Feature definitions (TOML).
    #[arg(long)]
    definitions: PathBuf,
    /// Event log, in the order the stream consumed it: a Parquet file or a directory of them.
    #[arg(long)]
    events: PathBuf,
    /// Served-feature log: a Parquet file or a directory of them.
    #[arg(long)]
    served: PathBuf,
    /// Write the full report (JSON) here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// The lateness the online aggregator ran with (e.g. 1h, 30m).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    lateness: std::time::Duration,
    /// Unexplained mismatches listed per feature.
    #[arg(long, default_value_t = 20)]
    examples: usize,
}

/// Options of `podium features gen-events`.
#[derive(Args, Debug)]
pub struct GenEventsArgs {
    /// Feature definitions (TOML): which event types and entity ids to generate.
    #[arg(long)]
    definitions: PathBuf,
    /// Output Parquet file.
    #[arg(long)]
    output: PathBuf,
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Seed of every draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct users (devices alike; line items, advertisers and content fewer).
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Event-time span of the log (e.g. 1d, 12h).
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    span: std::time::Duration,
    /// Also write this many random query points.
    #[arg(long, default_value_t = 0)]
    queries: usize,
    /// Where to write the query points (required with --queries).
    #[arg(long)]
    queries_output: Option<PathBuf>,
}

/// Runs a `podium features` subcommand.
pub fn run(cmd: FeaturesCommand) -> anyhow::Result<()> {
    match cmd {
        FeaturesCommand::Backfill(args) => run_backfill(args),
        FeaturesCommand::Consistency(args) => run_consistency(args),
        FeaturesCommand::GenEvents(args) => gen_events(args),
    }
}

fn run_backfill(args: BackfillArgs) -> anyhow::Result<()> {
    let defs = Definitions::load(&args.definitions)?;
    let started = Instant::now();
    let events = read_events(&args.events)?;
    let queries: Vec<QueryPoint> = match (&args.served, &args.queries) {
        (Some(served), _) => {
            let mut seen = HashSet::new();
            read_served(served)?
                .into_iter()
                .filter(|r| seen.insert((r.entity, r.entity_id.clone(), r.ts_ms)))
                .map(|r| QueryPoint {
                    entity: r.entity,
                    entity_id: r.entity_id,
                    ts_ms: r.ts_ms,
                })
                .collect()
        }
        (None, Some(q)) => read_records(q)?,
        (None, None) => unreachable!("clap requires --served or --queries"),
    };
    let read_s = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let bf = backfill(&defs, &events, &queries);
    let backfill_s = t.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for (q, p) in queries.iter().zip(&bf.points) {
        for (f, v) in defs.of(q.entity).zip(&p.values) {
            if let Some(value) = v {
                rows.push(BackfillRow {
                    entity: q.entity,
                    entity_id: q.entity_id.clone(),
                    ts_ms: q.ts_ms,
                    feature: f.name.clone(),
                    value: *value,
                });
            }
        }
    }
    write_records(&args.output, &rows)?;
    let not_backfillable: Vec<&str> = defs
        .features()
        .iter()
        .filter(|f| f.kind == FeatureKind::Stored)
        .map(|f| f.name.as_str())
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "events": bf.stats.events,
            "applied": bf.stats.applied,
            "duplicates": bf.stats.duplicates,
            "queries": queries.len(),
            "rows": rows.len(),
            "not_backfillable": not_backfillable,
            "read_s": read_s,
            "backfill_s": backfill_s,
            "events_per_s": bf.stats.events as f64 / backfill_s,
            "queries_per_s": queries.len() as f64 / backfill_s,
            "output": args.output,
        })
    );
    Ok(())
}

fn run_consistency(args: ConsistencyArgs) -> anyhow::Result<()> {
    let defs = Definitions::load(&args.definitions)?;
    let events = read_events(&args.events)?;
    let served = read_served(&args.served)?;
    let opts = ConsistencyOptions {
        lateness: args.lateness,
        max_examples: args.examples,
    };
    let report = consistency_with(&defs, &served, &events, &opts);
    print!("{}", table(&report));
    if let Some(out) = &args.output {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(out, json).with_context(|| format!("{}: cannot write", out.display()))?;
    }
    println!(
        "{}",
        serde_json::json!({
            "rows": report.rows,
            "exact_rate": report.exact_rate,
            "mismatches": report.mismatches,
            "explained_by_lag": report.explained_by_lag,
            "unexplained": report.unexplained,
            "smape": report.smape,
            "not_backfillable_rows": report.not_backfillable_rows,
        })
    );
    Ok(())
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.3}", 100.0 * r))
}

fn table(r: &ConsistencyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:<10} {:>9} {:>8} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7}  lag p50/p99/max ms",
        "feature",
        "entity",
        "rows",
        "exact%",
        "mismatch%",
        "missing%",
        "extra%",
        "smape",
        "lag",
        "unexpl"
    );
    for f in &r.features {
        if f.status == FeatureStatus::NotBackfillable {
            let _ = writeln!(
                s,
                "{:<32} {:<10} {:>9}  not backfillable (stored feature)",
                f.feature, f.entity, f.rows
            );
            continue;
        }
        let lag = f.lag.map_or_else(
            || "-".into(),
            |l| format!("{}/{}/{}", l.p50_ms, l.p99_ms, l.max_ms),
        );
        let _ = writeln!(
            s,
            "{:<32} {:<10} {:>9} {:>8} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7}  {lag}",
            f.feature,
            f.entity,
            f.rows,
            pct(f.exact_rate),
            pct(f.mismatch_rate),
            pct(f.missing_rate),
            pct(f.extra_rate),
            f.smape.map_or_else(|| "-".into(), |x| format!("{x:.5}")),
            f.explained_by_lag,
            f.unexplained,
        );
    }
    let _ = writeln!(
        s,
        "{:<32} {:<10} {:>9} {:>8} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7}",
        "all compared",
        "",
        r.rows,
        pct(r.exact_rate),
        pct(r.exact_rate.map(|e| 1.0 - e)),
        "",
        "",
        r.smape.map_or_else(|| "-".into(), |x| format!("{x:.5}")),
        r.explained_by_lag,
        r.unexplained,
    );
    for f in r.features.iter().filter(|f| !f.examples.is_empty()) {
        let _ = writeln!(
            s,
            "unexplained {} ({} of {}):",
            f.feature,
            f.examples.len(),
            f.unexplained
        );
        for e in &f.examples {
            let _ = writeln!(
                s,
                "  request {} {}:{} ts {} as_of {} online {} offline {} offline_at_as_of {}{}",
                e.request_id,
                e.entity,
                e.entity_id,
                e.ts_ms,
                e.as_of_ms.map_or_else(|| "-".into(), |t| t.to_string()),
                e.online,
                e.offline,
                e.offline_at_as_of
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                if e.dropped_late {
                    " (events dropped online as too late)"
                } else {
                    ""
                }
            );
        }
    }
    if !r.skipped.unknown_feature.is_empty() || r.skipped.wrong_entity > 0 {
        let _ = writeln!(
            s,
            "skipped: features not in the definitions {:?}; rows with the wrong entity {}",
            r.skipped.unknown_feature, r.skipped.wrong_entity
        );
    }
    s
}

fn gen_events(args: GenEventsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.queries == 0 || args.queries_output.is_some(),
        "--queries needs --queries-output"
    );
    let defs = Definitions::load(&args.definitions)?;
    let mut kinds: Vec<EventType> = Vec::new();
    let mut keyed: Vec<Entity> = Vec::new();
    for f in defs.features() {
        if let FeatureKind::Aggregation(w) = &f.kind {
            if !kinds.contains(&w.event) {
                kinds.push(w.event);
            }
            if !keyed.contains(&f.entity) {
                keyed.push(f.entity);
            }
        }
    }
    anyhow::ensure!(
        !kinds.is_empty(),
        "{}: no aggregated feature, so no event type to generate",
        args.definitions.display()
    );
    let users = args.users.max(1);
    let pool = |e: Entity| match e {
        Entity::User | Entity::Device => users,
        Entity::LineItem => (users / 20).max(1),
        Entity::Advertiser => (users / 200).max(1),
        Entity::Content => (users / 5).max(1),
    };
    let prefix = |e: Entity| match e {
        Entity::User => "u",
        Entity::Device => "d",
        Entity::LineItem => "l",
        Entity::Advertiser => "a",
        Entity::Content => "c",
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    const T0: i64 = 1_700_000_000_000;
    let mean_gap = (args.span.as_millis() as f64 / args.events.max(1) as f64).max(0.0);
    let mut clock = T0 as f64;
    let mut events: Vec<Event> = Vec::with_capacity(args.events);
    let (mut late, mut dups) = (0u64, 0u64);
    for i in 0..args.events {
        if !events.is_empty() && rng.random_bool(0.01) {
            let k = rng.random_range(events.len().saturating_sub(1000)..events.len());
            events.push(events[k].clone());
            dups += 1;
            continue;
        }
        clock += rng.random_range(0.0..2.0 * mean_gap + f64::MIN_POSITIVE);
        let back = if rng.random_bool(0.02) {
            late += 1;
            rng.random_range(0..600_000)
        } else {
            0
        };
        let ids = std::array::from_fn(|k| {
            let e = Entity::ALL[k];
            rng.random_bool(0.95)
                .then(|| format!("{}{}", prefix(e), rng.random_range(0..pool(e))))
        });
        events.push(Event {
            id: format!("e{i}"),
            kind: kinds[rng.random_range(0..kinds.len())],
            ts_ms: clock as i64 - back,
            ids,
            value: rng
                .random_bool(0.95)
                .then(|| f64::from(rng.random_range(0..1000u32)) / 100.0),
        });
    }
    write_events(&args.output, &events)?;
    let end = clock as i64;
    if let Some(out) = &args.queries_output {
        let queries: Vec<QueryPoint> = (0..args.queries)
            .map(|_| {
                let entity = keyed[rng.random_range(0..keyed.len())];
                QueryPoint {
                    entity,
                    // A few ids the log never mentions.
                    entity_id: format!(
                        "{}{}",
                        prefix(entity),
                        rng.random_range(0..pool(entity) + pool(entity) / 20 + 1)
                    ),
                    ts_ms: rng.random_range(T0..=end),
                }
            })
            .collect();
        write_records(out, &queries)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "events": events.len(),
            "duplicates": dups,
            "out_of_order": late,
            "from_ms": T0,
            "to_ms": end,
            "queries": args.queries,
            "output": args.output,
        })
    );
    Ok(())
}
