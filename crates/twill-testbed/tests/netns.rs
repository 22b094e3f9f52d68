//! The namespace testbed itself: hosts reach each other, nothing leaks.

use twill_testbed::netns::{own_namespaces, Lan, Netns};

#[test]
fn lan_hosts_ping_and_namespaces_are_removed_on_drop() {
    twill_testbed::require_root!();
    let names: Vec<String>;
    {
        let lan = Lan::new(2).expect("lan");
        names = lan
            .hosts
            .iter()
            .map(|h| h.ns.name().to_string())
            .chain([lan.lan.name().to_string()])
            .collect();
        let out = lan.hosts[0]
            .ns
            .exec("ping", &["-c1", "-W2", "10.0.0.3"])
            .expect("ping h2 from h1");
        assert!(out.contains("1 received"), "{out}");
        let mtu = lan.hosts[1]
            .ns
            .ip(&["link", "show", "eth0"])
            .expect("ip link");
        assert!(mtu.contains("mtu 1500"), "{mtu}");
        let mut nl = lan.hosts[0].ns.netlink().expect("netlink in ns");
        let eth0 = nl
            .link()
            .get_by_name("eth0")
            .expect("eth0 seen from h1's socket");
        assert_eq!(eth0.mtu, 1500);
    }
    let left = own_namespaces().expect("list");
    for n in &names {
        assert!(!left.contains(n), "{n} leaked: {left:?}");
    }
}

#[test]
fn namespace_is_removed_when_a_test_panics() {
    twill_testbed::require_root!();
    let name = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic").expect("ns");
        *name.lock().expect("lock") = ns.name().to_string();
        panic!("boom");
    });
    assert!(r.is_err());
    let name = name.into_inner().expect("lock");
    assert!(!name.is_empty());
    assert!(!own_namespaces().expect("list").contains(&name));
}

#[test]
fn container_on_host_bridge_reaches_its_gateway() {
    twill_testbed::require_root!();
    let mut lan = Lan::new(1).expect("lan");
    let h = &mut lan.hosts[0];
    let c = h
        .add_container(
            "cni0",
            "10.244.0.2/24".parse().expect("net"),
            "10.244.0.1".parse().expect("ip"),
        )
        .expect("container");
    let out = c
        .exec("ping", &["-c1", "-W2", "10.244.0.1"])
        .expect("ping gw");
    assert!(out.contains("1 received"), "{out}");
    let inside =
        h.ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
            .expect("run")
            .expect("read");
    assert!(inside.contains("cni0"), "{inside}");
}

#[test]
fn dual_stack_and_ipv6_only_lans_ping_over_ipv6() {
    use twill_testbed::netns::Underlay;
    twill_testbed::require_root!();
    let dual = Lan::with_underlay(2, Underlay::DualStack).expect("dual-stack lan");
    let h1 = &dual.hosts[0];
    assert_eq!(h1.addr.to_string(), "10.0.0.2");
    assert_eq!(h1.addr6, Some("fd00:10::2".parse().unwrap()));
    for dst in ["10.0.0.3", "fd00:10::3"] {
        let out = h1
            .ns
            .exec("ping", &["-c1", "-W2", dst])
            .unwrap_or_else(|e| panic!("ping {dst}: {e}"));
        assert!(out.contains("1 received"), "{out}");
    }
    let v6 = Lan::with_underlay(2, Underlay::Ipv6Only).expect("IPv6-only lan");
    let h2 = &v6.hosts[1];
    assert!(h2.addr.is_unspecified());
    let v4 = h2.ns.ip(&["-4", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(!v4.contains("inet "), "IPv4 on an IPv6-only LAN: {v4}");
    let out = h2
        .ns
        .exec("ping", &["-c1", "-W2", "fd00:10::2"])
        .expect("ping over IPv6");
    assert!(out.contains("1 received"), "{out}");
}

#[test]
fn dual_stack_container_reaches_its_gateways() {
    use twill_testbed::netns::{ContainerAddrs, Underlay};
    twill_testbed::require_root!();
    let mut lan = Lan::with_underlay(1, Underlay::DualStack).expect("lan");
    let addrs = ContainerAddrs {
        v4: Some(("10.5.7.2/24".parse().unwrap(), "10.5.7.1".parse().unwrap())),
        v6: Some((
            "fd00:5:0:7::2/64".parse().unwrap(),
            "fd00:5:0:7::1".parse().unwrap(),
        )),
    };
    let c = lan.hosts[0]
        .add_container_with("docker0", addrs)
        .expect("container");
    for gw in ["10.5.7.1", "fd00:5:0:7::1"] {
        let out = c
            .exec("ping", &["-c1", "-W2", gw])
            .unwrap_or_else(|e| panic!("ping {gw}: {e}"));
        assert!(out.contains("1 received"), "{out}");
    }
    let v6_only = ContainerAddrs {
        v4: None,
        v6: Some((
            "fd00:5:0:8::2/64".parse().unwrap(),
            "fd00:5:0:8::1".parse().unwrap(),
        )),
    };
    let c = lan.hosts[0]
        .add_container_with("docker1", v6_only)
        .expect("IPv6-only container");
    let v4 = c.ip(&["-4", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(!v4.contains("inet "), "{v4}");
    let out = c.exec("ping", &["-c1", "-W2", "fd00:5:0:8::1"]).unwrap();
    assert!(out.contains("1 received"), "{out}");
}
