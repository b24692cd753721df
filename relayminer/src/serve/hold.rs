//! Relays held while a service has no engine replica ready: a model scaled to zero is
//! woken by its first relay, which waits here (bounded in count and bytes, each with a
//! deadline) until discovery finds an engine. Held relays are in flight from the moment
//! they arrive, so the autoscaler sees the demand on its next read.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lode_contracts::serve::HoldConfig;

use super::metrics::ServiceMetrics;

/// One service's held relays.
#[derive(Debug)]
pub struct Hold {
    config: HoldConfig,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    relays: usize,
    bytes: usize,
    /// When the first relay of this wake-up was held.
    waking_since: Option<Instant>,
    /// How long the last wake-up took, first held relay to first engine ready.
    last_wake: Option<Duration>,
}

/// A relay's place in the hold, given back when dropped.
#[derive(Debug)]
pub struct Seat<'a> {
    hold: &'a Hold,
    metrics: &'a ServiceMetrics,
    bytes: usize,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let mut s = self.hold.state.lock().expect("hold lock");
        s.relays -= 1;
        s.bytes -= self.bytes;
        self.metrics.held.store(s.relays as u64, Ordering::Relaxed);
    }
}

impl Hold {
    pub fn new(config: HoldConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    pub fn deadline(&self) -> Duration {
        self.config.deadline()
    }

    /// A place for a relay of `bytes`, or `None` when the hold is full (in count or in
    /// bytes).
    pub fn seat<'a>(&'a self, bytes: usize, metrics: &'a ServiceMetrics) -> Option<Seat<'a>> {
        metrics.wants_engine();
        let mut s = self.state.lock().expect("hold lock");
        if s.relays >= self.config.max_relays
            || s.bytes.saturating_add(bytes) > self.config.max_bytes
        {
            return None;
        }
        s.relays += 1;
        s.bytes += bytes;
        s.waking_since.get_or_insert_with(Instant::now);
        metrics.held.store(s.relays as u64, Ordering::Relaxed);
        metrics.held_total.fetch_add(1, Ordering::Relaxed);
        Some(Seat {
            hold: self,
            metrics,
            bytes,
        })
    }

    /// An engine was found for a held relay: the wake-up is over, and its length is
    /// what the next `Retry-After` is estimated from.
    pub fn woke(&self, metrics: &ServiceMetrics) {
        let mut s = self.state.lock().expect("hold lock");
        if let Some(t) = s.waking_since.take() {
            let took = t.elapsed();
            s.last_wake = Some(took);
            metrics
                .last_wake_ms
                .store(took.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Seconds until an engine is expected: the last wake-up's length less the time
    /// this one has run, or the hold's deadline when no wake-up was seen yet; at least 1.
    pub fn retry_after(&self) -> u64 {
        let s = self.state.lock().expect("hold lock");
        let left = match (s.last_wake, s.waking_since) {
            (Some(took), Some(since)) => took.saturating_sub(since.elapsed()),
            (Some(took), None) => took,
            (None, _) => self.config.deadline(),
        };
        left.as_secs_f64().ceil().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_is_bounded_in_count_and_bytes_and_gives_seats_back() {
        let m = ServiceMetrics::default();
        let h = Hold::new(HoldConfig {
            max_relays: 2,
            max_bytes: 100,
            deadline_ms: 5_000,
        });
        let a = h.seat(60, &m).expect("first");
        assert!(h.seat(41, &m).is_none(), "over the bytes");
        let b = h.seat(40, &m).expect("second");
        assert!(h.seat(0, &m).is_none(), "over the count");
        assert_eq!(m.held.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(m.held.load(Ordering::Relaxed), 1);
        let c = h.seat(60, &m).expect("room again");
        drop((b, c));
        assert_eq!(m.held.load(Ordering::Relaxed), 0);
        assert_eq!(m.held_total.load(Ordering::Relaxed), 3);
        assert!(h.seat(usize::MAX, &m).is_none(), "no overflow");
    }

    #[test]
    fn retry_after_follows_the_last_wake_up() {
        let m = ServiceMetrics::default();
        let h = Hold::new(HoldConfig {
            max_relays: 4,
            max_bytes: 100,
            deadline_ms: 7_500,
        });
        assert_eq!(h.retry_after(), 8, "no wake-up seen: the deadline");
        let s = h.seat(1, &m).expect("seat");
        std::thread::sleep(Duration::from_millis(20));
        h.woke(&m);
        drop(s);
        assert!(m.last_wake_ms.load(Ordering::Relaxed) >= 20);
        assert_eq!(h.retry_after(), 1, "a quick wake-up: at least 1 s");
    }
}
