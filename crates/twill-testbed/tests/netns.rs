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
