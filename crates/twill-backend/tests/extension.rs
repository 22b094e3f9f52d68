#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The extension backend's commands, run for real (`sh -c`), without root:
//! a failing add is retried at each pass and logged once, a command that
//! hangs is killed (with what it started) at the timeout, a peer's removal
//! runs the remove command with the peer's environment and stdin, and the
//! start-up commands publish and receive what flannel's do.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twill_backend::extension::CommandKind;
use twill_backend::{
    Backend, BackendError, BackendRegistry, ExtensionBackend, HostContext, SkipReason,
    UnderlayInterface,
};
use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SubnetKey, SubnetLease};

/// Log lines written while a test runs (a subscriber on the test's thread;
/// the runtime is a current-thread one, so the backend logs there).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

/// Runs `f` on a current-thread runtime with the backend's logs captured.
fn with_logs<F: std::future::Future<Output = ()>>(f: impl FnOnce(Captured) -> F) -> Captured {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f(logs.clone()));
    logs
}

fn config(backend: &serde_json::Value) -> NetworkConfig {
    NetworkConfig::parse(
        &serde_json::json!({"Network": "10.50.0.0/16", "Backend": backend}).to_string(),
    )
    .unwrap()
}

fn underlay() -> UnderlayInterface {
    UnderlayInterface {
        name: "eth0".into(),
        index: 2,
        mtu: 1500,
        addr: Some("10.0.0.2".parse().unwrap()),
        addr6: None,
    }
}

fn lease(key: &str, ip: &str, ty: &str, data: Option<serde_json::Value>) -> SubnetLease {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap(), ty);
    attrs.backend_data = data.map(Into::into);
    SubnetLease {
        key: key.parse().unwrap(),
        attrs,
        kind: LeaseKind::Expiring,
        revision: 1,
    }
}

fn peer(key: &str, ip: &str, data: &str) -> SubnetLease {
    lease(key, ip, "extension", Some(data.into()))
}

fn own() -> SubnetLease {
    lease("10.50.1.0-24", "10.0.0.2", "extension", None)
}

/// A backend built through the registry, as twilld builds it, set up and
/// activated as host 10.0.0.2 with 10.50.1.0/24.
async fn ready(cfg: &NetworkConfig) -> Box<dyn Backend> {
    let mut b = BackendRegistry::with_builtins()
        .create(&cfg.backend)
        .unwrap();
    assert_eq!(b.backend_type(), "extension");
    let u = underlay();
    let host = HostContext {
        config: cfg,
        public_ip: "10.0.0.2".parse().unwrap(),
        underlay: &u,
        ipv6: None,
    };
    b.setup(&host).await.unwrap();
    b.activate(&own()).await.unwrap();
    b
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether process `pid` is gone (or a zombie: dead, waiting to be reaped
/// by a parent that is not us).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn poll(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_add_is_retried_at_each_pass_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&serde_json::json!({
        "Type": "extension",
        "SubnetAddCommand": format!(r#"echo "add $SUBNET $PUBLIC_IP $(cat)" >> "{d}/log"; test -e "{d}/ok" || {{ echo "not yet" >&2; exit 3; }}"#),
    }));
    let log = dir.path().join("log");
    let logs = with_logs(|logs| async move {
        let mut b = ready(&cfg).await;
        let p = peer("10.50.2.0-24", "10.0.0.3", "data-of-3");
        for pass in 1..=3 {
            let r = b.reconcile(&[&p, &own()]).await.unwrap();
            assert_eq!((r.planned, r.applied), (1, 0), "pass {pass}");
            assert!(r.skipped.is_empty(), "{:?}", r.skipped);
            assert_eq!(lines(&log).len(), pass, "the add is run again at each pass");
        }
        assert_eq!(
            logs.count("SubnetAddCommand failed for peer 10.50.2.0-24"),
            1,
            "logged once over three failing passes:\n{}",
            logs.text()
        );
        let warned = logs.text();
        assert!(
            warned.contains("failed (exit status: 3); stderr: not yet"),
            "{warned}"
        );
        assert!(warned.contains("stderr: not yet"), "{warned}");
        assert!(
            warned.contains(r#"echo "add $SUBNET"#),
            "names the command: {warned}"
        );

        std::fs::write(dir.path().join("ok"), "").unwrap();
        let r = b.reconcile(&[&p]).await.unwrap();
        assert_eq!((r.planned, r.applied), (1, 1));
        assert_eq!(
            lines(&log).last().unwrap(),
            "add 10.50.2.0/24 10.0.0.3 data-of-3"
        );
        assert_eq!(logs.count("succeeded after failing"), 1, "{}", logs.text());
        // Added: nothing more to run.
        let r = b.reconcile(&[&p]).await.unwrap();
        assert_eq!((r.planned, r.applied), (0, 0));
        assert_eq!(lines(&log).len(), 4);
        assert_eq!(logs.count("SubnetAddCommand failed for peer"), 1);
    });
    eprintln!("{}", logs.text());
}

#[test]
fn a_hanging_command_is_killed_at_the_timeout_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&serde_json::json!({
        "Type": "extension",
        "CommandTimeout": "300ms",
        "SubnetAddCommand": format!(r#"echo $$ > "{d}/sh.pid"; sleep 60 & echo $! > "{d}/sleep.pid"; wait"#),
    }));
    let read_pid = |name: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let logs = with_logs(|logs| async move {
        let mut b = ready(&cfg).await;
        let p = peer("10.50.2.0-24", "10.0.0.3", "");
        let started = Instant::now();
        let r = b.reconcile(&[&p]).await.unwrap();
        let took = started.elapsed();
        eprintln!("the pass with a hanging add took {took:?}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(
            took < Duration::from_secs(10),
            "killed at the timeout, not after the sleep: {took:?}"
        );
        assert_eq!((r.planned, r.applied), (1, 0));
        assert!(
            logs.text()
                .contains("` timed out after 300ms and was killed"),
            "{}",
            logs.text()
        );
        let (sh, sleep) = (read_pid("sh.pid"), read_pid("sleep.pid"));
        poll(
            Duration::from_secs(10),
            "the shell and its sleep to die",
            || gone(sh) && gone(sleep),
        );
        // Retried at the next pass (and killed again), logged once.
        let r = b.reconcile(&[&p]).await.unwrap();
        assert_eq!((r.planned, r.applied), (1, 0));
        assert_eq!(
            logs.count("SubnetAddCommand failed for peer"),
            1,
            "{}",
            logs.text()
        );
        let again = read_pid("sleep.pid");
        assert_ne!(again, sleep);
        poll(Duration::from_secs(10), "the second sleep to die", || {
            gone(again)
        });
    });
    eprintln!("{}", logs.text());
}

#[test]
fn a_removed_or_changed_peer_runs_the_remove_command_with_its_old_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&serde_json::json!({
        "Type": "extension",
        "SubnetAddCommand": format!(r#"echo "add $SUBNET $PUBLIC_IP $(cat)" >> "{d}/log""#),
        "SubnetRemoveCommand": format!(r#"read DATA; echo "remove $SUBNET $PUBLIC_IP $DATA" >> "{d}/log""#),
    }));
    let log = dir.path().join("log");
    with_logs(|_| async move {
        let mut b = ready(&cfg).await;
        let a = peer("10.50.2.0-24", "10.0.0.3", "A");
        let c = peer("10.50.3.0-24", "10.0.0.4", "C");
        let vxlan = lease(
            "10.50.4.0-24",
            "10.0.0.5",
            "vxlan",
            Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26"})),
        );
        let object = lease(
            "10.50.5.0-24",
            "10.0.0.6",
            "extension",
            Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26"})),
        );
        let ours = peer("10.50.6.0-24", "10.0.0.2", "claims our PublicIP");
        let r = b
            .reconcile(&[&a, &c, &vxlan, &object, &ours, &own()])
            .await
            .unwrap();
        assert_eq!((r.planned, r.applied), (2, 2));
        let skipped: Vec<(String, &SkipReason)> =
            r.skipped.iter().map(|(k, s)| (k.to_string(), s)).collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(matches!(
            skipped.iter().find(|(k, _)| k == "10.50.4.0-24").unwrap().1,
            SkipReason::OtherBackendType { .. }
        ));
        assert!(matches!(
            skipped.iter().find(|(k, _)| k == "10.50.5.0-24").unwrap().1,
            SkipReason::BadBackendData { .. }
        ));
        assert!(matches!(
            skipped.iter().find(|(k, _)| k == "10.50.6.0-24").unwrap().1,
            SkipReason::ClaimsOurPublicIp(_)
        ));
        assert_eq!(
            lines(&log),
            ["add 10.50.2.0/24 10.0.0.3 A", "add 10.50.3.0/24 10.0.0.4 C"]
        );

        // C leaves: its remove command runs with what it was added with.
        let r = b.reconcile(&[&a]).await.unwrap();
        assert_eq!((r.planned, r.applied), (1, 1));
        assert_eq!(lines(&log)[2..], ["remove 10.50.3.0/24 10.0.0.4 C"]);

        // A changes (new BackendData): the old is removed, the new added.
        let a2 = peer("10.50.2.0-24", "10.0.0.3", "A2");
        let r = b.reconcile(&[&a2]).await.unwrap();
        assert_eq!((r.planned, r.applied), (2, 2));
        assert_eq!(
            lines(&log)[3..],
            [
                "remove 10.50.2.0/24 10.0.0.3 A",
                "add 10.50.2.0/24 10.0.0.3 A2"
            ]
        );
        let r = b.reconcile(&[&a2]).await.unwrap();
        assert_eq!(r.planned, 0, "nothing changed, nothing run");
        let r = b.reconcile(&[]).await.unwrap();
        assert_eq!((r.planned, r.applied), (1, 1));
        assert_eq!(lines(&log)[5..], ["remove 10.50.2.0/24 10.0.0.3 A2"]);
        assert_eq!(lines(&log).len(), 6);
    });
}

#[test]
fn a_failing_remove_keeps_the_peer_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&serde_json::json!({
        "Type": "extension",
        "SubnetAddCommand": "true",
        "SubnetRemoveCommand": format!(r#"echo "remove $SUBNET" >> "{d}/log"; test -e "{d}/ok""#),
    }));
    let log = dir.path().join("log");
    let logs = with_logs(|_| async move {
        let mut b = ready(&cfg).await;
        let a = peer("10.50.2.0-24", "10.0.0.3", "A");
        b.reconcile(&[&a]).await.unwrap();
        for n in 1..=2 {
            let r = b.reconcile(&[]).await.unwrap();
            assert_eq!((r.planned, r.applied), (1, 0));
            assert_eq!(lines(&log).len(), n);
        }
        std::fs::write(dir.path().join("ok"), "").unwrap();
        let r = b.reconcile(&[]).await.unwrap();
        assert_eq!((r.planned, r.applied), (1, 1));
        let r = b.reconcile(&[]).await.unwrap();
        assert_eq!(r.planned, 0);
        assert_eq!(lines(&log).len(), 3);
    });
    assert_eq!(
        logs.count("SubnetRemoveCommand failed for peer"),
        1,
        "{}",
        logs.text()
    );
}

#[test]
fn start_up_commands_publish_stdout_and_get_our_lease() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&serde_json::json!({
        "Type": "extension",
        "PreStartupCommand": "echo '  6e:af:8f:41:72:26  '; echo 'a warning' >&2",
        "PostStartupCommand": format!(r#"echo "$NETWORK $SUBNET [$IPV6SUBNET] $PUBLIC_IP [$PUBLIC_IPV6] [$(cat)]" >> "{d}/post""#),
    }));
    let post = dir.path().join("post");
    with_logs(|_| async move {
        let mut b = ExtensionBackend::from_config(&cfg.backend).unwrap();
        let u = underlay();
        let host = HostContext {
            config: &cfg,
            public_ip: "10.0.0.2".parse().unwrap(),
            underlay: &u,
            ipv6: None,
        };
        let local = b.setup(&host).await.unwrap();
        assert_eq!(local.mtu, 1500, "flannel's MTU: the underlay's");
        assert_eq!(local.attrs.backend_type, "extension");
        assert_eq!(
            local.attrs.to_json().unwrap(),
            r#"{"PublicIP":"10.0.0.2","BackendType":"extension","BackendData":"6e:af:8f:41:72:26"}"#,
            "stdout, trimmed, as a JSON string"
        );
        b.activate(&own()).await.unwrap();
        assert_eq!(
            lines(&post),
            ["10.50.0.0/16 10.50.1.0/24 [] 10.0.0.2 [] []"]
        );
        // Activated again with the same lease: not run again.
        b.activate(&own()).await.unwrap();
        assert_eq!(lines(&post).len(), 1);
        assert!(b.failing().next().is_none());
    });
}

#[test]
fn failing_or_hanging_start_up_commands_fail_the_step() {
    with_logs(|_| async move {
        let u = underlay();
        // Only the hanging command gets a short timeout: a loaded machine
        // may take long to start a shell.
        for (pre, post, timeout, want) in [
            (
                "echo boom >&2; exit 4",
                "",
                10.0,
                "failed (exit status: 4); stderr: boom",
            ),
            ("sleep 60", "", 0.2, "timed out after 200ms"),
            ("echo ok", "exit 5", 10.0, "exit status: 5"),
            ("echo ok", "sleep 60", 0.2, "timed out after 200ms"),
        ] {
            let cfg = config(&serde_json::json!({
                "Type": "extension",
                "CommandTimeout": timeout,
                "PreStartupCommand": pre,
                "PostStartupCommand": post,
            }));
            let mut b = ExtensionBackend::from_config(&cfg.backend).unwrap();
            let host = HostContext {
                config: &cfg,
                public_ip: "10.0.0.2".parse().unwrap(),
                underlay: &u,
                ipv6: None,
            };
            let started = Instant::now();
            let err = match b.setup(&host).await {
                Err(e) => e,
                Ok(_) => b.activate(&own()).await.unwrap_err(),
            };
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(
                matches!(
                    err,
                    BackendError::Custom {
                        backend: "extension",
                        ..
                    }
                ),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(want), "{pre} / {post}: {text}");
            assert!(!err.is_config());
        }
        // A bad option is a config error naming the field.
        let bad = config(&serde_json::json!({"Type": "extension", "SubnetAddCommand": ["ip"]}));
        let err = BackendRegistry::with_builtins()
            .create(&bad.backend)
            .err()
            .unwrap();
        assert!(err.is_config());
        assert_eq!(
            err.to_string(),
            "invalid extension backend config: SubnetAddCommand must be a string, found an array"
        );
    });
}

#[test]
fn the_failing_set_names_command_and_peer() {
    let cfg = config(&serde_json::json!({"Type": "extension", "SubnetAddCommand": "exit 1"}));
    with_logs(|_| async move {
        let mut b = ExtensionBackend::from_config(&cfg.backend).unwrap();
        let u = underlay();
        let host = HostContext {
            config: &cfg,
            public_ip: "10.0.0.2".parse().unwrap(),
            underlay: &u,
            ipv6: None,
        };
        b.setup(&host).await.unwrap();
        b.activate(&own()).await.unwrap();
        let p = peer("10.50.2.0-24", "10.0.0.3", "");
        b.reconcile(&[&p]).await.unwrap();
        let key: SubnetKey = "10.50.2.0-24".parse().unwrap();
        assert_eq!(
            b.failing().collect::<Vec<_>>(),
            [(CommandKind::SubnetAdd, key)]
        );
        assert!(b.added().is_empty());
        // The peer goes: its failure is forgotten with it.
        b.reconcile(&[]).await.unwrap();
        assert!(b.failing().next().is_none());
    });
}

#[test]
fn a_background_process_holding_the_output_open_is_killed_at_the_timeout() {
    // The shell exits at once, but the `sleep` it left behind holds its
    // standard output: the run is waited for until the timeout, then the
    // process group (the sleep with it) is killed.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&serde_json::json!({
        "Type": "extension",
        "CommandTimeout": 0.3,
        "SubnetAddCommand": format!(r#"sleep 60 & echo $! > "{d}/sleep.pid""#),
    }));
    let pid_file = dir.path().join("sleep.pid");
    let logs = with_logs(|_| async move {
        let mut b = ready(&cfg).await;
        let p = peer("10.50.2.0-24", "10.0.0.3", "");
        let started = Instant::now();
        let r = b.reconcile(&[&p]).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!((r.planned, r.applied), (1, 0));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        poll(
            Duration::from_secs(10),
            "the background sleep to die",
            || gone(pid),
        );
    });
    assert!(
        logs.text().contains("timed out after 300ms and was killed"),
        "{}",
        logs.text()
    );
}

#[test]
fn ipv6_only_networks_are_refused_and_passes_wait_for_activation() {
    with_logs(|_| async move {
        let u = underlay();
        let v6only = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:50::/56","Backend":{"Type":"extension","SubnetAddCommand":"true"}}"#,
        )
        .unwrap();
        let mut b = ExtensionBackend::from_config(&v6only.backend).unwrap();
        let host = HostContext {
            config: &v6only,
            public_ip: "0.0.0.0".parse().unwrap(),
            underlay: &u,
            ipv6: None,
        };
        let err = b.setup(&host).await.unwrap_err();
        assert!(err.is_config(), "{err:?}");
        assert!(err.to_string().contains("EnableIPv4 is false"), "{err}");

        let cfg = config(&serde_json::json!({"Type": "extension", "SubnetAddCommand": "true"}));
        let mut b = ExtensionBackend::from_config(&cfg.backend).unwrap();
        let p = peer("10.50.2.0-24", "10.0.0.3", "");
        assert!(matches!(
            b.reconcile(&[&p]).await,
            Err(BackendError::NotReady("reconcile", "setup"))
        ));
        assert!(matches!(
            b.activate(&own()).await,
            Err(BackendError::NotReady("activate", "setup"))
        ));
        let host = HostContext {
            config: &cfg,
            public_ip: "10.0.0.2".parse().unwrap(),
            underlay: &u,
            ipv6: None,
        };
        b.setup(&host).await.unwrap();
        assert!(matches!(
            b.reconcile(&[&p]).await,
            Err(BackendError::NotReady("reconcile", "activate"))
        ));
        // Our own lease outside Network is refused.
        let outside = lease("10.99.1.0-24", "10.0.0.2", "extension", None);
        assert!(matches!(
            b.activate(&outside).await,
            Err(BackendError::OwnLease { .. })
        ));
        b.activate(&own()).await.unwrap();
        let r = b.reconcile(&[&p]).await.unwrap();
        assert_eq!((r.planned, r.applied), (1, 1));
    });
}

#[test]
fn a_command_dropped_mid_run_takes_its_process_group_with_it() {
    // The agent shutting down drops a pass in flight: the shell and what
    // it started go, not only the shell (kill_on_drop alone).
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep.pid");
    let script = format!(r#"sleep 60 & echo $! > "{}"; wait"#, pid_file.display());
    let file = pid_file.clone();
    with_logs(|_| async move {
        let run =
            twill_backend::extension::run_command(&script, &[], "\n", Duration::from_secs(60));
        let waited = async {
            let start = Instant::now();
            while !file.exists()
                || std::fs::read_to_string(&file)
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the command never started"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            r = run => panic!("a 60 s command ended: {r:?}"),
            () = waited => {}
        }
    });
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    poll(
        Duration::from_secs(10),
        "the sleep to die with its group",
        || gone(pid),
    );
}
