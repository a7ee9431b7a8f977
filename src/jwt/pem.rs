//! PEM private keys for `Grip-Sig`: P-256 keys in SEC1 form (`BEGIN EC PRIVATE KEY`, what `openssl ecparam
//! -genkey` writes) are rewrapped as PKCS#8 (`BEGIN PRIVATE KEY`), the only EC form the JWT library reads.

use base64::Engine as _;

/// A SEC1 EC private key that cannot be rewrapped. Never carries the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The text between the PEM markers is not base64.
    #[error("invalid base64 in EC PRIVATE KEY")]
    Base64,
    /// The DER inside is not a P-256 key in SEC1 form.
    #[error("EC PRIVATE KEY is not a P-256 (prime256v1) key in SEC1 form")]
    NotP256,
}

/// `AlgorithmIdentifier { id-ecPublicKey, prime256v1 }`, DER.
const P256_ALGORITHM: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// The prime256v1 OID as it appears inside a SEC1 key's `[0]` parameters.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Returns a PKCS#8 PEM for a SEC1 P-256 PEM key; any other input is returned unchanged.
pub(super) fn normalize_ec_key(pem: &[u8]) -> Result<Vec<u8>, PemError> {
    let Ok(text) = std::str::from_utf8(pem) else {
        return Ok(pem.to_vec());
    };
    let Some(body) = text
        .split("-----BEGIN EC PRIVATE KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END EC PRIVATE KEY-----").next())
    else {
        return Ok(pem.to_vec());
    };
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| PemError::Base64)?;
    let pkcs8 = sec1_to_pkcs8(&der).ok_or(PemError::NotP256)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    Ok(out.into_bytes())
}

/// `ECPrivateKey` (SEC1) to `PrivateKeyInfo` (PKCS#8), dropping the `[0]` curve parameters (the algorithm
/// identifier names the curve), as `openssl pkcs8 -topk8` does.
fn sec1_to_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    let (tag, inner, rest) = tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let mut fields = Vec::new();
    let mut input = inner;
    while !input.is_empty() {
        let (tag, value, rest) = tlv(input)?;
        let whole = &input[..input.len() - rest.len()];
        if tag == 0xa0 {
            if value != P256_OID {
                return None;
            }
        } else {
            fields.extend_from_slice(whole);
        }
        input = rest;
    }
    let ec_private_key = wrap(0x30, &fields);
    let mut info = vec![0x02, 0x01, 0x00];
    info.extend_from_slice(P256_ALGORITHM);
    info.extend_from_slice(&wrap(0x04, &ec_private_key));
    Some(wrap(0x30, &info))
}

/// Splits one DER element: (tag, value, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => (usize::from(*rest.first()?), &rest[1..]),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn wrap(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway P-256 key made with `openssl ecparam -name prime256v1 -genkey -noout`, and the same key after
    // `openssl pkcs8 -topk8 -nocrypt`.
    const SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIAQX+cjVGauUCFmIpJbHuVoTw7EbhswxyDcPPu/0iBDuoAoGCCqGSM49
AwEHoUQDQgAEDj1dovc/ISK9Lq6qE84Z/Y8KCgmNBaInbd7Z1vc6FSZGdf41yl01
YZ8NpszLRLTQRKC8DqL74eS2awUqQj677w==
-----END EC PRIVATE KEY-----
";

    const PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBBf5yNUZq5QIWYik
lse5WhPDsRuGzDHINw8+7/SIEO6hRANCAAQOPV2i9z8hIr0urqoTzhn9jwoKCY0F
oidt3tnW9zoVJkZ1/jXKXTVhnw2mzMtEtNBEoLwOovvh5LZrBSpCPrvv
-----END PRIVATE KEY-----
";

    #[test]
    fn sec1_becomes_the_same_pkcs8_as_openssl_writes() {
        let out = String::from_utf8(normalize_ec_key(SEC1.as_bytes()).unwrap()).unwrap();
        assert_eq!(out, PKCS8);
        let signer =
            crate::grip::sig::Signer::new("iss", jsonwebtoken::Algorithm::ES256, out.as_bytes());
        assert!(signer.is_ok(), "{:?}", signer.err());
    }

    #[test]
    fn other_input_is_unchanged() {
        assert_eq!(normalize_ec_key(b"secret").unwrap(), b"secret");
        assert_eq!(
            normalize_ec_key(b"-----BEGIN EC PRIVATE KEY-----\n!!\n-----END EC PRIVATE KEY-----"),
            Err(PemError::Base64)
        );
        assert_eq!(
            normalize_ec_key(b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----"),
            Err(PemError::NotP256)
        );
    }
}
