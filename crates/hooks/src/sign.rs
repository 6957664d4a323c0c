//! The request signature: `X-Switchboard-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of the exact request body with the destination's secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// The event id header (the same id as the body's `id`).
pub const EVENT_ID_HEADER: &str = "x-switchboard-event-id";
/// When this attempt was sent, ms since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "x-switchboard-timestamp";

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<lowercase hex of HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // Not data-dependent: HMAC takes keys of any length (long ones are hashed).
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a signature header in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        let s = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &s));
        assert!(!verify(b"Jeff", b"what do ya want for nothing?", &s));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &s));
        assert!(!verify(b"Jefe", b"x", "sha256=zz"));
        assert!(!verify(b"Jefe", b"x", "md5=00"));
    }
}
