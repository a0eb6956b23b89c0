//! Encryption of secrets at rest: users' clouds.yaml files (`clouds`).
//!
//! XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`, an AEAD with 192-bit random nonces, so
//! random nonces never collide in practice). Sealed form: base64 (standard, padded) of
//! `version byte || nonce (24) || ciphertext+tag`. Version 2 ([`SecretBox::seal_bound`]) binds
//! the value to what it is for and whose it is (the AEAD's associated data, e.g.
//! `clouds.yaml/<user id>`), so a sealed value copied into another user's row does not open
//! there; version 1 (no associated data) is still opened by [`SecretBox::open_bound`], for
//! values stored before, and sealed again as version 2 on the next write or key rotation.
//! The key is 32 bytes: `CLOUDS_ENCRYPTION_KEY`, or read from `CLOUDS_ENCRYPTION_KEY_FILE` (raw
//! 32 bytes, or 64 hex characters; a missing file is created with a fresh random key and mode
//! 0600). Rotation: see README ("Secrets and key rotation").

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::Path;

/// Sealed without associated data.
const VERSION: u8 = 1;
/// Sealed with associated data (`slices-blueprint/<context>`).
const VERSION_BOUND: u8 = 2;

/// A loaded key. `Debug` never prints key material.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("sealed value is not valid base64 or too short")]
    Malformed,
    #[error("sealed value was made with another key or was altered")]
    Tampered,
}

impl SecretBox {
    /// A box from 32 key bytes.
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Loads the key file, creating it (0600) with a random key when missing.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let key = XChaCha20Poly1305::generate_key(&mut OsRng);
            write_private(path, hex::encode(key).as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new secret key file");
        }
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let key = parse_key(&raw).with_context(|| {
            format!(
                "key file {}: expected 32 raw bytes or 64 hex characters",
                path.display()
            )
        })?;
        Ok(Self::from_key(&key))
    }

    /// A box from a key written as 64 hex characters or standard base64 of 32 bytes;
    /// `None` when it is neither.
    pub fn from_text(text: &str) -> Option<Self> {
        let text = text.trim();
        let bytes = match hex::decode(text) {
            Ok(bytes) => bytes,
            Err(_) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
        };
        let key = <[u8; 32]>::try_from(bytes.as_slice()).ok()?;
        Some(Self::from_key(&key))
    }

    /// Encrypts `plaintext`; every call uses a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ciphertext = self.cipher.encrypt(&nonce, plaintext).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts what [`SecretBox::seal`] produced.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let raw = decode(sealed, VERSION)?;
        let nonce = XNonce::from_slice(&raw[1..25]);
        self.cipher
            .decrypt(nonce, &raw[25..])
            .map_err(|_| SecretError::Tampered)
    }

    /// Encrypts `plaintext` bound to `context` (what it is and whose, e.g.
    /// `clouds.yaml/<user id>`): it opens only with the same context.
    pub fn seal_bound(&self, context: &str, plaintext: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(context);
        let payload = Payload {
            msg: plaintext,
            aad: &aad,
        };
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ciphertext = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
        out.push(VERSION_BOUND);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts what [`SecretBox::seal_bound`] produced for the same `context` (or, for
    /// values stored before binding existed, what [`SecretBox::seal`] produced).
    pub fn open_bound(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let raw = match decode(sealed, VERSION_BOUND) {
            Ok(raw) => raw,
            Err(_) => return self.open(sealed),
        };
        let nonce = XNonce::from_slice(&raw[1..25]);
        let aad = associated_data(context);
        let payload = Payload {
            msg: &raw[25..],
            aad: &aad,
        };
        self.cipher
            .decrypt(nonce, payload)
            .map_err(|_| SecretError::Tampered)
    }
}

/// The associated data of a bound value.
fn associated_data(context: &str) -> Vec<u8> {
    format!("slices-blueprint/{context}").into_bytes()
}

/// The raw bytes of a sealed value of `version`.
fn decode(sealed: &str, version: u8) -> Result<Vec<u8>, SecretError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| SecretError::Malformed)?;
    if raw.len() < 1 + 24 + 16 || raw[0] != version {
        return Err(SecretError::Malformed);
    }
    Ok(raw)
}

fn parse_key(raw: &[u8]) -> Option<[u8; 32]> {
    if raw.len() == 32 {
        return raw.try_into().ok();
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// Writes a new file readable by its owner only (0600); fails if it exists.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let a = SecretBox::from_key(&[7u8; 32]);
        let b = SecretBox::from_key(&[8u8; 32]);
        let sealed = a.seal(b"password=hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, a.seal(b"password=hunter2"), "nonces must differ");
        assert_eq!(a.open(&sealed).expect("open"), b"password=hunter2");
        assert!(matches!(b.open(&sealed), Err(SecretError::Tampered)));
        assert!(matches!(a.open("not base64!"), Err(SecretError::Malformed)));
    }

    #[test]
    fn bound_values_open_only_in_their_context() {
        let key = SecretBox::from_key(&[7u8; 32]);
        let alice = key.seal_bound("clouds.yaml/user_a", b"secret");
        assert_eq!(
            key.open_bound("clouds.yaml/user_a", &alice).expect("own"),
            b"secret"
        );
        assert!(matches!(
            key.open_bound("clouds.yaml/user_b", &alice),
            Err(SecretError::Tampered)
        ));
        assert!(key.open(&alice).is_err(), "not without its context");
        // Values sealed before binding existed still open (they are sealed again on write).
        let legacy = key.seal(b"old");
        assert_eq!(
            key.open_bound("clouds.yaml/user_a", &legacy)
                .expect("legacy"),
            b"old"
        );
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("sb-key-{}", uuid::Uuid::now_v7()));
        let path = dir.join("clouds.key");
        let first = SecretBox::load_or_create(&path).expect("create");
        let sealed = first.seal(b"x");
        let second = SecretBox::load_or_create(&path).expect("reload");
        assert_eq!(second.open(&sealed).expect("same key"), b"x");
        std::fs::write(&path, b"short").expect("overwrite");
        assert!(SecretBox::load_or_create(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
