//! Who a message is from: its signature checked against its `sender`, and the rule that a
//! message speaks only for its signer.
//!
//! - The signed text is Aleph's verification buffer `"{chain}\n{sender}\n{type}\n{item_hash}"`
//!   ([`verification_buffer`]); the item hash binds the content (checked by [`super::parse()`]
//!   for inline messages, by the store for the objects a `STORE` message names).
//! - EVM chains ([`EVM_CHAINS`]): EIP-191 `personal_sign`, 65 bytes r ‖ s ‖ v as hex (`0x`
//!   optional; v 27/28 or 0/1). The public key is recovered (secp256k1; a high s counts as its
//!   low twin, as `ecrecover` takes it) and its address compared with the sender,
//!   case-insensitively (senders come checksummed or not).
//! - SOL: the JSON text `{"signature": <base58, 64 bytes>, "publicKey": <base58, 32 bytes>}`;
//!   `publicKey` must be the sender; ed25519, strict verification, over the buffer.
//! - Any other chain is refused: "chain X: signatures not supported".
//! - `content.address` must be the sender ([`SignatureError::NotTheOwner`]), unless the owner
//!   delegated to the sender through its `security` aggregate: the store checks that
//!   ([`super::delegation`]), since it holds the aggregates.
//!
//! A message without a signature is [`Authenticity::Unsigned`]: whether to take it is the
//! store's decision ([`crate::store::UnsignedMessages`]).

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde_json::Value;

use super::signer::{address_of, eip191_digest};
use super::{Content, Message};

/// The chains whose accounts are Ethereum accounts (`0x` and 40 hex digits), as the network
/// names them.
pub const EVM_CHAINS: &[&str] = &[
    "ARB", "AVAX", "BASE", "BLAST", "BOB", "BSC", "CYBER", "ETH", "FRAX", "INK", "LINEA", "LISK",
    "METIS", "MODE", "OP", "POL", "SONIC", "WLD", "ZORA",
];

/// Solana's chain name.
pub const SOL_CHAIN: &str = "SOL";

/// What a message's signature establishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    /// The signature verifies for the sender; `scheme` names how (`"EIP-191"`, `"ed25519"`).
    Signed {
        /// The signature scheme.
        scheme: &'static str,
    },
    /// No signature: the sender is a claim nobody checked.
    Unsigned,
}

impl Authenticity {
    /// One line for people: `signed (EIP-191)` or `unsigned`.
    pub fn describe(&self) -> String {
        match self {
            Authenticity::Signed { scheme } => format!("signed ({scheme})"),
            Authenticity::Unsigned => "unsigned".into(),
        }
    }
}

/// Why a message is not from whom it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A chain whose signatures this node cannot check.
    #[error("chain {0}: signatures not supported (this node verifies the EVM chains and SOL)")]
    UnsupportedChain(String),
    /// The sender is not an account of the chain.
    #[error("chain {chain}: the sender {sender:?} is not an account of this chain ({expected})")]
    BadSender {
        /// The message's chain.
        chain: String,
        /// The message's sender.
        sender: String,
        /// What an account of the chain looks like.
        expected: &'static str,
    },
    /// The signature cannot be read.
    #[error("chain {chain}: the signature is malformed: {reason}")]
    Malformed {
        /// The message's chain.
        chain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature is valid, but by another account.
    #[error("chain {chain}: the signature is by {signer}, not by the sender {sender}")]
    WrongSigner {
        /// The message's chain.
        chain: String,
        /// Who signed.
        signer: String,
        /// Who the message says signed.
        sender: String,
    },
    /// The signature does not verify.
    #[error("chain {chain}: the signature does not verify for the sender {sender}")]
    Invalid {
        /// The message's chain.
        chain: String,
        /// The message's sender.
        sender: String,
    },
    /// The content speaks for another address than the sender's.
    #[error(
        "content.address {address} is not the sender {sender}: a message speaks only for its \
         signer, unless the owner's security aggregate authorises the sender"
    )]
    NotTheOwner {
        /// The content's address.
        address: String,
        /// The message's sender.
        sender: String,
    },
}

/// Aleph's verification buffer of a message: `"{chain}\n{sender}\n{type}\n{item_hash}"`.
pub fn verification_buffer(msg: &Message) -> String {
    buffer_of(&msg.chain, &msg.sender, msg.kind.as_str(), &msg.item_hash)
}

/// The verification buffer of these four fields (the one place its layout is written).
pub fn buffer_of(chain: &str, sender: &str, kind: &str, item_hash: &str) -> String {
    format!("{chain}\n{sender}\n{kind}\n{item_hash}")
}

/// Checks that `msg` is from its sender: its signature, when it has one, verifies for the
/// sender, and its content's address is the sender. A message without a signature (absent or
/// empty) is [`Authenticity::Unsigned`]. A store also takes a message whose content speaks
/// for an owner who delegated to the sender ([`super::delegation`]); this function alone,
/// knowing no aggregate, does not.
pub fn authenticate(msg: &Message) -> Result<Authenticity, SignatureError> {
    let authenticity = verify_signature(msg)?;
    check_owner(msg)?;
    Ok(authenticity)
}

/// Checks `msg`'s signature against its sender (not who the content speaks for).
pub fn verify_signature(msg: &Message) -> Result<Authenticity, SignatureError> {
    let Some(signature) = msg.signature.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(Authenticity::Unsigned);
    };
    let buffer = verification_buffer(msg);
    if is_evm_chain(&msg.chain) {
        verify_evm(&msg.chain, &msg.sender, buffer.as_bytes(), signature)?;
        Ok(Authenticity::Signed { scheme: "EIP-191" })
    } else if msg.chain == SOL_CHAIN {
        verify_sol(&msg.sender, buffer.as_bytes(), signature)?;
        Ok(Authenticity::Signed { scheme: "ed25519" })
    } else {
        Err(SignatureError::UnsupportedChain(msg.chain.clone()))
    }
}

/// The address `msg`'s content speaks for (`content.address`), when it names one.
pub fn content_address(msg: &Message) -> Option<&str> {
    match &msg.content {
        Content::Program(p) => Some(p.address.as_str()),
        Content::Store(s) => Some(s.address.as_str()),
        Content::Other(v) => v.get("address").and_then(Value::as_str),
    }
}

/// Whether `chain` is one of [`EVM_CHAINS`].
pub fn is_evm_chain(chain: &str) -> bool {
    EVM_CHAINS.contains(&chain)
}

/// Whether `address` is an Ethereum account: `0x` and 40 hex digits, any case.
pub fn is_evm_address(address: &str) -> bool {
    address.len() == 42
        && address.starts_with("0x")
        && address[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether two addresses of `chain` are the same account (EVM addresses ignore case).
pub fn same_account(chain: &str, a: &str, b: &str) -> bool {
    if is_evm_chain(chain) && is_evm_address(a) && is_evm_address(b) {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// Checks that `msg`'s content speaks for its sender ([`SignatureError::NotTheOwner`]).
pub fn check_owner(msg: &Message) -> Result<(), SignatureError> {
    match content_address(msg) {
        Some(address) if !same_account(&msg.chain, address, &msg.sender) => {
            Err(SignatureError::NotTheOwner {
                address: address.to_string(),
                sender: msg.sender.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// The account that signed `text` with EIP-191 `personal_sign` (`signature`: hex of r ‖ s ‖
/// v), checksummed; `chain` names the chain in errors.
pub fn recover_evm(chain: &str, text: &[u8], signature: &str) -> Result<String, SignatureError> {
    let malformed = |reason: String| SignatureError::Malformed {
        chain: chain.to_string(),
        reason,
    };
    let digits = signature.strip_prefix("0x").unwrap_or(signature);
    let mut bytes = [0u8; 65];
    if digits.len() != 130 {
        return Err(malformed(format!(
            "{} hex digits, where r ‖ s ‖ v is 130",
            digits.len()
        )));
    }
    hex::decode_to_slice(digits, &mut bytes)
        .map_err(|_| malformed("not hex (r ‖ s ‖ v, 0x optional)".into()))?;
    let v = match bytes[64] {
        v @ (27 | 28) => v - 27,
        v @ (0 | 1) => v,
        v => return Err(malformed(format!("v is {v}, not 27, 28, 0 or 1"))),
    };
    let mut sig = Signature::from_slice(&bytes[..64])
        .map_err(|_| malformed("r or s is zero or not below the curve's order".into()))?;
    let mut recovery = RecoveryId::new(v == 1, false);
    if let Some(low) = sig.normalize_s() {
        sig = low;
        recovery = RecoveryId::new(!recovery.is_y_odd(), false);
    }
    let key =
        VerifyingKey::recover_from_prehash(&eip191_digest(text), &sig, recovery).map_err(|_| {
            SignatureError::Malformed {
                chain: chain.to_string(),
                reason: "no public key recovers from it".into(),
            }
        })?;
    Ok(address_of(&key))
}

fn verify_evm(
    chain: &str,
    sender: &str,
    text: &[u8],
    signature: &str,
) -> Result<(), SignatureError> {
    if !is_evm_address(sender) {
        return Err(SignatureError::BadSender {
            chain: chain.to_string(),
            sender: sender.to_string(),
            expected: "0x and 40 hex digits",
        });
    }
    let signer = recover_evm(chain, text, signature)?;
    if signer.eq_ignore_ascii_case(sender) {
        Ok(())
    } else {
        Err(SignatureError::WrongSigner {
            chain: chain.to_string(),
            signer,
            sender: sender.to_string(),
        })
    }
}

fn verify_sol(sender: &str, text: &[u8], signature: &str) -> Result<(), SignatureError> {
    let malformed = |reason: String| SignatureError::Malformed {
        chain: SOL_CHAIN.to_string(),
        reason,
    };
    let parsed: Value = serde_json::from_str(signature)
        .map_err(|_| malformed(r#"not the JSON text {"signature": …, "publicKey": …}"#.into()))?;
    let field = |name: &str| {
        parsed
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("no {name:?} string in its JSON")))
    };
    let (sig58, key58) = (field("signature")?, field("publicKey")?);
    let decode = |text: &str, name: &str, len: usize| {
        let bytes = bs58::decode(text)
            .into_vec()
            .map_err(|_| malformed(format!("{name} is not base58")))?;
        if bytes.len() != len {
            return Err(malformed(format!(
                "{name} is {} bytes, not {len}",
                bytes.len()
            )));
        }
        Ok(bytes)
    };
    let sig = decode(sig58, "signature", 64)?;
    let key = decode(key58, "publicKey", 32)?;
    if key58 != sender {
        return Err(SignatureError::WrongSigner {
            chain: SOL_CHAIN.into(),
            signer: key58.to_string(),
            sender: sender.to_string(),
        });
    }
    let key: [u8; 32] = key.try_into().unwrap_or([0; 32]);
    let sig: [u8; 64] = sig.try_into().unwrap_or([0; 64]);
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| malformed("publicKey is not an ed25519 public key".into()))?;
    key.verify_strict(text, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::Invalid {
            chain: SOL_CHAIN.into(),
            sender: sender.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::message::{Signer, parse_value};

    const ETH_SENDER: &str = "0xA07B1214bAe0D5ccAA25449C3149c0aC83658874";
    const ETH_SIGNATURE: &str = "0x99efc66c781c889e1f21c680869c832141dcee90189e75e85f570b8b49e72dee0338d77c214ae55bfcb886bbd7bac6dc4dcfda4eb0d2c47ed93d51b36b7259b01c";
    const SOL_SENDER: &str = "AzfsDdCQp8uqzR4ProJ7yyLGKNp9iXHt92rEoiAHG4Pw";
    const SOL_SIGNATURE: &str = r#"{"signature": "56hzHaJHH3bz1DtU6Wjhyn7eLsMCYSY4HcXkKrpwAdEHFdw7k95NPzubR3x7otstbr5JCffw81Qqpd9YUq8XJuFi","publicKey": "AzfsDdCQp8uqzR4ProJ7yyLGKNp9iXHt92rEoiAHG4Pw"}"#;

    /// A POST message from the network's public record, signed on Ethereum.
    fn eth_post() -> Value {
        json!({
            "chain": "ETH",
            "sender": ETH_SENDER,
            "type": "POST",
            "channel": "ALEPH-CLOUDSOLUTIONS",
            "time": 1730410918.092607,
            "item_type": "inline",
            "item_hash": "f524a258d87f1771e8538fd4fd91acdcc527c3b7f138fafd6ff89a5fcf97c3b7",
            "item_content": r#"{"address":"0xA07B1214bAe0D5ccAA25449C3149c0aC83658874","time":1730410918.0924816,"content":{"type":"polygon","address":"0xA07B1214bAe0D5ccAA25449C3149c0aC83658874","content":{"body":"This message was posted from the typescript-SDK test suite"},"time":1689163528.372},"type":"test"}"#,
            "signature": ETH_SIGNATURE,
        })
    }

    /// A POST message from the network's public record, signed on Solana.
    fn sol_post() -> Value {
        json!({
            "chain": "SOL",
            "sender": SOL_SENDER,
            "type": "POST",
            "channel": "TEST",
            "time": 1610379947.771,
            "item_type": "inline",
            "item_hash": "6dc1b023dd1e64d28037f49a921412b3e04cf7b2b3d2537c6ae0ad2c239eae3f",
            "item_content": r#"{"type":"note","address":"AzfsDdCQp8uqzR4ProJ7yyLGKNp9iXHt92rEoiAHG4Pw","content":{"body":"this is a test!","title":"Test note","private":false,"notebook":null},"time":1610379947.771}"#,
            "signature": SOL_SIGNATURE,
        })
    }

    fn check(value: &Value) -> Result<Authenticity, SignatureError> {
        authenticate(&parse_value(value).expect("the message parses"))
    }

    fn with(mut value: Value, key: &str, new: Value) -> Value {
        value[key] = new;
        value
    }

    #[test]
    fn real_messages_verify() {
        assert_eq!(
            check(&eth_post()),
            Ok(Authenticity::Signed { scheme: "EIP-191" })
        );
        assert_eq!(
            check(&sol_post()),
            Ok(Authenticity::Signed { scheme: "ed25519" })
        );
    }

    #[test]
    fn the_buffer_is_chain_sender_type_hash() {
        let msg = parse_value(&sol_post()).unwrap();
        assert_eq!(
            verification_buffer(&msg),
            format!(
                "SOL\n{SOL_SENDER}\nPOST\n6dc1b023dd1e64d28037f49a921412b3e04cf7b2b3d2537c6ae0ad2c239eae3f"
            )
        );
    }

    #[test]
    fn a_changed_evm_signature_byte_is_refused() {
        // Changing a byte of s: another key recovers, not the sender.
        let mut sig = ETH_SIGNATURE.to_string();
        sig.replace_range(70..72, "00");
        let err = check(&with(eth_post(), "signature", json!(sig))).unwrap_err();
        assert!(
            matches!(&err, SignatureError::WrongSigner { sender, .. } if sender == ETH_SENDER),
            "{err}"
        );
        assert!(err.to_string().contains("not by the sender"), "{err}");
    }

    #[test]
    fn another_evm_sender_is_refused() {
        let other = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
        let mut value = with(eth_post(), "sender", json!(other));
        // The content names the same sender, so only the signature is at fault.
        let content = value["item_content"]
            .as_str()
            .unwrap()
            .replace(ETH_SENDER, other);
        value["item_hash"] = json!(crate::message::sha256_hex(content.as_bytes()));
        value["item_content"] = json!(content);
        let err = check(&value).unwrap_err();
        assert!(
            matches!(&err, SignatureError::WrongSigner { sender, .. } if sender == other),
            "{err}"
        );
    }

    #[test]
    fn evm_senders_compare_without_case() {
        let signer = Signer::from_secret(&[7u8; 32]).unwrap();
        let mut msg = parse_value(&with(eth_post(), "signature", Value::Null)).unwrap();
        msg.sender = signer.address().to_string();
        if let Content::Other(v) = &mut msg.content {
            v["address"] = json!(signer.address().to_lowercase());
        }
        signer.sign(&mut msg).unwrap();
        assert_eq!(
            authenticate(&msg),
            Ok(Authenticity::Signed { scheme: "EIP-191" })
        );
        // A lowercase sender signs a different buffer: sign it again and it verifies too.
        msg.sender = signer.address().to_lowercase();
        signer.sign(&mut msg).unwrap();
        assert_eq!(
            authenticate(&msg),
            Ok(Authenticity::Signed { scheme: "EIP-191" })
        );
    }

    #[test]
    fn a_high_s_signature_counts_as_its_low_twin() {
        use k256::elliptic_curve::PrimeField;
        let bytes = hex::decode(&ETH_SIGNATURE[2..]).unwrap();
        let s = k256::FieldBytes::clone_from_slice(&bytes[32..64]);
        let s: k256::Scalar = Option::from(k256::Scalar::from_repr(s)).unwrap();
        let mut twin = bytes[..32].to_vec();
        twin.extend_from_slice(&(-s).to_repr());
        twin.push(if bytes[64] == 27 { 28 } else { 27 });
        let twin = format!("0x{}", hex::encode(twin));
        assert_ne!(twin, ETH_SIGNATURE);
        assert_eq!(
            check(&with(eth_post(), "signature", json!(twin))),
            Ok(Authenticity::Signed { scheme: "EIP-191" })
        );
    }

    #[test]
    fn malformed_evm_signatures_name_the_fault() {
        for (signature, fault) in [
            ("0x1234", "4 hex digits"),
            (&format!("0x{}", "zz".repeat(65))[..], "not hex"),
            (&format!("{}05", &ETH_SIGNATURE[..130])[..], "v is 5"),
        ] {
            let err = check(&with(eth_post(), "signature", json!(signature))).unwrap_err();
            assert!(matches!(err, SignatureError::Malformed { .. }), "{err}");
            assert!(err.to_string().contains(fault), "{signature}: {err}");
        }
    }

    #[test]
    fn a_changed_sol_signature_is_refused() {
        let bad = SOL_SIGNATURE.replace("XJuFi", "XJuFj");
        let err = check(&with(sol_post(), "signature", json!(bad))).unwrap_err();
        assert!(matches!(err, SignatureError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn a_sol_key_other_than_the_sender_is_refused() {
        let bad = SOL_SIGNATURE.replace(r#""publicKey": "AzfsDd"#, r#""publicKey": "BzfsDd"#);
        let err = check(&with(sol_post(), "signature", json!(bad))).unwrap_err();
        assert!(matches!(err, SignatureError::WrongSigner { .. }), "{err}");
    }

    #[test]
    fn malformed_sol_signatures_name_the_fault() {
        for (signature, fault) in [
            ("not json", "not the JSON text"),
            (
                "56hzHaJHH3bz1DtU6Wjhyn7eLsMCYSY4HcXkKrpwAdEHFdw7k95NPzubR3x7otstbr5JCffw81Qqpd9YUq8XJuFi",
                "not the JSON text",
            ),
            (r#"{"signature": "0OIl", "publicKey": "x"}"#, "not base58"),
            (r#"{"publicKey": "x"}"#, "no \"signature\""),
        ] {
            let err = check(&with(sol_post(), "signature", json!(signature))).unwrap_err();
            assert!(matches!(err, SignatureError::Malformed { .. }), "{err}");
            assert!(err.to_string().contains(fault), "{signature}: {err}");
        }
    }

    #[test]
    fn other_chains_are_refused_by_name() {
        let err = check(&with(sol_post(), "chain", json!("TEZOS"))).unwrap_err();
        assert_eq!(err, SignatureError::UnsupportedChain("TEZOS".into()));
        assert!(
            err.to_string()
                .contains("chain TEZOS: signatures not supported")
        );
    }

    #[test]
    fn unsigned_messages_are_unsigned_and_content_must_be_the_senders() {
        assert_eq!(
            check(&with(eth_post(), "signature", Value::Null)),
            Ok(Authenticity::Unsigned)
        );
        let mut msg = parse_value(&with(eth_post(), "signature", Value::Null)).unwrap();
        msg.sender = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23".into();
        let err = authenticate(&msg).unwrap_err();
        assert!(matches!(err, SignatureError::NotTheOwner { .. }), "{err}");
        assert!(
            err.to_string().contains("speaks only for its signer"),
            "{err}"
        );
    }
}
