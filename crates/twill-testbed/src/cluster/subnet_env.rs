//! Host subnet files, as the daemons write them, read through
//! [`twill_model::SubnetEnv`] (the one subnet.env parser of the workspace).

use std::ops::Deref;

use twill_model::SubnetEnv;

use super::{io_err, ClusterError, TwillCluster};

/// A `subnet.env` as read from a host: its variables, parsed by
/// [`SubnetEnv::parse_complete`] (so a daemon that leaves out `FLANNEL_MTU`
/// or `FLANNEL_IPMASQ`, or writes one twice, fails the read instead of
/// passing with a default), and the text itself, for tests that assert the
/// file byte for byte. It dereferences to the [`SubnetEnv`], so
/// `file.network`, `file.mtu` or `file.subnet_network()` read the variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnvFile {
    /// The variables.
    pub env: SubnetEnv,
    /// The whole file.
    pub text: String,
}

impl SubnetEnvFile {
    /// Parses the file's text.
    ///
    /// # Errors
    /// [`ClusterError::SubnetEnv`] when a variable is missing, repeated or
    /// malformed.
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        Ok(SubnetEnvFile {
            env: SubnetEnv::parse_complete(text).map_err(ClusterError::SubnetEnv)?,
            text: text.into(),
        })
    }
}

impl Deref for SubnetEnvFile {
    type Target = SubnetEnv;

    fn deref(&self) -> &SubnetEnv {
        &self.env
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
        let text = "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.4.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let e = SubnetEnvFile::parse(text).unwrap();
        assert_eq!(e.network.to_string(), "192.168.0.0/16");
        assert_eq!(e.subnet.to_string(), "192.168.4.1/24");
        assert_eq!(e.subnet_network().to_string(), "192.168.4.0/24");
        assert_eq!(e.mtu, 1450);
        assert!(!e.ip_masq);
        assert_eq!(e.text, text);
        assert!(matches!(
            SubnetEnvFile::parse("FLANNEL_NETWORK=x\n"),
            Err(ClusterError::SubnetEnv(_))
        ));
        // What a daemon must write, it must write: no defaults here.
        assert!(matches!(
            SubnetEnvFile::parse(
                "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.4.1/24\nFLANNEL_MTU=1450\n"
            ),
            Err(ClusterError::SubnetEnv(twill_model::ModelError::Missing {
                field: "FLANNEL_IPMASQ",
                ..
            }))
        ));
    }
}
