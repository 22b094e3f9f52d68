//! What the agent's test files share: waiting for an event, the underlay.

use std::time::Duration;

use tokio::sync::broadcast;
use twill_agent::{AgentEvent, UnderlayInterface};

/// Longest wait for any awaited event.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// An underlay that no kernel call looks at (`protect_host` is off in
/// these tests).
pub(crate) fn underlay() -> UnderlayInterface {
    UnderlayInterface {
        name: "eth0".into(),
        index: 0,
        mtu: 1500,
        addr: "192.0.2.1".parse().ok(),
        addr6: None,
    }
}

/// The first event `pick` accepts, within [`DEADLINE`].
pub(crate) async fn next<T>(
    events: &mut broadcast::Receiver<AgentEvent>,
    mut pick: impl FnMut(&AgentEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if let Some(t) = pick(&ev) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .expect("the event within the deadline")
}
