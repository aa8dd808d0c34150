//! API keys: the plaintext `sk-` key and the digest under which it is kept.

use super::QuotaError;
use sha2::{Digest, Sha256};
use std::fmt;

const KEY_PREFIX: &str = "sk-";
const KEY_BODY_LEN: usize = 48;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An API key in plaintext: `sk-` and 48 base62 characters.
///
/// Only [`TokenKey::generate`] and [`TokenKey::parse`] make one, so a value of
/// this type is always well-formed. It never implements `Display`, so it
/// cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey(String);

impl TokenKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<TokenKey, QuotaError> {
        let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_BODY_LEN);
        key.push_str(KEY_PREFIX);
        let mut buf = [0u8; 64];
        while key.len() < KEY_PREFIX.len() + KEY_BODY_LEN {
            getrandom::fill(&mut buf)
                .map_err(|e| QuotaError::Internal(format!("OS random source failed: {e}")))?;
            // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
            for b in buf.iter().filter(|b| **b < 248) {
                if key.len() == KEY_PREFIX.len() + KEY_BODY_LEN {
                    break;
                }
                key.push(char::from(BASE62[usize::from(*b % 62)]));
            }
        }
        Ok(TokenKey(key))
    }

    /// Accepts exactly `sk-` followed by 48 base62 characters.
    pub fn parse(s: &str) -> Result<TokenKey, QuotaError> {
        let well_formed = s.strip_prefix(KEY_PREFIX).is_some_and(|body| {
            body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if well_formed {
            Ok(TokenKey(s.to_owned()))
        } else {
            Err(QuotaError::MalformedKey)
        }
    }

    /// The plaintext, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which the key is stored and looked up.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }

    /// What may be shown in lists and logs: `sk-` and four characters.
    pub fn display_prefix(&self) -> String {
        format!("{}…", &self.0[..KEY_PREFIX.len() + 4])
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({})", self.display_prefix())
    }
}

/// The SHA-256 digest of a secret: the only form in which keys are kept.
///
/// Kept both raw (the read cache's key) and as lowercase hex (the stored
/// column), in place: making one allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyDigest {
    raw: [u8; 32],
    hex: [u8; 64],
}

impl KeyDigest {
    /// The digest of any secret (an API key or the admin credential).
    pub fn of(secret: &str) -> KeyDigest {
        KeyDigest::from_raw(Sha256::digest(secret.as_bytes()).into())
    }

    fn from_raw(raw: [u8; 32]) -> KeyDigest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (i, byte) in raw.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        KeyDigest { raw, hex }
    }

    /// A digest as the store keeps it: 64 lowercase hex characters.
    pub fn from_hex(text: &str) -> Option<KeyDigest> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut raw = [0u8; 32];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            raw[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(KeyDigest::from_raw(raw))
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written to `hex`.
        std::str::from_utf8(&self.hex).unwrap_or_default()
    }

    /// The 32 bytes.
    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 51);
        assert!(a.expose().starts_with("sk-"));
        assert_eq!(TokenKey::parse(a.expose()).unwrap(), a);
        assert_eq!(a.display_prefix(), format!("{}…", &a.expose()[..7]));
        assert!(!format!("{a:?}").contains(&a.expose()[7..]));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let body = "a".repeat(48);
        assert!(TokenKey::parse(&format!("sk-{body}")).is_ok());
        for bad in [
            String::new(),
            "sk-".into(),
            format!("sk-{}", "a".repeat(47)),
            format!("sk-{}", "a".repeat(49)),
            format!("pk-{body}"),
            format!("sk-{}-", "a".repeat(47)),
            format!("sk-{}é", "a".repeat(46)),
        ] {
            assert!(
                matches!(TokenKey::parse(&bad), Err(QuotaError::MalformedKey)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn digest_is_hex_sha256() {
        assert_eq!(
            KeyDigest::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let key = TokenKey::generate().unwrap();
        assert_eq!(key.digest(), KeyDigest::of(key.expose()));
        assert_eq!(
            KeyDigest::from_hex(key.digest().as_str()),
            Some(key.digest())
        );
        assert_eq!(KeyDigest::of("abc").raw()[..2], [0xba, 0x78]);
        assert_eq!(KeyDigest::from_hex(&"A".repeat(64)), None);
        assert_eq!(KeyDigest::from_hex("ab"), None);
    }
}
