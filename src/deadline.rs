//! Request deadlines: the client's `grpc-timeout`, else the configured default, capped by the
//! configured maximum.
//!
//! The handler enforces the deadline itself (tonic's server-side timeout answers CANCELLED, and
//! clients expect DEADLINE_EXCEEDED); the worker drops jobs whose deadline has passed before
//! spending compute on them. Uses `std::time::Instant` because worker threads read it.

use std::time::{Duration, Instant};

/// When a request must be answered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Deadline { at: Instant::now() + timeout }
    }

    /// The deadline of a request that arrived at `arrived` asking for `asked` (its parsed
    /// `grpc-timeout`, if any): `default` when it asked for nothing, capped at `max`.
    pub fn for_call(arrived: Instant, asked: Option<Duration>, default: Duration, max: Duration) -> Self {
        Deadline { at: arrived + asked.unwrap_or(default).min(max) }
    }

    /// This deadline, or `within` from now when that is sooner.
    pub fn tightened(self, within: Duration) -> Self {
        Deadline { at: self.at.min(Instant::now() + within) }
    }

    /// The instant itself.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Time left; zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// Parses a `grpc-timeout` header value: 1 to 8 ASCII digits and a unit
/// (`H` hours, `M` minutes, `S` seconds, `m` millis, `u` micros, `n` nanos).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "100", "123456789S", "-1S", "1.5S", "10s", "10é", "é", "1 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn default_applies_and_max_caps() {
        let now = Instant::now();
        let (default, max) = (Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(Deadline::for_call(now, None, default, max).at(), now + default);
        assert_eq!(Deadline::for_call(now, parse_grpc_timeout("10H"), default, max).at(), now + max);
        assert_eq!(
            Deadline::for_call(now, parse_grpc_timeout("250m"), default, max).at(),
            now + Duration::from_millis(250)
        );
        assert!(!Deadline::for_call(now, None, default, max).is_expired());
        assert!(Deadline::after(Duration::ZERO).is_expired());
    }
}
