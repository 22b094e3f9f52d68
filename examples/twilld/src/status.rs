//! `/healthz`, `/readyz` and Prometheus `/metrics` on a tiny HTTP/1.1 server
//! (three fixed GET endpoints do not justify an HTTP framework).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use twill_agent::{HealthReport, Reachability, StatusSnapshot};

/// Where the server reads the daemon's state: the agent's status
/// ([`twill_agent::AgentStatus::snapshot`]), read per request without
/// waiting on the agent.
pub type StatusSource = Arc<dyn Fn() -> StatusSnapshot + Send + Sync>;

/// Prometheus text for a snapshot.
fn metrics(st: &StatusSnapshot) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "twill_lease_held",
        "gauge",
        "1 if this host holds a subnet lease.",
        u8::from(st.lease_held).to_string(),
    );
    metric(
        "twill_etcd_reachable",
        "gauge",
        "1 if etcd answered the last request that tells.",
        u8::from(st.registry_reachable).to_string(),
    );
    metric(
        "twill_ready",
        "gauge",
        "1 if the lease is held and the dataplane programmed.",
        u8::from(st.is_ready()).to_string(),
    );
    metric(
        "twill_peers",
        "gauge",
        "Peer leases in the desired set.",
        st.peers.to_string(),
    );
    metric(
        "twill_lease_events_total",
        "counter",
        "Lease changes seen from the registry.",
        st.lease_events.to_string(),
    );
    metric(
        "twill_lease_renewals_total",
        "counter",
        "Subnet lease renewals.",
        st.renewals.to_string(),
    );
    metric(
        "twill_reconciles_total",
        "counter",
        "Reconcile passes.",
        st.reconciles.to_string(),
    );
    metric(
        "twill_reconciles_incremental_total",
        "counter",
        "Reconcile passes that applied lease events alone, without a full pass.",
        st.incremental_reconciles.to_string(),
    );
    metric(
        "twill_reconcile_failures_total",
        "counter",
        "Reconcile passes that failed.",
        st.reconcile_failures.to_string(),
    );
    let secs = |d: std::time::Duration| format!("{:.6}", d.as_secs_f64());
    metric(
        "twill_reconcile_duration_seconds_sum",
        "counter",
        "Total time spent reconciling.",
        secs(st.reconcile_time),
    );
    metric(
        "twill_reconcile_last_duration_seconds",
        "gauge",
        "Duration of the last reconcile.",
        secs(st.last_reconcile_time),
    );
    metric(
        "twill_leases_skipped",
        "gauge",
        "Stored leases not programmed (malformed, refused by the lease manager or the backend).",
        st.leases_skipped.to_string(),
    );
    metric(
        "twill_lease_overwrites_total",
        "counter",
        "Times our lease was overwritten in place by another writer (and restored).",
        st.lease_overwrites.to_string(),
    );
    metric(
        "twill_ops_applied_total",
        "counter",
        "Kernel operations applied by reconciles.",
        st.ops_applied.to_string(),
    );
    metric(
        "twill_etcd_errors_total",
        "counter",
        "Errors talking to the registry.",
        st.registry_errors.to_string(),
    );
    if let Some(health) = &st.health {
        peer_metrics(&mut s, health);
    }
    s
}

/// The per-peer gauges of the health probes: a peer not probed yet has no
/// `twill_peer_reachable` sample (neither 1 nor 0 would be true), one never
/// answered no `twill_peer_rtt_seconds`.
fn peer_metrics(s: &mut String, health: &HealthReport) {
    let _ = writeln!(
        s,
        "# HELP twill_peer_reachable 1 if the peer answers the health probes through the overlay (host-gw: on the underlay), 0 if it stopped.\n# TYPE twill_peer_reachable gauge"
    );
    for p in &health.peers {
        let value = match p.reachability {
            Reachability::Reachable => 1,
            Reachability::Unreachable(_) => 0,
            _ => continue,
        };
        let _ = writeln!(
            s,
            "twill_peer_reachable{{peer=\"{}\",subnet=\"{}\"}} {value}",
            p.public_ip, p.key
        );
    }
    let _ = writeln!(
        s,
        "# HELP twill_peer_rtt_seconds Round trip of the peer's last answered health probe.\n# TYPE twill_peer_rtt_seconds gauge"
    );
    for p in &health.peers {
        if let Some(rtt) = p.rtt {
            let _ = writeln!(
                s,
                "twill_peer_rtt_seconds{{peer=\"{}\",subnet=\"{}\"}} {:.6}",
                p.public_ip,
                p.key,
                rtt.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        s,
        "# HELP twill_peer_probes_total Health probes sent.\n# TYPE twill_peer_probes_total counter\ntwill_peer_probes_total {}",
        health.probes_sent
    );
}

/// The body of `/readyz`: the verdict, then the peers' health when probed
/// (a peer down does not make this host unready: its own dataplane is
/// programmed, and the answer would flap with every other host).
fn readyz_body(st: &StatusSnapshot) -> String {
    let mut body = String::from(if st.is_ready() {
        "ready\n"
    } else {
        "not ready\n"
    });
    if let Some(health) = &st.health {
        body.push_str(&health.summary(READYZ_UNREACHABLE_LISTED));
    }
    body
}

/// Unreachable peers named in `/readyz`; the count says how many more.
const READYZ_UNREACHABLE_LISTED: usize = 20;

/// Longest request head (request line and headers) read: probes and
/// Prometheus send a few hundred bytes; past this the answer is 431.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head (a slow or silent
/// client holds one small task at most this long).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to write the answer and let the client close.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the client to close after our answer (see [`finish`]).
const LINGER: Duration = Duration::from_secs(1);
/// Most unread request bytes drained after the answer.
const LINGER_BYTES: usize = 64 * 1024;
/// Wait after the first failed accept of a burst; doubles up to
/// [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between accepts while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// While accepts keep failing, a warning at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(60);

/// An answer: status line, headers, body (left out for `HEAD`).
struct Response {
    code: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(code: &'static str, body: impl Into<String>) -> Self {
        Self {
            code,
            content_type: "text/plain",
            body: body.into(),
            allow: false,
        }
    }

    fn to_bytes(&self, with_body: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.code,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Where the request head ends (just past its empty line), if it has.
/// Lines end in CRLF; a bare LF is accepted too (RFC 9112 §2.2).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 2),
        b"\n\r" if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// Reads until the end of the request head, at most [`MAX_HEAD`] bytes.
/// `Ok(None)`: the client closed before finishing it.
async fn read_head<S: AsyncRead + Unpin>(
    sock: &mut S,
) -> std::io::Result<Option<Result<Vec<u8>, Response>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        // Only the new bytes (and the 2 before them) can complete the head.
        let from = buf.len().saturating_sub(2);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            let end = from + end;
            if end > MAX_HEAD {
                break;
            }
            buf.truncate(end);
            return Ok(Some(Ok(buf)));
        }
        if buf.len() > MAX_HEAD {
            break;
        }
    }
    Ok(Some(Err(Response::text(
        "431 Request Header Fields Too Large",
        "request head too large\n",
    ))))
}

/// The answer to a request head, and whether to send its body (not for `HEAD`).
fn answer(head: &[u8], status: &StatusSource) -> (Response, bool) {
    let line_end = head.iter().position(|&c| c == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let bad = || (Response::text("400 Bad Request", "bad request\n"), true);
    // request-line = method SP request-target SP HTTP-version
    let Ok(line) = std::str::from_utf8(line) else {
        return bad();
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return bad();
    }
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            let mut r = Response::text("405 Method Not Allowed", "method not allowed\n");
            r.allow = true;
            return (r, true);
        }
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let r = match path {
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/readyz" => {
            let st = status();
            let code = if st.is_ready() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            Response::text(code, readyz_body(&st))
        }
        "/metrics" => Response {
            content_type: "text/plain; version=0.0.4",
            ..Response::text("200 OK", metrics(&status()))
        },
        _ => Response::text("404 Not Found", "not found\n"),
    };
    (r, with_body)
}

/// One connection: read the head (within [`HEAD_TIMEOUT`]), answer, close.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, status: &StatusSource) {
    let (resp, with_body) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut sock)).await {
        Ok(Ok(Some(Ok(head)))) => answer(&head, status),
        Ok(Ok(Some(Err(too_large)))) => (too_large, true),
        // Closed early or a socket error: nobody to answer.
        Ok(Ok(None) | Err(_)) => return,
        Err(_) => (
            Response::text("408 Request Timeout", "request timeout\n"),
            true,
        ),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sock.write_all(&resp.to_bytes(with_body))).await;
    finish(sock).await;
}

/// Closes our side, then reads what the client still sends (a cut-off head,
/// a body) until it closes, briefly: closing a socket with unread input
/// makes the kernel send a reset, which can destroy our answer before the
/// client has read it.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S) {
    if sock.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match sock.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What the accept loop takes connections from: the listener, or a script
/// in tests.
trait Acceptor {
    /// A connection.
    type Conn;
    /// The next connection, or why there is none.
    async fn accept(&mut self) -> std::io::Result<Self::Conn>;
}

impl Acceptor for TcpListener {
    type Conn = TcpStream;
    async fn accept(&mut self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(sock, _)| sock)
    }
}

/// Errors of one connection that died before we accepted it: the next
/// accept may well succeed, so no backoff.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

/// What to do after failed accepts: wait, and warn once per burst of
/// failures (again every [`ACCEPT_LOG_EVERY`] while it lasts).
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failed accepts in the current burst.
    failures: u64,
    /// The last wait (`None` outside a burst).
    delay: Option<Duration>,
    /// When the burst was last reported.
    logged: Option<tokio::time::Instant>,
}

impl AcceptBackoff {
    /// Records a failure at `now`: how long to wait before the next accept,
    /// and whether to report it.
    fn failed(&mut self, now: tokio::time::Instant) -> (Duration, bool) {
        self.failures += 1;
        let delay = self
            .delay
            .map_or(ACCEPT_BACKOFF_MIN, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
        self.delay = Some(delay);
        let report = self
            .logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_LOG_EVERY);
        if report {
            self.logged = Some(now);
        }
        (delay, report)
    }

    /// Records a success: the failures it ends, if any, and a fresh start.
    fn succeeded(&mut self) -> u64 {
        std::mem::take(self).failures
    }
}

/// Accepts connections forever, handing each to `on_conn`. A failed accept
/// (`EMFILE`/`ENFILE`/`ENOBUFS`: out of file descriptors or memory) fails
/// again at once until something is freed: retrying immediately spun at
/// 100% CPU, so wait 100 ms doubling to 1 s, and warn once per burst.
async fn accept_loop<A: Acceptor>(mut acceptor: A, mut on_conn: impl FnMut(A::Conn)) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match acceptor.accept().await {
            Ok(conn) => {
                let failures = backoff.succeeded();
                if failures > 0 {
                    tracing::info!(failures, "status server accepting connections again");
                }
                on_conn(conn);
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!("status server: connection lost before accept: {e}");
            }
            Err(e) => {
                let (delay, report) = backoff.failed(tokio::time::Instant::now());
                if report {
                    tracing::warn!(
                        failures = backoff.failures,
                        "status server cannot accept connections, retrying in up to {ACCEPT_BACKOFF_MAX:?}: {e}"
                    );
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Serves the endpoints until the task is dropped.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    status: StatusSource,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for health checks: {e}"))?;
    Ok(tokio::spawn(accept_loop(listener, move |sock| {
        let status = status.clone();
        tokio::spawn(async move { handle(sock, &status).await });
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    type State = Arc<std::sync::Mutex<StatusSnapshot>>;

    fn source() -> (State, StatusSource) {
        let state = State::default();
        let read = state.clone();
        (state, Arc::new(move || read.lock().unwrap().clone()))
    }

    async fn server() -> (SocketAddr, State, tokio::task::JoinHandle<()>) {
        let (status, source) = source();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let task = serve(addr, source).await.unwrap();
        (addr, status, task)
    }

    /// Writes `pieces` with a pause after each (each goes out as its own
    /// segment: `TCP_NODELAY`), then reads the answer to the end.
    async fn exchange(addr: SocketAddr, pieces: &[&[u8]]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        for p in pieces {
            s.write_all(p).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .expect("the server answers and closes without waiting for a timeout")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn a_request_split_across_segments_is_read_whole() {
        let (addr, _status, _task) = server().await;
        let resp = exchange(
            addr,
            &[
                b"GE",
                b"T /hea",
                b"lthz HTTP/1.1\r",
                b"\nHost: x\r\n",
                b"\r",
                b"\n",
            ],
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
    }

    #[tokio::test]
    async fn a_request_head_over_one_kib_is_answered() {
        let (addr, status, _task) = server().await;
        status.lock().unwrap().ops_applied = 7;
        let cookie = "c".repeat(3000);
        let head = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: {}\r\nCookie: {cookie}\r\n\r\n",
            "u".repeat(1500)
        );
        let (a, b) = head.as_bytes().split_at(1200);
        let resp = exchange(addr, &[a, b]).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("\ntwill_ops_applied_total 7\n"), "{resp}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_gets_431_without_hanging() {
        let (addr, _status, _task) = server().await;
        // Never terminated: the server must stop reading at its cap.
        let huge = format!("GET /healthz HTTP/1.1\r\nX-Big: {}", "b".repeat(16 * 1024));
        let resp = exchange(addr, &[huge.as_bytes()]).await;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    }

    #[tokio::test]
    async fn malformed_requests_and_other_methods_are_refused() {
        let (addr, _status, _task) = server().await;
        for (req, code) in [
            (&b"GARBAGE\r\n\r\n"[..], "400"),
            (b"GET /healthz\r\n\r\n", "400"),
            (b"GET healthz HTTP/1.1\r\n\r\n", "400"),
            (b"GET /healthz SPDY/3 extra\r\n\r\n", "400"),
            (
                b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "405",
            ),
            (b"GET /healthz?verbose=1 HTTP/1.0\r\n\r\n", "200"),
            (b"GET /healthz HTTP/1.1\n\n", "200"),
        ] {
            let resp = exchange(addr, &[req]).await;
            assert!(
                resp.starts_with(&format!("HTTP/1.1 {code} ")),
                "{:?}: {resp}",
                String::from_utf8_lossy(req)
            );
        }
        let resp = exchange(addr, &[b"HEAD /healthz HTTP/1.1\r\n\r\n"]).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("Content-Length: 3\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\n"), "HEAD has no body: {resp}");
        let resp = exchange(addr, &[b"DELETE /healthz HTTP/1.1\r\n\r\n"]).await;
        assert!(resp.contains("Allow: GET, HEAD\r\n"), "{resp}");
    }

    /// Accepts that fail `fails` times, then give one connection, then wait
    /// forever. Counts attempts; stops answering after `SPIN_GUARD` of them
    /// so a loop that does not back off fails the test instead of hanging it.
    struct Script {
        attempts: Arc<AtomicU64>,
        fails: u64,
    }

    const SPIN_GUARD: u64 = 10_000;
    const EMFILE: i32 = 24;

    impl Acceptor for Script {
        type Conn = u64;
        async fn accept(&mut self) -> std::io::Result<u64> {
            let n = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= self.fails.min(SPIN_GUARD) {
                return Err(std::io::Error::from_raw_os_error(EMFILE));
            }
            if Some(n) == self.fails.checked_add(1) {
                return Ok(n);
            }
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off_instead_of_spinning() {
        let attempts = Arc::new(AtomicU64::new(0));
        let script = Script {
            attempts: attempts.clone(),
            fails: u64::MAX,
        };
        let _task = tokio::spawn(accept_loop(script, |_| {}));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = attempts.load(Ordering::Relaxed);
        assert!(
            (2..=5).contains(&first),
            "{first} accepts in the first virtual second"
        );
        // Then about one a second (the backoff's cap), still retrying.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let later = attempts.load(Ordering::Relaxed) - first;
        assert!((8..=11).contains(&later), "{later} accepts in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn accepting_resumes_after_a_burst_of_failures() {
        let attempts = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let script = Script {
            attempts: attempts.clone(),
            fails: 3,
        };
        let seen = accepted.clone();
        let _task = tokio::spawn(accept_loop(script, move |conn| {
            seen.store(conn, Ordering::Relaxed);
        }));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            4,
            "the 4th accept's connection"
        );
        assert_eq!(attempts.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn peer_health_is_in_metrics_and_the_readyz_body() {
        use twill_agent::{PeerHealth, UnreachableCause};
        let key = |s: &str| s.parse::<twill_agent::SubnetKey>().unwrap();
        let mut report = HealthReport::default();
        report.probes_sent = 42;
        report.peers = vec![
            PeerHealth {
                key: key("10.5.1.0-24"),
                public_ip: "192.0.2.1".parse().unwrap(),
                target: "10.5.1.0".parse().unwrap(),
                reachability: Reachability::Reachable,
                rtt: Some(Duration::from_micros(250)),
            },
            PeerHealth {
                key: key("10.5.2.0-24"),
                public_ip: "192.0.2.2".parse().unwrap(),
                target: "10.5.2.0".parse().unwrap(),
                reachability: Reachability::Unreachable(UnreachableCause::TunnelBlocked {
                    port: 8472,
                }),
                rtt: None,
            },
            PeerHealth {
                key: key("10.5.3.0-24"),
                public_ip: "192.0.2.3".parse().unwrap(),
                target: "10.5.3.0".parse().unwrap(),
                reachability: Reachability::Unknown,
                rtt: None,
            },
        ];
        let mut st = StatusSnapshot::default();
        st.health = Some(Arc::new(report));
        let m = metrics(&st);
        assert!(
            m.contains("twill_peer_reachable{peer=\"192.0.2.1\",subnet=\"10.5.1.0-24\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("twill_peer_reachable{peer=\"192.0.2.2\",subnet=\"10.5.2.0-24\"} 0\n"),
            "{m}"
        );
        assert!(
            !m.contains("peer=\"192.0.2.3\""),
            "no verdict, no sample: {m}"
        );
        assert!(
            m.contains(
                "twill_peer_rtt_seconds{peer=\"192.0.2.1\",subnet=\"10.5.1.0-24\"} 0.000250\n"
            ),
            "{m}"
        );
        assert!(m.contains("twill_peer_probes_total 42\n"), "{m}");
        let body = readyz_body(&st);
        assert_eq!(
            body,
            "not ready\npeers: 1 reachable, 1 unreachable, 1 not yet probed\nunreachable: 192.0.2.2 (subnet 10.5.2.0-24, probed at 10.5.2.0): the tunnel is blocked: the host answers on the underlay but not through VXLAN (UDP port 8472)\n"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_and_reports_once_per_burst() {
        let t0 = tokio::time::Instant::now();
        let mut b = AcceptBackoff::default();
        let mut delays = Vec::new();
        let mut reports = 0;
        let mut now = t0;
        // Two minutes of failures.
        while now.duration_since(t0) < Duration::from_secs(120) {
            let (d, report) = b.failed(now);
            delays.push(d);
            reports += usize::from(report);
            now += d;
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(delays[..5], [ms(100), ms(200), ms(400), ms(800), ms(1000)]);
        assert!(delays[5..].iter().all(|d| *d == ACCEPT_BACKOFF_MAX));
        assert_eq!(reports, 2, "at t=0 and after a minute");
        assert_eq!(b.succeeded(), delays.len() as u64);
        // A new burst starts over and is reported.
        assert_eq!(b.failed(now), (ACCEPT_BACKOFF_MIN, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_head_times_out() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (_state, status) = source();
        let _conn = tokio::spawn(async move { handle(server, &status).await });
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(start.elapsed(), HEAD_TIMEOUT);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let (addr, status, _task) = server().await;
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        {
            let mut s = status.lock().unwrap();
            s.lease_held = true;
            s.registry_reachable = true;
            s.dataplane_ready = true;
            s.ops_applied = 42;
        }
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("\ntwill_ops_applied_total 42\n"), "{m}");
        // Cut off from etcd: not ready, whatever the kernel holds.
        status.lock().unwrap().registry_reachable = false;
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/metrics")
            .await
            .contains("\ntwill_etcd_reachable 0\n"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
