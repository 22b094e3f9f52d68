//! The host's X25519 key pair, kept in a file as flannel keeps it
//! (`/run/flannel/wgkey`: the private key in standard base64), so a restart
//! publishes the same public key and peers need not re-learn it.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};

/// A WireGuard key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// The private key (never logged: [`fmt::Debug`] shows the public one).
    pub secret: StaticSecret,
    /// Its public key, published in the lease.
    pub public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair {{ public: {} }}", encode_key(&self.public))
    }
}

impl KeyPair {
    /// The pair of a 32-byte private key.
    #[must_use]
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    /// Reads the private key from `path`, or creates the file (mode 0600,
    /// written to a temporary name then renamed, so a crash never leaves half
    /// a key) with a new random key if it does not exist. A key file readable
    /// by others is tightened to 0600.
    ///
    /// # Errors
    /// When the file cannot be read or written, or does not hold a base64
    /// 32-byte key.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(file = %path.display(), "key file mode {:o} lets others read it: setting 0600", mode & 0o777);
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
                let bytes = decode_key(text.trim()).map_err(|reason| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {reason}", path.display()),
                    )
                })?;
                Ok(Self::from_secret(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
                let pair = Self::from_secret(bytes);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(B64.encode(pair.secret.to_bytes()).as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                tracing::info!(file = %path.display(), public_key = %encode_key(&pair.public), "new WireGuard key pair created");
                Ok(pair)
            }
            Err(e) => Err(e),
        }
    }
}

/// A key as flannel and `wg` write it: standard base64 of its 32 bytes.
#[must_use]
pub fn encode_key(key: &PublicKey) -> String {
    B64.encode(key.as_bytes())
}

/// Parses a base64 key, saying what is wrong with it.
///
/// # Errors
/// A reason when it is not base64 or not 32 bytes long.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = B64.decode(text).map_err(|e| format!("not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes instead of 32", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let a = KeyPair::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(a.public, b.public);
        // flannel's format: the private key in base64, nothing else.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(decode_key(&text).unwrap(), a.secret.to_bytes());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }

    #[test]
    fn loose_permissions_are_tightened_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, B64.encode([7u8; 32]) + "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let pair = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(pair.secret.to_bytes(), [7u8; 32]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        let err = KeyPair::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }

    #[test]
    fn decode_key_reasons() {
        assert!(decode_key("AAAA").unwrap_err().contains("3 bytes"));
        assert!(decode_key("%%%").unwrap_err().contains("not base64"));
        let k = KeyPair::from_secret([1; 32]);
        assert_eq!(
            decode_key(&encode_key(&k.public)).unwrap(),
            *k.public.as_bytes()
        );
    }
}
