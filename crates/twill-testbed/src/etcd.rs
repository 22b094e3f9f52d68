//! Real etcd server processes for tests, benchmarks and the demo.
//!
//! [`EtcdServer::start`] runs the installed `etcd` binary on free loopback
//! ports with a temporary data directory and returns once it answers
//! `/health`. [`EtcdServer::start_tls`] does the same with generated
//! certificates (client certificates required), [`EtcdCluster::start`] runs a
//! multi-member cluster, and [`EtcdOptions::netns`] runs a member inside a
//! network namespace, listening on `<ip>:2379` and `127.0.0.1:2379` as each
//! host of the article's setup does; [`EtcdOptions::in_netns_v6`] the same
//! on an IPv6 address (`http://[fd00:10::2]:2379`, peers over IPv6 too), for
//! hosts without IPv4 on their LAN.
//!
//! etcd's own log goes to a file in the member's directory, never to the test
//! output; when start-up fails, the error carries its tail. Every process is
//! stopped by its PID (never by name) and its data removed on drop.
//!
//! ```no_run
//! use twill_testbed::etcd::EtcdServer;
//! twill_testbed::require_etcd!();
//! let mut etcd = EtcdServer::start().unwrap();
//! println!("etcd at {}", etcd.endpoint());
//! etcd.etcdctl(&["put", "/coreos.com/network/config", r#"{"Network":"10.5.0.0/16"}"#]).unwrap();
//! etcd.stop().unwrap();
//! etcd.restart().unwrap(); // same ports and data
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How to install etcd when it is missing.
pub const INSTALL_HINT: &str = "apt-get install -y etcd-server etcd-client";

/// How long a member may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a start is retried when a picked port was taken meanwhile.
const PORT_RETRIES: usize = 5;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Checks that the `etcd` binary is installed.
///
/// # Errors
/// How to install it, when it is missing.
pub fn check_etcd() -> Result<(), String> {
    match Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "`etcd --version` failed ({s}); reinstall it: {INSTALL_HINT}"
        )),
        Err(e) => Err(format!("etcd not found ({e}): {INSTALL_HINT}")),
    }
}

/// What can go wrong running etcd for a test.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdServerError {
    /// The `etcd` (or `etcdctl`, `openssl`) binary is missing.
    #[error("{0}")]
    NotInstalled(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// etcd exited during start-up or did not become healthy in time.
    #[error("etcd {name} did not start: {reason}\n--- tail of etcd's log ---\n{log_tail}")]
    StartFailed {
        /// The member's name.
        name: String,
        /// What we observed.
        reason: String,
        /// The last lines etcd logged.
        log_tail: String,
    },
    /// Generating TLS certificates with `openssl` failed.
    #[error("openssl {step} failed: {stderr}")]
    Openssl {
        /// Which step (`CA`, `server cert`, ...).
        step: String,
        /// openssl's stderr.
        stderr: String,
    },
    /// A member index out of range.
    #[error("no member {index} in a cluster of {len}")]
    NoSuchMember {
        /// The index asked for.
        index: usize,
        /// The cluster size.
        len: usize,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EtcdServerError {
    let what = what.into();
    move |source| EtcdServerError::Io { what, source }
}

/// PEM files of a test PKI: a CA, a server certificate for the given IPs
/// (and `localhost`) and a client certificate, all signed by the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

fn openssl(step: &str, args: &[&str], dir: &Path) -> Result<(), EtcdServerError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            EtcdServerError::NotInstalled(format!(
                "cannot run openssl ({e}): apt-get install -y openssl"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EtcdServerError::Openssl {
            step: step.into(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl TlsFiles {
    /// Generates a fresh CA, server and client certificate in `dir` with the
    /// `openssl` command (EC P-256 keys, valid ten years). The server
    /// certificate names `127.0.0.1`, `localhost` and `ips`.
    ///
    /// # Errors
    /// [`EtcdServerError::Openssl`] with openssl's message, or an IO error.
    pub fn generate(dir: &Path, ips: &[IpAddr]) -> Result<Self, EtcdServerError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=twill-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl("CA", &ca_args, dir)?;

        let mut san = String::from("subjectAltName=IP:127.0.0.1,DNS:localhost");
        for ip in ips {
            san.push_str(&format!(",IP:{ip}"));
        }
        let server_ext = format!(
            "{san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
        );
        let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";
        for (name, cn, ext) in [
            ("server", "etcd-server", server_ext.as_str()),
            ("client", "twill-client", client_ext),
        ] {
            let ext_file = format!("{name}.ext");
            std::fs::write(dir.join(&ext_file), ext)
                .map_err(io_err(format!("writing {}", dir.join(&ext_file).display())))?;
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let subj = format!("/CN={cn}");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&format!("{name} key"), &req, dir)?;
            openssl(
                &format!("{name} cert"),
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "3650",
                    "-extfile",
                    &ext_file,
                ],
                dir,
            )?;
        }
        Ok(TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }
}

/// How to run one etcd member.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Serve clients over TLS with generated certificates (client
    /// certificates required).
    pub tls: bool,
    /// Run inside this network namespace (`ip netns exec <ns> etcd ...`),
    /// listening on the fixed ports 2379/2380/2381.
    pub netns: Option<String>,
    /// The address to listen and advertise on besides `127.0.0.1`
    /// (required with `netns`; must be reachable by the other members).
    pub listen_ip: Option<Ipv4Addr>,
    /// An IPv6 address to listen and advertise on besides `127.0.0.1`,
    /// in place of `listen_ip` (which is then not used): clients and peers
    /// reach the member at `[listen_ipv6]`.
    pub listen_ipv6: Option<Ipv6Addr>,
    /// Extra command-line arguments for etcd.
    pub extra_args: Vec<String>,
}

impl EtcdOptions {
    /// Options for a member in network namespace `netns` at `ip`.
    #[must_use]
    pub fn in_netns(netns: &str, ip: Ipv4Addr) -> Self {
        EtcdOptions {
            netns: Some(netns.into()),
            listen_ip: Some(ip),
            ..EtcdOptions::default()
        }
    }

    /// Options for a member in network namespace `netns` at the IPv6 address `ip`.
    #[must_use]
    pub fn in_netns_v6(netns: &str, ip: Ipv6Addr) -> Self {
        EtcdOptions {
            netns: Some(netns.into()),
            listen_ipv6: Some(ip),
            ..EtcdOptions::default()
        }
    }

    /// The address the member listens and advertises on besides loopback.
    fn advertised_ip(&self) -> Option<IpAddr> {
        self.listen_ipv6
            .map(IpAddr::V6)
            .or(self.listen_ip.map(IpAddr::V4))
    }
}

/// Ports of one member.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

/// Picks `n` sets of three free loopback ports, holding every listener
/// until all are picked so that no two coincide.
fn free_ports(n: usize) -> Result<Vec<Ports>, EtcdServerError> {
    let ls: Vec<TcpListener> = (0..3 * n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("binding a free port")))
        .collect::<Result<_, _>>()?;
    let mut ports = Vec::with_capacity(3 * n);
    for l in &ls {
        ports.push(
            l.local_addr()
                .map_err(io_err("reading a bound port"))?
                .port(),
        );
    }
    Ok(ports
        .chunks_exact(3)
        .map(|c| Ports {
            client: c[0],
            peer: c[1],
            metrics: c[2],
        })
        .collect())
}

const NETNS_PORTS: Ports = Ports {
    client: 2379,
    peer: 2380,
    metrics: 2381,
};

/// One etcd process: a single server or a cluster member.
///
/// Dropping it kills the process (by PID) and removes its data directory.
#[derive(Debug)]
pub struct EtcdServer {
    name: String,
    token: String,
    opts: EtcdOptions,
    ports: Ports,
    /// `name=peer-url,...` for every member, this one included.
    initial_cluster: String,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    child: Option<Child>,
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

impl EtcdServer {
    /// Starts a single-member etcd on free loopback ports and waits until it
    /// is healthy.
    ///
    /// # Errors
    /// [`EtcdServerError::NotInstalled`] when etcd is missing,
    /// [`EtcdServerError::StartFailed`] with the tail of etcd's log.
    pub fn start() -> Result<Self, EtcdServerError> {
        Self::start_with(&EtcdOptions::default())
    }

    /// As [`EtcdServer::start`], serving clients over TLS with generated
    /// certificates; see [`EtcdServer::tls_files`].
    ///
    /// # Errors
    /// As [`EtcdServer::start`], or [`EtcdServerError::Openssl`].
    pub fn start_tls() -> Result<Self, EtcdServerError> {
        Self::start_with(&EtcdOptions {
            tls: true,
            ..EtcdOptions::default()
        })
    }

    /// Starts a single-member etcd with `opts` and waits until it is healthy.
    /// Free ports are picked and the start retried if one was taken meanwhile
    /// (with a network namespace the fixed ports 2379-2381 are used).
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start_with(opts: &EtcdOptions) -> Result<Self, EtcdServerError> {
        check_etcd().map_err(EtcdServerError::NotInstalled)?;
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let ports = match opts.netns {
                Some(_) => NETNS_PORTS,
                None => free_ports(1)?.pop().unwrap_or(NETNS_PORTS),
            };
            let name = unique("etcd");
            let ips: Vec<IpAddr> = opts.advertised_ip().into_iter().collect();
            let mut server = Self::prepare(
                name.clone(),
                unique("twill"),
                opts.clone(),
                ports,
                None,
                &ips,
            )?;
            server.initial_cluster = format!("{name}={}", server.peer_url());
            match server
                .spawn()
                .and_then(|()| server.wait_healthy(START_TIMEOUT))
            {
                Ok(()) => return Ok(server),
                Err(e) if opts.netns.is_none() && is_port_clash(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| EtcdServerError::StartFailed {
            name: "etcd".into(),
            reason: "no free ports".into(),
            log_tail: String::new(),
        }))
    }

    fn prepare(
        name: String,
        token: String,
        opts: EtcdOptions,
        ports: Ports,
        tls: Option<TlsFiles>,
        san_ips: &[IpAddr],
    ) -> Result<Self, EtcdServerError> {
        let dir = tempfile::Builder::new()
            .prefix("twill-etcd-")
            .tempdir()
            .map_err(io_err("creating etcd's temporary directory"))?;
        let tls = match (opts.tls, tls) {
            (_, Some(t)) => Some(t),
            (true, None) => Some(TlsFiles::generate(&dir.path().join("pki"), san_ips)?),
            (false, None) => None,
        };
        Ok(EtcdServer {
            name,
            token,
            opts,
            ports,
            initial_cluster: String::new(),
            dir,
            tls,
            child: None,
        })
    }

    fn ip(&self) -> IpAddr {
        self.opts
            .advertised_ip()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// `scheme://ip:port`, with the brackets an IPv6 address needs.
    fn url(&self, scheme: &str, port: u16) -> String {
        format!("{scheme}://{}", SocketAddr::new(self.ip(), port))
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn peer_url(&self) -> String {
        self.url("http", self.ports.peer)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The member's name (`--name`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL to use (`http://127.0.0.1:<port>`, or `https://` with
    /// TLS; with a network namespace the listen IP's URL, which is reachable
    /// from the other namespaces).
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.url(self.scheme(), self.ports.client)
    }

    /// All client URLs of this member (one).
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The client port.
    #[must_use]
    pub fn client_port(&self) -> u16 {
        self.ports.client
    }

    /// The certificates, for a TLS server.
    #[must_use]
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The directory holding the data dir, the log and the certificates.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PID of the running process, if it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn args(&self) -> Vec<String> {
        let ip = self.ip();
        let s = self.scheme();
        let mut client_urls = self.url(s, self.ports.client);
        let mut metrics_urls = self.url("http", self.ports.metrics);
        if ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            client_urls.push_str(&format!(",{s}://127.0.0.1:{}", self.ports.client));
            metrics_urls.push_str(&format!(",http://127.0.0.1:{}", self.ports.metrics));
        }
        let mut args: Vec<String> = [
            "--name",
            &self.name,
            "--data-dir",
            &self.dir.path().join("data").to_string_lossy(),
            "--listen-client-urls",
            &client_urls,
            "--advertise-client-urls",
            &self.url(s, self.ports.client),
            "--listen-peer-urls",
            &self.peer_url(),
            "--initial-advertise-peer-urls",
            &self.peer_url(),
            "--listen-metrics-urls",
            &metrics_urls,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-level",
            "error",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
                ("--trusted-ca-file", &t.ca),
            ] {
                args.push(flag.into());
                args.push(path.to_string_lossy().into_owned());
            }
            args.push("--client-cert-auth".into());
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self) -> Result<(), EtcdServerError> {
        if self.is_running() {
            return Ok(());
        }
        self.child = None;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io_err(format!("opening {}", self.log_path().display())))?;
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().map_err(|e| {
            EtcdServerError::NotInstalled(format!("cannot run etcd ({e}): {INSTALL_HINT}"))
        })?;
        self.child = Some(child);
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn start_failed(&self, reason: String) -> EtcdServerError {
        EtcdServerError::StartFailed {
            name: self.name.clone(),
            reason,
            log_tail: self.log_tail(),
        }
    }

    /// `GET path` on the member's metrics port, from inside its namespace:
    /// the whole answer, or `None` when it cannot be reached.
    fn get_metrics_port(&self, path: &str) -> Option<String> {
        let addr = SocketAddr::from((self.ip(), self.ports.metrics));
        let path = path.to_string();
        match &self.opts.netns {
            None => http_get_text(addr, &path),
            Some(ns) => {
                let ns_path = PathBuf::from("/var/run/netns").join(ns);
                std::thread::spawn(move || {
                    let file = File::open(&ns_path).ok()?;
                    setns(&file, CloneFlags::CLONE_NEWNET).ok()?;
                    http_get_text(addr, &path)
                })
                .join()
                .ok()
                .flatten()
            }
        }
    }

    /// Whether etcd's `/health` answers `"health":"true"` now.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.get_metrics_port("/health")
            .is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    /// etcd's Prometheus metrics (`GET /metrics` on the member's metrics port).
    ///
    /// # Errors
    /// [`EtcdServerError::Io`] when the member does not answer.
    pub fn metrics(&self) -> Result<String, EtcdServerError> {
        self.get_metrics_port("/metrics")
            .filter(|text| text.starts_with("HTTP/1.") && text.contains("\r\n\r\n"))
            .ok_or_else(|| EtcdServerError::Io {
                what: format!("GET /metrics of etcd {}", self.name),
                source: std::io::Error::other("no answer"),
            })
    }

    /// How many gRPC messages this member has received from its clients
    /// (the sum of `grpc_server_msg_received_total`: every unary request and
    /// every stream message, watch creations and keepalives included), of
    /// `method` only (`Range`, `Put`, `Watch`, `LeaseKeepAlive`, ...) when given.
    /// A client's activity as the server saw it: e.g. evidence that a daemon
    /// has retried, or proof that it does not spin.
    ///
    /// # Errors
    /// As [`EtcdServer::metrics`].
    pub fn grpc_messages_received(&self, method: Option<&str>) -> Result<u64, EtcdServerError> {
        let text = self.metrics()?;
        let method = method.map(|m| format!("grpc_method=\"{m}\""));
        Ok(text
            .lines()
            .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
            .filter(|l| method.as_ref().is_none_or(|m| l.contains(m.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// Waits until `/health` is true, failing early if the process exits.
    ///
    /// # Errors
    /// [`EtcdServerError::StartFailed`] with the tail of etcd's log.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.start_failed(format!("etcd exited with {status}")));
                }
            } else {
                return Err(self.start_failed("etcd is not running".into()));
            }
            if self.is_healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.start_failed(format!("not healthy after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops etcd gracefully: SIGTERM, then waits for it to exit (SIGKILL
    /// after 10 s). The data stays for [`EtcdServer::restart`].
    ///
    /// # Errors
    /// An IO error waiting for the process.
    pub fn stop(&mut self) -> Result<(), EtcdServerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    child.wait().map_err(io_err("waiting for etcd"))?;
                    return Ok(());
                }
                Err(e) => return Err(io_err("waiting for etcd")(e)),
            }
        }
    }

    /// Kills etcd with SIGKILL (a crash) and reaps it.
    ///
    /// # Errors
    /// An IO error waiting for the process.
    pub fn kill(&mut self) -> Result<(), EtcdServerError> {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = child.kill();
            child.wait().map_err(io_err("waiting for etcd"))?;
        }
        Ok(())
    }

    /// Starts the process again (stopping it first if it runs) with the same
    /// ports and data directory, and waits until it is healthy.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.stop()?;
        self.spawn()?;
        self.wait_healthy(START_TIMEOUT)
    }

    /// Starts the process again without waiting for health (a cluster member
    /// cannot be healthy without a quorum).
    ///
    /// # Errors
    /// An IO error spawning etcd.
    pub fn start_again(&mut self) -> Result<(), EtcdServerError> {
        self.spawn()
    }

    /// Runs `etcdctl` (v3 API) against this member with the right endpoint
    /// and certificates, returning its stdout.
    ///
    /// # Errors
    /// [`EtcdServerError::Io`] when it cannot run or exits with an error
    /// (the message includes its stderr).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, EtcdServerError> {
        let out = self.etcdctl_output(args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(EtcdServerError::Io {
                what: format!("etcdctl {args:?}"),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            })
        }
    }

    fn etcdctl_output(&self, args: &[&str]) -> Result<Output, EtcdServerError> {
        let endpoint = format!("{}://127.0.0.1:{}", self.scheme(), self.ports.client);
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
            None => Command::new("etcdctl"),
        };
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"));
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        cmd.args(args).stdin(Stdio::null()).output().map_err(|e| {
            EtcdServerError::NotInstalled(format!("cannot run etcdctl ({e}): {INSTALL_HINT}"))
        })
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn is_port_clash(e: &EtcdServerError) -> bool {
    matches!(e, EtcdServerError::StartFailed { log_tail, .. } if log_tail.contains("address already in use"))
}

/// A tiny HTTP/1.0 GET of `/health`, true when etcd says `"health":"true"`.
/// A plain HTTP/1.0 GET: the whole answer (head and body), `None` when
/// the server cannot be reached.
fn http_get_text(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    Some(body)
}

/// A multi-member etcd cluster on loopback (or in network namespaces).
///
/// ```no_run
/// use twill_testbed::etcd::EtcdCluster;
/// let mut cluster = EtcdCluster::start(3).unwrap();
/// cluster.stop_member(0).unwrap();   // the other two keep a quorum
/// cluster.start_member(0).unwrap();
/// cluster.wait_healthy().unwrap();
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members on free loopback ports and waits until all are
    /// healthy.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start(n: usize) -> Result<Self, EtcdServerError> {
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let opts = vec![EtcdOptions::default(); n];
            match Self::start_with(opts) {
                Err(e) if is_port_clash(&e) => last = Some(e),
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| EtcdServerError::StartFailed {
            name: "cluster".into(),
            reason: "no free ports".into(),
            log_tail: String::new(),
        }))
    }

    /// Starts one member per entry of `opts` (e.g. one per network namespace
    /// with [`EtcdOptions::in_netns`]) and waits until all are healthy. With
    /// TLS, all members share one generated PKI.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start_with(opts: Vec<EtcdOptions>) -> Result<Self, EtcdServerError> {
        check_etcd().map_err(EtcdServerError::NotInstalled)?;
        let token = unique("twill-cluster");
        let mut members: Vec<EtcdServer> = Vec::with_capacity(opts.len());
        let mut free = free_ports(opts.iter().filter(|o| o.netns.is_none()).count())?.into_iter();
        // One PKI for all members: its server certificate names every member's IP.
        let ips: Vec<IpAddr> = opts.iter().filter_map(EtcdOptions::advertised_ip).collect();
        let mut shared_tls: Option<TlsFiles> = None;
        for (i, o) in opts.into_iter().enumerate() {
            let ports = match o.netns {
                Some(_) => NETNS_PORTS,
                None => free.next().unwrap_or(NETNS_PORTS),
            };
            let name = format!("{token}-m{i}");
            let tls = if o.tls { shared_tls.clone() } else { None };
            let member = EtcdServer::prepare(name, token.clone(), o, ports, tls, &ips)?;
            if shared_tls.is_none() {
                shared_tls.clone_from(&member.tls);
            }
            members.push(member);
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.initial_cluster.clone_from(&initial);
        }
        let mut cluster = EtcdCluster { members };
        for m in &mut cluster.members {
            m.spawn()?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    /// Waits until every running member is healthy.
    ///
    /// # Errors
    /// [`EtcdServerError::StartFailed`] naming the first unhealthy member.
    pub fn wait_healthy(&mut self) -> Result<(), EtcdServerError> {
        for m in &mut self.members {
            if m.child.is_some() {
                m.wait_healthy(START_TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// The number of members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URLs of all members.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// Member `i`.
    ///
    /// # Errors
    /// [`EtcdServerError::NoSuchMember`].
    pub fn member(&self, i: usize) -> Result<&EtcdServer, EtcdServerError> {
        let len = self.members.len();
        self.members
            .get(i)
            .ok_or(EtcdServerError::NoSuchMember { index: i, len })
    }

    /// Member `i`, mutably.
    ///
    /// # Errors
    /// [`EtcdServerError::NoSuchMember`].
    pub fn member_mut(&mut self, i: usize) -> Result<&mut EtcdServer, EtcdServerError> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(EtcdServerError::NoSuchMember { index: i, len })
    }

    /// Stops member `i` gracefully (SIGTERM).
    ///
    /// # Errors
    /// As [`EtcdServer::stop`].
    pub fn stop_member(&mut self, i: usize) -> Result<(), EtcdServerError> {
        self.member_mut(i)?.stop()
    }

    /// Kills member `i` (SIGKILL).
    ///
    /// # Errors
    /// As [`EtcdServer::kill`].
    pub fn kill_member(&mut self, i: usize) -> Result<(), EtcdServerError> {
        self.member_mut(i)?.kill()
    }

    /// Starts member `i` again with its data; does not wait for health (see
    /// [`EtcdCluster::wait_healthy`]).
    ///
    /// # Errors
    /// As [`EtcdServer::start_again`].
    pub fn start_member(&mut self, i: usize) -> Result<(), EtcdServerError> {
        self.member_mut(i)?.start_again()
    }

    /// Stops member `i` and starts it again, waiting until it is healthy
    /// (the others must hold a quorum).
    ///
    /// # Errors
    /// As [`EtcdServer::restart`].
    pub fn restart_member(&mut self, i: usize) -> Result<(), EtcdServerError> {
        self.member_mut(i)?.restart()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn have_etcd() -> bool {
        match check_etcd() {
            Ok(()) => true,
            Err(reason) => {
                crate::skip_or_fail(&reason);
                false
            }
        }
    }

    #[test]
    fn single_server_starts_stops_restarts() {
        if !have_etcd() {
            return;
        }
        let mut etcd = EtcdServer::start().unwrap();
        assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
        let pid = etcd.pid().unwrap();
        etcd.etcdctl(&["put", "k", "v"]).unwrap();
        etcd.stop().unwrap();
        assert!(!etcd.is_healthy());
        assert!(etcd.pid().is_none());
        etcd.restart().unwrap();
        assert_ne!(etcd.pid().unwrap(), pid);
        assert_eq!(
            etcd.etcdctl(&["get", "k", "--print-value-only"])
                .unwrap()
                .trim(),
            "v"
        );
        let dir = etcd.dir().to_path_buf();
        drop(etcd);
        assert!(!dir.exists(), "data dir removed on drop");
    }

    #[test]
    fn parallel_servers_get_distinct_ports() {
        if !have_etcd() {
            return;
        }
        let hs: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(EtcdServer::start))
            .collect();
        let servers: Vec<EtcdServer> = hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        let mut eps: Vec<String> = servers.iter().map(EtcdServer::endpoint).collect();
        eps.sort();
        eps.dedup();
        assert_eq!(eps.len(), 4);
    }

    #[test]
    fn tls_server_requires_client_certificates() {
        if !have_etcd() {
            return;
        }
        let etcd = EtcdServer::start_tls().unwrap();
        assert!(etcd.endpoint().starts_with("https://"));
        etcd.etcdctl(&["put", "k", "v"]).unwrap();
        let t = etcd.tls_files().unwrap();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoint()))
            .arg(format!("--cacert={}", t.ca.display()))
            .args(["--dial-timeout=1s", "--command-timeout=2s", "get", "k"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "no client cert must be refused");
    }

    #[test]
    fn three_member_cluster_survives_one_member_down() {
        if !have_etcd() {
            return;
        }
        let mut c = EtcdCluster::start(3).unwrap();
        assert_eq!(c.endpoints().len(), 3);
        c.member(0).unwrap().etcdctl(&["put", "k", "v1"]).unwrap();
        c.kill_member(0).unwrap();
        // A proposal forwarded to the dead leader is lost and times out;
        // clients retry, and so does this test.
        let mut put = Err(EtcdServerError::NoSuchMember { index: 0, len: 0 });
        for _ in 0..4 {
            put = c.member(1).unwrap().etcdctl(&["put", "k", "v2"]);
            if put.is_ok() {
                break;
            }
        }
        put.unwrap();
        c.start_member(0).unwrap();
        c.wait_healthy().unwrap();
        let v = c
            .member(0)
            .unwrap()
            .etcdctl(&["get", "k", "--print-value-only"])
            .unwrap();
        assert_eq!(v.trim(), "v2");
        assert!(matches!(
            c.member(3),
            Err(EtcdServerError::NoSuchMember { .. })
        ));
    }

    #[test]
    fn member_in_a_network_namespace_listens_on_its_ip_and_loopback() {
        if !have_etcd() {
            return;
        }
        if let Err(reason) = crate::check_root() {
            crate::skip_or_fail(&reason);
            return;
        }
        let ns = crate::netns::Netns::new("etcd").unwrap();
        ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"])
            .unwrap();
        let ip = Ipv4Addr::new(10, 99, 0, 1);
        let mut etcd = EtcdServer::start_with(&EtcdOptions::in_netns(ns.name(), ip)).unwrap();
        assert_eq!(etcd.endpoint(), "http://10.99.0.1:2379");
        assert!(etcd.is_healthy());
        // etcdctl inside the namespace talks to the default 127.0.0.1:2379.
        etcd.etcdctl(&["put", "k", "v"]).unwrap();
        let out = ns
            .exec(
                "etcdctl",
                &[
                    "--endpoints=http://10.99.0.1:2379",
                    "get",
                    "k",
                    "--print-value-only",
                ],
            )
            .unwrap();
        assert_eq!(out.trim(), "v");
        etcd.kill().unwrap();
        assert!(etcd.pid().is_none());
        assert!(!etcd.is_healthy());
    }
    #[test]
    fn members_on_ipv6_addresses_form_a_cluster_reachable_at_bracketed_urls() {
        if !have_etcd() {
            return;
        }
        if let Err(reason) = crate::check_root() {
            crate::skip_or_fail(&reason);
            return;
        }
        let lan = crate::netns::Lan::with_underlay(2, crate::netns::Underlay::Ipv6Only).unwrap();
        let opts: Vec<EtcdOptions> = lan
            .hosts
            .iter()
            .map(|h| EtcdOptions::in_netns_v6(h.ns.name(), h.addr6.unwrap()))
            .collect();
        let c = EtcdCluster::start_with(opts).unwrap();
        assert_eq!(
            c.endpoints(),
            vec!["http://[fd00:10::2]:2379", "http://[fd00:10::3]:2379"]
        );
        c.member(0).unwrap().etcdctl(&["put", "k", "v6"]).unwrap();
        // From the other host, over IPv6 only.
        let out = lan.hosts[1]
            .ns
            .exec(
                "etcdctl",
                &[
                    "--endpoints=http://[fd00:10::2]:2379",
                    "get",
                    "k",
                    "--print-value-only",
                ],
            )
            .unwrap();
        assert_eq!(out.trim(), "v6");
    }
}
