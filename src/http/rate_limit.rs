//! Per-client-IP rate limiting with GCRA (the generic cell rate algorithm: one
//! "theoretical arrival time" per key, no counters or windows to reset), as a
//! middleware in front of every route except the probes and `/metrics`.
//!
//! Policies: `api` for every other route (default 100 requests a minute, bursts up to
//! the whole quota), stricter `signup` and `login`, and `ws` for new WebSocket
//! connections (an admission limit, so a reconnect storm is spread out). A request
//! over its policy gets 429 `rate_limited` with `Retry-After`; every limited response
//! carries `RateLimit-Policy` and `RateLimit` (IETF draft
//! `draft-ietf-httpapi-ratelimit-headers`, structured-field form).
//!
//! The client IP is the TCP peer, unless the peer is a configured trusted proxy: then
//! `X-Forwarded-For` is walked from the right, skipping trusted proxies, and the first
//! other address is the client. A forged header from anyone else changes nothing.
//!
//! Memory is bounded: each policy keeps at most `max_tracked_ips` keys. When full,
//! keys whose quota has fully refilled (equivalent to absent) are swept; if none can
//! go, a new IP is refused until one can (fail closed, never grow).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use super::problem::ApiError;
use super::AppState;

/// Lock shards per policy: requests from different IPs rarely contend.
const SHARDS: usize = 16;

/// `RateLimit-Policy` header.
pub const RATE_LIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` header.
pub const RATE_LIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One policy's quota: `limit` requests per `period`, bursting up to `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Requests per period.
    pub limit: u32,
    /// The period.
    pub period: Duration,
}

impl Quota {
    /// `limit` requests a minute.
    pub fn per_minute(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            period: Duration::from_secs(60),
        }
    }

    /// Time between requests at the sustained rate (the GCRA emission interval).
    fn interval(&self) -> Duration {
        self.period / self.limit
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether it may pass.
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Seconds until the quota is whole again.
    pub reset_secs: u64,
    /// Seconds until a request passes (0 when allowed).
    pub retry_after_secs: u64,
}

/// A GCRA limiter keyed by client IP, with a bounded number of keys.
#[derive(Debug)]
pub struct Limiter {
    name: &'static str,
    quota: Quota,
    max_keys_per_shard: usize,
    shards: Vec<Mutex<HashMap<IpAddr, Instant>>>,
    hasher: std::collections::hash_map::RandomState,
    policy_header: HeaderValue,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limiter {
    /// A limiter named `name` (in headers) enforcing `quota` for at most `max_keys` IPs.
    pub fn new(name: &'static str, quota: Quota, max_keys: usize) -> Self {
        let policy = format!(
            "\"{name}\";q={};w={}",
            quota.limit,
            quota.period.as_secs().max(1)
        );
        Self {
            name,
            quota,
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            policy_header: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("\"api\"")),
        }
    }

    /// Keys held right now (for tests and health details).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Decides on one request from `ip` at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Decision {
        let interval = self.quota.interval();
        // The burst tolerance: how far ahead of now the arrival time may run.
        let tolerance = interval * (self.quota.limit - 1);
        let shard = &self.shards[self.hasher.hash_one(ip) as usize % SHARDS];
        let Ok(mut keys) = shard.lock() else {
            // A poisoned shard is a bug elsewhere; do not lock clients out over it.
            return Decision {
                allowed: true,
                remaining: 0,
                reset_secs: 0,
                retry_after_secs: 0,
            };
        };
        if !keys.contains_key(&ip) && keys.len() >= self.max_keys_per_shard {
            // Keys whose arrival time has passed are as good as absent.
            keys.retain(|_, tat| *tat > now);
            if keys.len() >= self.max_keys_per_shard {
                return Decision {
                    allowed: false,
                    remaining: 0,
                    reset_secs: 1,
                    retry_after_secs: 1,
                };
            }
        }
        let tat = keys.get(&ip).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            let wait = ahead - tolerance;
            return Decision {
                allowed: false,
                remaining: 0,
                reset_secs: ceil_secs(ahead),
                retry_after_secs: ceil_secs(wait).max(1),
            };
        }
        let new_tat = tat + interval;
        keys.insert(ip, new_tat);
        let used = new_tat - now;
        let headroom = (tolerance + interval).saturating_sub(used);
        Decision {
            allowed: true,
            remaining: (headroom.as_nanos() / interval.as_nanos().max(1)) as u32,
            reset_secs: ceil_secs(used),
            retry_after_secs: 0,
        }
    }

    fn headers(&self, decision: &Decision) -> [(HeaderName, HeaderValue); 2] {
        let state = format!(
            "\"{}\";r={};t={}",
            self.name, decision.remaining, decision.reset_secs
        );
        [
            (RATE_LIMIT_POLICY, self.policy_header.clone()),
            (
                RATE_LIMIT,
                HeaderValue::from_str(&state).unwrap_or_else(|_| HeaderValue::from_static("")),
            ),
        ]
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl Network {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The policies of a node and who may speak for clients.
#[derive(Debug)]
pub struct RateLimits {
    /// Every API route not covered below.
    pub api: Limiter,
    /// `POST /api/users/signup`.
    pub signup: Limiter,
    /// `POST /api/users/login`.
    pub login: Limiter,
    /// New WebSocket connections.
    pub ws: Limiter,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
}

impl RateLimits {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// The client's IP: the peer, or for a trusted proxy the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let Some(chain) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for entry in chain.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusted(ip) {
                        break;
                    }
                }
                // Garbage in the chain: trust nothing further left.
                Err(_) => break,
            }
        }
        client
    }

    /// The policy for a request path, or `None` for unlimited routes.
    fn policy(&self, path: &str) -> Option<&Limiter> {
        match path {
            "/livez" | "/readyz" | "/metrics" => None,
            "/api/users/signup" => Some(&self.signup),
            "/api/users/login" => Some(&self.login),
            "/ws" => Some(&self.ws),
            _ => Some(&self.api),
        }
    }
}

/// Middleware (use with `from_fn`): answers 429 over the limit, else passes the request
/// on and adds the rate-limit headers to the response.
///
/// # Errors
/// Only what the inner service returns.
pub async fn limit_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let verdict = req.app_data::<web::Data<AppState>>().and_then(|state| {
        let limits = state.rate_limits.as_ref()?;
        // The path the router matches (percent-decoded), so `/api/users/%73ignup` is
        // limited as the signup it reaches.
        let limiter = limits.policy(req.match_info().as_str())?;
        let peer = req.peer_addr()?.ip();
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = limits.client_ip(peer, forwarded);
        let decision = limiter.check(ip, Instant::now());
        Some((decision, limiter.headers(&decision)))
    });
    match verdict {
        Some((decision, headers)) if !decision.allowed => {
            let error = ApiError::RateLimited {
                retry_after_secs: decision.retry_after_secs,
            };
            let mut response = error.error_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value);
            }
            Ok(req.into_response(response).map_into_right_body())
        }
        verdict => {
            let mut response = next.call(req).await?;
            if let Some((_, headers)) = verdict {
                for (name, value) in headers {
                    response.headers_mut().insert(name, value);
                }
            }
            Ok(response.map_into_left_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_full_burst_passes_then_one_request_per_interval() {
        let limiter = Limiter::new("api", Quota::per_minute(100), 1_000);
        let start = Instant::now();
        for n in 0..100 {
            let d = limiter.check(ip("10.0.0.1"), start);
            assert!(d.allowed, "request {n}");
            assert_eq!(d.remaining, 99 - n);
        }
        let denied = limiter.check(ip("10.0.0.1"), start);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_secs, 1); // 0.6 s, rounded up
        assert!(limiter.check(ip("10.0.0.2"), start).allowed);
        assert!(
            limiter
                .check(ip("10.0.0.1"), start + Duration::from_millis(600))
                .allowed
        );
        assert!(
            !limiter
                .check(ip("10.0.0.1"), start + Duration::from_millis(600))
                .allowed
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_ips() {
        let limiter = Limiter::new("api", Quota::per_minute(100), 1_024);
        let now = Instant::now();
        for n in 0..100_000u32 {
            limiter.check(IpAddr::from(n.to_be_bytes()), now);
        }
        assert!(limiter.tracked() <= 1_024 + SHARDS);
        // Once their quotas refilled, old keys make room again.
        let later = now + Duration::from_secs(61);
        assert!(limiter.check(ip("192.0.2.1"), later).allowed);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_walking_from_the_right() {
        let limits = RateLimits {
            api: Limiter::new("api", Quota::per_minute(1), 10),
            signup: Limiter::new("signup", Quota::per_minute(1), 10),
            login: Limiter::new("login", Quota::per_minute(1), 10),
            ws: Limiter::new("ws", Quota::per_minute(1), 10),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        };
        let chain = Some("198.51.100.7, 203.0.113.9, 10.1.2.3");
        assert_eq!(limits.client_ip(ip("10.0.0.5"), chain), ip("203.0.113.9"));
        assert_eq!(limits.client_ip(ip("::1"), chain), ip("203.0.113.9"));
        assert_eq!(limits.client_ip(ip("192.0.2.1"), chain), ip("192.0.2.1"));
        assert_eq!(limits.client_ip(ip("10.0.0.5"), None), ip("10.0.0.5"));
        assert_eq!(
            limits.client_ip(ip("10.0.0.5"), Some("junk, 10.9.9.9")),
            ip("10.9.9.9")
        );
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nope".parse::<Network>().is_err());
    }
}
