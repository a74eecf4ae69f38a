//! Outbound HTTP: the real [`Outbound`] port, used for `callback` error
//! handlers and webhook deliveries, guarded by the `outboundAllowList`.
//!
//! Two pieces:
//! - [`AllowList`] decides whether an address may be contacted, by host name
//!   and by IP address. Link-local/metadata addresses are always refused.
//! - [`HttpOutbound`] POSTs JSON with `reqwest`. The allow-list is enforced on
//!   the addresses actually connected to, not on the URL text: the client's DNS
//!   resolver is a checking resolver, so the lookup that is checked is the
//!   lookup that is connected to (a name pointing at 169.254.169.254 is
//!   refused, and DNS cannot answer differently between check and connect).
//!   IP-literal URLs never reach a resolver and are checked before sending.
//!   Redirects are not followed and proxies are not used, since either would
//!   let a request reach an address that was never checked.
//!
//! Other HTTP clients that must obey the same rules (the push invoker of
//! [`crate::push`]) are built with [`checked_client_builder`] and vet their
//! URLs with [`check_url`].

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::ports::{Outbound, OutboundError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

/// At most this much of a response body is read (the rest is dropped with the
/// connection): an answer to a callback is not interesting, and a hostile
/// receiver must not make us buffer without bound.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// At most this much of a non-2xx body goes into the error message.
const MAX_ERROR_SNIPPET: usize = 256;
const USER_AGENT: &str = concat!("maestro/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------------------
// Allow-list
// ---------------------------------------------------------------------------

/// Which hosts and addresses outbound requests may target (`outboundAllowList`).
///
/// Every address a request would connect to is checked with [`AllowList::allows`].
/// Link-local and cloud-metadata addresses (169.254.0.0/16, fe80::/10),
/// 192.0.0.0/24 and non-unicast addresses are refused in every mode, even when
/// listed; so is an IPv6 address that embeds such an IPv4 address
/// (IPv4-compatible, 6to4, NAT64), which is otherwise judged as the worse of
/// itself and the IPv4 address it embeds.
#[derive(Debug, Clone)]
pub struct AllowList {
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    /// No list configured: public addresses always, loopback and private
    /// ranges only when `local` (the server listens on loopback).
    Default { local: bool },
    /// Only what is listed.
    Explicit {
        hosts: Vec<HostPattern>,
        nets: Vec<Cidr>,
    },
}

/// What an address is, for the default policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrClass {
    /// Link-local/metadata, 192.0.0.0/24, or not unicast: never contacted.
    Forbidden,
    /// Loopback, private, "this host" and shared (CGNAT) ranges.
    Local,
    Public,
}

impl AllowList {
    /// The policy when no `outboundAllowList` is configured.
    ///
    /// Listening on loopback means a developer's machine or a sidecar: agents
    /// and receivers on loopback and private ranges are allowed. Listening
    /// elsewhere, those ranges are refused (an API caller must not be able to
    /// reach the server's own network through callbacks). Public hosts are
    /// allowed in both cases.
    pub fn default_for_listen(listen_is_loopback: bool) -> Self {
        AllowList {
            mode: Mode::Default {
                local: listen_is_loopback,
            },
        }
    }

    /// An explicit list: host names (exact, case-insensitive, or `*.example.com`
    /// for any subdomain of example.com, not example.com itself), IP addresses
    /// and CIDRs (v4 and v6). Only what is listed is allowed; an empty list
    /// allows nothing. Malformed entries are an error naming the entry.
    ///
    /// A host name entry allows whatever that name resolves to (except
    /// link-local/metadata addresses); an address or CIDR entry allows the
    /// address whichever name led to it.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut hosts = Vec::new();
        let mut nets = Vec::new();
        for raw in entries {
            let entry = raw.trim();
            if entry.is_empty() {
                return Err("outboundAllowList: empty entry".to_owned());
            }
            if let Some(net) = Cidr::parse(entry) {
                nets.push(net.map_err(|why| format!("outboundAllowList: {entry:?}: {why}"))?);
            } else {
                hosts.push(
                    HostPattern::parse(entry)
                        .map_err(|why| format!("outboundAllowList: {entry:?}: {why}"))?,
                );
            }
        }
        Ok(AllowList {
            mode: Mode::Explicit { hosts, nets },
        })
    }

    /// Whether a connection to `ip` may be made. `host` is the URL's host name
    /// that resolved to `ip`, or `None` when the URL held the address itself.
    pub fn allows(&self, host: Option<&str>, ip: IpAddr) -> bool {
        let class = classify(ip);
        if class == AddrClass::Forbidden {
            return false;
        }
        match &self.mode {
            Mode::Default { local } => class == AddrClass::Public || *local,
            Mode::Explicit { hosts, nets } => {
                let host = host.map(normalize_host);
                let canonical = canonical(ip);
                host.is_some_and(|h| hosts.iter().any(|p| p.matches(&h)))
                    || nets.iter().any(|n| n.contains(ip) || n.contains(canonical))
            }
        }
    }

    /// Every address must be allowed (one refused address refuses the host: a
    /// connection may go to any of them). The error says which and why.
    fn check(&self, host: Option<&str>, addrs: &[IpAddr]) -> Result<(), String> {
        for &ip in addrs {
            if !self.allows(host, ip) {
                let what = match host {
                    Some(h) => format!("{h} ({ip})"),
                    None => ip.to_string(),
                };
                let why = match (classify(ip), &self.mode) {
                    (AddrClass::Forbidden, _) => {
                        "link-local, metadata, 192.0.0.0/24 and non-unicast addresses (also embedded in IPv6) are always refused"
                    }
                    (_, Mode::Default { .. }) => {
                        "loopback and private addresses are refused unless the server listens on loopback"
                    }
                    (_, Mode::Explicit { .. }) => "not in outboundAllowList",
                };
                return Err(format!("{what}: {why}"));
            }
        }
        Ok(())
    }
}

/// IPv4 carried in IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`)
/// is judged as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            } else {
                ip.to_canonical()
            }
        }
        IpAddr::V4(_) => ip,
    }
}

/// Cloud metadata endpoints outside 169.254.0.0/16 (AWS IMDS over IPv6,
/// Alibaba Cloud): refused like link-local.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

fn classify(ip: IpAddr) -> AddrClass {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        // An IPv6 address that carries an IPv4 address is at least as bad as
        // that address: `[2002:a9fe:a9fe::1]` must not reach 169.254.169.254
        // through a 6to4 relay, nor `[64:ff9b::7f00:1]` loopback through NAT64.
        IpAddr::V6(v6) => embedded_v4(v6)
            .into_iter()
            .flatten()
            .map(classify_v4)
            .fold(classify_v6(v6), worse),
    }
}

fn classify_v4(v4: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = v4.octets();
    // 0.0.0.0/8 "this network": connecting to 0.0.0.0 reaches the local host.
    let this_network = a == 0;
    // 100.64.0.0/10, shared address space (carrier-grade NAT).
    let shared = a == 100 && (b & 0xc0) == 64;
    // 192.0.0.0/24, IETF protocol assignments: no webhook receiver lives
    // there, and 192.0.0.192 is Oracle Cloud's metadata service.
    let protocol_assignments = a == 192 && b == 0 && c == 0;
    if v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4 == METADATA_V4
        || protocol_assignments
    {
        AddrClass::Forbidden
    } else if v4.is_loopback() || v4.is_private() || this_network || shared {
        AddrClass::Local
    } else {
        AddrClass::Public
    }
}

fn classify_v6(v6: Ipv6Addr) -> AddrClass {
    let s = v6.segments();
    let first = s[0];
    // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): a translator of the local
    // network, like a unique local address.
    let local_nat64 = s[..3] == [0x64, 0xff9b, 1];
    if (first & 0xffc0) == 0xfe80 || v6.is_multicast() || v6 == METADATA_V6 {
        AddrClass::Forbidden
    } else if v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || local_nat64 {
        AddrClass::Local
    } else {
        AddrClass::Public
    }
}

/// The more refused of two classes.
fn worse(a: AddrClass, b: AddrClass) -> AddrClass {
    let rank = |c| match c {
        AddrClass::Public => 0,
        AddrClass::Local => 1,
        AddrClass::Forbidden => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The IPv4 addresses an IPv6 address may lead to (IPv4-mapped addresses are
/// turned into IPv4 before): IPv4-compatible `::a.b.c.d` (and SIIT's
/// `::ffff:0:a.b.c.d`), 6to4 `2002:AABB:CCDD::/48`, and NAT64: the well-known
/// `64:ff9b::/96`, and the local-use `64:ff9b:1::/48`, inside which a network
/// may place its translator's prefix at any RFC 6052 length (48, 56, 64 or
/// 96 bits), so every position is judged (the range is local anyway: the
/// positions only decide whether it is refused always).
fn embedded_v4(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 4] {
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Some(Ipv4Addr::new(a, b, c, d));
    let last = v4(o[12], o[13], o[14], o[15]);
    let compatible = s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified();
    let siit = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || siit || nat64 {
        [last, None, None, None]
    } else if s[0] == 0x2002 {
        [v4(o[2], o[3], o[4], o[5]), None, None, None]
    } else if s[..3] == [0x64, 0xff9b, 1] {
        [
            v4(o[6], o[7], o[9], o[10]),
            v4(o[7], o[9], o[10], o[11]),
            v4(o[9], o[10], o[11], o[12]),
            last,
        ]
    } else {
        [None; 4]
    }
}

/// A host name as compared: lower case, without the root's trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Subdomains(String),
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        let (wild, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let name = normalize_host(name);
        if name.is_empty() || name.len() > 253 {
            return Err("not a host name".to_owned());
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            if !ok {
                return Err(
                    "expected a host name (`api.example.com`, `*.example.com`), an IP address or a CIDR \
                     (no scheme, port or path; internationalized names in punycode)"
                        .to_owned(),
                );
            }
        }
        Ok(if wild {
            HostPattern::Subdomains(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// `host` is already normalized.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// An address block; a single address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `None` when the entry does not look like an address at all (then it is
    /// a host name); `Some(Err)` when it looks like one but is malformed.
    fn parse(entry: &str) -> Option<Result<Cidr, String>> {
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry, None),
        };
        let looks_like_ip =
            addr.contains(':') || addr.bytes().all(|c| c.is_ascii_digit() || c == b'.');
        if !looks_like_ip && prefix.is_none() {
            return None;
        }
        let Ok(net) = addr.parse::<IpAddr>() else {
            return Some(Err(
                "not a valid IP address or CIDR (no brackets or ports)".to_owned()
            ));
        };
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Some(Err(format!("prefix length must be 0..={max}"))),
            },
        };
        let cidr = Cidr { net, prefix };
        if cidr.mask(net) != net {
            // 10.1.2.3/8 is likely a typo for something narrower: say so rather
            // than silently allowing all of 10/8.
            return Some(Err(format!(
                "host bits set; the network is {}/{prefix}",
                cidr.mask(net)
            )));
        }
        Some(Ok(cidr))
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
            }
            IpAddr::V6(v6) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.net.is_ipv4() == ip.is_ipv4() && self.mask(ip) == self.net
    }
}

// ---------------------------------------------------------------------------
// Checking resolver
// ---------------------------------------------------------------------------

/// The resolver refused a name; found again in the request error's source
/// chain to answer [`OutboundError::Refused`].
#[derive(Debug)]
struct RefusedByAllowList(String);

impl fmt::Display for RefusedByAllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for RefusedByAllowList {}

/// How names are looked up. Tests substitute fixed answers to point a name at
/// an address (e.g. a metadata address) without real DNS.
#[derive(Clone)]
enum Lookup {
    System,
    #[cfg(test)]
    Fixed(Arc<std::collections::HashMap<String, Vec<IpAddr>>>),
}

impl Lookup {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match self {
            Lookup::System => {
                let mut ips: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
                    .await?
                    .map(|a| a.ip())
                    .collect();
                ips.dedup();
                Ok(ips)
            }
            #[cfg(test)]
            Lookup::Fixed(map) => Ok(map.get(host).cloned().unwrap_or_default()),
        }
    }
}

/// `reqwest`'s resolver: looks the name up, checks every address against the
/// allow-list, and hands exactly those addresses to the connector.
struct CheckedResolver {
    allow: Arc<AllowList>,
    lookup: Lookup,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let lookup = self.lookup.clone();
        let host = normalize_host(name.as_str());
        Box::pin(async move {
            let ips = lookup.lookup(&host).await?;
            if ips.is_empty() {
                return Err(format!("{host}: no addresses").into());
            }
            allow.check(Some(&host), &ips).map_err(RefusedByAllowList)?;
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

// ---------------------------------------------------------------------------
// Checked clients and URLs
// ---------------------------------------------------------------------------

/// A `reqwest` client builder that obeys the allow-list: every host name is
/// resolved by a checking resolver (the addresses connected to are the ones
/// checked), redirects are not followed, no proxy is used, and a request is
/// sent at most once (no transparent retries). `User-Agent: maestro/<version>`.
///
/// Callers may tune pooling and socket options on the result, but must not
/// set a resolver, proxy or redirect policy of their own. IP-literal URLs do
/// not go through a resolver: vet every URL with [`check_url`] before sending.
pub fn checked_client_builder(allow: Arc<AllowList>) -> reqwest::ClientBuilder {
    client_builder_with_lookup(allow, Lookup::System)
}

fn client_builder_with_lookup(allow: Arc<AllowList>, lookup: Lookup) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(CheckedResolver { allow, lookup })
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve and connect on our behalf, unchecked.
        .no_proxy()
        // "One attempt" means one: no transparent protocol-level retries.
        .retry(reqwest::retry::never())
        .user_agent(USER_AGENT)
}

/// Build a client from [`checked_client_builder`] (or a builder derived from it).
///
/// Panics only if the TLS backend cannot initialize, which is a broken build
/// rather than a runtime condition.
pub(crate) fn build_client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .build()
        .expect("HTTP client with the built-in TLS backend")
}

/// Parse and vet an outbound URL: `http` or `https` only, no credentials in
/// it, a host; an IP-literal host must be allowed by `allow` (host names are
/// checked later, by the resolver of [`checked_client_builder`], on the
/// addresses they resolve to).
///
/// [`OutboundError::InvalidUrl`] for a malformed URL,
/// [`OutboundError::Refused`] for an address the allow-list refuses.
pub fn check_url(allow: &AllowList, url: &str) -> Result<reqwest::Url, OutboundError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| OutboundError::InvalidUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(OutboundError::InvalidUrl(format!(
            "scheme {:?} is not allowed (http or https only)",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OutboundError::InvalidUrl(
            "credentials in the URL are not allowed".to_owned(),
        ));
    }
    let Some(host) = parsed.host_str() else {
        return Err(OutboundError::InvalidUrl("no host".to_owned()));
    };
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Ok(ip) = literal.unwrap_or(host).parse::<IpAddr>() {
        allow.check(None, &[ip]).map_err(OutboundError::Refused)?;
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------
// URLs given to the API
// ---------------------------------------------------------------------------

/// Vet a URL that Maestro will call, when the API is given it (an agent's
/// `endpoint`, a `callback` handler's action, a subscription's `url`): what
/// would be refused at call time is refused now, with the same rules.
///
/// - No credentials: no userinfo (`user:password@`), and no query parameter
///   whose name says it carries one ([`credential_param`]). Readers see these
///   URLs and they reach logs (without their query, see
///   [`maestro_core::url::shown`]); secrets belong in `inboundSecret` or the
///   webhook signature.
/// - [`check_url`]: `http(s)` with a host, and an IP-literal host allowed by
///   `allow`. A host name is not resolved here: what it resolves to is checked
///   at each call, when it is connected to.
///
/// [`OutboundError::InvalidUrl`] for a malformed URL or one with credentials,
/// [`OutboundError::Refused`] for a literal address the allow-list refuses.
/// No message holds the URL.
pub fn check_new_url(allow: &AllowList, url: &str) -> Result<(), OutboundError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| OutboundError::InvalidUrl(e.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OutboundError::InvalidUrl(
            "credentials (user:password@) are not allowed in the URL".to_owned(),
        ));
    }
    if let Some((name, _)) = parsed.query_pairs().find(|(k, _)| credential_param(k)) {
        return Err(OutboundError::InvalidUrl(format!(
            "query parameter {name:?} looks like a credential; credentials are not allowed in the URL"
        )));
    }
    check_url(allow, url).map(|_| ())
}

/// [`check_new_url`] as an API answer: a malformed URL or one with
/// credentials is 400 `VALIDATION_FAILED`, a refused destination 400
/// `OUTBOUND_REFUSED`; both name `field`, and `step` for a callback.
pub(crate) fn refuse_at_creation(
    allow: &AllowList,
    url: &str,
    field: &str,
    step: Option<&str>,
) -> Result<(), crate::error::ApiError> {
    match check_new_url(allow, url) {
        Ok(()) => Ok(()),
        Err(OutboundError::Refused(why)) => Err(crate::error::ApiError::OutboundRefused {
            message: format!("{field}: destination refused by the outbound rules: {why}"),
            field: field.to_owned(),
            step_id: step.map(str::to_owned),
        }),
        Err(OutboundError::InvalidUrl(why) | OutboundError::Failed(why)) => {
            let e = maestro_core::Error::validation(format!("{field}: {why}")).field(field);
            Err(match step {
                Some(id) => e.step(id),
                None => e,
            }
            .into())
        }
    }
}

/// Whether a query parameter's name says it carries a credential. The name is
/// split into words (at anything but letters and digits, and where a lower
/// case letter meets an upper case one: `api_key`, `apiKey`, `X-Amz-Signature`)
/// and refused when a word is one of [`CREDENTIAL_WORDS`] or ends in one of
/// [`CREDENTIAL_SUFFIXES`] (`accesstoken`, `clientsecret`).
pub fn credential_param(name: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            words.push(std::mem::take(&mut word));
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            words.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    words.push(word);
    words.iter().any(|w| {
        CREDENTIAL_WORDS.contains(&w.as_str()) || CREDENTIAL_SUFFIXES.iter().any(|s| w.ends_with(s))
    })
}

/// Words of a query parameter name that refuse the URL (docs/SECURITY.md).
pub const CREDENTIAL_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "pass",
    "pwd",
    "key",
    "apikey",
    "sig",
    "signature",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "cred",
    "creds",
    "session",
    "sid",
    "jwt",
    "bearer",
    "code",
    "otp",
    "hmac",
];

/// Endings of such a word that refuse the URL too.
pub const CREDENTIAL_SUFFIXES: &[&str] = &["token", "secret", "password", "key", "signature"];

// ---------------------------------------------------------------------------
// HttpOutbound
// ---------------------------------------------------------------------------

/// [`Outbound`] over HTTP(S) with `reqwest`, enforcing an [`AllowList`].
///
/// One attempt per call (retries are the caller's policy); `Content-Type:
/// application/json`, `User-Agent: maestro/<version>`; redirects are not
/// followed (a 3xx is a failure); at most 64 KiB of the answer is read.
#[derive(Clone)]
pub struct HttpOutbound {
    allow: Arc<AllowList>,
    client: reqwest::Client,
}

impl fmt::Debug for HttpOutbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOutbound")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl HttpOutbound {
    /// A client resolving names with the system resolver, checked against `allow`.
    pub fn new(allow: AllowList) -> Self {
        Self::with_lookup(allow, Lookup::System)
    }

    fn with_lookup(allow: AllowList, lookup: Lookup) -> Self {
        let allow = Arc::new(allow);
        let client = build_client(client_builder_with_lookup(allow.clone(), lookup));
        HttpOutbound { allow, client }
    }

    fn target(&self, url: &str) -> Result<reqwest::Url, OutboundError> {
        check_url(&self.allow, url)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<u16, OutboundError> {
        let mut resp = req.send().await.map_err(send_error)?;
        let status = resp.status();
        // Read (a bounded part of) the answer so the connection can be reused
        // and a failure can say what the receiver said.
        let mut head = Vec::new();
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = MAX_ERROR_SNIPPET.saturating_sub(head.len());
                    head.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let text = String::from_utf8_lossy(&head);
        let text = text.trim();
        Err(OutboundError::Failed(if text.is_empty() {
            format!("answered HTTP {status}")
        } else {
            format!("answered HTTP {status}: {text}")
        }))
    }
}

/// Map an error of a client from [`checked_client_builder`]: a refusal by the
/// checking resolver is `Refused`; a request that could not be built is
/// `InvalidUrl`; the rest (connect, reset, body) is `Failed` with the cause
/// chain (without the URL, which may carry a token).
pub(crate) fn send_error(e: reqwest::Error) -> OutboundError {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<RefusedByAllowList>() {
            return OutboundError::Refused(r.0.clone());
        }
        cause = c.source();
    }
    if e.is_builder() {
        return OutboundError::InvalidUrl(e.without_url().to_string());
    }
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    OutboundError::Failed(msg)
}

#[async_trait]
impl Outbound for HttpOutbound {
    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        headers: &[(String, String)],
        timeout_ms: u64,
    ) -> Result<u16, OutboundError> {
        let target = self.target(url)?;
        let mut req = self.client.post(target).json(body);
        for (name, value) in headers {
            // A header that cannot be sent will never be sendable: not worth a
            // retry, so it is reported with the other malformed-request error.
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| OutboundError::InvalidUrl(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                OutboundError::InvalidUrl(format!("invalid value for header {name}"))
            })?;
            req = req.header(name, value);
        }
        // One deadline over everything: lookup, connect, answer and body.
        let limit = Duration::from_millis(timeout_ms);
        match tokio::time::timeout(limit, self.send(req)).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Failed(format!(
                "no answer within {timeout_ms} ms"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
