//! flannel's `extension` backend: shell commands instead of a dataplane of
//! our own (flannel's `pkg/backend/extension`, `Documentation/extension.md`).
//!
//! `PreStartupCommand` runs in [`Backend::setup`]; its standard output,
//! trimmed, is published as our lease's `BackendData`, a JSON string.
//! `PostStartupCommand` runs in [`Backend::activate`] with our lease in its
//! environment. [`Backend::reconcile`] runs `SubnetAddCommand` for each
//! peer subnet that is new or changed and `SubnetRemoveCommand` for each
//! one gone (or changed: the old one is removed first), with the peer's
//! `SUBNET` and `PUBLIC_IP` in the environment and its `BackendData` (the
//! string) and a newline on standard input, as flannel does.
//!
//! Unlike flannel: each command has a timeout (`CommandTimeout`, 10 s by
//! default), after which its whole process group is killed; a failed add
//! (or remove) is retried at the next pass, logged once per command and
//! peer with its exit status and output; and the passes are
//! level-triggered: the backend remembers what it added for each peer, so
//! a second pass with nothing changed runs nothing.
//!
//! The decision ("which commands for this peer set") is [`plan_commands`],
//! a pure function; [`run_command`] is the thin part that spawns `sh -c`.
//! Commands run on the calling task with tokio's process API (they never
//! block a runtime thread), in the network and mount namespaces of the
//! process.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use twill_model::{
    BackendConfig, ExtensionConfig, LeaseAttrs, NetworkConfig, SkipReason, SubnetKey, SubnetLease,
};

use crate::peers::{select_peers, PeerContext};
use crate::{Backend, BackendError, HostContext, LocalSetup, ReconcileReport};

/// The `Backend.Type` and `BackendType` of this backend.
pub const EXTENSION_TYPE: &str = "extension";

/// How much of a command's standard output (and, separately, of its
/// standard error) is kept; the rest is read and dropped.
const OUTPUT_CAP: usize = 64 * 1024;

/// How much of a command's output a log line or error message shows.
const SHOWN_OUTPUT: usize = 512;

/// The largest `BackendData` string `PreStartupCommand` may produce: a
/// lease value must stay under [`twill_model::MAX_LEASE_BYTES`], with room
/// for the other fields.
const MAX_BACKEND_DATA: usize = twill_model::MAX_LEASE_BYTES - 1024;

/// One of the four commands of the `Backend` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandKind {
    /// `PreStartupCommand`.
    PreStartup,
    /// `PostStartupCommand`.
    PostStartup,
    /// `SubnetAddCommand`.
    SubnetAdd,
    /// `SubnetRemoveCommand`.
    SubnetRemove,
}

impl CommandKind {
    /// The config field that holds it (`SubnetAddCommand`).
    #[must_use]
    pub fn field(self) -> &'static str {
        match self {
            CommandKind::PreStartup => "PreStartupCommand",
            CommandKind::PostStartup => "PostStartupCommand",
            CommandKind::SubnetAdd => "SubnetAddCommand",
            CommandKind::SubnetRemove => "SubnetRemoveCommand",
        }
    }

    /// The command's text in `config` (empty: not configured, not run).
    #[must_use]
    pub fn script(self, config: &ExtensionConfig) -> &str {
        match self {
            CommandKind::PreStartup => &config.pre_startup_command,
            CommandKind::PostStartup => &config.post_startup_command,
            CommandKind::SubnetAdd => &config.subnet_add_command,
            CommandKind::SubnetRemove => &config.subnet_remove_command,
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// What a peer's `SubnetAddCommand` and `SubnetRemoveCommand` are run
/// with: the environment and standard input flannel gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCommandInput {
    /// `SUBNET`: the peer's IPv4 subnet (`10.50.2.0/24`).
    pub subnet: Ipv4Network,
    /// `PUBLIC_IP`: the peer's `PublicIP`.
    pub public_ip: Ipv4Addr,
    /// The peer's `BackendData`, decoded from its JSON string (empty when
    /// it has none); given on standard input followed by a newline.
    pub backend_data: String,
}

impl PeerCommandInput {
    /// The input of `peer`'s commands.
    ///
    /// # Errors
    /// [`SkipReason::BadBackendData`] when its `BackendData` is not a JSON
    /// string (flannel logs the decode error and skips the event).
    pub fn of(peer: &SubnetLease) -> Result<Self, SkipReason> {
        Ok(PeerCommandInput {
            subnet: peer.key.ipv4,
            public_ip: peer.attrs.public_ip,
            backend_data: decode_backend_data(&peer.attrs)?,
        })
    }

    /// The environment variables flannel sets for the peer's commands
    /// (on top of the daemon's own environment).
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SUBNET", self.subnet.to_string()),
            ("PUBLIC_IP", self.public_ip.to_string()),
        ]
    }

    /// The standard input: the `BackendData` string and a newline.
    #[must_use]
    pub fn stdin(&self) -> String {
        format!("{}\n", self.backend_data)
    }
}

/// A peer's `BackendData` as the extension backend publishes it: a JSON
/// string, decoded; `""` when the lease has none.
///
/// # Errors
/// [`SkipReason::BadBackendData`] when it is any other JSON value.
pub fn decode_backend_data(attrs: &LeaseAttrs) -> Result<String, SkipReason> {
    match attrs.backend_data.as_ref().map(twill_model::BackendData::to_value) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(SkipReason::BadBackendData {
            reason: format!(
                "the extension backend's BackendData is a JSON string (PreStartupCommand's output), found {}",
                shorten(&other.to_string(), 64)
            ),
        }),
    }
}

/// What to run for one peer in a pass, in this order: the remove command
/// with the input the peer was added with (when it is gone or changed),
/// then the add command with its current input (when it is new or
/// changed). When the remove fails the add is not run: the peer stays
/// as it was added, and the next pass tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStep {
    /// The peer's subnet.
    pub key: SubnetKey,
    /// Remove what was added with this input.
    pub remove: Option<PeerCommandInput>,
    /// Add with this input.
    pub add: Option<PeerCommandInput>,
}

/// The commands a pass runs: `added` is what earlier passes added (their
/// input, per peer; a failed add is not in it, so it is planned again),
/// `desired` the accepted peers now. A peer in both with the same input
/// needs nothing; with another input it is removed, then added; only in
/// `desired` it is added; only in `added` it is removed. Sorted by key;
/// a second pass after a successful one plans nothing.
///
/// ```
/// use std::collections::BTreeMap;
/// use twill_backend::extension::{plan_commands, PeerCommandInput};
/// let input = |ip: &str| PeerCommandInput {
///     subnet: "10.50.2.0/24".parse().unwrap(),
///     public_ip: ip.parse().unwrap(),
///     backend_data: String::new(),
/// };
/// let key = "10.50.2.0-24".parse().unwrap();
/// let added = BTreeMap::from([(key, input("10.0.0.3"))]);
/// let moved = BTreeMap::from([(key, input("10.0.0.9"))]);
/// let steps = plan_commands(&added, &moved);
/// assert_eq!(steps[0].remove, Some(input("10.0.0.3")));
/// assert_eq!(steps[0].add, Some(input("10.0.0.9")));
/// assert!(plan_commands(&moved, &moved).is_empty());
/// ```
#[must_use]
pub fn plan_commands(
    added: &BTreeMap<SubnetKey, PeerCommandInput>,
    desired: &BTreeMap<SubnetKey, PeerCommandInput>,
) -> Vec<PeerStep> {
    let mut steps = Vec::new();
    let mut old = added.iter().peekable();
    let mut new = desired.iter().peekable();
    loop {
        let step = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((ka, a)), Some((kd, d))) if ka == kd => {
                let step = (a != d).then(|| PeerStep {
                    key: **ka,
                    remove: Some((*a).clone()),
                    add: Some((*d).clone()),
                });
                old.next();
                new.next();
                step
            }
            (Some((ka, a)), Some((kd, _))) if ka < kd => {
                let step = PeerStep {
                    key: **ka,
                    remove: Some((*a).clone()),
                    add: None,
                };
                old.next();
                Some(step)
            }
            (Some((ka, a)), None) => {
                let step = PeerStep {
                    key: **ka,
                    remove: Some((*a).clone()),
                    add: None,
                };
                old.next();
                Some(step)
            }
            (_, Some((kd, d))) => {
                let step = PeerStep {
                    key: **kd,
                    remove: None,
                    add: Some((*d).clone()),
                };
                new.next();
                Some(step)
            }
        };
        steps.extend(step);
    }
    steps
}

/// What a command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Its standard output (the first 64 KiB).
    pub stdout: String,
    /// Its standard error (the first 64 KiB).
    pub stderr: String,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// `sh` could not be started.
    #[error("cannot run sh -c {script:?}: {source}")]
    Spawn {
        /// The command.
        script: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It exited with a non-zero status or was killed by a signal.
    #[error(
        "`{}` failed ({status}){}",
        shorten(script, SHOWN_OUTPUT),
        show_output(output)
    )]
    Failed {
        /// The command.
        script: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed.
        output: CommandOutput,
    },
    /// It ran longer than the timeout and was killed (with its process
    /// group).
    #[error(
        "`{}` timed out after {timeout:?} and was killed",
        shorten(script, SHOWN_OUTPUT)
    )]
    Timeout {
        /// The command.
        script: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Reading its output or waiting for it failed.
    #[error("`{}`: {source}", shorten(script, SHOWN_OUTPUT))]
    Io {
        /// The command.
        script: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn show_output(output: &CommandOutput) -> String {
    let mut s = String::new();
    for (name, text) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = text.trim();
        if !text.is_empty() {
            s.push_str(&format!("; {name}: {}", shorten(text, SHOWN_OUTPUT)));
        }
    }
    s
}

/// `s` cut to at most `max` bytes (on a character boundary), with `...`
/// when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Reads `reader` to its end, keeping the first [`OUTPUT_CAP`] bytes.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>) -> std::io::Result<String> {
    let Some(mut reader) = reader else {
        return Ok(String::new());
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok(String::from_utf8_lossy(&kept).into_owned())
}

/// Runs `sh -c script` with the daemon's environment plus `env`, `stdin`
/// on its standard input, in a process group of its own. Past `timeout`
/// the group is sent SIGKILL (so a `sleep` the shell started goes too) and
/// the command counts as failed. Never blocks the runtime: the child is
/// waited for with tokio, and dropped (killed) if this future is.
///
/// # Errors
/// A [`CommandError`] naming the command, with its exit status and output.
pub async fn run_command(
    script: &str,
    env: &[(&str, String)],
    stdin: &str,
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        script: script.to_string(),
        source,
    })?;
    let pid = child.id();
    // Kills the group if this future is dropped mid-run (the agent shutting
    // down): kill_on_drop alone would kill the shell and leave its children.
    let mut group = GroupGuard(pid.and_then(|p| i32::try_from(p).ok()));
    let input = child.stdin.take();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let write = async {
            if let Some(mut w) = input {
                // A command that does not read its input may exit first:
                // EPIPE is not its failure.
                let _ = w.write_all(stdin.as_bytes()).await;
                let _ = w.shutdown().await;
            }
        };
        let ((), out, err, status) = tokio::join!(
            write,
            read_capped(stdout),
            read_capped(stderr),
            child.wait()
        );
        (out, err, status)
    };
    let io = |source| CommandError::Io {
        script: script.to_string(),
        source,
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((out, err, status)) => {
            // Done: what it left running in the background is its business.
            group.disarm();
            let output = CommandOutput {
                stdout: out.map_err(io)?,
                stderr: err.map_err(io)?,
            };
            let status = status.map_err(io)?;
            if status.success() {
                Ok(output)
            } else {
                Err(CommandError::Failed {
                    script: script.to_string(),
                    status,
                    output,
                })
            }
        }
        Err(_) => {
            group.kill();
            let _ = child.start_kill();
            // Reap it (SIGKILL is immediate); dropping it would leave that
            // to tokio's background reaper.
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            Err(CommandError::Timeout {
                script: script.to_string(),
                timeout,
            })
        }
    }
}

/// The process group of a running command (its own: `process_group(0)`
/// makes the shell's pid the group id), killed on drop unless disarmed.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    /// Sends SIGKILL to the group, once.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// The command ended: nothing to kill.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone)]
struct Ready {
    config: NetworkConfig,
    public_ip: Ipv4Addr,
}

/// flannel's `extension` backend: shell commands at start-up and for each
/// peer subnet; see the [module docs](self).
#[derive(Debug)]
pub struct ExtensionBackend {
    config: ExtensionConfig,
    ready: Option<Ready>,
    own: Option<SubnetKey>,
    /// The subnet `PostStartupCommand` last succeeded for.
    activated: Option<SubnetKey>,
    /// What each peer was added with (add command succeeded, or none is
    /// configured).
    added: BTreeMap<SubnetKey, PeerCommandInput>,
    /// Failed commands already logged, with the input they failed with: a
    /// failure is logged once per (command, peer) until the command
    /// succeeds, the peer goes, or its input changes.
    failing: BTreeMap<(CommandKind, SubnetKey), PeerCommandInput>,
}

impl ExtensionBackend {
    /// Builds from the `Backend` object.
    ///
    /// # Errors
    /// [`BackendError::Config`] naming the bad field.
    pub fn from_config(config: &BackendConfig) -> Result<Self, BackendError> {
        let config = ExtensionConfig::from_backend(config).map_err(|e| BackendError::Config {
            backend: EXTENSION_TYPE,
            reason: e.to_string(),
        })?;
        Ok(Self::new(config))
    }

    /// Builds from parsed options.
    #[must_use]
    pub fn new(config: ExtensionConfig) -> Self {
        Self {
            config,
            ready: None,
            own: None,
            activated: None,
            added: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// The options.
    #[must_use]
    pub fn config(&self) -> &ExtensionConfig {
        &self.config
    }

    /// The peers added so far, with what their add command was run with.
    #[must_use]
    pub fn added(&self) -> &BTreeMap<SubnetKey, PeerCommandInput> {
        &self.added
    }

    /// The commands whose last run failed, per peer (retried at the next
    /// pass).
    pub fn failing(&self) -> impl Iterator<Item = (CommandKind, SubnetKey)> + '_ {
        self.failing.keys().copied()
    }

    /// Runs one of the configured commands; `Ok(None)` when it is not
    /// configured (empty).
    async fn run(
        &self,
        kind: CommandKind,
        env: &[(&str, String)],
        stdin: &str,
    ) -> Result<Option<CommandOutput>, CommandError> {
        let script = kind.script(&self.config);
        if script.is_empty() {
            tracing::debug!(command = kind.field(), "no {kind} configured: skipping");
            return Ok(None);
        }
        run_command(script, env, stdin, self.config.command_timeout)
            .await
            .map(Some)
    }

    /// Runs a peer's add or remove command; a failure is logged once.
    async fn run_peer(
        &mut self,
        kind: CommandKind,
        key: SubnetKey,
        input: &PeerCommandInput,
    ) -> bool {
        match self.run(kind, &input.env(), &input.stdin()).await {
            Ok(output) => {
                if let Some(output) = output {
                    tracing::info!(
                        command = kind.field(),
                        peer = %key,
                        subnet = %input.subnet,
                        public_ip = %input.public_ip,
                        "ran {kind} for peer {key}{}",
                        show_output(&output)
                    );
                }
                if self.failing.remove(&(kind, key)).is_some() {
                    tracing::info!(command = kind.field(), peer = %key, "{kind} for peer {key} succeeded after failing");
                }
                true
            }
            Err(e) => {
                let first = self.failing.get(&(kind, key)) != Some(input);
                if first {
                    tracing::warn!(
                        command = kind.field(),
                        peer = %key,
                        subnet = %input.subnet,
                        public_ip = %input.public_ip,
                        "{kind} failed for peer {key} (retried at each pass, not logged again until it succeeds): {e}"
                    );
                    self.failing.insert((kind, key), input.clone());
                } else {
                    tracing::debug!(command = kind.field(), peer = %key, "{kind} failed again: {e}");
                }
                false
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for ExtensionBackend {
    fn backend_type(&self) -> &str {
        EXTENSION_TYPE
    }

    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        if !host.config.enable_ipv4 {
            return Err(BackendError::Config {
                backend: EXTENSION_TYPE,
                reason: "EnableIPv4 is false: flannel's extension commands get IPv4 subnets only (SUBNET, PUBLIC_IP), so twill does not run them on an IPv6-only network".into(),
            });
        }
        self.ready = None;
        self.activated = None;
        self.added.clear();
        self.failing.clear();
        let mut attrs = LeaseAttrs::new(host.public_ip, EXTENSION_TYPE);
        let kind = CommandKind::PreStartup;
        match self.run(kind, &[], "\n").await {
            Ok(Some(output)) => {
                let data = output.stdout.trim();
                tracing::info!(command = kind.field(), "ran {kind}{}", show_output(&output));
                if data.len() > MAX_BACKEND_DATA {
                    return Err(BackendError::Config {
                        backend: EXTENSION_TYPE,
                        reason: format!(
                            "{kind} printed {} bytes, more than the {MAX_BACKEND_DATA} a lease's BackendData may hold",
                            data.len()
                        ),
                    });
                }
                attrs.backend_data = Some(Value::String(data.to_string()).into());
            }
            Ok(None) => {}
            Err(e) => return Err(BackendError::custom(EXTENSION_TYPE, kind.field(), e)),
        }
        self.ready = Some(Ready {
            config: host.config.clone(),
            public_ip: host.public_ip,
        });
        Ok(LocalSetup {
            attrs,
            mtu: host.underlay.mtu,
        })
    }

    async fn activate(&mut self, own: &SubnetLease) -> Result<(), BackendError> {
        let r = self
            .ready
            .as_ref()
            .ok_or(BackendError::NotReady("activate", "setup"))?;
        BackendError::check_own_lease(&r.config, own)?;
        self.own = Some(own.key);
        if self.activated == Some(own.key) {
            return Ok(());
        }
        let env = post_startup_env(&r.config, own);
        let kind = CommandKind::PostStartup;
        match self.run(kind, &env, "\n").await {
            Ok(Some(output)) => {
                tracing::info!(command = kind.field(), subnet = %own.key, "ran {kind}{}", show_output(&output));
            }
            Ok(None) => {}
            Err(e) => return Err(BackendError::custom(EXTENSION_TYPE, kind.field(), e)),
        }
        self.activated = Some(own.key);
        Ok(())
    }

    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        let r = self
            .ready
            .as_ref()
            .ok_or(BackendError::NotReady("reconcile", "setup"))?;
        if self.own.is_none() {
            return Err(BackendError::NotReady("reconcile", "activate"));
        }
        let cx = PeerContext {
            config: &r.config,
            own: self.own,
            public_ip: r.public_ip,
            backend_type: EXTENSION_TYPE,
        };
        let selection = select_peers(peers, &cx, PeerCommandInput::of);
        let desired: BTreeMap<SubnetKey, PeerCommandInput> = selection
            .accepted
            .into_iter()
            .map(|(lease, input)| (lease.key, input))
            .collect();
        let mut report = ReconcileReport {
            skipped: selection.skipped,
            ..ReconcileReport::default()
        };
        // A failure of a peer no longer wanted is forgotten with it.
        self.failing
            .retain(|(_, key), _| desired.contains_key(key) || self.added.contains_key(key));
        for step in plan_commands(&self.added, &desired) {
            if let Some(old) = &step.remove {
                if !self.config.subnet_remove_command.is_empty() {
                    report.planned += 1;
                    if !self
                        .run_peer(CommandKind::SubnetRemove, step.key, old)
                        .await
                    {
                        continue;
                    }
                    report.applied += 1;
                }
                self.added.remove(&step.key);
                self.failing.remove(&(CommandKind::SubnetRemove, step.key));
                if step.add.is_none() {
                    self.failing.remove(&(CommandKind::SubnetAdd, step.key));
                }
            }
            if let Some(new) = &step.add {
                if !self.config.subnet_add_command.is_empty() {
                    report.planned += 1;
                    if !self.run_peer(CommandKind::SubnetAdd, step.key, new).await {
                        continue;
                    }
                    report.applied += 1;
                }
                self.added.insert(step.key, new.clone());
            }
        }
        Ok(report)
    }
}

/// `PostStartupCommand`'s environment, as flannel sets it: the network
/// and our lease. flannel writes an absent IPv6 subnet as `::/0` and an
/// absent `PublicIPv6` as `<nil>`; twill leaves them empty.
fn post_startup_env(config: &NetworkConfig, own: &SubnetLease) -> Vec<(&'static str, String)> {
    vec![
        ("NETWORK", config.network.to_string()),
        ("SUBNET", own.key.ipv4.to_string()),
        (
            "IPV6SUBNET",
            own.key.ipv6.map(|n| n.to_string()).unwrap_or_default(),
        ),
        ("PUBLIC_IP", own.attrs.public_ip.to_string()),
        (
            "PUBLIC_IPV6",
            own.attrs
                .public_ipv6
                .map(|ip: Ipv6Addr| ip.to_string())
                .unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_model::LeaseKind;

    fn input(subnet: &str, ip: &str, data: &str) -> PeerCommandInput {
        PeerCommandInput {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            backend_data: data.into(),
        }
    }

    fn key(s: &str) -> SubnetKey {
        s.parse().unwrap()
    }

    #[test]
    fn plan_adds_new_removes_gone_and_replaces_changed_peers() {
        let a = input("10.50.1.0/24", "10.0.0.2", "aa");
        let b = input("10.50.2.0/24", "10.0.0.3", "bb");
        let b2 = input("10.50.2.0/24", "10.0.0.3", "b2");
        let c = input("10.50.3.0/24", "10.0.0.4", "");
        let added = BTreeMap::from([
            (key("10.50.1.0-24"), a.clone()),
            (key("10.50.2.0-24"), b.clone()),
        ]);
        let desired = BTreeMap::from([
            (key("10.50.2.0-24"), b2.clone()),
            (key("10.50.3.0-24"), c.clone()),
        ]);
        assert_eq!(
            plan_commands(&added, &desired),
            vec![
                PeerStep {
                    key: key("10.50.1.0-24"),
                    remove: Some(a),
                    add: None
                },
                PeerStep {
                    key: key("10.50.2.0-24"),
                    remove: Some(b),
                    add: Some(b2)
                },
                PeerStep {
                    key: key("10.50.3.0-24"),
                    remove: None,
                    add: Some(c)
                },
            ]
        );
        assert!(plan_commands(&desired, &desired).is_empty());
        assert!(plan_commands(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn peer_input_is_flannels_environment_and_stdin() {
        let mut attrs = LeaseAttrs::new("10.0.0.3".parse().unwrap(), "extension");
        attrs.backend_data = Some(Value::String("6e:af:8f:41:72:26".into()).into());
        let lease = SubnetLease {
            key: key("10.50.2.0-24"),
            attrs,
            kind: LeaseKind::Expiring,
            revision: 1,
        };
        let i = PeerCommandInput::of(&lease).unwrap();
        assert_eq!(
            i.env(),
            vec![
                ("SUBNET", "10.50.2.0/24".to_string()),
                ("PUBLIC_IP", "10.0.0.3".to_string())
            ]
        );
        assert_eq!(i.stdin(), "6e:af:8f:41:72:26\n");
        // No BackendData: an empty line, as flannel writes.
        let bare = SubnetLease {
            attrs: LeaseAttrs::new("10.0.0.3".parse().unwrap(), "extension"),
            ..lease.clone()
        };
        assert_eq!(PeerCommandInput::of(&bare).unwrap().stdin(), "\n");
        // An object (a vxlan lease's shape) is not the extension's data.
        let mut attrs = lease.attrs.clone();
        attrs.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26"}).into());
        let err = PeerCommandInput::of(&SubnetLease { attrs, ..lease }).unwrap_err();
        assert!(matches!(err, SkipReason::BadBackendData { .. }), "{err}");
    }

    #[test]
    fn post_startup_gets_the_network_and_our_lease() {
        let config = NetworkConfig::parse(
            r#"{"Network":"10.50.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:50::/56","Backend":{"Type":"extension"}}"#,
        )
        .unwrap();
        let mut attrs = LeaseAttrs::new("10.0.0.2".parse().unwrap(), "extension");
        attrs.public_ipv6 = Some("fd00:10::2".parse().unwrap());
        let own = SubnetLease {
            key: key("10.50.1.0-24&fd00:50:0:1::-64"),
            attrs,
            kind: LeaseKind::Expiring,
            revision: 1,
        };
        let env: Vec<(&str, String)> = post_startup_env(&config, &own);
        let want: Vec<(&str, String)> = [
            ("NETWORK", "10.50.0.0/16"),
            ("SUBNET", "10.50.1.0/24"),
            ("IPV6SUBNET", "fd00:50:0:1::/64"),
            ("PUBLIC_IP", "10.0.0.2"),
            ("PUBLIC_IPV6", "fd00:10::2"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        assert_eq!(env, want);
        // IPv4 only: the IPv6 values are empty (flannel: `::/0`, `<nil>`).
        let v4 = SubnetLease {
            key: key("10.50.1.0-24"),
            attrs: LeaseAttrs::new("10.0.0.2".parse().unwrap(), "extension"),
            ..own
        };
        let env = post_startup_env(&config, &v4);
        assert_eq!(env[2], ("IPV6SUBNET", String::new()));
        assert_eq!(env[4], ("PUBLIC_IPV6", String::new()));
    }

    #[test]
    fn shorten_cuts_on_a_character_boundary() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc...");
        assert_eq!(shorten("aé", 2), "a...");
    }
}
