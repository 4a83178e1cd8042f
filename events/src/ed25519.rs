//! ed25519 signature verification with RFC 8032's cofactored equation, one at a time and in
//! batches, with the same answer either way.
//!
//! RFC 8032 §5.1.7 checks `[8][S]B = [8]R + [8][k]A` and allows the cofactorless
//! `[S]B = R + [k]A` instead. The two differ only for signatures whose R (or A) carries a
//! small-order component, which no honest signer produces. Cofactorless *batch* verification,
//! though, accepts such a signature or not depending on the random weights, so the same event
//! could be accepted in one batch and refused in another, or by an audit that cuts the log into
//! different batches. With the cofactor the small-order part vanishes from every equation:
//! batch and single verification agree on every input, so acceptance depends on the event
//! alone.
//!
//! Both functions also require a canonical S (S < L) and an R that decodes to a curve point.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};

/// Derivation context of the batch weights (a hash of the whole batch, Fiat–Shamir style).
const WEIGHTS_CONTEXT: &str = "fabric 2026-11 ed25519 batch weights v1";

/// One signature to check.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// The signer's key (decompressed once and cached by callers).
    pub key: &'a VerifyingKey,
    /// The signed message.
    pub message: &'a [u8],
    /// R ‖ S.
    pub signature: &'a [u8; 64],
}

struct Parsed {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
    a: EdwardsPoint,
}

fn parse(item: &Item<'_>) -> Option<Parsed> {
    let (r_bytes, s_bytes) = item.signature.split_at(32);
    let r_bytes: [u8; 32] = r_bytes.try_into().ok()?;
    let s_bytes: [u8; 32] = s_bytes.try_into().ok()?;
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let mut hasher = Sha512::new();
    hasher.update(r_bytes);
    hasher.update(item.key.as_bytes());
    hasher.update(item.message);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    Some(Parsed {
        r,
        s,
        k,
        a: item.key.to_edwards(),
    })
}

/// Checks one signature: `[8]([S]B - R - [k]A)` is the identity.
pub fn verify(item: &Item<'_>) -> bool {
    let Some(p) = parse(item) else {
        return false;
    };
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.k, &(-p.a), &p.s);
    (sb_minus_ka - p.r).mul_by_cofactor().is_identity()
}

/// Checks many signatures at once: true exactly when [`verify`] is true for every item
/// (except with probability below 2^-128 for a batch with a bad signature).
///
/// Each item's equation is weighted by a 128-bit scalar derived from a hash of the whole
/// batch, the weighted sum is computed as one multiscalar multiplication, multiplied by the
/// cofactor, and compared with the identity.
pub fn verify_batch(items: &[Item<'_>]) -> bool {
    let Some(parsed) = items.iter().map(parse).collect::<Option<Vec<Parsed>>>() else {
        return false;
    };
    if parsed.is_empty() {
        return true;
    }
    let mut transcript = blake3::Hasher::new_derive_key(WEIGHTS_CONTEXT);
    for (item, p) in items.iter().zip(&parsed) {
        // k binds R, A and the message; the signature adds S.
        transcript.update(p.k.as_bytes());
        transcript.update(item.signature);
    }
    let mut weights_stream = transcript.finalize_xof();
    let weights: Vec<Scalar> = parsed
        .iter()
        .map(|_| {
            let mut weight = [0u8; 16];
            weights_stream.fill(&mut weight);
            Scalar::from(u128::from_le_bytes(weight))
        })
        .collect();
    // Σ z(S·B − R − k·A) = (Σ z·S)·B − Σ z·R − Σ (z·k)·A
    let basepoint_scalar: Scalar = parsed.iter().zip(&weights).map(|(p, z)| z * p.s).sum();
    let scalars = std::iter::once(basepoint_scalar)
        .chain(weights.iter().map(|z| -z))
        .chain(parsed.iter().zip(&weights).map(|(p, z)| -(z * p.k)));
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(parsed.iter().map(|p| p.r))
        .chain(parsed.iter().map(|p| p.a));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}
