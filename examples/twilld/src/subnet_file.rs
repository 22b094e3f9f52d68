//! Writing `/run/flannel/subnet.env` atomically.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use twill_model::SubnetEnv;

/// Writes the file next to its final name, syncs it, then renames it over
/// the old one, so readers see the old or the new file, never half of one.
///
/// # Errors
/// When the directory cannot be created or written.
pub fn write_atomically(path: &Path, env: &SubnetEnv) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
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
