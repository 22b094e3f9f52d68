//! Issue 12: object keys are matched as Go's `encoding/json` matches them
//! (flanneld is Go), in the config, in the lease and in every backend's
//! options: exact name first, else case-insensitively; the last key that
//! matches a field wins; `null` leaves the default. Serialization keeps
//! flannel's exact names.

#![allow(clippy::unwrap_used, missing_docs)]

use serde::Deserialize;
use twill_model::{BackendConfig, LeaseAttrs, NetworkConfig};

/// A backend's options as a custom backend would declare them: flannel's
/// names, defaults for every field, one nested struct, one list.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(default)]
struct Options {
    #[serde(rename = "VNI")]
    vni: u32,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "DirectRouting")]
    direct_routing: bool,
    #[serde(rename = "MTU")]
    mtu: Option<u32>,
    #[serde(rename = "Inner")]
    inner: Option<Inner>,
    #[serde(rename = "Peers")]
    peers: Vec<Inner>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            vni: 1,
            port: 0,
            direct_routing: false,
            mtu: None,
            inner: None,
            peers: Vec::new(),
        }
    }
}

#[derive(Debug, PartialEq, Deserialize)]
struct Inner {
    #[serde(rename = "PublicKey")]
    public_key: String,
    #[serde(rename = "Weight", default)]
    weight: u8,
}

fn options(backend: &str) -> Options {
    let cfg = NetworkConfig::parse(&format!(
        r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#
    ))
    .unwrap_or_else(|e| panic!("{backend}: {e}"));
    cfg.backend
        .parse_as()
        .unwrap_or_else(|e| panic!("{backend}: {e}"))
}

#[test]
fn backend_options_match_keys_as_go_does() {
    for (backend, vni, port) in [
        (r#"{"Type":"x","VNI":5}"#, 5, 0),
        (r#"{"Type":"x","VNi":5}"#, 5, 0),
        (r#"{"Type":"x","vNI":5}"#, 5, 0),
        (r#"{"Type":"x","vni":5}"#, 5, 0),
        (r#"{"Type":"x","PORT":8472}"#, 1, 8472),
        (r#"{"Type":"x","pOrt":8472}"#, 1, 8472),
        (r#"{"Type":"x","Port":8472}"#, 1, 8472),
        // The last key that matches wins, exact or not.
        (r#"{"Type":"x","VNI":7,"vni":8}"#, 8, 0),
        (r#"{"Type":"x","vni":8,"VNI":7}"#, 7, 0),
        (r#"{"Type":"x","vni":8,"Vni":9}"#, 9, 0),
        (r#"{"Type":"x","VNI":7,"VNI":8}"#, 8, 0),
        // null leaves the default, and does not undo an earlier value.
        (r#"{"Type":"x","VNI":null,"Port":null}"#, 1, 0),
        (r#"{"Type":"x","VNI":7,"vni":null}"#, 7, 0),
        (r#"{"Type":"x","vni":null,"VNI":7}"#, 7, 0),
    ] {
        let o = options(backend);
        assert_eq!((o.vni, o.port), (vni, port), "{backend}");
    }
    let o = options(r#"{"Type":"x","directrouting":true,"MTu":1400,"mtu":null}"#);
    assert!(o.direct_routing);
    assert_eq!(o.mtu, Some(1400));
    let o = options(r#"{"Type":"x","DIRECTROUTING":true,"MTU":null}"#);
    assert!(o.direct_routing);
    assert_eq!(o.mtu, None);
    // Unknown keys are ignored, as Go ignores them.
    assert_eq!(
        options(r#"{"Type":"x","Future":{"a":1},"VNIs":3}"#),
        Options::default()
    );
}

#[test]
fn nested_structs_options_and_lists_follow_the_same_rules() {
    let o = options(
        r#"{"Type":"x","inner":{"publickey":"k1","WEIGHT":3,"weight":4},
            "PEERS":[{"PublicKey":"a"},{"publicKEY":"b","Weight":null}],"peers":[{"publickey":"c"}]}"#,
    );
    assert_eq!(
        o.inner,
        Some(Inner {
            public_key: "k1".into(),
            weight: 4
        })
    );
    // The later "peers" replaces the whole earlier "PEERS" list, as in Go.
    assert_eq!(
        o.peers,
        [Inner {
            public_key: "c".into(),
            weight: 0
        }]
    );
    // A wrong type is still an error naming the field.
    let cfg =
        NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"x","vni":"five"}}"#)
            .unwrap();
    let err = cfg.backend.parse_as::<Options>().unwrap_err().to_string();
    assert!(err.contains("Backend") && err.contains("u32"), "{err}");
    // A struct whose required field is null reports it missing.
    let cfg = NetworkConfig::parse(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"x","Inner":{"PublicKey":null}}}"#,
    )
    .unwrap();
    let err = cfg.backend.parse_as::<Options>().unwrap_err().to_string();
    assert!(err.contains("PublicKey"), "{err}");
}

#[test]
fn config_top_level_keys_match_as_go_does() {
    for json in [
        r#"{"Network":"10.2.0.0/16","SubnetLen":20,"Backend":{"Type":"host-gw"}}"#,
        r#"{"network":"10.2.0.0/16","subnetlen":20,"backend":{"type":"host-gw"}}"#,
        r#"{"NETWORK":"10.2.0.0/16","SUBNETLEN":20,"BACKEND":{"TYPE":"host-gw"}}"#,
        r#"{"nEtWoRk":"10.2.0.0/16","SubnetLEN":20,"Backend":{"tYPE":"host-gw"}}"#,
        // Last wins, exact or case-insensitive.
        r#"{"Network":"10.9.0.0/16","network":"10.2.0.0/16","SubnetLen":20,"Backend":{"Type":"udp","type":"host-gw"}}"#,
        r#"{"network":"10.9.0.0/16","Network":"10.2.0.0/16","subnetlen":24,"SubnetLen":20,"backend":{"Type":"vxlan"},"Backend":{"TYPE":"host-gw"}}"#,
        r#"{"Network":"10.9.0.0/16","Network":"10.2.0.0/16","SubnetLen":20,"Backend":{"Type":"host-gw"}}"#,
        // null leaves the default: SubnetLen 20 stays, no Backend means udp.
        r#"{"Network":"10.2.0.0/16","SubnetLen":20,"subnetlen":null,"SubnetMin":null,"Backend":{"Type":"host-gw","type":null}}"#,
    ] {
        let cfg = NetworkConfig::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(cfg.network.to_string(), "10.2.0.0/16", "{json}");
        assert_eq!(cfg.subnet_len, 20, "{json}");
        assert_eq!(cfg.backend.backend_type, "host-gw", "{json}");
    }
    let cfg = NetworkConfig::parse(r#"{"Network":"10.2.0.0/16","Backend":null,"EnableIPv4":null}"#)
        .unwrap();
    assert_eq!(cfg.backend.backend_type, "udp");
    assert!(cfg.enable_ipv4);
    // The Backend object is kept whole for the backend to read its own
    // fields; only Type is read here.
    let cfg =
        NetworkConfig::parse(r#"{"Network":"10.2.0.0/16","backend":{"type":"vxlan","vni":3}}"#)
            .unwrap();
    assert_eq!(cfg.backend.raw["vni"], 3);
    // An earlier valid value does not hide a later invalid one.
    let err = NetworkConfig::parse(r#"{"Network":"10.2.0.0/16","network":"nope"}"#).unwrap_err();
    assert!(
        err.to_string().starts_with("Network \"nope\" is invalid"),
        "{err}"
    );
}

#[test]
fn lease_keys_match_as_go_does() {
    let want = r#"{"PublicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"}}"#;
    for json in [
        want,
        r#"{"publicip":"10.0.0.3","backendtype":"vxlan","backenddata":{"VtepMAC":"6e:af:8f:41:72:26"}}"#,
        r#"{"PUBLICIP":"10.0.0.3","BACKENDTYPE":"vxlan","BACKENDDATA":{"VtepMAC":"6e:af:8f:41:72:26"}}"#,
        r#"{"PublicIP":"10.9.9.9","publicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"}}"#,
        r#"{"PublicIP":"10.0.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"},"BackendV6Data":null}"#,
        r#"{"PublicIP":"10.0.0.3","BackendType":"udp","backendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"},"Other":1}"#,
    ] {
        let attrs = LeaseAttrs::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(attrs.public_ip.to_string(), "10.0.0.3", "{json}");
        assert_eq!(attrs.public_ipv6, None, "{json}");
        assert_eq!(attrs.backend_type, "vxlan", "{json}");
        // What we write back has flannel's exact names.
        assert_eq!(attrs.to_json().unwrap(), want, "{json}");
    }
    let dual = LeaseAttrs::from_json(
        r#"{"PublicIP":"10.0.0.3","publicipv6":"fd00::3","backendv6data":{"VtepMAC":"02:00:00:00:00:01"}}"#,
    )
    .unwrap();
    assert_eq!(dual.public_ipv6.unwrap().to_string(), "fd00::3");
    assert!(dual.backend_v6_data.is_some());
    // A null PublicIP leaves it unset, and PublicIP is required.
    let err = LeaseAttrs::from_json(r#"{"PublicIP":null}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("PublicIP"), "{err}");
}

#[test]
fn backend_data_keys_match_as_go_does() {
    #[derive(Debug, Deserialize)]
    struct Data {
        #[serde(rename = "VNI", default)]
        vni: Option<u32>,
        #[serde(rename = "VtepMAC")]
        vtep_mac: String,
    }
    for (data, vni) in [
        (r#"{"VtepMAC":"m"}"#, None),
        (r#"{"VTEPMAC":"m","vni":2}"#, Some(2)),
        (r#"{"vtepmac":"m","VNI":null}"#, None),
        (r#"{"vtepMAC":"x","VtepMAC":"m","Vni":3}"#, Some(3)),
    ] {
        let attrs = LeaseAttrs::from_json(&format!(
            r#"{{"PublicIP":"10.0.0.3","BackendData":{data}}}"#
        ))
        .unwrap();
        let d: Data = attrs
            .backend_data_as()
            .unwrap_or_else(|e| panic!("{data}: {e}"));
        assert_eq!((d.vtep_mac.as_str(), d.vni), ("m", vni), "{data}");
    }
}

#[test]
fn backend_config_new_is_read_back() {
    let b = BackendConfig::new("vxlan");
    let o: Options = b.parse_as().unwrap();
    assert_eq!(o, Options::default());
}
