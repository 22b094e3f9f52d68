//! flannel's `-ip-masq` masquerade and forward rules, in an nftables table
//! of our own, replaced atomically by one `nft -f` transaction (no iptables
//! lock, flannel issue #933). Blocking (it runs `nft`): the agent calls it
//! off the runtime.

use std::io::Write;
use std::process::{Command, Stdio};

use twill_model::Ipv4Network;

use crate::AgentError;

/// Our table; nothing outside it is touched.
pub const TABLE: &str = "twill";

/// The ruleset flannel's iptables rules express, as one nft script that
/// creates or replaces `table ip twill` in a single transaction.
#[must_use]
pub fn ruleset(network: Ipv4Network, subnet: Ipv4Network) -> String {
    format!(
        "table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr {network} return\n\
         \t\tip saddr {network} ip daddr {subnet} return\n\
         \t\tip saddr != {network} ip daddr {subnet} return\n\
         \t\tip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {network} ip daddr {network} masquerade fully-random\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {network} accept\n\
         \t\tip daddr {network} accept\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(script: &str) -> Result<(), AgentError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(AgentError::NftSpawn)?;
    // A write error means nft exited early; its status and stderr say why.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(AgentError::NftSpawn)?;
    if !out.status.success() {
        return Err(AgentError::Nft {
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; "),
        });
    }
    Ok(())
}

/// Installs (or replaces) the masquerade rules.
///
/// # Errors
/// When `nft` is missing or refuses the rules.
pub fn apply(network: Ipv4Network, subnet: Ipv4Network) -> Result<(), AgentError> {
    nft(&ruleset(network, subnet))
}

/// Removes our table if present.
///
/// # Errors
/// When `nft` is missing or fails.
pub fn remove() -> Result<(), AgentError> {
    nft(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_matches_flannels_rules() {
        let r = ruleset(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.7.0/24".parse().unwrap(),
        );
        assert!(r.starts_with("table ip twill {}\ndelete table ip twill\n"));
        assert!(r.contains("ip saddr 10.5.7.0/24 ip daddr 10.5.0.0/16 return"));
        assert!(r.contains("ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"));
        assert!(r.contains("ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random"));
        assert!(r.contains("ip daddr 10.5.0.0/16 accept"));
    }
}
