//! A timing loop for single and batched ed25519 verification (issue 12, item 6: the cofactored
//! single check must not be slower than `verify_strict` was). Run it in release:
//!
//! ```text
//! cargo run --release -p smr-crypto --example verify_timing
//! ```
//!
//! It prints the best of several runs, in microseconds per verification: single with a cached
//! key, single with a key never seen before (parsed and checked on each call: 8,192 keys cycle
//! through a cache of 4,096), and per item in batches of 64; and, interleaved with them for a
//! fair comparison on a busy machine, dalek's cofactorless `verify_strict` on a parsed key (what
//! `Ed25519Verifier::verify` did before it became cofactored), and the cost of checking a new
//! key against the cost of the check it replaced.

use std::time::Instant;

use smr_crypto::{Ed25519Verifier, IdentityKey, SignedItem, Signer, Verifier};

fn per_call_us(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..calls {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / calls as f64
}

fn main() {
    const KEYS: u32 = 8192;
    const CALLS: usize = 8192;
    let message = b"a request of typical size: client, seq, kind, and a short operation".to_vec();
    let signed: Vec<_> = (0..KEYS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let signer = IdentityKey::from_seed(seed);
            (signer.public_key(), signer.sign(&message))
        })
        .collect();
    let items: Vec<SignedItem<'_>> = signed[..64]
        .iter()
        .map(|(key, signature)| SignedItem {
            key,
            message: &message,
            signature,
        })
        .collect();

    let dalek_keys: Vec<_> = signed[..4]
        .iter()
        .map(|(key, signature)| {
            (
                ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).expect("valid"),
                ed25519_dalek::Signature::from_bytes(signature.as_bytes()),
            )
        })
        .collect();
    let (mut cached, mut cold, mut batched, mut strict) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (mut key_check, mut old_key_check) = (f64::MAX, f64::MAX);
    for _ in 0..7 {
        key_check = key_check.min(per_call_us(CALLS, |i| {
            signed[i % signed.len()].0.check_ed25519().expect("valid");
        }));
        old_key_check = old_key_check.min(per_call_us(CALLS, |i| {
            let key =
                ed25519_dalek::VerifyingKey::from_bytes(signed[i % signed.len()].0.as_bytes());
            assert!(!key.expect("valid").is_weak());
        }));
        strict = strict.min(per_call_us(CALLS, |i| {
            let (key, signature) = &dalek_keys[i % 4];
            key.verify_strict(&message, signature).expect("valid");
        }));
        cached = cached.min(per_call_us(CALLS, |i| {
            let (key, signature) = &signed[i % 4];
            Ed25519Verifier
                .verify(key, &message, signature)
                .expect("valid");
        }));
        cold = cold.min(per_call_us(CALLS, |i| {
            let (key, signature) = &signed[i % signed.len()];
            Ed25519Verifier
                .verify(key, &message, signature)
                .expect("valid");
        }));
        batched = batched.min(
            per_call_us(CALLS / 64, |_| {
                Ed25519Verifier.verify_batch(&items).expect("valid")
            }) / 64.0,
        );
    }
    println!(
        "key check: {key_check:.2} µs (decompress and is_weak alone, the check before: {old_key_check:.2} µs)"
    );
    println!(
        "single, cached key: {cached:.2} µs/verify (dalek verify_strict: {strict:.2}); single, new key: {cold:.2} µs/verify; batch of 64: {batched:.2} µs/item (best of 7)"
    );
}
