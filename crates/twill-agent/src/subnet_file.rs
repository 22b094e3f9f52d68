//! `/run/flannel/subnet.env`: checked before anything is leased, written
//! atomically (synced, then renamed), read back through [`SubnetEnv`] only.
//! Blocking file IO: the agent calls it off the runtime.

use std::io::Write;
use std::path::Path;

use twill_model::{SubnetEnv, SubnetKey};

use crate::{AgentError, AgentOption};

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> AgentError {
    AgentError::option(AgentOption::SubnetFile, path.display(), reason)
}

/// Checks, before anything is leased or written, that the subnet file can
/// be replaced safely: it is a regular file or absent (the atomic rename
/// would replace a device such as `/dev/null`, a symlink or a directory
/// with our file), it has a file name, and its directory exists or can be
/// created and is writable.
///
/// # Errors
/// [`AgentError::InvalidOption`] naming [`AgentOption::SubnetFile`], the
/// path and what is wrong.
pub fn check_path(path: &Path) -> Result<(), AgentError> {
    if path.file_name().is_none() {
        return Err(invalid(path, "has no file name"));
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
            return Err(invalid(
                path,
                format!("is {what}; it must be a regular file or absent"),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(invalid(path, format!("cannot be inspected: {e}"))),
    }
    let dir = parent_dir(path);
    let probe = dir.join(format!(".twill-probe-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| invalid(path, format!("is not writable: {e}")))
}

/// Writes the file next to its final name, syncs it, then renames it over
/// the old one, so readers see the old or the new file, never half of one.
/// Checks the path again first ([`check_path`]): it may have changed since
/// start-up.
///
/// # Errors
/// When the path is not a regular file or absent, or the directory cannot
/// be created or written.
pub fn write_atomically(path: &Path, env: &SubnetEnv) -> Result<(), AgentError> {
    check_path(path)?;
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| invalid(path, "has no file name"))?;
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
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        AgentError::SubnetFile {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The subnet of an existing subnet file, to ask for the same subnet again
/// after a restart (as flanneld does). `None` when the file is absent or
/// not a subnet.env.
#[must_use]
pub fn previous_subnet(path: &Path) -> Option<SubnetKey> {
    let text = std::fs::read_to_string(path).ok()?;
    SubnetEnv::parse(&text).ok().map(|env| env.key())
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
            let err = check_path(path).unwrap_err();
            assert!(
                matches!(
                    &err,
                    AgentError::InvalidOption { option: AgentOption::SubnetFile, reason, .. }
                        if reason.contains(needle)
                ),
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
        assert!(
            matches!(
                err,
                AgentError::InvalidOption {
                    option: AgentOption::SubnetFile,
                    ..
                }
            ),
            "{err}"
        );
    }
}
