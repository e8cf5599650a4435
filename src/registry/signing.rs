//! Signed artifacts: an ed25519 signature (RFC 8032) by a named signer over one version's
//! identity and content. The signed message is the UTF-8 text
//!
//! ```text
//! arbiter-model-signature-v1
//! <registry_id>
//! <artifact sha256, lowercase hex>
//! <policy sha256, lowercase hex, or empty when there is no policy>
//! ```
//!
//! (lines joined by `\n`, no final newline), so any client can sign and any loader verify with the
//! checksums the metadata reports. Trusted signers come from `--trusted-signers` (TOML:
//! `[[signer]]` with `name` and `public_key`, the hex of the 32-byte key). A signature by an
//! unknown signer or that does not verify is refused at registration; with
//! `--require-signed-production` an unsigned version cannot become PRODUCTION, and a signed one only
//! while its signer is still trusted.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::types::{RegistryId, Sha256Digest};

/// The first line of every signed message.
pub const SIGNATURE_CONTEXT: &str = "arbiter-model-signature-v1";

/// A version's signature, as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSignature {
    /// Who signed (a name of the trusted-signers file).
    pub signer: String,
    /// The 64-byte ed25519 signature, as lowercase hex.
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

/// The message a version's signature covers.
pub fn signed_message(
    id: &RegistryId,
    artifact: &Sha256Digest,
    policy: Option<&Sha256Digest>,
) -> String {
    let policy = policy.map(|p| p.to_string()).unwrap_or_default();
    format!("{SIGNATURE_CONTEXT}\n{id}\n{artifact}\n{policy}")
}

/// Signs `message` with the key whose 32-byte seed is `seed` (the command line's `--sign-key`).
pub fn sign(seed: &[u8; 32], message: &str) -> [u8; 64] {
    SigningKey::from_bytes(seed)
        .sign(message.as_bytes())
        .to_bytes()
}

/// The public key (hex) of the key whose seed is `seed`.
pub fn public_key_hex(seed: &[u8; 32]) -> String {
    hex::encode(SigningKey::from_bytes(seed).verifying_key().to_bytes())
}

/// Why a signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    /// The signer is not in the trusted-signers file.
    #[error("signer {0:?} is not trusted")]
    UnknownSigner(String),
    /// Not 64 bytes.
    #[error("a signature has 64 bytes, not {0}")]
    Malformed(usize),
    /// The signature does not verify under the signer's key.
    #[error("the signature of {0:?} does not verify")]
    Invalid(String),
}

/// The keys signatures are checked against.
#[derive(Debug, Default, Clone)]
pub struct TrustedSigners {
    keys: BTreeMap<String, VerifyingKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerEntry {
    name: String,
    public_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignersFile {
    #[serde(default)]
    signer: Vec<SignerEntry>,
}

impl TrustedSigners {
    /// Parses a trusted-signers file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: SignersFile =
            toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut keys = BTreeMap::new();
        for entry in file.signer {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&entry.public_key, &mut bytes).map_err(|_| {
                format!(
                    "signer {:?}: public_key must be 64 hexadecimal digits (an ed25519 key)",
                    entry.name
                )
            })?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| format!("signer {:?}: not an ed25519 key: {e}", entry.name))?;
            // A small-order key verifies signatures anyone can forge for some messages.
            if key.is_weak() {
                return Err(format!(
                    "signer {:?}: a weak (small-order) ed25519 key",
                    entry.name
                ));
            }
            if entry.name.is_empty() || keys.insert(entry.name.clone(), key).is_some() {
                return Err(format!(
                    "signer {:?} is unnamed or listed twice",
                    entry.name
                ));
            }
        }
        Ok(Self { keys })
    }

    /// Reads a trusted-signers file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks `signature` over `message`.
    pub fn verify(
        &self,
        signature: &ArtifactSignature,
        message: &str,
    ) -> Result<(), SignatureProblem> {
        let key = self
            .keys
            .get(&signature.signer)
            .ok_or_else(|| SignatureProblem::UnknownSigner(signature.signer.clone()))?;
        let bytes: [u8; 64] = signature
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignatureProblem::Malformed(signature.signature.len()))?;
        // Strict verification (RFC 8032 §5.1.7 with canonical encodings and no small-order
        // points), so that one signature verifies under one reading only.
        key.verify_strict(message.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureProblem::Invalid(signature.signer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_keys_are_refused() {
        // The identity point: every signature with R = identity and s = 0 verifies under it
        // with the lax rules.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let text = format!(
            "[[signer]]\nname = \"weak\"\npublic_key = \"{}\"\n",
            hex::encode(identity)
        );
        let err = TrustedSigners::parse(&text).expect_err("weak key");
        assert!(err.contains("weak"), "{err}");
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_signer() {
        let seed = [7u8; 32];
        let signers = TrustedSigners::parse(&format!(
            "[[signer]]\nname = \"release\"\npublic_key = \"{}\"\n",
            public_key_hex(&seed)
        ))
        .expect("valid");
        let id = RegistryId::parse("registry_id", "m:1.0.0").expect("id");
        let artifact = Sha256Digest::of(b"weights");
        let message = signed_message(&id, &artifact, None);
        assert_eq!(
            message,
            format!("arbiter-model-signature-v1\nm:1.0.0\n{artifact}\n")
        );
        let signed = ArtifactSignature {
            signer: "release".into(),
            signature: sign(&seed, &message).to_vec(),
        };
        assert_eq!(signers.verify(&signed, &message), Ok(()));
        let other = signed_message(&id, &Sha256Digest::of(b"other"), None);
        assert!(matches!(
            signers.verify(&signed, &other),
            Err(SignatureProblem::Invalid(_))
        ));
        let stranger = ArtifactSignature {
            signer: "mallory".into(),
            ..signed.clone()
        };
        assert!(matches!(
            signers.verify(&stranger, &message),
            Err(SignatureProblem::UnknownSigner(_))
        ));
        assert!(TrustedSigners::parse("[[signer]]\nname = \"x\"\npublic_key = \"00\"").is_err());
    }
}
