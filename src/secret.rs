//! Secrets in the config: a key given literally, as `env:NAME` (an environment variable) or `file:PATH` (a file's
//! contents, one trailing newline dropped); the resolved text may be `base64:...` for binary keys.

use base64::Engine as _;

/// Why a secret could not be resolved (the caller adds the config key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SecretError {
    /// `env:NAME` names a variable that is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// `file:PATH` could not be read.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The path.
        path: String,
        /// The IO error.
        reason: String,
    },
    /// `base64:` is followed by invalid base64.
    #[error("invalid base64 after base64: prefix")]
    Base64,
    /// Nothing is left.
    #[error("empty")]
    Empty,
}

/// Resolves a secret spec to its bytes.
pub(crate) fn resolve(spec: &str) -> Result<Vec<u8>, SecretError> {
    let text = if let Some(name) = spec.strip_prefix("env:") {
        std::env::var(name).map_err(|_| SecretError::MissingEnv(name.to_owned()))?
    } else if let Some(path) = spec.strip_prefix("file:") {
        let mut text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        text
    } else {
        spec.to_owned()
    };
    let bytes = match text.strip_prefix("base64:") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| SecretError::Base64)?,
        None => text.into_bytes(),
    };
    if bytes.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(bytes)
}

/// Compares a presented credential with a secret without telling, by how long it takes, how much of it was
/// right or how long the secret is: both are hashed (SHA-256), and the digests, always 32 bytes, are compared
/// without an early exit. The time depends only on the lengths of the two inputs, and a secret's own length is
/// the same on every attempt.
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (
        ring::digest::digest(&ring::digest::SHA256, a),
        ring::digest::digest(&ring::digest::SHA256, b),
    );
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_compares_whole_values_of_any_length() {
        assert!(equal(b"key", b"key"));
        assert!(!equal(b"key", b"kez"));
        assert!(!equal(b"key", b"ke"));
        assert!(!equal(b"key", b"key2"));
        assert!(!equal(b"", b"key"));
        assert!(equal(b"", b""));
        let long = vec![7u8; 10_000];
        assert!(equal(&long, &long.clone()));
        assert!(!equal(&long, &long[..9_999]));
    }

    #[test]
    fn forms() {
        assert_eq!(resolve("plain").unwrap(), b"plain");
        assert_eq!(resolve("base64:AAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(resolve("base64:!!"), Err(SecretError::Base64));
        assert_eq!(resolve(""), Err(SecretError::Empty));
        assert_eq!(
            resolve("env:GRIP_PROXY_TEST_SURELY_UNSET"),
            Err(SecretError::MissingEnv(
                "GRIP_PROXY_TEST_SURELY_UNSET".into()
            ))
        );
        let dir = std::env::temp_dir().join(format!("grip-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        assert_eq!(
            resolve(&format!("file:{}", dir.display())).unwrap(),
            b"from-file"
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(
            resolve("file:/nonexistent/x"),
            Err(SecretError::File { .. })
        ));
        assert!(equal(b"abc", b"abc"));
        assert!(!equal(b"abc", b"abd"));
        assert!(!equal(b"abc", b"ab"));
    }
}
