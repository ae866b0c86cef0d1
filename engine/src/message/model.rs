//! The typed, normalised message model that later stages trust, and its final-form JSON.
//!
//! Values here have passed [`parse`](super::parse()): defaults are filled in, the seed's
//! spellings are mapped to the final ones, and every rule of the spec holds (except the ones
//! [`ProgramContent::check_supported`] adds for this engine). Serialising any of these types
//! gives the final form (`use_latest`, `on.message`, `"tar.gz"`, …).

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::error::{Errors, MessageError};
use super::mount::MountPath;

/// The kind of an Aleph message (the envelope's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MessageType {
    /// `POST`: a user document.
    Post,
    /// `AGGREGATE`: a key-value document.
    Aggregate,
    /// `STORE`: a reference to a stored file.
    Store,
    /// `PROGRAM`: a `vm-function` to run.
    Program,
    /// `INSTANCE`: a long-running VM (not run by this engine).
    Instance,
    /// `FORGET`: a request to forget earlier messages.
    Forget,
}

impl MessageType {
    /// Every message type, in the spec's order.
    pub const ALL: [MessageType; 6] = [
        Self::Post,
        Self::Aggregate,
        Self::Store,
        Self::Program,
        Self::Instance,
        Self::Forget,
    ];

    /// The wire name, e.g. `"PROGRAM"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Aggregate => "AGGREGATE",
            Self::Store => "STORE",
            Self::Program => "PROGRAM",
            Self::Instance => "INSTANCE",
            Self::Forget => "FORGET",
        }
    }

    /// Looks a wire name up (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a message's (or a stored file's) content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    /// In the message itself (`item_content`).
    Inline,
    /// In Aleph's storage engine, addressed by sha256.
    Storage,
    /// In IPFS, addressed by CID.
    Ipfs,
}

impl ItemType {
    /// The wire name, e.g. `"inline"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Storage => "storage",
            Self::Ipfs => "ipfs",
        }
    }

    /// Looks a wire name up (exact, lower case).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Inline, Self::Storage, Self::Ipfs]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
}

impl fmt::Display for ItemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How code, data or an export is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Encoding {
    /// A single plain file.
    #[serde(rename = "plain")]
    Plain,
    /// A zip archive.
    #[serde(rename = "zip")]
    Zip,
    /// A gzip-compressed tar archive (the seed's `tar.gzip`; also `tar.gz`, `targz`).
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A squashfs image (unpacked read-only; not an export encoding).
    #[serde(rename = "squashfs")]
    Squashfs,
}

impl Encoding {
    /// The final-form name, e.g. `"tar.gz"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Zip => "zip",
            Self::TarGz => "tar.gz",
            Self::Squashfs => "squashfs",
        }
    }

    /// Looks a name up, accepting the spellings `plain`, `zip`, `squashfs`, `tar.gz`,
    /// `tar.gzip` and `targz`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "plain" => Some(Self::Plain),
            "zip" => Some(Self::Zip),
            "squashfs" => Some(Self::Squashfs),
            "tar.gz" | "tar.gzip" | "targz" => Some(Self::TarGz),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the program talks to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// A Python ASGI application (`module:app`).
    Asgi,
    /// An executable serving HTTP.
    Binary,
}

impl Interface {
    /// The wire name, e.g. `"asgi"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asgi => "asgi",
            Self::Binary => "binary",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "asgi" => Some(Self::Asgi),
            "binary" => Some(Self::Binary),
            _ => None,
        }
    }

    /// The interface used when a message names none: [`Interface::Asgi`] when the
    /// entrypoint contains `:` (as in `main:app`), else [`Interface::Binary`].
    pub fn infer(entrypoint: &str) -> Self {
        if entrypoint.contains(':') {
            Self::Asgi
        } else {
            Self::Binary
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a persistent volume is kept between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    /// On this node.
    Host,
    /// Published back to the Aleph network (not supported by this engine yet).
    Store,
}

impl Persistence {
    /// The wire name, e.g. `"host"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Store => "store",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "host" => Some(Self::Host),
            "store" => Some(Self::Store),
            _ => None,
        }
    }
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated Aleph message in the final envelope form.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Signing chain of `sender` (`ETH`, `SOL`, …).
    pub chain: String,
    /// Address that signed the message.
    pub sender: String,
    /// The message type.
    pub kind: MessageType,
    /// Channel, at most 128 characters.
    pub channel: Option<String>,
    /// Seconds since the epoch.
    pub time: f64,
    /// Where the content lives.
    pub item_type: ItemType,
    /// Hash of the content: sha256 hex of `item_content` for inline messages.
    pub item_hash: String,
    /// For inline messages, the exact JSON text of the content, when it was given.
    pub item_content: Option<String>,
    /// Signature of `"{chain}\n{sender}\n{type}\n{item_hash}"`; not checked here.
    pub signature: Option<String>,
    /// The validated content.
    pub content: Content,
    /// `true` when `item_hash == sha256(item_content)` was checked (inline with
    /// `item_content`); `false` when the content was taken on trust.
    pub hash_verified: bool,
}

/// The content of a message, typed for the kinds this engine uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// A `PROGRAM` message's content.
    Program(Box<ProgramContent>),
    /// A `STORE` message's content.
    Store(StoreContent),
    /// Any other kind's content, kept as given (a JSON object).
    Other(Value),
}

impl Message {
    /// The final-form envelope as JSON, keys in a fixed order: `chain`, `sender`, `type`,
    /// `channel`, `time`, `item_type`, `item_content`, `item_hash`, `signature`, `content`.
    ///
    /// When `item_content` is present, `content` is its parsed JSON (so the two agree
    /// exactly); otherwise `content` is the normalised content. The result parses back into
    /// an equal [`Message`].
    pub fn to_json(&self) -> Value {
        let content = self
            .item_content
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .unwrap_or_else(|| serde_json::to_value(&self.content).unwrap_or(Value::Null));
        let mut map = Map::new();
        map.insert("chain".into(), self.chain.clone().into());
        map.insert("sender".into(), self.sender.clone().into());
        map.insert("type".into(), self.kind.as_str().into());
        map.insert("channel".into(), self.channel.clone().into());
        map.insert("time".into(), float(self.time));
        map.insert("item_type".into(), self.item_type.as_str().into());
        map.insert("item_content".into(), self.item_content.clone().into());
        map.insert("item_hash".into(), self.item_hash.clone().into());
        map.insert("signature".into(), self.signature.clone().into());
        map.insert("content".into(), content);
        Value::Object(map)
    }

    /// The program content, when this is a `PROGRAM` message.
    pub fn program(&self) -> Option<&ProgramContent> {
        match &self.content {
            Content::Program(p) => Some(p),
            _ => None,
        }
    }

    /// The store content, when this is a `STORE` message.
    pub fn store(&self) -> Option<&StoreContent> {
        match &self.content {
            Content::Store(s) => Some(s),
            _ => None,
        }
    }
}

/// Serialises as [`Message::to_json`]: the final-form envelope.
impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// A JSON number for `x`, or `null` when `x` is not finite.
fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The content of a `STORE` message: which file, where, and what it amends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreContent {
    /// Owner of the file.
    pub address: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// Where the file lives (`storage` or `ipfs`).
    pub item_type: ItemType,
    /// The file's hash (sha256 hex for storage, CID for ipfs).
    pub item_hash: String,
    /// File size in bytes, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// MIME type, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The item hash of the STORE message this one amends (JSON key `ref`).
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// MIME type as some clients spell it, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Any other keys (bookkeeping such as `engine_info`, `metadata`), kept as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The content of a `PROGRAM` (`vm-function`) message, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramContent {
    /// Owner of the program.
    pub address: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// Whether amends may update this program.
    pub allow_amend: bool,
    /// Free-form metadata, at most 256 entries.
    pub metadata: Option<Map<String, Value>>,
    /// SSH public keys (meaningful for instances).
    pub authorized_keys: Vec<String>,
    /// Environment variables for the program, at most 256; names are non-empty and contain
    /// neither `=` nor NUL, values contain no NUL.
    pub variables: BTreeMap<String, String>,
    /// The code to run.
    pub code: CodeContent,
    /// The runtime (interpreter) to run it with.
    pub runtime: RuntimeRef,
    /// Input data unpacked before the run.
    pub data: Option<DataContent>,
    /// Directory packed up after the run.
    pub export: Option<ExportContent>,
    /// What starts the program.
    pub on: Triggers,
    /// Properties of the sandbox.
    pub environment: Environment,
    /// Resource limits.
    pub resources: Resources,
    /// Extra volumes, at most 256, with non-overlapping mounts.
    pub volumes: Vec<Volume>,
    /// Host requirements (`cpu`, `node`, `gpu`), kept as given.
    pub requirements: Option<Value>,
    /// Payment details (`chain`, `receiver`, `type`), kept as given.
    pub payment: Option<Value>,
    /// Previous version this program replaces.
    pub replaces: Option<String>,
}

impl ProgramContent {
    /// Whether the program mounts a persistent volume (state kept between executions).
    pub fn has_persistent_volume(&self) -> bool {
        self.volumes
            .iter()
            .any(|v| matches!(v, Volume::Persistent { .. }))
    }

    /// Rejects what is a valid Aleph message but not runnable by this engine: export
    /// encodings other than `zip` and `tar.gz`, and `persistence: store` volumes. Errors use
    /// the final-form JSON paths (`content.export.encoding`, …).
    pub fn check_supported(&self) -> Result<(), MessageError> {
        let mut errors = Errors::default();
        if let Some(export) = &self.export
            && !matches!(export.encoding, Encoding::Zip | Encoding::TarGz)
        {
            errors.push(
                "content.export.encoding",
                format!(
                    "unsupported export encoding {:?} (supported: zip, tar.gz)",
                    export.encoding.as_str()
                ),
            );
        }
        for (i, volume) in self.volumes.iter().enumerate() {
            if let Volume::Persistent {
                persistence: Persistence::Store,
                ..
            } = volume
            {
                errors.push(
                    &format!("content.volumes[{i}].persistence"),
                    "\"store\" is not supported yet (use \"host\")",
                );
            }
        }
        errors.finish(Some(()))
    }

    /// Every mount of the program, in order: data, export, then volumes that have one.
    pub fn mounts(&self) -> Vec<&MountPath> {
        let mut mounts = Vec::new();
        mounts.extend(self.data.as_ref().map(|d| &d.mount));
        mounts.extend(self.export.as_ref().map(|e| &e.mount));
        mounts.extend(self.volumes.iter().filter_map(Volume::mount));
        mounts
    }
}

impl Serialize for ProgramContent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", "vm-function")?;
        map.serialize_entry("address", &self.address)?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("allow_amend", &self.allow_amend)?;
        if let Some(metadata) = &self.metadata {
            map.serialize_entry("metadata", metadata)?;
        }
        if !self.authorized_keys.is_empty() {
            map.serialize_entry("authorized_keys", &self.authorized_keys)?;
        }
        if !self.variables.is_empty() {
            map.serialize_entry("variables", &self.variables)?;
        }
        map.serialize_entry("code", &self.code)?;
        map.serialize_entry("runtime", &self.runtime)?;
        if let Some(data) = &self.data {
            map.serialize_entry("data", data)?;
        }
        if let Some(export) = &self.export {
            map.serialize_entry("export", export)?;
        }
        map.serialize_entry("on", &self.on)?;
        map.serialize_entry("environment", &self.environment)?;
        map.serialize_entry("resources", &self.resources)?;
        map.serialize_entry("volumes", &self.volumes)?;
        if let Some(requirements) = &self.requirements {
            map.serialize_entry("requirements", requirements)?;
        }
        if let Some(payment) = &self.payment {
            map.serialize_entry("payment", payment)?;
        }
        if let Some(replaces) = &self.replaces {
            map.serialize_entry("replaces", replaces)?;
        }
        map.end()
    }
}

/// The program's code.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeContent {
    /// How the code is packed.
    pub encoding: Encoding,
    /// What to run: `module:app` for ASGI, a path for a binary.
    pub entrypoint: String,
    /// Where the code comes from.
    pub source: CodeSource,
    /// How the program talks to its caller. When the message names none:
    /// [`Interface::infer`] on `entrypoint` for referenced code, [`Interface::Asgi`] for
    /// inline `code.content` (Python source whose `entrypoint` names the ASGI callable).
    pub interface: Interface,
    /// Command-line arguments.
    pub args: Vec<String>,
}

impl Serialize for CodeContent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("encoding", &self.encoding)?;
        map.serialize_entry("entrypoint", &self.entrypoint)?;
        match &self.source {
            CodeSource::Ref(r) => {
                map.serialize_entry("ref", &r.reference)?;
                map.serialize_entry("use_latest", &r.use_latest)?;
            }
            CodeSource::Inline(text) => map.serialize_entry("content", text)?,
        }
        map.serialize_entry("interface", &self.interface)?;
        if !self.args.is_empty() {
            map.serialize_entry("args", &self.args)?;
        }
        map.end()
    }
}

/// Where a program's code comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CodeSource {
    /// A STORE message holding the code.
    Ref(ObjectRef),
    /// Source text in the message itself (the seed's `code.content`; always `plain`).
    Inline(String),
}

/// A reference to a STORE message by item hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    /// Item hash of the STORE message (sha256 hex or IPFS CID; JSON key `ref`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Use the newest amend by the same owner instead of the exact message
    /// (the seed's `latest_amend`).
    pub use_latest: bool,
}

/// The runtime a program runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeRef {
    /// The runtime's STORE message (`use_latest` defaults to `true`).
    #[serde(flatten)]
    pub reference: ObjectRef,
    /// Human description of the runtime.
    pub comment: String,
}

/// Input data unpacked at `mount` before the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataContent {
    /// How the data is packed.
    pub encoding: Encoding,
    /// Where it is unpacked.
    pub mount: MountPath,
    /// The data's STORE message.
    #[serde(flatten)]
    pub reference: ObjectRef,
}

/// A directory packed up after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportContent {
    /// How to pack it (only `zip` and `tar.gz` are supported).
    pub encoding: Encoding,
    /// Which directory (may equal `data.mount`).
    pub mount: MountPath,
}

/// What starts a program.
#[derive(Debug, Clone, PartialEq)]
pub struct Triggers {
    /// Route HTTP requests to the program.
    pub http: bool,
    /// Keep the program running instead of starting it on demand.
    pub persistent: bool,
    /// Five-field cron schedule (seed extension, kept in our final form).
    pub cron: Option<String>,
    /// Message subscriptions (the seed's `on.aleph`); each has at most 32 keys.
    pub message: Vec<Map<String, Value>>,
}

impl Serialize for Triggers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("http", &self.http)?;
        if self.persistent {
            map.serialize_entry("persistent", &true)?;
        }
        if let Some(cron) = &self.cron {
            map.serialize_entry("cron", cron)?;
        }
        if !self.message.is_empty() {
            map.serialize_entry("message", &self.message)?;
        }
        map.end()
    }
}

/// Properties of the sandbox; every one defaults to `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Environment {
    /// Runs must be deterministic.
    pub reproducible: bool,
    /// Outbound network access.
    pub internet: bool,
    /// Access to the Aleph API.
    pub aleph_api: bool,
    /// Access to the node's shared cache.
    pub shared_cache: bool,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    /// Virtual CPUs, 1..=256 (default 1).
    pub vcpus: u32,
    /// Memory in MiB, 1..=1048576 (default 128; JSON key `memory`).
    #[serde(rename = "memory")]
    pub memory_mib: u64,
    /// Time limit per run in seconds, at least 1 (default 1).
    pub seconds: u64,
    /// Ports to publish (a list), kept as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_ports: Option<Value>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 128,
            seconds: 1,
            published_ports: None,
        }
    }
}

/// An extra filesystem for the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// Read-only content from a STORE message (`use_latest` defaults to `true`).
    Immutable {
        /// Where it appears, if anywhere.
        mount: Option<MountPath>,
        /// The content's STORE message.
        reference: ObjectRef,
        /// Human description.
        comment: Option<String>,
    },
    /// Empty and writable, gone after the run.
    Ephemeral {
        /// Where it appears, if anywhere.
        mount: Option<MountPath>,
        /// Size in MiB, 1..=1000.
        size_mib: u64,
        /// Human description.
        comment: Option<String>,
    },
    /// Writable and kept between runs.
    Persistent {
        /// Where it appears, if anywhere.
        mount: Option<MountPath>,
        /// Name, unique per program; usable as a single file-name component.
        name: String,
        /// Size in MiB, at least 1.
        size_mib: u64,
        /// Where it is kept.
        persistence: Persistence,
        /// Initial content copied from a STORE message (`use_latest` defaults to `true`).
        parent: Option<ObjectRef>,
        /// Human description.
        comment: Option<String>,
    },
}

impl Volume {
    /// The volume's mount path, if it has one.
    pub fn mount(&self) -> Option<&MountPath> {
        match self {
            Self::Immutable { mount, .. }
            | Self::Ephemeral { mount, .. }
            | Self::Persistent { mount, .. } => mount.as_ref(),
        }
    }

    /// The volume's comment, if it has one.
    pub fn comment(&self) -> Option<&str> {
        match self {
            Self::Immutable { comment, .. }
            | Self::Ephemeral { comment, .. }
            | Self::Persistent { comment, .. } => comment.as_deref(),
        }
    }
}

impl Serialize for Volume {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(comment) = self.comment() {
            map.serialize_entry("comment", comment)?;
        }
        if let Some(mount) = self.mount() {
            map.serialize_entry("mount", mount)?;
        }
        match self {
            Self::Immutable { reference, .. } => {
                map.serialize_entry("ref", &reference.reference)?;
                map.serialize_entry("use_latest", &reference.use_latest)?;
            }
            Self::Ephemeral { size_mib, .. } => {
                map.serialize_entry("ephemeral", &true)?;
                map.serialize_entry("size_mib", size_mib)?;
            }
            Self::Persistent {
                name,
                size_mib,
                persistence,
                parent,
                ..
            } => {
                if let Some(parent) = parent {
                    map.serialize_entry("parent", parent)?;
                }
                map.serialize_entry("persistence", persistence)?;
                map.serialize_entry("name", name)?;
                map.serialize_entry("size_mib", size_mib)?;
            }
        }
        map.end()
    }
}
