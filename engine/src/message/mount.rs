//! Mount paths: the validated, normalised absolute paths where data, export and volumes
//! appear inside the sandbox, and the rule that no two of them overlap.

use std::fmt;

use serde::{Serialize, Serializer};

/// Longest mount path accepted, in bytes.
pub const MAX_MOUNT_PATH_LEN: usize = 4096;
/// Longest single component of a mount path, in bytes.
pub const MAX_MOUNT_COMPONENT_LEN: usize = 255;

/// Why a string is not a valid [`MountPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountPathError {
    /// The path does not start with `/`.
    #[error("must be an absolute path (starting with \"/\"), got {0:?}")]
    NotAbsolute(String),
    /// The path is `/` itself, which would shadow the whole filesystem.
    #[error("must not be the root directory \"/\"")]
    Root,
    /// The path has a `..` component.
    #[error("must not contain a \"..\" component, got {0:?}")]
    DotDot(String),
    /// The path has `.` components, empty components (`//`) or a trailing `/`.
    #[error("must be normalised (no \".\" components, no \"//\", no trailing \"/\"), got {0:?}")]
    NotNormalised(String),
    /// The path contains a control character (including NUL).
    #[error("must contain only printable characters, got {0:?}")]
    NotPrintable(String),
    /// The path, or one of its components, is too long.
    #[error(
        "is too long (at most {MAX_MOUNT_PATH_LEN} bytes, {MAX_MOUNT_COMPONENT_LEN} per component)"
    )]
    TooLong,
}

/// An absolute, normalised mount path inside the sandbox.
///
/// Guaranteed: starts with `/`; is not `/`; has no empty, `.` or `..` component; has no
/// trailing `/`; has no control characters; is at most [`MAX_MOUNT_PATH_LEN`] bytes with
/// components of at most [`MAX_MOUNT_COMPONENT_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountPath(String);

impl MountPath {
    /// Validates `path` as a mount path.
    pub fn new(path: &str) -> Result<Self, MountPathError> {
        if path.chars().any(char::is_control) {
            return Err(MountPathError::NotPrintable(path.to_owned()));
        }
        if path.len() > MAX_MOUNT_PATH_LEN {
            return Err(MountPathError::TooLong);
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(MountPathError::NotAbsolute(path.to_owned()));
        };
        if rest.is_empty() {
            return Err(MountPathError::Root);
        }
        let components: Vec<&str> = rest.split('/').collect();
        if components.contains(&"..") {
            return Err(MountPathError::DotDot(path.to_owned()));
        }
        if components.iter().any(|c| c.is_empty() || *c == ".") {
            return Err(MountPathError::NotNormalised(path.to_owned()));
        }
        if components.iter().any(|c| c.len() > MAX_MOUNT_COMPONENT_LEN) {
            return Err(MountPathError::TooLong);
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as a string, e.g. `/opt/venv`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components after the leading `/`, e.g. `["opt", "venv"]`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        let rest = self.0.strip_prefix('/').unwrap_or(&self.0);
        rest.split('/')
    }

    /// Whether `other` is this path or lies below it (`/data` contains `/data/x`, not `/database`).
    pub fn contains(&self, other: &MountPath) -> bool {
        other
            .0
            .strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Whether the two paths are equal or one lies below the other.
    pub fn overlaps(&self, other: &MountPath) -> bool {
        self.contains(other) || other.contains(self)
    }
}

impl fmt::Display for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MountPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for MountPath {
    type Err = MountPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for MountPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// What a mount belongs to, for the overlap rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MountRole {
    /// `content.data.mount`.
    Data,
    /// `content.export.mount`.
    Export,
    /// A volume's mount.
    Volume,
}

/// Reports every mount that equals or nests with an earlier one, as `(path, message)` at the
/// later mount's JSON path. `export.mount` may equal (but not nest with) `data.mount`: the data
/// is then unpacked into the export directory.
pub(crate) fn overlapping_mounts(
    mounts: &[(String, MountRole, &MountPath)],
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (j, (path_j, role_j, mount_j)) in mounts.iter().enumerate() {
        for (path_i, role_i, mount_i) in mounts.iter().take(j) {
            let data_export = matches!(
                (role_i, role_j),
                (MountRole::Data, MountRole::Export) | (MountRole::Export, MountRole::Data)
            );
            if data_export && mount_i == mount_j {
                continue;
            }
            if mount_i.overlaps(mount_j) {
                let how = if mount_i == mount_j {
                    "is the same as"
                } else if mount_i.contains(mount_j) {
                    "lies inside"
                } else {
                    "contains"
                };
                found.push((
                    path_j.clone(),
                    format!(
                        "mount {:?} {how} {path_i} {:?}",
                        mount_j.as_str(),
                        mount_i.as_str()
                    ),
                ));
                break;
            }
        }
    }
    found
}
