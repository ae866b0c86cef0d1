//! Volumes: everything a program sees as a directory, made ready before it runs and collected
//! after.
//!
//! - code archives: unpacked once per object into the cache, mounted read-only at [`CODE_MOUNT`];
//! - `data`: unpacked into a private per-execution directory at `data.mount` (read-only,
//!   unless the export mount is the same path: then the data is the export's starting point);
//! - `export`: a writable, size-capped directory at `export.mount`, packed byte-reproducibly
//!   after the run and stored;
//! - immutable volumes: a stored archive unpacked once into the cache, mounted read-only;
//! - ephemeral volumes: empty, writable, `size_mib` enforced, gone after the run;
//! - persistent volumes (`persistence: host`): kept in the store per owner and name,
//!   `size_mib` enforced.

pub mod archive;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::message::{Encoding, MountPath, ObjectRef, ProgramContent, Volume};
use crate::sandbox::{MountOrigin, Preopen};
use crate::store::{Resolved, Store};

use self::archive::{ArchiveFormat, PackFormat, UnpackLimits};

/// Where an unpacked code archive is mounted (read-only). No other mount may overlap it.
pub const CODE_MOUNT: &str = "/opt/code";

/// The file name a `plain` data object gets inside its mount.
pub const PLAIN_DATA_NAME: &str = "data";

/// Limits on what the volumes of one execution may take on the host.
#[derive(Debug, Clone)]
pub struct VolumeLimits {
    /// Caps on unpacking any archive (code, data, immutable volumes).
    pub unpack: UnpackLimits,
    /// The most bytes the export mount may hold. By default 1 GiB.
    pub export_bytes: u64,
}

impl Default for VolumeLimits {
    fn default() -> Self {
        VolumeLimits {
            unpack: UnpackLimits::default(),
            export_bytes: 1 << 30,
        }
    }
}

/// What went wrong preparing or collecting a volume. The message names the volume.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct VolumeError {
    /// Which mount or field (e.g. `content.volumes[1]`, `content.data`).
    pub what: String,
    /// Why it failed.
    pub reason: String,
}

fn err(what: impl Into<String>, reason: impl ToString) -> VolumeError {
    VolumeError {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// An object resolved for this execution, with the field that named it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedInput {
    /// The message field, e.g. `content.code`, `content.volumes[0]`.
    pub field: String,
    /// The resolution.
    pub resolved: Resolved,
}

/// The export mount's host directory and what to pack it as.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    /// The host directory behind `export.mount`.
    pub dir: PathBuf,
    /// The archive format.
    pub format: PackFormat,
}

/// What the export produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExportInfo {
    /// sha256 of the archive.
    pub file_hash: String,
    /// The item hash of the STORE message written for it.
    #[serde(rename = "ref")]
    pub reference: String,
    /// sha256 of the uncompressed tar stream (tar.gz exports only).
    pub tar_sha256: Option<String>,
}

/// The mounts of one execution, ready to preopen.
#[derive(Debug)]
pub struct Mounts {
    /// The directories to preopen, in a fixed order.
    pub preopens: Vec<Preopen>,
    /// The export, when the program has one.
    pub export: Option<ExportPlan>,
    /// Every object the mounts were made from.
    pub inputs: Vec<ResolvedInput>,
}

/// The archive format of a message encoding.
pub fn archive_format(encoding: Encoding) -> ArchiveFormat {
    match encoding {
        Encoding::Plain => ArchiveFormat::Plain,
        Encoding::Zip => ArchiveFormat::Zip,
        Encoding::TarGz => ArchiveFormat::TarGz,
        Encoding::Squashfs => ArchiveFormat::Squashfs,
    }
}

/// Unpacks a stored archive once into the cache and returns the (shared, read-only) directory.
pub fn unpack_cached(
    store: &Store,
    resolved: &Resolved,
    format: ArchiveFormat,
    plain_name: &str,
    limits: &UnpackLimits,
) -> Result<PathBuf, VolumeError> {
    let what = format!("object {}", resolved.file_hash);
    let cache = store.cache_dir("unpacked").map_err(|e| err(&what, e))?;
    let tag = match format {
        ArchiveFormat::Plain => format!("plain-{plain_name}"),
        ArchiveFormat::Zip => "zip".to_string(),
        ArchiveFormat::TarGz => "tar.gz".to_string(),
        ArchiveFormat::Squashfs => "squashfs".to_string(),
    };
    let final_dir = cache.join(format!("{}.{tag}", resolved.file_hash));
    if final_dir.join(".complete").is_file() {
        return Ok(final_dir.join("root"));
    }
    let work = tempfile::tempdir_in(store.tmp_dir()).map_err(|e| err(&what, e))?;
    let root = work.path().join("root");
    fs::create_dir(&root).map_err(|e| err(&what, e))?;
    archive::unpack(&resolved.path, format, &root, plain_name, limits)
        .map_err(|e| err(&what, e))?;
    fs::write(work.path().join(".complete"), b"").map_err(|e| err(&what, e))?;
    let work = work.keep();
    if let Err(e) = fs::rename(&work, &final_dir) {
        let _ = fs::remove_dir_all(&work);
        if !final_dir.join(".complete").is_file() {
            return Err(err(&what, e));
        }
    }
    Ok(final_dir.join("root"))
}

/// [`unpack_cached`] for an object stored with a message `encoding`.
pub fn unpack_encoded(
    store: &Store,
    resolved: &Resolved,
    encoding: Encoding,
    plain_name: &str,
    limits: &UnpackLimits,
) -> Result<PathBuf, VolumeError> {
    unpack_cached(
        store,
        resolved,
        archive_format(encoding),
        plain_name,
        limits,
    )
}

/// Guesses the format of a stored immutable volume from its first bytes.
fn sniff_format(path: &Path) -> Result<ArchiveFormat, String> {
    let mut head = [0u8; 4];
    let mut f = fs::File::open(path).map_err(|e| e.to_string())?;
    let n = f.read(&mut head).map_err(|e| e.to_string())?;
    match &head[..n] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Ok(ArchiveFormat::Zip),
        [0x1f, 0x8b, ..] => Ok(ArchiveFormat::TarGz),
        b"hsqs" => Ok(ArchiveFormat::Squashfs),
        _ => Err("not a zip, tar.gz or squashfs image".into()),
    }
}

/// Resolves and makes ready every mount of `program` (data, export, volumes) under the private
/// per-execution directory `exec_dir`. `code_dir` is the unpacked code, when the code is an
/// archive; `reserved` lists the engine's own mount points, which no program mount may
/// overlap. The order of the preopens is fixed: code, data, export, then volumes in message
/// order.
pub fn prepare(
    store: &Store,
    program: &ProgramContent,
    code_dir: Option<&Path>,
    reserved: &[&str],
    exec_dir: &Path,
    limits: &VolumeLimits,
) -> Result<Mounts, VolumeError> {
    let mut mounts = Mounts {
        preopens: Vec::new(),
        export: None,
        inputs: Vec::new(),
    };
    check_reserved(program, reserved)?;
    if let Some(dir) = code_dir {
        mounts.preopens.push(Preopen {
            host: dir.to_path_buf(),
            guest: CODE_MOUNT.to_string(),
            writable: false,
            quota_bytes: None,
            origin: MountOrigin::Shared,
        });
    }
    let export_mount = program
        .export
        .as_ref()
        .map(|e| e.mount.as_str().to_string());
    if let Some(data) = &program.data {
        let field = "content.data";
        let resolved = resolve(store, field, &data.reference)?;
        let format = archive_format(data.encoding);
        let dir = exec_dir.join("data");
        fs::create_dir(&dir).map_err(|e| err(field, e))?;
        archive::unpack(
            &resolved.path,
            format,
            &dir,
            PLAIN_DATA_NAME,
            &limits.unpack,
        )
        .map_err(|e| err(field, e))?;
        let is_export = export_mount.as_deref() == Some(data.mount.as_str());
        mounts.preopens.push(Preopen {
            host: dir.clone(),
            guest: data.mount.as_str().to_string(),
            writable: is_export,
            quota_bytes: is_export.then_some(limits.export_bytes),
            origin: MountOrigin::PerExecution,
        });
        mounts.inputs.push(ResolvedInput {
            field: field.into(),
            resolved,
        });
        if is_export {
            mounts.export = Some(export_plan(program, dir)?);
        }
    }
    if let (Some(export), None) = (&program.export, &mounts.export) {
        let dir = exec_dir.join("export");
        fs::create_dir(&dir).map_err(|e| err("content.export", e))?;
        mounts.preopens.push(Preopen {
            host: dir.clone(),
            guest: export.mount.as_str().to_string(),
            writable: true,
            quota_bytes: Some(limits.export_bytes),
            origin: MountOrigin::PerExecution,
        });
        mounts.export = Some(export_plan(program, dir)?);
    }
    for (i, volume) in program.volumes.iter().enumerate() {
        let field = format!("content.volumes[{i}]");
        let (preopen, input) = prepare_volume(store, program, volume, &field, exec_dir, i, limits)?;
        mounts.preopens.push(preopen);
        if let Some(resolved) = input {
            mounts.inputs.push(ResolvedInput { field, resolved });
        }
    }
    Ok(mounts)
}

/// Refuses program mounts that overlap the engine's own (`reserved`: the code mount, a
/// runtime's bootstrap mount).
fn check_reserved(program: &ProgramContent, reserved: &[&str]) -> Result<(), VolumeError> {
    for own in reserved {
        let own_path = MountPath::new(own).map_err(|e| err("runtime", e))?;
        if let Some(m) = program.mounts().into_iter().find(|m| m.overlaps(&own_path)) {
            return Err(err(
                format!("mount {m}"),
                format!("overlaps {own}, where the engine mounts its own files"),
            ));
        }
    }
    Ok(())
}

fn export_plan(program: &ProgramContent, dir: PathBuf) -> Result<ExportPlan, VolumeError> {
    let Some(export) = &program.export else {
        return Err(err("content.export", "missing"));
    };
    let format = match export.encoding {
        Encoding::Zip => PackFormat::Zip,
        Encoding::TarGz => PackFormat::TarGz,
        other => {
            return Err(err(
                "content.export.encoding",
                format!("exports are packed as zip or tar.gz, not {other:?}"),
            ));
        }
    };
    Ok(ExportPlan { dir, format })
}

fn resolve(store: &Store, field: &str, r: &ObjectRef) -> Result<Resolved, VolumeError> {
    store.resolve(r).map_err(|e| err(field, e))
}

fn prepare_volume(
    store: &Store,
    program: &ProgramContent,
    volume: &Volume,
    field: &str,
    exec_dir: &Path,
    index: usize,
    limits: &VolumeLimits,
) -> Result<(Preopen, Option<Resolved>), VolumeError> {
    let no_mount = || {
        err(
            field,
            "a volume without a mount is a raw drive, which the Wasm sandbox cannot attach",
        )
    };
    match volume {
        Volume::Immutable {
            mount, reference, ..
        } => {
            let mount = mount.as_ref().ok_or_else(no_mount)?;
            let resolved = resolve(store, field, reference)?;
            let format = sniff_format(&resolved.path).map_err(|e| err(field, e))?;
            let dir = unpack_cached(store, &resolved, format, PLAIN_DATA_NAME, &limits.unpack)
                .map_err(|e| err(field, e))?;
            Ok((
                Preopen {
                    host: dir,
                    guest: mount.as_str().to_string(),
                    writable: false,
                    quota_bytes: None,
                    origin: MountOrigin::Shared,
                },
                Some(resolved),
            ))
        }
        Volume::Ephemeral {
            mount, size_mib, ..
        } => {
            let mount = mount.as_ref().ok_or_else(no_mount)?;
            let dir = exec_dir.join(format!("ephemeral-{index}"));
            fs::create_dir(&dir).map_err(|e| err(field, e))?;
            Ok((
                Preopen {
                    host: dir,
                    guest: mount.as_str().to_string(),
                    writable: true,
                    quota_bytes: Some(size_mib.saturating_mul(1 << 20)),
                    origin: MountOrigin::PerExecution,
                },
                None,
            ))
        }
        Volume::Persistent {
            mount,
            name,
            size_mib,
            persistence,
            ..
        } => {
            if *persistence == crate::message::Persistence::Store {
                return Err(err(
                    format!("{field}.persistence"),
                    "\"store\" is not supported yet (use \"host\")",
                ));
            }
            let mount = mount.as_ref().ok_or_else(no_mount)?;
            let dir = store
                .volume_dir(&program.address, name)
                .map_err(|e| err(field, e))?;
            Ok((
                Preopen {
                    host: dir,
                    guest: mount.as_str().to_string(),
                    writable: true,
                    quota_bytes: Some(size_mib.saturating_mul(1 << 20)),
                    origin: MountOrigin::Persistent,
                },
                None,
            ))
        }
    }
}

/// Packs the export directory, stores the archive and a STORE message for it (owned by
/// `owner`, at `time`), and returns what was stored.
pub fn collect_export(
    store: &Store,
    plan: &ExportPlan,
    owner: &str,
    time: f64,
) -> Result<ExportInfo, VolumeError> {
    let what = "content.export";
    let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir()).map_err(|e| err(what, e))?;
    let report = archive::pack(&plan.dir, plan.format, tmp.path()).map_err(|e| err(what, e))?;
    let msg = store
        .add_file(tmp.path(), owner, time, None)
        .map_err(|e| err(what, e))?;
    Ok(ExportInfo {
        file_hash: report.sha256,
        reference: msg.item_hash,
        tar_sha256: report.tar_sha256,
    })
}
