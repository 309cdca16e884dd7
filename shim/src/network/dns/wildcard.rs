//! The bound on what a `*.` entry can carry out: the upstream is asked for at most
//! [`NAMES_PER_MINUTE`] distinct names below one wildcard entry in any minute. A name asked
//! again within the minute does not count again; a new name over the bound is refused
//! without reaching the upstream.
//!
//! This bounds, not closes, the channel: an agent that controls the zone a wildcard names
//! (its authoritative server sees every name the upstream resolves) can send that many names
//! a minute, each up to 253 characters.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Distinct names below one wildcard entry the upstream is asked for in a minute, at most.
pub const NAMES_PER_MINUTE: usize = 30;

const WINDOW: Duration = Duration::from_secs(60);

/// The names asked below each wildcard entry in the last minute.
#[derive(Default)]
pub struct WildcardBudget {
    asked: HashMap<String, VecDeque<(Instant, String)>>,
}

impl WildcardBudget {
    /// Whether `name` (below `wildcard`) may be asked at `now`; counts it if it is new.
    pub fn admit(&mut self, wildcard: &str, name: &str, now: Instant) -> bool {
        let asked = self.asked.entry(wildcard.to_owned()).or_default();
        while asked
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW)
        {
            asked.pop_front();
        }
        if asked.iter().any(|(_, n)| n == name) {
            return true;
        }
        if asked.len() >= NAMES_PER_MINUTE {
            return false;
        }
        asked.push_back((now, name.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_names_are_bounded_per_wildcard_and_minute() {
        let mut b = WildcardBudget::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(30);
        for i in 0..10 {
            assert!(b.admit("*.tun.test", &format!("a{i}.tun.test"), t0));
        }
        for i in 10..NAMES_PER_MINUTE {
            assert!(b.admit("*.tun.test", &format!("a{i}.tun.test"), later));
        }
        assert!(!b.admit("*.tun.test", "new.tun.test", later));
        // A name already asked is asked again; another wildcard has its own budget.
        assert!(b.admit("*.tun.test", "a3.tun.test", later));
        assert!(b.admit("*.other.test", "x.other.test", later));
        // A minute after the first ten, ten new names fit again, and no more.
        for i in 0..10 {
            assert!(b.admit("*.tun.test", &format!("b{i}.tun.test"), t0 + WINDOW));
        }
        assert!(!b.admit("*.tun.test", "b10.tun.test", t0 + WINDOW));
    }
}
