//! Deterministic records: the same seed and sizes give the same data.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// splitmix64: tiny, deterministic, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Every record type's records, each sorted by id.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub types: BTreeMap<String, Vec<Value>>,
}

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn customer(i: usize, rng: &mut Rng, updated: DateTime<Utc>) -> Value {
    let tiers = ["gold", "silver", "bronze"];
    json!({
        "id": format!("cus_{i:05}"),
        "name": format!("Customer {i}"),
        "email": format!("customer{i}@example.com"),
        "tier": tiers[rng.below(3)],
        // Spread evenly over 0..100, independent of the generator.
        "score": (i * 37) % 100,
        "version": 1,
        "updated_at": ts(updated),
    })
}

impl Dataset {
    pub fn generate(cfg: &crate::SimConfig, now: DateTime<Utc>) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let back = |rng: &mut Rng| now - Duration::minutes(60 + rng.below(30 * 24 * 60) as i64);
        let mut types = BTreeMap::new();
        let customers: Vec<Value> = (0..cfg.customers)
            .map(|i| {
                let t = back(&mut rng);
                customer(i, &mut rng, t)
            })
            .collect();
        let classes: Vec<Value> = (0..cfg.classes)
            .map(|i| {
                json!({
                    "id": format!("cls_{i:03}"),
                    "title": format!("Class {i}"),
                    "capacity": 10 + rng.below(20),
                    "version": 1,
                    "updated_at": ts(back(&mut rng)),
                })
            })
            .collect();
        let statuses = ["paid", "open", "void"];
        let invoices: Vec<Value> = (0..cfg.invoices)
            .map(|i| {
                json!({
                    "id": format!("inv_{i:06}"),
                    "customer_id": format!("cus_{:05}", rng.below(cfg.customers.max(1))),
                    "amount_cents": 500 + rng.below(100_000),
                    "status": statuses[rng.below(3)],
                    "version": 1,
                    "updated_at": ts(back(&mut rng)),
                })
            })
            .collect();
        let checkins: Vec<Value> = (0..cfg.checkins)
            .map(|i| {
                let t = back(&mut rng);
                json!({
                    "id": format!("chk_{i:06}"),
                    "customer_id": format!("cus_{:05}", rng.below(cfg.customers.max(1))),
                    "class_id": format!("cls_{:03}", rng.below(cfg.classes.max(1))),
                    "version": 1,
                    "updated_at": t.timestamp(),
                })
            })
            .collect();
        types.insert("customers".to_string(), customers);
        types.insert("classes".to_string(), classes);
        types.insert("invoices".to_string(), invoices);
        types.insert("checkins".to_string(), checkins);
        Self { types }
    }
}
