//! The cryptography SecAgg+ rests on, each piece a well-kept crate: X25519 key agreement,
//! HKDF-SHA256 to turn agreed secrets into keys, ChaCha20-Poly1305 to seal shares, and the
//! ChaCha20 keystream as the mask generator.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use rand::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

pub const PUBLIC_KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// Sealed length of a plaintext of `n` bytes: nonce, ciphertext, tag.
pub const fn sealed_len(n: usize) -> usize {
    NONCE_BYTES + n + TAG_BYTES
}

/// What a key is for; each purpose gets its own HKDF label, so one agreed secret can never
/// yield the same key for two jobs.
#[derive(Clone, Copy)]
pub enum Purpose {
    /// Sealing the shares one client sends another (directional: sender, recipient).
    ShareSealing,
    /// The pairwise mask seed of two clients (symmetric: lower id first).
    PairwiseMask,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("a public key must be {PUBLIC_KEY_BYTES} bytes of a point of large order")]
    BadPublicKey,
    #[error("sealed shares failed authentication (tampered, misaddressed or from another round)")]
    Unauthentic,
}

/// A fresh X25519 secret from the driver's CSPRNG (the crate never reaches for OS entropy).
pub fn new_secret(rng: &mut impl CryptoRng) -> StaticSecret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(bytes.as_mut());
    StaticSecret::from(*bytes)
}

pub fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, CryptoError> {
    let bytes: [u8; PUBLIC_KEY_BYTES] = bytes.try_into().map_err(|_| CryptoError::BadPublicKey)?;
    let key = PublicKey::from(bytes);
    // A low-order point makes every agreement with it the all-zero secret, known to anyone;
    // agreeing with any fixed scalar shows it (clamped scalars kill the small-order part).
    if !StaticSecret::from([9u8; 32]).diffie_hellman(&key).was_contributory() {
        return Err(CryptoError::BadPublicKey);
    }
    Ok(key)
}

/// HKDF-SHA256 of X25519(`secret`, `peer`), bound to the purpose, the round and the two ids.
pub fn agree(
    secret: &StaticSecret,
    peer: &PublicKey,
    purpose: Purpose,
    round: u64,
    a: u32,
    b: u32,
) -> Zeroizing<[u8; 32]> {
    let shared = secret.diffie_hellman(peer);
    let (label, a, b): (&[u8], u32, u32) = match purpose {
        Purpose::ShareSealing => (b"webfl secagg+ share sealing", a, b),
        Purpose::PairwiseMask => (b"webfl secagg+ pairwise mask", a.min(b), a.max(b)),
    };
    let mut info = Vec::with_capacity(label.len() + 16);
    info.extend_from_slice(label);
    info.extend_from_slice(&round.to_le_bytes());
    info.extend_from_slice(&a.to_le_bytes());
    info.extend_from_slice(&b.to_le_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(None, shared.as_bytes())
        .expand(&info, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// The associated data every sealed message is authenticated with: who sent it to whom, when.
fn binding(round: u64, sender: u32, recipient: u32) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(&round.to_le_bytes());
    aad[8..12].copy_from_slice(&sender.to_le_bytes());
    aad[12..].copy_from_slice(&recipient.to_le_bytes());
    aad
}

/// Nonce ‖ ChaCha20-Poly1305(`plaintext`), authenticated with the round and both ids. The key is
/// already directional and per round; the random nonce keeps a re-sent message safe too.
pub fn seal(
    key: &[u8; 32],
    round: u64,
    sender: u32,
    recipient: u32,
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let aad = binding(round, sender, recipient);
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(&(*key).into());
    let sealed = cipher
        .encrypt(&nonce.into(), Payload { msg: plaintext, aad: &aad })
        .expect("ChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
    let mut out = Vec::with_capacity(sealed_len(plaintext.len()));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

pub fn open(
    key: &[u8; 32],
    round: u64,
    sender: u32,
    recipient: u32,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (nonce, body) = sealed.split_at_checked(NONCE_BYTES).ok_or(CryptoError::Unauthentic)?;
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| CryptoError::Unauthentic)?;
    let aad = binding(round, sender, recipient);
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt(&nonce.into(), Payload { msg: body, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Unauthentic)
}

/// Adds (or subtracts) the mask `seed` expands to — the ChaCha20 keystream read as little-endian
/// u32 words — to `acc`, wrapping. All ring arithmetic is done mod 2^32 and reduced to 2^m only
/// at the end: 2^m divides 2^32, so the result is the same and the hot loop needs no masking.
pub fn apply_mask(acc: &mut [u32], seed: &[u8; 32], add: bool) {
    const WORDS: usize = 1024;
    let mut stream = chacha20::ChaCha20::new(&(*seed).into(), &[0u8; 12].into());
    let mut block = [0u8; 4 * WORDS];
    for chunk in acc.chunks_mut(WORDS) {
        let bytes = &mut block[..4 * chunk.len()];
        stream.write_keystream(bytes);
        let words = bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        if add {
            chunk.iter_mut().zip(words).for_each(|(a, w)| *a = a.wrapping_add(w));
        } else {
            chunk.iter_mut().zip(words).for_each(|(a, w)| *a = a.wrapping_sub(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn both_ends_agree_on_keys_and_tampering_is_detected() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (alice, bob) = (new_secret(&mut rng), new_secret(&mut rng));
        let (alice_pub, bob_pub) = (PublicKey::from(&alice), PublicKey::from(&bob));
        let mask = |s, p, a, b| agree(s, p, Purpose::PairwiseMask, 1, a, b);
        assert_eq!(*mask(&alice, &bob_pub, 4, 9), *mask(&bob, &alice_pub, 9, 4), "pairwise seeds are symmetric");
        let there = agree(&alice, &bob_pub, Purpose::ShareSealing, 1, 4, 9);
        let back = agree(&bob, &alice_pub, Purpose::ShareSealing, 1, 9, 4);
        assert_ne!(*there, *back, "each direction has its own sealing key");
        assert_ne!(*there, *mask(&alice, &bob_pub, 4, 9));

        let sealed = seal(&there, 1, 4, 9, b"shares", &mut rng);
        assert_eq!(sealed.len(), sealed_len(6));
        assert_eq!(open(&there, 1, 4, 9, &sealed).unwrap().as_slice(), b"shares");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(open(&there, 1, 4, 9, &tampered), Err(CryptoError::Unauthentic), "byte {i}");
        }
        assert_eq!(open(&there, 1, 5, 9, &sealed), Err(CryptoError::Unauthentic), "another sender");
        assert_eq!(open(&there, 2, 4, 9, &sealed), Err(CryptoError::Unauthentic), "another round");
        assert_eq!(open(&there, 1, 4, 9, &sealed[..10]), Err(CryptoError::Unauthentic));
    }

    #[test]
    fn low_order_and_short_public_keys_are_refused() {
        assert_eq!(parse_public_key(&[0u8; 32]), Err(CryptoError::BadPublicKey));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(parse_public_key(&one), Err(CryptoError::BadPublicKey));
        assert_eq!(parse_public_key(&[9u8; 31]), Err(CryptoError::BadPublicKey));
        let mut basepoint = [0u8; 32];
        basepoint[0] = 9;
        assert!(parse_public_key(&basepoint).is_ok());
    }

    #[test]
    fn a_mask_added_then_subtracted_leaves_nothing() {
        let mut acc = vec![7u32; 3000];
        apply_mask(&mut acc, &[1; 32], true);
        assert!(acc.iter().filter(|&&v| v == 7).count() < 5);
        apply_mask(&mut acc, &[1; 32], false);
        assert!(acc.iter().all(|&v| v == 7));
        // The mask is the plain ChaCha20 keystream: RFC 8439 A.1 test vector 1 (zero key, zero
        // nonce, counter 0) begins 76 b8 e0 ad a0 f1 3d 90.
        let mut zero = [0u32; 2];
        apply_mask(&mut zero, &[0; 32], true);
        assert_eq!(zero, [u32::from_le_bytes([0x76, 0xb8, 0xe0, 0xad]), u32::from_le_bytes([0xa0, 0xf1, 0x3d, 0x90])]);
    }
}
