//! flannel's network config (`NetConf`) and its merge with subnet.env into
//! the delegate's config (`doCmdAdd`, `getDelegateIPAM`): pure functions.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::subnet_env::parse_cidr;
use crate::{CniError, FlannelEnv};

/// Where flannel keeps each container's delegate config, by container id.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The fields of a `"type":"flannel"` config the plugin reads; every other
/// field is ignored, as flannel does.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, when given and not empty: copied to the delegate.
    pub cni_version: Option<String>,
    /// `name`: the network's name, copied to the delegate.
    pub name: String,
    /// `subnetFile` (default `/run/flannel/subnet.env`).
    pub subnet_file: PathBuf,
    /// `dataDir` (default [`DEFAULT_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// `delegate`: the delegate's config, before the merge.
    pub delegate: Option<Map<String, Value>>,
    /// `ipam`: the base of the delegate's `ipam`.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`: handed to the delegate.
    pub runtime_config: Option<Map<String, Value>>,
}

fn invalid(field: &str, reason: impl Into<String>) -> CniError {
    CniError::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

fn kind(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

impl NetConf {
    /// Reads the config (a JSON object, see [`crate::skel::validate_config`]).
    /// A `null` field is an absent one, as Go's decoder takes it.
    ///
    /// ```
    /// use twill_cni::NetConf;
    /// let v = serde_json::json!({"name": "cbr0", "type": "flannel", "delegate": {"hairpinMode": true}});
    /// let nc = NetConf::parse(&v).unwrap();
    /// assert_eq!(nc.subnet_file.to_str(), Some("/run/flannel/subnet.env"));
    /// assert_eq!(nc.data_dir.to_str(), Some("/var/lib/cni/flannel"));
    /// ```
    ///
    /// # Errors
    /// [`CniError::InvalidConfig`] naming the field that has the wrong type
    /// or an empty path.
    pub fn parse(config: &Value) -> Result<Self, CniError> {
        let obj = config
            .as_object()
            .ok_or_else(|| CniError::Decode("the network config is not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let string = |k: &str| -> Result<Option<String>, CniError> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(invalid(k, format!("must be a string, got {}", kind(v)))),
            }
        };
        let object = |k: &str| -> Result<Option<Map<String, Value>>, CniError> {
            match get(k) {
                None => Ok(None),
                Some(Value::Object(m)) => Ok(Some(m.clone())),
                Some(v) => Err(invalid(k, format!("must be an object, got {}", kind(v)))),
            }
        };
        let path = |k: &str, default: &str| -> Result<PathBuf, CniError> {
            match string(k)? {
                None => Ok(PathBuf::from(default)),
                Some(s) if s.is_empty() => Err(invalid(k, "must not be empty")),
                Some(s) => Ok(PathBuf::from(s)),
            }
        };
        Ok(NetConf {
            cni_version: string("cniVersion")?.filter(|s| !s.is_empty()),
            name: string("name")?.unwrap_or_default(),
            subnet_file: path("subnetFile", twill_model::DEFAULT_SUBNET_FILE)?,
            data_dir: path("dataDir", DEFAULT_DATA_DIR)?,
            delegate: object("delegate")?,
            ipam: object("ipam")?,
            runtime_config: object("runtimeConfig")?,
        })
    }
}

/// Go's `json.Marshal` of a `map[string]interface{}` sorts keys at every
/// level; doing the same makes the delegate config (and the state file)
/// the bytes flannel writes.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(sorted_map(m, true)),
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

fn sorted_map(m: Map<String, Value>, deep: bool) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = m.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
        .into_iter()
        .map(|(k, v)| (k, if deep { sorted(v) } else { v }))
        .collect()
}

/// One of `ipam.routes`, as libcni's `types.Route` reads and writes it
/// (`dst`, `gw`, `mtu`, `advmss`, `priority`, `table`, `scope`; other
/// fields dropped, zero `mtu`/`advmss`/`priority` left out).
fn route(i: usize, v: &Value) -> Result<Value, CniError> {
    let field = |k: &str| format!("ipam.routes[{i}].{k}");
    let obj = v.as_object().ok_or_else(|| {
        invalid(
            &format!("ipam.routes[{i}]"),
            format!("must be an object, got {}", kind(v)),
        )
    })?;
    let mut out = Map::new();
    match obj.get("dst") {
        Some(Value::String(s)) => {
            let dst = parse_cidr(s, false).map_err(|e| invalid(&field("dst"), e))?;
            out.insert("dst".into(), dst.to_string().into());
        }
        Some(v) => {
            return Err(invalid(
                &field("dst"),
                format!("must be a CIDR string, got {}", kind(v)),
            ))
        }
        None => return Err(invalid(&field("dst"), "is missing")),
    }
    match obj.get("gw") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let gw: std::net::IpAddr = s
                .parse()
                .map_err(|_| invalid(&field("gw"), format!("is not an IP address: {s:?}")))?;
            out.insert("gw".into(), gw.to_string().into());
        }
        Some(v) => {
            return Err(invalid(
                &field("gw"),
                format!("must be a string, got {}", kind(v)),
            ))
        }
    }
    for (k, keep_zero) in [
        ("mtu", false),
        ("advmss", false),
        ("priority", false),
        ("table", true),
        ("scope", true),
    ] {
        match obj.get(k) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v.as_i64().ok_or_else(|| {
                    invalid(&field(k), format!("must be an integer, got {}", kind(v)))
                })?;
                if n != 0 || keep_zero {
                    out.insert(k.into(), n.into());
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The delegate's config: flannel's `doCmdAdd` and `getDelegateIPAM`.
///
/// Starting from `delegate` (or `{}`) and `runtimeConfig`: `name` from the
/// config, `type` `bridge` unless given, `ipMasq` = !`FLANNEL_IPMASQ`
/// unless given (if flannel does not masquerade, the bridge must),
/// `mtu` = `FLANNEL_MTU` unless given, for `bridge` `isGateway` true unless
/// given, `cniVersion` from the config when it has one. `ipam` starts from
/// the config's `ipam` (its other fields pass through), `type`
/// `host-local` unless given, `ranges` one per family from
/// `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` (replacing any), `routes` the
/// config's `ipam.routes` followed by one per `FLANNEL_NETWORK` and
/// `FLANNEL_IPV6_NETWORK`.
///
/// ```
/// use twill_cni::{delegate_config, FlannelEnv, NetConf};
/// let nc = NetConf::parse(&serde_json::json!({"name": "cbr0", "cniVersion": "1.0.0", "type": "flannel"})).unwrap();
/// let env = FlannelEnv::parse("subnet.env",
///     "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n").unwrap();
/// let d = delegate_config(&nc, &env).unwrap();
/// assert_eq!(serde_json::Value::Object(d), serde_json::json!({
///     "cniVersion": "1.0.0", "ipMasq": false, "isGateway": true, "mtu": 1472, "name": "cbr0", "type": "bridge",
///     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]},
/// }));
/// ```
///
/// # Errors
/// [`CniError::InvalidConfig`] when `delegate` has a non-string `type`, a
/// `name` or an `ipam` (flannel sets those), or `ipam.routes` is not a
/// list of routes.
pub fn delegate_config(nc: &NetConf, env: &FlannelEnv) -> Result<Map<String, Value>, CniError> {
    let mut d = sorted_map(nc.delegate.clone().unwrap_or_default(), true);
    if d.get("type").is_some_and(|t| !t.is_string()) {
        return Err(invalid(
            "delegate.type",
            "must be a string ('delegate' dictionary, if present, must have (string) 'type' field)",
        ));
    }
    if d.contains_key("name") {
        return Err(invalid(
            "delegate.name",
            "must not be set ('delegate' dictionary must not have 'name' field, it'll be set by flannel)",
        ));
    }
    if d.contains_key("ipam") {
        return Err(invalid(
            "delegate.ipam",
            "must not be set ('delegate' dictionary must not have 'ipam' field, it'll be set by flannel)",
        ));
    }
    if let Some(rc) = &nc.runtime_config {
        d.insert("runtimeConfig".into(), sorted(Value::Object(rc.clone())));
    }
    d.insert("name".into(), nc.name.clone().into());
    d.entry("type").or_insert_with(|| "bridge".into());
    d.entry("ipMasq").or_insert_with(|| (!env.ip_masq).into());
    d.entry("mtu").or_insert_with(|| env.mtu.into());
    if d.get("type").and_then(Value::as_str) == Some("bridge") {
        d.entry("isGateway").or_insert(Value::Bool(true));
    }
    if let Some(v) = &nc.cni_version {
        d.insert("cniVersion".into(), v.clone().into());
    }

    let mut ipam = sorted_map(nc.ipam.clone().unwrap_or_default(), true);
    ipam.entry("type").or_insert_with(|| "host-local".into());
    let ranges: Vec<Value> = [env.subnet, env.ipv6_subnet]
        .into_iter()
        .flatten()
        .map(|sn| serde_json::json!([{ "subnet": sn.to_string() }]))
        .collect();
    ipam.insert("ranges".into(), ranges.into());
    let mut routes = match ipam.get("routes") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, r)| route(i, r))
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(invalid(
                "ipam.routes",
                format!("must be a list, got {}", kind(v)),
            ))
        }
    };
    for nw in env.networks.iter().chain(&env.ipv6_networks) {
        routes.push(serde_json::json!({ "dst": nw.to_string() }));
    }
    ipam.insert("routes".into(), routes.into());
    d.insert("ipam".into(), Value::Object(sorted_map(ipam, false)));
    Ok(sorted_map(d, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V4: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const DUAL: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    fn merge(config: &Value, env: &str) -> Result<Value, CniError> {
        let nc = NetConf::parse(config)?;
        let env = FlannelEnv::parse("subnet.env", env)?;
        delegate_config(&nc, &env).map(Value::Object)
    }

    fn base() -> Value {
        json!({"name": "cni-flannel", "type": "flannel", "subnetFile": "/x", "dataDir": "/y"})
    }

    /// flannel's own test (flannel_linux_test.go, "only ipv4 stack"): the
    /// same delegate config, and Go's byte order (sorted keys).
    #[test]
    fn ipv4_as_flannels_test_expects() {
        let d = merge(&base(), V4).unwrap();
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    #[test]
    fn dual_stack_ipv6_only_and_several_networks() {
        let d = merge(&base(), DUAL).unwrap();
        assert_eq!(
            d["ipam"]["ranges"],
            json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]])
        );
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}])
        );
        let v6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        let d = merge(&base(), v6).unwrap();
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet": "fc00::/64"}]]));
        assert_eq!(d["ipam"]["routes"], json!([{"dst": "fc00::/48"}]));
        let multi = V4.replace("10.1.0.0/16", "10.1.0.0/16,192.168.0.0/16");
        let d = merge(&base(), &multi).unwrap();
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}])
        );
    }

    #[test]
    fn ip_masq_is_the_inverse_of_flannels_and_mtu_is_flannels() {
        let no_masq = V4.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false");
        let d = merge(&base(), &no_masq).unwrap();
        assert_eq!(
            d["ipMasq"], true,
            "flanneld does not masquerade: the bridge must"
        );
        assert_eq!(d["mtu"], 1472);
        assert!(d.get("cniVersion").is_none(), "no cniVersion in, none out");
    }

    /// flannel's test with an input ipam: its type and unknown fields
    /// pass through, its routes come first.
    #[test]
    fn ipam_base_is_kept_and_completed() {
        let mut c = base();
        c["ipam"] = json!({
            "type": "my-ipam",
            "unknown-param": "unknown-value",
            "dataDir": "/tmp/ipam",
            "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20", "x": 1}],
            "ranges": [[{"subnet": "1.2.3.0/24"}]],
        });
        let d = merge(&c, V4).unwrap();
        assert_eq!(
            d["ipam"],
            json!({
                "dataDir": "/tmp/ipam",
                "ranges": [[{"subnet": "10.1.17.0/24"}]],
                "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}, {"dst": "10.1.0.0/16"}],
                "type": "my-ipam",
                "unknown-param": "unknown-value",
            })
        );
    }

    #[test]
    fn user_delegate_fields_win_where_flannel_lets_them() {
        let mut c = base();
        c["cniVersion"] = "0.4.0".into();
        c["delegate"] = json!({"bridge": "mynet0", "mtu": 1400, "ipMasq": true, "isGateway": false, "cniVersion": "9.9.9"});
        c["runtimeConfig"] = json!({"portMappings": []});
        let d = merge(&c, V4).unwrap();
        assert_eq!(d["bridge"], "mynet0");
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["ipMasq"], true);
        assert_eq!(d["isGateway"], false);
        assert_eq!(d["cniVersion"], "0.4.0", "the config's cniVersion wins");
        assert_eq!(d["runtimeConfig"], json!({"portMappings": []}));
        assert_eq!(d["name"], "cni-flannel");
        // Another delegate type: no isGateway.
        let mut c = base();
        c["delegate"] = json!({"type": "ipvlan", "master": "eth0"});
        let d = merge(&c, V4).unwrap();
        assert_eq!(d["type"], "ipvlan");
        assert!(d.get("isGateway").is_none());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({"delegate": {"type": 5}}), "delegate.type"),
            (json!({"delegate": {"name": "x"}}), "delegate.name"),
            (json!({"delegate": {"ipam": {}}}), "delegate.ipam"),
            (json!({"delegate": "bridge"}), "delegate"),
            (json!({"subnetFile": 5}), "subnetFile"),
            (json!({"subnetFile": ""}), "subnetFile"),
            (json!({"dataDir": ["x"]}), "dataDir"),
            (json!({"ipam": []}), "ipam"),
            (json!({"ipam": {"routes": {}}}), "ipam.routes"),
            (
                json!({"ipam": {"routes": [{"dst": "10.0.0.0"}]}}),
                "ipam.routes[0].dst",
            ),
            (
                json!({"ipam": {"routes": [{"dst": "10.0.0.0/8"}, {"gw": "1.2.3.4"}]}}),
                "ipam.routes[1].dst",
            ),
            (
                json!({"ipam": {"routes": [{"dst": "10.0.0.0/8", "gw": "x"}]}}),
                "ipam.routes[0].gw",
            ),
            (json!({"runtimeConfig": 1}), "runtimeConfig"),
        ];
        for (extra, field) in cases {
            let mut c = base();
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            match merge(&c, V4) {
                Err(e @ CniError::InvalidConfig { .. }) => {
                    assert_eq!(e.code(), 7);
                    assert!(e.to_string().contains(&format!("`{field}`")), "{c}: {e}");
                }
                other => panic!("{c}: {other:?}"),
            }
        }
        // null is absent, as for Go's decoder.
        let mut c = base();
        c["subnetFile"] = Value::Null;
        assert_eq!(
            NetConf::parse(&c).unwrap().subnet_file,
            PathBuf::from("/run/flannel/subnet.env")
        );
    }
}
