//! CGI for binary programs (RFC 3875): request meta-variables in the environment, the body on
//! stdin, and a CGI response (header lines, a blank line, the body) on stdout.

use super::{HttpRequest, HttpResponse};

/// The most header lines a CGI response may have.
const MAX_HEADERS: usize = 100;

/// The meta-variables for `req`, to add to the program's own `variables`.
pub fn environment(req: &HttpRequest) -> Vec<(String, String)> {
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            format!("aleph-wasm/{}", env!("CARGO_PKG_VERSION")),
        ),
        ("SERVER_NAME".into(), req.server_name.clone()),
        ("SERVER_PORT".into(), req.server_port.to_string()),
        ("REQUEST_METHOD".into(), req.method.clone()),
        ("SCRIPT_NAME".into(), String::new()),
        ("PATH_INFO".into(), req.path.clone()),
        ("QUERY_STRING".into(), req.query.clone()),
        (
            "CONTENT_LENGTH".into(),
            if req.body.is_empty() {
                String::new()
            } else {
                req.body.len().to_string()
            },
        ),
    ];
    if let Some(addr) = &req.remote_addr {
        // `remote_addr` is `host:port` (ASGI's `client` wants both); CGI wants the host alone.
        let host = match addr.parse::<std::net::SocketAddr>() {
            Ok(sock) => sock.ip().to_string(),
            Err(_) => addr.clone(),
        };
        env.push(("REMOTE_ADDR".into(), host));
    }
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if lower == "content-type" {
            env.push(("CONTENT_TYPE".into(), value.clone()));
            continue;
        }
        // Content-Length comes from the body itself; hop-by-hop credentials are not passed.
        if lower == "content-length" || lower == "proxy-authorization" {
            continue;
        }
        let var = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        if !var
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        match env.iter_mut().find(|(k, _)| *k == var) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            None => env.push((var, value.clone())),
        }
    }
    env
}

/// Parses a CGI response from a program's stdout.
pub fn parse_response(stdout: &[u8]) -> Result<HttpResponse, String> {
    let mut headers = Vec::new();
    let mut status = None;
    let mut rest = stdout;
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(if stdout.is_empty() {
                "the program wrote nothing on stdout (a CGI response starts with header lines and a blank line)".into()
            } else {
                "the CGI header block never ends (no blank line before the body)".into()
            });
        };
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} CGI header lines"));
        }
        let text =
            std::str::from_utf8(line).map_err(|_| "a CGI header line is not UTF-8".to_string())?;
        let Some((name, value)) = text.split_once(':') else {
            return Err(format!("CGI header line {text:?} has no ':'"));
        };
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!(
                "CGI header name {name:?} is not a valid HTTP token"
            ));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!(
                "CGI header {name:?} has a control character in its value"
            ));
        }
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code: u16 = code
                .parse()
                .ok()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| {
                    format!("CGI Status {value:?} does not start with a 3-digit code")
                })?;
            status = Some(code);
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let status = status.unwrap_or_else(|| {
        if headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("location"))
        {
            302
        } else {
            200
        }
    });
    Ok(HttpResponse {
        status,
        headers,
        body: rest.to_vec(),
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_variables() {
        let mut req = HttpRequest::from_line("post /a/b?x=1&y=2").unwrap();
        req.headers = vec![
            ("Content-Type".into(), "text/plain".into()),
            ("X-Thing".into(), "1".into()),
            ("x-thing".into(), "2".into()),
        ];
        req.body = b"hello".to_vec();
        req.remote_addr = Some("127.0.0.1:5555".into());
        let env = environment(&req);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REQUEST_METHOD"), Some("POST"));
        assert_eq!(get("PATH_INFO"), Some("/a/b"));
        assert_eq!(get("QUERY_STRING"), Some("x=1&y=2"));
        assert_eq!(get("CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get("CONTENT_LENGTH"), Some("5"));
        assert_eq!(get("HTTP_X_THING"), Some("1, 2"));
        assert_eq!(get("REMOTE_ADDR"), Some("127.0.0.1"));
    }

    #[test]
    fn responses() {
        let r =
            parse_response(b"Status: 201 Created\r\nContent-Type: text/plain\r\n\r\nbody").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(
            r.headers,
            vec![("Content-Type".to_string(), "text/plain".to_string())]
        );
        assert_eq!(r.body, b"body");
        assert_eq!(parse_response(b"Location: /x\n\n").unwrap().status, 302);
        assert_eq!(parse_response(b"\nraw").unwrap().status, 200);
        assert!(parse_response(b"").unwrap_err().contains("nothing"));
        assert!(
            parse_response(b"hello world")
                .unwrap_err()
                .contains("never ends")
        );
        assert!(
            parse_response(b"bad header\n\n")
                .unwrap_err()
                .contains("no ':'")
        );
        assert!(parse_response(b"Status: abc\n\n").is_err());
        assert!(HttpRequest::from_line("GET").is_err());
        assert!(HttpRequest::from_line("GET nopath").is_err());
    }
}
