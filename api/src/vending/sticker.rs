//! Cabinet stickers: the QR code on a cabinet carries a link with an HMAC of the cabinet id, so
//! a sticker printed by someone else, or moved from one cabinet to another, is refused instead
//! of opening the wrong door for the shopper.

use super::VendingConfig;
use base64::Engine;
use hmac::{Hmac, Mac};
use latch_domain::device::DeviceId;
use sha2::Sha256;

const CONTEXT: &[u8] = b"latch-cabinet-link:v1:";
/// 128 bits of the MAC: enough that guessing one is hopeless, short enough to scan well.
const SIG_BYTES: usize = 16;
/// Length of a signature as the link carries it (unpadded URL-safe base64 of [`SIG_BYTES`]).
pub const SIG_CHARS: usize = 22;

fn mac(key: &[u8], device: &DeviceId) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(CONTEXT);
    mac.update(device.to_string().as_bytes());
    mac
}

pub fn signature(key: &[u8], device: &DeviceId) -> String {
    let tag = mac(key, device).finalize().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..SIG_BYTES])
}

/// Constant-time check of a link's signature.
pub fn verify(key: &[u8], device: &DeviceId, sig: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    raw.len() == SIG_BYTES && mac(key, device).verify_truncated_left(&raw).is_ok()
}

/// The link a cabinet's sticker encodes.
pub fn link(config: &VendingConfig, device: &DeviceId) -> String {
    format!(
        "{}/m/c/{device}?k={}",
        config.public_url,
        signature(&config.sticker_key, device)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_link_verifies_only_for_its_own_cabinet_and_key() {
        let a = DeviceId::from(Uuid::from_u128(1));
        let b = DeviceId::from(Uuid::from_u128(2));
        let sig = signature(b"key", &a);
        assert!(verify(b"key", &a, &sig));
        assert!(
            !verify(b"key", &b, &sig),
            "a sticker moved to another cabinet"
        );
        assert!(
            !verify(b"other", &a, &sig),
            "a sticker signed with another key"
        );
        assert!(!verify(b"key", &a, &sig[..sig.len() - 1]));
        assert!(!verify(b"key", &a, "not base64!"));
        assert!(!verify(b"key", &a, ""));
        assert_eq!(sig.len(), SIG_CHARS);
    }
}
