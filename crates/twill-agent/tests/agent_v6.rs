//! The agent on dual-stack and IPv6-only networks, on the in-memory
//! registry and a backend of the test's own: the lease carries
//! `PublicIPv6`, subnet.env gets flannel's IPv6 lines, and a restart asks
//! for both halves again. With `-ip-masq`, one test runs the agent inside
//! a network namespace of its own: nft tables and masquerading on the real
//! kernel.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{next, underlay, DEADLINE};
use tokio::sync::broadcast;
use twill_agent::{Agent, AgentError, AgentEvent, AgentOption, AgentOptions};
use twill_backend::{async_trait, Backend, BackendError, BackendRegistry, HostContext};
use twill_backend::{LocalSetup, ReconcileReport};
use twill_model::{LeaseAttrs, SubnetKey, SubnetLease};
use twill_subnet::{MemoryRegistry, Registry};
use twill_testbed::netns::Netns;

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"plain"}}"#;
const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:6::/56","Backend":{"Type":"plain"}}"#;
const OUR_IP6: &str = "fd00::1";

/// Records the peers of each pass.
struct PlainBackend {
    passes: Arc<Mutex<Vec<Vec<SubnetKey>>>>,
}

#[async_trait]
impl Backend for PlainBackend {
    fn backend_type(&self) -> &str {
        "plain"
    }
    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        Ok(LocalSetup {
            attrs: LeaseAttrs::new(host.public_ip, "plain"),
            mtu: 1400,
        })
    }
    async fn activate(&mut self, _own: &SubnetLease) -> Result<(), BackendError> {
        Ok(())
    }
    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        self.passes
            .lock()
            .unwrap()
            .push(peers.iter().map(|p| p.key).collect());
        Ok(ReconcileReport::default())
    }
}

fn options(subnet_file: &Path, seed: u64) -> AgentOptions {
    let mut o = AgentOptions::new(underlay());
    o.public_ipv6 = OUR_IP6.parse().ok();
    o.subnet_file = Some(subnet_file.to_path_buf());
    o.protect_host = false;
    o.reconcile_interval = Duration::from_secs(3600);
    o.retry_interval = Duration::from_millis(100);
    o.rng_seed = Some(seed);
    o
}

struct Harness {
    events: broadcast::Receiver<AgentEvent>,
    stop: twill_agent::ShutdownHandle,
    running: tokio::task::JoinHandle<Result<(), AgentError>>,
}

fn start(registry: Arc<MemoryRegistry>, options: AgentOptions) -> Harness {
    let passes = Arc::new(Mutex::new(Vec::new()));
    let mut backends = BackendRegistry::new();
    backends.register("plain", move |_| {
        Ok(Box::new(PlainBackend {
            passes: passes.clone(),
        }))
    });
    let agent = Agent::new(registry, backends, options).unwrap();
    let (events, stop) = (agent.events(), agent.shutdown_handle());
    let running = tokio::spawn(agent.run());
    Harness {
        events,
        stop,
        running,
    }
}

fn registry(config: &str) -> Arc<MemoryRegistry> {
    let r = Arc::new(MemoryRegistry::new());
    r.set_config(config);
    r
}

/// Runs an agent until its subnet file is written and its first pass is
/// done; returns the lease and the file's text.
async fn run_once(registry: &Arc<MemoryRegistry>, o: AgentOptions) -> (SubnetLease, String) {
    let file = o.subnet_file.clone().unwrap();
    let mut h = start(registry.clone(), o);
    let lease = next(&mut h.events, |e| match e {
        AgentEvent::LeaseAcquired(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::SubnetFileWritten { .. }).then_some(())
    })
    .await;
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Reconciled(_)).then_some(())
    })
    .await;
    h.stop.shutdown();
    h.running.await.unwrap().unwrap();
    (lease, std::fs::read_to_string(file).unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn dual_stack_lease_subnet_env_and_restart_keep_both_halves() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subnet.env");
    let registry = registry(DUAL);
    let (lease, text) = run_once(&registry, options(&file, 1)).await;
    let v6 = lease.key.ipv6.expect("a dual-stack lease");
    assert_eq!(lease.attrs.public_ip.to_string(), "192.0.2.1");
    assert_eq!(lease.attrs.public_ipv6, OUR_IP6.parse().ok());
    assert_eq!(
        text,
        format!(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={}/{}\nFLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
            lease.key.first_host(),
            lease.key.ipv4.prefix(),
            lease.key.first_ipv6_host().unwrap(),
        )
    );
    assert!(v6.to_string().starts_with("fd00:5:0:"));
    // The stored value is flannel's (PublicIPv6 beside PublicIP).
    let stored = registry.list_leases().await.unwrap();
    assert_eq!(stored.leases.len(), 1);
    assert_eq!(
        stored.leases[0].attrs.to_json().unwrap(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"plain"}"#
    );

    // The lease is gone (expired while the host was down): another seed
    // would draw other subnets, but subnet.env asks for both halves again.
    registry.delete_lease(&lease.key).await.unwrap();
    let (again, text_again) = run_once(&registry, options(&file, 99)).await;
    assert_eq!(again.key, lease.key);
    assert_eq!(text_again, text);
}

#[tokio::test(flavor = "current_thread")]
async fn ipv6_only_writes_no_ipv4_lines_and_sees_ipv6_peers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subnet.env");
    let registry = registry(V6_ONLY);
    let peer: SubnetKey = "0.0.0.0-0&fd00:6:0:77::-64".parse().unwrap();
    let mut attrs = LeaseAttrs::new("0.0.0.0".parse().unwrap(), "plain");
    attrs.public_ipv6 = "fd00::77".parse().ok();
    registry
        .create_lease(&peer, &attrs, Some(Duration::from_secs(600)))
        .await
        .unwrap();

    // An IPv6-only host: no IPv4 address on its underlay.
    let mut o = options(&file, 1);
    o.underlay.addr = None;
    o.public_ip = None;
    let mut h = start(registry.clone(), o);
    let lease = next(&mut h.events, |e| match e {
        AgentEvent::LeaseAcquired(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert!(lease.key.is_ipv6_only(), "{}", lease.key);
    // flannel's IPv6-only value: PublicIP 0.0.0.0, whatever the underlay's IPv4.
    assert_eq!(lease.attrs.public_ip.to_string(), "0.0.0.0");
    assert_eq!(lease.attrs.public_ipv6, OUR_IP6.parse().ok());
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Reconciled(p) if p.peers == 1).then_some(())
    })
    .await;
    h.stop.shutdown();
    h.running.await.unwrap().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text,
        format!(
            "FLANNEL_IPV6_NETWORK=fd00:6::/56\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
            lease.key.first_ipv6_host().unwrap()
        )
    );
    assert_eq!(
        twill_agent::subnet_file::previous_subnet(&file),
        Some(lease.key)
    );
}

/// Runs the agent on `config` with `change` made to the options, and
/// checks it stops with an error naming `option` and saying `says`, before
/// any lease is taken.
async fn refused(
    config: &str,
    change: impl FnOnce(&mut AgentOptions),
    option: AgentOption,
    says: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(config);
    let mut o = options(&dir.path().join("subnet.env"), 1);
    change(&mut o);
    let h = start(registry.clone(), o);
    let err = tokio::time::timeout(DEADLINE, h.running)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::InvalidOption { option: o, .. } if *o == option),
        "{err}"
    );
    assert!(err.to_string().contains(says), "{err}");
    assert!(registry.list_leases().await.unwrap().leases.is_empty());
}

/// EnableIPv6 without a `public_ipv6`: an error naming the option and the
/// underlay that has no IPv6 address, before any lease is taken.
#[tokio::test(flavor = "current_thread")]
async fn ipv6_network_without_public_ipv6_is_refused() {
    refused(
        DUAL,
        |o| o.public_ipv6 = None,
        AgentOption::PublicIpv6,
        "underlay eth0 has no global IPv6 address",
    )
    .await;
}

/// An IPv6-only host (no IPv4 address) on a network with IPv4 on: an error
/// naming the option and the underlay, before any lease is taken.
#[tokio::test(flavor = "current_thread")]
async fn ipv4_network_on_an_ipv6_only_host_is_refused() {
    refused(
        DUAL,
        |o| {
            o.underlay.addr = None;
            o.public_ip = None;
        },
        AgentOption::PublicIp,
        "EnableIPv4 true and underlay eth0 has no IPv4 address",
    )
    .await;
}

/// `-ip-masq` on a dual-stack network, on the real kernel: the agent (and
/// every `nft` it runs) lives in a host namespace of the test's own, with a
/// container namespace behind a veth and an "outside" namespace on another.
/// `table ip6 twill` holds flannel's rules for the lease's IPv6 subnet; a
/// container's datagram to an address outside `IPv6Network` arrives from
/// the host's address, one to another host's subnet from the container's
/// own; a stop with release leaves neither table.
#[test]
fn ip_masq_masquerades_ipv6_leaving_the_network_only() {
    twill_testbed::require_root!();
    if let Err(e) = std::process::Command::new("nft").arg("--version").output() {
        twill_testbed::skip_or_fail(&format!("needs nft (nftables): {e}"));
        return;
    }
    let host = Netns::new("masq-host").unwrap();
    let container = Netns::new("masq-ctr").unwrap();
    let outside = Netns::new("masq-out").unwrap();
    // The outside world: a LAN of its own between the host and `outside`.
    let (host_addr, outside_addr): (Ipv6Addr, Ipv6Addr) = (
        "fd99:6d61:7371::1".parse().unwrap(),
        "fd99:6d61:7371::2".parse().unwrap(),
    );
    veth((&host, "to-out", host_addr), (&outside, outside_addr), 64);
    host.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let registry = registry(DUAL);
    let mut o = options(&dir.path().join("subnet.env"), 1);
    o.ip_masq = true;
    o.release_on_exit = true;
    let netns_of = |path: &str| std::fs::metadata(path).unwrap().ino();
    let ours = netns_of("/proc/thread-self/ns/net");
    host.run(|| {
        // Threads and processes started from here (tokio's blocking pool,
        // the backend thread, nft) inherit this namespace.
        assert_ne!(netns_of("/proc/thread-self/ns/net"), ours);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut h = start(registry.clone(), o);
            let lease = next(&mut h.events, |e| match e {
                AgentEvent::LeaseAcquired(l) => Some(l.clone()),
                _ => None,
            })
            .await;
            // Activation (masquerade rules included) precedes the first pass.
            next(&mut h.events, |e| {
                matches!(e, AgentEvent::Reconciled(_)).then_some(())
            })
            .await;
            let (v4, v6, net6) = (lease.key.ipv4, lease.key.ipv6.unwrap(), "fd00:5::/56");
            let ip6 = host
                .exec("nft", &["list", "table", "ip6", "twill"])
                .unwrap();
            for rule in [
                format!("ip6 saddr {v6} ip6 daddr {net6} return"),
                format!("ip6 saddr {net6} ip6 daddr {v6} return"),
                format!("ip6 saddr != {net6} ip6 daddr {v6} return"),
                format!("ip6 saddr {net6} ip6 daddr != ff00::/8 masquerade fully-random"),
                format!("ip6 saddr != {net6} ip6 daddr {net6} masquerade fully-random"),
                format!("ip6 daddr {net6} accept"),
            ] {
                assert!(ip6.contains(&rule), "{rule} missing from\n{ip6}");
            }
            let ip = host.exec("nft", &["list", "table", "ip", "twill"]).unwrap();
            let rule4 = format!("ip saddr {v4} ip daddr 10.5.0.0/16 return");
            assert!(ip.contains(&rule4), "{rule4} missing from\n{ip}");

            // A container of our subnet, behind the bridge address.
            let bridge = lease.key.first_ipv6_host().unwrap();
            let pod = Ipv6Addr::from(u128::from(bridge) + 1);
            veth((&host, "to-pod", bridge), (&container, pod), 64);
            ip_line(&container, &format!("-6 route add default via {bridge}"));
            // Another host's subnet of IPv6Network, reached through `outside`
            // here only so that one listener sees both datagrams.
            let other: Ipv6Addr = ["fd00:5:0:fe::", "fd00:5:0:fd::"]
                .iter()
                .map(|a| a.parse().unwrap())
                .find(|a| *a != v6.network())
                .unwrap();
            let peer_pod = Ipv6Addr::from(u128::from(other) + 2);
            ip_line(&outside, &format!("addr add {peer_pod}/128 dev eth0 nodad"));
            ip_line(
                &host,
                &format!("-6 route add {other}/64 via {outside_addr}"),
            );

            let listener = outside
                .run(|| UdpSocket::bind("[::]:7099"))
                .unwrap()
                .unwrap();
            let sender = container
                .run(|| UdpSocket::bind(SocketAddr::from((pod, 0))))
                .unwrap()
                .unwrap();
            let to_outside = source_seen(&sender, &listener, (outside_addr, 7099).into());
            assert_eq!(
                to_outside,
                IpAddr::V6(host_addr),
                "masqueraded to the host's address"
            );
            let to_peer = source_seen(&sender, &listener, (peer_pod, 7099).into());
            assert_eq!(
                to_peer,
                IpAddr::V6(pod),
                "not masqueraded inside IPv6Network"
            );

            h.stop.shutdown();
            h.running.await.unwrap().unwrap();
            let tables = host.exec("nft", &["list", "tables"]).unwrap();
            assert!(!tables.contains("twill"), "{tables}");
        });
    })
    .unwrap();
}

/// `ip -n NS ...`, the arguments written as one line.
fn ip_line(ns: &Netns, line: &str) {
    ns.ip(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
}

/// A veth pair from `a`'s `a_end` to `b`'s `eth0`, both up with their
/// addresses (no duplicate detection: usable at once).
fn veth(a: (&Netns, &str, Ipv6Addr), b: (&Netns, Ipv6Addr), prefix: u8) {
    let ((a, a_end, a_addr), (b, b_addr)) = (a, b);
    ip_line(
        a,
        &format!(
            "link add {a_end} type veth peer name eth0 netns {}",
            b.name()
        ),
    );
    ip_line(a, &format!("addr add {a_addr}/{prefix} dev {a_end} nodad"));
    ip_line(a, &format!("link set {a_end} up"));
    ip_line(b, &format!("addr add {b_addr}/{prefix} dev eth0 nodad"));
    ip_line(b, "link set eth0 up");
}

/// Sends datagrams to `to` until `listener` receives one of them (each
/// destination's marker is its own, so an earlier flow's late copy is not
/// taken for this one); returns the source address it arrived from.
fn source_seen(sender: &UdpSocket, listener: &UdpSocket, to: SocketAddr) -> IpAddr {
    let marker = to.to_string();
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut buf = [0u8; 128];
    while std::time::Instant::now() < deadline {
        sender.send_to(marker.as_bytes(), to).unwrap();
        // A timeout means "not yet": send again.
        while let Ok((n, from)) = listener.recv_from(&mut buf) {
            if &buf[..n] == marker.as_bytes() {
                return from.ip();
            }
        }
    }
    panic!("no datagram to {to} arrived within {DEADLINE:?}");
}
