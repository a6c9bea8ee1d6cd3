//! Rate limits per client and per address (GCRA, from the `governor` crate): how often an address
//! may register identities, and how often a client (and all clients of one address together) may
//! check in and upload. A refused request changes nothing and says when to come back.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ServiceError;
use crate::config::ServerConfig;

/// What a request is, for its quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Registration,
    CheckIn,
    Upload,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Registration => "registrations from this address",
            Kind::CheckIn => "check-ins",
            Kind::Upload => "uploads",
        }
    }
}

/// One keyed quota, or none (unlimited).
struct Limit<K: Hash + Eq + Clone>(Option<DefaultKeyedRateLimiter<K>>);

impl<K: Hash + Eq + Clone> Limit<K> {
    fn per_minute(n: u32) -> Self {
        Self(NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_minute(n))))
    }

    /// `Err(ms)`: over the quota; the next request fits in `ms`.
    fn check(&self, key: &K) -> Result<(), u64> {
        self.0.as_ref().map_or(Ok(()), |limiter| admit_key(limiter, key))
    }

    fn forget_idle(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// `Err(ms)`: `key` is over `limiter`'s quota; the next request fits in `ms`.
fn admit_key<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), u64> {
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()).as_millis().max(1) as u64)
}

/// The quotas of one server.
pub struct Limits {
    registrations: Limit<IpAddr>,
    check_ins: Limit<String>,
    uploads: Limit<String>,
    per_address: Limit<IpAddr>,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            registrations: Limit::per_minute(config.registrations_per_minute),
            check_ins: Limit::per_minute(config.checkins_per_minute),
            uploads: Limit::per_minute(config.uploads_per_minute),
            per_address: Limit::per_minute(config.requests_per_minute_per_address),
        }
    }

    /// Admits one request of `kind` from `peer` (unknown in in-process tests) by `client` (none
    /// for a registration), or refuses it with 429.
    pub fn admit(&self, kind: Kind, peer: Option<IpAddr>, client: Option<&str>) -> Result<(), ServiceError> {
        let refuse = |ms: u64, whose: &str| ServiceError::RateLimited {
            retry_after_ms: ms,
            message: format!("too many {} {whose}: try again in {:.1} s", kind.what(), ms as f64 / 1000.0),
        };
        if let Some(peer) = peer {
            self.per_address.check(&peer).map_err(|ms| refuse(ms, "(this address's limit)"))?;
            if kind == Kind::Registration {
                self.registrations.check(&peer).map_err(|ms| refuse(ms, "(per minute)"))?;
            }
        }
        let per_client = match kind {
            Kind::Registration => None,
            Kind::CheckIn => self.check_ins.0.as_ref(),
            Kind::Upload => self.uploads.0.as_ref(),
        };
        // The key is built only when the quota is on: this runs on every check-in.
        if let (Some(limiter), Some(client)) = (per_client, client) {
            admit_key(limiter, &client.to_string()).map_err(|ms| refuse(ms, "from this client"))?;
        }
        Ok(())
    }

    /// Drops the state of keys that are back to a full quota (bounded memory under churn).
    pub fn forget_idle(&self) {
        self.registrations.forget_idle();
        self.check_ins.forget_idle();
        self.uploads.forget_idle();
        self.per_address.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_per_key_and_say_when_to_return() {
        let config = ServerConfig { registrations_per_minute: 2, checkins_per_minute: 3, ..ServerConfig::default() };
        let limits = Limits::new(&config);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limits.admit(Kind::Registration, Some(a), None).is_ok());
        assert!(limits.admit(Kind::Registration, Some(a), None).is_ok());
        let Err(ServiceError::RateLimited { retry_after_ms, .. }) = limits.admit(Kind::Registration, Some(a), None)
        else {
            panic!("the third registration in a minute is refused")
        };
        // 2 per minute: one more fits after ~30 s.
        assert!((20_000..=30_000).contains(&retry_after_ms), "{retry_after_ms}");
        assert!(limits.admit(Kind::Registration, Some(b), None).is_ok(), "another address has its own quota");
        for _ in 0..3 {
            assert!(limits.admit(Kind::CheckIn, Some(a), Some("c1")).is_ok());
        }
        assert!(limits.admit(Kind::CheckIn, Some(a), Some("c1")).is_err());
        assert!(limits.admit(Kind::CheckIn, Some(a), Some("c2")).is_ok(), "another client has its own quota");
        assert!(limits.admit(Kind::Upload, None, Some("c1")).is_ok(), "uploads have their own quota");
        let unlimited = Limits::new(&ServerConfig { checkins_per_minute: 0, ..config });
        for _ in 0..1000 {
            assert!(unlimited.admit(Kind::CheckIn, None, Some("c1")).is_ok());
        }
    }
}
