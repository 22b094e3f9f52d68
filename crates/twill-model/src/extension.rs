//! The options of flannel's `extension` backend: shell commands run at
//! start-up and for each peer subnet added or removed.

use std::time::Duration;

use serde_json::Value;

use crate::config::type_name;
use crate::{BackendConfig, ModelError};

/// The fields of the `Backend` object, in the order of flannel's Go struct
/// (a key matching several case-insensitively goes to the first), then
/// twill's own `CommandTimeout`.
const FIELDS: &[&str] = &[
    "PreStartupCommand",
    "PostStartupCommand",
    "SubnetAddCommand",
    "SubnetRemoveCommand",
    "CommandTimeout",
];

/// The longest `CommandTimeout` accepted: an hour.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

/// The `Backend` object of `"Type": "extension"`, as flannel reads it
/// (`pkg/backend/extension`), plus twill's `CommandTimeout`.
///
/// Keys are matched as Go's `encoding/json` does (exact name, else
/// case-insensitively; the last key naming a field wins; `null` is absent;
/// unknown keys are ignored). An absent or empty command is not run.
///
/// ```
/// use std::time::Duration;
/// use twill_model::{ExtensionConfig, NetworkConfig};
/// let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"extension",
///     "SubnetAddCommand":"ip route add \"$SUBNET\" via \"$PUBLIC_IP\"",
///     "subnetremovecommand":"ip route del \"$SUBNET\" via \"$PUBLIC_IP\"",
///     "CommandTimeout":"2.5s"}}"#).unwrap();
/// let ext = ExtensionConfig::from_backend(&cfg.backend).unwrap();
/// assert_eq!(ext.subnet_add_command, r#"ip route add "$SUBNET" via "$PUBLIC_IP""#);
/// assert!(ext.subnet_remove_command.starts_with("ip route del"));
/// assert!(ext.pre_startup_command.is_empty());
/// assert_eq!(ext.command_timeout, Duration::from_millis(2500));
///
/// let bad = NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"extension","SubnetAddCommand":7}}"#).unwrap();
/// let err = ExtensionConfig::from_backend(&bad.backend).unwrap_err();
/// assert_eq!(err.to_string(), "SubnetAddCommand must be a string, found number 7");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionConfig {
    /// `PreStartupCommand`: run once before the lease is acquired; its
    /// standard output, trimmed, is published as the lease's `BackendData`
    /// (a JSON string).
    pub pre_startup_command: String,
    /// `PostStartupCommand`: run once the lease is held, with `NETWORK`,
    /// `SUBNET`, `IPV6SUBNET`, `PUBLIC_IP` and `PUBLIC_IPV6` of our lease.
    pub post_startup_command: String,
    /// `SubnetAddCommand`: run for each peer subnet, with `SUBNET` and
    /// `PUBLIC_IP` of the peer and its `BackendData` on standard input.
    pub subnet_add_command: String,
    /// `SubnetRemoveCommand`: run for each peer subnet that goes away, as
    /// the add command.
    pub subnet_remove_command: String,
    /// `CommandTimeout` (a twill addition, ignored by flanneld): how long
    /// one command may run before it is killed. A number of seconds (`10`,
    /// `0.5`) or a Go duration string (`"10s"`, `"1m30s"`, `"500ms"`);
    /// default [`ExtensionConfig::DEFAULT_COMMAND_TIMEOUT`], at most
    /// [`MAX_COMMAND_TIMEOUT`].
    pub command_timeout: Duration,
}

impl Default for ExtensionConfig {
    fn default() -> Self {
        ExtensionConfig {
            pre_startup_command: String::new(),
            post_startup_command: String::new(),
            subnet_add_command: String::new(),
            subnet_remove_command: String::new(),
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl ExtensionConfig {
    /// The default `CommandTimeout`: 10 seconds.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

    /// Reads the options from the `Backend` object.
    ///
    /// # Errors
    /// [`ModelError::WrongType`] naming the field when a command is not a
    /// string or `CommandTimeout` neither a number nor a string;
    /// [`ModelError::InvalidValue`] when `CommandTimeout` does not parse or
    /// is not in `(0, 1h]`.
    pub fn from_backend(backend: &BackendConfig) -> Result<Self, ModelError> {
        let Value::Object(obj) = &backend.raw else {
            return Err(ModelError::WrongType {
                field: "Backend",
                expected: "an object",
                found: type_name(&backend.raw),
            });
        };
        let entries = crate::gojson::struct_entries(obj, FIELDS);
        let get = |name: &str| entries.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let command = |name: &'static str| -> Result<String, ModelError> {
            match get(name) {
                None => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(ModelError::WrongType {
                    field: name,
                    expected: "a string",
                    found: type_name(v),
                }),
            }
        };
        let command_timeout = match get("CommandTimeout") {
            None => Self::DEFAULT_COMMAND_TIMEOUT,
            Some(v) => parse_timeout(v)?,
        };
        Ok(ExtensionConfig {
            pre_startup_command: command("PreStartupCommand")?,
            post_startup_command: command("PostStartupCommand")?,
            subnet_add_command: command("SubnetAddCommand")?,
            subnet_remove_command: command("SubnetRemoveCommand")?,
            command_timeout,
        })
    }
}

fn parse_timeout(v: &Value) -> Result<Duration, ModelError> {
    const FIELD: &str = "CommandTimeout";
    let invalid = |value: String, reason: &str| ModelError::InvalidValue {
        field: FIELD,
        value: value.chars().take(64).collect(),
        reason: reason.into(),
    };
    let d = match v {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            if !secs.is_finite() || secs <= 0.0 {
                return Err(invalid(n.to_string(), "must be more than 0 seconds"));
            }
            if secs > MAX_COMMAND_TIMEOUT.as_secs_f64() {
                return Err(invalid(n.to_string(), "must be at most 3600 seconds (1h)"));
            }
            Duration::from_secs_f64(secs)
        }
        Value::String(s) => parse_go_duration(s).ok_or_else(|| {
            invalid(
                s.clone(),
                "not a duration: use a number of seconds or a Go duration such as \"10s\", \"500ms\", \"1m30s\"",
            )
        })?,
        v => {
            return Err(ModelError::WrongType {
                field: FIELD,
                expected: "a number of seconds or a duration string such as \"10s\"",
                found: type_name(v),
            })
        }
    };
    if d.is_zero() {
        return Err(invalid(format!("{v}"), "must be more than 0 seconds"));
    }
    if d > MAX_COMMAND_TIMEOUT {
        return Err(invalid(format!("{v}"), "must be at most 3600 seconds (1h)"));
    }
    Ok(d)
}

/// Go's `time.ParseDuration` for non-negative values: one or more decimal
/// numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g.
/// `1m30s`, `1.5s`; `0` alone is zero. `None` when it does not parse or
/// overflows.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    // Far beyond any accepted timeout: refused by the caller's range check
    // rather than overflowing here.
    if !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkConfig;

    fn parse(backend: &str) -> Result<ExtensionConfig, ModelError> {
        let cfg = NetworkConfig::parse(&format!(
            r#"{{"Network":"10.50.0.0/16","Backend":{backend}}}"#
        ))
        .unwrap();
        ExtensionConfig::from_backend(&cfg.backend)
    }

    /// flannel's Documentation/extension.md, both examples, verbatim.
    #[test]
    fn flannels_documented_examples_parse() {
        let hostgw = NetworkConfig::parse(
            r#"{
  "Network": "10.0.0.0/16",
  "Backend": {
    "Type": "extension",
    "SubnetAddCommand": "ip route add \"$SUBNET\" via \"$PUBLIC_IP\"",
    "SubnetRemoveCommand": "ip route del \"$SUBNET\" via \"$PUBLIC_IP\""
  }
}"#,
        )
        .unwrap();
        assert_eq!(hostgw.backend.backend_type, "extension");
        let e = ExtensionConfig::from_backend(&hostgw.backend).unwrap();
        assert_eq!(
            e.subnet_add_command,
            r#"ip route add "$SUBNET" via "$PUBLIC_IP""#
        );
        assert_eq!(
            e.subnet_remove_command,
            r#"ip route del "$SUBNET" via "$PUBLIC_IP""#
        );
        assert_eq!(e.pre_startup_command, "");
        assert_eq!(e.post_startup_command, "");
        assert_eq!(e.command_timeout, Duration::from_secs(10));

        let vxlan = NetworkConfig::parse(
            r#"{
  "Network": "10.50.0.0/16",
  "Backend": {
    "Type": "extension",
    "PreStartupCommand": "export VNI=1; export IF_NAME=flannel-vxlan; ip link del \"$IF_NAME\" 2>/dev/null; ip link add \"$IF_NAME\" type vxlan id \"$VNI\" dstport 8472 && cat \"/sys/class/net/${IF_NAME}/address\"",
    "PostStartupCommand": "export IF_NAME=flannel-vxlan; export SUBNET_IP=$(echo \"$SUBNET\" | cut -d'/' -f 1); ip addr add \"${SUBNET_IP}/32\" dev \"$IF_NAME\" && ip link set \"$IF_NAME\" up",
    "SubnetAddCommand": "export SUBNET_IP=$(echo \"$SUBNET\" | cut -d'/' -f 1); export IF_NAME=flannel-vxlan; read VTEP; ip route add \"$SUBNET\" nexthop via \"$SUBNET_IP\" dev \"$IF_NAME\" onlink && ip neigh replace \"$SUBNET_IP\" dev \"$IF_NAME\" lladdr \"$VTEP\" && bridge fdb add \"$VTEP\" dev \"$IF_NAME\" self dst \"$PUBLIC_IP\""
  }
}"#,
        )
        .unwrap();
        let e = ExtensionConfig::from_backend(&vxlan.backend).unwrap();
        assert!(e
            .pre_startup_command
            .starts_with("export VNI=1; export IF_NAME=flannel-vxlan;"));
        assert!(e
            .pre_startup_command
            .ends_with(r#"cat "/sys/class/net/${IF_NAME}/address""#));
        assert!(e
            .post_startup_command
            .contains(r#"ip addr add "${SUBNET_IP}/32""#));
        assert!(e.subnet_add_command.contains("read VTEP;"));
        assert_eq!(e.subnet_remove_command, "");
    }

    #[test]
    fn keys_match_as_go_does() {
        let e = parse(
            r#"{"Type":"extension","subnetaddcommand":"a","SUBNETADDCOMMAND":"b","PostStartupCommand":null,"commandtimeout":3,"Other":1}"#,
        )
        .unwrap();
        assert_eq!(
            e.subnet_add_command, "b",
            "the last key naming a field wins"
        );
        assert_eq!(e.post_startup_command, "", "null is absent");
        assert_eq!(e.command_timeout, Duration::from_secs(3));
        // No Backend options at all.
        assert_eq!(
            parse(r#"{"Type":"extension"}"#).unwrap(),
            ExtensionConfig::default()
        );
    }

    #[test]
    fn timeouts_parse_as_seconds_or_go_durations() {
        for (json, want) in [
            ("10", Duration::from_secs(10)),
            ("0.25", Duration::from_millis(250)),
            (r#""10s""#, Duration::from_secs(10)),
            (r#""500ms""#, Duration::from_millis(500)),
            (r#""1m30s""#, Duration::from_secs(90)),
            (r#""1.5s""#, Duration::from_millis(1500)),
            (r#""1h""#, Duration::from_secs(3600)),
        ] {
            let e = parse(&format!(
                r#"{{"Type":"extension","CommandTimeout":{json}}}"#
            ))
            .unwrap();
            assert_eq!(e.command_timeout, want, "{json}");
        }
    }

    #[test]
    fn bad_options_are_typed_errors_naming_the_field() {
        for (field, json) in [
            ("PreStartupCommand", r#"{"PreStartupCommand":["ls"]}"#),
            ("PostStartupCommand", r#"{"postStartupCommand":true}"#),
            ("SubnetAddCommand", r#"{"SubnetAddCommand":7}"#),
            ("SubnetRemoveCommand", r#"{"SubnetRemoveCommand":{"a":1}}"#),
            ("CommandTimeout", r#"{"CommandTimeout":true}"#),
        ] {
            match parse(json).unwrap_err() {
                ModelError::WrongType { field: f, .. } => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        for json in [
            "0",
            "-1",
            "3601",
            r#""0s""#,
            r#""10""#,
            r#""ten seconds""#,
            r#""2h""#,
            r#""-5s""#,
            r#""""#,
            r#""1.2.3s""#,
            r#""s""#,
        ] {
            let err = parse(&format!(r#"{{"CommandTimeout":{json}}}"#)).unwrap_err();
            match &err {
                ModelError::InvalidValue { field, .. } => assert_eq!(*field, "CommandTimeout"),
                other => panic!("{json}: {other:?}"),
            }
            assert!(err.to_string().starts_with("CommandTimeout "), "{err}");
        }
    }
}
