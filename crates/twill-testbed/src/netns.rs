//! Network-namespace hosts on a shared underlay LAN.
//!
//! Every namespace is named `twl-<pid>-<counter>-<label>` and deleted on drop
//! (also while a failing test unwinds). [`Lan::new`] builds an underlay: a
//! bridge `br0` in its own `lan` namespace and one host namespace per host
//! (`h1`..`hn`), each attached by a veth pair whose host end is `eth0` with
//! `10.0.0.(i+1)/24`, MTU 1500, loopback up. Traffic never leaves these
//! namespaces.
//!
//! [`Lan::with_underlay`] builds the same LAN with an IPv6 underlay as well
//! ([`Underlay::DualStack`]: `eth0` also holds `fd00:10::(i+1)/64`) or
//! instead ([`Underlay::Ipv6Only`]: only `fd00:10::(i+1)/64`, no IPv4
//! address on the LAN at all, [`Host::addr`] is `0.0.0.0` as flannel's
//! `PublicIP` of such a host is). IPv6 addresses are added `nodad` so they are
//! usable at once instead of after duplicate address detection.
//!
//! ```no_run
//! use twill_testbed::netns::Lan;
//! let lan = Lan::new(2).unwrap();
//! let out = lan.hosts[0].ns.exec("ping", &["-c1", "-W1", "10.0.0.3"]).unwrap();
//! assert!(out.contains("1 received"));
//! // namespaces are removed when `lan` is dropped
//! ```

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::{Ipv4Network, Ipv6Network};
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

/// The address families of the underlay LAN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Underlay {
    /// `10.0.0.(i+1)/24` only (the seed article's LAN).
    #[default]
    Ipv4,
    /// `10.0.0.(i+1)/24` and `fd00:10::(i+1)/64` on the same `eth0`.
    DualStack,
    /// `fd00:10::(i+1)/64` only: no IPv4 address on the LAN.
    Ipv6Only,
}

impl Underlay {
    /// Whether hosts have an IPv4 address on the LAN.
    #[must_use]
    pub fn has_ipv4(self) -> bool {
        self != Underlay::Ipv6Only
    }

    /// Whether hosts have an IPv6 address on the LAN.
    #[must_use]
    pub fn has_ipv6(self) -> bool {
        self != Underlay::Ipv4
    }
}

/// Addresses of a container's `eth0` and the gateways (the bridge's
/// addresses) its default routes go through; either family may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerAddrs {
    /// IPv4 address with the subnet's prefix, and the gateway.
    pub v4: Option<(Ipv4Network, Ipv4Addr)>,
    /// IPv6 address with the subnet's prefix, and the gateway.
    pub v6: Option<(Ipv6Network, Ipv6Addr)>,
}

/// A host on the LAN: a namespace with `eth0` on the underlay.
#[derive(Debug)]
pub struct Host {
    /// `h1`, `h2`, ...
    pub name: String,
    /// Underlay address of `eth0` (10.0.0.(i+1)); `0.0.0.0` on an
    /// IPv6-only LAN.
    pub addr: Ipv4Addr,
    /// IPv6 underlay address of `eth0` (`fd00:10::(i+1)`), on a
    /// dual-stack or IPv6-only LAN.
    pub addr6: Option<Ipv6Addr>,
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
        self.add_container_with(
            bridge,
            ContainerAddrs {
                v4: Some((addr, gw)),
                v6: None,
            },
        )
    }

    /// [`Host::add_container`] for any mix of families: the bridge gets
    /// each family's gateway (with the address's prefix) when it is created,
    /// the container each address and a default route per family.
    ///
    /// # Errors
    /// When an `ip` command fails.
    pub fn add_container_with(
        &mut self,
        bridge: &str,
        addrs: ContainerAddrs,
    ) -> Result<&Netns, NetnsError> {
        if self.ns.ip(&["link", "show", bridge]).is_err() {
            self.ns.ip(&["link", "add", bridge, "type", "bridge"])?;
            if let Some((addr, gw)) = addrs.v4 {
                let gw_net = format!("{gw}/{}", addr.prefix());
                self.ns.ip(&["addr", "add", &gw_net, "dev", bridge])?;
            }
            if let Some((addr, gw)) = addrs.v6 {
                let gw_net = format!("{gw}/{}", addr.prefix());
                self.ns
                    .ip(&["-6", "addr", "add", &gw_net, "dev", bridge, "nodad"])?;
            }
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
        if let Some((addr, _)) = addrs.v4 {
            c.ip(&["addr", "add", &addr.to_string(), "dev", "eth0"])?;
        }
        if let Some((addr, _)) = addrs.v6 {
            c.ip(&[
                "-6",
                "addr",
                "add",
                &addr.to_string(),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        c.ip(&["link", "set", "eth0", "up"])?;
        if let Some((_, gw)) = addrs.v4 {
            c.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        }
        if let Some((_, gw)) = addrs.v6 {
            c.ip(&["-6", "route", "add", "default", "via", &gw.to_string()])?;
        }
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
    /// The IPv6 underlay prefix (`fd00:10::/64`) of a dual-stack or
    /// IPv6-only LAN.
    pub const UNDERLAY6: &'static str = "fd00:10::/64";

    /// Builds the LAN with `n` hosts (`n` ≤ 250), host `i` (1-based) at `10.0.0.(i+1)/24`.
    ///
    /// # Errors
    /// When an `ip` command fails (not root?).
    pub fn new(n: usize) -> Result<Self, NetnsError> {
        Self::with_underlay(n, Underlay::Ipv4)
    }

    /// Builds the LAN with `n` hosts (`n` ≤ 250) and the `underlay`'s
    /// families: host `i` (1-based) at `10.0.0.(i+1)/24` and/or
    /// `fd00:10::(i+1)/64`.
    ///
    /// # Errors
    /// When an `ip` command fails (not root?).
    pub fn with_underlay(n: usize, underlay: Underlay) -> Result<Self, NetnsError> {
        let lan = Netns::new("lan")?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "mtu", "1500", "up"])?;
        let mut lan = Self {
            hosts: Vec::with_capacity(n),
            lan,
        };
        for i in 1..=n {
            lan.add_host(i, underlay)?;
        }
        Ok(lan)
    }

    fn add_host(&mut self, i: usize, underlay: Underlay) -> Result<(), NetnsError> {
        let name = format!("h{i}");
        let ns = Netns::new(&name)?;
        let octet = u8::try_from(i + 1).map_err(|_| NetnsError::Io {
            what: format!("host number {i}"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let addr = if underlay.has_ipv4() {
            Ipv4Addr::new(10, 0, 0, octet)
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let addr6 = underlay
            .has_ipv6()
            .then(|| Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, u16::from(octet)));
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
        if underlay.has_ipv4() {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        }
        if let Some(a6) = addr6 {
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.hosts.push(Host {
            name,
            addr,
            addr6,
            underlay: "eth0".into(),
            containers: Vec::new(),
            ns,
        });
        Ok(())
    }
}
