//! Outbound HTTP safety: the client for credentialed APIs (provider, CMS, Slack) never follows a
//! redirect to another origin and sends no `Referer`; the client for URLs that come from data (CSV
//! reference images) or from a provider (download URLs) reaches only public addresses, checked at
//! connect time (so DNS rebinding does not help) and on every redirect hop; bodies are read with a
//! running byte limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::Policy;

/// Operators' exceptions to the internal-address rule: host names and CIDRs, comma-separated.
pub const ALLOW_HOSTS_VARIABLE: &str = "IMAGEPIPE_ALLOW_HOSTS";

/// Redirect hops followed for a data URL (browsers allow ~20; an image needs one or two).
const MAX_REDIRECTS: usize = 5;

/// A data URL pointed at an address imagepipe does not fetch from. Reads the same whatever listens there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reference not allowed: internal address")]
pub struct Refused;

/// Host names and networks allowed even though they are internal (`IMAGEPIPE_ALLOW_HOSTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    hosts: Vec<String>,
    networks: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Parses `name,10.0.0.0/8,::1,…`; an entry that looks like an address but is not one is an error.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut allow = Self::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (address, bits) = entry.split_once('/').unwrap_or((entry, ""));
            match address.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = if bits.is_empty() { Ok(max) } else { bits.parse::<u8>() };
                    match bits {
                        Ok(bits) if bits <= max => allow.networks.push((ip, bits)),
                        _ => return Err(format!("{ALLOW_HOSTS_VARIABLE}: {entry:?} is not a CIDR")),
                    }
                }
                Err(_) if bits.is_empty() => allow.hosts.push(entry.to_ascii_lowercase()),
                Err(_) => return Err(format!("{ALLOW_HOSTS_VARIABLE}: {entry:?} is not a CIDR")),
            }
        }
        Ok(allow)
    }

    /// From `IMAGEPIPE_ALLOW_HOSTS`; a malformed value allows nothing (and is logged).
    pub fn from_env() -> Self {
        let spec = std::env::var(ALLOW_HOSTS_VARIABLE).unwrap_or_default();
        Self::parse(&spec).unwrap_or_else(|e| {
            tracing::error!(error = %e, "no internal host allowed");
            Self::default()
        })
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|&(net, bits)| in_network(ip, net, bits))
    }

    /// Whether a connection to `ip` (reached through `host`) may be made.
    fn permits(&self, host: &str, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allows_host(host) || self.allows_ip(ip)
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => prefix_eq(u128::from(ip.to_bits()), u128::from(net.to_bits()), bits, 32),
        (IpAddr::V6(ip), IpAddr::V6(net)) => prefix_eq(ip.to_bits(), net.to_bits(), bits, 128),
        _ => false,
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, width: u32) -> bool {
    let shift = width - u32::from(bits);
    shift >= width || (a >> shift) == (b >> shift)
}

/// Loopback, link-local (the instance metadata service), private, unique-local, CGNAT, unspecified,
/// multicast, broadcast, documentation and reserved addresses — and IPv4 embedded in IPv6 forms of them.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and IPv4-compatible (::/96) addresses carry an IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (segments[..6] == [0; 6] && !ip.is_loopback()) {
        let [.., hi, lo] = segments;
        return ip.is_unspecified() || is_internal_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
        || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
}

/// Checks a URL before any connection: http(s) only, and a literal IP host (which no resolver sees)
/// must be public or allowed. Host names are checked when they are resolved.
pub fn check_url(url: &reqwest::Url, allow: &AllowList) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused);
    }
    let host = url.host_str().ok_or(Refused)?;
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) if !allow.permits(host, ip) => Err(Refused),
        _ => Ok(()),
    }
}

/// Resolves with the system resolver and drops every address a data URL may not reach.
#[derive(Debug)]
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> = found.filter(|a| allow.permits(&host, a.ip())).collect();
            if permitted.is_empty() {
                return Err(Box::new(Refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client for URLs that come from data or from a provider: public addresses only (plus the
/// allow list), at most [`MAX_REDIRECTS`] hops each checked, no proxy (it would resolve for us),
/// no `Referer`.
#[derive(Debug, Clone)]
pub struct FetchClient {
    client: reqwest::Client,
    allow: Arc<AllowList>,
}

impl FetchClient {
    pub fn new(allow: AllowList) -> Self {
        let allow = Arc::new(allow);
        let hops = Arc::clone(&allow);
        let policy = Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Refused);
            }
            match check_url(attempt.url(), &hops) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(GuardedResolver {
                allow: Arc::clone(&allow),
            }))
            .redirect(policy)
            .referer(false)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self { client, allow }
    }

    /// With the operators' allow list from the environment.
    pub fn from_env() -> Self {
        Self::new(AllowList::from_env())
    }

    /// GET `url`: refused before any connection when it is not allowed.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<reqwest::Response, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::Refused)?;
        check_url(&parsed, &self.allow)?;
        self.client
            .get(parsed)
            .timeout(timeout)
            .send()
            .await
            .map_err(FetchError::from)
    }
}

/// Why a fetch or a body read failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Permanent: the URL points at an internal address (or redirects there).
    #[error("reference not allowed: internal address")]
    Refused,
    /// Permanent: the body (or its announced `Content-Length`) is over the limit.
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Retryable: connect, timeout or reset (the message leaves the URL out: it may carry a token).
    #[error("{message}")]
    Transport { message: String, timed_out: bool },
}

impl From<Refused> for FetchError {
    fn from(_: Refused) -> Self {
        Self::Refused
    }
}

impl From<reqwest::Error> for FetchError {
    fn from(error: reqwest::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if e.is::<Refused>() {
                return Self::Refused;
            }
            source = e.source();
        }
        Self::Transport {
            timed_out: error.is_timeout(),
            message: error.without_url().to_string(),
        }
    }
}

/// Reads a body into memory, refusing it as soon as it passes `limit` bytes (or announces more).
pub async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Bytes, FetchError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FetchError::TooLarge { limit });
    }
    let expected = response.content_length().map_or(64 * 1024, |n| n as usize);
    let mut body = BytesMut::with_capacity(expected.min(limit));
    while let Some(chunk) = response.chunk().await.map_err(FetchError::from)? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The first `limit` bytes of a body as text (an error page, for a message); the rest is not read.
pub async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The client for credentialed APIs: a redirect is followed only within the same origin (scheme,
/// host, port), so a key in any header never reaches another server; no `Referer`.
pub fn credential_client(timeout: Duration) -> reqwest::Client {
    let policy = Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .redirect(policy)
        .referer(false)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
