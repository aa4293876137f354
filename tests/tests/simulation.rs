//! The seeded simulation of the deployed shape (`metered_tests::simulation`):
//! every queue at once, crashes, duplicates, lost send responses and
//! Lambda timeouts, under many seeds, each checked from the API's side.
//!
//! - `METERED_SIM_SEEDS` — seeds on SQLite (default 1,000,
//!   split over two tests so both cores work); DynamoDB Local + ministack
//!   run `METERED_SIM_AWS_SEEDS` (default 10).
//! - `METERED_SEED=<n>` — run that one seed (replays exactly), on SQLite, or
//!   on DynamoDB Local + ministack with `METERED_SIM_ADAPTER=aws`;
//!   `METERED_SIM_LOG=info` prints its log.

use metered_tests::simulation::check::violations;
use metered_tests::simulation::world::{Knobs, Report, Simulation};
use metered_tests::sync_world::Adapter;

const SEED_BASE: u64 = 26_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

/// One seed on its own current-thread runtime: every task, id and decision
/// comes from the seed.
fn run_seed(seed: u64, adapter: Adapter) -> (Report, Vec<String>, (u64, u64)) {
    // `METERED_SIM_LOG=info` (or debug): the run's log on stderr, to read
    // what a failing seed did.
    if let Ok(level) = std::env::var("METERED_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(level)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = std::time::Instant::now();
        let mut sim = Simulation::new(seed, adapter, Knobs::default()).await;
        let t1 = t0.elapsed();
        let report = sim.run().await;
        let t2 = t0.elapsed();
        let found = violations(&sim).await;
        if std::env::var_os("METERED_SIM_PROFILE").is_some() {
            eprintln!(
                "seed {seed}: build {t1:?}, run until {t2:?}, checked at {:?}",
                t0.elapsed()
            );
        }
        if std::env::var_os("METERED_SIM_PROFILE").is_some() {
            eprintln!(
                "seed {seed}: steps by port call {:?}",
                sim.sched.steps_by_label()
            );
        }
        (report, found, sim.sched.trace())
    })
}

fn replay_hint(seed: u64, adapter: Adapter) -> String {
    let aws = if adapter == Adapter::Aws {
        "METERED_SIM_ADAPTER=aws "
    } else {
        ""
    };
    format!("{aws}METERED_SEED={seed} cargo nextest run -p metered-tests --test simulation")
}

fn run_seeds(adapter: Adapter, seeds: impl Iterator<Item = u64>) {
    let started = std::time::Instant::now();
    let mut n = 0u64;
    let mut totals = Report::default();
    for seed in seeds {
        let (report, found, _) = run_seed(seed, adapter);
        assert!(
            found.is_empty(),
            "seed {seed} on {adapter} broke {} invariant(s):\n  {}\nreport: {report:?}\nreplay: {}",
            found.len(),
            found.join("\n  "),
            replay_hint(seed, adapter)
        );
        n += 1;
        totals.steps += report.steps;
        totals.crashes += report.crashes;
        totals.timeouts += report.timeouts;
        totals.duplicates += report.duplicates;
        totals.lost_sends += report.lost_sends;
        totals.api_changes += report.api_changes;
        totals.invocations += report.invocations;
    }
    println!(
        "simulation on {adapter}: {n} seeds in {:.1} s, {} port-call steps, {} invocations, {} crashes, {} timeouts, {} duplicate deliveries, {} lost send responses, {} API changes; 0 lost, 0 doubled",
        started.elapsed().as_secs_f64(),
        totals.steps,
        totals.invocations,
        totals.crashes,
        totals.timeouts,
        totals.duplicates,
        totals.lost_sends,
        totals.api_changes
    );
}

/// `METERED_SEED`, if set, for this adapter set.
fn one_seed(adapter: Adapter) -> Option<u64> {
    let seed = std::env::var("METERED_SEED").ok()?;
    let wanted = match std::env::var("METERED_SIM_ADAPTER").as_deref() {
        Ok("aws") => Adapter::Aws,
        _ => Adapter::Sqlite,
    };
    (wanted == adapter).then(|| seed.parse().expect("METERED_SEED: a number"))
}

fn sqlite_half(half: u64) {
    if let Some(seed) = one_seed(Adapter::Sqlite) {
        if half == 0 {
            run_seeds(Adapter::Sqlite, std::iter::once(seed));
        }
        return;
    }
    let n = env_u64("METERED_SIM_SEEDS", 1000);
    run_seeds(
        Adapter::Sqlite,
        (0..n).filter(move |i| i % 2 == half).map(|i| SEED_BASE + i),
    );
}

#[test]
fn seeds_on_sqlite_even() {
    sqlite_half(0);
}

#[test]
fn seeds_on_sqlite_odd() {
    sqlite_half(1);
}

#[test]
fn seeds_on_dynamodb_local_and_ministack() {
    if let Some(seed) = one_seed(Adapter::Aws) {
        run_seeds(Adapter::Aws, std::iter::once(seed));
        return;
    }
    if one_seed(Adapter::Sqlite).is_some() {
        return;
    }
    let n = env_u64("METERED_SIM_AWS_SEEDS", 10);
    run_seeds(Adapter::Aws, (0..n).map(|i| SEED_BASE + 100_000 + i));
}

/// The same seed makes the same run: every decision, id and step.
#[test]
fn a_seed_replays_exactly() {
    let (a, _, trace_a) = run_seed(SEED_BASE + 7, Adapter::Sqlite);
    let (b, _, trace_b) = run_seed(SEED_BASE + 7, Adapter::Sqlite);
    assert_eq!(trace_a, trace_b, "the same seed took different steps");
    assert_eq!(
        (a.steps, a.crashes, a.invocations, &a.restarts),
        (b.steps, b.crashes, b.invocations, &b.restarts)
    );
    let (c, _, trace_c) = run_seed(SEED_BASE + 8, Adapter::Sqlite);
    assert_ne!(trace_a, trace_c, "two seeds took the same steps");
    assert!(a.steps > 100 && c.steps > 100);
}
