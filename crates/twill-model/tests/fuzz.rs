//! Property tests: every parser of store input (config, subnet key, lease
//! value, MAC, `BackendData`) returns a value or a typed error for any input,
//! never panics, and its errors are one line naming what was wrong.
//!
//! `model.rs` covers round trips and arbitrary text; this file adds raw bytes
//! (etcd values are bytes, not UTF-8), near-valid inputs built by mutating
//! valid ones, wrong JSON types in every field, deep nesting and sizes around
//! the limits, and the invariants a parsed value must satisfy.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use twill_model::{
    Ipv6Network, LeaseAttrs, MacAddr, ModelError, NetworkConfig, SubnetEnv, SubnetKey,
    MAX_CONFIG_BYTES, MAX_LEASE_BYTES,
};

const SEED_CONFIG: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
const SEED_LEASE: &str = r#"{"PublicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VNI":100,"VtepMAC":"6e:af:8f:41:72:26"}}"#;

/// JSON values of every type, including nested and odd ones.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1e400".to_string()),
        Just("-0".to_string()),
        Just("18446744073709551616".to_string()),
        "\"[ -~]{0,24}\"".prop_map(|s| s.replace('\\', "")),
        Just("\"\\u0000\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"192.168.0.0/16\"".to_string()),
        Just("\"10.0.0.3\"".to_string()),
        Just("\"6e:af:8f:41:72:26\"".to_string()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[A-Za-z]{1,12}", inner), 0..4).prop_map(|v| {
                let body: Vec<String> = v.iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

/// A config or lease field name, in flannel's spelling or another case.
fn config_field() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("Network"),
        Just("network"),
        Just("NETWORK"),
        Just("SubnetLen"),
        Just("subnetlen"),
        Just("SubnetMin"),
        Just("SubnetMax"),
        Just("Backend"),
        Just("EnableIPv4"),
        Just("EnableIPv6"),
        Just("IPv6Network"),
        Just("IPv6SubnetLen"),
        Just("IPv6SubnetMin"),
        Just("IPv6SubnetMax"),
        Just("Unknown"),
    ]
}

fn lease_field() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("PublicIP"),
        Just("PublicIPv6"),
        Just("BackendType"),
        Just("BackendData"),
        Just("BackendV6Data"),
        Just("publicip"),
        Just("Other"),
    ]
}

/// A backend's options with one- and two-letter field names, so that the
/// random keys of [`json_value`] hit them in every case, nested.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
#[allow(dead_code)]
struct AnyOptions {
    #[serde(rename = "A")]
    a: Option<u32>,
    #[serde(rename = "b")]
    b: bool,
    #[serde(rename = "Ab")]
    ab: Vec<AnyOptions>,
    #[serde(rename = "C")]
    c: Option<Box<AnyOptions>>,
    #[serde(rename = "d")]
    d: String,
}

/// Replaces, deletes or inserts one byte of `s`.
fn mutate(s: &str, pos: usize, byte: u8, how: u8) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    let i = pos % (b.len() + 1);
    match how % 3 {
        0 if i < b.len() => b[i] = byte,
        1 if i < b.len() => {
            b.remove(i);
        }
        _ => b.insert(i, byte),
    }
    b
}

/// What every error must look like: one line, not empty, bounded (a 1 MB
/// input must not be echoed back into a log line).
fn check_error(e: &ModelError) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.is_empty());
    prop_assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    prop_assert!(msg.len() <= 1024, "error of {} bytes", msg.len());
    Ok(())
}

/// A valid IPv6 side: a random `fdxx::/N` network, sometimes an
/// `IPv6SubnetLen`, sometimes aligned `IPv6SubnetMin`/`IPv6SubnetMax` inside
/// it, each field name in flannel's spelling or another case.
fn v6_fields() -> impl Strategy<Value = String> {
    (
        any::<u128>(),
        8u8..=124,
        proptest::option::of(2u8..=20),
        proptest::option::of((any::<u128>(), any::<u128>())),
        any::<bool>(),
    )
        .prop_map(|(bits, prefix, extra, range, lower)| {
            let bits = (bits & !(0xff << 120)) | (0xfd << 120);
            let net = Ipv6Network::new(bits.into(), prefix).unwrap().network();
            let name = |n: &str| {
                if lower {
                    n.to_lowercase()
                } else {
                    n.to_string()
                }
            };
            let mut fields = vec![format!(r#""{}":"{net}/{prefix}""#, name("IPv6Network"))];
            let len = match extra {
                Some(e) => {
                    let len = (prefix + e).min(126);
                    fields.push(format!(r#""{}":{len}"#, name("IPv6SubnetLen")));
                    len
                }
                None if prefix <= 62 => 64,
                None => prefix + 2,
            };
            if let Some((lo, hi)) = range {
                let shift = 128 - u32::from(len);
                let count = 1u128 << (len - prefix);
                let (a, b) = (lo % count, hi % count);
                let (a, b) = (a.min(b), a.max(b));
                let at = |i: u128| Ipv6Addr::from(u128::from(net) + (i << shift));
                fields.push(format!(r#""{}":"{}""#, name("IPv6SubnetMin"), at(a)));
                fields.push(format!(r#""{}":"{}""#, name("IPv6SubnetMax"), at(b)));
            }
            fields.join(",")
        })
}

/// What every accepted config must satisfy.
fn check_config(cfg: &NetworkConfig) -> Result<(), TestCaseError> {
    prop_assert!(cfg.enable_ipv4 || cfg.enable_ipv6);
    if cfg.enable_ipv6 {
        check_v6_side(cfg)?;
    }
    if !cfg.enable_ipv4 {
        prop_assert_eq!(cfg.subnet_count(), 0);
        return Ok(());
    }
    let n = cfg.network;
    prop_assert!(cfg.subnet_len >= n.prefix() && cfg.subnet_len <= 32);
    prop_assert!(n.contains(cfg.subnet_min) && n.contains(cfg.subnet_max));
    prop_assert!(cfg.subnet_min <= cfg.subnet_max);
    let count = cfg.subnet_count();
    prop_assert!(count >= 1);
    for i in [0, count / 2, count - 1] {
        let sn = cfg.subnet_at(i).unwrap();
        prop_assert_eq!(sn.prefix(), cfg.subnet_len);
        if !cfg.enable_ipv6 {
            prop_assert!(cfg.check_subnet(&SubnetKey::v4(sn)).is_ok());
        }
        prop_assert_eq!(cfg.subnet_index(sn), Some(i));
    }
    prop_assert!(cfg.subnet_at(count).is_none());
    Ok(())
}

/// The IPv6 side of an accepted config with `EnableIPv6`: flannel's checks
/// hold and the subnet arithmetic is consistent.
fn check_v6_side(cfg: &NetworkConfig) -> Result<(), TestCaseError> {
    let n = cfg.ipv6_network.unwrap();
    let (min, max) = (cfg.ipv6_subnet_min.unwrap(), cfg.ipv6_subnet_max.unwrap());
    prop_assert!(cfg.ipv6_subnet_len >= n.prefix() + 2 && cfg.ipv6_subnet_len <= 126);
    prop_assert!(n.contains(min) && n.contains(max) && min <= max);
    let count = cfg.ipv6_subnet_count();
    prop_assert!(count >= 1);
    for i in [0, count / 2, count - 1] {
        let sn = cfg.ipv6_subnet_at(i).unwrap();
        prop_assert_eq!(sn.prefix(), cfg.ipv6_subnet_len);
        prop_assert_eq!(cfg.ipv6_subnet_index(sn), Some(i));
        let key = if cfg.enable_ipv4 {
            SubnetKey::dual(cfg.subnet_at(0).unwrap(), sn)
        } else {
            SubnetKey::v6_only(sn)
        };
        prop_assert!(cfg.check_subnet(&key).is_ok(), "{}", key);
        prop_assert_eq!(key.to_string().parse::<SubnetKey>().unwrap(), key);
    }
    prop_assert!(cfg.ipv6_subnet_at(count).is_none());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = NetworkConfig::parse_slice(&b) { check_error(&e)?; }
        if let Err(e) = LeaseAttrs::from_slice(&b) { check_error(&e)?; }
        let s = String::from_utf8_lossy(&b);
        if let Err(e) = s.parse::<SubnetKey>() { check_error(&e)?; }
        if let Err(e) = s.parse::<MacAddr>() { check_error(&e)?; }
    }

    #[test]
    fn mutated_seed_config_is_parsed_or_rejected(pos in any::<usize>(), byte in any::<u8>(), how in any::<u8>()) {
        let b = mutate(SEED_CONFIG, pos, byte, how);
        match NetworkConfig::parse_slice(&b) {
            Ok(cfg) => check_config(&cfg)?,
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn mutated_seed_lease_is_parsed_or_rejected(pos in any::<usize>(), byte in any::<u8>(), how in any::<u8>()) {
        let b = mutate(SEED_LEASE, pos, byte, how);
        match LeaseAttrs::from_slice(&b) {
            Ok(attrs) => {
                // What we accept we can write back and read again identically.
                let again = LeaseAttrs::from_json(&attrs.to_json().unwrap()).unwrap();
                prop_assert_eq!(again, attrs);
            }
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn config_fields_of_any_type(fields in proptest::collection::vec((config_field(), json_value()), 0..8)) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        match NetworkConfig::parse(&format!("{{{}}}", body.join(","))) {
            Ok(cfg) => check_config(&cfg)?,
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn backend_object_of_any_shape(backend in json_value()) {
        let json = format!(r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#);
        match NetworkConfig::parse(&json) {
            Ok(cfg) => {
                check_config(&cfg)?;
                // Whatever the backend object holds, reading it as a map or
                // as a struct (Go's key rules, nested) never panics.
                let _ = cfg.backend.parse_as::<serde_json::Value>();
                if let Err(e) = cfg.backend.parse_as::<AnyOptions>() { check_error(&e)?; }
            }
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn lease_fields_of_any_type(fields in proptest::collection::vec((lease_field(), json_value()), 0..6)) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        match LeaseAttrs::from_json(&format!("{{{}}}", body.join(","))) {
            Ok(attrs) => {
                let _ = attrs.backend_data_as::<serde_json::Value>();
                let _ = attrs.backend_data_as::<std::collections::BTreeMap<String, u32>>();
                prop_assert_eq!(LeaseAttrs::from_json(&attrs.to_json().unwrap()).unwrap(), attrs);
            }
            Err(e) => check_error(&e)?,
        }
    }

    /// Valid IPv6 sides (IPv6-only or dual stack) parse, with every rule of
    /// an accepted config holding.
    #[test]
    fn valid_ipv6_configs_parse(v6 in v6_fields(), v4 in any::<bool>(), backend in prop_oneof![Just("vxlan"), Just("host-gw")]) {
        let v4 = if v4 { r#""Network":"10.5.0.0/16""# } else { r#""EnableIPv4":false"# };
        let json = format!(r#"{{{v4},"EnableIPv6":true,{v6},"Backend":{{"Type":"{backend}"}}}}"#);
        let cfg = NetworkConfig::parse(&json);
        prop_assert!(cfg.is_ok(), "{}: {:?}", json, cfg);
        let cfg = cfg.unwrap();
        check_config(&cfg)?;
        prop_assert!(cfg.enable_ipv6);
    }

    /// Near-valid IPv6 sides (one byte changed) are refused too, with
    /// whatever error fits, and never panic.
    #[test]
    fn mutated_ipv6_configs_are_rejected(v6 in v6_fields(), pos in any::<usize>(), byte in any::<u8>(), how in any::<u8>()) {
        let json = format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,{v6}}}"#);
        match NetworkConfig::parse_slice(&mutate(&json, pos, byte, how)) {
            Ok(cfg) => check_config(&cfg)?,
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn near_valid_keys(a in any::<[u8; 4]>(), sep in prop_oneof![Just("-"), Just("/"), Just("--"), Just("")],
                       len in prop_oneof![(0u16..=40).prop_map(|l| l.to_string()), "[0-9a-z+ -]{0,5}"],
                       tail in prop_oneof![Just(String::new()), Just("&fd00::-64".to_string()), Just("&fd00::1-64".to_string()), Just("&".to_string()), "[ -~]{0,6}"]) {
        let s = format!("{}{sep}{len}{tail}", Ipv4Addr::from(a));
        match s.parse::<SubnetKey>() {
            Ok(key) => {
                // Strict: the address is the network address, the text round-trips.
                prop_assert_eq!(key.ipv4.ip(), key.ipv4.network());
                prop_assert_eq!(key.to_string(), s);
            }
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn any_key_is_checked_against_any_network(net in any::<u32>(), prefix in 0u8..=32, k in any::<u32>(), klen in 0u8..=32) {
        let cfg = NetworkConfig::parse(&format!(
            r#"{{"Network":"{}/{prefix}","SubnetLen":{}}}"#, Ipv4Addr::from(net), prefix.clamp(24, 30)
        ));
        let Ok(cfg) = cfg else { return Ok(()) };
        let kn = twill_model::Ipv4Network::new(Ipv4Addr::from(k), klen).unwrap();
        let key = SubnetKey::v4(twill_model::Ipv4Network::new(kn.network(), klen).unwrap());
        if cfg.check_subnet(&key).is_ok() {
            // Accepted keys lie inside Network: a lease can never steer a
            // route outside it.
            prop_assert!(cfg.network.contains(key.ipv4.network()));
            prop_assert!(key.ipv4.prefix() >= cfg.network.prefix());
            prop_assert!(cfg.network.contains(key.ipv4.broadcast()));
        }
        let env = SubnetEnv::new(&cfg, &key, 1450, false).render();
        prop_assert_eq!(env.lines().count(), 4);
    }

    #[test]
    fn macs(b in any::<[u8; 6]>(), upper in any::<bool>(), sep in prop_oneof![Just(":"), Just("-"), Just("")]) {
        let text = MacAddr(b).to_string();
        let text = if upper { text.to_uppercase() } else { text };
        let text = text.replace(':', sep);
        match text.parse::<MacAddr>() {
            Ok(m) => prop_assert_eq!(m, MacAddr(b)),
            Err(e) => check_error(&e)?,
        }
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    for depth in [200, 10_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let cfg = format!(r#"{{"Network":"10.5.0.0/16","Backend":{nested}}}"#);
        let lease = format!(r#"{{"PublicIP":"10.0.0.3","BackendData":{nested}}}"#);
        // Either outcome is fine; returning at all is the point.
        if let Err(e) = NetworkConfig::parse(&cfg) {
            assert!(!e.to_string().contains('\n'));
        }
        if let Err(e) = LeaseAttrs::from_json(&lease) {
            assert!(!e.to_string().contains('\n'));
        }
    }
}

#[test]
fn sizes_around_the_limits() {
    let pad = |json: &str, total: usize| {
        // Whitespace padding keeps the JSON valid at any size.
        let mut s = json.to_string();
        s.insert_str(1, &" ".repeat(total.saturating_sub(json.len())));
        s
    };
    let ok = pad(SEED_CONFIG, MAX_CONFIG_BYTES);
    assert_eq!(ok.len(), MAX_CONFIG_BYTES);
    NetworkConfig::parse(&ok).unwrap();
    let big = pad(SEED_CONFIG, MAX_CONFIG_BYTES + 1);
    assert!(matches!(
        NetworkConfig::parse(&big),
        Err(ModelError::TooLarge { .. })
    ));
    let mb = pad(SEED_CONFIG, 1 << 20);
    let e = NetworkConfig::parse(&mb).unwrap_err();
    assert!(e.to_string().len() < 200, "{e}");

    let ok = pad(SEED_LEASE, MAX_LEASE_BYTES);
    LeaseAttrs::from_json(&ok).unwrap();
    let mb = pad(SEED_LEASE, 1 << 20);
    let e = LeaseAttrs::from_json(&mb).unwrap_err();
    assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");
    assert!(e.to_string().len() < 200, "{e}");
}
