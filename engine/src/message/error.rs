//! The validation error: every problem found in a message, each at an exact JSON path.

use std::fmt;

/// Most errors one [`MessageError`] keeps; beyond that only a count is reported.
pub(crate) const MAX_ERRORS: usize = 64;

/// One problem in a message, at one JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the offending value, e.g. `content.resources.memory` or
    /// `content.volumes[2].persistence`; empty for the document itself.
    pub path: String,
    /// What is wrong, naming the rule (and the value when it helps).
    pub message: String,
}

impl FieldError {
    /// Makes an error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A message that failed validation: one or more [`FieldError`]s, in document order.
///
/// Displayed as one line per error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError {
    /// The problems found; never empty.
    pub errors: Vec<FieldError>,
}

impl MessageError {
    /// Makes an error holding a single problem.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError::new(path, message)],
        }
    }

    /// The first problem found.
    pub fn first(&self) -> Option<&FieldError> {
        self.errors.first()
    }

    /// The paths of all problems, in order (handy in tests and logs).
    pub fn paths(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.path.as_str()).collect()
    }

    /// The first problem reported at exactly `path`, if any.
    pub fn at(&self, path: &str) -> Option<&FieldError> {
        self.errors.iter().find(|e| e.path == path)
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MessageError {}

/// Collects errors during one validation pass, capped at [`MAX_ERRORS`].
#[derive(Debug, Default)]
pub(crate) struct Errors {
    list: Vec<FieldError>,
    dropped: usize,
}

impl Errors {
    /// Records a problem at `path`.
    pub(crate) fn push(&mut self, path: &str, message: impl Into<String>) {
        if self.list.len() < MAX_ERRORS {
            self.list.push(FieldError::new(path, message));
        } else {
            self.dropped += 1;
        }
    }

    /// `Ok(value)` when nothing was recorded, else every problem.
    ///
    /// `value` is `None` only when a problem made the value impossible to build, so a
    /// `None` with no recorded problem is reported as an internal error rather than a panic.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, MessageError> {
        match (self.into_error(), value) {
            (None, Some(v)) => Ok(v),
            (Some(e), _) => Err(e),
            (None, None) => Err(MessageError::single(
                "",
                "internal error: validation produced no value and no error",
            )),
        }
    }

    /// The recorded problems as a [`MessageError`], or `None` when there are none.
    pub(crate) fn into_error(mut self) -> Option<MessageError> {
        if self.list.is_empty() {
            return None;
        }
        if self.dropped > 0 {
            self.list.push(FieldError::new(
                "",
                format!("... and {} more errors not shown", self.dropped),
            ));
        }
        Some(MessageError { errors: self.list })
    }
}
