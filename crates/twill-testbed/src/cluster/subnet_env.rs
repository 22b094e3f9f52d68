//! Host subnet files, as the daemons write them.

use ipnetwork::Ipv4Network;

use super::{io_err, ClusterError, TwillCluster};

/// A parsed `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnvFile {
    /// `FLANNEL_NETWORK`.
    pub network: Ipv4Network,
    /// `FLANNEL_SUBNET` (the host's first address and the subnet's length,
    /// e.g. `192.168.4.1/24`).
    pub subnet: Ipv4Network,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
    /// The whole file.
    pub text: String,
}

impl SubnetEnvFile {
    /// Parses the file's text.
    ///
    /// # Errors
    /// [`ClusterError::Parse`] when a variable is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        let var = |name: &str| -> Result<&str, ClusterError> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
                .ok_or_else(|| ClusterError::Parse {
                    what: format!("subnet.env ({name} missing)"),
                    text: text.into(),
                })
        };
        let bad = |name: &str| ClusterError::Parse {
            what: format!("subnet.env ({name})"),
            text: text.into(),
        };
        Ok(SubnetEnvFile {
            network: var("FLANNEL_NETWORK")?
                .parse()
                .map_err(|_| bad("FLANNEL_NETWORK"))?,
            subnet: var("FLANNEL_SUBNET")?
                .parse()
                .map_err(|_| bad("FLANNEL_SUBNET"))?,
            mtu: var("FLANNEL_MTU")?
                .parse()
                .map_err(|_| bad("FLANNEL_MTU"))?,
            ipmasq: var("FLANNEL_IPMASQ")?
                .parse()
                .map_err(|_| bad("FLANNEL_IPMASQ"))?,
            text: text.into(),
        })
    }

    /// The leased subnet itself (`192.168.4.0/24` for `FLANNEL_SUBNET=192.168.4.1/24`).
    #[must_use]
    pub fn subnet_network(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet)
    }
}
impl TwillCluster {
    /// Host `i`'s subnet file, parsed.
    ///
    /// # Errors
    /// When it cannot be read (not written yet?) or parsed.
    pub fn subnet_env(&self, i: usize) -> Result<SubnetEnvFile, ClusterError> {
        self.check(i)?;
        let path = self.subnet_file(i);
        let text = std::fs::read_to_string(&path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        SubnetEnvFile::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_subnet_env() {
        let e = SubnetEnvFile::parse(
            "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.4.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(e.network.to_string(), "192.168.0.0/16");
        assert_eq!(e.subnet.to_string(), "192.168.4.1/24");
        assert_eq!(e.subnet_network().to_string(), "192.168.4.0/24");
        assert_eq!(e.mtu, 1450);
        assert!(!e.ipmasq);
        assert!(SubnetEnvFile::parse("FLANNEL_NETWORK=x\n").is_err());
    }
}
