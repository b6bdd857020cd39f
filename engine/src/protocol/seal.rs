//! AES-256-GCM record protection for one direction of a replication link.
//!
//! A [`Sealer`] (sending side) and an [`Opener`] (receiving side) share one 32-byte key per
//! direction, taken from the Noise handshake's split (see `crate::runtime::link`). Both count the
//! records they process; the count is the nonce and is never sent, so a record that was dropped,
//! replayed, reordered, truncated or modified fails authentication, and the first failure poisons
//! the [`Opener`] for good: a broken stream is never resynchronised.
//!
//! # Record layout
//!
//! ```text
//! [u32 LE sealed length][ciphertext (same length as the plaintext)][16-byte GCM tag]
//!  \_ prefix, also the AAD \_______________ sealed length ______________________/
//! ```
//!
//! The prefix is written by the caller ([`RECORD_PREFIX_BYTES`]); the sealed length is the
//! plaintext length plus [`TAG_BYTES`], and its four little-endian bytes are the record's
//! additional authenticated data, so a record cut short or stretched is rejected even before the
//! tag check would notice.
//!
//! # Nonce layout
//!
//! 96 bits, as in Noise's AESGCM cipher: four zero bytes, then the 64-bit record counter of the
//! current key, big-endian. The counter starts at 0 for every key.
//!
//! # Rekeying
//!
//! After [`RekeyPolicy::records_per_key`] records or once [`RekeyPolicy::bytes_per_key`]
//! plaintext bytes went through one key, whichever comes first, both ends derive the next key
//! with HKDF-SHA256 (empty salt, the old key as input keying material, info
//! [`REKEY_INFO`]) and restart the counter at 0. Both ends see the same sequence of record
//! lengths, so they rekey at the same record without exchanging a message. The defaults keep a
//! key far below AES-GCM's usage limits (TLS 1.3 allows about 2^24.5 full 16 KiB records, i.e.
//! about 2^38 bytes) and a nonce can never repeat under one key because the counter is reset
//! long before it could wrap.
//!
//! Everything here is pure: no I/O, no clock, no randomness.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

/// Bytes of a record's length prefix.
pub const RECORD_PREFIX_BYTES: usize = 4;

/// Bytes of the GCM authentication tag appended to every record.
pub const TAG_BYTES: usize = 16;

/// Bytes of a direction key.
pub const KEY_BYTES: usize = 32;

/// HKDF info string of the rekey derivation.
pub const REKEY_INFO: &[u8] = b"tandem link rekey";

/// When a direction key is replaced by the next one.
///
/// Both ends of a direction must use the same policy, or the first record after one of them
/// rekeys fails authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Records sealed under one key before the next key takes over (at least 1).
    pub records_per_key: u64,
    /// Plaintext bytes sealed under one key before the next key takes over (at least 1).
    pub bytes_per_key: u64,
}

impl RekeyPolicy {
    /// The policy of a real link: 2^24 records or 2^36 bytes (64 GiB) per key. At 10 Gbit/s
    /// that is a new key about once a minute.
    pub const DEFAULT: Self = Self {
        records_per_key: 1 << 24,
        bytes_per_key: 1 << 36,
    };
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a record could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The tag did not verify: the record was modified, replayed, reordered or one was dropped.
    #[error("record failed authentication (tampered or replayed)")]
    Authentication,
    /// The record is shorter than a tag, or longer than a 32-bit length can describe.
    #[error("record of {bytes} bytes has an impossible length")]
    Length {
        /// Sealed bytes offered.
        bytes: usize,
    },
    /// An earlier record failed; the stream cannot be trusted any more.
    #[error("an earlier record failed authentication")]
    Poisoned,
}

/// The key, counter and usage of one direction; shared by [`Sealer`] and [`Opener`].
struct DirectionKey {
    key: LessSafeKey,
    key_bytes: [u8; KEY_BYTES],
    counter: u64,
    bytes: u64,
    generation: u64,
    policy: RekeyPolicy,
}

impl DirectionKey {
    fn new(key_bytes: [u8; KEY_BYTES], policy: RekeyPolicy) -> Self {
        assert!(
            policy.records_per_key > 0,
            "records_per_key must be positive"
        );
        assert!(policy.bytes_per_key > 0, "bytes_per_key must be positive");
        Self {
            key: aead_key(&key_bytes),
            key_bytes,
            counter: 0,
            bytes: 0,
            generation: 0,
            policy,
        }
    }

    fn nonce(&self) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    /// Accounts for one record of `plaintext_bytes` and rekeys when the policy says so.
    fn advance(&mut self, plaintext_bytes: usize) {
        self.counter += 1;
        self.bytes = self.bytes.saturating_add(plaintext_bytes as u64);
        if self.counter >= self.policy.records_per_key || self.bytes >= self.policy.bytes_per_key {
            self.rekey();
        }
        debug_assert!(self.counter < self.policy.records_per_key);
    }

    fn rekey(&mut self) {
        let mut next = [0u8; KEY_BYTES];
        hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(&self.key_bytes)
            .expand(&[REKEY_INFO], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut next))
            .expect("HKDF-SHA256 can always produce 32 bytes");
        self.key = aead_key(&next);
        self.key_bytes = next;
        next.fill(0);
        self.counter = 0;
        self.bytes = 0;
        self.generation += 1;
    }
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        // Best effort: ring scrubs its own expanded key; this clears our copy of the raw key.
        self.key_bytes.fill(0);
        std::hint::black_box(&mut self.key_bytes);
    }
}

fn aead_key(key_bytes: &[u8; KEY_BYTES]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key_bytes).expect("a 32-byte AES-256 key"))
}

/// The AAD of a record: its sealed length, little-endian, exactly as in the length prefix.
fn record_aad(sealed_bytes: usize) -> Result<[u8; RECORD_PREFIX_BYTES], SealError> {
    u32::try_from(sealed_bytes)
        .map(u32::to_le_bytes)
        .map_err(|_| SealError::Length {
            bytes: sealed_bytes,
        })
}

/// Seals the records of one direction.
pub struct Sealer {
    direction: DirectionKey,
}

impl Sealer {
    /// A sealer starting at record 0 of `key`.
    pub fn new(key: [u8; KEY_BYTES], policy: RekeyPolicy) -> Self {
        Self {
            direction: DirectionKey::new(key, policy),
        }
    }

    /// Seals `buffer[start..]` in place and appends the tag.
    ///
    /// Afterwards `buffer[start..]` holds the sealed record body, whose length the caller writes
    /// as the record's prefix (typically into `buffer[start - 4..start]`, reserved beforehand).
    /// Returns that sealed length.
    pub fn seal(&mut self, buffer: &mut Vec<u8>, start: usize) -> Result<u32, SealError> {
        assert!(
            start <= buffer.len(),
            "seal start past the end of the buffer"
        );
        let plaintext_bytes = buffer.len() - start;
        let sealed_bytes = plaintext_bytes + TAG_BYTES;
        let aad = record_aad(sealed_bytes)?;
        let tag = self
            .direction
            .key
            .seal_in_place_separate_tag(
                self.direction.nonce(),
                Aad::from(aad),
                &mut buffer[start..],
            )
            .expect("AES-GCM sealing fails only beyond 64 GiB per record");
        buffer.extend_from_slice(tag.as_ref());
        self.direction.advance(plaintext_bytes);
        Ok(u32::from_le_bytes(aad))
    }

    /// Keys used so far minus one: how many times this direction rekeyed.
    pub fn generation(&self) -> u64 {
        self.direction.generation
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("generation", &self.direction.generation)
            .field("counter", &self.direction.counter)
            .finish_non_exhaustive()
    }
}

/// Opens the records of one direction, in order.
pub struct Opener {
    direction: DirectionKey,
    poisoned: bool,
}

impl Opener {
    /// An opener expecting record 0 of `key`.
    pub fn new(key: [u8; KEY_BYTES], policy: RekeyPolicy) -> Self {
        Self {
            direction: DirectionKey::new(key, policy),
            poisoned: false,
        }
    }

    /// Opens a sealed record body (ciphertext and tag, without the length prefix) in place and
    /// truncates `record` to the plaintext.
    ///
    /// On failure `record` is left as it was (possibly partly decrypted garbage) and this opener
    /// refuses every later record.
    pub fn open(&mut self, record: &mut Vec<u8>) -> Result<(), SealError> {
        if self.poisoned {
            return Err(SealError::Poisoned);
        }
        let sealed_bytes = record.len();
        let aad = match record_aad(sealed_bytes) {
            Ok(aad) if sealed_bytes >= TAG_BYTES => aad,
            _ => {
                self.poisoned = true;
                return Err(SealError::Length {
                    bytes: sealed_bytes,
                });
            }
        };
        let opened = self
            .direction
            .key
            .open_in_place(self.direction.nonce(), Aad::from(aad), record)
            .map(|plaintext| plaintext.len());
        let Ok(plaintext_bytes) = opened else {
            self.poisoned = true;
            return Err(SealError::Authentication);
        };
        record.truncate(plaintext_bytes);
        self.direction.advance(plaintext_bytes);
        Ok(())
    }

    /// How many times this direction rekeyed.
    pub fn generation(&self) -> u64 {
        self.direction.generation
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("generation", &self.direction.generation)
            .field("counter", &self.direction.counter)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_BYTES] = [7; KEY_BYTES];

    fn pair(policy: RekeyPolicy) -> (Sealer, Opener) {
        (Sealer::new(KEY, policy), Opener::new(KEY, policy))
    }

    /// Seals `plaintext` into a fresh record body (no prefix).
    fn seal(sealer: &mut Sealer, plaintext: &[u8]) -> Vec<u8> {
        let mut buffer = plaintext.to_vec();
        let sealed_bytes = sealer.seal(&mut buffer, 0).expect("seals");
        assert_eq!(sealed_bytes as usize, buffer.len());
        assert_eq!(buffer.len(), plaintext.len() + TAG_BYTES);
        buffer
    }

    #[test]
    fn round_trip_in_order() {
        let (mut sealer, mut opener) = pair(RekeyPolicy::DEFAULT);
        for len in [0usize, 1, 15, 16, 17, 4096, 100_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let mut record = seal(&mut sealer, &plaintext);
            if len > 0 {
                assert_ne!(&record[..len], &plaintext[..], "ciphertext differs");
            }
            opener.open(&mut record).expect("opens");
            assert_eq!(record, plaintext);
        }
    }

    #[test]
    fn seal_after_a_prefix_leaves_the_prefix_alone() {
        let (mut sealer, mut opener) = pair(RekeyPolicy::DEFAULT);
        let mut buffer = vec![0xAA; RECORD_PREFIX_BYTES];
        buffer.extend_from_slice(b"hello");
        let sealed = sealer
            .seal(&mut buffer, RECORD_PREFIX_BYTES)
            .expect("seals");
        assert_eq!(&buffer[..RECORD_PREFIX_BYTES], &[0xAA; 4]);
        assert_eq!(sealed as usize, 5 + TAG_BYTES);
        let mut body = buffer[RECORD_PREFIX_BYTES..].to_vec();
        opener.open(&mut body).expect("opens");
        assert_eq!(body, b"hello");
    }

    #[test]
    fn every_flipped_bit_fails() {
        let (mut sealer, _) = pair(RekeyPolicy::DEFAULT);
        let record = seal(&mut sealer, b"some block data");
        for bit in 0..record.len() * 8 {
            let mut tampered = record.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let mut opener = Opener::new(KEY, RekeyPolicy::DEFAULT);
            assert_eq!(opener.open(&mut tampered), Err(SealError::Authentication));
            // The opener is poisoned: even the genuine record is refused now.
            assert_eq!(opener.open(&mut record.clone()), Err(SealError::Poisoned));
        }
    }

    #[test]
    fn replayed_record_fails() {
        let (mut sealer, mut opener) = pair(RekeyPolicy::DEFAULT);
        let record = seal(&mut sealer, b"write 1");
        opener.open(&mut record.clone()).expect("first copy opens");
        assert_eq!(
            opener.open(&mut record.clone()),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn swapped_pair_fails() {
        let (mut sealer, mut opener) = pair(RekeyPolicy::DEFAULT);
        let first = seal(&mut sealer, b"write 1");
        let mut second = seal(&mut sealer, b"write 2");
        assert_eq!(opener.open(&mut second), Err(SealError::Authentication));
        assert_eq!(opener.open(&mut first.clone()), Err(SealError::Poisoned));
    }

    #[test]
    fn dropped_record_fails() {
        let (mut sealer, mut opener) = pair(RekeyPolicy::DEFAULT);
        let _lost = seal(&mut sealer, b"write 1");
        let mut second = seal(&mut sealer, b"write 2");
        assert_eq!(opener.open(&mut second), Err(SealError::Authentication));
    }

    #[test]
    fn truncated_and_extended_records_fail() {
        let (mut sealer, _) = pair(RekeyPolicy::DEFAULT);
        let record = seal(&mut sealer, b"a longer block of data");
        for cut in [1, TAG_BYTES, record.len() - TAG_BYTES] {
            let mut truncated = record[..record.len() - cut].to_vec();
            let mut opener = Opener::new(KEY, RekeyPolicy::DEFAULT);
            assert_eq!(opener.open(&mut truncated), Err(SealError::Authentication));
        }
        let mut too_short = record[..TAG_BYTES - 1].to_vec();
        let mut opener = Opener::new(KEY, RekeyPolicy::DEFAULT);
        assert_eq!(
            opener.open(&mut too_short),
            Err(SealError::Length {
                bytes: TAG_BYTES - 1
            })
        );
        let mut extended = record.clone();
        extended.push(0);
        let mut opener = Opener::new(KEY, RekeyPolicy::DEFAULT);
        assert_eq!(opener.open(&mut extended), Err(SealError::Authentication));
    }

    #[test]
    fn wrong_key_fails() {
        let mut sealer = Sealer::new(KEY, RekeyPolicy::DEFAULT);
        let mut opener = Opener::new([8; KEY_BYTES], RekeyPolicy::DEFAULT);
        let mut record = seal(&mut sealer, b"data");
        assert_eq!(opener.open(&mut record), Err(SealError::Authentication));
    }

    #[test]
    fn rekey_after_a_record_count() {
        let policy = RekeyPolicy {
            records_per_key: 3,
            bytes_per_key: u64::MAX,
        };
        let (mut sealer, mut opener) = pair(policy);
        let mut records = Vec::new();
        for i in 0..10u8 {
            records.push(seal(&mut sealer, &[i; 40]));
        }
        assert_eq!(sealer.generation(), 3, "rekeyed after records 3, 6 and 9");
        // Sealing is deterministic: a fresh sealer reproduces record 0.
        let mut again = Sealer::new(KEY, policy);
        assert_eq!(seal(&mut again, &[0; 40]), records[0]);
        // Record 3 is at counter 0 again, but under the next key: the same plaintext at
        // counter 0 of the first key seals differently.
        let mut first_key = Sealer::new(KEY, policy);
        assert_ne!(seal(&mut first_key, &[3; 40]), records[3]);
        for (i, record) in records.iter().enumerate() {
            let mut record = record.clone();
            opener.open(&mut record).expect("opens across rekeys");
            assert_eq!(record, vec![i as u8; 40]);
        }
        assert_eq!(opener.generation(), 3);
        // The record at counter 0 of generation 1 is not valid under generation 0's key.
        let mut fresh = Opener::new(KEY, policy);
        assert_eq!(
            fresh.open(&mut records[3].clone()),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn rekey_after_a_byte_count_and_an_opener_without_the_same_policy_fails() {
        let policy = RekeyPolicy {
            records_per_key: u64::MAX,
            bytes_per_key: 100,
        };
        let (mut sealer, mut opener) = pair(policy);
        let mut mismatched = Opener::new(KEY, RekeyPolicy::DEFAULT);
        for i in 0..5u8 {
            let record = seal(&mut sealer, &[i; 60]);
            opener.open(&mut record.clone()).expect("opens");
            let result = mismatched.open(&mut record.clone());
            // Records 0 and 1 (120 bytes) share the first key; record 2 uses the second.
            if i < 2 {
                assert_eq!(result, Ok(()));
            } else {
                assert!(result.is_err());
            }
        }
        assert_eq!(sealer.generation(), 2);
        assert_eq!(opener.generation(), 2);
    }

    #[test]
    fn rekey_derivation_is_hkdf_sha256_of_the_old_key() {
        // Recompute the derivation with ring's HMAC to pin the documented formula:
        // PRK = HMAC(salt = 0^32, old key); next = HMAC(PRK, info || 0x01).
        use ring::hmac;
        let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[0u8; 32]), &KEY);
        let mut message = REKEY_INFO.to_vec();
        message.push(1);
        let okm = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()), &message);
        let mut expected = [0u8; KEY_BYTES];
        expected.copy_from_slice(okm.as_ref());

        let policy = RekeyPolicy {
            records_per_key: 1,
            bytes_per_key: u64::MAX,
        };
        let mut sealer = Sealer::new(KEY, policy);
        let _ = seal(&mut sealer, b"first");
        let second = seal(&mut sealer, b"second");
        let mut opener = Opener::new(expected, policy);
        opener
            .open(&mut second.clone())
            .expect("second record is under the derived key");
    }
}
