//! The `flannel` binary invoked as a runtime invokes a plugin (`CNI_*`
//! environment, config on stdin), with a fake delegate on `CNI_PATH` that
//! records what it is given: what the delegate receives, what comes back,
//! and every failure as CNI error JSON with a non-zero exit. No root: the
//! kernel is not touched (tests/cluster.rs does that with the real
//! `bridge`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const FLANNEL: &str = env!("CARGO_BIN_EXE_flannel");
const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
const RESULT: &str =
    r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.17.2/24","gateway":"10.1.17.1"}]}"#;

/// A fake `bridge`: records its stdin and `CNI_*` environment per
/// command, then prints RESULT, or fails with a CNI error when `fail`
/// exists in its directory.
const FAKE_BRIDGE: &str = r#"#!/bin/sh
d=$(dirname "$0")
cat > "$d/stdin.$CNI_COMMAND"
env | grep '^CNI_' | sort > "$d/env.$CNI_COMMAND"
if [ -e "$d/fail" ]; then
    echo '{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"busy"}'
    exit 1
fi
if [ -e "$d/crash" ]; then echo "bridge crashed" >&2; exit 2; fi
[ "$CNI_COMMAND" = ADD ] && printf '%s' RESULT_JSON
exit 0
"#;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let bridge = bin.join("bridge");
        std::fs::write(
            &bridge,
            FAKE_BRIDGE.replace("RESULT_JSON", &format!("'{RESULT}'")),
        )
        .expect("fake bridge");
        std::fs::set_permissions(&bridge, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.path().join("subnet.env"), SUBNET_ENV).expect("subnet.env");
        Setup { dir }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.p("subnet.env"),
            "dataDir": self.p("data"),
        })
    }
    fn run(&self, command: &str, id: &str, stdin: &[u8]) -> Output {
        run_with(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/var/run/netns/does-not-matter"),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_PATH",
                    &format!("/nonexistent:{}", self.p("bin").display()),
                ),
            ],
            stdin,
        )
    }
}

fn run_with(env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(FLANNEL);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running flannel");
    // The plugin does not read stdin for VERSION or a bad environment.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    child.wait_with_output().expect("flannel's output")
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// The error JSON of a failed run: exit status non-zero, stdout the
/// spec's error object.
fn error_of(out: &Output) -> Value {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"));
    assert!(v["code"].is_u64() && v["msg"].is_string(), "{v}");
    assert!(v["cniVersion"].is_string(), "{v}");
    v
}

#[test]
fn add_hands_the_merged_config_to_the_delegate_and_relays_its_result() {
    let s = Setup::new();
    let out = s.run("ADD", "ctr-1", &bytes(&s.config("1.0.0")));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        RESULT,
        "relayed as is"
    );
    let sent = std::fs::read(s.p("bin/stdin.ADD")).expect("the delegate's stdin");
    let kept = std::fs::read(s.p("data/ctr-1")).expect("the state file");
    assert_eq!(sent, kept, "the delegate gets exactly what is kept for DEL");
    assert_eq!(
        String::from_utf8_lossy(&kept),
        r#"{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#
    );
    let env = std::fs::read_to_string(s.p("bin/env.ADD")).expect("env");
    for line in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=ctr-1",
        "CNI_IFNAME=eth0",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in {env}");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(s.p("data")).expect("dir").mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(s.p("data/ctr-1")).expect("file").mode() & 0o777,
        0o600
    );

    // CHECK succeeds (flannel's CHECK is a no-op); DEL hands the kept
    // config to the delegate and removes it; a second DEL succeeds too.
    let check = s.run("CHECK", "ctr-1", &bytes(&s.config("1.0.0")));
    assert!(
        check.status.success() && check.stdout.is_empty(),
        "{check:?}"
    );
    let del = s.run("DEL", "ctr-1", &bytes(&s.config("1.0.0")));
    assert!(del.status.success() && del.stdout.is_empty(), "{del:?}");
    assert_eq!(
        std::fs::read(s.p("bin/stdin.DEL")).expect("DEL stdin"),
        kept
    );
    assert!(!s.p("data/ctr-1").exists());
    std::fs::remove_file(s.p("bin/stdin.DEL")).expect("rm");
    let again = s.run("DEL", "ctr-1", &bytes(&s.config("1.0.0")));
    assert!(again.status.success(), "{again:?}");
    assert!(
        !s.p("bin/stdin.DEL").exists(),
        "nothing kept: the delegate is not called"
    );
}

#[test]
fn every_supported_version_passes_through() {
    let s = Setup::new();
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let id = format!("c{i}");
        let out = s.run("ADD", &id, &bytes(&s.config(v)));
        assert!(out.status.success(), "{v}: {out:?}");
        let kept: Value =
            serde_json::from_slice(&std::fs::read(s.p(&format!("data/{id}"))).expect("kept"))
                .expect("json");
        assert_eq!(kept["cniVersion"], *v);
    }
    // CHECK came with 0.4.0.
    let e = error_of(&s.run("CHECK", "c0", &bytes(&s.config("0.3.1"))));
    assert_eq!(
        (e["code"].as_u64(), e["msg"].as_str()),
        (Some(1), Some("config version does not allow CHECK"))
    );
    assert_eq!(e["cniVersion"], "0.3.1");
    let e = error_of(&s.run("ADD", "c9", &bytes(&s.config("1.1.0"))));
    assert_eq!(e["code"], 1);
    assert!(e["details"].as_str().unwrap_or("").contains("1.1.0"), "{e}");
    // VERSION needs nothing but CNI_COMMAND.
    let out = run_with(&[("CNI_COMMAND", "VERSION")], b"");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("version JSON");
    assert_eq!(v["cniVersion"], "1.0.0");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["0.3.1", "0.4.0", "1.0.0"] {
        assert!(supported.contains(&want), "{supported:?}");
    }
}

#[test]
fn a_missing_subnet_file_is_flannels_error() {
    let s = Setup::new();
    let mut c = s.config("1.0.0");
    c["subnetFile"] = json!(s.p("nope.env"));
    let out = s.run("ADD", "ctr-1", &bytes(&c));
    let e = error_of(&out);
    assert_eq!(
        e["msg"].as_str(),
        Some(format!(
            "failed to load flannel 'subnet.env' file: open {}: no such file or directory. Check the flannel pod log for this node.",
            s.p("nope.env").display()
        ).as_str())
    );
    assert_eq!(e["code"], 5);
    assert!(!s.p("bin/stdin.ADD").exists(), "the delegate is not run");
    // DEL does not need the subnet file.
    assert!(s.run("DEL", "ctr-1", &bytes(&c)).status.success());
    // An incomplete one names what is missing.
    std::fs::write(
        s.p("subnet.env"),
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n",
    )
    .expect("write");
    let e = error_of(&s.run("ADD", "ctr-1", &bytes(&s.config("1.0.0"))));
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or("")
            .contains("is missing FLANNEL_MTU, FLANNEL_IPMASQ"),
        "{e}"
    );
}

#[test]
fn bad_configs_are_cni_errors_naming_the_field() {
    let s = Setup::new();
    let with = |k: &str, v: Value| {
        let mut c = s.config("1.0.0");
        c[k] = v;
        bytes(&c)
    };
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"{not json".to_vec(), 6, "error unmarshall network config"),
        (b"[]".to_vec(), 6, "not a JSON object"),
        (with("name", json!("")), 7, "`name`"),
        (with("name", json!("a b")), 7, "`name`"),
        (with("cniVersion", json!(1)), 6, "`cniVersion`"),
        (
            with("subnetFile", json!(5)),
            7,
            "`subnetFile` must be a string",
        ),
        (with("dataDir", json!("")), 7, "`dataDir` must not be empty"),
        (with("delegate", json!({"type": 5})), 7, "`delegate.type`"),
        (with("delegate", json!({"name": "x"})), 7, "`delegate.name`"),
        (with("delegate", json!({"ipam": {}})), 7, "`delegate.ipam`"),
        (
            with("ipam", json!({"routes": [{"dst": "nope"}]})),
            7,
            "`ipam.routes[0].dst`",
        ),
    ];
    for (stdin, code, needle) in cases {
        let e = error_of(&s.run("ADD", "ctr-1", &stdin));
        assert_eq!(e["code"], code, "{}: {e}", String::from_utf8_lossy(&stdin));
        assert!(
            e["msg"].as_str().unwrap_or("").contains(needle),
            "{needle}: {e}"
        );
    }
    assert!(!s.p("bin/stdin.ADD").exists(), "the delegate is never run");
    assert!(!s.p("data").exists(), "nothing is kept");
}

#[test]
fn environment_errors() {
    let s = Setup::new();
    let cfg = bytes(&s.config("1.0.0"));
    let e = error_of(&run_with(&[("CNI_COMMAND", "ADD")], &cfg));
    assert_eq!(e["code"], 4);
    assert_eq!(
        e["msg"],
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
    );
    let e = error_of(&s.run("ADD", "../x", &cfg));
    assert_eq!(
        (e["code"].as_u64(), e["msg"].as_str()),
        (Some(4), Some("invalid characters in containerID"))
    );
    let e = error_of(&s.run("FROB", "x", &cfg));
    assert_eq!(e["msg"], "unknown CNI_COMMAND: FROB");
    // No CNI_COMMAND: run by hand, says what it is, succeeds.
    let out = run_with(&[], b"");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CNI protocol versions supported"));
}

#[test]
fn delegate_failures_are_relayed() {
    let s = Setup::new();
    let cfg = bytes(&s.config("1.0.0"));
    std::fs::write(s.p("bin/fail"), "").expect("touch");
    let e = error_of(&s.run("ADD", "ctr-1", &cfg));
    assert_eq!(
        (e["code"].as_u64(), e["msg"].as_str(), e["details"].as_str()),
        (Some(11), Some("try again later"), Some("busy")),
        "the delegate's own error"
    );
    assert!(
        s.p("data/ctr-1").exists(),
        "kept for the DEL that follows a failed ADD"
    );
    // A failing DEL keeps the state for the runtime's retry.
    let e = error_of(&s.run("DEL", "ctr-1", &cfg));
    assert_eq!(e["code"], 11);
    assert!(s.p("data/ctr-1").exists());
    std::fs::remove_file(s.p("bin/fail")).expect("rm");
    std::fs::write(s.p("bin/crash"), "").expect("touch");
    let e = error_of(&s.run("ADD", "ctr-2", &cfg));
    assert!(
        e["msg"].as_str().unwrap_or("").contains("bridge crashed"),
        "{e}"
    );
    // Not on CNI_PATH.
    let mut c = s.config("1.0.0");
    c["delegate"] = json!({"type": "ipvlan"});
    let e = error_of(&s.run("ADD", "ctr-3", &bytes(&c)));
    assert_eq!(e["code"], 999);
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed to find plugin \"ipvlan\" in path [/nonexistent "),
        "{e}"
    );
    // A state file that does not parse: DEL forgets it and succeeds, as flannel.
    std::fs::write(s.p("data/ctr-4"), "garbage").expect("write");
    assert!(s.run("DEL", "ctr-4", &cfg).status.success());
    assert!(!s.p("data/ctr-4").exists());
}
