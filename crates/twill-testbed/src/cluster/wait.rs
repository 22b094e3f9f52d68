//! Waiting on conditions with deadlines: readiness, convergence, metrics,
//! reconcile passes, and any predicate ([`TwillCluster::poll`]).

use std::time::{Duration, Instant};

use super::{ClusterError, TwillCluster, RECONCILES_TOTAL};

impl TwillCluster {
    /// Waits until host `i`'s daemon answers 200 on `/readyz`.
    ///
    /// # Errors
    /// The daemon's error (timeout or exit, with its log's tail).
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), ClusterError> {
        self.check(i)?;
        let addr = self.healthz_addr();
        let d = self.daemons[i]
            .as_mut()
            .ok_or_else(|| ClusterError::NoSuch(format!("host {i} has no daemon")))?;
        Ok(d.wait_ready(addr, timeout)?)
    }

    /// Waits until every started daemon is ready, within one overall `timeout`.
    ///
    /// # Errors
    /// The first daemon's error (timeout or exit, with its log's tail).
    pub fn wait_all_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let addr = self.healthz_addr();
        for d in self.daemons.iter_mut().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            d.wait_ready(addr, left.max(Duration::from_millis(1)))?;
        }
        Ok(())
    }

    /// Waits until every host with a running daemon holds a lease and its
    /// kernel matches the leases in etcd ([`TwillCluster::mismatches`] is
    /// empty); returns how long it took.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] whose message lists the mismatches.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<Duration, ClusterError> {
        let hosts = self.running_hosts();
        let start = Instant::now();
        loop {
            let last = match self.mismatches(&hosts) {
                Ok(m) if m.is_empty() => return Ok(start.elapsed()),
                Ok(m) => m,
                Err(e) => vec![e.to_string()],
            };
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: format!("convergence; still: {}", last.join("; ")),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the metric `name` of host `i`'s daemon is at least `min`;
    /// returns its value.
    ///
    /// # Errors
    /// The daemon's error (timeout naming the metric, or exit, with its log's tail).
    pub fn wait_metric(
        &mut self,
        i: usize,
        name: &str,
        min: f64,
        timeout: Duration,
    ) -> Result<f64, ClusterError> {
        self.check(i)?;
        let addr = self.healthz_addr();
        let d = self.daemons[i]
            .as_mut()
            .ok_or_else(|| ClusterError::NoSuch(format!("host {i} has no daemon")))?;
        Ok(d.wait_metric(addr, name, min, timeout)?)
    }

    /// Waits until each daemon of `hosts` has finished `n` more reconcile
    /// passes ([`RECONCILES_TOTAL`]) than when called, within one overall
    /// `timeout`. A pass may be under way when this is called, so with
    /// `n >= 2` at least `n - 1` passes started afterwards, each with every
    /// lease the daemon had received by then.
    ///
    /// This is the evidence a negative check needs: once a daemon has
    /// provably taken an event (a log line, [`LEASE_EVENTS_TOTAL`](super::LEASE_EVENTS_TOTAL), or a
    /// later lease it programmed), wait for passes after it, then assert
    /// that nothing wrong was done. Never a sleep.
    ///
    /// # Errors
    /// As [`TwillCluster::wait_metric`].
    pub fn wait_reconciles(
        &mut self,
        hosts: &[usize],
        n: u32,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut marks = Vec::with_capacity(hosts.len());
        for &i in hosts {
            let now = match self.metric(i, RECONCILES_TOTAL) {
                Ok(v) => v,
                // Not serving yet: wait for the first pass, then count from it.
                Err(_) => self.wait_metric(i, RECONCILES_TOTAL, 0.0, timeout)?,
            };
            marks.push((i, now));
        }
        for (i, now) in marks {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_metric(
                i,
                RECONCILES_TOTAL,
                now + f64::from(n),
                left.max(Duration::from_millis(1)),
            )?;
        }
        Ok(())
    }

    /// Polls `check` every 20 ms until it returns true or `timeout` passes;
    /// returns how long it took.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] naming `what`.
    pub fn poll(
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> bool,
    ) -> Result<Duration, ClusterError> {
        let start = Instant::now();
        loop {
            if check() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: what.into(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
