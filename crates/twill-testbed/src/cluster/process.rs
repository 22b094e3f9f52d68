//! The daemons: their arguments, starting them, and what they report.

use super::{ClusterError, TwillCluster, DEFAULT_PREFIX};
use crate::daemon::{Daemon, DaemonOptions};

impl TwillCluster {
    /// The daemon of host `i`.
    ///
    /// # Panics
    /// When `i` is out of range or the host has no daemon (a test bug).
    #[must_use]
    pub fn daemon(&self, i: usize) -> &Daemon {
        self.daemons[i]
            .as_ref()
            .unwrap_or_else(|| panic!("host {i} has no daemon (start_twilld first)"))
    }

    /// The daemon of host `i`, mutably.
    ///
    /// # Panics
    /// When `i` is out of range or the host has no daemon (a test bug).
    pub fn daemon_mut(&mut self, i: usize) -> &mut Daemon {
        self.daemons[i]
            .as_mut()
            .unwrap_or_else(|| panic!("host {i} has no daemon (start_twilld first)"))
    }

    /// The daemon of host `i`, if one was started.
    #[must_use]
    pub fn try_daemon(&self, i: usize) -> Option<&Daemon> {
        self.daemons.get(i).and_then(Option::as_ref)
    }

    /// The arguments host `i`'s daemon is started with (before
    /// [`TwillClusterBuilder::twilld_args`](super::TwillClusterBuilder::twilld_args) extras).
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn base_args(&self, i: usize) -> Vec<String> {
        let h = &self.lan.hosts[i];
        // Without IPv4 on the LAN the daemon is named its IPv6 address
        // (flannel's -iface takes either family) and etcd's IPv6 URLs.
        let v6_only = !self.settings.underlay.has_ipv4();
        let iface = match h.addr6 {
            Some(a6) if v6_only => a6.to_string(),
            _ => h.addr.to_string(),
        };
        let mut args = vec![
            format!("-iface={iface}"),
            format!("-subnet-file={}", self.subnet_file(i).display()),
            "-healthz-ip=127.0.0.1".to_string(),
            format!("-healthz-port={}", self.settings.healthz_port),
            "--reconcile-interval=1s".to_string(),
        ];
        if self.settings.prefix != DEFAULT_PREFIX {
            args.push(format!("-etcd-prefix={}", self.settings.prefix));
        }
        if i >= self.etcd.len() || v6_only {
            args.push(format!(
                "-etcd-endpoints={}",
                self.etcd.endpoints().join(",")
            ));
        }
        args
    }

    /// Starts host `i`'s daemon (if it is not running) with the base
    /// arguments plus the builder's extras, logging to `<dir>/<name>/twilld.log`.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_twilld(&mut self, i: usize) -> Result<(), ClusterError> {
        let mut args = self.base_args(i);
        args.extend(self.settings.twilld_args.iter().cloned());
        self.start_twilld_with(i, args)
    }

    /// Starts host `i`'s daemon with exactly `args` (replacing the arguments
    /// of a previous daemon of this host).
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_twilld_with(&mut self, i: usize, args: Vec<String>) -> Result<(), ClusterError> {
        self.check(i)?;
        if let Some(d) = self.daemons[i].as_mut() {
            if d.is_running() {
                return Ok(());
            }
            d.set_args(args);
            d.spawn()?;
            return Ok(());
        }
        let mut opts = DaemonOptions::new(&self.binary, args)
            .netns(self.lan.hosts[i].ns.name())
            .name(&format!("twilld@{}", self.names[i]))
            .log_path(self.dir.path().join(&self.names[i]).join("twilld.log"));
        opts.env.clone_from(&self.settings.env);
        self.daemons[i] = Some(Daemon::start(opts)?);
        Ok(())
    }

    /// Hosts whose daemon runs.
    pub fn running_hosts(&mut self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.daemons[i].as_mut().is_some_and(Daemon::is_running))
            .collect()
    }

    /// The metric `name` of host `i`'s daemon (its `/metrics`), e.g.
    /// [`RECONCILES_TOTAL`](super::RECONCILES_TOTAL).
    ///
    /// # Errors
    /// When the host has no daemon, or it does not answer with that sample.
    pub fn metric(&self, i: usize, name: &str) -> Result<f64, ClusterError> {
        self.check(i)?;
        let d = self
            .try_daemon(i)
            .ok_or_else(|| ClusterError::NoSuch(format!("host {i} has no daemon")))?;
        Ok(d.metric(self.healthz_addr(), name)?)
    }

    /// Every daemon's log, labelled, for failure messages.
    #[must_use]
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, d) in self.daemons.iter().enumerate() {
            if let Some(d) = d {
                s.push_str(&format!(
                    "--- {} ({}) ---\n{}\n",
                    self.names[i],
                    self.ip_label(i),
                    d.log()
                ));
            }
        }
        s
    }
}
