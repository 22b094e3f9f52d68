//! The agent on dual-stack and IPv6-only networks, on the in-memory
//! registry and a backend of the test's own: the lease carries
//! `PublicIPv6`, subnet.env gets flannel's IPv6 lines, and a restart asks
//! for both halves again.

#![allow(clippy::unwrap_used)]

mod common;

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

    let mut h = start(registry.clone(), options(&file, 1));
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

/// EnableIPv6 without a `public_ipv6`: an error naming the option, before
/// any lease is taken.
#[tokio::test(flavor = "current_thread")]
async fn ipv6_network_without_public_ipv6_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(DUAL);
    let mut o = options(&dir.path().join("subnet.env"), 1);
    o.public_ipv6 = None;
    let h = start(registry.clone(), o);
    let err = tokio::time::timeout(DEADLINE, h.running)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::InvalidOption {
                option: AgentOption::PublicIpv6,
                ..
            }
        ),
        "{err}"
    );
    assert!(registry.list_leases().await.unwrap().leases.is_empty());
    // The message names the underlay that has no IPv6 address.
    assert!(
        err.to_string()
            .contains("underlay eth0 has no global IPv6 address"),
        "{err}"
    );
}
