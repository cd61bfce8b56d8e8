//! The one builder for outbound HTTP clients (webhook providers, RudderStack data planes,
//! fetch-data steps): rustls with the ring provider (already compiled for NATS, so no C build),
//! the bundled Mozilla roots plus an optional extra CA bundle for private CAs, and the SSRF guard.
//!
//! The guard refuses loopback, private (RFC 1918), link-local (cloud metadata), CGNAT,
//! unique-local IPv6, multicast and unspecified addresses unless `allow_private_networks` is set:
//! - at configuration time, [`check_url`] rejects such literal IPs and `localhost` names;
//! - at call time, [`check_destination`] refuses such literal IPs (in any spelling the URL
//!   standard accepts: `2130706433`, `0x7f.1`, `127.1`, `[::ffff:127.0.0.1]`) before any
//!   connection: literals never reach a resolver, so callers check the URL they send to, and
//!   the redirect policy checks every hop's URL the same way;
//! - at connect time, a DNS resolver ([`reqwest::dns::Resolve`]) drops such addresses from every
//!   answer (a name resolving only to 10.x is refused before any connection), and a connector
//!   layer checks the peer address of every new connection (from hyper's `HttpInfo`), so even a
//!   literal that skipped the call-time check gets no request byte. Both checks are on the
//!   addresses actually connected to, so there is no time-of-check gap.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct OutboundSettings {
    /// Bound on opening one outbound connection (TCP + TLS handshake).
    pub connect_timeout_ms: u64,
    /// PEM file of extra CA certificates trusted on top of the bundled Mozilla roots
    /// (destinations behind a private CA).
    pub extra_ca_file: Option<String>,
    /// Let outbound calls reach loopback, private, link-local, CGNAT and unique-local addresses.
    /// Off in production (SSRF guard); on for local stacks and tests whose fakes are on 127.0.0.1.
    pub allow_private_networks: bool,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            extra_ca_file: None,
            allow_private_networks: false,
        }
    }
}

/// What one service's client is for.
#[derive(Debug, Clone)]
pub struct ClientSpec<'a> {
    pub user_agent: &'a str,
    /// Default bound on one request (a request may set its own).
    pub timeout: Duration,
    /// Follow up to 5 redirects (each hop goes through the same guard); off for webhooks and
    /// data planes, where a redirect is a misconfiguration to surface.
    pub follow_redirects: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("outbound.extra_ca_file {path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A destination the guard refused; found in a `reqwest::Error`'s source chain by [`is_blocked`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

/// Makes ring rustls' process-wide default provider (idempotent), so any other reqwest client
/// of the process (`reqwest::Client::new()`, e.g. in tests and tools) can be built: reqwest is
/// compiled with `rustls-no-provider` and panics without one.
pub fn install_default_crypto_provider() {
    // Err only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds an outbound client: rustls (ring), Mozilla roots + `extra_ca_file`, the SSRF guard.
pub fn client(
    settings: &OutboundSettings,
    spec: &ClientSpec<'_>,
) -> Result<reqwest::Client, OutboundError> {
    install_default_crypto_provider();
    let tls = tls_config(settings)?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(spec.user_agent)
        .timeout(spec.timeout)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .redirect(redirect_policy(
            spec.follow_redirects,
            settings.allow_private_networks,
        ));
    if !settings.allow_private_networks {
        builder = builder
            .dns_resolver(Arc::new(GuardedResolver))
            .connector_layer(PeerGuardLayer);
    }
    Ok(builder.build()?)
}

/// Up to 5 redirects (or none), each hop's URL checked like the first by [`check_destination`].
fn redirect_policy(follow: bool, allow_private_networks: bool) -> reqwest::redirect::Policy {
    if !follow {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        match check_destination(attempt.url(), allow_private_networks) {
            Ok(()) => attempt.follow(),
            Err(blocked) => attempt.error(blocked),
        }
    })
}

fn tls_config(settings: &OutboundSettings) -> Result<rustls::ClientConfig, OutboundError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = settings.extra_ca_file.as_deref().filter(|p| !p.is_empty()) {
        let bad = |reason: String| OutboundError::ExtraCa {
            path: path.to_owned(),
            reason,
        };
        let mut added = 0usize;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Why `ip` must not be reached from outbound calls, or `None` when it is a public address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => "an unspecified (0.0.0.0/8) address",
        (127, _) => "a loopback address",
        (10, _) | (192, 168) => "a private (RFC 1918) address",
        (172, b) if (16..32).contains(&b) => "a private (RFC 1918) address",
        (169, 254) => "a link-local address (cloud metadata lives there)",
        (100, b) if (64..128).contains(&b) => "a carrier-grade NAT (100.64.0.0/10) address",
        (224..=239, _) => "a multicast address",
        (240..=255, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // v4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) reach the embedded v4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let o = ip.octets();
        return forbidden_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    Some(match s[0] {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        x if x & 0xfe00 == 0xfc00 => "a unique-local (fc00::/7) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        // ::a.b.c.d (deprecated v4-compatible) behaves like the v4 address on some stacks.
        0 if s[1..6] == [0, 0, 0, 0, 0] => "an IPv4-compatible address",
        _ => return None,
    })
}

/// Configuration-time check of a URL: http(s), a host, and, unless private networks are
/// allowed, no literal non-public IP and no `localhost` name. Names are checked again at
/// connect time after DNS resolution.
pub fn check_url(url: &url::Url, allow_private_networks: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be http or https, not {:?}", url.scheme()));
    }
    let Some(host) = url.host() else {
        return Err("has no host".into());
    };
    if allow_private_networks {
        return Ok(());
    }
    let refused = |what: &str| {
        Err(format!(
            "points at {what}, which outbound calls may not reach \
             (set outbound.allow_private_networks for local setups)"
        ))
    };
    match host {
        url::Host::Ipv4(ip) => forbidden_v4(ip).map_or(Ok(()), refused),
        url::Host::Ipv6(ip) => forbidden_v6(ip).map_or(Ok(()), refused),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                refused("localhost")
            } else {
                Ok(())
            }
        }
    }
}

/// [`check_url`] on a string.
pub fn check_url_str(raw: &str, allow_private_networks: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("is not a valid URL: {e}"))?;
    check_url(&url, allow_private_networks)?;
    Ok(url)
}

/// Call-time check of the URL a request is about to go to: unless private networks are
/// allowed, a literal non-public IP is refused before any connection (names are left to the
/// resolver, which sees what they resolve to).
pub fn check_destination(url: &url::Url, allow_private_networks: bool) -> Result<(), Blocked> {
    if allow_private_networks {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    match forbidden_reason(ip) {
        Some(r) => Err(Blocked(format!(
            "{ip} is {r}, which outbound calls may not reach"
        ))),
        None => Ok(()),
    }
}

/// True when the request failed because the guard refused the destination (permanent until the
/// configuration changes; callers should not retry).
pub fn is_blocked(err: &reqwest::Error) -> Option<&Blocked> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(b) = e.downcast_ref::<Blocked>() {
            return Some(b);
        }
        source = e.source();
    }
    None
}

/// The innermost cause of a failed request (e.g. `invalid peer certificate: UnknownIssuer`),
/// for error messages and status pages; it never includes the URL (which may carry a token).
pub fn root_cause(err: &reqwest::Error) -> String {
    let mut last: &(dyn std::error::Error + 'static) = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// System DNS (getaddrinfo on the blocking pool, like reqwest's default) minus forbidden
/// addresses.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut reason = None;
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| match forbidden_reason(a.ip()) {
                    None => true,
                    Some(r) => {
                        reason = Some(r);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let err: BoxError = match reason {
                    Some(r) => Box::new(Blocked(format!(
                        "{host} resolves to {r}, which outbound calls may not reach"
                    ))),
                    None => format!("{host}: no address").into(),
                };
                return Err(err);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Checks the peer address of every new connection (covers IP literals and redirects).
#[derive(Clone)]
struct PeerGuardLayer;

impl<S> tower::Layer<S> for PeerGuardLayer {
    type Service = PeerGuard<S>;
    fn layer(&self, inner: S) -> PeerGuard<S> {
        PeerGuard { inner }
    }
}

#[derive(Clone)]
struct PeerGuard<S> {
    inner: S,
}

impl<S, R> tower::Service<R> for PeerGuard<S>
where
    S: tower::Service<R, Error = BoxError>,
    S::Response: Connection + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.inner.call(req);
        Box::pin(async move {
            let conn = connecting.await?;
            let mut extras = http::Extensions::new();
            conn.connected().get_extras(&mut extras);
            let Some(peer) = extras.get::<HttpInfo>().map(HttpInfo::remote_addr) else {
                return Err(Box::new(Blocked("the peer address is unknown".into())) as BoxError);
            };
            if let Some(r) = forbidden_reason(peer.ip()) {
                return Err(Box::new(Blocked(format!(
                    "{} is {r}, which outbound calls may not reach",
                    peer.ip()
                ))));
            }
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_forbidden() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(forbidden_reason(ip(s)).is_some(), "{s} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(forbidden_reason(ip(s)).is_none(), "{s} must be allowed");
        }
    }

    #[test]
    fn urls_are_checked_at_configuration_time() {
        for bad in [
            "http://127.0.0.1:8080/hook",
            "https://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9000/",
            "http://[fd00::1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://LOCALHOST./",
            "ftp://example.com/",
            "http://0.0.0.0/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[0:0:0:0:0:0:0:1]/",
        ] {
            assert!(check_url_str(bad, false).is_err(), "{bad}");
        }
        assert!(check_url_str("ftp://example.com/", true).is_err());
        for good in [
            "https://hooks.example.com/x",
            "https://acme.dataplane.rudderstack.com",
            "http://8.8.8.8/",
        ] {
            assert!(check_url_str(good, false).is_ok(), "{good}");
        }
        assert!(check_url_str("http://127.0.0.1:8080/hook", true).is_ok());
        let msg = check_url_str("http://10.0.0.1/", false).unwrap_err();
        assert!(msg.contains("private"), "{msg}");
    }

    fn guarded() -> reqwest::Client {
        let spec = ClientSpec {
            user_agent: "test",
            timeout: Duration::from_secs(5),
            follow_redirects: true,
        };
        client(&OutboundSettings::default(), &spec).unwrap()
    }

    /// A local HTTP server that answers 200 and counts the requests it got.
    async fn local_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        (addr, hits)
    }

    #[tokio::test]
    async fn the_guard_refuses_literals_and_names_at_connect_time() {
        let (addr, hits) = local_server().await;
        let port = addr.port();
        // A literal never reaches the resolver: the peer check refuses it.
        let err = guarded()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        let blocked = is_blocked(&err).expect("refused by the guard");
        assert!(blocked.0.contains("loopback"), "{blocked}");
        // A name that resolves only to loopback is refused after DNS, before connecting.
        let err = guarded()
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let blocked = is_blocked(&err).expect("refused by the resolver");
        assert!(blocked.0.contains("localhost resolves to"), "{blocked}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

        // With the setting on, the same calls go through.
        let open = client(
            &OutboundSettings {
                allow_private_networks: true,
                ..Default::default()
            },
            &ClientSpec {
                user_agent: "test",
                timeout: Duration::from_secs(5),
                follow_redirects: false,
            },
        )
        .unwrap();
        let r = open
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Every spelling of a private literal is refused by the call-time check, before any
    /// connection; a client used without it still sends no request byte (the peer check).
    #[tokio::test]
    async fn private_literals_are_refused_without_a_request() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        counter.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        for host in [
            "127.0.0.1",
            "0.0.0.0",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "127.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[::127.0.0.1]",
            "[64:ff9b::a00:1]",
        ] {
            for scheme in ["http", "https"] {
                let url = url::Url::parse(&format!("{scheme}://{host}:{port}/")).unwrap();
                let blocked = check_destination(&url, false).expect_err(url.as_str());
                assert!(blocked.0.contains("may not reach"), "{blocked}");
                assert!(check_destination(&url, true).is_ok());
            }
        }
        for good in [
            "https://8.8.8.8/",
            "https://[2606:4700::1111]/",
            "https://x.example/",
        ] {
            assert!(check_destination(&url::Url::parse(good).unwrap(), false).is_ok());
        }
        // Without the call-time check: the spellings that reach the listener connect, and the
        // peer check refuses them before the request is written.
        for host in ["127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "127.1"] {
            let url = format!("http://{host}:{port}/");
            let err = guarded().get(&url).send().await.unwrap_err();
            let blocked = is_blocked(&err).unwrap_or_else(|| panic!("{url}: {err:?}"));
            assert!(
                blocked.0.contains("127.0.0.1 is a loopback address"),
                "{blocked}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            received.load(Ordering::SeqCst),
            0,
            "no request byte was sent"
        );
        acceptor.abort();
    }

    #[test]
    fn a_bad_extra_ca_file_is_a_clear_startup_error() {
        let dir = std::env::temp_dir().join(format!("rc-outbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        for path in [
            empty.display().to_string(),
            dir.join("missing.pem").display().to_string(),
        ] {
            let settings = OutboundSettings {
                extra_ca_file: Some(path.clone()),
                ..Default::default()
            };
            let spec = ClientSpec {
                user_agent: "test",
                timeout: Duration::from_secs(1),
                follow_redirects: false,
            };
            let err = client(&settings, &spec).unwrap_err().to_string();
            assert!(
                err.contains("extra_ca_file") && err.contains(&path),
                "{err}"
            );
        }
    }
}
