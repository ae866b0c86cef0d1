//! ASGI, host side: the request channel to the Python bootstrap (`runtimes/python-3.12/boot.py`)
//! and the assembly of its frames into a response.
//!
//! Protocol "AW1". The interpreter runs `python -i boot.py`: the script imports the app and the
//! REPL then blocks reading stdin, with none of the bootstrap's frames on the stack (the pause
//! point a snapshot can be taken at). Each event is one line on stdin,
//! `__aleph_wasm__.serve("<base64 of a JSON event>")`, and the guest answers with frame lines
//! on stdout (`\x1eAW1 ` + JSON), ending with `{"t":"done"}`. The app's own `print()` output
//! arrives as `log` frames, so it can never corrupt the framing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::HttpRequest;

/// The largest request body chunk handed to the app in one `http.request` event.
pub const BODY_CHUNK: usize = 64 * 1024;

/// The line that delivers `event` to the bootstrap.
pub fn event_line(event: &Value) -> Vec<u8> {
    let encoded = B64.encode(event.to_string());
    format!("__aleph_wasm__.serve(\"{encoded}\")\n").into_bytes()
}

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

/// Bodies larger than this go to the guest as raw bytes on stdin after its `read` frame rather
/// than base64 inside the event line (the REPL reads long lines slowly).
pub const INLINE_BODY_MAX: usize = 4 * BODY_CHUNK;

/// The event for an HTTP request: a complete ASGI 3 HTTP scope (byte fields in base64) and the
/// body in chunks — inline, or announced as `body_stdin` when larger than [`INLINE_BODY_MAX`]
/// (the host then writes it raw when the guest asks with a `read` frame).
pub fn http_event(req: &HttpRequest) -> Value {
    let headers: Vec<Value> = req
        .headers
        .iter()
        .map(|(k, v)| json!([B64.encode(k.to_ascii_lowercase()), B64.encode(v)]))
        .collect();
    let client = req
        .remote_addr
        .as_ref()
        .map(|addr| match addr.rsplit_once(':') {
            Some((host, port)) => json!([
                host.trim_matches(['[', ']']),
                port.parse::<u16>().unwrap_or(0)
            ]),
            None => json!([addr, 0]),
        });
    let scope = json!({
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": req.method,
        "scheme": "http",
        "path": percent_decode(&req.path),
        "raw_path": B64.encode(&req.path),
        "query_string": B64.encode(&req.query),
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": [req.server_name, req.server_port],
    });
    if req.body.len() > INLINE_BODY_MAX {
        return json!({
            "type": "http", "scope": scope, "body_chunks": [],
            "body_stdin": req.body.len(), "chunk_size": BODY_CHUNK,
        });
    }
    let chunks: Vec<String> = req.body.chunks(BODY_CHUNK).map(|c| B64.encode(c)).collect();
    json!({"type": "http", "scope": scope, "body_chunks": chunks})
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

/// What the bootstrap reported while handling one event.
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
    /// The app was imported (`ready`) — boot only.
    pub ready: bool,
    /// The app failed to import (message and traceback) — boot only.
    pub boot_error: Option<(String, String)>,
    /// What the program printed on stdout.
    pub stdout: Vec<u8>,
    /// What the program printed on stderr.
    pub stderr: Vec<u8>,
    /// The guest asked for this many raw body bytes on stdin (`read` frame).
    pub read_request: Option<usize>,
    /// `done` was received.
    pub done: bool,
    /// Frames that could not be understood.
    pub bad_frames: Vec<String>,
}

impl Exchange {
    /// Takes one frame (the JSON after the frame prefix).
    pub fn take_frame(&mut self, frame: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(frame) else {
            self.bad_frames
                .push(String::from_utf8_lossy(&frame[..frame.len().min(200)]).into_owned());
            return;
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match v.get("t").and_then(Value::as_str).unwrap_or("") {
            "log" => {
                let data = s("data").unwrap_or_default();
                match v.get("stream").and_then(Value::as_str) {
                    Some("stderr") => self.stderr.extend_from_slice(data.as_bytes()),
                    _ => self.stdout.extend_from_slice(data.as_bytes()),
                }
            }
            "start" => {
                self.status = v.get("status").and_then(Value::as_u64).map(|s| s as u16);
                self.headers = v
                    .get("headers")
                    .and_then(Value::as_array)
                    .map(|hs| {
                        hs.iter()
                            .filter_map(|h| {
                                let name = B64.decode(h.get(0)?.as_str()?).ok()?;
                                let value = B64.decode(h.get(1)?.as_str()?).ok()?;
                                Some((
                                    String::from_utf8_lossy(&name).into_owned(),
                                    String::from_utf8_lossy(&value).into_owned(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "body" => {
                if let Some(body) = s("body").and_then(|b| B64.decode(b).ok()) {
                    self.body.extend_from_slice(&body);
                }
                self.body_complete = !v.get("more_body").and_then(Value::as_bool).unwrap_or(false);
            }
            "error" => self.app_error = s("message").or(Some("unknown error".into())),
            "protocol_error" => self.protocol_error = s("message").or(Some("unknown".into())),
            "lifespan" => self.lifespan = Some((s("result").unwrap_or_default(), s("message"))),
            "ready" => self.ready = true,
            "boot_error" => {
                self.boot_error = Some((
                    s("message").unwrap_or_default(),
                    s("traceback").unwrap_or_default(),
                ))
            }
            "read" => {
                self.read_request = v.get("bytes").and_then(Value::as_u64).map(|n| n as usize)
            }
            "done" => self.done = true,
            other => self
                .bad_frames
                .push(format!("unknown frame type {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_complete() {
        let mut req = HttpRequest::from_line("POST /a%20b?x=1").unwrap();
        req.headers = vec![("X-Thing".into(), "v".into())];
        req.body = vec![7u8; BODY_CHUNK + 1];
        req.remote_addr = Some("127.0.0.1:5555".into());
        let ev = http_event(&req);
        let scope = &ev["scope"];
        for key in [
            "type",
            "asgi",
            "http_version",
            "method",
            "scheme",
            "path",
            "raw_path",
            "query_string",
            "root_path",
            "headers",
            "client",
            "server",
        ] {
            assert!(scope.get(key).is_some(), "{key}");
        }
        assert_eq!(scope["path"], "/a b");
        assert_eq!(scope["client"], json!(["127.0.0.1", 5555]));
        assert_eq!(ev["body_chunks"].as_array().unwrap().len(), 2);
        let line = event_line(&ev);
        assert!(line.starts_with(b"__aleph_wasm__.serve(\"") && line.ends_with(b"\")\n"));
    }

    #[test]
    fn frames_assemble_a_response() {
        let mut x = Exchange::default();
        x.take_frame(br#"{"t":"log","stream":"stdout","data":"hi\n"}"#);
        x.take_frame(
            br#"{"t":"start","status":201,"headers":[["Y29udGVudC10eXBl","dGV4dC9wbGFpbg=="]]}"#,
        );
        x.take_frame(br#"{"t":"body","body":"YWI=","more_body":true}"#);
        x.take_frame(br#"{"t":"body","body":"Yw==","more_body":false}"#);
        x.take_frame(br#"{"t":"done"}"#);
        x.take_frame(b"not json");
        assert_eq!(x.status, Some(201));
        assert_eq!(
            x.headers,
            vec![("content-type".to_string(), "text/plain".to_string())]
        );
        assert_eq!(x.body, b"abc");
        assert!(x.body_complete && x.done);
        assert_eq!(x.stdout, b"hi\n");
        assert_eq!(x.bad_frames.len(), 1);
    }
}
