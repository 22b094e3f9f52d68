//! The VXLAN backend's routes through nexthop objects, against real kernels
//! in network namespaces: the layout, the `Nexthops` option, an id someone
//! else holds, and a host moving from flanneld to twill and back.

mod common;

use common::{bring_up, config, lease, refs, vxlan_attrs, PEER_OPS};
use twill_backend::{Backend, NexthopMode, VxlanBackend, VxlanOptions};
use twill_model::SubnetLease;
use twill_testbed::netns::{Host, Lan, Netns};

/// 10.244.2.0 as a number: the object id of the peer 10.244.2.0/24.
const ID_2: u32 = 183_763_456;
/// 10.244.3.0 as a number.
const ID_3: u32 = 183_763_712;

fn backend(host: &Host, nexthops: NexthopMode) -> VxlanBackend {
    let opts = VxlanOptions {
        nexthops,
        ..VxlanOptions::default()
    };
    VxlanBackend::with_handle(opts, host.ns.netlink().expect("netlink"))
}

fn vtep_mac(l: &SubnetLease) -> String {
    l.attrs.backend_data.as_ref().expect("data").to_value()["VtepMAC"]
        .as_str()
        .expect("mac")
        .to_string()
}

fn ip(ns: &Netns, args: &[&str]) -> String {
    ns.ip(args)
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
        .trim()
        .to_string()
}

fn pings(ns: &Netns, to: &str) -> bool {
    ns.exec("ping", &["-c1", "-W2", to])
        .is_ok_and(|out| out.contains("1 received"))
}

#[tokio::test]
async fn peers_route_through_objects_with_flannels_forwarding_and_ping() {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let mut backends = Vec::new();
    let mut leases = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        let mut b = backend(h, NexthopMode::Auto);
        let (_, own) = bring_up(&mut b, h, &cfg, u8::try_from(i + 1).expect("n")).await;
        backends.push(b);
        leases.push(own);
    }
    for b in &mut backends {
        let r = b.reconcile(&refs(&leases)).await.expect("reconcile");
        assert_eq!((r.planned, r.applied), (PEER_OPS, PEER_OPS), "{r:?}");
    }
    let h1 = &lan.hosts[0].ns;
    assert_eq!(
        ip(h1, &["nexthop", "show"]),
        format!("id {ID_2} via 10.244.2.0 dev flannel.1 scope link proto 241 onlink")
    );
    assert_eq!(
        ip(h1, &["route", "show", "proto", "241"]),
        format!("10.244.2.0/24 nhid {ID_2} via 10.244.2.0 dev flannel.1 onlink")
    );
    assert!(pings(h1, "10.244.2.0"), "ping over vxlan");
    assert!(pings(&lan.hosts[1].ns, "10.244.1.0"), "ping back");
    for b in &mut backends {
        let again = b.reconcile(&refs(&leases)).await.expect("again");
        assert_eq!(again.planned, 0, "{again:?}");
    }
}

#[tokio::test]
async fn nexthops_false_is_flannels_layout_and_removes_our_objects() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let peers = vec![lease(
        "10.244.2.0/24",
        vxlan_attrs("10.0.0.3".parse().expect("ip"), "0e:00:00:00:00:02"),
    )];
    let mut b = backend(h, NexthopMode::On);
    bring_up(&mut b, h, &cfg, 1).await;
    b.reconcile(&refs(&peers)).await.expect("through objects");
    assert_eq!(ip(&h.ns, &["nexthop", "show"]).lines().count(), 1);

    // The same host restarted with "Nexthops": false.
    let mut b = backend(h, NexthopMode::Off);
    bring_up(&mut b, h, &cfg, 1).await;
    let r = b.reconcile(&refs(&peers)).await.expect("flannel's routes");
    assert_eq!(
        (r.planned, r.applied),
        (2, 2),
        "the route replaced, then its object deleted: {r:?}"
    );
    assert_eq!(
        ip(&h.ns, &["route", "show", "proto", "241"]),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    );
    assert_eq!(ip(&h.ns, &["nexthop", "show"]), "");
    assert_eq!(b.reconcile(&refs(&peers)).await.expect("again").planned, 0);
}

#[tokio::test]
async fn an_id_someone_else_holds_leaves_that_peer_on_a_gateway_route() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    // Someone else's object at the id of peer 10.244.2.0/24.
    ip(
        &h.ns,
        &["nexthop", "add", "id", &ID_2.to_string(), "blackhole"],
    );
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let peers = vec![
        lease(
            "10.244.2.0/24",
            vxlan_attrs("10.0.0.3".parse().expect("ip"), "0e:00:00:00:00:02"),
        ),
        lease(
            "10.244.3.0/24",
            vxlan_attrs("10.0.0.4".parse().expect("ip"), "0e:00:00:00:00:03"),
        ),
    ];
    let mut b = backend(h, NexthopMode::Auto);
    bring_up(&mut b, h, &cfg, 1).await;
    let r = b.reconcile(&refs(&peers)).await.expect("reconcile");
    assert!(r.failed.is_empty() && r.skipped.is_empty(), "{r:?}");
    let routes = ip(&h.ns, &["route", "show", "proto", "241"]);
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"),
        "{routes}"
    );
    assert!(
        routes.contains(&format!(
            "10.244.3.0/24 nhid {ID_3} via 10.244.3.0 dev flannel.1 onlink"
        )),
        "{routes}"
    );
    let objects = ip(&h.ns, &["nexthop", "show"]);
    assert!(
        objects.contains(&format!("id {ID_2} blackhole")),
        "untouched: {objects}"
    );
    assert_eq!(b.reconcile(&refs(&peers)).await.expect("again").planned, 0);
}

/// flanneld → twill → flanneld → twill on one host, the other host running
/// twill throughout. flanneld is emulated with iproute2 doing what
/// flannel's `pkg/backend/vxlan` does per lease (`AddARP`, `AddFDB` and
/// `RouteReplace` of `<subnet> via <subnet>.0 dev flannel.1 onlink`, proto
/// boot), on the device as it finds it (its `ensureLink` keeps a
/// compatible one).
#[tokio::test]
async fn a_host_moves_from_flanneld_to_twill_and_back_and_stays_reachable() {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let mut b1 = backend(h1, NexthopMode::Auto);
    let (_, own1) = bring_up(&mut b1, h1, &cfg, 1).await;
    let mut b2 = backend(h2, NexthopMode::Auto);
    let (_, own2) = bring_up(&mut b2, h2, &cfg, 2).await;
    let leases = vec![own1, own2.clone()];
    b2.reconcile(&refs(&leases)).await.expect("h2");
    let flanneld_start = |ns: &Netns| {
        let mac = vtep_mac(&own2);
        for args in [
            &[
                "neigh",
                "replace",
                "10.244.2.0",
                "lladdr",
                &mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ][..],
            &[
                "route",
                "replace",
                "10.244.2.0/24",
                "via",
                "10.244.2.0",
                "dev",
                "flannel.1",
                "onlink",
            ],
        ] {
            ip(ns, args);
        }
        ns.exec(
            "bridge",
            &[
                "fdb",
                "replace",
                &mac,
                "dev",
                "flannel.1",
                "dst",
                "10.0.0.3",
                "self",
                "permanent",
            ],
        )
        .expect("bridge fdb replace");
    };
    // `ip route` leaves out proto boot, the default.
    let flanneld_route = "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink";
    let twill_route =
        format!("10.244.2.0/24 nhid {ID_2} via 10.244.2.0 dev flannel.1 proto 241 onlink");

    // 1. flanneld on h1.
    flanneld_start(&h1.ns);
    assert_eq!(
        ip(&h1.ns, &["route", "show", "10.244.2.0/24"]),
        flanneld_route
    );
    assert_eq!(
        ip(&h1.ns, &["route", "show", "proto", "boot"]),
        flanneld_route
    );
    assert!(pings(&h1.ns, "10.244.2.0"), "flanneld → twill host");

    // 2. twill replaces flanneld: its route is taken over in place, through
    // an object; its ARP and FDB entries are already what twill wants.
    let r = b1.reconcile(&refs(&leases)).await.expect("takeover");
    assert!(r.skipped.is_empty() && r.failed.is_empty(), "{r:?}");
    assert_eq!((r.planned, r.applied), (2, 2), "object + route: {r:?}");
    assert_eq!(ip(&h1.ns, &["route", "show", "10.244.2.0/24"]), twill_route);
    assert!(pings(&h1.ns, "10.244.2.0"), "after the takeover");
    assert!(pings(&h2.ns, "10.244.1.0"), "back, after the takeover");
    drop(b1);

    // 3. flanneld again: its RouteReplace replaces our route; our object is
    // left behind, with no route through it, forwarding nothing.
    flanneld_start(&h1.ns);
    assert_eq!(
        ip(&h1.ns, &["route", "show", "10.244.2.0/24"]),
        flanneld_route
    );
    assert_eq!(
        ip(&h1.ns, &["nexthop", "show"]),
        format!("id {ID_2} via 10.244.2.0 dev flannel.1 scope link proto 241 onlink")
    );
    let all = ip(&h1.ns, &["route", "show", "table", "all"]);
    assert!(!all.contains("nhid"), "no route through it: {all}");
    assert!(pings(&h1.ns, "10.244.2.0"), "flanneld after twill");
    assert!(pings(&h2.ns, "10.244.1.0"), "back, flanneld after twill");
    // flanneld's removal of the lease (RouteDel of its route) leaves no
    // route at all: the object routes nothing by itself.
    ip(
        &h1.ns,
        &[
            "route",
            "del",
            "10.244.2.0/24",
            "via",
            "10.244.2.0",
            "dev",
            "flannel.1",
        ],
    );
    assert_eq!(ip(&h1.ns, &["route", "show", "10.244.2.0/24"]), "");
    flanneld_start(&h1.ns);

    // 4. twill once more: the route taken over again, the object reused.
    let mut b1 = backend(h1, NexthopMode::Auto);
    bring_up(&mut b1, h1, &cfg, 1).await;
    let r = b1.reconcile(&refs(&leases)).await.expect("twill again");
    assert_eq!((r.planned, r.applied), (1, 1), "the route only: {r:?}");
    assert_eq!(ip(&h1.ns, &["route", "show", "10.244.2.0/24"]), twill_route);
    assert!(pings(&h1.ns, "10.244.2.0"), "twill again");
    assert_eq!(
        b1.reconcile(&refs(&leases)).await.expect("quiet").planned,
        0
    );
}
