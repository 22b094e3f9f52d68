//! Writing `/run/flannel/subnet.env` atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use twill_model::SubnetEnv;

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Checks, before anything is leased or written, that the subnet file can be
/// replaced safely: it is a regular file or absent (the atomic rename would
/// replace a device such as `/dev/null`, a symlink or a directory with our
/// file), it has a file name, and its directory exists or can be created
/// and is writable.
///
/// # Errors
/// One line naming `-subnet-file`, the path and what is wrong.
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    if path.file_name().is_none() {
        bail!("-subnet-file {shown} has no file name");
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(m) => {
            let what = if m.is_dir() {
                "a directory"
            } else if m.file_type().is_symlink() {
                "a symbolic link (it would be replaced, not followed: give the target's path)"
            } else {
                "not a regular file (a device, socket or pipe)"
            };
            bail!("-subnet-file {shown} is {what}; it must be a regular file or absent");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("-subnet-file {shown}: cannot inspect it: {e}"),
    }
    let dir = parent_dir(path);
    let probe = dir.join(format!(".twilld-probe-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("-subnet-file {shown} is not writable"))
}

/// Writes the file next to its final name, syncs it, then renames it over
/// the old one, so readers see the old or the new file, never half of one.
/// Checks the path again first ([`check_path`]): it may have changed since
/// start-up.
///
/// # Errors
/// When the path is not a regular file or absent, or the directory cannot
/// be created or written.
pub fn write_atomically(path: &Path, env: &SubnetEnv) -> anyhow::Result<()> {
    check_path(path)?;
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("subnet file {} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(env.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write subnet file {}", path.display()));
    }
    Ok(())
}

/// Reads `FLANNEL_SUBNET` from an existing subnet file, to ask for the same
/// subnet again after a restart (as flanneld does).
#[must_use]
pub fn previous_subnet(path: &Path) -> Option<twill_model::SubnetKey> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))?;
    let net: ipnetwork::Ipv4Network = value.trim().parse().ok()?;
    let net = ipnetwork::Ipv4Network::new(net.network(), net.prefix()).ok()?;
    Some(twill_model::SubnetKey::v4(net))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use twill_model::NetworkConfig;

    #[test]
    fn writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        let cfg = NetworkConfig::parse(r#"{"Network":"192.168.0.0/16"}"#).unwrap();
        let key = "192.168.4.0-24".parse().unwrap();
        write_atomically(&path, &SubnetEnv::new(&cfg, &key, 1450, false)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("FLANNEL_SUBNET=192.168.4.1/24\n"), "{text}");
        assert_eq!(previous_subnet(&path), Some(key));
        // No temp file left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn only_a_regular_file_or_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig::parse(r#"{"Network":"192.168.0.0/16"}"#).unwrap();
        let env = SubnetEnv::new(&cfg, &"192.168.4.0-24".parse().unwrap(), 1450, false);
        // A directory, a symlink and a FIFO (our own, standing in for /dev/null).
        let sub = dir.path().join("adir");
        std::fs::create_dir(&sub).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for (path, needle) in [
            (&sub, "a directory"),
            (&link, "symbolic link"),
            (&fifo, "not a regular file"),
        ] {
            let err = format!("{:#}", check_path(path).unwrap_err());
            assert!(
                err.contains("-subnet-file") && err.contains(needle),
                "{err}"
            );
            assert!(write_atomically(path, &env).is_err());
        }
        assert!(sub.is_dir());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // A regular file and an absent one are fine.
        assert!(check_path(&target).is_ok());
        assert!(check_path(&dir.path().join("new/sub.env")).is_ok());
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let cfg = NetworkConfig::parse(r#"{"Network":"192.168.0.0/16"}"#).unwrap();
        let env = SubnetEnv::new(&cfg, &"192.168.4.0-24".parse().unwrap(), 1450, false);
        let err = write_atomically(&file.join("sub.env"), &env).unwrap_err();
        assert!(format!("{err:#}").contains("cannot"), "{err:#}");
    }
}
