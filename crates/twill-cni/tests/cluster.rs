//! The plugin on three real twilld hosts, as a container runtime runs it:
//! a real etcd, one twilld per host (vxlan), and per host a container
//! (a network namespace made here) attached by `flannel` ADD, which
//! delegates to Debian's real `bridge` and `host-local`
//! (containernetworking-plugins, `/usr/lib/cni`). The containers ping each
//! other across hosts; CHECK, DEL (twice) and the failures follow.
//!
//! Everything lives in namespaces the testbed makes and removes (also when
//! a test fails); subnet files, `dataDir` and host-local's `dataDir` are in
//! temporary directories: nothing is written to /run/flannel or
//! /var/lib/cni. twilld runs with `--ip-masq`, as kube-flannel runs
//! flanneld, so `FLANNEL_IPMASQ=true` and the bridge is given
//! `ipMasq:false`: no iptables needed.
//!
//! twilld is the workspace's binary next to `flannel` (scripts/test.sh
//! builds the workspace; alone: `cargo build -p twilld`), or `$TWILLD`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use twill_model::SubnetEnv;
use twill_testbed::cluster::TwillCluster;
use twill_testbed::netns::Netns;

const FLANNEL: &str = env!("CARGO_BIN_EXE_flannel");
/// Where Debian's containernetworking-plugins puts bridge and host-local.
const CNI_PATH: &str = "/usr/lib/cni";
const CONFIG: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
/// Generous: only catches "never" on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// One spec version per host: each is passed through to the bridge.
const VERSIONS: [&str; 3] = ["1.0.0", "0.4.0", "0.3.1"];

fn twilld() -> PathBuf {
    if let Some(p) = std::env::var_os("TWILLD") {
        return p.into();
    }
    let p = Path::new(FLANNEL).with_file_name("twilld");
    assert!(
        p.exists(),
        "{} not found: build twilld first (`cargo build -p twilld`; scripts/test.sh builds the workspace) or set TWILLD",
        p.display()
    );
    p
}

fn require_cni_plugins() -> bool {
    for p in ["bridge", "host-local"] {
        let path = Path::new(CNI_PATH).join(p);
        if !path.exists() {
            twill_testbed::skip_or_fail(&format!(
                "{} missing (Debian package containernetworking-plugins; scripts/install-deps.sh installs it)",
                path.display()
            ));
            return false;
        }
    }
    true
}

/// Runs `flannel` in host `i`'s namespace as a runtime does.
fn cni(
    c: &TwillCluster,
    i: usize,
    command: &str,
    id: &str,
    netns: &Netns,
    config: &Value,
) -> Output {
    let mut child = c
        .ns(i)
        .command(FLANNEL)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{}", netns.name()))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running flannel");
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(config).expect("json"));
    child.wait_with_output().expect("flannel's output")
}

fn ok(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).expect("a JSON result")
    }
}

fn error_of(out: &Output) -> Value {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("CNI error JSON on stdout");
    assert!(
        v["code"].is_u64() && v["msg"].is_string() && v["cniVersion"].is_string(),
        "{v}"
    );
    v
}

struct Attached {
    netns: Netns,
    id: String,
    config: Value,
    ip: std::net::Ipv4Addr,
}

#[test]
fn containers_attached_by_the_plugin_ping_across_twilld_hosts() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    if !require_cni_plugins() {
        return;
    }
    let started = Instant::now();
    let mut c = TwillCluster::builder()
        .hosts(3)
        .config(CONFIG)
        .twilld_args(&["--ip-masq"])
        .build(twilld())
        .expect("building the cluster");
    if let Err(e) = c.wait_all_ready(DEADLINE) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    if let Err(e) = c.wait_converged(DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut attached: Vec<Attached> = Vec::new();
    for (i, version) in VERSIONS.iter().enumerate() {
        let env = SubnetEnv::parse_complete(
            &std::fs::read_to_string(c.subnet_file(i)).expect("subnet.env"),
        )
        .expect("twilld's subnet.env");
        assert!(env.ip_masq, "twilld --ip-masq writes FLANNEL_IPMASQ=true");
        let netns = Netns::new(&format!("cni{i}")).expect("container namespace");
        let id = format!("twill-cni-{}-{i}", std::process::id());
        let config = json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": c.subnet_file(i),
            "dataDir": tmp.path().join(format!("h{i}/flannel")),
            // host-local's store (default /var/lib/cni/networks): passed
            // through to the delegate, as flannel passes ipam's fields.
            "ipam": {"dataDir": tmp.path().join(format!("h{i}/ipam"))},
        });
        let result = ok(&cni(&c, i, "ADD", &id, &netns, &config), "ADD");
        // The bridge's result, in the config's version.
        match *version {
            "1.0.0" => assert_eq!(result["cniVersion"], "1.0.0", "{result}"),
            v => {
                assert_eq!(result["cniVersion"], v, "{result}");
                assert_eq!(result["ips"][0]["version"], "4", "{result}");
            }
        }
        let addr = result["ips"][0]["address"]
            .as_str()
            .expect("ips[0].address");
        let (ip, prefix) = addr.split_once('/').expect("CIDR");
        let ip: std::net::Ipv4Addr = ip.parse().expect("IPv4");
        let subnet = env.subnet_network();
        assert!(subnet.contains(ip), "{addr} not in FLANNEL_SUBNET {subnet}");
        assert_eq!(prefix, subnet.prefix().to_string());
        assert_eq!(result["ips"][0]["gateway"], env.subnet.ip().to_string());
        // The container as `ip` shows it: the address, FLANNEL_MTU.
        let shown = netns
            .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
            .expect("ip addr");
        assert!(shown.contains(&format!("inet {addr}")), "{shown}");
        let link = netns.ip(&["link", "show", "eth0"]).expect("ip link");
        assert!(
            link.contains(&format!("mtu {}", env.mtu)),
            "MTU {}: {link}",
            env.mtu
        );
        let routes = netns.ip(&["-4", "route"]).expect("ip route");
        assert!(
            routes.contains(&format!("192.168.0.0/16 via {}", env.subnet.ip())),
            "route to FLANNEL_NETWORK: {routes}"
        );
        // The kept delegate config: flannel's merge of this subnet.env.
        let kept: Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join(format!("h{i}/flannel/{id}"))).expect("state file"),
        )
        .expect("state JSON");
        assert_eq!(kept["type"], "bridge");
        assert_eq!(kept["ipMasq"], false);
        assert_eq!(kept["mtu"], env.mtu);
        assert_eq!(
            kept["ipam"]["ranges"],
            json!([[{"subnet": subnet.to_string()}]])
        );
        if i == 0 {
            // A transcript for docs/cni.md (run with --nocapture).
            eprintln!(
                "cni transcript: host {} subnet.env:\n{}\nconfig:\n{}\nADD result:\n{}\nip addr (container):\n{}\nip route (container):\n{}\nstate file:\n{}",
                c.name(i),
                std::fs::read_to_string(c.subnet_file(i)).unwrap_or_default(),
                serde_json::to_string_pretty(&config).unwrap_or_default(),
                serde_json::to_string_pretty(&result).unwrap_or_default(),
                netns.ip(&["addr", "show", "eth0"]).unwrap_or_default(),
                routes,
                String::from_utf8_lossy(&std::fs::read(tmp.path().join(format!("h{i}/flannel/{id}"))).unwrap_or_default()),
            );
        }
        attached.push(Attached {
            netns,
            id,
            config,
            ip,
        });
    }
    eprintln!(
        "cni: 3 containers attached {:?} after start",
        started.elapsed()
    );

    // Cross-host pings, every ordered pair.
    for a in &attached {
        for b in &attached {
            if a.ip == b.ip {
                continue;
            }
            let to = b.ip.to_string();
            if let Err(e) = TwillCluster::poll(DEADLINE, &format!("ping {} -> {to}", a.ip), || {
                a.netns
                    .exec("ping", &["-c1", "-W1", "-n", "-q", &to])
                    .is_ok()
            }) {
                panic!("{e}\n{}", c.logs());
            }
        }
    }
    eprintln!(
        "cni: 6 cross-host pings answered {:?} after start",
        started.elapsed()
    );
    let to = attached[1].ip.to_string();
    eprintln!(
        "cni transcript: ping from host 0's container to host 1's:\n{}",
        attached[0]
            .netns
            .exec("ping", &["-c2", "-n", &to])
            .unwrap_or_else(|e| e.to_string())
    );

    // CHECK: fine from 0.4.0 on; a 0.3.1 config may not CHECK.
    for (i, a) in attached.iter().enumerate() {
        let out = cni(&c, i, "CHECK", &a.id, &a.netns, &a.config);
        if VERSIONS[i] == "0.3.1" {
            let e = error_of(&out);
            assert_eq!(e["code"], 1, "{e}");
        } else {
            assert_eq!(ok(&out, "CHECK"), Value::Null);
        }
    }

    // A missing subnet file, a bad config: CNI errors, nothing attached.
    let extra = Netns::new("cnix").expect("namespace");
    let mut missing = attached[0].config.clone();
    missing["subnetFile"] = json!(tmp.path().join("absent/subnet.env"));
    let e = error_of(&cni(&c, 0, "ADD", "twill-cni-x", &extra, &missing));
    assert_eq!(e["code"], 5);
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed to load flannel 'subnet.env' file: open "),
        "{e}"
    );
    let mut bad = attached[0].config.clone();
    bad["delegate"] = json!({"type": 7});
    let e = error_of(&cni(&c, 0, "ADD", "twill-cni-x", &extra, &bad));
    assert_eq!(e["code"], 7);
    assert!(
        e["msg"].as_str().unwrap_or("").contains("`delegate.type`"),
        "{e}"
    );
    assert!(
        extra.ip(&["link", "show", "eth0"]).is_err(),
        "nothing attached"
    );

    // DEL, twice: the second finds nothing and succeeds.
    for (i, a) in attached.iter().enumerate() {
        ok(&cni(&c, i, "DEL", &a.id, &a.netns, &a.config), "DEL");
        assert!(
            a.netns.ip(&["link", "show", "eth0"]).is_err(),
            "eth0 removed"
        );
        assert!(!tmp.path().join(format!("h{i}/flannel/{}", a.id)).exists());
        let leased = tmp.path().join(format!("h{i}/ipam/cbr0/{}", a.ip));
        assert!(!leased.exists(), "host-local released {}", a.ip);
        ok(&cni(&c, i, "DEL", &a.id, &a.netns, &a.config), "second DEL");
    }
}

/// A dual-stack network (`EnableIPv6`, over a dual-stack LAN): the
/// delegate gets an IPv4 and an IPv6 range and a route to each network,
/// and containers on different hosts reach each other over both families.
#[test]
fn dual_stack_containers_get_both_families_and_ping_over_each() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    if !require_cni_plugins() {
        return;
    }
    const DUAL: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#;
    let mut c = TwillCluster::builder()
        .hosts(3)
        .underlay(twill_testbed::netns::Underlay::DualStack)
        .config(DUAL)
        .twilld_args(&["--ip-masq"])
        .build(twilld())
        .expect("building the cluster");
    if let Err(e) = c.wait_all_ready(DEADLINE) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    // One holder per IPv6 subnet (a host whose listing missed another's
    // may briefly share one, then yields), then every kernel programmed.
    let distinct = || {
        let Ok(leases) = c.leases() else { return false };
        let halves: std::collections::BTreeSet<_> =
            leases.iter().filter_map(|l| l.subnet6).collect();
        halves.len() == leases.len() && leases.len() == c.len()
    };
    if let Err(e) = TwillCluster::poll(DEADLINE, "one holder per IPv6 subnet", distinct) {
        panic!("{e}\n{}", c.logs());
    }
    if let Err(e) = c.wait_converged(DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut attached = Vec::new();
    for i in 0..3 {
        let env = SubnetEnv::parse_complete(
            &std::fs::read_to_string(c.subnet_file(i)).expect("subnet.env"),
        )
        .expect("twilld's subnet.env");
        let sn6 = env.ipv6_subnet.expect("FLANNEL_IPV6_SUBNET");
        let netns = Netns::new(&format!("cni6{i}")).expect("container namespace");
        let id = format!("twill-cni6-{}-{i}", std::process::id());
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": c.subnet_file(i),
            "dataDir": tmp.path().join(format!("h{i}/flannel")),
            "ipam": {"dataDir": tmp.path().join(format!("h{i}/ipam"))},
        });
        let result = ok(&cni(&c, i, "ADD", &id, &netns, &config), "ADD");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{result}");
        let addr = |j: usize| -> std::net::IpAddr {
            let a = ips[j]["address"].as_str().expect("address");
            a.split_once('/').expect("CIDR").0.parse().expect("IP")
        };
        let (std::net::IpAddr::V4(v4), std::net::IpAddr::V6(v6)) = (addr(0), addr(1)) else {
            panic!("an IPv4 then an IPv6 address: {result}");
        };
        assert!(
            env.subnet_network().contains(v4),
            "{v4} not in {}",
            env.subnet_network()
        );
        let net6 = twill_model::Ipv6Network::new(sn6.network(), sn6.prefix()).expect("net");
        assert!(net6.contains(v6), "{v6} not in FLANNEL_IPV6_SUBNET {sn6}");
        let shown = netns
            .ip(&["-6", "-o", "addr", "show", "dev", "eth0"])
            .expect("ip addr");
        assert!(shown.contains(&v6.to_string()), "{shown}");
        let routes = netns.ip(&["-6", "route"]).expect("ip -6 route");
        assert!(
            routes.contains("fd00:5::/48 via"),
            "route to FLANNEL_IPV6_NETWORK: {routes}"
        );
        attached.push((netns, id, config, v4, v6));
    }
    for (a, _, _, _, _) in &attached {
        for (_, _, _, v4, v6) in &attached {
            for (family, to) in [("-4", v4.to_string()), ("-6", v6.to_string())] {
                if let Err(e) = TwillCluster::poll(DEADLINE, &format!("ping {family} {to}"), || {
                    a.exec("ping", &[family, "-c1", "-W1", "-n", "-q", &to])
                        .is_ok()
                }) {
                    panic!("{e}\n{}", c.logs());
                }
            }
        }
    }
    for (i, (netns, id, config, _, _)) in attached.iter().enumerate() {
        ok(&cni(&c, i, "DEL", id, netns, config), "DEL");
        assert!(netns.ip(&["link", "show", "eth0"]).is_err(), "eth0 removed");
        ok(&cni(&c, i, "DEL", id, netns, config), "second DEL");
    }
}
