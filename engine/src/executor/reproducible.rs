//! Which executions are reproducible and what keys their determinism profile.
//!
//! A program with `environment.reproducible: true` runs under the sandbox's determinism
//! profile, keyed by the message's item hash while it boots and by the item hash and the
//! trigger from its first event on, with clocks that start at the message's `time`. Capabilities whose results are not recorded inputs (`internet`,
//! `aleph_api`) and state that lives outside the inputs (persistent volumes kept on the host)
//! cannot be part of a reproducible execution: such a message is refused, naming the field.

use crate::interface::Trigger;
use crate::message::{Message, ProgramContent, Volume};
use crate::sandbox::determinism::Determinism;

/// The determinism profile of one execution: `None` for a program that is not reproducible,
/// an error naming the field that a reproducible program may not have.
pub fn profile(
    msg: &Message,
    program: &ProgramContent,
    trigger: &Trigger,
) -> Result<Option<Determinism>, String> {
    let env = &program.environment;
    if !env.reproducible {
        return Ok(None);
    }
    if env.internet {
        return Err(
            "content.environment.internet: a reproducible program cannot have \
                    internet access (its results would not be recorded inputs)"
                .into(),
        );
    }
    if env.aleph_api {
        return Err(
            "content.environment.aleph_api: a reproducible program cannot use the \
                    Aleph API (its answers would not be recorded inputs)"
                .into(),
        );
    }
    for (i, v) in program.volumes.iter().enumerate() {
        if matches!(v, Volume::Persistent { .. }) {
            return Err(format!(
                "content.volumes[{i}]: a persistent volume keeps state outside the inputs; a \
                 reproducible program can use immutable and ephemeral volumes only"
            ));
        }
    }
    let trigger = crate::message::canonical_hash(&trigger.describe());
    Ok(Some(Determinism::keyed(
        &[&msg.item_hash],
        &[&trigger],
        program.time,
    )))
}
