//! A circuit breaker per channel: after `failure_threshold` consecutive transient failures
//! the circuit opens and calls fail fast for `cool_down`; then one probe call goes through
//! (half-open): its success closes the circuit, its failure opens it for another
//! cool-down. So a dead channel costs the workers no timeouts, and the jobs meant for it
//! wait in their queues (with backoff) instead of holding up the other channels.
//!
//! The state is exported as the gauge [`CIRCUIT_OPEN_GAUGE`] `{channel}`: 1 while the
//! circuit is open or half-open, 0 once closed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use igl_core::channel::CircuitState;
use metrics::{describe_gauge, gauge};

/// `igl_channel_circuit_open{channel}`: 1 while calls to the channel fail fast (open or
/// half-open), 0 when closed.
pub const CIRCUIT_OPEN_GAUGE: &str = "igl_channel_circuit_open";

/// When a circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    /// Consecutive transient failures that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long an open circuit fails fast before letting a probe through.
    pub cool_down: Duration,
}

impl Default for CircuitBreakerConfig {
    /// 5 failures in a row, 5 s cool-down.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The circuit breaker of one channel. Cheap to share (`&self` methods, a short-held
/// mutex that is never held across an `.await`).
#[derive(Debug)]
pub struct CircuitBreaker {
    channel: String,
    config: CircuitBreakerConfig,
    state: Mutex<State>,
}

/// Permission to make one call; report its outcome with [`CallPermit::succeeded`] or
/// [`CallPermit::failed`]. Dropping it unreported (a cancelled call) reports nothing,
/// except that a probe's slot is freed for the next caller.
#[derive(Debug)]
#[must_use = "report the outcome of the call"]
pub struct CallPermit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    /// A closed circuit for `channel` (the label of its gauge).
    pub fn new(channel: impl Into<String>, config: CircuitBreakerConfig) -> Self {
        let breaker = Self {
            channel: channel.into(),
            config: CircuitBreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                ..config
            },
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        describe_gauge!(
            CIRCUIT_OPEN_GAUGE,
            "1 while calls to the channel fail fast because it kept failing"
        );
        breaker.set_gauge(false);
        breaker
    }

    /// Sets the gauge, resolved through the recorder installed now (not the one installed
    /// when the breaker was made, if any).
    fn set_gauge(&self, open: bool) {
        gauge!(CIRCUIT_OPEN_GAUGE, "channel" => self.channel.clone()).set(if open {
            1.0
        } else {
            0.0
        });
    }

    /// The channel this breaker guards.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The current state (`Open` turns into `HalfOpen` once the cool-down has passed).
    pub fn state(&self) -> CircuitState {
        self.state_at(Instant::now())
    }

    /// Asks to make a call now.
    ///
    /// # Errors
    ///
    /// How long until a probe may go through, while the circuit is open (or half-open
    /// with its probe in flight).
    pub fn acquire(&self) -> Result<CallPermit<'_>, Duration> {
        self.acquire_at(Instant::now())
    }

    fn state_at(&self, now: Instant) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn acquire_at(&self, now: Instant) -> Result<CallPermit<'_>, Duration> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return Err(until - now),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => return Err(self.config.cool_down),
        };
        Ok(CallPermit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    fn record(&self, probe: bool, success: bool, now: Instant) {
        let mut state = self.lock();
        let before = *state;
        *state = match (before, success) {
            // Any answer proves the channel alive.
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failure_threshold {
                    State::Open {
                        until: now + self.config.cool_down,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen { .. }, false) if probe => State::Open {
                until: now + self.config.cool_down,
            },
            // A call that started before the circuit opened: the probe decides.
            (other, false) => other,
        };
        let after = *state;
        drop(state);
        match (before, after) {
            (State::Closed { .. }, State::Open { .. }) => {
                self.set_gauge(true);
                tracing::warn!(
                    channel = %self.channel,
                    failures = self.config.failure_threshold,
                    cool_down = ?self.config.cool_down,
                    "channel circuit opened: calls fail fast until a probe succeeds"
                );
            }
            (State::Open { .. } | State::HalfOpen { .. }, State::Closed { .. }) => {
                self.set_gauge(false);
                tracing::info!(channel = %self.channel, "channel circuit closed");
            }
            _ => {}
        }
    }

    fn release_probe(&self) {
        let mut state = self.lock();
        if *state == (State::HalfOpen { probing: true }) {
            *state = State::HalfOpen { probing: false };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CallPermit<'_> {
    /// The call got an answer from the channel (any answer that proves it alive, including
    /// a 4xx).
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, true, Instant::now());
    }

    /// The call failed transiently (unreachable, timed out, 5xx, 429, garbage).
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, false, Instant::now());
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(10);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            CircuitBreakerConfig {
                failure_threshold: 3,
                cool_down: COOL_DOWN,
            },
        )
    }

    fn fail(breaker: &CircuitBreaker, now: Instant) {
        let permit = breaker.acquire_at(now).expect("permitted");
        let probe = permit.probe;
        std::mem::forget(permit);
        breaker.record(probe, false, now);
    }

    fn succeed(breaker: &CircuitBreaker, now: Instant) {
        let permit = breaker.acquire_at(now).expect("permitted");
        let probe = permit.probe;
        std::mem::forget(permit);
        breaker.record(probe, true, now);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = breaker();
        let now = Instant::now();
        fail(&breaker, now);
        fail(&breaker, now);
        succeed(&breaker, now);
        fail(&breaker, now);
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), CircuitState::Closed);
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), CircuitState::Open);
        let retry_in = breaker
            .acquire_at(now + Duration::from_secs(4))
            .unwrap_err();
        assert_eq!(retry_in, Duration::from_secs(6));
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let breaker = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            fail(&breaker, now);
        }
        let later = now + COOL_DOWN;
        assert_eq!(breaker.state_at(later), CircuitState::HalfOpen);
        let probe = breaker.acquire_at(later).expect("the probe");
        assert!(probe.probe);
        assert_eq!(breaker.acquire_at(later).unwrap_err(), COOL_DOWN);
        std::mem::forget(probe);
        breaker.record(true, true, later);
        assert_eq!(breaker.state_at(later), CircuitState::Closed);
        assert!(!breaker.acquire_at(later).unwrap().probe);
    }

    #[test]
    fn a_failed_probe_opens_for_another_cool_down() {
        let breaker = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            fail(&breaker, now);
        }
        let later = now + COOL_DOWN + Duration::from_secs(1);
        fail(&breaker, later);
        assert_eq!(breaker.state_at(later), CircuitState::Open);
        assert_eq!(breaker.acquire_at(later).unwrap_err(), COOL_DOWN);
        assert_eq!(breaker.state_at(later + COOL_DOWN), CircuitState::HalfOpen);
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let breaker = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            fail(&breaker, now);
        }
        let later = now + COOL_DOWN;
        drop(breaker.acquire_at(later).expect("the probe"));
        let again = breaker.acquire_at(later).expect("a new probe");
        assert!(again.probe);
    }

    #[test]
    fn late_failures_of_calls_started_before_opening_do_not_extend_it() {
        let breaker = breaker();
        let now = Instant::now();
        let slow = breaker.acquire_at(now).unwrap();
        for _ in 0..3 {
            fail(&breaker, now);
        }
        std::mem::forget(slow);
        breaker.record(false, false, now + Duration::from_secs(9));
        assert_eq!(breaker.state_at(now + COOL_DOWN), CircuitState::HalfOpen);
    }

    #[test]
    fn permits_report_through_the_public_api() {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.acquire().unwrap().failed();
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.acquire().is_err());
        let closed = CircuitBreaker::new("other", CircuitBreakerConfig::default());
        closed.acquire().unwrap().succeeded();
        assert_eq!(closed.state(), CircuitState::Closed);
        assert_eq!(closed.channel(), "other");
    }

    /// Records the last value set on each gauge, by its labels.
    #[derive(Debug, Default)]
    struct GaugeRecorder {
        values: std::sync::Arc<Mutex<std::collections::HashMap<String, f64>>>,
    }

    #[derive(Debug)]
    struct RecordedGauge {
        key: String,
        values: std::sync::Arc<Mutex<std::collections::HashMap<String, f64>>>,
    }

    impl metrics::GaugeFn for RecordedGauge {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.values.lock().unwrap().insert(self.key.clone(), value);
        }
    }

    impl metrics::Recorder for GaugeRecorder {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            let labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            metrics::Gauge::from_arc(std::sync::Arc::new(RecordedGauge {
                key: format!("{}{{{}}}", key.name(), labels.join(",")),
                values: self.values.clone(),
            }))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn the_gauge_follows_the_circuit() {
        let recorder = GaugeRecorder::default();
        let gauge = |recorder: &GaugeRecorder| {
            recorder
                .values
                .lock()
                .unwrap()
                .get("igl_channel_circuit_open{channel=gauged}")
                .copied()
        };
        metrics::with_local_recorder(&recorder, || {
            let breaker = CircuitBreaker::new(
                "gauged",
                CircuitBreakerConfig {
                    failure_threshold: 1,
                    cool_down: Duration::ZERO,
                },
            );
            assert_eq!(gauge(&recorder), Some(0.0));
            breaker.acquire().unwrap().failed();
            assert_eq!(gauge(&recorder), Some(1.0));
            let probe = breaker.acquire().expect("cool-down over");
            assert_eq!(gauge(&recorder), Some(1.0), "half-open still fails fast");
            probe.succeeded();
            assert_eq!(gauge(&recorder), Some(0.0));
        });
    }
}
