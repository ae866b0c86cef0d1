//! An Ethereum signing key: the account with which `program create --key` and `store add
//! --key` sign their messages, and with which the guest API's `/sign` signs programs' messages
//! (`--signing-key`, as aleph-vm's VM connector does with the node's `ethereum.key`) — the
//! Aleph SDK's `ETHAccount`.
//!
//! - the key file holds the 32 bytes of the private key (as the SDK writes `ethereum.key`), or
//!   the same as hex text (64 hex digits, `0x` optional, whitespace around);
//! - the address is the last 20 bytes of the Keccak-256 of the uncompressed public key, written
//!   with EIP-55's mixed-case checksum;
//! - a message is signed as the SDK's `BaseAccount.sign_message`: its `sender` set to the
//!   node's address when it has none (and refused when it names another), then Aleph's
//!   verification buffer `"{chain}\n{sender}\n{type}\n{item_hash}"` signed with EIP-191's
//!   `personal_sign` (Keccak-256 of `"\x19Ethereum Signed Message:\n" + length + buffer`), the
//!   signature being `0x` and the hex of r ‖ s ‖ v, v = 27 or 28.
//!
//! The elliptic-curve work is k256's (RFC 6979 nonces, low-s signatures: byte for byte what
//! eth-account gives); Keccak-256 is sha3's.

use std::path::Path;

use k256::ecdsa::{SigningKey, VerifyingKey};
use serde_json::{Map, Value, json};
use sha3::{Digest as _, Keccak256};
use zeroize::Zeroizing;

/// The chain of the node's account, as the SDK's `ETHAccount.CHAIN`.
pub const CHAIN: &str = "ETH";

/// Its curve, as the SDK's `ETHAccount.CURVE`.
pub const CURVE: &str = "secp256k1";

/// EIP-191's prefix of a signed text (`personal_sign`), before the text's length in bytes.
const EIP191_PREFIX: &[u8] = b"\x19Ethereum Signed Message:\n";

/// The node's signing account. Its `Debug` shows the address, never the key.
pub struct Signer {
    key: SigningKey,
    /// The EIP-55 checksummed `0x` address.
    address: String,
    /// `0x` and the hex of the compressed SEC1 public key (33 bytes), as the SDK's
    /// `get_public_key` (coincurve's `format()`).
    public_key: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The account of the 32-byte private key `secret`; an error when it is not a valid
    /// secp256k1 key (zero, or not below the curve's order).
    pub fn from_secret(secret: &[u8; 32]) -> Result<Self, String> {
        let key = SigningKey::from_slice(secret).map_err(|_| {
            "not a valid secp256k1 private key (zero, or not below the curve's order)".to_string()
        })?;
        let verifying = key.verifying_key();
        let address = address_of(verifying);
        let public_key = format!(
            "0x{}",
            hex::encode(verifying.to_encoded_point(true).as_bytes())
        );
        Ok(Signer {
            key,
            address,
            public_key,
        })
    }

    /// The account of a key file's contents: the raw 32 bytes, or hex text (64 hex digits,
    /// `0x` optional, whitespace around). The error says what is wrong, never what the file
    /// holds.
    pub fn parse(contents: &[u8]) -> Result<Self, String> {
        Self::from_secret(&*parse_secret(contents)?)
    }

    /// The account of the key file at `path`; the error names the file and what is wrong
    /// (never what the file holds).
    pub fn load(path: &Path) -> Result<Self, String> {
        let contents = std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
        Self::parse(&contents).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The EIP-55 checksummed `0x` address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `0x` and the hex of the compressed public key.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The verifying key (tests recover signatures to it).
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    /// What `GET /properties` answers, as aleph-vm's VM connector: `{"chain", "curve",
    /// "address", "public_key"}`.
    pub fn properties(&self) -> Value {
        json!({
            "chain": CHAIN,
            "curve": CURVE,
            "address": self.address,
            "public_key": self.public_key,
        })
    }

    /// EIP-191 `personal_sign` of `text`: r ‖ s ‖ v, v = 27 or 28.
    pub fn sign_text(&self, text: &[u8]) -> Result<[u8; 65], String> {
        let digest = eip191_digest(text);
        let (signature, recovery) = self
            .key
            .sign_prehash_recoverable(&digest)
            .map_err(|e| format!("signing failed: {e}"))?;
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&signature.to_bytes());
        out[64] = 27 + recovery.to_byte();
        Ok(out)
    }

    /// [`Signer::sign_text`] as a message's `signature`: `0x` and 130 hex digits.
    pub fn sign_hex(&self, text: &[u8]) -> Result<String, String> {
        Ok(format!("0x{}", hex::encode(self.sign_text(text)?)))
    }

    /// Signs a message this node makes (`program create --key`): its sender must be this
    /// account and its chain an EVM chain; sets its `signature` over the verification buffer.
    pub fn sign(&self, msg: &mut super::Message) -> Result<(), String> {
        if !super::verify::is_evm_chain(&msg.chain) {
            return Err(format!(
                "an Ethereum key signs for the EVM chains, not for chain {}",
                msg.chain
            ));
        }
        if !msg.sender.eq_ignore_ascii_case(&self.address) {
            return Err(format!(
                "the message's sender {} is not the key's address {}",
                msg.sender, self.address
            ));
        }
        let buffer = super::verify::verification_buffer(msg);
        msg.signature = Some(self.sign_hex(buffer.as_bytes())?);
        Ok(())
    }

    /// Signs `message` in place as the SDK's `ETHAccount.sign_message`: sets its `sender` to
    /// the node's address when it has none (absent, null or empty), refuses one that names
    /// another address, and sets `signature` (`0x` and 130 hex digits) over
    /// [`verification_buffer`]. Other fields stay as they are, in their order.
    pub fn sign_message(&self, message: &mut Map<String, Value>) -> Result<(), String> {
        match message.get("sender") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) if *s == self.address => {}
            Some(other) => {
                return Err(format!(
                    "the message's sender {other} is not this node's signing address {}",
                    self.address
                ));
            }
        }
        message.insert("sender".into(), Value::String(self.address.clone()));
        let buffer = verification_buffer(message)?;
        message.insert(
            "signature".into(),
            Value::String(self.sign_hex(buffer.as_bytes())?),
        );
        Ok(())
    }
}

/// Aleph's verification buffer of a message, as the SDK's `get_verification_buffer`:
/// `"{chain}\n{sender}\n{type}\n{item_hash}"`. `chain` and `type` may be null (an empty
/// line); every field must be there.
pub fn verification_buffer(message: &Map<String, Value>) -> Result<String, String> {
    let field = |name: &str, nullable: bool| match message.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(Value::Null) if nullable => Ok(""),
        Some(other) => Err(format!("the message's {name} is not a string: {other}")),
        None => Err(format!("the message has no {name}")),
    };
    Ok(super::verify::buffer_of(
        field("chain", true)?,
        field("sender", false)?,
        field("type", true)?,
        field("item_hash", false)?,
    ))
}

/// EIP-191's digest of a signed text: Keccak-256 of the prefix, the text's length in bytes
/// (decimal) and the text.
pub fn eip191_digest(text: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(EIP191_PREFIX);
    hasher.update(text.len().to_string().as_bytes());
    hasher.update(text);
    hasher.finalize().into()
}

/// The EIP-55 checksummed `0x` address of a public key.
pub fn address_of(key: &VerifyingKey) -> String {
    let point = key.to_encoded_point(false);
    // The uncompressed point is 0x04 ‖ x ‖ y; the address hashes x ‖ y.
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    checksummed(&hash[12..])
}

/// EIP-55: the lowercase hex of a 20-byte address, each letter upper-cased where the matching
/// nibble of the Keccak-256 of that lowercase hex is 8 or more.
fn checksummed(address: &[u8]) -> String {
    let lower = hex::encode(address);
    let hash = Keccak256::digest(lower.as_bytes());
    let mut out = String::with_capacity(2 + lower.len());
    out.push_str("0x");
    for (i, c) in lower.chars().enumerate() {
        let nibble = if i % 2 == 0 {
            hash[i / 2] >> 4
        } else {
            hash[i / 2] & 0x0f
        };
        out.push(if nibble >= 8 {
            c.to_ascii_uppercase()
        } else {
            c
        });
    }
    out
}

/// The 32 secret bytes of a key file's contents (see [`Signer::parse`]).
fn parse_secret(contents: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    const WHAT: &str = "a key file holds the raw 32-byte private key, or it as hex text \
                        (64 hex digits, 0x optional)";
    let mut secret = Zeroizing::new([0u8; 32]);
    // 32 bytes are the raw key, unless they are all printable text (a short hex key, which
    // random key bytes are with a chance of about 1e-13).
    let text_like = |b: &u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
    if contents.len() == 32 && !contents.iter().all(text_like) {
        secret.copy_from_slice(contents);
        return Ok(secret);
    }
    if contents.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("the file is empty: {WHAT}"));
    }
    let Ok(text) = std::str::from_utf8(contents) else {
        return Err(format!(
            "{} bytes that are not text: {WHAT}",
            contents.len()
        ));
    };
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if let Some(at) = digits.chars().position(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{} bytes of text whose character {} (after any 0x) is not a hex digit: {WHAT}",
            contents.len(),
            at + 1
        ));
    }
    if digits.len() != 64 {
        return Err(format!("{} hex digits: {WHAT}", digits.len()));
    }
    hex::decode_to_slice(digits, &mut secret[..]).map_err(|_| format!("not hex text: {WHAT}"))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-known test key (web3.js's documentation) and its address.
    const KEY_HEX: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    const ADDRESS: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";

    fn key_bytes() -> [u8; 32] {
        let mut key = [0u8; 32];
        hex::decode_to_slice(KEY_HEX, &mut key).unwrap();
        key
    }

    #[test]
    fn the_address_and_public_key_are_ethereums() {
        let signer = Signer::from_secret(&key_bytes()).unwrap();
        assert_eq!(signer.address(), ADDRESS);
        // coincurve's compressed public key of this key (what the SDK's get_public_key gives).
        assert_eq!(
            signer.public_key(),
            "0x024e3b81af9c2234cad09d679ce6035ed1392347ce64ce405f5dcd36228a25de6e"
        );
        let debug = format!("{signer:?}");
        assert!(debug.contains(ADDRESS), "{debug}");
        assert!(!debug.to_lowercase().contains(&KEY_HEX[..16]), "{debug}");
    }

    #[test]
    fn eip55_checksums_match_the_eips_examples() {
        for address in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            let bytes = hex::decode(&address[2..]).unwrap();
            assert_eq!(checksummed(&bytes), address);
        }
    }

    #[test]
    fn both_key_file_forms_load() {
        let raw = key_bytes();
        let forms: Vec<Vec<u8>> = vec![
            raw.to_vec(),
            KEY_HEX.into(),
            format!("0x{KEY_HEX}\n").into(),
            format!("  0X{}\r\n", KEY_HEX.to_uppercase()).into(),
            format!("\n{KEY_HEX}  ").into(),
        ];
        for form in forms {
            let signer = Signer::parse(&form).unwrap();
            assert_eq!(signer.address(), ADDRESS);
        }
    }

    #[test]
    fn a_bad_key_file_says_what_is_wrong_and_never_shows_the_key() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "empty"),
            (b" \n".to_vec(), "empty"),
            (KEY_HEX[..62].into(), "62 hex digits"),
            (format!("{KEY_HEX}00").into(), "66 hex digits"),
            (KEY_HEX[..32].into(), "32 hex digits"),
            (format!("0x{}\n", &KEY_HEX[..29]).into(), "29 hex digits"),
            (
                format!("{}zz{}", &KEY_HEX[..10], &KEY_HEX[12..]).into(),
                "character 11",
            ),
            (vec![0xff; 33], "not text"),
            ([0u8; 32].to_vec(), "not a valid secp256k1 private key"),
            ([0xffu8; 32].to_vec(), "not a valid secp256k1 private key"),
            ("0".repeat(64).into(), "not a valid secp256k1 private key"),
        ];
        for (contents, expected) in cases {
            let error = Signer::parse(&contents).unwrap_err();
            assert!(error.contains(expected), "{expected:?}: {error}");
            assert!(!error.contains(&KEY_HEX[..10]), "{error}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ethereum.key");
        std::fs::write(&path, format!("{}\n", &KEY_HEX[..40])).unwrap();
        let error = Signer::load(&path).unwrap_err();
        assert!(
            error.contains(&path.display().to_string()) && error.contains("40 hex digits"),
            "{error}"
        );
        assert!(!error.contains(&KEY_HEX[..10]), "{error}");
        let missing = dir.path().join("missing.key");
        let error = Signer::load(&missing).unwrap_err();
        assert!(
            error.contains(&missing.display().to_string()) && error.contains("cannot read"),
            "{error}"
        );
        std::fs::write(&path, key_bytes()).unwrap();
        assert_eq!(Signer::load(&path).unwrap().address(), ADDRESS);
    }

    #[test]
    fn personal_sign_matches_eth_account() {
        // eth-account 0.14: Account.from_key(KEY).sign_message(encode_defunct(text=buffer)).
        let signer = Signer::from_secret(&key_bytes()).unwrap();
        let buffer = format!(
            "ETH\n{ADDRESS}\nPOST\n\
             e0da72171d186887ac0b91c0249d65cd62416ec189850544f52eeaa84f92e417"
        );
        let signature = signer.sign_text(buffer.as_bytes()).unwrap();
        assert_eq!(
            format!("0x{}", hex::encode(signature)),
            "0x57426b255d8da158d7f578043e776d26edb78bdd111568586e4be231fa76795d\
             085a993a432303196e4dc18d554dc5981ab213e87ccb301e0fd7ce6f738b37f91c"
        );
    }

    #[test]
    fn signing_sets_the_sender_and_refuses_anothers() {
        let signer = Signer::from_secret(&key_bytes()).unwrap();
        let base = json!({"chain": "ETH", "type": "POST", "item_hash": "ab"});
        for sender in [
            None,
            Some(json!(null)),
            Some(json!("")),
            Some(json!(ADDRESS)),
        ] {
            let mut message = base.as_object().unwrap().clone();
            if let Some(sender) = sender {
                message.insert("sender".into(), sender);
            }
            signer.sign_message(&mut message).unwrap();
            assert_eq!(message["sender"], ADDRESS);
            assert!(message["signature"].as_str().unwrap().starts_with("0x"));
        }
        for sender in [json!("0xabc"), json!(ADDRESS.to_lowercase()), json!(1)] {
            let mut message = base.as_object().unwrap().clone();
            message.insert("sender".into(), sender);
            let error = signer.sign_message(&mut message).unwrap_err();
            assert!(error.contains("not this node's signing address"), "{error}");
        }
        // Every field of the buffer is needed; chain and type may be null.
        for missing in ["chain", "type", "item_hash"] {
            let mut message = base.as_object().unwrap().clone();
            message.remove(missing);
            let error = signer.sign_message(&mut message).unwrap_err();
            assert!(error.contains(&format!("no {missing}")), "{error}");
        }
        let mut message = json!({"chain": null, "type": null, "item_hash": "ab"});
        let message = message.as_object_mut().unwrap();
        signer.sign_message(message).unwrap();
        assert_eq!(
            verification_buffer(message).unwrap(),
            format!("\n{ADDRESS}\n\nab")
        );
    }
}
