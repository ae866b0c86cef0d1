//! Interfaces: how a trigger is presented to a guest and how its output becomes a response.
//!
//! - [`cgi`]: a binary program with an HTTP request, run CGI-style (RFC 3875);
//! - a job: a binary program without a request, `_start` with `code.args`;
//! - events ([`Trigger::Cron`], [`Trigger::Message`]): ASGI scopes `aleph.cron` and
//!   `aleph.message` ([`asgi`]); for binary programs, jobs (a message on stdin).

pub mod asgi;
pub mod cgi;

/// An HTTP request addressed to a program.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpRequest {
    /// The method, upper case.
    pub method: String,
    /// The path below the program's root, starting with `/`.
    pub path: String,
    /// The query string, without `?` (may be empty).
    pub query: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The client's address, when known.
    pub remote_addr: Option<String>,
    /// The host name the request was addressed to.
    pub server_name: String,
    /// The port it arrived on.
    pub server_port: u16,
}

impl HttpRequest {
    /// Parses the command line's `METHOD /path?query` form.
    pub fn from_line(line: &str) -> Result<Self, String> {
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("request {line:?}: expected 'METHOD /path?query'"));
        };
        if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "request {line:?}: {method:?} is not an HTTP method"
            ));
        }
        if !target.starts_with('/') {
            return Err(format!("request {line:?}: the path must start with '/'"));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Ok(HttpRequest {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            query: query.to_string(),
            server_name: "localhost".into(),
            server_port: 80,
            ..Default::default()
        })
    }
}

/// An HTTP response produced by a program.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Trigger {
    /// The trigger as a JSON object with a fixed shape: what a receipt records as the trigger
    /// and what keys a reproducible execution's random sources. The body is named by its
    /// sha256 and size; every other field the guest can see is there as it is.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Trigger::Http(req) => serde_json::json!({
                "kind": "http",
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": req.headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
                "body_sha256": crate::message::sha256_hex(&req.body),
                "body_size": req.body.len(),
                "server_name": req.server_name,
                "server_port": req.server_port,
                "remote_addr": req.remote_addr,
            }),
            Trigger::Job => serde_json::json!({ "kind": "job" }),
            Trigger::Cron { time } => serde_json::json!({ "kind": "cron", "time": time }),
            Trigger::Message(message) => {
                serde_json::json!({ "kind": "message", "message": message })
            }
        }
    }
}

/// What started an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// An HTTP request.
    Http(HttpRequest),
    /// A run without a request (a job).
    Job,
    /// A tick of the program's `on.cron` schedule; `time` is the scheduled occurrence (seconds
    /// since the epoch). ASGI programs get the scope `{"type": "aleph.cron", "time": …}`;
    /// binary programs run as a job.
    Cron {
        /// The occurrence this tick is for.
        time: f64,
    },
    /// A message that matched one of the program's `on.message` subscriptions, in its
    /// final-form JSON. ASGI programs get the scope `{"type": "aleph.message", "body": …}`;
    /// binary programs run as a job with the JSON on stdin.
    Message(Box<serde_json::Value>),
}

impl Trigger {
    /// Whether this is an event (cron tick, message) rather than a request or a job: for an
    /// event an ASGI app need not answer with a response.
    pub fn is_event(&self) -> bool {
        matches!(self, Trigger::Cron { .. } | Trigger::Message(_))
    }
}
