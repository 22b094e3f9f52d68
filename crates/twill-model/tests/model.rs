//! twill-model against flannel's formats: the seed article's config and
//! lease, invalid configs and keys, and round-trips.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use twill_model::{
    Ipv4Network, LeaseAttrs, MacAddr, ModelError, NetworkConfig, SubnetEnv, SubnetKey,
};

/// `flannel-network.json` from the article (../shared/seed/), verbatim.
const SEED_CONFIG: &str = r#"{
    "Network": "192.168.0.0/16",
    "SubnetLen": 24,
    "SubnetMin": "192.168.0.0",
    "SubnetMax": "192.168.5.0",
    "Backend": {
        "Type": "vxlan",
        "VNI": 100,
        "Port": 8472
    }
}"#;

/// The lease the article reads with `etcdctl get .../subnets/192.168.4.0-24`.
const SEED_LEASE: &str = r#"{"PublicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"}}"#;

#[test]
fn seed_config_parses_as_in_the_article() {
    let cfg = NetworkConfig::parse(SEED_CONFIG).unwrap();
    assert_eq!(
        cfg.network,
        "192.168.0.0/16".parse::<Ipv4Network>().unwrap()
    );
    assert_eq!(cfg.subnet_len, 24);
    assert_eq!(cfg.subnet_min, Ipv4Addr::new(192, 168, 0, 0));
    assert_eq!(cfg.subnet_max, Ipv4Addr::new(192, 168, 5, 0));
    assert_eq!(cfg.backend.backend_type, "vxlan");
    assert_eq!(cfg.backend.raw["VNI"], 100);
    assert_eq!(cfg.backend.raw["Port"], 8472);
    assert!(cfg.enable_ipv4);
    assert!(!cfg.enable_ipv6);
    assert_eq!(cfg.subnet_count(), 6);
    let all: Vec<String> = (0..6)
        .map(|i| cfg.subnet_at(i).unwrap().to_string())
        .collect();
    assert_eq!(
        all,
        [
            "192.168.0.0/24",
            "192.168.1.0/24",
            "192.168.2.0/24",
            "192.168.3.0/24",
            "192.168.4.0/24",
            "192.168.5.0/24"
        ]
    );
    assert_eq!(cfg.subnet_at(6), None);
}

#[test]
fn seed_lease_round_trips_byte_identical() {
    let attrs = LeaseAttrs::from_json(SEED_LEASE).unwrap();
    assert_eq!(attrs.public_ip, Ipv4Addr::new(10, 0, 0, 3));
    assert_eq!(attrs.public_ipv6, None);
    let mac: MacAddr = attrs.backend_data.as_ref().unwrap().to_value()["VtepMAC"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(mac.to_string(), "6e:af:8f:41:72:26");
    assert_eq!(attrs.to_json().unwrap(), SEED_LEASE);
}

#[test]
fn flannel_v028_lease_with_vni_and_null_ipv6_reads() {
    // Field order inside BackendData is preserved, so what we re-write is
    // what flannel wrote; PublicIPv6 null is read as absent.
    let json = r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:b7:12:89:ca:6a"}}"#;
    let attrs = LeaseAttrs::from_json(json).unwrap();
    assert_eq!(attrs.public_ipv6, None);
    assert_eq!(
        attrs.to_json().unwrap(),
        r#"{"PublicIP":"10.0.0.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:b7:12:89:ca:6a"}}"#
    );
    let dual = r#"{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan","BackendData":{"VtepMAC":"02:b7:12:89:ca:6a"},"BackendV6Data":{"VtepMAC":"02:b7:12:89:ca:6b"}}"#;
    assert_eq!(
        LeaseAttrs::from_json(dual).unwrap().to_json().unwrap(),
        dual
    );
}

#[test]
fn bad_leases_are_typed_errors() {
    for (json, needle) in [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        (r#"{"PublicIP":"10.0.0.300"}"#, "invalid lease"),
        (r#"{"PublicIP":3}"#, "invalid lease"),
        (r#"{"BackendType":"vxlan"}"#, "PublicIP"),
        (
            r#"{"PublicIP":"10.0.0.3","BackendType":7}"#,
            "invalid lease",
        ),
    ] {
        let err = LeaseAttrs::from_json(json).unwrap_err().to_string();
        assert!(err.contains(needle), "{json:?}: {err}");
    }
    let huge = format!(r#"{{"PublicIP":"10.0.0.3","X":"{}"}}"#, "a".repeat(1 << 20));
    assert!(matches!(
        LeaseAttrs::from_json(&huge),
        Err(ModelError::TooLarge { what: "lease", .. })
    ));
}

#[test]
fn defaults_follow_flannel() {
    let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/8"}"#).unwrap();
    assert_eq!(cfg.subnet_len, 24);
    assert_eq!(cfg.subnet_min, Ipv4Addr::new(10, 0, 1, 0));
    assert_eq!(cfg.subnet_max, Ipv4Addr::new(10, 255, 255, 0));
    assert_eq!(cfg.subnet_count(), 65_535);
    assert_eq!(cfg.backend.backend_type, "udp");

    // Small networks get SubnetLen = prefix + 2.
    let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/26"}"#).unwrap();
    assert_eq!(cfg.subnet_len, 28);
    // Go's encoding/json matches field names case-insensitively.
    let cfg = NetworkConfig::parse(
        r#"{"network":"10.2.0.0/16","subnetlen":20,"backend":{"type":"host-gw"}}"#,
    )
    .unwrap();
    assert_eq!(cfg.subnet_len, 20);
    assert_eq!(cfg.backend.backend_type, "host-gw");
    // Unknown fields are tolerated; host bits of Network are masked as Go does.
    let cfg = NetworkConfig::parse(r#"{"Network":"10.3.1.2/16","Future":{"x":1}}"#).unwrap();
    assert_eq!(cfg.network.to_string(), "10.3.0.0/16");
    // IPv6 fields are read but unused while EnableIPv6 is false (flannel's
    // default), whatever they hold.
    let cfg = NetworkConfig::parse(
        r#"{"Network":"10.4.0.0/16","EnableIPv6":false,"IPv6Network":"fd00:10::/48"}"#,
    )
    .unwrap();
    assert!(!cfg.enable_ipv6);
}

/// Issue 12 had IPv6 configs refused until they could be programmed (an
/// IPv6-only one used to be leased as `0.0.0.0-0`, a dual-stack one lost its
/// IPv6 part). Issue 15 programs them: they parse in full, IPv6 side
/// included, and nothing refuses them any more.
#[test]
fn ipv6_configs_parse_with_both_sides() {
    for (json, v4) in [
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
            false,
        ),
        (
            r#"{"Network":"10.4.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#,
            true,
        ),
        (
            r#"{"Network":"10.4.0.0/16","enableipv6":true,"ipv6network":"fd00:10::/48","IPv6SubnetMin":"fd00:10:0:5::"}"#,
            true,
        ),
    ] {
        let cfg = NetworkConfig::parse(json).expect(json);
        assert!(cfg.enable_ipv6, "{json}");
        assert_eq!(cfg.enable_ipv4, v4, "{json}");
        assert_eq!(cfg.ipv6_subnet_len, 64, "{json}");
        assert!(cfg.ipv6_network.is_some(), "{json}");
    }
    // A malformed IPv6 side still gets its precise error first.
    for (json, want) in [
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
            "IPv6Network is missing",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#,
            "IPv6Network \"10.0.0.0/8\" is invalid",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":40}"#,
            "IPv6SubnetLen 40 is too short",
        ),
    ] {
        let err = NetworkConfig::parse(json).expect_err(json).to_string();
        assert!(err.starts_with(want), "{json}: {err}");
    }
    // No family at all stays its own error.
    let err = NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":false}"#).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("EnableIPv4 \"false\" is invalid"),
        "{err}"
    );
}

/// Issue 12: the subnet arithmetic must not overflow (a debug-build panic,
/// a wrapped shift in release) whatever a hand-built config holds.
#[test]
fn subnet_arithmetic_never_overflows() {
    let mut cfg = NetworkConfig::parse(SEED_CONFIG).unwrap();
    for (len, min, max) in [
        (0u8, 0u32, 0u32),
        (0, 0, u32::MAX),
        (32, 0, u32::MAX),
        (33, 0, 0),
        (255, 0, 0),
        (24, 0x0A00_0500, 0x0A00_0100),
        (1, 0, 0x8000_0000),
    ] {
        cfg.subnet_len = len;
        cfg.subnet_min = Ipv4Addr::from(min);
        cfg.subnet_max = Ipv4Addr::from(max);
        let count = cfg.subnet_count();
        for i in [0, 1, count / 2, count.saturating_sub(1), count, u32::MAX] {
            if let Some(sn) = cfg.subnet_at(i) {
                assert!(i < count);
                assert_eq!(cfg.subnet_index(sn), Some(i), "len {len} index {i}");
            }
        }
        let _ = cfg.subnet_index("0.0.0.0/0".parse().unwrap());
        let _ = cfg.subnet_index("255.255.255.255/32".parse().unwrap());
    }
    cfg.subnet_len = 0;
    cfg.subnet_min = Ipv4Addr::UNSPECIFIED;
    cfg.subnet_max = Ipv4Addr::UNSPECIFIED;
    assert_eq!(cfg.subnet_count(), 1);
    cfg.subnet_min = Ipv4Addr::new(10, 0, 5, 0);
    assert_eq!(cfg.subnet_count(), 0, "SubnetMin above SubnetMax: nothing");
}

#[test]
fn invalid_configs_name_the_field() {
    let table: &[(&str, &str)] = &[
        ("", "config is not valid JSON: it is empty"),
        ("   ", "config is not valid JSON: it is empty"),
        ("not json", "config is not valid JSON"),
        ("[1,2]", "config must be a JSON object, found an array"),
        ("{}", "Network is missing"),
        (
            r#"{"Network":"10.0.0.0"}"#,
            "Network \"10.0.0.0\" is invalid",
        ),
        (
            r#"{"Network":"10.0.0.0/33"}"#,
            "Network \"10.0.0.0/33\" is invalid: prefix length is over 32",
        ),
        (
            r#"{"Network":"fd00::/8"}"#,
            "Network \"fd00::/8\" is invalid",
        ),
        (
            r#"{"Network":42}"#,
            "Network must be a string, found number 42",
        ),
        // Issue 13: networks that cannot carry an overlay.
        (
            r#"{"Network":"0.0.0.0/0"}"#,
            "Network \"0.0.0.0/0\" is invalid: overlaps \"this network\" (0.0.0.0/8)",
        ),
        (
            r#"{"Network":"127.0.0.0/8"}"#,
            "Network \"127.0.0.0/8\" is invalid: overlaps loopback (127.0.0.0/8)",
        ),
        (
            r#"{"Network":"127.1.0.0/16"}"#,
            "Network \"127.1.0.0/16\" is invalid: overlaps loopback",
        ),
        (
            r#"{"Network":"224.0.0.0/4"}"#,
            "Network \"224.0.0.0/4\" is invalid: overlaps multicast (224.0.0.0/4)",
        ),
        (
            r#"{"Network":"239.1.0.0/16"}"#,
            "Network \"239.1.0.0/16\" is invalid: overlaps multicast",
        ),
        (
            r#"{"Network":"240.0.0.0/4"}"#,
            "Network \"240.0.0.0/4\" is invalid: overlaps reserved (240.0.0.0/4)",
        ),
        (
            r#"{"Network":"96.0.0.0/3"}"#,
            "Network \"96.0.0.0/3\" is invalid: overlaps loopback",
        ),
        (
            r#"{"Network":"10.0.0.0/29"}"#,
            "Network 10.0.0.0/29 is too small: the prefix must be at most /28",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
            "SubnetLen 31 is too long: it must be at most 30",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
            "SubnetLen 17 is too short for Network 10.0.0.0/16: it must be at least 18",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
            "SubnetLen must be a number, found string \"24\"",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#,
            "SubnetLen \"-1\" is invalid",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":300}"#,
            "SubnetLen \"300\" is invalid",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.0.5"}"#,
            "SubnetMin 10.0.0.5 is not aligned to SubnetLen 24",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.7.1"}"#,
            "SubnetMax 10.0.7.1 is not aligned to SubnetLen 24",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
            "SubnetMin 10.1.0.0 is not inside Network 10.0.0.0/16",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMax":"11.0.0.0"}"#,
            "SubnetMax 11.0.0.0 is not inside Network 10.0.0.0/16",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.8.0"}"#,
            "SubnetMin 10.0.9.0 is above SubnetMax 10.0.8.0",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"x"}"#,
            "SubnetMin \"x\" is invalid: not an IPv4 address",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#,
            "Backend must be an object, found string \"vxlan\"",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":1}}"#,
            "Type must be a string, found number 1",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv4":"yes"}"#,
            "EnableIPv4 must be a boolean",
        ),
        (r#"{"EnableIPv4":false}"#, "EnableIPv4 \"false\" is invalid"),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#,
            "IPv6Network is missing",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/126"}"#,
            "IPv6Network fd00::/126 is too small",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#,
            "IPv6SubnetLen 127 is too long",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:1::5"}"#,
            "IPv6SubnetMin fd00:0:0:1::5 is not aligned to IPv6SubnetLen 64",
        ),
    ];
    for (json, want) in table {
        let err = NetworkConfig::parse(json).expect_err(json).to_string();
        assert!(
            err.starts_with(want),
            "config {json:?}\n  got:  {err}\n  want: {want}…"
        );
        assert!(!err.contains('\n'), "one-line error expected: {err}");
    }
    let huge = format!(
        r#"{{"Network":"10.0.0.0/16","Pad":"{}"}}"#,
        " ".repeat(1 << 20)
    );
    assert_eq!(
        NetworkConfig::parse(&huge).unwrap_err(),
        ModelError::TooLarge {
            what: "config",
            len: huge.len(),
            max: twill_model::MAX_CONFIG_BYTES
        }
    );
}

#[test]
fn explicit_subnet_min_at_network_address_is_allowed() {
    // The seed relies on it: SubnetMin 192.168.0.0 yields 192.168.0.0/24.
    let cfg =
        NetworkConfig::parse(r#"{"Network":"192.168.0.0/16","SubnetMin":"192.168.0.0"}"#).unwrap();
    assert_eq!(cfg.subnet_at(0).unwrap().to_string(), "192.168.0.0/24");
}

#[test]
fn subnet_keys() {
    let k: SubnetKey = "10.1.2.0-24&fd00:1:2::-64".parse().unwrap();
    assert_eq!(k.ipv4.to_string(), "10.1.2.0/24");
    assert_eq!(k.ipv6.unwrap().to_string(), "fd00:1:2::/64");
    assert_eq!(k.to_string(), "10.1.2.0-24&fd00:1:2::-64");
    assert_eq!(k.first_host(), Ipv4Addr::new(10, 1, 2, 1));
    for bad in [
        "",
        "-",
        "10.1.2.0",
        "10.1.2.0-",
        "10.1.2.0-x",
        "10.1.2.0-33",
        "10.1.2.1-24",
        "10.1.2.0/24",
        "10.1.2.0-24&",
        "10.1.2.0-24&fd00::1-64",
        "10.1.2.0-24junk",
        "x10.1.2.0-24",
        "10.1.2.0-0024",
        "10.1.2.0-+24",
        "10.1.2.0-24&fd00::-129",
        // Aliases of a canonical key (the same subnet under another name).
        "10.1.2.0-024",
        "10.1.0.0-016",
        "0.0.0.0-00",
        "10.1.2.0-24&fd00:0::-64",
        "10.1.2.0-24&FD00::-64",
        "10.1.2.0-24&fd00:0:0:0:0:0:0:0-64",
    ] {
        let err = bad.parse::<SubnetKey>().expect_err(bad);
        assert!(
            matches!(err, ModelError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn subnets_outside_network_are_rejected() {
    let cfg = NetworkConfig::parse(SEED_CONFIG).unwrap();
    cfg.check_subnet(&"192.168.200.0-24".parse().unwrap())
        .unwrap();
    for bad in ["10.0.0.0-24", "192.0.0.0-8", "192.169.0.0-24"] {
        let err = cfg.check_subnet(&bad.parse().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not inside Network 192.168.0.0/16"),
            "{err}"
        );
    }
}

#[test]
fn subnet_env_is_flanneld_format() {
    let cfg = NetworkConfig::parse(SEED_CONFIG).unwrap();
    let env = SubnetEnv::new(&cfg, &"192.168.5.0-24".parse().unwrap(), 1450, true);
    assert_eq!(
        env.render(),
        "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
}

proptest! {
    #[test]
    fn key_round_trip(a in any::<u32>(), len in 0u8..=32, v6 in proptest::option::of((any::<u128>(), 0u8..=128))) {
        let net = Ipv4Network::new(Ipv4Addr::from(a), len).unwrap();
        let net = Ipv4Network::new(net.network(), len).unwrap();
        let ipv6 = v6.map(|(b, l)| {
            let n = twill_model::Ipv6Network::new(b.into(), l).unwrap();
            twill_model::Ipv6Network::new(n.network(), l).unwrap()
        });
        let key = SubnetKey { ipv4: net, ipv6 };
        // Refused on purpose: the empty IPv4 network alone (flannel would
        // read "everything"), and IPv6 parts Go writes in dotted IPv4 form.
        let names_nothing = ipv6.is_none() && len == 0;
        let go_dotted = ipv6.is_some_and(|n| {
            let v = u128::from(n.network());
            v >> 32 == 0xffff || (1u128 << 24..1u128 << 32).contains(&v)
        });
        match key.to_string().parse::<SubnetKey>() {
            Ok(parsed) => {
                prop_assert!(!names_nothing && !go_dotted, "{}", key);
                prop_assert_eq!(parsed, key);
                prop_assert_eq!(parsed.ipv4_subnet().is_none(), parsed.is_ipv6_only());
            }
            Err(ModelError::InvalidKey { .. }) => prop_assert!(names_nothing || go_dotted, "{}", key),
            Err(e) => prop_assert!(false, "{key}: {e:?}"),
        }
    }

    /// The three forms flannel's MakeSubnetKey writes, for subnets of an
    /// IPv6Network twill accepts (fd00::/8), round-trip exactly.
    #[test]
    fn key_forms_round_trip(a in any::<u32>(), len in 1u8..=32, b in any::<u128>(), l6 in 8u8..=128, form in 0u8..3) {
        let v4 = Ipv4Network::new(Ipv4Addr::from(a), len).unwrap();
        let v4 = Ipv4Network::new(v4.network(), len).unwrap();
        let b = (b & !(0xff << 120)) | (0xfd << 120);
        let v6 = twill_model::Ipv6Network::new(b.into(), l6).unwrap();
        let v6 = twill_model::Ipv6Network::new(v6.network(), l6).unwrap();
        let (key, text) = match form {
            0 => (SubnetKey::v4(v4), format!("{}-{len}", v4.network())),
            1 => (SubnetKey::dual(v4, v6), format!("{}-{len}&{}-{l6}", v4.network(), v6.network())),
            _ => (SubnetKey::v6_only(v6), format!("0.0.0.0-0&{}-{l6}", v6.network())),
        };
        prop_assert_eq!(key.to_string(), text.clone());
        let parsed: SubnetKey = text.parse().unwrap();
        prop_assert_eq!(parsed, key);
        prop_assert_eq!(parsed.is_ipv6_only(), form == 2);
        prop_assert_eq!(parsed.ipv4_subnet(), (form != 2).then_some(v4));
        prop_assert_eq!(parsed.ipv6, (form != 0).then_some(v6));
    }

    #[test]
    fn lease_round_trip(ip in any::<u32>(), mac in any::<[u8; 6]>(), vni in proptest::option::of(any::<u32>()), bt in "[a-z-]{0,10}") {
        let mac = MacAddr(mac).to_string();
        let data = match vni {
            Some(v) => format!(r#","BackendData":{{"VNI":{v},"VtepMAC":"{mac}"}}"#),
            None => format!(r#","BackendData":{{"VtepMAC":"{mac}"}}"#),
        };
        let bt_field = if bt.is_empty() { String::new() } else { format!(r#","BackendType":"{bt}""#) };
        let json = format!(r#"{{"PublicIP":"{}"{bt_field}{data}}}"#, Ipv4Addr::from(ip));
        let attrs = LeaseAttrs::from_json(&json).unwrap();
        prop_assert_eq!(attrs.to_json().unwrap(), json);
    }

    #[test]
    fn valid_configs_round_trip_through_their_fields(net in any::<u32>(), prefix in 8u8..=26, extra in 2u8..=6, lo in any::<u32>(), hi in any::<u32>()) {
        let len = (prefix + extra).min(30);
        let network = Ipv4Network::new(Ipv4Addr::from(net), prefix).unwrap().network();
        let count = 1u32 << (len - prefix);
        let (a, b) = (lo % count, hi % count);
        let (a, b) = (a.min(b), a.max(b));
        let shift = 32 - u32::from(len);
        let min = Ipv4Addr::from(u32::from(network) + (a << shift));
        let max = Ipv4Addr::from(u32::from(network) + (b << shift));
        // SubnetMin 0.0.0.0 means "not set" (Go's zero value), as in flannel.
        prop_assume!(!min.is_unspecified());
        // 0/8, loopback, multicast and class E are refused as Network.
        let first = network.octets()[0];
        prop_assume!(first != 0 && first != 127 && first < 224);
        let json = format!(r#"{{"Network":"{network}/{prefix}","SubnetLen":{len},"SubnetMin":"{min}","SubnetMax":"{max}","Backend":{{"Type":"vxlan","VNI":{net}}}}}"#);
        let cfg = NetworkConfig::parse(&json).unwrap();
        prop_assert_eq!(cfg.subnet_min, min);
        prop_assert_eq!(cfg.subnet_max, max);
        prop_assert_eq!(cfg.subnet_count(), b - a + 1);
        for i in [0, cfg.subnet_count() - 1] {
            let sn = cfg.subnet_at(i).unwrap();
            prop_assert_eq!(cfg.subnet_index(sn), Some(i));
            prop_assert!(cfg.check_subnet(&SubnetKey::v4(sn)).is_ok());
        }
    }

    #[test]
    fn parsers_never_panic(s in ".{0,200}") {
        let _ = NetworkConfig::parse(&s);
        let _ = LeaseAttrs::from_json(&s);
        let _ = s.parse::<SubnetKey>();
        let _ = s.parse::<MacAddr>();
    }

    #[test]
    fn config_parser_never_panics_on_jsonish(fields in proptest::collection::vec((
        prop_oneof![Just("Network"), Just("SubnetLen"), Just("SubnetMin"), Just("SubnetMax"), Just("Backend"), Just("EnableIPv6"), Just("IPv6Network"), Just("IPv6SubnetLen")],
        prop_oneof![Just("null".to_string()), any::<i64>().prop_map(|n| n.to_string()), "\"[0-9./:a-f]{0,20}\"", Just("{}".to_string()), Just("true".to_string())],
    ), 0..8)) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let _ = NetworkConfig::parse(&format!("{{{}}}", body.join(",")));
    }
}

/// Issue 12: `to_json` used to turn a serialization failure into an empty
/// string, which the registries would have stored as the lease value. No
/// `LeaseAttrs` can make serde_json fail (strings, addresses and JSON values
/// always serialize), so the failure path is checked by type: the result is
/// a `Result` with a `ModelError`, which every caller must handle.
#[test]
fn lease_to_json_is_a_result() {
    let attrs = LeaseAttrs::from_json(SEED_LEASE).unwrap();
    let written: Result<String, ModelError> = attrs.to_json();
    assert_eq!(written.unwrap(), SEED_LEASE);
}

/// Found by `fuzz.rs` once `"publicip"` was accepted: without serde_json's
/// `float_roundtrip`, a float in `BackendData` could read back one ulp off
/// after twill wrote it (`-2.8972629913439747e60`), so a lease read, written
/// and read again was not the same lease.
#[test]
fn lease_numbers_round_trip_exactly() {
    for n in [
        "-2.8972629913439747e60",
        "1.7976931348623157e308",
        "5e-324",
        "0.1",
    ] {
        let json = format!(r#"{{"PublicIP":"10.0.0.3","BackendData":[{n}]}}"#);
        let attrs = LeaseAttrs::from_json(&json).unwrap();
        let again = LeaseAttrs::from_json(&attrs.to_json().unwrap()).unwrap();
        assert_eq!(again, attrs, "{n}");
    }
}

/// Issue 15: the IPv6 side with flannel's defaults and checks, each error
/// naming the IPv6 field and value.
#[test]
fn ipv6_fields_follow_flannel_defaults_and_checks() {
    let p = |j: &str| NetworkConfig::parse(j);
    // Defaults: /64 per host from a /62 or shorter, else prefix + 2; the
    // first subnet skipped; "::" is flannel's empty value.
    let cfg = p(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:1::/48","IPv6SubnetMin":"::","IPv6SubnetMax":"::"}"#).unwrap();
    assert!(!cfg.enable_ipv4 && cfg.subnet_count() == 0);
    assert_eq!(cfg.ipv6_subnet_len, 64);
    assert_eq!(cfg.ipv6_subnet_min.unwrap().to_string(), "fd00:1:0:1::");
    assert_eq!(cfg.ipv6_subnet_max.unwrap().to_string(), "fd00:1:0:ffff::");
    assert_eq!(cfg.ipv6_subnet_count(), 65_535);
    let cfg = p(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120"}"#).unwrap();
    assert_eq!(cfg.ipv6_subnet_len, 122);
    assert_eq!(cfg.ipv6_subnet_count(), 3);
    // IPv6-only: only IPv6 keys are ours.
    assert!(cfg
        .check_subnet(&"0.0.0.0-0&fd00::40-122".parse().unwrap())
        .is_ok());
    assert!(cfg
        .check_subnet(&"0.0.0.0-0&fd01::40-122".parse().unwrap())
        .is_err());
    assert!(cfg.check_subnet(&"10.1.0.0-24".parse().unwrap()).is_err());
    // Dual stack: an IPv4-only lease is still routable, a stray v6 part is not.
    let cfg =
        p(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:1::/48"}"#).unwrap();
    assert!(cfg.check_subnet(&"10.1.2.0-24".parse().unwrap()).is_ok());
    assert!(cfg
        .check_subnet(&"10.1.2.0-24&fd00:1:0:2::-64".parse().unwrap())
        .is_ok());
    assert!(cfg
        .check_subnet(&"10.1.2.0-24&fd00:2::-64".parse().unwrap())
        .is_err());
    assert!(cfg
        .check_subnet(&"0.0.0.0-0&fd00:1:0:2::-64".parse().unwrap())
        .is_err());
    for (json, want) in [
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:2::"}"#,
            "IPv6SubnetMin fd00:0:0:9:: is above IPv6SubnetMax fd00:0:0:2::",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd01::"}"#,
            "IPv6SubnetMax fd01:: is not inside Network fd00::/48",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"nope"}"#,
            "IPv6SubnetMin \"nope\" is invalid: not an IPv6 address",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":"64"}"#,
            "IPv6SubnetLen must be a number",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":"yes","IPv6Network":"fd00::/48"}"#,
            "EnableIPv6 must be a boolean",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::ffff:0:0/96"}"#,
            "IPv6Network \"::ffff:0.0.0.0/96\" is invalid: overlaps reserved",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fe80::/16"}"#,
            "IPv6Network \"fe80::/16\" is invalid: overlaps link-local",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ff00::/16"}"#,
            "IPv6Network \"ff00::/16\" is invalid: overlaps multicast",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0"}"#,
            "IPv6Network \"::/0\" is invalid: overlaps reserved",
        ),
    ] {
        let err = p(json).expect_err(json).to_string();
        assert!(
            err.starts_with(want),
            "{json}\n  got:  {err}\n  want: {want}"
        );
    }
}

/// Leases as flannel v0.28 writes them for the three stacks read, and
/// re-write byte for byte (but for flannel's `"PublicIPv6":null`, omitted).
#[test]
fn flannel_dual_stack_and_ipv6_only_leases_round_trip() {
    #[derive(serde::Deserialize)]
    struct Vxlan {
        #[serde(rename = "VtepMAC")]
        vtep_mac: String,
    }
    let dual = r#"{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:b7:12:89:ca:6a"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:b7:12:89:ca:6b"}}"#;
    let a = LeaseAttrs::from_json(dual).unwrap();
    assert_eq!(a.public_ipv6, Some("fd00::2".parse().unwrap()));
    assert_eq!(
        a.backend_v6_data_as::<Vxlan>().unwrap().vtep_mac,
        "02:b7:12:89:ca:6b"
    );
    assert_eq!(a.to_json().unwrap(), dual);
    let v6only = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"02:b7:12:89:ca:6c"}}"#;
    let a = LeaseAttrs::from_json(v6only).unwrap();
    assert!(a.public_ip.is_unspecified() && a.backend_data.is_none());
    assert_eq!(a.to_json().unwrap(), v6only);
    assert!(matches!(
        a.backend_data_as::<Vxlan>(),
        Err(ModelError::Missing {
            field: "BackendData",
            ..
        })
    ));
    let v4 =
        LeaseAttrs::from_json(r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"vxlan"}"#)
            .unwrap();
    assert!(matches!(
        v4.backend_v6_data_as::<Vxlan>(),
        Err(ModelError::Missing {
            field: "BackendV6Data",
            ..
        })
    ));
}
