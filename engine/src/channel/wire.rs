//! The AW4 wire format: frames as bytes, and back (`docs/channel.md`).
//!
//! A frame is the magic `\x1eAW2` (AW2's framing, which AW4 keeps), a u32 LE length, a kind
//! byte, a u32 LE id and a payload. The `HTTP` and `START` payloads are laid out so that the
//! guest decodes and encodes them with a few calls into C (an unpack, a split, a join) instead
//! of Python code per field (AW3), and a request without a body is one `HTTP_EMPTY` frame
//! rather than `HTTP` and an empty `BODY` (AW4).
//! [`Frame`] is the typed form of every kind in both directions; [`Frame::encode`] is the only
//! encoder and [`Reader`] the only decoder. Both are checked against the test vectors the
//! guest also checks (`runtimes/python-3.12/aw4-vectors.json`).

use serde_json::Value;

/// The bytes every frame starts with.
pub const MAGIC: &[u8; 4] = b"\x1eAW2";

/// The protocol's name, as the guest reports it in `SERVING`.
pub const PROTOCOL: &str = "AW4";

/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 16 << 20;

const HEADER: usize = 4 + 4 + 1 + 4;

/// An HTTP request's head, as the `HTTP` frame carries it. Every field but `path` is sent
/// joined by NUL, so holds none (HTTP allows none in them); one that does makes the guest
/// refuse the frame as malformed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHead {
    /// The method, upper case.
    pub method: Vec<u8>,
    /// `http` or `https`.
    pub scheme: Vec<u8>,
    /// `1.1`, `2`, ...
    pub http_version: Vec<u8>,
    /// The path, percent-decoded (UTF-8).
    pub path: Vec<u8>,
    /// The path as it was sent.
    pub raw_path: Vec<u8>,
    /// The query string, without `?`.
    pub query_string: Vec<u8>,
    /// The root path (ASGI `root_path`).
    pub root_path: Vec<u8>,
    /// The client's host (empty: unknown) and port.
    pub client: (Vec<u8>, u16),
    /// The server's name and port.
    pub server: (Vec<u8>, u16),
    /// Header names (lower case) and values.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Every frame of the protocol, in both directions.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Host → guest: a request's head; its body follows as [`Frame::Body`].
    Http(u32, Box<RequestHead>),
    /// Host → guest: the head of a request whose body is empty; no [`Frame::Body`] follows.
    HttpEmpty(u32, Box<RequestHead>),
    /// Either way: a part of a body; `more` says whether another part follows.
    Body {
        /// The request.
        id: u32,
        /// Whether more parts follow.
        more: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Host → guest: an event (lifespan, `aleph.cron`, `aleph.message`), as JSON.
    Event(u32, Value),
    /// Host → guest: the host gave up on the request; the guest cancels it.
    Cancel(u32),
    /// Host → guest: the answer to a guest's call.
    Reply(u32, Result<Vec<u8>, CallFailure>),
    /// Guest → host: the app was imported (`{"asgi_version": …}`).
    Ready(Value),
    /// Guest → host: the app could not be imported (`{"message", "traceback"}`).
    BootError(Value),
    /// Guest → host: text the program wrote; `stream` 1 is stdout, 2 stderr; `id` 0 when it
    /// was written outside any request.
    Log {
        /// The request whose task wrote it, or 0.
        id: u32,
        /// 1 stdout, 2 stderr.
        stream: u8,
        /// The text (UTF-8).
        data: Vec<u8>,
    },
    /// Guest → host: `http.response.start`.
    Start {
        /// The request.
        id: u32,
        /// The status code.
        status: u16,
        /// Header names and values.
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Guest → host: the app raised, or returned without a complete response.
    Error(u32, String),
    /// Guest → host: the app sent something that is not ASGI.
    ProtocolError(u32, String),
    /// Guest → host: the result of a lifespan event (`{"result", "message"}`).
    Lifespan(u32, Value),
    /// Guest → host: the last frame of a request or event.
    Done(u32),
    /// Guest → host: the serving loop has started (`{"protocol", "concurrent"}`).
    Serving(Value),
    /// Guest → host: a call of a host function: its name and argument bytes.
    Call {
        /// The call's id (the guest's).
        id: u32,
        /// The function's name.
        name: String,
        /// The argument bytes.
        args: Vec<u8>,
    },
}

/// Why a guest's call failed, as the `REPLY` frame carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// A short machine-readable kind (`unknown_call`, `denied`, …).
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes do not start with the magic.
    #[error("bytes that are not a frame")]
    NotAFrame,
    /// The length is out of range.
    #[error("a frame of {0} bytes (at most {MAX_PAYLOAD} bytes of payload)")]
    Length(usize),
    /// The kind byte is unknown.
    #[error("a frame of unknown kind {0:#04x}")]
    Kind(u8),
    /// The payload does not have its kind's shape.
    #[error("a malformed {kind} frame: {why}")]
    Payload {
        /// The frame's kind.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
}

mod kind {
    pub const HTTP: u8 = 0x01;
    pub const HTTP_EMPTY: u8 = 0x06;
    pub const BODY: u8 = 0x02;
    pub const EVENT: u8 = 0x03;
    pub const CANCEL: u8 = 0x04;
    pub const REPLY: u8 = 0x05;
    pub const READY: u8 = 0x81;
    pub const BOOT_ERROR: u8 = 0x82;
    pub const LOG: u8 = 0x83;
    pub const START: u8 = 0x84;
    pub const OUT_BODY: u8 = 0x85;
    pub const ERROR: u8 = 0x86;
    pub const PROTOCOL_ERROR: u8 = 0x87;
    pub const LIFESPAN: u8 = 0x88;
    pub const DONE: u8 = 0x89;
    pub const SERVING: u8 = 0x8a;
    pub const CALL: u8 = 0x8b;
}

/// Appends the host's `BODY` frame for `data` to `out`: what [`Frame::Body`] encodes to,
/// without first copying a request's body part into a frame of its own.
pub fn encode_body(out: &mut Vec<u8>, id: u32, more: bool, data: &[u8]) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&((data.len() + 6) as u32).to_le_bytes());
    out.push(kind::BODY);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(u8::from(more));
    out.extend_from_slice(data);
}

/// Appends `items` as fields (each a u32 LE length and its bytes).
fn put_fields<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a [u8]>) {
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
}

/// The bytes of an `HTTP` frame's fixed head: path length, text length, header pairs (u32
/// LE each), client port, server port (u16 LE each).
const HTTP_HEAD: usize = 16;

/// Appends an `HTTP` payload: the fixed head, the path, the text fields (method, scheme,
/// version, root path, client host, server name) joined by NUL, then the byte fields (raw path,
/// query string, header names and values) joined by NUL. HTTP allows no NUL in any of the
/// joined fields; one that holds one anyway changes the count of fields, and the guest refuses
/// the frame as malformed rather than reading another request.
fn encode_http(out: &mut Vec<u8>, head: &RequestHead) {
    let text = [
        &head.method[..],
        &head.scheme,
        &head.http_version,
        &head.root_path,
        &head.client.0,
        &head.server.0,
    ];
    let text_len = text.iter().map(|t| t.len()).sum::<usize>() + text.len() - 1;
    let client_port = if head.client.0.is_empty() {
        0
    } else {
        head.client.1
    };
    out.extend_from_slice(&(head.path.len() as u32).to_le_bytes());
    out.extend_from_slice(&(text_len as u32).to_le_bytes());
    out.extend_from_slice(&(head.headers.len() as u32).to_le_bytes());
    out.extend_from_slice(&client_port.to_le_bytes());
    out.extend_from_slice(&head.server.1.to_le_bytes());
    out.extend_from_slice(&head.path);
    put_joined(out, text);
    let pairs = head.headers.iter().flat_map(|(k, v)| [&k[..], &v[..]]);
    put_joined(
        out,
        [&head.raw_path[..], &head.query_string]
            .into_iter()
            .chain(pairs),
    );
}

/// Appends `items` joined by NUL.
fn put_joined<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a [u8]>) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(item);
    }
}

/// The head an `HTTP` payload carries.
fn decode_http(payload: &[u8]) -> Result<RequestHead, WireError> {
    let bad = |why: String| WireError::Payload { kind: "HTTP", why };
    let (head, rest) = payload
        .split_first_chunk::<HTTP_HEAD>()
        .ok_or_else(|| bad(format!("{} of {HTTP_HEAD} head bytes", payload.len())))?;
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (path_len, text_len, pairs) = (u32_at(0) as usize, u32_at(4) as usize, u32_at(8) as usize);
    let client_port = u16::from_le_bytes([head[12], head[13]]);
    let server_port = u16::from_le_bytes([head[14], head[15]]);
    if path_len.saturating_add(text_len) > rest.len() {
        return Err(bad(format!(
            "a path of {path_len} and text of {text_len} bytes overrun the {} left",
            rest.len()
        )));
    }
    let (path, rest) = rest.split_at(path_len);
    let (text, raw) = rest.split_at(text_len);
    let text: Vec<&[u8]> = text.split(|b| *b == 0).collect();
    let raw: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    if text.len() != 6 || Some(raw.len()) != pairs.checked_mul(2).and_then(|n| n.checked_add(2)) {
        return Err(bad(format!(
            "{} text fields (not 6) and {} byte fields (not 2 + 2 × {pairs})",
            text.len(),
            raw.len()
        )));
    }
    Ok(RequestHead {
        method: text[0].to_vec(),
        scheme: text[1].to_vec(),
        http_version: text[2].to_vec(),
        path: path.to_vec(),
        raw_path: raw[0].to_vec(),
        query_string: raw[1].to_vec(),
        root_path: text[3].to_vec(),
        client: (text[4].to_vec(), client_port),
        server: (text[5].to_vec(), server_port),
        headers: raw[2..]
            .chunks(2)
            .map(|p| (p[0].to_vec(), p[1].to_vec()))
            .collect(),
    })
}

/// The fields of `payload`.
fn fields<'a>(kind: &'static str, mut payload: &'a [u8]) -> Result<Vec<&'a [u8]>, WireError> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let bad = |why: &str| WireError::Payload {
            kind,
            why: why.to_string(),
        };
        let len: [u8; 4] = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("a field's length is cut short"))?;
        let len = u32::from_le_bytes(len) as usize;
        let item = payload
            .get(4..4 + len)
            .ok_or_else(|| bad("a field is longer than the frame"))?;
        out.push(item);
        payload = &payload[4 + len..];
    }
    Ok(out)
}

fn json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Frame {
    /// The frame's id (request, call, or 0 for the instance).
    pub fn id(&self) -> u32 {
        match self {
            Frame::Http(id, _)
            | Frame::HttpEmpty(id, _)
            | Frame::Body { id, .. }
            | Frame::Event(id, _)
            | Frame::Cancel(id)
            | Frame::Reply(id, _)
            | Frame::Log { id, .. }
            | Frame::Start { id, .. }
            | Frame::Error(id, _)
            | Frame::ProtocolError(id, _)
            | Frame::Lifespan(id, _)
            | Frame::Done(id)
            | Frame::Call { id, .. } => *id,
            Frame::Ready(_) | Frame::BootError(_) | Frame::Serving(_) => 0,
        }
    }

    /// Appends the frame's bytes to `out` (one frame, never split).
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Frame::Body { id, more, data } = self {
            return encode_body(out, *id, *more, data);
        }
        let start = out.len();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 4]);
        let (kind, id) = self.kind_and_id();
        out.push(kind);
        out.extend_from_slice(&id.to_le_bytes());
        match self {
            Frame::Http(_, head) | Frame::HttpEmpty(_, head) => encode_http(out, head),
            Frame::Body { .. } => unreachable!("encoded by encode_body"),
            Frame::Event(_, v)
            | Frame::Ready(v)
            | Frame::BootError(v)
            | Frame::Lifespan(_, v)
            | Frame::Serving(v) => out.extend_from_slice(&json(v)),
            Frame::Cancel(_) | Frame::Done(_) => {}
            Frame::Reply(_, Ok(data)) => {
                out.push(1);
                out.extend_from_slice(data);
            }
            Frame::Reply(_, Err(f)) => {
                out.push(0);
                put_fields(out, [f.kind.as_bytes(), f.message.as_bytes()]);
            }
            Frame::Log { stream, data, .. } => {
                out.push(*stream);
                out.extend_from_slice(data);
            }
            Frame::Start {
                status, headers, ..
            } => {
                out.extend_from_slice(&status.to_le_bytes());
                out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
                put_joined(out, headers.iter().flat_map(|(k, v)| [&k[..], &v[..]]));
            }
            Frame::Error(_, text) | Frame::ProtocolError(_, text) => {
                out.extend_from_slice(text.as_bytes())
            }
            Frame::Call { name, args, .. } => put_fields(out, [name.as_bytes(), &args[..]]),
        }
        let len = (out.len() - start - 8) as u32;
        out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn kind_and_id(&self) -> (u8, u32) {
        let kind = match self {
            Frame::Http(..) => kind::HTTP,
            Frame::HttpEmpty(..) => kind::HTTP_EMPTY,
            // One body kind a direction; the host only ever encodes request bodies and the
            // guest response bodies, so `Body` encodes as the host's and decodes from both.
            Frame::Body { .. } => kind::BODY,
            Frame::Event(..) => kind::EVENT,
            Frame::Cancel(_) => kind::CANCEL,
            Frame::Reply(..) => kind::REPLY,
            Frame::Ready(_) => kind::READY,
            Frame::BootError(_) => kind::BOOT_ERROR,
            Frame::Log { .. } => kind::LOG,
            Frame::Start { .. } => kind::START,
            Frame::Error(..) => kind::ERROR,
            Frame::ProtocolError(..) => kind::PROTOCOL_ERROR,
            Frame::Lifespan(..) => kind::LIFESPAN,
            Frame::Done(_) => kind::DONE,
            Frame::Serving(_) => kind::SERVING,
            Frame::Call { .. } => kind::CALL,
        };
        (kind, self.id())
    }

    /// Decodes one frame's kind, id and payload.
    pub fn decode(kind: u8, id: u32, payload: &[u8]) -> Result<Frame, WireError> {
        let json_of = |name: &'static str| {
            serde_json::from_slice::<Value>(payload).map_err(|e| WireError::Payload {
                kind: name,
                why: e.to_string(),
            })
        };
        let text_of = || String::from_utf8_lossy(payload).into_owned();
        let flagged = |name: &'static str| {
            payload
                .split_first()
                .map(|(flag, rest)| (*flag, rest.to_vec()))
                .ok_or(WireError::Payload {
                    kind: name,
                    why: "empty payload".into(),
                })
        };
        Ok(match kind {
            kind::HTTP => Frame::Http(id, Box::new(decode_http(payload)?)),
            kind::HTTP_EMPTY => Frame::HttpEmpty(id, Box::new(decode_http(payload)?)),
            kind::BODY | kind::OUT_BODY => {
                let (more, data) = flagged("BODY")?;
                Frame::Body {
                    id,
                    more: more != 0,
                    data,
                }
            }
            kind::EVENT => Frame::Event(id, json_of("EVENT")?),
            kind::CANCEL => Frame::Cancel(id),
            kind::REPLY => {
                let (ok, rest) = flagged("REPLY")?;
                if ok == 1 {
                    Frame::Reply(id, Ok(rest))
                } else {
                    let f = fields("REPLY", &rest)?;
                    let [kind, message] = f[..] else {
                        return Err(WireError::Payload {
                            kind: "REPLY",
                            why: format!("{} fields in a failure", f.len()),
                        });
                    };
                    Frame::Reply(
                        id,
                        Err(CallFailure {
                            kind: String::from_utf8_lossy(kind).into_owned(),
                            message: String::from_utf8_lossy(message).into_owned(),
                        }),
                    )
                }
            }
            kind::READY => Frame::Ready(json_of("READY")?),
            kind::BOOT_ERROR => Frame::BootError(json_of("BOOT_ERROR")?),
            kind::LOG => {
                let (stream, data) = flagged("LOG")?;
                Frame::Log { id, stream, data }
            }
            kind::START => {
                let bad = |why: String| WireError::Payload { kind: "START", why };
                let (head, rest) = payload
                    .split_first_chunk::<6>()
                    .ok_or_else(|| bad(format!("{} of 6 head bytes", payload.len())))?;
                let pairs = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
                let items: Vec<&[u8]> = if pairs == 0 && rest.is_empty() {
                    Vec::new()
                } else {
                    rest.split(|b| *b == 0).collect()
                };
                if Some(items.len()) != pairs.checked_mul(2) {
                    return Err(bad(format!(
                        "{} header fields, not 2 × {pairs}",
                        items.len()
                    )));
                }
                Frame::Start {
                    id,
                    status: u16::from_le_bytes([head[0], head[1]]),
                    headers: items
                        .chunks(2)
                        .map(|p| (p[0].to_vec(), p[1].to_vec()))
                        .collect(),
                }
            }
            kind::ERROR => Frame::Error(id, text_of()),
            kind::PROTOCOL_ERROR => Frame::ProtocolError(id, text_of()),
            kind::LIFESPAN => Frame::Lifespan(id, json_of("LIFESPAN")?),
            kind::DONE => Frame::Done(id),
            kind::SERVING => Frame::Serving(json_of("SERVING")?),
            kind::CALL => {
                let f = fields("CALL", payload)?;
                let [name, args] = f[..] else {
                    return Err(WireError::Payload {
                        kind: "CALL",
                        why: format!("{} fields", f.len()),
                    });
                };
                Frame::Call {
                    id,
                    name: String::from_utf8_lossy(name).into_owned(),
                    args: args.to_vec(),
                }
            }
            other => return Err(WireError::Kind(other)),
        })
    }
}

/// What [`Reader::next`] found in the bytes so far.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// A frame.
    Frame(Frame),
    /// A frame that could not be decoded (its bytes are skipped).
    Malformed(WireError),
    /// Bytes that are not frames (something wrote to the stream directly), up to the next
    /// magic or newline.
    Stray(Vec<u8>),
}

/// An incremental decoder: bytes in, [`Item`]s out.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    at: usize,
}

impl Reader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > (1 << 16) && self.at * 2 > self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.at
    }
}

/// The complete items the buffered bytes hold; `None` means more bytes are needed (the
/// reader goes on after [`Reader::push`]).
impl Iterator for Reader {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let rest = &self.buf[self.at..];
        if rest.is_empty() {
            return None;
        }
        if !rest.starts_with(&MAGIC[..rest.len().min(4)]) {
            // Not a frame: up to the next possible magic, or through the next newline.
            let end = rest[1..]
                .iter()
                .position(|&b| b == MAGIC[0] || b == b'\n')
                .map(|i| if rest[i + 1] == b'\n' { i + 2 } else { i + 1 })
                .unwrap_or(rest.len());
            let stray = rest[..end].to_vec();
            self.at += end;
            return Some(Item::Stray(stray));
        }
        if rest.len() < HEADER {
            return None;
        }
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if !(5..=MAX_PAYLOAD + 5).contains(&len) {
            // The stream cannot be trusted past this point: skip the magic and resynchronise.
            self.at += 4;
            return Some(Item::Malformed(WireError::Length(len)));
        }
        if rest.len() < 8 + len {
            return None;
        }
        let kind = rest[8];
        let id = u32::from_le_bytes([rest[9], rest[10], rest[11], rest[12]]);
        let item = match Frame::decode(kind, id, &rest[HEADER..8 + len]) {
            Ok(frame) => Item::Frame(frame),
            Err(e) => Item::Malformed(e),
        };
        self.at += 8 + len;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../../../runtimes/python-3.12/aw4-vectors.json");

    fn hex_field(v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().unwrap()).unwrap()
    }

    fn pairs(items: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        items
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect()
    }

    /// The typed frame a vector describes.
    fn frame_of(v: &Value) -> Frame {
        let id = v["id"].as_u64().unwrap() as u32;
        let fields: Vec<Vec<u8>> = v["fields"]
            .as_array()
            .map(|a| a.iter().map(hex_field).collect())
            .unwrap_or_default();
        let data = || hex_field(&v["data"]);
        let text = || v["text"].as_str().unwrap().to_string();
        match v["kind"].as_u64().unwrap() as u8 {
            k @ (kind::HTTP | kind::HTTP_EMPTY) => {
                let text = |i: usize| fields[i].clone();
                let port = |i: usize| {
                    std::str::from_utf8(&fields[i])
                        .unwrap()
                        .parse()
                        .unwrap_or(0)
                };
                let head = Box::new(RequestHead {
                    method: text(0),
                    scheme: text(1),
                    http_version: text(2),
                    path: text(3),
                    raw_path: text(4),
                    query_string: text(5),
                    root_path: text(6),
                    client: (text(7), port(8)),
                    server: (text(9), port(10)),
                    headers: pairs(&fields[11..]),
                });
                if k == kind::HTTP {
                    Frame::Http(id, head)
                } else {
                    Frame::HttpEmpty(id, head)
                }
            }
            kind::BODY | kind::OUT_BODY => Frame::Body {
                id,
                more: v["more"].as_bool().unwrap(),
                data: data(),
            },
            kind::EVENT => Frame::Event(id, v["json"].clone()),
            kind::CANCEL => Frame::Cancel(id),
            kind::REPLY if v["ok"] == true => Frame::Reply(id, Ok(data())),
            kind::REPLY => Frame::Reply(
                id,
                Err(CallFailure {
                    kind: String::from_utf8(fields[0].clone()).unwrap(),
                    message: String::from_utf8(fields[1].clone()).unwrap(),
                }),
            ),
            kind::READY => Frame::Ready(v["json"].clone()),
            kind::BOOT_ERROR => Frame::BootError(v["json"].clone()),
            kind::LOG => Frame::Log {
                id,
                stream: v["stream"].as_u64().unwrap() as u8,
                data: data(),
            },
            kind::START => Frame::Start {
                id,
                status: v["status"].as_u64().unwrap() as u16,
                headers: pairs(&fields),
            },
            kind::ERROR => Frame::Error(id, text()),
            kind::PROTOCOL_ERROR => Frame::ProtocolError(id, text()),
            kind::LIFESPAN => Frame::Lifespan(id, v["json"].clone()),
            kind::DONE => Frame::Done(id),
            kind::SERVING => Frame::Serving(v["json"].clone()),
            kind::CALL => Frame::Call {
                id,
                name: String::from_utf8(fields[0].clone()).unwrap(),
                args: fields[1].clone(),
            },
            other => panic!("vector of unknown kind {other}"),
        }
    }

    #[test]
    fn every_test_vector_encodes_and_decodes() {
        let doc: Value = serde_json::from_str(VECTORS).unwrap();
        assert_eq!(doc["protocol"], PROTOCOL);
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 20);
        for v in vectors {
            let name = v["name"].as_str().unwrap();
            let bytes = hex_field(&v["hex"]);
            let frame = frame_of(v);
            let kind = v["kind"].as_u64().unwrap() as u8;
            if kind != kind::OUT_BODY {
                // The guest's body kind is decoded, never encoded, by the host.
                assert_eq!(frame.to_bytes(), bytes, "encoding {name}");
            }
            let mut reader = Reader::new();
            for byte in &bytes {
                reader.push(std::slice::from_ref(byte));
            }
            assert_eq!(reader.next(), Some(Item::Frame(frame)), "decoding {name}");
            assert_eq!(reader.next(), None, "{name}");
        }
    }

    #[test]
    fn stray_bytes_become_lines_and_the_stream_resynchronises() {
        let mut reader = Reader::new();
        let done = Frame::Done(3).to_bytes();
        reader.push(b"hello\nworld");
        reader.push(&done);
        assert_eq!(reader.next(), Some(Item::Stray(b"hello\n".to_vec())));
        assert_eq!(reader.next(), Some(Item::Stray(b"world".to_vec())));
        assert_eq!(reader.next(), Some(Item::Frame(Frame::Done(3))));
        assert_eq!(reader.next(), None);
    }

    #[test]
    fn bad_frames_are_named_and_skipped() {
        let mut reader = Reader::new();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.push(0x7f);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&Frame::Done(1).to_bytes());
        reader.push(&bytes);
        assert_eq!(reader.next(), Some(Item::Malformed(WireError::Kind(0x7f))));
        assert_eq!(reader.next(), Some(Item::Frame(Frame::Done(1))));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 5]);
        reader.push(&huge);
        assert!(matches!(
            reader.next(),
            Some(Item::Malformed(WireError::Length(_)))
        ));
    }

    /// The payload of `frame` as bytes, to be cut or changed.
    fn payload_of(frame: &Frame) -> Vec<u8> {
        frame.to_bytes()[HEADER..].to_vec()
    }

    fn malformed(kind: u8, payload: &[u8]) -> String {
        match Frame::decode(kind, 1, payload) {
            Err(e) => e.to_string(),
            Ok(f) => panic!("{payload:?} decoded as {f:?}"),
        }
    }

    #[test]
    fn a_nul_inside_a_joined_item_or_a_cut_head_is_a_malformed_frame_not_another_request() {
        let head = RequestHead {
            method: b"GET".to_vec(),
            scheme: b"http".to_vec(),
            http_version: b"1.1".to_vec(),
            path: b"/a\0b".to_vec(),
            raw_path: b"/a%00b".to_vec(),
            server: (b"n".to_vec(), 80),
            headers: vec![(b"x".to_vec(), b"1".to_vec())],
            ..RequestHead::default()
        };
        // The path is length-prefixed: a NUL in it is data.
        let good = Frame::Http(1, Box::new(head.clone()));
        assert_eq!(
            Frame::decode(kind::HTTP, 1, &payload_of(&good)).unwrap(),
            good
        );
        let payload = payload_of(&good);
        assert!(malformed(kind::HTTP, &payload[..15]).contains("15 of 16 head bytes"));
        assert!(malformed(kind::HTTP, &payload[..20]).contains("overrun"));
        let mut nul_in_method = head.clone();
        nul_in_method.method = b"G\0T".to_vec();
        let e = malformed(
            kind::HTTP,
            &payload_of(&Frame::Http(1, Box::new(nul_in_method))),
        );
        assert!(e.contains("7 text fields (not 6)"), "{e}");
        let mut nul_in_value = head;
        nul_in_value.headers[0].1 = b"1\x002".to_vec();
        let e = malformed(
            kind::HTTP,
            &payload_of(&Frame::Http(1, Box::new(nul_in_value))),
        );
        assert!(e.contains("5 byte fields (not 2 + 2 × 1)"), "{e}");

        let start = |headers: Vec<(Vec<u8>, Vec<u8>)>| Frame::Start {
            id: 1,
            status: 200,
            headers,
        };
        for headers in [vec![], vec![(Vec::new(), Vec::new())]] {
            let frame = start(headers);
            assert_eq!(
                Frame::decode(kind::START, 1, &payload_of(&frame)).unwrap(),
                frame
            );
        }
        let payload = payload_of(&start(vec![(b"a".to_vec(), b"1\x002".to_vec())]));
        assert!(malformed(kind::START, &payload).contains("3 header fields, not 2 × 1"));
        assert!(malformed(kind::START, &payload[..5]).contains("5 of 6 head bytes"));
        let mut extra = payload_of(&start(vec![]));
        extra.push(b'x');
        assert!(malformed(kind::START, &extra).contains("1 header fields, not 2 × 0"));
    }
}
