//! The plugin's one error type and its CNI error codes.

/// CNI error codes (CNI spec, "Error"; `types.Err*` in libcni).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_CNI_VERSION: u32 = 1;
    /// Invalid necessary environment variables, like `CNI_COMMAND`.
    pub const INVALID_ENVIRONMENT_VARIABLES: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Invalid network namespace.
    pub const INVALID_NETNS: u32 = 8;
    /// Internal error (libcni's `ErrInternal`, what flannel answers for
    /// its own failures).
    pub const INTERNAL: u32 = 999;
}

/// Everything that can make the plugin fail; each maps to a CNI error code
/// ([`CniError::code`]) and becomes the error JSON on stdout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CniError {
    /// Required `CNI_*` variables are unset or empty (libcni's message).
    #[error("required env variables [{0}] missing")]
    MissingEnv(String),
    /// A `CNI_*` variable has an invalid value (`CNI_CONTAINERID`,
    /// `CNI_IFNAME`, an unknown `CNI_COMMAND`).
    #[error("{msg}")]
    InvalidEnv {
        /// What is wrong (libcni's message).
        msg: String,
        /// The value, or more detail.
        details: String,
    },
    /// Reading the config from stdin failed.
    #[error("error reading from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    /// The network config (stdin) is not JSON, or a field that must be
    /// decoded (`cniVersion`, `name`) has the wrong type.
    #[error("{0}")]
    Decode(String),
    /// A field of the network config has an invalid value; `field` names it
    /// (`subnetFile`, `delegate.type`, `ipam.routes[0].dst`, ...).
    #[error("invalid network config: `{field}` {reason}")]
    InvalidConfig {
        /// The field, as a JSON path.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The config's `cniVersion` is one this plugin does not speak, or does
    /// not allow the command.
    #[error("{msg}")]
    IncompatibleVersion {
        /// libcni's message (`incompatible CNI versions`, `config version
        /// does not allow CHECK`).
        msg: String,
        /// The versions involved.
        details: String,
    },
    /// The subnet file cannot be read (flannel's message: a missing file
    /// means flanneld, or twilld, has not written it yet).
    #[error("failed to load flannel 'subnet.env' file: open {path}: {reason}. Check the flannel pod log for this node.")]
    SubnetFileRead {
        /// The file (`subnetFile`).
        path: String,
        /// The OS error, as Go prints it (`no such file or directory`).
        reason: String,
    },
    /// The subnet file is incomplete or holds a value that does not parse.
    #[error(
        "failed to load flannel 'subnet.env' file: {0}. Check the flannel pod log for this node."
    )]
    SubnetFileInvalid(String),
    /// `CNI_NETNS` is the plugin's own network namespace.
    #[error("plugin's netns and netns from CNI_NETNS should not be the same")]
    SameNetns,
    /// Reading or writing the per-container state under `dataDir`.
    #[error("{what} {path}: {reason}")]
    State {
        /// What we were doing.
        what: &'static str,
        /// The file or directory.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The delegate plugin is not on `CNI_PATH` (libcni's message).
    #[error("{0}")]
    DelegateNotFound(String),
    /// The delegate plugin could not be started.
    #[error("failed to run the delegate plugin {path}: {reason}")]
    DelegateSpawn {
        /// The plugin's path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The delegate plugin failed: its own CNI error, relayed as is (as
    /// libcni's skel does with a wrapped `*types.Error`).
    #[error("{msg}")]
    Delegate {
        /// The delegate's code.
        code: u32,
        /// The delegate's message.
        msg: String,
        /// The delegate's details.
        details: String,
    },
    /// The delegate succeeded but its stdout is not a JSON result.
    #[error("the delegate plugin's result is not JSON: {0}")]
    DelegateResult(String),
}

impl CniError {
    /// The CNI error code.
    #[must_use]
    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            CniError::MissingEnv(_) | CniError::InvalidEnv { .. } => INVALID_ENVIRONMENT_VARIABLES,
            CniError::Stdin(_) | CniError::SubnetFileRead { .. } | CniError::State { .. } => {
                IO_FAILURE
            }
            CniError::Decode(_) | CniError::SubnetFileInvalid(_) | CniError::DelegateResult(_) => {
                DECODING_FAILURE
            }
            CniError::InvalidConfig { .. } => INVALID_NETWORK_CONFIG,
            CniError::IncompatibleVersion { .. } => INCOMPATIBLE_CNI_VERSION,
            CniError::SameNetns => INVALID_NETNS,
            CniError::DelegateNotFound(_) | CniError::DelegateSpawn { .. } => INTERNAL,
            CniError::Delegate { code, .. } => *code,
        }
    }

    /// The error's `details` (empty when it has none).
    #[must_use]
    pub fn details(&self) -> &str {
        match self {
            CniError::InvalidEnv { details, .. }
            | CniError::IncompatibleVersion { details, .. }
            | CniError::Delegate { details, .. } => details,
            _ => "",
        }
    }

    /// The CNI error JSON for this error, as the spec writes it:
    /// `{"cniVersion":..,"code":N,"msg":..,"details":..}` (`details` left
    /// out when empty, as libcni does), indented as libcni prints it.
    ///
    /// ```
    /// use twill_cni::CniError;
    /// let e = CniError::MissingEnv("CNI_PATH".into());
    /// let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
    /// assert_eq!(v["code"], 4);
    /// assert_eq!(v["msg"], "required env variables [CNI_PATH] missing");
    /// ```
    #[must_use]
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut m = serde_json::Map::new();
        m.insert("cniVersion".into(), cni_version.into());
        m.insert("code".into(), self.code().into());
        m.insert("msg".into(), self.to_string().into());
        if !self.details().is_empty() {
            m.insert("details".into(), self.details().into());
        }
        // libcni indents with four spaces (json.MarshalIndent).
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        let mut out = match serde::Serialize::serialize(&serde_json::Value::Object(m), &mut ser) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(_) => format!("{{\"code\":{}}}", self.code()),
        };
        out.push('\n');
        out
    }
}

/// An OS error as Go prints it (`no such file or directory`), for messages
/// that keep flannel's wording.
pub(crate) fn go_style(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s,
    }
}
