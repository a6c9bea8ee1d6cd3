//! Shamir secret sharing of 32-byte secrets over GF(p), p = 2^61 − 1 (a Mersenne prime, so
//! reduction is a shift and an add).
//!
//! A secret is cut into five limbs of at most 7 bytes (each < 2^56 < p) and every limb is shared
//! with its own random polynomial of degree t − 1; a share is the holder's x coordinate and the
//! five polynomial values there. x is the holder's client id + 1, so shares from distinct holders
//! never collide and x = 0 (where the secret lives) is never handed out.

use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The field modulus, 2^61 − 1.
const P: u64 = (1 << 61) - 1;
const LIMBS: usize = 5;
const LIMB_BYTES: usize = 7;
/// Encoded share: x then the five limb values, each u64 little-endian.
pub const SHARE_BYTES: usize = 8 * (1 + LIMBS);

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShamirError {
    #[error("{have} shares cannot rebuild a secret that needs {need}")]
    TooFewShares { have: usize, need: usize },
    #[error("two shares have the same holder (x = {0})")]
    DuplicateHolder(u64),
    #[error("a share is not {SHARE_BYTES} bytes of field elements with x ≠ 0")]
    Malformed,
    #[error("the shares do not belong to one secret")]
    Inconsistent,
}

/// One holder's share of one secret.
#[derive(Clone, Debug, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    pub x: u64,
    y: [u64; LIMBS],
}

impl Share {
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; SHARE_BYTES]> {
        let mut out = zeroize::Zeroizing::new([0u8; SHARE_BYTES]);
        for (chunk, value) in out.chunks_exact_mut(8).zip(std::iter::once(&self.x).chain(&self.y)) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Refuses anything that is not a share this module could have made: wrong length, x = 0,
    /// or a value outside the field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Share, ShamirError> {
        if bytes.len() != SHARE_BYTES {
            return Err(ShamirError::Malformed);
        }
        let mut words =
            bytes.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        let x = words.next().unwrap_or(0);
        let mut share = Share { x, y: [0; LIMBS] };
        for (slot, word) in share.y.iter_mut().zip(words) {
            *slot = word;
        }
        if x == 0 || x >= P || share.y.iter().any(|&v| v >= P) {
            return Err(ShamirError::Malformed);
        }
        Ok(share)
    }
}

/// Shares of `secret` for the holders at `xs` (distinct, non-zero), any `threshold` of which
/// rebuild it and fewer of which reveal nothing.
pub fn split(secret: &[u8; 32], threshold: usize, xs: &[u64], rng: &mut impl RngCore) -> Vec<Share> {
    debug_assert!(threshold >= 1 && xs.iter().all(|&x| x != 0 && x < P));
    let mut shares: Vec<Share> = xs.iter().map(|&x| Share { x, y: [0; LIMBS] }).collect();
    let mut limbs = to_limbs(secret);
    // Coefficient 0 is the secret limb; the rest are uniform field elements, secret as well.
    let mut coefficients = vec![0u64; threshold];
    for (limb, &secret_limb) in limbs.iter().enumerate() {
        coefficients[0] = secret_limb;
        for c in &mut coefficients[1..] {
            *c = random_element(rng);
        }
        for share in &mut shares {
            share.y[limb] = eval(&coefficients, share.x);
        }
    }
    coefficients.zeroize();
    limbs.zeroize();
    shares
}

/// The secret that `threshold` of `shares` (the first ones; more are ignored) interpolate to at 0.
pub fn combine(shares: &[Share], threshold: usize) -> Result<zeroize::Zeroizing<[u8; 32]>, ShamirError> {
    if shares.len() < threshold || threshold == 0 {
        return Err(ShamirError::TooFewShares { have: shares.len(), need: threshold.max(1) });
    }
    let used = &shares[..threshold];
    let xs: Vec<u64> = used.iter().map(|s| s.x).collect();
    let weights = lagrange_at_zero(&xs)?;
    let mut limbs = [0u64; LIMBS];
    for (limb, slot) in limbs.iter_mut().enumerate() {
        *slot = used.iter().zip(&weights).fold(0, |acc, (s, &w)| add(acc, mul(s.y[limb], w)));
    }
    let secret = from_limbs(&limbs);
    limbs.zeroize();
    secret.ok_or(ShamirError::Inconsistent)
}

fn to_limbs(secret: &[u8; 32]) -> [u64; LIMBS] {
    let mut limbs = [0u64; LIMBS];
    for (limb, chunk) in limbs.iter_mut().zip(secret.chunks(LIMB_BYTES)) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        *limb = u64::from_le_bytes(bytes);
        bytes.zeroize();
    }
    limbs
}

/// None when a limb does not fit its bytes: shares of different secrets (or tampered ones)
/// interpolate to arbitrary field elements, and this is the one place that can notice.
fn from_limbs(limbs: &[u64; LIMBS]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    for (chunk, &limb) in secret.chunks_mut(LIMB_BYTES).zip(limbs) {
        if limb >> (8 * chunk.len()) != 0 {
            return None;
        }
        chunk.copy_from_slice(&limb.to_le_bytes()[..chunk.len()]);
    }
    Some(secret)
}

/// λ_i = Π_{j≠i} x_j / (x_j − x_i): the weights that interpolate f(0) from f(x_i).
fn lagrange_at_zero(xs: &[u64]) -> Result<Vec<u64>, ShamirError> {
    let mut weights = Vec::with_capacity(xs.len());
    for (i, &xi) in xs.iter().enumerate() {
        let (mut num, mut den) = (1, 1);
        for (j, &xj) in xs.iter().enumerate() {
            if i != j {
                if xj == xi {
                    return Err(ShamirError::DuplicateHolder(xi));
                }
                num = mul(num, xj);
                den = mul(den, sub(xj, xi));
            }
        }
        weights.push(mul(num, inverse(den)));
    }
    Ok(weights)
}

/// Horner's rule: coefficients[0] + coefficients[1]·x + …
fn eval(coefficients: &[u64], x: u64) -> u64 {
    coefficients.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c))
}

fn random_element(rng: &mut impl RngCore) -> u64 {
    // 61 random bits are uniform on [0, 2^61); rejecting the single value P leaves [0, P).
    loop {
        let v = rng.next_u64() >> 3;
        if v < P {
            return v;
        }
    }
}

fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

fn mul(a: u64, b: u64) -> u64 {
    // 2^61 ≡ 1 (mod P): fold the high bits onto the low ones, twice, then one subtraction.
    let w = a as u128 * b as u128;
    let s = (w as u64 & P) + (w >> 61) as u64;
    add(s & P, s >> 61)
}

fn inverse(a: u64) -> u64 {
    // Fermat: a^(P−2) = a^(−1) for a ≠ 0.
    let (mut base, mut exp, mut acc) = (a, P - 2, 1);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn limb_share(x: u64, y0: u64) -> Share {
        Share { x, y: [y0, 0, 0, 0, 0] }
    }

    #[test]
    fn field_arithmetic_wraps_at_the_mersenne_prime() {
        assert_eq!(mul(1 << 60, 2), 1, "2^61 ≡ 1");
        assert_eq!(mul(P - 1, P - 1), 1, "(−1)² = 1");
        assert_eq!(inverse(2), 1 << 60);
        assert_eq!(sub(3, 5), P - 2);
        assert_eq!(add(P - 1, 2), 1);
    }

    #[test]
    fn shares_match_the_hand_computed_polynomial() {
        // f(x) = 1234 + 166x + 94x² (the textbook example): f(1..=6) by hand.
        let f = [1234, 166, 94];
        let want = [1494, 1942, 2578, 3402, 4414, 5614];
        for (x, want) in (1..=6).zip(want) {
            assert_eq!(eval(&f, x), want);
        }
        // Any three points give back 1234 in limb 0; two are not enough.
        let points: Vec<Share> = (1..=6).zip(want).map(|(x, y)| limb_share(x, y)).collect();
        for picked in [[0, 1, 2], [5, 3, 1], [2, 4, 5]] {
            let shares: Vec<Share> = picked.iter().map(|&i| points[i].clone()).collect();
            let secret = combine(&shares, 3).unwrap();
            assert_eq!(u16::from_le_bytes([secret[0], secret[1]]), 1234);
            assert!(secret[2..].iter().all(|&b| b == 0));
        }
        assert_eq!(combine(&points[..2], 3), Err(ShamirError::TooFewShares { have: 2, need: 3 }));
        // f(x) = 5 − x wraps below zero in the field: f(1) = 4, f(7) = P − 2; still gives 5.
        assert_eq!(eval(&[5, P - 1], 7), P - 2);
        assert_eq!(combine(&[limb_share(7, P - 2), limb_share(1, 4)], 2).unwrap()[0], 5);
    }

    #[test]
    fn any_threshold_of_the_shares_rebuilds_the_secret() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let xs = [3, 1, 9, 4, 12, 2, 8];
        let shares = split(&secret, 4, &xs, &mut rng);
        let shares: Vec<Share> = shares.iter().map(|s| Share::from_bytes(&*s.to_bytes()).unwrap()).collect();
        let mut subsets = 0;
        for mask in 0u32..(1 << xs.len()) {
            let subset: Vec<Share> =
                (0..xs.len()).filter(|i| mask & (1 << i) != 0).map(|i| shares[i].clone()).collect();
            match subset.len() {
                4 => {
                    assert_eq!(*combine(&subset, 4).unwrap(), secret);
                    subsets += 1;
                }
                n if n < 4 => assert!(combine(&subset, 4).is_err()),
                _ => {}
            }
        }
        assert_eq!(subsets, 35, "C(7, 4)");
    }

    #[test]
    fn malformed_or_mixed_shares_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let shares = split(&[0xff; 32], 2, &[1, 2], &mut rng);
        let other = split(&[0x00; 32], 2, &[1, 3], &mut rng);
        assert_eq!(combine(&[shares[0].clone(), other[0].clone()], 2), Err(ShamirError::DuplicateHolder(1)));
        // Mixing two secrets gives limbs that overflow their bytes (with overwhelming odds).
        assert_eq!(combine(&[shares[1].clone(), other[1].clone()], 2), Err(ShamirError::Inconsistent));
        let mut bytes = *shares[0].to_bytes();
        assert_eq!(Share::from_bytes(&bytes[1..]), Err(ShamirError::Malformed));
        bytes[..8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(Share::from_bytes(&bytes), Err(ShamirError::Malformed));
        bytes[..8].copy_from_slice(&1u64.to_le_bytes());
        bytes[8..16].copy_from_slice(&P.to_le_bytes());
        assert_eq!(Share::from_bytes(&bytes), Err(ShamirError::Malformed));
    }
}
