//! A whole twill agent inside your own program, in about 60 lines: the
//! in-memory registry (swap in `twill_etcd::EtcdRegistry` to join flanneld
//! hosts) and a backend of our own that prints the routes it would program
//! (swap in yours: a VPN tunnel, a script). Two other hosts join, one
//! leaves; the agent reconciles after each change, then shuts down.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use twill_agent::{Agent, AgentEvent, AgentOptions, UnderlayInterface};
use twill_backend::{async_trait, Backend, BackendError, BackendRegistry, HostContext};
use twill_backend::{LocalSetup, ReconcileReport};
use twill_model::{LeaseAttrs, SubnetKey, SubnetLease};
use twill_subnet::{MemoryRegistry, Registry};

/// One "route" per peer, printed instead of programmed.
#[derive(Default)]
struct PrintBackend(BTreeSet<String>);

#[async_trait]
impl Backend for PrintBackend {
    fn backend_type(&self) -> &str {
        "print"
    }
    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        let attrs = LeaseAttrs::new(host.public_ip, "print");
        Ok(LocalSetup {
            attrs,
            mtu: host.underlay.mtu,
        })
    }
    async fn activate(&mut self, own: &SubnetLease) -> Result<(), BackendError> {
        println!("our subnet: {}", own.key);
        Ok(())
    }
    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        let want: BTreeSet<String> = peers
            .iter()
            .map(|p| format!("{} via {}", p.key.ipv4, p.attrs.public_ip))
            .collect();
        want.difference(&self.0)
            .for_each(|r| println!("route add {r}"));
        self.0
            .difference(&want)
            .for_each(|r| println!("route del {r}"));
        let planned = want.symmetric_difference(&self.0).count();
        self.0 = want;
        Ok(ReconcileReport {
            planned,
            applied: planned,
            ..ReconcileReport::default()
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Arc::new(MemoryRegistry::new());
    registry.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"print"}}"#);
    let mut backends = BackendRegistry::new();
    backends.register("print", |_| Ok(Box::new(PrintBackend::default())));
    let (name, addr) = ("eth0".to_string(), Some("192.0.2.1".parse()?));
    let mut options = AgentOptions::new(UnderlayInterface {
        name,
        index: 0,
        mtu: 1500,
        addr,
        addr6: None,
    });
    options.subnet_file = None; // flanneld's is /run/flannel/subnet.env
    options.protect_host = false; // this demo has no kernel state to protect
    let agent = Agent::new(registry.clone(), backends, options)?;
    let (mut events, stop) = (agent.events(), agent.shutdown_handle());
    let running = tokio::spawn(agent.run());

    // Two other hosts join; when both are programmed, one leaves.
    for (key, ip) in [("10.5.7.0-24", "192.0.2.7"), ("10.5.9.0-24", "192.0.2.9")] {
        let attrs = LeaseAttrs::new(ip.parse()?, "print");
        let ttl = Some(Duration::from_secs(60));
        registry.create_lease(&key.parse()?, &attrs, ttl).await?;
    }
    let gone: SubnetKey = "10.5.7.0-24".parse()?;
    let mut left = false;
    let watch = async {
        // The channel closes when the agent ends.
        while let Ok(event) = events.recv().await {
            let AgentEvent::Reconciled(pass) = event else {
                continue;
            };
            if pass.peers == 2 && !left {
                left = registry.delete_lease(&gone).await.is_ok();
            } else if pass.peers == 1 && left {
                stop.shutdown();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), watch).await?;
    Ok(running.await??)
}
