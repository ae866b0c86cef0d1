//! Validation of `PROGRAM` (`vm-function`) content, in the final form or the seed's draft
//! form, into a [`ProgramContent`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::cron::validate_cron;
use super::error::Errors;
use super::hash::is_item_hash;
use super::model::{
    CodeContent, CodeSource, DataContent, Encoding, Environment, ExportContent, Interface,
    ObjectRef, Persistence, ProgramContent, Resources, RuntimeRef, Triggers, Volume,
};
use super::mount::{MountPath, MountRole, overlapping_mounts};
use super::reader::{Obj, describe, index_path, key_path};

/// Most entries in `metadata` and in `variables`.
pub const MAX_MAP_ENTRIES: usize = 256;
/// Most volumes in a program.
pub const MAX_VOLUMES: usize = 256;
/// Most keys in one message subscription.
pub const MAX_SUBSCRIPTION_KEYS: usize = 32;
/// Most virtual CPUs.
pub const MAX_VCPUS: u64 = 256;
/// Most memory, in MiB.
pub const MAX_MEMORY_MIB: u64 = 1_048_576;
/// Largest ephemeral volume, in MiB.
pub const MAX_EPHEMERAL_MIB: u64 = 1000;

const ENCODINGS: &str = "plain, zip, tar.gz, squashfs";

/// Which spelling of the program content is being read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect<'a> {
    /// The final form: `type`, `address`, `time`, `allow_amend` in the content; `use_latest`;
    /// `on.message`.
    Final,
    /// The seed's draft: owner and time come from the top level; `latest_amend`; `on.aleph`;
    /// `allow_amend` optional.
    Seed {
        /// The draft's top-level `address`.
        address: &'a str,
        /// The draft's top-level `time`.
        time: f64,
    },
}

impl Dialect<'_> {
    fn latest_key(self) -> &'static str {
        match self {
            Self::Final => "use_latest",
            Self::Seed { .. } => "latest_amend",
        }
    }

    fn subscriptions_key(self) -> &'static str {
        match self {
            Self::Final => "message",
            Self::Seed { .. } => "aleph",
        }
    }

    /// Hints for keys that belong to the other dialect.
    fn hints(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Final => &[
                ("latest_amend", "the final form calls it \"use_latest\""),
                ("aleph", "the final form calls it \"message\""),
            ],
            Self::Seed { .. } => &[
                ("use_latest", "the seed draft calls it \"latest_amend\""),
                ("message", "the seed draft calls it \"aleph\""),
                ("type", "in the seed draft it is at the top level"),
                ("address", "in the seed draft it is at the top level"),
                ("time", "in the seed draft it is at the top level"),
            ],
        }
    }
}

/// Reads PROGRAM content at `path`, recording every problem in `errors`.
///
/// Returns `None` only when a problem was recorded; a `Some` may still come with recorded
/// problems (the caller must check `errors`).
pub(crate) fn program_content(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<ProgramContent> {
    let mut allowed = vec![
        "allow_amend",
        "metadata",
        "authorized_keys",
        "variables",
        "code",
        "runtime",
        "data",
        "export",
        "on",
        "environment",
        "resources",
        "volumes",
        "requirements",
        "payment",
        "replaces",
    ];
    if matches!(dialect, Dialect::Final) {
        allowed.extend(["type", "address", "time"]);
    }
    let hints = dialect.hints();
    let obj = Obj::new(errors, path, value, &allowed, hints)?;

    let (address, time, allow_amend) = match dialect {
        Dialect::Final => {
            if let Some(t) = obj.req_str(errors, "type")
                && t != "vm-function"
            {
                errors.push(
                    &obj.path("type"),
                    format!("must be \"vm-function\" for a PROGRAM message, got {t:?}"),
                );
            }
            (
                obj.req_nonempty_str(errors, "address"),
                obj.req_time(errors, "time"),
                obj.req_bool(errors, "allow_amend"),
            )
        }
        Dialect::Seed { address, time } => (
            Some(address.to_owned()),
            Some(time),
            Some(obj.bool_or(errors, "allow_amend", false)),
        ),
    };

    let metadata = obj.opt_object(errors, "metadata").cloned();
    if let Some(m) = &metadata
        && m.len() > MAX_MAP_ENTRIES
    {
        errors.push(
            &obj.path("metadata"),
            format!(
                "must have at most {MAX_MAP_ENTRIES} entries, got {}",
                m.len()
            ),
        );
    }
    let authorized_keys = obj.string_list(errors, "authorized_keys");
    let variables = variables(errors, &obj);

    let code = obj
        .require(errors, "code")
        .and_then(|v| code_content(errors, &obj.path("code"), v, dialect));
    let runtime = obj
        .require(errors, "runtime")
        .and_then(|v| runtime_ref(errors, &obj.path("runtime"), v, dialect));
    let data = obj
        .get("data")
        .and_then(|v| data_content(errors, &obj.path("data"), v, dialect));
    let export = obj
        .get("export")
        .and_then(|v| export_content(errors, &obj.path("export"), v, dialect));
    let on = obj
        .require(errors, "on")
        .and_then(|v| triggers(errors, &obj.path("on"), v, dialect));
    let environment = obj
        .require(errors, "environment")
        .and_then(|v| environment(errors, &obj.path("environment"), v, dialect));
    let resources = obj
        .require(errors, "resources")
        .and_then(|v| resources(errors, &obj.path("resources"), v, dialect));
    let volumes = volumes(errors, &obj, dialect);
    let requirements = requirements(errors, &obj, dialect);
    let payment = payment(errors, &obj, dialect);
    let replaces = obj.opt_str(errors, "replaces");

    check_mounts(errors, &obj, data.as_ref(), export.as_ref(), &volumes);

    Some(ProgramContent {
        address: address?,
        time: time?,
        allow_amend: allow_amend?,
        metadata,
        authorized_keys,
        variables,
        code: code?,
        runtime: runtime?,
        data,
        export,
        on: on?,
        environment: environment?,
        resources: resources?,
        volumes: volumes.into_iter().map(|(_, v)| v).collect(),
        requirements,
        payment,
        replaces,
    })
}

fn variables(errors: &mut Errors, obj: &Obj<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.opt_object(errors, "variables") else {
        return out;
    };
    let base = obj.path("variables");
    if map.len() > MAX_MAP_ENTRIES {
        errors.push(
            &base,
            format!(
                "must have at most {MAX_MAP_ENTRIES} entries, got {}",
                map.len()
            ),
        );
        return out;
    }
    for (name, value) in map {
        let path = key_path(&base, name);
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            errors.push(
                &path,
                "environment variable names must be non-empty and contain neither \"=\" nor NUL",
            );
            continue;
        }
        match value.as_str() {
            Some(s) if s.contains('\0') => {
                errors.push(&path, "environment variable values must not contain NUL");
            }
            Some(s) => {
                out.insert(name.clone(), s.to_owned());
            }
            None => errors.push(&path, format!("expected a string, got {}", describe(value))),
        }
    }
    out
}

/// A `{ref, use_latest}` pair inside `obj`; `use_latest` defaults to `default_latest`.
fn object_ref(
    errors: &mut Errors,
    obj: &Obj<'_>,
    dialect: Dialect<'_>,
    default_latest: bool,
) -> Option<ObjectRef> {
    let use_latest = obj.bool_or(errors, dialect.latest_key(), default_latest);
    let reference = obj.req_str(errors, "ref")?;
    if !is_item_hash(&reference) {
        errors.push(
            &obj.path("ref"),
            format!(
                "must be the item hash of a STORE message (64 lower-case hex characters, \
                 or an IPFS CID \"Qm…\"/\"bafy…\"), got {reference:?}"
            ),
        );
        return None;
    }
    Some(ObjectRef {
        reference,
        use_latest,
    })
}

fn encoding(errors: &mut Errors, obj: &Obj<'_>) -> Option<Encoding> {
    obj.req_enum(
        errors,
        "encoding",
        "encoding",
        ENCODINGS,
        Encoding::from_name,
    )
}

fn mount(errors: &mut Errors, obj: &Obj<'_>, required: bool) -> Option<MountPath> {
    let raw = if required {
        obj.req_str(errors, "mount")?
    } else {
        obj.opt_str(errors, "mount")?
    };
    match MountPath::new(&raw) {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(&obj.path("mount"), e.to_string());
            None
        }
    }
}

fn code_content(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<CodeContent> {
    let latest = dialect.latest_key();
    let allowed = [
        "encoding",
        "entrypoint",
        "ref",
        "content",
        "interface",
        "args",
        latest,
    ];
    let obj = Obj::new(errors, path, value, &allowed, dialect.hints())?;
    let encoding = encoding(errors, &obj);
    let entrypoint = obj.req_nonempty_str(errors, "entrypoint");
    if let Some(e) = &entrypoint
        && e.contains('\0')
    {
        errors.push(&obj.path("entrypoint"), "must not contain NUL");
    }
    let interface = obj.opt_enum(
        errors,
        "interface",
        "interface",
        "asgi, binary",
        Interface::from_name,
    );
    let args = obj.string_list(errors, "args");

    let source = match (obj.has("content"), obj.has("ref")) {
        (true, true) => {
            errors.push(
                &obj.path("ref"),
                "must be absent when code.content (inline source) is given",
            );
            None
        }
        (true, false) => {
            if obj.bool_or(errors, latest, false) {
                errors.push(
                    &obj.path(latest),
                    "only applies to code.ref, not to inline code.content",
                );
            }
            if let Some(enc) = encoding
                && enc != Encoding::Plain
            {
                errors.push(
                    &obj.path("encoding"),
                    format!(
                        "inline code.content must use encoding \"plain\", got {:?}",
                        enc.as_str()
                    ),
                );
            }
            obj.req_str(errors, "content").map(CodeSource::Inline)
        }
        (false, true) => object_ref(errors, &obj, dialect, false).map(CodeSource::Ref),
        (false, false) => {
            errors.push(
                path,
                "needs either \"ref\" (a STORE message holding the code) or \"content\" \
                 (inline source)",
            );
            None
        }
    };

    let entrypoint = entrypoint?;
    let source = source?;
    // Inline source is Python executed for its ASGI callable (the seed's only kind of
    // program); referenced code follows the final form's rule on the entrypoint.
    let default_interface = match source {
        CodeSource::Inline(_) => Interface::Asgi,
        CodeSource::Ref(_) => Interface::infer(&entrypoint),
    };
    Some(CodeContent {
        encoding: encoding?,
        interface: interface.unwrap_or(default_interface),
        entrypoint,
        source,
        args,
    })
}

fn runtime_ref(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<RuntimeRef> {
    let allowed = ["ref", dialect.latest_key(), "comment"];
    let obj = Obj::new(errors, path, value, &allowed, dialect.hints())?;
    let reference = object_ref(errors, &obj, dialect, true);
    let comment = obj.req_str(errors, "comment");
    Some(RuntimeRef {
        reference: reference?,
        comment: comment?,
    })
}

fn data_content(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<DataContent> {
    let allowed = ["encoding", "mount", "ref", dialect.latest_key()];
    let obj = Obj::new(errors, path, value, &allowed, dialect.hints())?;
    let encoding = encoding(errors, &obj);
    let mount = mount(errors, &obj, true);
    let reference = object_ref(errors, &obj, dialect, false);
    Some(DataContent {
        encoding: encoding?,
        mount: mount?,
        reference: reference?,
    })
}

fn export_content(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<ExportContent> {
    let obj = Obj::new(errors, path, value, &["encoding", "mount"], dialect.hints())?;
    let encoding = encoding(errors, &obj);
    let mount = mount(errors, &obj, true);
    Some(ExportContent {
        encoding: encoding?,
        mount: mount?,
    })
}

fn triggers(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<Triggers> {
    let subscriptions_key = dialect.subscriptions_key();
    let allowed = ["http", "persistent", "cron", subscriptions_key];
    let obj = Obj::new(errors, path, value, &allowed, dialect.hints())?;
    let http = obj.req_bool(errors, "http");
    let persistent = obj.bool_or(errors, "persistent", false);
    let cron = obj.opt_str(errors, "cron");
    if let Some(expr) = &cron
        && let Err(why) = validate_cron(expr)
    {
        errors.push(&obj.path("cron"), why);
    }
    let mut message = Vec::new();
    if let Some(items) = obj.opt_array(errors, subscriptions_key) {
        let base = obj.path(subscriptions_key);
        for (i, item) in items.iter().enumerate() {
            let item_path = index_path(&base, i);
            match item.as_object() {
                Some(map) if map.len() > MAX_SUBSCRIPTION_KEYS => errors.push(
                    &item_path,
                    format!(
                        "a subscription must have at most {MAX_SUBSCRIPTION_KEYS} keys, got {}",
                        map.len()
                    ),
                ),
                Some(map) => message.push(map.clone()),
                None => errors.push(
                    &item_path,
                    format!(
                        "expected an object (a subscription), got {}",
                        describe(item)
                    ),
                ),
            }
        }
    }
    Some(Triggers {
        http: http?,
        persistent,
        cron,
        message,
    })
}

fn environment(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<Environment> {
    let allowed = ["reproducible", "internet", "aleph_api", "shared_cache"];
    let obj = Obj::new(errors, path, value, &allowed, dialect.hints())?;
    Some(Environment {
        reproducible: obj.bool_or(errors, "reproducible", false),
        internet: obj.bool_or(errors, "internet", false),
        aleph_api: obj.bool_or(errors, "aleph_api", false),
        shared_cache: obj.bool_or(errors, "shared_cache", false),
    })
}

fn resources(
    errors: &mut Errors,
    path: &str,
    value: &Value,
    dialect: Dialect<'_>,
) -> Option<Resources> {
    let allowed = ["vcpus", "memory", "seconds", "published_ports"];
    let obj = Obj::new(errors, path, value, &allowed, dialect.hints())?;
    let vcpus = obj.uint_in(errors, "vcpus", Some(1), 1, Some(MAX_VCPUS), "");
    let memory = obj.uint_in(errors, "memory", Some(128), 1, Some(MAX_MEMORY_MIB), " MiB");
    let seconds = obj.uint_in(errors, "seconds", Some(1), 1, None, " second(s)");
    let published_ports = obj.opt_array(errors, "published_ports").map(|ports| {
        let base = obj.path("published_ports");
        for (i, port) in ports.iter().enumerate() {
            if !port.is_object() {
                errors.push(
                    &index_path(&base, i),
                    format!("expected an object, got {}", describe(port)),
                );
            }
        }
        Value::Array(ports.clone())
    });
    Some(Resources {
        vcpus: u32::try_from(vcpus?).ok()?,
        memory_mib: memory?,
        seconds: seconds?,
        published_ports,
    })
}

/// The volumes with their JSON paths (invalid ones are reported and left out).
fn volumes(errors: &mut Errors, obj: &Obj<'_>, dialect: Dialect<'_>) -> Vec<(String, Volume)> {
    let Some(items) = obj.opt_array(errors, "volumes") else {
        return Vec::new();
    };
    let base = obj.path("volumes");
    if items.len() > MAX_VOLUMES {
        errors.push(
            &base,
            format!(
                "must have at most {MAX_VOLUMES} volumes, got {}",
                items.len()
            ),
        );
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let path = index_path(&base, i);
            volume(errors, &path, item, dialect).map(|v| (path, v))
        })
        .collect()
}

fn volume(errors: &mut Errors, path: &str, value: &Value, dialect: Dialect<'_>) -> Option<Volume> {
    let latest = dialect.latest_key();
    let map = Obj::any_keys(errors, path, value)?.map();
    let present = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
    let hints = dialect.hints();
    if present("ref") {
        let obj = Obj::new(
            errors,
            path,
            value,
            &["comment", "mount", "ref", latest],
            hints,
        )?;
        let comment = obj.opt_str(errors, "comment");
        let mount = mount(errors, &obj, false);
        let reference = object_ref(errors, &obj, dialect, true)?;
        Some(Volume::Immutable {
            mount,
            reference,
            comment,
        })
    } else if present("name") || present("persistence") || present("parent") {
        let allowed = [
            "comment",
            "mount",
            "parent",
            "persistence",
            "name",
            "size_mib",
        ];
        let obj = Obj::new(errors, path, value, &allowed, hints)?;
        let comment = obj.opt_str(errors, "comment");
        let mount = mount(errors, &obj, false);
        let name = obj.req_nonempty_str(errors, "name");
        if let Some(n) = &name
            && (n == "."
                || n == ".."
                || n.len() > 255
                || n.chars().any(|c| c == '/' || c == '\\' || c.is_control()))
        {
            errors.push(
                &obj.path("name"),
                format!(
                    "must be usable as a file name (at most 255 bytes, not \".\" or \"..\", \
                     no \"/\", \"\\\" or control characters), got {n:?}"
                ),
            );
        }
        let persistence = obj.req_enum(
            errors,
            "persistence",
            "persistence",
            "host, store",
            Persistence::from_name,
        );
        let size_mib = obj.uint_in(errors, "size_mib", None, 1, None, " MiB");
        let parent = obj.get("parent").and_then(|v| {
            let parent_obj = Obj::new(errors, &obj.path("parent"), v, &["ref", latest], hints)?;
            object_ref(errors, &parent_obj, dialect, true)
        });
        Some(Volume::Persistent {
            mount,
            name: name?,
            size_mib: size_mib?,
            persistence: persistence?,
            parent,
            comment,
        })
    } else if present("ephemeral") || present("size_mib") {
        let allowed = ["comment", "mount", "ephemeral", "size_mib"];
        let obj = Obj::new(errors, path, value, &allowed, hints)?;
        let comment = obj.opt_str(errors, "comment");
        let mount = mount(errors, &obj, false);
        if !obj.bool_or(errors, "ephemeral", true) {
            errors.push(
                &obj.path("ephemeral"),
                "must be true (an ephemeral volume); a persistent volume needs \"name\" and \
                 \"persistence\"",
            );
        }
        let size_mib = obj.uint_in(errors, "size_mib", None, 1, Some(MAX_EPHEMERAL_MIB), " MiB");
        Some(Volume::Ephemeral {
            mount,
            size_mib: size_mib?,
            comment,
        })
    } else {
        errors.push(
            path,
            "cannot tell the volume kind: expected \"ref\" (immutable), \"ephemeral\": true \
             with \"size_mib\" (ephemeral), or \"name\", \"persistence\" and \"size_mib\" \
             (persistent)",
        );
        None
    }
}

fn requirements(errors: &mut Errors, obj: &Obj<'_>, dialect: Dialect<'_>) -> Option<Value> {
    let value = obj.get("requirements")?;
    let req = Obj::new(
        errors,
        &obj.path("requirements"),
        value,
        &["cpu", "node", "gpu"],
        dialect.hints(),
    )?;
    req.opt_object(errors, "cpu");
    req.opt_object(errors, "node");
    req.opt_array(errors, "gpu");
    Some(value.clone())
}

fn payment(errors: &mut Errors, obj: &Obj<'_>, dialect: Dialect<'_>) -> Option<Value> {
    let value = obj.get("payment")?;
    let pay = Obj::new(
        errors,
        &obj.path("payment"),
        value,
        &["chain", "receiver", "type"],
        dialect.hints(),
    )?;
    pay.opt_str(errors, "chain");
    pay.opt_str(errors, "receiver");
    pay.req_enum(
        errors,
        "type",
        "payment type",
        "hold, superfluid, credit",
        |s| matches!(s, "hold" | "superfluid" | "credit").then_some(()),
    );
    Some(value.clone())
}

/// Reports mounts that equal or nest with another (data and export may be equal).
fn check_mounts(
    errors: &mut Errors,
    obj: &Obj<'_>,
    data: Option<&DataContent>,
    export: Option<&ExportContent>,
    volumes: &[(String, Volume)],
) {
    let mut mounts = Vec::new();
    if let Some(d) = data {
        mounts.push((
            key_path(&obj.path("data"), "mount"),
            MountRole::Data,
            &d.mount,
        ));
    }
    if let Some(e) = export {
        mounts.push((
            key_path(&obj.path("export"), "mount"),
            MountRole::Export,
            &e.mount,
        ));
    }
    for (path, volume) in volumes {
        if let Some(m) = volume.mount() {
            mounts.push((key_path(path, "mount"), MountRole::Volume, m));
        }
    }
    for (path, message) in overlapping_mounts(&mounts) {
        errors.push(&path, message);
    }
}
