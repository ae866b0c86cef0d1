//! Which executions are reproducible and what keys their determinism profile.
//!
//! A program with `environment.reproducible: true` runs under the sandbox's determinism
//! profile, keyed by the message's item hash while it boots and by the item hash and the
//! trigger from its first event on, with clocks that start at the message's `time`.
//! `internet` (its answers are not recorded inputs) and state that lives outside the inputs
//! (persistent volumes kept on the host) cannot be part of a reproducible execution: such a
//! message is refused, naming the field. `aleph_api` is granted as content-addressed reads of
//! the node's store only ([`crate::host::recorded`]); what was read goes into the outcome
//! ([`record_reads`]) and from there into the receipt.

use crate::host::recorded::ReadLog;
use crate::interface::Trigger;
use crate::message::{Message, ProgramContent, Volume};
use crate::outcome::{Outcome, OutcomeKind};
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

/// Puts what the execution read (`log`, for a reproducible execution) into `outcome`; a store
/// that failed to answer a read makes the outcome inconclusive (the host's fault, not the
/// program's).
pub(super) fn record_reads(outcome: &mut Outcome, log: Option<&ReadLog>) {
    let Some(log) = log else {
        return;
    };
    outcome.reads = log.reads();
    if let Some(fault) = log.host_fault()
        && outcome.kind != OutcomeKind::Inconclusive
    {
        outcome.kind = OutcomeKind::Inconclusive;
        outcome.error = Some(format!(
            "the node's store could not answer a read of the program: {fault}"
        ));
    }
}
