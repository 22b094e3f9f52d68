//! `/healthz`, `/readyz` and Prometheus `/metrics` on a tiny HTTP/1.1 server
//! (three fixed GET endpoints do not justify an HTTP framework).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the daemon reports about itself.
#[derive(Debug, Default)]
pub struct Status {
    /// We hold a subnet lease.
    pub lease_held: AtomicBool,
    /// The first reconcile after acquiring the lease succeeded.
    pub dataplane_ready: AtomicBool,
    /// Peers in the current desired set.
    pub peers: AtomicU64,
    /// Lease events seen from the registry (added, changed, removed).
    pub lease_events: AtomicU64,
    /// Reconcile passes run.
    pub reconciles: AtomicU64,
    /// Reconcile passes that failed.
    pub reconcile_failures: AtomicU64,
    /// Total reconcile time, microseconds.
    pub reconcile_micros: AtomicU64,
    /// Last reconcile time, microseconds.
    pub last_reconcile_micros: AtomicU64,
    /// Kernel operations applied.
    pub ops_applied: AtomicU64,
    /// Registry (etcd) errors seen.
    pub etcd_errors: AtomicU64,
    /// Lease renewals.
    pub renewals: AtomicU64,
}

impl Status {
    fn metrics(&self) -> String {
        let mut s = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
            u8::from(self.lease_held.load(Ordering::Relaxed)).to_string(),
        );
        metric(
            "twill_ready",
            "gauge",
            "1 if the lease is held and the dataplane programmed.",
            u8::from(self.is_ready()).to_string(),
        );
        metric(
            "twill_peers",
            "gauge",
            "Peer leases in the desired set.",
            g(&self.peers).to_string(),
        );
        metric(
            "twill_lease_events_total",
            "counter",
            "Lease changes seen from the registry.",
            g(&self.lease_events).to_string(),
        );
        metric(
            "twill_lease_renewals_total",
            "counter",
            "Subnet lease renewals.",
            g(&self.renewals).to_string(),
        );
        metric(
            "twill_reconciles_total",
            "counter",
            "Reconcile passes.",
            g(&self.reconciles).to_string(),
        );
        metric(
            "twill_reconcile_failures_total",
            "counter",
            "Reconcile passes that failed.",
            g(&self.reconcile_failures).to_string(),
        );
        #[allow(clippy::cast_precision_loss)]
        let secs = |a: &AtomicU64| format!("{:.6}", g(a) as f64 / 1e6);
        metric(
            "twill_reconcile_duration_seconds_sum",
            "counter",
            "Total time spent reconciling.",
            secs(&self.reconcile_micros),
        );
        metric(
            "twill_reconcile_last_duration_seconds",
            "gauge",
            "Duration of the last reconcile.",
            secs(&self.last_reconcile_micros),
        );
        metric(
            "twill_ops_applied_total",
            "counter",
            "Kernel operations applied by reconciles.",
            g(&self.ops_applied).to_string(),
        );
        metric(
            "twill_etcd_errors_total",
            "counter",
            "Errors talking to the registry.",
            g(&self.etcd_errors).to_string(),
        );
        s
    }

    /// Lease held and dataplane programmed.
    pub fn is_ready(&self) -> bool {
        self.lease_held.load(Ordering::Relaxed) && self.dataplane_ready.load(Ordering::Relaxed)
    }
}

fn response(code: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves the endpoints until the task is dropped.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for health checks: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let status = status.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let resp = match path {
                    "/healthz" => response("200 OK", "text/plain", "ok\n"),
                    "/readyz" if status.is_ready() => response("200 OK", "text/plain", "ready\n"),
                    "/readyz" => response("503 Service Unavailable", "text/plain", "not ready\n"),
                    "/metrics" => {
                        response("200 OK", "text/plain; version=0.0.4", &status.metrics())
                    }
                    _ => response("404 Not Found", "text/plain", "not found\n"),
                };
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let status = Arc::new(Status::default());
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let _task = serve(addr, status.clone()).await.unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        status.lease_held.store(true, Ordering::Relaxed);
        status.dataplane_ready.store(true, Ordering::Relaxed);
        status.ops_applied.store(42, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("\ntwill_ops_applied_total 42\n"), "{m}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
