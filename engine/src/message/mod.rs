//! Aleph messages: parsing and validating any message JSON — the final envelope form or the
//! seed's `vm-function` draft — into one typed, normalised [`Message`] that later stages trust.
//!
//! Owns: the message model ([`Message`], [`ProgramContent`], [`StoreContent`], …), the one
//! validation point [`parse()`], item-hash checks ([`sha256_hex`]), canonical JSON for hashing
//! ([`canonical`], [`canonical_hash`]: receipts, reproducible keys), mount-path rules
//! ([`MountPath`]), the seed-draft mapping (`latest_amend` → `use_latest`, `on.aleph` →
//! `on.message`, `tar.gzip`, inline `code.content`, `on.cron`), and [`build_inline`] for new
//! inline messages, and who a message is from: [`authenticate`] checks its signature (EVM
//! chains, SOL) against its sender ([`verify`]), and a [`Signer`] signs the messages this node
//! makes. It does not fetch referenced objects.
//!
//! Beyond the final form, the normalised content may carry two seed extensions:
//! `on.cron` and inline `code.content`; [`parse()`] accepts them in either form.
//!
//! Every validation error names the JSON path of the offending value
//! (`content.resources.memory: must be between 1 and 1048576 MiB, got 0`). What is a valid
//! Aleph message but not runnable here (a squashfs export, `persistence: store`) passes [`parse()`] and
//! is rejected by [`ProgramContent::check_supported`].

mod canonical;
mod cron;
pub mod delegation;
mod error;
mod hash;
mod model;
mod mount;
mod parse;
mod program;
mod reader;
mod seed;
pub mod signer;
#[cfg(test)]
mod tests;
pub mod verify;

pub use canonical::{canonical, canonical_hash};
pub use cron::validate_cron;
pub use error::{FieldError, MessageError};
pub use hash::{
    HashKind, host_label, is_item_hash, is_sha256, item_hash_kind, item_hash_of_label, sha256_hex,
};
pub use model::{
    CodeContent, CodeSource, Content, DataContent, Encoding, Environment, ExportContent, Interface,
    ItemType, Message, MessageType, ObjectRef, Persistence, ProgramContent, Resources, RuntimeRef,
    StoreContent, Triggers, Volume,
};
pub use mount::{MAX_MOUNT_COMPONENT_LEN, MAX_MOUNT_PATH_LEN, MountPath, MountPathError};
pub use parse::{MAX_CHANNEL_CHARS, build_inline, parse, parse_value, try_build_inline};
pub use program::{
    MAX_EPHEMERAL_MIB, MAX_MAP_ENTRIES, MAX_MEMORY_MIB, MAX_SUBSCRIPTION_KEYS, MAX_VCPUS,
    MAX_VOLUMES,
};
pub use seed::SEED_CHAIN;
pub use signer::Signer;
pub use verify::{Authenticity, SignatureError, authenticate, verification_buffer};
