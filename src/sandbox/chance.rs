//! Every random choice the sandbox makes: injected faults, latency, IDs, trace IDs.
//!
//! Each request gets its own generator, seeded from the sandbox seed and the request's arrival
//! number. No lock is shared between requests, and with `--seed` the n-th request makes the same
//! choices on every run (exactly so when requests arrive one at a time).

use std::time::Duration;

use axum::http::StatusCode;
use fastrand::Rng;

use crate::rate::DurationRange;

/// The generator for request number `n` of a sandbox seeded with `seed`.
pub fn request_rng(seed: u64, n: u64) -> Rng {
    // splitmix64 of the pair, so neighbouring request numbers get unrelated streams.
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Rng::with_seed(z ^ (z >> 31))
}

/// What goes wrong with a valid request, by injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: store and answer.
    None,
    /// Store nothing, answer this 5xx.
    Fail(StatusCode),
    /// Store the message, then close the connection without answering.
    Drop,
    /// Store nothing and never answer: the request hangs until the client gives up.
    Hang,
    /// Store the message, then answer 504 (a gateway that gave up waiting).
    Stored504,
}

/// The shares of valid requests each fault takes (`--fail-rate`, `--drop-rate`, `--hang-rate`,
/// `--stored-504-rate`); the configuration keeps their sum at most 1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultRates {
    pub fail: f64,
    pub drop: f64,
    pub hang: f64,
    pub stored_504: f64,
}

/// The injected 5xx statuses, picked uniformly.
pub const FAIL_STATUSES: [StatusCode; 3] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
];

impl FaultRates {
    /// The rates a configuration names.
    pub fn of(config: &super::config::SandboxConfig) -> FaultRates {
        FaultRates {
            fail: config.fail_rate,
            drop: config.drop_rate,
            hang: config.hang_rate,
            stored_504: config.stored_504_rate,
        }
    }
}

/// One draw decides every fault, on disjoint intervals of `[0, 1)`, so each happens at exactly
/// its configured rate (the configuration keeps the sum of the rates at most 1).
pub fn pick_fault(rng: &mut Rng, rates: FaultRates) -> Fault {
    let FaultRates {
        fail,
        drop,
        hang,
        stored_504,
    } = rates;
    if fail <= 0.0 && drop <= 0.0 && hang <= 0.0 && stored_504 <= 0.0 {
        return Fault::None;
    }
    let u = rng.f64();
    if u < fail {
        Fault::Fail(FAIL_STATUSES[rng.usize(..FAIL_STATUSES.len())])
    } else if u < fail + drop {
        Fault::Drop
    } else if u < fail + drop + hang {
        Fault::Hang
    } else if u < fail + drop + hang + stored_504 {
        Fault::Stored504
    } else {
        Fault::None
    }
}

/// A latency drawn uniformly from `range`; a single value `D` (low == high) jitters over
/// `[D/2, 3D/2]`, so "--latency 100ms" behaves like a real network rather than a metronome.
pub fn pick_latency(rng: &mut Rng, range: DurationRange) -> Duration {
    let (low, high) = if range.low == range.high {
        (range.low / 2, range.low + range.low / 2)
    } else {
        (range.low, range.high)
    };
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(nanos(low)..=nanos(high)))
}

/// A fresh ID like the API's: 20 characters from `[A-Za-z0-9]` (e.g. `ve9EPM428h8vShlRW1KT`).
pub fn new_id(rng: &mut Rng) -> String {
    (0..20).map(|_| rng.alphanumeric()).collect()
}

/// A trace ID in the shape of a random UUID, as real answers carry.
pub fn new_trace_id(rng: &mut Rng) -> String {
    let hex = |n: u64, digits: usize| format!("{:0width$x}", n, width = digits);
    let a = rng.u64(..);
    let b = rng.u64(..);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        hex(a >> 32, 8),
        hex((a >> 16) & 0xffff, 4),
        hex(a & 0xfff, 3),
        8 + (b >> 62),
        hex((b >> 48) & 0xfff, 3),
        hex(b & 0xffff_ffff_ffff, 12),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_number_same_choices() {
        let draw = |seed, n| {
            let mut rng = request_rng(seed, n);
            (new_id(&mut rng), new_trace_id(&mut rng))
        };
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
    }

    #[test]
    fn ids_have_the_api_shape() {
        let mut rng = request_rng(1, 1);
        for _ in 0..100 {
            let id = new_id(&mut rng);
            assert_eq!(id.len(), 20);
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
            let t = new_trace_id(&mut rng);
            let groups: Vec<usize> = t.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{t}");
            assert!(t.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{t}");
        }
    }

    #[test]
    fn fault_rates_hold_over_many_draws() {
        let n = 100_000;
        let (mut fails, mut drops, mut hangs, mut late) = (0, 0, 0, 0);
        let rates = FaultRates {
            fail: 0.2,
            drop: 0.05,
            hang: 0.05,
            stored_504: 0.05,
        };
        for i in 0..n {
            match pick_fault(&mut request_rng(42, i), rates) {
                Fault::Fail(s) => {
                    assert!(FAIL_STATUSES.contains(&s));
                    fails += 1
                }
                Fault::Drop => drops += 1,
                Fault::Hang => hangs += 1,
                Fault::Stored504 => late += 1,
                Fault::None => {}
            }
        }
        // Within 5 sigma of the expected counts.
        assert!((19_370..=20_630).contains(&fails), "fails {fails}");
        for (what, count) in [("drops", drops), ("hangs", hangs), ("504s", late)] {
            assert!((4_660..=5_340).contains(&count), "{what} {count}");
        }
        assert!(
            (0..1000)
                .all(|i| pick_fault(&mut request_rng(1, i), FaultRates::default()) == Fault::None)
        );
    }

    #[test]
    fn latency_stays_in_its_range() {
        let mut rng = request_rng(3, 0);
        let range: DurationRange = "50ms..60ms".parse().expect("range");
        let single: DurationRange = "100ms".parse().expect("single");
        for _ in 0..1_000 {
            let d = pick_latency(&mut rng, range);
            assert!(Duration::from_millis(50) <= d && d <= Duration::from_millis(60));
            let d = pick_latency(&mut rng, single);
            assert!(Duration::from_millis(50) <= d && d <= Duration::from_millis(150));
        }
    }
}
