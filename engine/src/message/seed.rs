//! The seed's draft form: `{"type": "vm-function", "address", "content", "time"}`,
//! normalised into a final-form inline `PROGRAM` message.

use serde_json::Value;

use super::error::{Errors, MessageError};
use super::model::{Message, MessageType};
use super::parse::try_build_inline;
use super::program::{Dialect, program_content};
use super::reader::Obj;

/// Chain given to messages normalised from a seed draft (the draft names none; its
/// addresses are Ethereum addresses).
pub const SEED_CHAIN: &str = "ETH";

/// Whether `value` is a seed draft: an object whose top-level `type` is `"vm-function"`.
pub(crate) fn is_seed_draft(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("vm-function")
}

/// Validates a seed draft (errors use the draft's own paths, e.g. `content.code.encoding`)
/// and rebuilds it as a final-form inline PROGRAM message with [`try_build_inline`]:
/// chain [`SEED_CHAIN`], sender = `address`, content in the final form with `type`,
/// `address` and `time` added.
pub(crate) fn parse_seed(value: &Value) -> Result<Message, MessageError> {
    let mut errors = Errors::default();
    let Some(obj) = Obj::new(
        &mut errors,
        "",
        value,
        &["type", "address", "content", "time"],
        &[],
    ) else {
        return errors.finish(None);
    };
    let address = obj.req_nonempty_str(&mut errors, "address");
    let time = obj.req_time(&mut errors, "time");
    let content = obj.require(&mut errors, "content");
    let program = match (&address, time, content) {
        (Some(address), Some(time), Some(content)) => program_content(
            &mut errors,
            "content",
            content,
            Dialect::Seed { address, time },
        ),
        (_, _, Some(content)) => {
            // Still report the content's problems, with placeholder owner and time.
            let dialect = Dialect::Seed {
                address: "",
                time: 0.0,
            };
            program_content(&mut errors, "content", content, dialect);
            None
        }
        _ => None,
    };
    let program = errors.finish(program)?;
    let content = serde_json::to_value(&program)
        .map_err(|e| MessageError::single("content", format!("cannot serialise: {e}")))?;
    try_build_inline(
        MessageType::Program,
        SEED_CHAIN,
        &program.address,
        program.time,
        content,
    )
}
