//! Ids of jobs, messages, receipts and leases.
//!
//! Random (UUID v4) everywhere but in a seeded simulation: ids feed the
//! restart jitter and the order of equal-time queue messages, so a
//! simulation that must replay a seed exactly installs a seeded sequence on
//! its thread ([`seed_thread`]) and runs every job on that thread (a
//! current-thread runtime). Ids are taken on the async side only, never
//! inside a blocking closure, so they come from the seeded thread.

use std::cell::RefCell;

thread_local! {
    static SEEDED: RefCell<Option<SplitMix64>> = const { RefCell::new(None) };
}

/// A new id: a UUID string, random unless this thread runs a seeded
/// simulation.
pub fn new_id() -> String {
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(g) => {
            let bytes = (u128::from(g.next()) << 64 | u128::from(g.next())).to_be_bytes();
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    })
}

/// Makes [`new_id`] on this thread a sequence decided by `seed` until the
/// returned guard is dropped (then random again).
pub fn seed_thread(seed: u64) -> SeededIds {
    SEEDED.with(|s| *s.borrow_mut() = Some(SplitMix64(seed)));
    SeededIds(std::marker::PhantomData)
}

/// While alive, this thread's ids are seeded; not `Send`, so it stays on
/// the thread it seeded.
#[derive(Debug)]
pub struct SeededIds(std::marker::PhantomData<*const ()>);

impl Drop for SeededIds {
    fn drop(&mut self) {
        SEEDED.with(|s| *s.borrow_mut() = None);
    }
}

/// Steele, Lea and Flood's SplitMix64: small, fast and good enough to make
/// ids unique within a run.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_per_seed_and_differ_between_seeds() {
        let run = |seed| {
            let _g = seed_thread(seed);
            (0..3).map(|_| new_id()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let a = run(1);
        assert!(a[0] != a[1] && a[1] != a[2]);
        // Random again once the guard is gone.
        assert_ne!(new_id(), new_id());
        assert!(uuid::Uuid::parse_str(&a[0]).is_ok());
    }
}
