//! Interfaces: how a trigger is presented to a guest and how its output becomes a response.
//!
//! - [`cgi`]: a binary program with an HTTP request, run CGI-style (RFC 3875);
//! - a job: a binary program without a request, `_start` with `code.args`.

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

/// What started an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// An HTTP request.
    Http(HttpRequest),
    /// A run without a request (a job, a cron tick of a binary program).
    Job,
}
