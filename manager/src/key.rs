//! The cluster key: 32 random bytes, base64 in a file readable only by root.
//!
//! Every link between nodes is authenticated and encrypted with it (see
//! `engine::runtime::link`). A node without it learns nothing and changes nothing (S9).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Bytes of key material.
pub const KEY_BYTES: usize = 32;

/// A new random key, base64-encoded (what `tandem keygen` prints).
pub fn generate() -> String {
    let mut key = [0u8; KEY_BYTES];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&engine::runtime::os_random_u64().to_le_bytes());
    }
    STANDARD.encode(key)
}

/// Reads the key file: base64 of exactly 32 bytes, surrounding whitespace allowed.
pub fn read(path: &Path) -> Result<[u8; KEY_BYTES], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the cluster key {}: {e}", path.display()))?;
    let bytes = STANDARD.decode(text.trim()).map_err(|e| {
        format!(
            "cluster key {}: not base64 ({e}); create one with tandem keygen",
            path.display()
        )
    })?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        format!(
            "cluster key {}: {} bytes, expected {KEY_BYTES}; create one with tandem keygen",
            path.display(),
            bytes.len()
        )
    })
}

/// Whether the key file can be read by anyone but its owner (a warning, not an error).
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_read_back_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("tandem-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key");
        let key = generate();
        assert_ne!(key, generate());
        std::fs::write(&path, format!("{key}\n")).expect("write");
        assert_eq!(read(&path).expect("valid").len(), KEY_BYTES);
        std::fs::write(&path, "not base64!").expect("write");
        assert!(read(&path).unwrap_err().contains("not base64"));
        std::fs::write(&path, STANDARD.encode([1u8; 16])).expect("write");
        assert!(read(&path).unwrap_err().contains("16 bytes, expected 32"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
