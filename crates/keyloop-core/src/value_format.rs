//! How the values keyloop generates are written, chosen per credential (`--value-format`).
//!
//! - **`checksummed`** — `klc_`, 30 random base62 characters (178.6 bits from the OS CSPRNG),
//!   and 6 base62 characters of the CRC32 (IEEE) of those 30: `klc_` + 36 characters, 40 in all.
//!   The layout is GitHub's token format (`ghp_` + 30 + 6, described in "Behind GitHub's new
//!   authentication token formats", 2021): the prefix lets a scanner look for keyloop's values
//!   without matching every long random string, and the checksum lets it (or `ingest`) tell a
//!   real keyloop value from a lookalike offline, with a false-positive rate of 2⁻³² per
//!   prefixed candidate. The base62 alphabet is `0-9A-Za-z` and the checksum is the CRC32 as a
//!   big-endian base62 number, left-padded with `0` to 6 characters — the same encoding as
//!   Kingfisher's `crc32 | base62: 6` template filters, so its rule can check the checksum.
//!   `klc` = keyloop credential; `klt_` is taken by JIT tokens.
//! - **`hex`** — `kl_` and 64 lowercase hex characters (256 bits): the format keyloop always
//!   had, kept for the credentials registered with it (a record without a format is `hex`).
//!   Generic scanners miss it: it has no checksum, and detect-secrets' hex plugin and
//!   trufflehog skip it.
//!
//! Both are accepted by both targets (a PostgreSQL password travels as a SCRAM verifier, so
//! any text without NUL is fine). Nothing here returns an error: a value is never quoted.

use crate::credential::TargetKind;
use crate::secret::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a credential's generated values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// `kl_` + 64 hex characters: the original format, and what a record without a format
    /// field has.
    #[default]
    Hex,
    /// `klc_` + 30 random base62 characters + 6 base62 characters of their CRC32.
    Checksummed,
}

/// The prefix of the checksummed format.
pub const CHECKSUMMED_PREFIX: &str = "klc_";
/// The prefix of the hex format.
pub const HEX_PREFIX: &str = "kl_";
/// Random base62 characters in a checksummed value.
pub const CHECKSUMMED_BODY_LEN: usize = 30;
/// Base62 characters of the CRC32 at the end of a checksummed value.
pub const CHECKSUM_LEN: usize = 6;
/// Hex characters in a hex value.
pub const HEX_BODY_LEN: usize = 64;

/// The base62 alphabet, in value order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl ValueFormat {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [ValueFormat; 2] = [Self::Hex, Self::Checksummed];

    /// The format's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hex => "hex",
            Self::Checksummed => "checksummed",
        }
    }

    /// The prefix every value of this format starts with.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Hex => HEX_PREFIX,
            Self::Checksummed => CHECKSUMMED_PREFIX,
        }
    }

    /// The length of every value of this format, in bytes (all ASCII).
    pub const fn value_len(self) -> usize {
        match self {
            Self::Hex => HEX_PREFIX.len() + HEX_BODY_LEN,
            Self::Checksummed => CHECKSUMMED_PREFIX.len() + CHECKSUMMED_BODY_LEN + CHECKSUM_LEN,
        }
    }

    /// The format a new credential of `target` gets when none is asked for: `checksummed`
    /// wherever the target accepts it (both targets do: `none` checks nothing, and a
    /// PostgreSQL password may be any text without NUL), because that is the one scanners
    /// can find. A target that limited length or characters would get `hex` here.
    pub const fn default_for(target: TargetKind) -> Self {
        match target {
            TargetKind::None | TargetKind::Postgres => Self::Checksummed,
        }
    }

    /// A regular expression for one value of this format, without anchors or boundaries.
    /// It uses only what RE2 (gitleaks, GitHub's Hyperscan), Rust's `regex`, Python's `re` and
    /// JavaScript share: literals, classes and counted repetition.
    pub const fn pattern(self) -> &'static str {
        match self {
            Self::Hex => "kl_[0-9a-f]{64}",
            Self::Checksummed => "klc_[0-9A-Za-z]{36}",
        }
    }

    /// A fresh value of this format from `fill`, which must fill a buffer with bytes from a
    /// CSPRNG (the backends pass the OS's). The random bytes are zeroized after use.
    pub fn generate(self, fill: &mut dyn FnMut(&mut [u8])) -> Secret {
        match self {
            Self::Hex => {
                let mut bytes = zeroize::Zeroizing::new([0u8; HEX_BODY_LEN / 2]);
                fill(bytes.as_mut());
                let mut text = String::with_capacity(self.value_len());
                text.push_str(HEX_PREFIX);
                text.push_str(&hex::encode(bytes.as_ref()));
                Secret::new(text)
            }
            Self::Checksummed => {
                let mut text = String::with_capacity(self.value_len());
                text.push_str(CHECKSUMMED_PREFIX);
                let mut bytes = zeroize::Zeroizing::new([0u8; 64]);
                let mut drawn = 0;
                while drawn < CHECKSUMMED_BODY_LEN {
                    fill(bytes.as_mut());
                    // Rejection sampling keeps every character uniform: 248 = 4 × 62, so
                    // bytes 248..=255 are dropped instead of favouring the first 8 symbols.
                    for &b in bytes.iter().filter(|&&b| b < 248) {
                        if drawn == CHECKSUMMED_BODY_LEN {
                            break;
                        }
                        text.push(char::from(BASE62[usize::from(b % 62)]));
                        drawn += 1;
                    }
                }
                let check = checksum(&text.as_bytes()[CHECKSUMMED_PREFIX.len()..]);
                text.push_str(std::str::from_utf8(&check).expect("base62 is ASCII"));
                Secret::new(text)
            }
        }
    }

    /// The format `candidate` is a well-formed value of, as a whole string: `checksummed` only
    /// when its checksum holds, `hex` when it is `kl_` and 64 lowercase hex characters.
    pub fn recognize(candidate: &str) -> Option<Self> {
        if is_valid_checksum(candidate) {
            return Some(Self::Checksummed);
        }
        let hex = candidate.strip_prefix(HEX_PREFIX)?;
        (hex.len() == HEX_BODY_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then_some(Self::Hex)
    }
}

/// Whether `candidate` is a checksummed keyloop value: `klc_`, 30 base62 characters and the
/// 6-character base62 CRC32 of those 30. A lookalike (wrong length, a character outside
/// base62, a checksum that does not match) is `false`. This cannot tell a value keyloop made
/// from one someone else computed the same way; it tells a keyloop-shaped value from noise.
pub fn is_valid_checksum(candidate: &str) -> bool {
    let Some(rest) = candidate.strip_prefix(CHECKSUMMED_PREFIX) else {
        return false;
    };
    let rest = rest.as_bytes();
    if rest.len() != CHECKSUMMED_BODY_LEN + CHECKSUM_LEN
        || !rest.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let (body, check) = rest.split_at(CHECKSUMMED_BODY_LEN);
    checksum(body) == check
}

/// A checksummed value with the given 30-character base62 `body`, for examples in scanner
/// rules and tests: deterministic, so never a credential's value. `None` when `body` is not
/// 30 base62 characters.
pub fn checksummed_with_body(body: &str) -> Option<String> {
    let ok = body.len() == CHECKSUMMED_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| {
        let check = checksum(body.as_bytes());
        format!(
            "{CHECKSUMMED_PREFIX}{body}{}",
            std::str::from_utf8(&check).expect("base62 is ASCII")
        )
    })
}

/// The CRC32 (IEEE) of `body` as 6 base62 digits, most significant first, `0`-padded.
/// 62⁶ > 2³², so every CRC32 fits.
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic "CSPRNG" for the format's own tests: a counter.
    fn counting() -> impl FnMut(&mut [u8]) {
        let mut next = 0u8;
        move |buf: &mut [u8]| {
            for b in buf {
                *b = next;
                next = next.wrapping_add(1);
            }
        }
    }

    /// Distinct, well-mixed bytes for tests of shape (SHA-256 of a counter): not secret, and
    /// need not be.
    fn mixed() -> impl FnMut(&mut [u8]) {
        use sha2::{Digest, Sha256};
        let mut counter = 0u64;
        move |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(32) {
                counter += 1;
                let d = Sha256::digest(counter.to_le_bytes());
                chunk.copy_from_slice(&d[..chunk.len()]);
            }
        }
    }

    #[test]
    fn crc32_is_the_ieee_one_and_its_base62_is_padded_to_six() {
        // The CRC-32/IEEE check value of "123456789" is 0xCBF43926 = 3421780262.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(&checksum(b"123456789"), b"3jZRME");
        let mut n: u64 = 0;
        for &c in b"3jZRME" {
            n = n * 62 + BASE62.iter().position(|&x| x == c).unwrap() as u64;
        }
        assert_eq!(n, 3_421_780_262);
        // The empty string's CRC32 is 0: all padding.
        assert_eq!(&checksum(b""), b"000000");
    }

    #[test]
    fn matches_the_published_github_token_example() {
        // GitHub's format: ghp_ + 30 + base62(crc32(30)), which Kingfisher's own rule checks
        // with `{{ body | crc32 | base62: 6 }}`; its example token must check out here too.
        let token = "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";
        let (body, check) = token["ghp_".len()..].split_at(30);
        assert_eq!(&checksum(body.as_bytes()), check.as_bytes());
    }

    #[test]
    fn generated_checksummed_values_have_the_shape_and_a_valid_checksum() {
        let mut fill = mixed();
        for _ in 0..1_000 {
            let v = ValueFormat::Checksummed.generate(&mut fill);
            let v = v.expose();
            assert_eq!(v.len(), 40);
            assert_eq!(v.len(), ValueFormat::Checksummed.value_len());
            assert!(v.starts_with("klc_"));
            assert!(v[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{v}");
            assert!(is_valid_checksum(v), "{v}");
            assert_eq!(ValueFormat::recognize(v), Some(ValueFormat::Checksummed));
        }
    }

    #[test]
    fn generated_hex_values_keep_the_original_format() {
        let v = ValueFormat::Hex.generate(&mut counting());
        let v = v.expose();
        assert_eq!(v.len(), 67);
        assert_eq!(&v[..11], "kl_00010203");
        assert_eq!(ValueFormat::recognize(v), Some(ValueFormat::Hex));
        assert!(!is_valid_checksum(v));
    }

    #[test]
    fn body_characters_are_uniform_because_high_bytes_are_rejected() {
        // A source of only 248..=255 gives nothing; interleaved with 0 it gives only '0'.
        let mut flip = false;
        let mut fill = |buf: &mut [u8]| {
            for b in buf {
                *b = if flip { 0 } else { 250 };
                flip = !flip;
            }
        };
        let v = ValueFormat::Checksummed.generate(&mut fill);
        assert_eq!(&v.expose()[4..34], "0".repeat(30));
        // Every symbol is reachable: bytes 0..62 map onto the whole alphabet.
        let v = ValueFormat::Checksummed.generate(&mut counting());
        assert_eq!(&v.expose()[4..34], "0123456789ABCDEFGHIJKLMNOPQRST");
    }

    #[test]
    fn lookalikes_are_refused() {
        let good = checksummed_with_body("0123456789ABCDEFGHIJabcdefghij").unwrap();
        assert!(is_valid_checksum(&good));
        let mut wrong_check = good.clone().into_bytes();
        let last = wrong_check.len() - 1;
        wrong_check[last] = if wrong_check[last] == b'a' {
            b'b'
        } else {
            b'a'
        };
        let mut wrong_body = good.clone().into_bytes();
        wrong_body[10] = if wrong_body[10] == b'x' { b'y' } else { b'x' };
        let lookalikes = [
            String::from_utf8(wrong_check).unwrap(),
            String::from_utf8(wrong_body).unwrap(),
            good.replacen("klc_", "klx_", 1),
            good.replacen("klc_", "KLC_", 1),
            good[..39].to_owned(),
            format!("{good}0"),
            good.replacen('0', "-", 1),
            format!("klc_{}", "é".repeat(18)),
            String::new(),
            "klc_".to_owned(),
        ];
        for l in &lookalikes {
            assert!(!is_valid_checksum(l), "{l}");
            assert_ne!(
                ValueFormat::recognize(l),
                Some(ValueFormat::Checksummed),
                "{l}"
            );
        }
        assert_eq!(
            ValueFormat::recognize(&format!("kl_{}", "A".repeat(64))),
            None
        );
        assert_eq!(
            ValueFormat::recognize(&format!("kl_{}", "a".repeat(63))),
            None
        );
    }

    #[test]
    fn checksummed_with_body_refuses_what_is_not_30_base62_characters() {
        assert!(checksummed_with_body("short").is_none());
        assert!(checksummed_with_body(&"-".repeat(30)).is_none());
        assert!(checksummed_with_body(&"é".repeat(15)).is_none());
    }

    #[test]
    fn names_and_json_agree_and_every_target_gets_a_format_it_accepts() {
        for f in ValueFormat::ALL {
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::Value::String(f.name().to_owned())
            );
        }
        assert_eq!(
            ValueFormat::default(),
            ValueFormat::Hex,
            "records without a format"
        );
        assert_eq!(
            ValueFormat::default_for(TargetKind::Postgres),
            ValueFormat::Checksummed
        );
        assert_eq!(
            ValueFormat::default_for(TargetKind::None),
            ValueFormat::Checksummed
        );
    }
}
