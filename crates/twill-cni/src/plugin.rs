//! The IO around the pure core: reading subnet.env, the per-container
//! state under `dataDir`, running the delegate. [`run`] is the whole
//! plugin given an environment lookup, stdin, stdout and stderr.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::error::go_style;
use crate::skel::{self, CmdArgs, Command, Invocation, CURRENT_VERSION};
use crate::{delegate_config, CniError, FlannelEnv, NetConf};

/// What `flannel` prints on stderr when run by hand (no `CNI_COMMAND`).
pub const ABOUT: &str = concat!(
    "CNI Plugin flannel version ",
    env!("CARGO_PKG_VERSION"),
    " (twill-cni, a drop-in for flannel-io/cni-plugin)"
);

/// Runs one invocation: the answer (a result, the `VERSION` info or
/// nothing) on `stdout` and exit status 0, or the CNI error JSON on
/// `stdout` and status 1. Diagnostics go to `stderr`.
pub fn run(
    getenv: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let mut version = CURRENT_VERSION.to_string();
    match dispatch(&getenv, stdin, stderr, &mut version) {
        Ok(out) => {
            if stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return 1;
            }
            0
        }
        Err(e) => {
            let _ = writeln!(stderr, "flannel: {e}");
            let _ = stdout.write_all(e.to_json(&version).as_bytes());
            let _ = stdout.flush();
            1
        }
    }
}

fn dispatch(
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stderr: &mut dyn Write,
    version: &mut String,
) -> Result<Vec<u8>, CniError> {
    let args = match skel::parse_env(getenv)? {
        Invocation::About => {
            let _ = writeln!(stderr, "{ABOUT}");
            let _ = writeln!(
                stderr,
                "CNI protocol versions supported: {}",
                skel::SUPPORTED_VERSIONS.join(", ")
            );
            return Ok(Vec::new());
        }
        Invocation::Cmd(args) => args,
    };
    if args.command == Command::Version {
        return Ok(skel::version_info().into_bytes());
    }
    let mut raw = Vec::new();
    stdin.read_to_end(&mut raw).map_err(CniError::Stdin)?;
    let config = skel::validate_config(&raw)?;
    if let Some(Value::String(v)) = config.get("cniVersion") {
        if !v.is_empty() {
            version.clone_from(v);
        }
    }
    let config_version = skel::config_version(&config)?;
    skel::check_version(args.command, &config_version)?;
    let nc = NetConf::parse(&config)?;
    match args.command {
        Command::Add => add(&args, &nc, stderr),
        Command::Del => del(&args, &nc, stderr).map(|()| Vec::new()),
        // flannel's CHECK is a no-op once the config has passed the
        // checks above (cmdCheck: "TODO: implement").
        Command::Check => Ok(Vec::new()),
        // Unreachable: check_version refuses them below 1.1.0 and this
        // plugin speaks up to 1.0.0.
        Command::Gc | Command::Status | Command::Version => Ok(Vec::new()),
    }
}

/// Reads and parses the subnet file as flannel's plugin does.
///
/// # Errors
/// [`CniError::SubnetFileRead`] (flannel's message), or
/// [`CniError::SubnetFileInvalid`].
pub fn load_subnet_env(path: &Path) -> Result<FlannelEnv, CniError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CniError::SubnetFileRead {
        path: shown.clone(),
        reason: go_style(&e),
    })?;
    FlannelEnv::parse(&shown, &text)
}

fn check_netns(args: &CmdArgs) -> Result<(), CniError> {
    if args.netns_override || args.netns.is_empty() {
        return Ok(());
    }
    // As libcni: a path that cannot be opened is left to the delegate.
    let (Ok(theirs), Ok(ours)) = (
        std::fs::metadata(&args.netns),
        std::fs::metadata("/proc/self/ns/net"),
    ) else {
        return Ok(());
    };
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(CniError::SameNetns);
    }
    Ok(())
}

fn state_path(nc: &NetConf, args: &CmdArgs) -> PathBuf {
    // The container id was validated ([A-Za-z0-9][A-Za-z0-9_.-]*): no `/`.
    nc.data_dir.join(&args.container_id)
}

fn add(args: &CmdArgs, nc: &NetConf, stderr: &mut dyn Write) -> Result<Vec<u8>, CniError> {
    let env = load_subnet_env(&nc.subnet_file)?;
    let delegate = delegate_config(nc, &env)?;
    check_netns(args)?;
    let plugin = delegate
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    let bytes = serde_json::to_vec(&Value::Object(delegate))
        .map_err(|e| CniError::Decode(format!("error serializing delegate netconf: {e}")))?;
    let _ = writeln!(
        stderr,
        "delegateAdd: netconf sent to delegate plugin:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    // Saved before the delegate runs, as flannel does: a failed ADD is
    // followed by a DEL, which needs it.
    save_state(&nc.data_dir, &state_path(nc, args), &bytes)?;
    let out = exec_delegate(&plugin, "ADD", &args.path, &bytes, stderr)?;
    match serde_json::from_slice::<Value>(&out) {
        Ok(Value::Object(_)) => Ok(out),
        Ok(_) => Err(CniError::DelegateResult("not an object".into())),
        Err(e) => Err(CniError::DelegateResult(e.to_string())),
    }
}

fn del(args: &CmdArgs, nc: &NetConf, stderr: &mut dyn Write) -> Result<(), CniError> {
    let path = state_path(nc, args);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        // Nothing kept: never added, or already deleted. Success, per spec.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CniError::State {
                what: "reading",
                path: path.display().to_string(),
                reason: go_style(&e),
            })
        }
    };
    let plugin = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => match m.get("type") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return forget(&path, stderr, "its type is not a string"),
        },
        Ok(_) => return forget(&path, stderr, "not a JSON object"),
        Err(e) => return forget(&path, stderr, &e.to_string()),
    };
    exec_delegate(&plugin, "DEL", &args.path, &bytes, stderr)?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// flannel's DEL with a state file it cannot parse: the interface stays in
/// the bridge (until the host reboots), the file goes, DEL succeeds.
fn forget(path: &Path, stderr: &mut dyn Write, why: &str) -> Result<(), CniError> {
    let _ = writeln!(stderr, "failed to parse netconf {}: {why}", path.display());
    let _ = std::fs::remove_file(path);
    Ok(())
}

fn save_state(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    let fail = |what, p: &Path, e: &std::io::Error| CniError::State {
        what,
        path: p.display().to_string(),
        reason: go_style(e),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("creating", dir, &e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail("writing", path, &e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| fail("writing", path, &e))
}

/// libcni's `FindInPath`.
fn find_in_path(plugin: &str, paths: &[String]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() {
        return Err(CniError::DelegateNotFound("no plugin name provided".into()));
    }
    if plugin.contains('/') {
        return Err(CniError::DelegateNotFound(format!(
            "invalid plugin name: {plugin}"
        )));
    }
    if paths.is_empty() {
        return Err(CniError::DelegateNotFound("no paths provided".into()));
    }
    for dir in paths {
        let p = Path::new(dir).join(plugin);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            return Ok(p);
        }
    }
    Err(CniError::DelegateNotFound(format!(
        "failed to find plugin {plugin:?} in path [{}]",
        paths.join(" ")
    )))
}

/// Runs the delegate with our environment (`CNI_COMMAND` = `verb`) and
/// `config` on stdin; its stdout on success, its CNI error otherwise.
fn exec_delegate(
    plugin: &str,
    verb: &str,
    paths: &[String],
    config: &[u8],
    stderr: &mut dyn Write,
) -> Result<Vec<u8>, CniError> {
    let path = find_in_path(plugin, paths)?;
    let spawn_failed = |e: &std::io::Error| CniError::DelegateSpawn {
        path: path.display().to_string(),
        reason: go_style(e),
    };
    // As libcni: retry while the binary is being written (ETXTBSY).
    let mut attempt = 0;
    let mut child = loop {
        match Process::new(&path)
            .env("CNI_COMMAND", verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(26) && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(spawn_failed(&e)),
        }
    };
    if let Some(mut input) = child.stdin.take() {
        // A config is far below a pipe's capacity; a delegate that exits
        // without reading it is reported by its status below.
        let _ = input.write_all(config);
    }
    let out = child.wait_with_output().map_err(|e| spawn_failed(&e))?;
    if out.status.success() {
        let _ = stderr.write_all(&out.stderr);
        return Ok(out.stdout);
    }
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => out.status.to_string(),
    };
    if out.stdout.is_empty() {
        let msg = if out.stderr.is_empty() {
            format!("netplugin failed with no error message: {status}")
        } else {
            format!(
                "netplugin failed: {:?}: {status}",
                String::from_utf8_lossy(&out.stderr)
            )
        };
        return Err(CniError::Delegate {
            code: 0,
            msg,
            details: String::new(),
        });
    }
    let parsed: Result<Value, _> = serde_json::from_slice(&out.stdout);
    match parsed {
        Ok(v) if v.is_object() => Err(CniError::Delegate {
            code: v
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        _ => Err(CniError::Delegate {
            code: 0,
            msg: format!(
                "netplugin failed but error parsing its diagnostic message {:?}",
                String::from_utf8_lossy(&out.stdout)
            ),
            details: String::new(),
        }),
    }
}
