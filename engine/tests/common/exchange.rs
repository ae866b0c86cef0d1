//! HTTP exchanges whose bodies are kept as bytes (binary payloads compared exactly), each
//! bounded in time: a server that never answers fails the test with the request it was asked,
//! instead of hanging it.

use std::time::{Duration, Instant};

use serde_json::Value;

/// A client for loopback servers: no proxy, no timeout of its own (each exchange has one).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A finished exchange.
pub struct Reply {
    /// The method and URL.
    pub what: String,
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The response body, exactly.
    pub body: Vec<u8>,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

/// Sends `request` and reads the whole answer; panics if that takes longer than `limit` (a
/// hang) or the connection fails.
pub async fn send(request: reqwest::RequestBuilder, limit: Duration) -> Reply {
    let (client, request) = request.build_split();
    let request = request.unwrap();
    let what = format!("{} {}", request.method(), request.url());
    let started = Instant::now();
    let exchange = async {
        let response = client.execute(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>((status, headers, body))
    };
    let (status, headers, body) = match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("{what}: no response: {e}"),
        Err(_) => panic!("{what}: no complete answer within {limit:?} (a hang)"),
    };
    Reply {
        what,
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every value of a response header, in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Asserts the status.
    pub fn status(self, want: u16) -> Self {
        assert_eq!(self.status, want, "unexpected status\n{self}");
        self
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON: {e}\n{self}"))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 2000;
        writeln!(
            f,
            "request: {}\nstatus: {} (after {:?})",
            self.what, self.status, self.elapsed
        )?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {}", v.to_str().unwrap_or("(binary)"))?;
        }
        let shown = &self.body[..self.body.len().min(MAX)];
        writeln!(f, "--- body ({} bytes) ---", self.body.len())?;
        write!(f, "{}", String::from_utf8_lossy(shown))?;
        if self.body.len() > MAX {
            write!(f, "… ({} more bytes)", self.body.len() - MAX)?;
        }
        write!(f, "\n---")
    }
}
