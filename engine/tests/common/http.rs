//! HTTP exchanges with a node under test: one request, its answer kept whole, and readable
//! failures (the request, status, headers and body).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// A client for loopback servers (no proxy; a generous timeout for cold starts that build).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// `GET url`.
pub async fn get(url: &str) -> Answer {
    Answer::of(client().get(url)).await
}

/// A finished HTTP exchange.
pub struct Answer {
    /// The method and URL.
    pub what: String,
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The response body.
    pub body: String,
}

impl Answer {
    /// Sends the request; a host name (not an address) resolves to the loopback address, so
    /// host-based routes (`<label>.<domain>`) reach the node under test.
    pub async fn of(request: reqwest::RequestBuilder) -> Answer {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url());
        let host = request.url().host_str().unwrap_or_default().to_string();
        let port = request.url().port().unwrap_or(80);
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(600));
        if host.parse::<std::net::IpAddr>().is_err() {
            builder = builder.resolve(&host, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let response = builder
            .build()
            .unwrap()
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Answer {
            what,
            status,
            headers,
            body,
        }
    }

    /// Asserts the status.
    pub fn status(self, want: u16) -> Self {
        assert_eq!(self.status, want, "unexpected status\n{self}");
        self
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the body contains `needle`.
    pub fn has(self, needle: &str) -> Self {
        assert!(
            self.body.contains(needle),
            "the body lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts the body does not contain `needle`.
    pub fn lacks(self, needle: &str) -> Self {
        assert!(
            !self.body.contains(needle),
            "the body has {needle:?}\n{self}"
        );
        self
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON: {e}\n{self}"))
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "request: {}\nstatus: {}", self.what, self.status)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {}", v.to_str().unwrap_or("(binary)"))?;
        }
        write!(f, "--- body ---\n{}\n---", self.body)
    }
}
