//! What libcni's `skel` does before a plugin's own code runs: the `CNI_*`
//! environment, the config's name and `cniVersion`, which command is
//! allowed at which version, and the `VERSION` answer. Pure: the
//! environment comes in as a lookup function.

use serde_json::Value;

use crate::CniError;

/// The CNI spec versions this plugin speaks: those of the `bridge` and
/// `host-local` plugins it delegates to (containernetworking-plugins 1.1),
/// which covers configs without `cniVersion` (0.1.0, as flannel's README
/// example) and 0.3.1 through 1.0.0. The result is the delegate's, in the
/// config's version.
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The newest of [`SUPPORTED_VERSIONS`]: the `cniVersion` of the `VERSION`
/// answer, and of an error when the config names none.
pub const CURRENT_VERSION: &str = "1.0.0";

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Attach the container.
    Add,
    /// Check the container's attachment.
    Check,
    /// Detach the container.
    Del,
    /// Report the supported versions.
    Version,
    /// Garbage-collect (spec 1.1.0: refused, this plugin speaks up to 1.0.0).
    Gc,
    /// Report readiness (spec 1.1.0: refused as `GC`).
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "CHECK" => Command::Check,
            "DEL" => Command::Del,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation, validated as libcni does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdArgs {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for `VERSION`, `GC`, `STATUS`).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for `DEL`).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_PATH`, split at `:`.
    pub path: Vec<String>,
    /// `CNI_NETNS_OVERRIDE` is `true` or `1`: skip the "same netns" check.
    pub netns_override: bool,
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// No `CNI_COMMAND`: print what the plugin is on stderr and succeed (as
    /// libcni's skel does when run by hand).
    About,
    /// A command with its arguments.
    Cmd(CmdArgs),
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |msg: &str, details: &str| {
        Err(CniError::InvalidEnv {
            msg: msg.into(),
            details: details.into(),
        })
    };
    if name.len() > 15 {
        return bad(
            "interface name is too long",
            "interface name should be less than 16 characters",
        );
    }
    if name == "." || name == ".." {
        return bad("interface name is . or ..", "");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad(
            "interface name contains / or : or whitespace characters",
            "",
        );
    }
    Ok(())
}

/// Reads the `CNI_*` variables as libcni's skel does: which ones each
/// command requires, `CNI_CONTAINERID` and `CNI_IFNAME` validated.
///
/// ```
/// use twill_cni::skel::{parse_env, Command, Invocation};
/// let env = |k: &str| match k {
///     "CNI_COMMAND" => Some("DEL".to_string()),
///     "CNI_CONTAINERID" => Some("c1".into()),
///     "CNI_IFNAME" => Some("eth0".into()),
///     "CNI_PATH" => Some("/opt/cni/bin:/usr/lib/cni".into()),
///     _ => None,
/// };
/// let Invocation::Cmd(args) = parse_env(env).unwrap() else { panic!() };
/// assert_eq!(args.command, Command::Del);
/// assert_eq!(args.path, ["/opt/cni/bin", "/usr/lib/cni"]);
/// ```
///
/// # Errors
/// [`CniError::MissingEnv`] listing every required variable that is unset
/// or empty, [`CniError::InvalidEnv`] for a bad container id, interface
/// name or command.
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
    let get = |k: &str| get(k).unwrap_or_default();
    let cmd = get("CNI_COMMAND");
    if cmd.is_empty() {
        return Ok(Invocation::About);
    }
    let command = Command::parse(&cmd);
    use Command::*;
    let needs = |var: &str| -> bool {
        let Some(c) = command else { return false };
        match var {
            "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(c, Add | Check | Del),
            "CNI_NETNS" => matches!(c, Add | Check),
            "CNI_PATH" => matches!(c, Add | Check | Del | Gc | Status),
            _ => false,
        }
    };
    let mut missing = Vec::new();
    let mut vals = Vec::new();
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        let v = get(var);
        if v.is_empty() && needs(var) {
            missing.push(var);
        } else if !v.is_empty() && needs(var) {
            match var {
                "CNI_CONTAINERID" if !valid_name(&v) => {
                    return Err(CniError::InvalidEnv {
                        msg: "invalid characters in containerID".into(),
                        details: v,
                    })
                }
                "CNI_IFNAME" => validate_ifname(&v)?,
                _ => {}
            }
        }
        vals.push(v);
    }
    if !missing.is_empty() {
        return Err(CniError::MissingEnv(missing.join(",")));
    }
    let Some(command) = command else {
        return Err(CniError::InvalidEnv {
            msg: format!("unknown CNI_COMMAND: {cmd}"),
            details: String::new(),
        });
    };
    let override_ = get("CNI_NETNS_OVERRIDE");
    let mut vals = vals.into_iter();
    let mut next = || vals.next().unwrap_or_default();
    let (container_id, netns, ifname, path) = (next(), next(), next(), next());
    Ok(Invocation::Cmd(CmdArgs {
        command,
        container_id,
        netns,
        ifname,
        path: path
            .split(':')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        netns_override: override_.eq_ignore_ascii_case("true") || override_ == "1",
    }))
}

/// libcni's `validateConfig`: stdin is a JSON object with a valid `name`.
///
/// # Errors
/// [`CniError::Decode`] when stdin is not a JSON object or `name` is not a
/// string, [`CniError::InvalidConfig`] naming `name` when it is missing or
/// has characters CNI does not allow.
pub fn validate_config(stdin: &[u8]) -> Result<Value, CniError> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::Decode(format!("error unmarshall network config: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(CniError::Decode(
            "error unmarshall network config: the network config is not a JSON object".into(),
        ));
    };
    match obj.get("name") {
        None | Some(Value::Null) => Err(CniError::InvalidConfig {
            field: "name".into(),
            reason: "is missing (missing network name)".into(),
        }),
        Some(Value::String(s)) if s.is_empty() => Err(CniError::InvalidConfig {
            field: "name".into(),
            reason: "is missing (missing network name)".into(),
        }),
        Some(Value::String(s)) if !valid_name(s) => Err(CniError::InvalidConfig {
            field: "name".into(),
            reason: format!(
                "has invalid characters (invalid characters found in network name): {s:?}"
            ),
        }),
        Some(Value::String(_)) => Ok(v),
        Some(other) => Err(CniError::Decode(format!(
            "error unmarshall network config: `name` must be a string, got {other}"
        ))),
    }
}

/// The config's `cniVersion`; `0.1.0` when absent or empty, as libcni
/// decodes it.
///
/// # Errors
/// [`CniError::Decode`] when it is not a string.
pub fn config_version(config: &Value) -> Result<String, CniError> {
    match config.get("cniVersion") {
        None | Some(Value::Null) => Ok("0.1.0".into()),
        Some(Value::String(s)) if s.is_empty() => Ok("0.1.0".into()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(CniError::Decode(format!(
            "decoding version from network config: `cniVersion` must be a string, got {other}"
        ))),
    }
}

/// libcni's `ParseVersion`: `major[.minor[.micro]]`, empty = 0.1.0.
fn parse_version(v: &str) -> Result<(i64, i64, i64), CniError> {
    if v.is_empty() {
        return Ok((0, 1, 0));
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() >= 4 {
        return Err(CniError::Decode(format!(
            "invalid version {v:?}: too many parts"
        )));
    }
    let mut out = [0i64; 3];
    for (i, p) in parts.iter().enumerate() {
        out[i] = p.parse().map_err(|e| {
            CniError::Decode(format!(
                "failed to convert version part {p:?} of {v:?}: {e}"
            ))
        })?;
    }
    Ok((out[0], out[1], out[2]))
}

fn at_least(v: &str, other: &str) -> Result<bool, CniError> {
    Ok(parse_version(v)? >= parse_version(other)?)
}

/// Whether `config_version` may run `command`, as libcni's skel decides:
/// the version must be one of [`SUPPORTED_VERSIONS`]; `CHECK` needs 0.4.0
/// or later, `GC` and `STATUS` 1.1.0 (which this plugin does not speak).
///
/// ```
/// use twill_cni::skel::{check_version, Command};
/// assert!(check_version(Command::Add, "0.3.1").is_ok());
/// assert!(check_version(Command::Check, "0.3.1").is_err()); // CHECK came with 0.4.0
/// assert!(check_version(Command::Add, "2.0.0").is_err());
/// ```
///
/// # Errors
/// [`CniError::IncompatibleVersion`] or, for a version that does not
/// parse, [`CniError::Decode`].
pub fn check_version(command: Command, config_version: &str) -> Result<(), CniError> {
    let incompatible = |msg: &str, details: String| {
        Err(CniError::IncompatibleVersion {
            msg: msg.into(),
            details,
        })
    };
    let min = match command {
        Command::Check => Some(("0.4.0", "CHECK")),
        Command::Gc => Some(("1.1.0", "GC")),
        Command::Status => Some(("1.1.0", "STATUS")),
        _ => None,
    };
    if let Some((min, name)) = min {
        if !at_least(config_version, min)? {
            return incompatible(
                &format!("config version does not allow {name}"),
                String::new(),
            );
        }
        let mut plugin_allows = false;
        for v in SUPPORTED_VERSIONS {
            if at_least(v, config_version)? {
                plugin_allows = true;
                break;
            }
        }
        if !plugin_allows {
            return incompatible(
                &format!("plugin version does not allow {name}"),
                String::new(),
            );
        }
    }
    if SUPPORTED_VERSIONS.contains(&config_version) {
        Ok(())
    } else {
        incompatible(
            "incompatible CNI versions",
            format!("config is {config_version:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
        )
    }
}

/// The answer to `VERSION`: `{"cniVersion":"1.0.0","supportedVersions":[..]}`.
#[must_use]
pub fn version_info() -> String {
    let v = serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    });
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn each_command_requires_what_libcni_requires() {
        match parse_env(env(&[("CNI_COMMAND", "ADD")])) {
            Err(CniError::MissingEnv(m)) => {
                assert_eq!(m, "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH");
            }
            other => panic!("{other:?}"),
        }
        // DEL does not need CNI_NETNS (the namespace may be gone).
        let del = parse_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]));
        assert!(matches!(del, Ok(Invocation::Cmd(_))), "{del:?}");
        let v = parse_env(env(&[("CNI_COMMAND", "VERSION")]));
        assert!(matches!(
            v,
            Ok(Invocation::Cmd(CmdArgs {
                command: Command::Version,
                ..
            }))
        ));
        assert_eq!(parse_env(env(&[])).unwrap(), Invocation::About);
        match parse_env(env(&[("CNI_COMMAND", "FOO")])) {
            Err(e @ CniError::InvalidEnv { .. }) => {
                assert_eq!(e.to_string(), "unknown CNI_COMMAND: FOO");
                assert_eq!(e.code(), 4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn container_id_and_ifname_are_validated() {
        let base = |id: &'static str, ifname: &'static str| {
            parse_env(env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/x"),
            ]))
        };
        assert!(base("abc-1_2.3", "eth0").is_ok());
        for (id, ifname, msg) in [
            ("../etc", "eth0", "invalid characters in containerID"),
            ("a/b", "eth0", "invalid characters in containerID"),
            ("abc", "a-very-long-name0", "interface name is too long"),
            ("abc", "..", "interface name is . or .."),
            (
                "abc",
                "eth 0",
                "interface name contains / or : or whitespace characters",
            ),
        ] {
            match base(id, ifname) {
                Err(e @ CniError::InvalidEnv { .. }) => assert_eq!(e.to_string(), msg),
                other => panic!("{id} {ifname}: {other:?}"),
            }
        }
    }

    #[test]
    fn config_name_and_version_are_decoded_as_libcni_does() {
        assert!(matches!(
            validate_config(b"not json"),
            Err(CniError::Decode(_))
        ));
        assert!(matches!(validate_config(b"[1]"), Err(CniError::Decode(_))));
        assert!(matches!(
            validate_config(br#"{"name":5}"#),
            Err(CniError::Decode(_))
        ));
        for bad in [&br#"{}"#[..], br#"{"name":""}"#, br#"{"name":"a b"}"#] {
            match validate_config(bad) {
                Err(e @ CniError::InvalidConfig { .. }) => {
                    assert_eq!(e.code(), 7);
                    assert!(e.to_string().contains("`name`"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        let v = validate_config(br#"{"name":"cbr0"}"#).unwrap();
        assert_eq!(config_version(&v).unwrap(), "0.1.0");
        let v = validate_config(br#"{"name":"cbr0","cniVersion":"0.3.1"}"#).unwrap();
        assert_eq!(config_version(&v).unwrap(), "0.3.1");
        let v = validate_config(br#"{"name":"cbr0","cniVersion":1}"#).unwrap();
        assert!(matches!(config_version(&v), Err(CniError::Decode(_))));
    }

    #[test]
    fn versions_and_commands() {
        for v in ["0.3.1", "0.4.0", "1.0.0", "0.1.0"] {
            check_version(Command::Add, v).unwrap();
            check_version(Command::Del, v).unwrap();
        }
        check_version(Command::Check, "0.4.0").unwrap();
        check_version(Command::Check, "1.0.0").unwrap();
        let e = check_version(Command::Check, "0.3.1").unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (1, "config version does not allow CHECK".to_string())
        );
        let e = check_version(Command::Add, "1.1.0").unwrap_err();
        assert_eq!(e.to_string(), "incompatible CNI versions");
        assert!(
            e.details().contains("config is \"1.1.0\""),
            "{}",
            e.details()
        );
        let e = check_version(Command::Gc, "1.0.0").unwrap_err();
        assert_eq!(e.to_string(), "config version does not allow GC");
        let e = check_version(Command::Gc, "1.1.0").unwrap_err();
        assert_eq!(e.to_string(), "plugin version does not allow GC");
        assert!(matches!(
            check_version(Command::Check, "1.x"),
            Err(CniError::Decode(_))
        ));
        let info: Value = serde_json::from_str(&version_info()).unwrap();
        assert_eq!(info["cniVersion"], "1.0.0");
        assert_eq!(info["supportedVersions"].as_array().unwrap().len(), 6);
    }
}
