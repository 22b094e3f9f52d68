//! A daemon process (e.g. `twilld`) run inside a network namespace for tests.
//!
//! [`Daemon::start`] runs `ip netns exec <ns> <binary> <args>` (or the binary
//! directly without a namespace) with stdout and stderr appended to a log
//! file. `ip netns exec` replaces itself with the binary, so the PID we hold
//! is the daemon's: every signal is sent to that PID only. The process is
//! killed (SIGKILL, by PID) when the [`Daemon`] is dropped, also while a
//! failing test unwinds.
//!
//! The binary path is a parameter: this crate does not depend on the daemon.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use twill_testbed::daemon::{Daemon, DaemonOptions};
//! # let ns_name = "twl-1-0-h1";
//! let mut d = Daemon::start(DaemonOptions::new("/path/to/twilld", [
//!     "-iface=10.0.0.2", "-healthz-ip=127.0.0.1", "-healthz-port=8471",
//! ]).netns(ns_name)).unwrap();
//! d.wait_ready(SocketAddr::from(([127, 0, 0, 1], 8471)), Duration::from_secs(10)).unwrap();
//! d.wait_for_log("lease acquired", Duration::from_secs(5)).unwrap();
//! // A counter from its Prometheus /metrics, and a wait on one.
//! let addr = SocketAddr::from(([127, 0, 0, 1], 8471));
//! let passes = d.metric(addr, "twill_reconciles_total").unwrap();
//! d.wait_metric(addr, "twill_reconciles_total", passes + 2.0, Duration::from_secs(30)).unwrap();
//! d.sigterm().unwrap();      // graceful stop, waits for the exit
//! d.restart().unwrap();      // same arguments
//! d.kill().unwrap();         // SIGKILL: a crash
//! println!("{}", d.log());
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long [`Daemon::sigterm`] waits for the exit before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong running a daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited while we waited for something.
    #[error("{name} exited ({status}) while {waiting}\n--- tail of its log ---\n{log_tail}")]
    Exited {
        /// The daemon's label.
        name: String,
        /// Its exit status.
        status: String,
        /// What we were waiting for.
        waiting: String,
        /// The last lines it logged.
        log_tail: String,
    },
    /// A wait ran out of time.
    #[error("{name}: timed out after {timeout:?} waiting for {waiting}\n--- tail of its log ---\n{log_tail}")]
    Timeout {
        /// The daemon's label.
        name: String,
        /// How long we waited.
        timeout: Duration,
        /// What we were waiting for.
        waiting: String,
        /// The last lines it logged.
        log_tail: String,
    },
    /// The daemon is not running.
    #[error("{0} is not running")]
    NotRunning(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// How to run a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The executable.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Run inside this network namespace (its name under `/run/netns`).
    pub netns: Option<String>,
    /// Extra environment variables (`NO_COLOR=1` is always set).
    pub env: Vec<(String, String)>,
    /// The log file; a file in a fresh temporary directory when `None`.
    pub log_path: Option<PathBuf>,
    /// A label for messages (default: the binary's file name).
    pub name: Option<String>,
}

impl DaemonOptions {
    /// Options running `binary args...` outside any namespace.
    pub fn new<I, S>(binary: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        DaemonOptions {
            binary: binary.into(),
            args: args.into_iter().map(Into::into).collect(),
            netns: None,
            env: Vec::new(),
            log_path: None,
            name: None,
        }
    }

    /// Runs inside network namespace `netns`.
    #[must_use]
    pub fn netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends stdout and stderr to `path`.
    #[must_use]
    pub fn log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_path = Some(path.into());
        self
    }

    /// Names the daemon in messages.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A running (or stopped) daemon process; killed by PID on drop.
#[derive(Debug)]
pub struct Daemon {
    opts: DaemonOptions,
    name: String,
    log_path: PathBuf,
    /// Length of the log when the current run started.
    log_start: u64,
    child: Option<Child>,
    last_status: Option<ExitStatus>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts the daemon (does not wait for anything; see
    /// [`Daemon::wait_ready`] and [`Daemon::wait_for_log`]).
    ///
    /// # Errors
    /// When the log file cannot be created or the process not spawned.
    pub fn start(opts: DaemonOptions) -> Result<Self, DaemonError> {
        let (dir, log_path) = match &opts.log_path {
            Some(p) => (None, p.clone()),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("twill-daemon-")
                    .tempdir()
                    .map_err(io_err("creating the daemon's log directory"))?;
                let p = dir.path().join("daemon.log");
                (Some(dir), p)
            }
        };
        let name = opts.name.clone().unwrap_or_else(|| {
            opts.binary
                .file_name()
                .map_or_else(|| "daemon".into(), |n| n.to_string_lossy().into_owned())
        });
        let mut d = Daemon {
            opts,
            name,
            log_path,
            log_start: 0,
            child: None,
            last_status: None,
            _dir: dir,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Starts the process again if it is not running (same arguments).
    ///
    /// # Errors
    /// As [`Daemon::start`].
    pub fn spawn(&mut self) -> Result<(), DaemonError> {
        if self.is_running() {
            return Ok(());
        }
        if let Some(parent) = self.log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("opening {}", self.log_path.display())))?;
        let _ = writeln!(log, "=== twill-testbed: starting {}", self.command_line());
        self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log
            .try_clone()
            .map_err(io_err(format!("opening {}", self.log_path.display())))?;
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.opts.binary);
                c
            }
            None => Command::new(&self.opts.binary),
        };
        cmd.args(&self.opts.args)
            .env("NO_COLOR", "1")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", self.command_line())))?;
        self.child = Some(child);
        self.last_status = None;
        Ok(())
    }

    fn command_line(&self) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.opts.netns {
            s.push_str(&format!("ip netns exec {ns} "));
        }
        s.push_str(&self.opts.binary.to_string_lossy());
        for a in &self.opts.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// The label used in messages.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments it runs with.
    #[must_use]
    pub fn args(&self) -> &[String] {
        &self.opts.args
    }

    /// Replaces the arguments used by the next start.
    pub fn set_args(&mut self, args: Vec<String>) {
        self.opts.args = args;
    }

    /// The namespace it runs in.
    #[must_use]
    pub fn netns(&self) -> Option<&str> {
        self.opts.netns.as_deref()
    }

    /// The PID of the running process.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (has not exited).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.last_status = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// The exit status of the last run, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let _ = self.is_running();
        self.last_status
    }

    /// The log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything logged so far, over all runs (each start is marked with a
    /// `=== twill-testbed: starting ...` line).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the current (or last) run logged.
    #[must_use]
    pub fn log_since_start(&self) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            use std::io::{Seek, SeekFrom};
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The last `n` lines of the log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn exited(&self, waiting: &str) -> DaemonError {
        DaemonError::Exited {
            name: self.name.clone(),
            status: self
                .last_status
                .map_or_else(|| "not started".into(), |s| s.to_string()),
            waiting: waiting.into(),
            log_tail: self.log_tail(30),
        }
    }

    fn timeout(&self, timeout: Duration, waiting: &str) -> DaemonError {
        DaemonError::Timeout {
            name: self.name.clone(),
            timeout,
            waiting: waiting.into(),
            log_tail: self.log_tail(30),
        }
    }

    /// Waits until the current run's log contains `pattern` (a plain
    /// substring), failing early if the process exits.
    ///
    /// # Errors
    /// [`DaemonError::Timeout`] or [`DaemonError::Exited`], with the log's tail.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> Result<(), DaemonError> {
        self.wait_for_log_count(pattern, 1, timeout)
    }

    /// Waits until the current run's log contains `pattern` at least `n` times.
    ///
    /// # Errors
    /// As [`Daemon::wait_for_log`].
    pub fn wait_for_log_count(
        &mut self,
        pattern: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<(), DaemonError> {
        let deadline = Instant::now() + timeout;
        let waiting = format!("{n}× {pattern:?} in its log");
        loop {
            if self.log_since_start().matches(pattern).count() >= n {
                return Ok(());
            }
            if !self.is_running() {
                // One last look: it may have logged and exited.
                if self.log_since_start().matches(pattern).count() >= n {
                    return Ok(());
                }
                return Err(self.exited(&waiting));
            }
            if Instant::now() > deadline {
                return Err(self.timeout(timeout, &waiting));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain HTTP/1.0 GET of `path` at `addr`, made from inside the
    /// daemon's namespace. Returns the status code and the body.
    ///
    /// # Errors
    /// [`DaemonError::Io`] when it cannot connect or the answer is not HTTP.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), DaemonError> {
        match &self.opts.netns {
            None => http_get(addr, path),
            Some(ns) => {
                let ns_path = PathBuf::from("/run/netns").join(ns);
                let file = File::open(&ns_path)
                    .map_err(io_err(format!("opening {}", ns_path.display())))?;
                let path = path.to_string();
                std::thread::spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| DaemonError::Io {
                        what: "setns".into(),
                        source: std::io::Error::from(e),
                    })?;
                    http_get(addr, &path)
                })
                .join()
                .map_err(|_| DaemonError::Io {
                    what: "HTTP GET thread".into(),
                    source: std::io::Error::other("panicked"),
                })?
            }
        }
    }

    /// Waits until `GET /readyz` at `addr` (inside the namespace) answers
    /// 200, failing early if the process exits.
    ///
    /// # Errors
    /// [`DaemonError::Timeout`] or [`DaemonError::Exited`], with the log's tail.
    pub fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), DaemonError> {
        let deadline = Instant::now() + timeout;
        let waiting = format!("GET http://{addr}/readyz to answer 200");
        loop {
            if !self.is_running() {
                return Err(self.exited(&waiting));
            }
            if matches!(self.http_get(addr, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout(timeout, &waiting));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The value of the metric `name` (a sample without labels, e.g.
    /// `twill_reconciles_total`) in the Prometheus text the daemon serves at
    /// `GET http://<addr>/metrics` (inside its namespace).
    ///
    /// # Errors
    /// [`DaemonError::Io`] when the endpoint does not answer 200 or has no
    /// such sample.
    pub fn metric(&self, addr: SocketAddr, name: &str) -> Result<f64, DaemonError> {
        let (code, body) = self.http_get(addr, "/metrics")?;
        let missing = |why: String| DaemonError::Io {
            what: format!("GET http://{addr}/metrics"),
            source: std::io::Error::other(why),
        };
        if code != 200 {
            return Err(missing(format!("answered {code}")));
        }
        metric_value(&body, name).ok_or_else(|| missing(format!("no sample {name:?} in {body:?}")))
    }

    /// Waits until the metric `name` at `addr` (see [`Daemon::metric`]) is at
    /// least `min`, failing early if the process exits; returns its value.
    /// The shape of a check tied to evidence: "wait until the daemon counted
    /// the event / ran the pass, then assert".
    ///
    /// # Errors
    /// [`DaemonError::Timeout`] (naming the metric, the target and the last
    /// value read) or [`DaemonError::Exited`], with the log's tail.
    pub fn wait_metric(
        &mut self,
        addr: SocketAddr,
        name: &str,
        min: f64,
        timeout: Duration,
    ) -> Result<f64, DaemonError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.metric(addr, name) {
                Ok(v) if v >= min => return Ok(v),
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            };
            let waiting = format!("{name} >= {min} at http://{addr}/metrics (last read: {last})");
            if !self.is_running() {
                return Err(self.exited(&waiting));
            }
            if Instant::now() > deadline {
                return Err(self.timeout(timeout, &waiting));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after [`STOP_TIMEOUT`]).
    /// Returns the exit status, `None` when it was not running.
    ///
    /// # Errors
    /// An IO error waiting for the process.
    pub fn sigterm(&mut self) -> Result<Option<ExitStatus>, DaemonError> {
        if !self.is_running() {
            return Ok(None);
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.last_status = Some(status);
                    return Ok(Some(status));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let status = child
                        .wait()
                        .map_err(io_err(format!("waiting for {}", self.name)))?;
                    self.last_status = Some(status);
                    return Ok(Some(status));
                }
                Err(e) => return Err(io_err(format!("waiting for {}", self.name))(e)),
            }
        }
    }

    /// Sends `sig` to the process (e.g. SIGSTOP/SIGCONT) without waiting.
    ///
    /// # Errors
    /// [`DaemonError::NotRunning`].
    pub fn send_signal(&mut self, sig: Signal) -> Result<(), DaemonError> {
        if !self.is_running() {
            return Err(DaemonError::NotRunning(self.name.clone()));
        }
        self.signal(sig);
        Ok(())
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    ///
    /// # Errors
    /// An IO error waiting for the process.
    pub fn kill(&mut self) -> Result<(), DaemonError> {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this PID only.
            let _ = child.kill();
            let status = child
                .wait()
                .map_err(io_err(format!("waiting for {}", self.name)))?;
            self.last_status = Some(status);
        }
        Ok(())
    }

    /// Stops the process gracefully if it runs ([`Daemon::sigterm`]) and
    /// starts it again with the same arguments.
    ///
    /// # Errors
    /// As [`Daemon::sigterm`] and [`Daemon::start`].
    pub fn restart(&mut self) -> Result<(), DaemonError> {
        self.sigterm()?;
        self.spawn()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The value of the sample `name` (no labels) in a Prometheus text
/// exposition: the line `name <value>`.
#[must_use]
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A tiny HTTP/1.0 GET: status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), DaemonError> {
    let what = format!("GET http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .map_err(io_err(what.clone()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(io_err(what.clone()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io_err(what.clone()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| DaemonError::Io {
            what,
            source: std::io::Error::other(format!("not an HTTP answer: {head:?}")),
        })?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SCRIPT: &str =
        "echo started $$; trap 'echo bye; exit 0' TERM; while true; do sleep 0.05; done";

    #[test]
    fn start_log_sigterm_restart_kill() {
        let mut d = Daemon::start(DaemonOptions::new("sh", ["-c", SCRIPT]).name("looper")).unwrap();
        assert_eq!(d.name(), "looper");
        let pid = d.pid().unwrap();
        assert!(d.is_running());
        d.wait_for_log(&format!("started {pid}"), Duration::from_secs(5))
            .unwrap();
        let err = d
            .wait_for_log("never printed", Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, DaemonError::Timeout { .. }), "{err}");

        let status = d.sigterm().unwrap().unwrap();
        assert!(status.success(), "{status}");
        assert!(d.log().contains("bye"));
        assert!(!d.is_running());
        assert_eq!(d.pid(), None);
        assert_eq!(d.sigterm().unwrap(), None, "not running: nothing to stop");

        d.restart().unwrap();
        let pid2 = d.pid().unwrap();
        assert_ne!(pid, pid2);
        d.wait_for_log("started", Duration::from_secs(5)).unwrap();
        assert_eq!(d.log_since_start().matches("started").count(), 1);
        assert_eq!(
            d.log().lines().filter(|l| l.starts_with("started")).count(),
            2
        );

        d.kill().unwrap();
        assert!(!d.is_running());
        assert!(!d.exit_status().unwrap().success(), "SIGKILLed");
        assert!(!std::path::Path::new(&format!("/proc/{pid2}")).exists());
        let err = d.wait_for_log("bye", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, DaemonError::Exited { .. }), "{err}");
    }

    #[test]
    fn reads_a_prometheus_sample() {
        let text = "# HELP twill_reconciles_total Reconcile passes.\n# TYPE twill_reconciles_total counter\ntwill_reconciles_total 12\ntwill_reconciles_total_x 3\ntwill_ready 1\n";
        assert_eq!(metric_value(text, "twill_reconciles_total"), Some(12.0));
        assert_eq!(metric_value(text, "twill_ready"), Some(1.0));
        assert_eq!(metric_value(text, "twill_reconciles"), None);
        assert_eq!(metric_value(text, "nope"), None);
    }

    #[test]
    fn exit_is_reported_while_waiting_and_drop_kills() {
        let mut d =
            Daemon::start(DaemonOptions::new("sh", ["-c", "echo oops >&2; exit 3"])).unwrap();
        let err = d
            .wait_ready(
                SocketAddr::from(([127, 0, 0, 1], 9)),
                Duration::from_secs(5),
            )
            .unwrap_err();
        match &err {
            DaemonError::Exited {
                log_tail, status, ..
            } => {
                assert!(log_tail.contains("oops"), "{err}");
                assert!(status.contains('3'), "{err}");
            }
            other => panic!("{other}"),
        }
        let d = Daemon::start(DaemonOptions::new("sleep", ["30"])).unwrap();
        let pid = d.pid().unwrap();
        let log = d.log_path().to_path_buf();
        drop(d);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!log.exists(), "temporary log directory removed");
    }
}
