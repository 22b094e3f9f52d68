//! Network-namespace hosts on a shared underlay LAN.
//!
//! Every namespace is named `twl-<pid>-<counter>-<label>` and deleted on drop
//! (also while a failing test unwinds). [`Lan::new`] builds an underlay: a
//! bridge `br0` in its own `lan` namespace and one host namespace per host
//! (`h1`..`hn`), each attached by a veth pair whose host end is `eth0` with
//! `10.0.0.(i+1)/24`, MTU 1500, loopback up. Traffic never leaves these
//! namespaces.
//!
//! ```no_run
//! use twill_testbed::netns::Lan;
//! let lan = Lan::new(2).unwrap();
//! let out = lan.hosts[0].ns.exec("ping", &["-c1", "-W1", "10.0.0.3"]).unwrap();
//! assert!(out.contains("1 received"));
//! // namespaces are removed when `lan` is dropped
//! ```

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::Ipv4Network;
use nix::sched::{setns, CloneFlags};
use twill_netlink::{NetlinkError, NetlinkHandle};

/// Prefix of every namespace this module creates.
pub const NETNS_PREFIX: &str = "twl-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What can go wrong building namespaces.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// A command (`ip ...`) exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command could not be started, or a namespace file opened.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` failed.
    #[error("setns into {ns}: {source}")]
    Setns {
        /// Namespace name.
        ns: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Opening a netlink socket inside the namespace failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The closure given to [`Netns::run`] panicked.
    #[error("thread in namespace {0} panicked")]
    Panicked(String),
}

fn run_cmd(mut cmd: Command) -> Result<String, NetnsError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out: Output = cmd.output().map_err(|source| NetnsError::Io {
        what: format!("running {line}"),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...` in the current (root) namespace.
fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let mut c = Command::new("ip");
    c.args(args);
    run_cmd(c)
}

/// A network namespace, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `twl-<pid>-<n>-<label>` with loopback up.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root?).
    pub fn new(label: &str) -> Result<Self, NetnsError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}-{label}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns list` shows it).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` running `program` inside the namespace (`ip netns exec NAME program`).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` inside the namespace and returns its stdout.
    ///
    /// # Errors
    /// When it cannot start or exits non-zero (stderr is in the error).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut c = self.command(program);
        c.args(args);
        run_cmd(c)
    }

    /// Runs `ip -n NAME ARGS...`.
    ///
    /// # Errors
    /// As [`Netns::exec`].
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        run_cmd(c)
    }

    /// Runs `f` on a fresh thread that has `setns(2)`-ed into this namespace;
    /// sockets it opens live in the namespace.
    ///
    /// # Errors
    /// When the namespace cannot be entered or `f` panics.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|source| NetnsError::Io {
            what: format!("opening {path}"),
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
                    ns: self.name.clone(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(self.name.clone()))?
        })
    }

    /// A netlink handle whose socket was opened inside this namespace.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the socket opened.
    pub fn netlink(&self) -> Result<NetlinkHandle, NetnsError> {
        Ok(self.run(NetlinkHandle::new)??)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "twill-testbed: could not delete namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Deletes `twl-<pid>-...` namespaces left by processes that no longer exist
/// (e.g. a test run killed with SIGKILL). Returns how many it removed.
///
/// # Errors
/// When `ip netns list` fails.
pub fn cleanup_stale() -> Result<usize, NetnsError> {
    let list = ip(&["netns", "list"])?;
    let mut removed = 0;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ip(&["netns", "del", name])?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Names of the namespaces this process created that still exist.
///
/// # Errors
/// When `ip netns list` fails.
pub fn own_namespaces() -> Result<Vec<String>, NetnsError> {
    let prefix = format!("{NETNS_PREFIX}{}-", std::process::id());
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect())
}

/// A host on the LAN: a namespace with `eth0` on the underlay.
#[derive(Debug)]
pub struct Host {
    /// `h1`, `h2`, ...
    pub name: String,
    /// Underlay address of `eth0` (10.0.0.(i+1)).
    pub addr: Ipv4Addr,
    /// Name of the underlay device (`eth0`).
    pub underlay: String,
    /// Containers added with [`Host::add_container`]. Declared before `ns` so
    /// they are dropped first.
    pub containers: Vec<Netns>,
    /// The host's namespace.
    pub ns: Netns,
}

impl Host {
    /// Adds a "container": a new namespace attached by a veth pair to
    /// `bridge` in this host (created with address `gw/prefix` and brought
    /// up if missing, docker0-like), with `addr` on its `eth0` and a default
    /// route via `gw`. Returns the container's namespace.
    ///
    /// # Errors
    /// When an `ip` command fails.
    pub fn add_container(
        &mut self,
        bridge: &str,
        addr: Ipv4Network,
        gw: Ipv4Addr,
    ) -> Result<&Netns, NetnsError> {
        if self.ns.ip(&["link", "show", bridge]).is_err() {
            self.ns.ip(&["link", "add", bridge, "type", "bridge"])?;
            let gw_net = format!("{gw}/{}", addr.prefix());
            self.ns.ip(&["addr", "add", &gw_net, "dev", bridge])?;
            self.ns.ip(&["link", "set", bridge, "up"])?;
        }
        let c = Netns::new(&format!("{}c{}", self.name, self.containers.len() + 1))?;
        let host_end = format!("vc{}", self.containers.len() + 1);
        self.ns.ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            c.name(),
        ])?;
        self.ns
            .ip(&["link", "set", &host_end, "master", bridge, "up"])?;
        c.ip(&["addr", "add", &addr.to_string(), "dev", "eth0"])?;
        c.ip(&["link", "set", "eth0", "up"])?;
        c.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        self.containers.push(c);
        let last = self.containers.len() - 1;
        Ok(&self.containers[last])
    }
}

/// An underlay LAN: bridge `br0` in its own namespace plus `n` hosts.
#[derive(Debug)]
pub struct Lan {
    /// The hosts, `h1`..`hn`. Declared before `lan` so they are dropped first.
    pub hosts: Vec<Host>,
    /// The namespace holding the bridge.
    pub lan: Netns,
}

impl Lan {
    /// The underlay prefix (`10.0.0.0/24`).
    pub const UNDERLAY: &'static str = "10.0.0.0/24";

    /// Builds the LAN with `n` hosts (`n` ≤ 250), host `i` (1-based) at `10.0.0.(i+1)/24`.
    ///
    /// # Errors
    /// When an `ip` command fails (not root?).
    pub fn new(n: usize) -> Result<Self, NetnsError> {
        let lan = Netns::new("lan")?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "mtu", "1500", "up"])?;
        let mut lan = Self {
            hosts: Vec::with_capacity(n),
            lan,
        };
        for i in 1..=n {
            lan.add_host(i)?;
        }
        Ok(lan)
    }

    fn add_host(&mut self, i: usize) -> Result<(), NetnsError> {
        let name = format!("h{i}");
        let ns = Netns::new(&name)?;
        let octet = u8::try_from(i + 1).map_err(|_| NetnsError::Io {
            what: format!("host number {i}"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let addr = Ipv4Addr::new(10, 0, 0, octet);
        let port = format!("p{i}");
        self.lan.ip(&[
            "link",
            "add",
            &port,
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            "1500",
            "netns",
            ns.name(),
        ])?;
        self.lan
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.hosts.push(Host {
            name,
            addr,
            underlay: "eth0".into(),
            containers: Vec::new(),
            ns,
        });
        Ok(())
    }
}
