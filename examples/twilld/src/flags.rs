//! flanneld's command line, as Go's `flag` package accepts it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

/// twilld: a flannel-compatible overlay network agent.
///
/// Flags keep flanneld's names and defaults and may be written `-flag=value`,
/// `-flag value`, `--flag=value` or `--flag value`. Each flag can also be set
/// with a `FLANNELD_<FLAG>` environment variable (`-etcd-endpoints` →
/// `FLANNELD_ETCD_ENDPOINTS`), as flanneld reads them.
#[derive(Debug, Clone, Parser)]
#[command(name = "twilld", version, disable_version_flag = true, about, long_about = None)]
pub struct Flags {
    /// Comma-separated list of etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd prefix under which the config and subnets are stored.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = twill_model::DEFAULT_PREFIX
    )]
    pub etcd_prefix: String,
    /// SSL key file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Username for BasicAuth to etcd.
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// Password for BasicAuth to etcd (never logged).
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// Interface (name or IP) to use for inter-host communication; may be repeated.
    #[arg(long, env = "FLANNELD_IFACE", action = ArgAction::Append, value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regex matching the first interface (by name or IP) to use; may be repeated.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", action = ArgAction::Append, value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// IP accessible by other nodes for inter-host communication (default: the interface's).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address accessible by other nodes, when the network config has
    /// EnableIPv6 (default: the interface's first global IPv6 address).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Filename where env variables (subnet, MTU, ...) will be written to.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Set up IP masquerade rule for traffic destined outside of the overlay network.
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub ip_masq: bool,
    /// The IP address on which to listen for health checks.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: Ipv4Addr,
    /// The port on which to listen for /healthz, /readyz and /metrics (0 to disable).
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Subnet lease renewal margin, in minutes.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
    /// Log verbosity (0 info, 1+ debug, 3+ trace), like flanneld's -v.
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0)]
    pub verbosity: u8,
    /// Print the version and exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub version: bool,

    // ---- beyond flanneld ----
    /// Subnet lease TTL (e.g. `24h`, `30s`). flannel's is 24 h.
    #[arg(long, env = "TWILLD_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How often to reconcile the kernel with the leases even when nothing
    /// changed, so hand-made damage is repaired (e.g. `10s`).
    #[arg(long, env = "TWILLD_RECONCILE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Delete our lease from etcd on SIGTERM/SIGINT (default: keep it, so a
    /// restart keeps the subnet and traffic keeps flowing).
    #[arg(long, env = "TWILLD_RELEASE_ON_EXIT", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub release_on_exit: bool,
    /// How long to wait for etcd and the config before retrying (e.g. `1s`).
    #[arg(long, env = "TWILLD_RETRY_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub retry_interval: Duration,
    /// Probe every peer's health through the overlay (ICMP; `-peer-health=false` sends none).
    #[arg(long, env = "TWILLD_PEER_HEALTH", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    pub peer_health: bool,
    /// Time between two health probes of one peer, at least (stretched by -peer-health-budget with many peers).
    #[arg(long, env = "TWILLD_PEER_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub peer_health_interval: Duration,
    /// Health probes sent per second at most, whatever the number of peers.
    #[arg(long, env = "TWILLD_PEER_HEALTH_BUDGET", default_value_t = 100)]
    pub peer_health_budget: u32,
    /// `twilld diagnose` only: print the report as JSON.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub json: bool,
}

impl Flags {
    /// Parses flanneld-style arguments (single-dash long flags accepted).
    ///
    /// # Errors
    /// clap's error, with its one-line message and usage.
    pub fn parse_from_go_style<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        Self::try_parse_from(normalize_go_flags(args))
    }
}

/// Rewrites Go-style `-name[=value]` into `--name[=value]`. Go's flag
/// package treats one and two dashes alike; clap needs two for long flags.
/// `-v` stays a short flag; everything after `--` is left alone.
#[must_use]
pub fn normalize_go_flags(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let is_single_dash_long = arg.starts_with('-')
            && !arg.starts_with("--")
            && arg.len() > 2
            && arg.as_bytes()[1].is_ascii_alphabetic()
            && !(arg.starts_with("-v=") || arg.starts_with("-h="));
        if is_single_dash_long {
            out.push(format!("-{arg}"));
        } else if let Some(level) = arg.strip_prefix("-v=") {
            out.push(format!("--v={level}"));
        } else {
            out.push(arg);
        }
    }
    out
}

/// Go-style durations (`90`, `500ms`, `1h30m`), parsed as the agent does.
pub use twill_agent::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        let mut v = vec!["twilld"];
        v.extend_from_slice(args);
        Flags::parse_from_go_style(v)
    }

    #[test]
    fn go_style_flags_are_accepted() {
        let f = parse(&[
            "-iface=10.0.0.2",
            "-etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--ip-masq",
            "-subnet-file=/tmp/x.env",
            "-v=2",
        ])
        .unwrap();
        assert_eq!(f.iface, ["10.0.0.2"]);
        assert_eq!(f.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert!(f.ip_masq);
        assert_eq!(f.subnet_file, PathBuf::from("/tmp/x.env"));
        assert_eq!(f.verbosity, 2);
        let f = parse(&[
            "-ip-masq=false",
            "-healthz-port",
            "8471",
            "-iface",
            "eth0",
            "-iface",
            "eth1",
        ])
        .unwrap();
        assert!(!f.ip_masq);
        assert_eq!(f.healthz_port, 8471);
        assert_eq!(f.iface, ["eth0", "eth1"]);
    }

    #[test]
    fn defaults_are_flanneld_defaults() {
        let f = parse(&[]).unwrap();
        assert_eq!(f.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(f.etcd_prefix, "/coreos.com/network");
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(f.subnet_lease_renew_margin, 60);
        assert_eq!(f.lease_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(f.reconcile_interval, Duration::from_secs(10));
        assert!(!f.ip_masq && !f.release_on_exit);
    }

    #[test]
    fn unknown_flags_and_bad_values_are_errors() {
        let e = parse(&["-no-such-flag"]).unwrap_err().to_string();
        assert!(e.contains("--no-such-flag"), "{e}");
        let e = parse(&["-public-ip=10.0.0.300"]).unwrap_err().to_string();
        assert!(e.contains("10.0.0.300"), "{e}");
        let e = parse(&["--lease-ttl=soon"]).unwrap_err().to_string();
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "h", "10x", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
