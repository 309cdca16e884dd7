//! Per-sandbox audit budgets: how many events and bytes one sandbox may write, so a flooding
//! agent can neither fill the node's disk nor take the writer from the other sandboxes.
//!
//! Two token buckets per sandbox, one counting events and one bytes: each holds up to its
//! burst and refills at its rate (a rate of 0 never refills: the burst is then a total). An
//! event is cut when either bucket is empty, unless enforcement needs it: process exec and
//! exit, and every lifecycle, policy and audit event (create, start, kill, delete, violation,
//! dropped...) always pass, and still use up the budget. Cut events are never sealed (so a cut
//! leaves no gap in the chain) and are counted; the writer reports the count as an
//! `audit`/`dropped` event with source `budget`.

use std::time::Instant;

use crate::event::{Action, AuditEvent, Category};

/// One sandbox's allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Events per second, sustained.
    pub events_per_sec: u64,
    /// Events at once (the bucket's size).
    pub event_burst: u64,
    /// Bytes of written lines per second, sustained.
    pub bytes_per_sec: u64,
    /// Bytes at once.
    pub byte_burst: u64,
}

impl Default for BudgetConfig {
    /// 10 000 events/s (bursts of 50 000) and 4 MiB/s (bursts of 32 MiB): well above an
    /// agent's normal activity, and at most ~350 GB a day per sandbox instead of the 394 MB in
    /// 35 s a flood produced.
    fn default() -> Self {
        Self {
            events_per_sec: 10_000,
            event_burst: 50_000,
            bytes_per_sec: 4 * 1024 * 1024,
            byte_burst: 32 * 1024 * 1024,
        }
    }
}

/// Whether enforcement needs `event` in the log, whatever the budget.
pub fn is_protected(event: &AuditEvent) -> bool {
    match event.category {
        Category::Lifecycle | Category::Policy | Category::Audit => true,
        Category::Process => matches!(event.action, Action::Exec | Action::Exit),
        Category::File | Category::Network => false,
    }
}

/// A token bucket (f64 tokens: fractions of a second refill fractions of a token).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Self {
        Self {
            tokens: burst as f64,
            burst: burst as f64,
            rate: rate as f64,
        }
    }

    fn refill(&mut self, secs: f64) {
        self.tokens = (self.tokens + secs * self.rate).min(self.burst);
    }
}

/// One sandbox's buckets.
#[derive(Clone, Debug)]
pub struct Budget {
    events: Bucket,
    bytes: Bucket,
    last: Instant,
}

impl Budget {
    /// Full buckets.
    pub fn new(config: &BudgetConfig, now: Instant) -> Self {
        Self {
            events: Bucket::new(config.events_per_sec, config.event_burst),
            bytes: Bucket::new(config.bytes_per_sec, config.byte_burst),
            last: now,
        }
    }

    /// Whether `event` may be written at `now`; takes one event token if so (protected events
    /// always may, and take what is left).
    pub fn admit(&mut self, event: &AuditEvent, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.events.refill(secs);
        self.bytes.refill(secs);
        let room = self.events.tokens >= 1.0 && self.bytes.tokens > 0.0;
        if !room && !is_protected(event) {
            return false;
        }
        self.events.tokens = (self.events.tokens - 1.0).max(0.0);
        true
    }

    /// Charges the bytes of an admitted event's line (may leave the bucket short by one line).
    pub fn charge_bytes(&mut self, bytes: usize) {
        self.bytes.tokens = (self.bytes.tokens - bytes as f64).max(-(bytes as f64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(category: Category, action: Action) -> AuditEvent {
        AuditEvent {
            category,
            action,
            ..AuditEvent::default()
        }
    }

    #[test]
    fn a_flood_is_cut_at_the_burst_and_refills_at_the_rate() {
        let config = BudgetConfig {
            events_per_sec: 10,
            event_burst: 5,
            bytes_per_sec: 1 << 30,
            byte_burst: 1 << 30,
        };
        let t0 = Instant::now();
        let mut b = Budget::new(&config, t0);
        let open = ev(Category::File, Action::Open);
        let admitted = (0..100).filter(|_| b.admit(&open, t0)).count();
        assert_eq!(admitted, 5);
        // Half a second later: 5 more tokens.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..100).filter(|_| b.admit(&open, t1)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn bytes_run_out_too() {
        let config = BudgetConfig {
            events_per_sec: 0,
            event_burst: 1000,
            bytes_per_sec: 0,
            byte_burst: 1000,
        };
        let t = Instant::now();
        let mut b = Budget::new(&config, t);
        let open = ev(Category::File, Action::Open);
        let mut n = 0;
        while b.admit(&open, t) {
            b.charge_bytes(300);
            n += 1;
        }
        // 1000 bytes: the fourth line takes the bucket below zero, then nothing passes.
        assert_eq!(n, 4);
    }

    #[test]
    fn enforcement_events_are_never_cut() {
        let config = BudgetConfig {
            events_per_sec: 0,
            event_burst: 0,
            bytes_per_sec: 0,
            byte_burst: 0,
        };
        let t = Instant::now();
        let mut b = Budget::new(&config, t);
        for (c, a) in [
            (Category::Process, Action::Exec),
            (Category::Process, Action::Exit),
            (Category::Policy, Action::Violation),
            (Category::Lifecycle, Action::Kill),
            (Category::Lifecycle, Action::Delete),
            (Category::Audit, Action::Dropped),
        ] {
            assert!(b.admit(&ev(c, a), t), "{c:?}/{a:?} was cut");
        }
        for (c, a) in [
            (Category::File, Action::Open),
            (Category::Network, Action::Connect),
            (Category::Process, Action::Clone),
        ] {
            assert!(!b.admit(&ev(c, a), t), "{c:?}/{a:?} passed an empty budget");
        }
    }
}
