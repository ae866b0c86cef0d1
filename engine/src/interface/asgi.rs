//! ASGI, host side: requests and events as AW4 frames for the Python bootstrap
//! (`runtimes/python-3.12/boot.py`, protocol in `docs/channel.md`), and the assembly of the
//! guest's frames into a response.
//!
//! An HTTP request is one `HTTP` frame (a complete ASGI 3 scope: method, paths, query,
//! headers as bytes, client, server) followed by its body in `BODY` frames of at most
//! [`BODY_CHUNK`] bytes, all in one write — or, without a body, one `HTTP_EMPTY` frame and
//! nothing after it; lifespan, cron and message events are `EVENT` frames. The guest answers with `START`, `BODY`, `ERROR`, `PROTOCOL_ERROR`, `LIFESPAN` and
//! `LOG` frames for the request's id, and `DONE` last. The app's own `print()` output arrives
//! as `LOG` frames, so it can never corrupt the framing.

use bytes::Bytes;
use serde_json::{Value, json};

use super::HttpRequest;
use crate::channel::wire::encode_body;
use crate::channel::{Frame, RequestHead};

/// The largest request body chunk handed to the app in one `http.request` event.
pub const BODY_CHUNK: usize = 64 * 1024;

/// The lifespan event (`startup` or `shutdown`).
pub fn lifespan_event(phase: &str) -> Value {
    json!({"type": "lifespan", "event": phase})
}

/// The event for a cron tick at `time` (seconds since the epoch): the bootstrap calls the app
/// with the scope `{"type": "aleph.cron", "time": time}`.
pub fn cron_event(time: f64) -> Value {
    json!({"type": "aleph.cron", "time": time})
}

/// The event for a message delivered to a subscription: the bootstrap calls the app with the
/// scope `{"type": "aleph.message", "body": message}` (what aleph's SDK routes to
/// `@app.event(filters=…)` handlers).
pub fn message_event(message: &Value) -> Value {
    json!({"type": "aleph.message", "body": message})
}

/// The error the bootstrap reports when the app returns without starting a response. For an
/// HTTP request that is a failure; for an event (cron tick, message) it is how an app that
/// handled the event normally returns.
pub const RETURNED_WITHOUT_RESPONSE: &str = "ASGI callable returned without starting a response";

/// The frames of an event, as one write.
pub fn event_frames(id: u32, event: &Value) -> Bytes {
    Frame::Event(id, event.clone()).to_bytes().into()
}

/// The frames of an HTTP request, as one write: its `HTTP` frame with the scope's fields, then
/// its body in `BODY` frames (the last says there is no more); a request without a body is its
/// `HTTP_EMPTY` frame alone.
pub fn http_frames(id: u32, req: &HttpRequest) -> Bytes {
    let (client_host, client_port) = match req.remote_addr.as_deref() {
        Some(addr) => match addr.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_matches(['[', ']']).as_bytes().to_vec(),
                port.parse::<u16>().unwrap_or(0),
            ),
            None => (addr.as_bytes().to_vec(), 0),
        },
        None => (Vec::new(), 0),
    };
    let head = RequestHead {
        method: req.method.as_bytes().to_vec(),
        scheme: b"http".to_vec(),
        http_version: b"1.1".to_vec(),
        path: percent_decode(&req.path).into_bytes(),
        raw_path: req.path.as_bytes().to_vec(),
        query_string: req.query.as_bytes().to_vec(),
        root_path: Vec::new(),
        client: (client_host, client_port),
        server: (req.server_name.as_bytes().to_vec(), req.server_port),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.as_bytes().to_vec()))
            .collect(),
    };
    let chunks = req.body.len().div_ceil(BODY_CHUNK);
    let mut out = Vec::with_capacity(256 + req.body.len() + chunks * 14);
    if req.body.is_empty() {
        Frame::HttpEmpty(id, Box::new(head)).encode(&mut out);
        return out.into();
    }
    Frame::Http(id, Box::new(head)).encode(&mut out);
    let mut parts = req.body.chunks(BODY_CHUNK).peekable();
    while let Some(part) = parts.next() {
        encode_body(&mut out, id, parts.peek().is_some(), part);
    }
    out.into()
}

/// Decodes `%XX` escapes of a URL path (invalid escapes are kept as they are; invalid UTF-8 is
/// replaced), as ASGI's `path` wants.
pub fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// What the bootstrap reported while handling one request or event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exchange {
    /// The response status, once `http.response.start` was sent.
    pub status: Option<u16>,
    /// The response headers.
    pub headers: Vec<(String, String)>,
    /// The response body, every part concatenated.
    pub body: Vec<u8>,
    /// Whether the last body part said `more_body: false`.
    pub body_complete: bool,
    /// The app raised (message; the traceback is in the log).
    pub app_error: Option<String>,
    /// The app broke the protocol (e.g. sent a message that is not ASGI).
    pub protocol_error: Option<String>,
    /// The lifespan result (`complete`, `failed`, `unsupported`) and its message.
    pub lifespan: Option<(String, Option<String>)>,
    /// What the program printed on stdout while handling it.
    pub stdout: Vec<u8>,
    /// What the program printed on stderr while handling it.
    pub stderr: Vec<u8>,
    /// `DONE` was received.
    pub done: bool,
    /// Frames that have no place in an answer.
    pub bad_frames: Vec<String>,
    /// Response body bytes beyond the limit, dropped.
    pub body_dropped: u64,
}

impl Exchange {
    /// Takes one frame of the request's stream; the body is kept up to `body_limit` bytes.
    pub fn take(&mut self, frame: Frame, body_limit: usize) {
        match frame {
            Frame::Log { stream, data, .. } => match stream {
                2 => self.stderr.extend_from_slice(&data),
                _ => self.stdout.extend_from_slice(&data),
            },
            Frame::Start {
                status, headers, ..
            } => {
                self.status = Some(status);
                self.headers = headers
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(&k).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
            }
            Frame::Body { more, data, .. } => {
                let room = body_limit.saturating_sub(self.body.len()).min(data.len());
                self.body.extend_from_slice(&data[..room]);
                self.body_dropped += (data.len() - room) as u64;
                self.body_complete = !more;
            }
            Frame::Error(_, message) => self.app_error = Some(message),
            Frame::ProtocolError(_, message) => self.protocol_error = Some(message),
            Frame::Lifespan(_, v) => {
                let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                self.lifespan = Some((s("result").unwrap_or_default(), s("message")));
            }
            Frame::Done(_) => self.done = true,
            other => self
                .bad_frames
                .push(format!("{other:?}").chars().take(200).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::wire::{Item, Reader};

    #[test]
    fn a_request_is_a_head_and_its_body_in_chunks_or_one_frame_without_a_body() {
        let mut req = HttpRequest::from_line("POST /a%20b?x=1").unwrap();
        req.headers = vec![("X-Thing".into(), "v".into())];
        req.body = vec![7u8; BODY_CHUNK + 1];
        req.remote_addr = Some("127.0.0.1:5555".into());
        let mut reader = Reader::new();
        reader.push(&http_frames(9, &req));
        let Some(Item::Frame(Frame::Http(9, head))) = reader.next() else {
            panic!("no head");
        };
        assert_eq!(head.path, b"/a b");
        assert_eq!(head.raw_path, b"/a%20b");
        assert_eq!(head.query_string, b"x=1");
        assert_eq!(head.client, (b"127.0.0.1".to_vec(), 5555));
        assert_eq!(head.headers, vec![(b"x-thing".to_vec(), b"v".to_vec())]);
        let mut body = Vec::new();
        let mut parts = 0;
        while let Some(Item::Frame(Frame::Body { id: 9, more, data })) = reader.next() {
            body.extend_from_slice(&data);
            parts += 1;
            if !more {
                break;
            }
        }
        assert_eq!((parts, body), (2, req.body.clone()));
        assert_eq!(reader.next(), None);
        // No body: the same head as one HTTP_EMPTY frame, and nothing after it.
        req.body.clear();
        let mut reader = Reader::new();
        reader.push(&http_frames(1, &req));
        let Some(Item::Frame(Frame::HttpEmpty(1, empty))) = reader.next() else {
            panic!("no HTTP_EMPTY frame");
        };
        assert_eq!(empty, head);
        assert_eq!(reader.next(), None);
    }

    #[test]
    fn frames_assemble_a_response() {
        let mut x = Exchange::default();
        x.take(
            Frame::Log {
                id: 1,
                stream: 1,
                data: b"hi\n".to_vec(),
            },
            10,
        );
        x.take(
            Frame::Start {
                id: 1,
                status: 201,
                headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
            },
            10,
        );
        for (more, data) in [(true, &b"ab"[..]), (false, b"c")] {
            x.take(
                Frame::Body {
                    id: 1,
                    more,
                    data: data.to_vec(),
                },
                10,
            );
        }
        x.take(Frame::Done(1), 10);
        assert_eq!(x.status, Some(201));
        assert_eq!(
            x.headers,
            vec![("content-type".to_string(), "text/plain".to_string())]
        );
        assert_eq!(x.body, b"abc");
        assert!(x.body_complete && x.done);
        assert_eq!(x.stdout, b"hi\n");
        x.take(
            Frame::Body {
                id: 1,
                more: false,
                data: vec![0; 20],
            },
            10,
        );
        assert_eq!((x.body.len(), x.body_dropped), (10, 13));
    }
}
