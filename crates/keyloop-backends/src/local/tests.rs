//! Unit tests of the local store that need no server: the master key, its id, the key check
//! value and the refusal message.

use super::key_check::{CheckRefusal, KeyCheck};
use super::*;

#[test]
fn master_key_round_trips_and_never_prints() {
    let k = MasterKey::generate();
    let again = MasterKey::from_hex(&k.to_hex()).unwrap();
    assert_eq!(k.0.as_ref(), again.0.as_ref());
    assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
    assert!(MasterKey::from_hex("abc").is_err());
    assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
}

#[test]
fn a_key_id_is_stable_per_key_differs_between_keys_and_shows_nothing_of_the_key() {
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let id = KeyId::of(&a);
    assert_eq!(id, KeyId::of(&MasterKey::from_hex(&a.to_hex()).unwrap()));
    assert_ne!(id, KeyId::of(&b));
    let shown = id.to_string();
    assert_eq!(shown.len(), 16);
    assert_eq!(KeyId::parse(&shown), Some(id));
    // Not a slice of the key, nor of its plain SHA-256.
    let key_hex = a.to_hex();
    assert!(!key_hex.contains(&shown));
    use sha2::Digest;
    let plain = hex::encode(sha2::Sha256::digest(a.0.as_ref()));
    assert!(!plain.contains(&shown));
}

#[test]
fn a_known_test_vector_pins_the_key_id() {
    // HMAC-SHA256(key = bytes 0x00..=0x1f, "keyloop master key id v1"), first 8 bytes, as
    // Python's hmac module computes it. Pinned: changing the derivation would orphan every
    // store's check value.
    let key =
        MasterKey::from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap();
    assert_eq!(KeyId::of(&key).to_string(), "ce2dd2d801885826");
}

#[test]
fn a_key_check_opens_with_its_key_only() {
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let check = KeyCheck::seal(&a);
    let decoded = KeyCheck::decode(&check.encode()).unwrap();
    assert_eq!(decoded, check);
    assert_eq!(decoded.verify(&a), Ok(()));
    assert_eq!(
        decoded.verify(&b),
        Err(CheckRefusal::OtherKey(KeyId::of(&a)))
    );
}

#[test]
fn a_key_check_with_a_copied_id_or_a_flipped_bit_does_not_open() {
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    // Someone writes b's seal under a's id: the id matches a, the seal does not open.
    let forged = KeyCheck {
        key_id: KeyId::of(&a),
        sealed: KeyCheck::seal(&b).sealed,
    };
    assert_eq!(forged.verify(&a), Err(CheckRefusal::DoesNotOpen));
    let mut flipped = KeyCheck::seal(&a);
    let last = flipped.sealed.len() - 1;
    flipped.sealed[last] ^= 1;
    assert_eq!(flipped.verify(&a), Err(CheckRefusal::DoesNotOpen));
}

#[test]
fn a_key_check_holds_neither_the_key_nor_anything_unreadable() {
    let a = MasterKey::generate();
    let encoded = String::from_utf8(KeyCheck::seal(&a).encode()).unwrap();
    assert!(encoded.starts_with("keyloop-key-check/1 "), "{encoded}");
    assert!(!encoded.contains(a.to_hex().as_str()));
    assert_eq!(encoded.split(' ').count(), 3);
    for bad in [
        &b""[..],
        b"keyloop-key-check/1",
        b"keyloop-key-check/2 0011223344556677 00",
        b"keyloop-key-check/1 zz11223344556677 00",
        b"keyloop-key-check/1 0011223344556677 0011",
        b"keyloop-key-check/1 0011223344556677 00 extra",
        b"\xff\xfe",
    ] {
        assert_eq!(KeyCheck::decode(bad), None, "{bad:?}");
    }
}

#[test]
fn a_mismatch_names_both_key_ids_and_never_the_key() {
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let m = KeyMismatch {
        bucket: "keyloop_secrets".into(),
        given: KeyId::of(&b),
        expected: Expected::Key(KeyId::of(&a)),
    };
    let text = m.to_string();
    assert!(text.contains(&KeyId::of(&a).to_string()), "{text}");
    assert!(text.contains(&KeyId::of(&b).to_string()), "{text}");
    assert!(text.contains("keyloop_secrets"), "{text}");
    assert!(!text.contains(a.to_hex().as_str()) && !text.contains(b.to_hex().as_str()));
    let legacy = KeyMismatch {
        expected: Expected::Unrecorded { values: 3 },
        ..m
    };
    assert!(legacy.to_string().contains("3 value(s)"), "{legacy}");
}
