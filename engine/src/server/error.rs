//! The service's one error type: every way a request can fail, each variant with its HTTP
//! status. Answers are short plain text; internal errors are logged and answered generically,
//! so no host path or internal detail reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::executor::memory::Refused;
use crate::outcome::Refusal;

/// Why a request was not answered by a program (or by a node route).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// 404 Not Found: the ref names no message in the store, or a message that is not a
    /// PROGRAM.
    #[error("no program {0} on this node")]
    UnknownProgram(String),
    /// 404 Not Found: the program's `on.http` is false.
    #[error("program {0} does not accept HTTP requests (on.http is false)")]
    HttpDisabled(String),
    /// 404 Not Found: host-based routing is on, but the first label of `Host` is not a
    /// program's item hash in lowercase unpadded base32.
    #[error("host {0:?} does not name a program")]
    UnknownHost(String),
    /// 404 Not Found: no route matches the path.
    #[error("no route for {0}")]
    NoRoute(String),
    /// 400 Bad Request: the request itself is malformed (the reason says how).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 413 Content Too Large: the request body is longer than the node accepts.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 401 Unauthorized (with `WWW-Authenticate: Bearer`): a control route without the right
    /// bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 401 Unauthorized: the scheduler's push without valid authentication, and why.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// 403 Forbidden: the node was started without a token, so control routes are disabled.
    #[error("control routes disabled (the node has no token configured)")]
    ControlDisabled,
    /// 503 Service Unavailable (with `Retry-After: 1`): every execution slot of the node is
    /// taken and its queue of requests waiting for one holds as many as it may
    /// ([`ServerConfig::queue_limit`](super::ServerConfig::queue_limit)).
    #[error(
        "the node's request queue is full: every execution slot is taken and {limit} requests \
         (the queue's bound) already wait for one; retry shortly"
    )]
    QueueFull {
        /// The queue's bound.
        limit: usize,
    },
    /// 503 Service Unavailable (with `Retry-After: 1`): the request waited in the node's queue
    /// for as long as it may
    /// ([`ServerConfig::queue_timeout`](super::ServerConfig::queue_timeout)) and no execution
    /// slot freed.
    #[error(
        "no execution slot freed while the request waited in the node's request queue \
         ({seconds} s, the queue's time bound); retry shortly"
    )]
    QueueTimeout {
        /// The queue's time bound in seconds.
        seconds: f64,
    },
    /// 503 Service Unavailable (with `Retry-After: 1`): the program's memory does not fit in
    /// the node's memory budget, even after retiring idle instances.
    #[error("{0}; retry shortly")]
    MemoryFull(String),
    /// 503 Service Unavailable (with `Retry-After: 1`): every slot of the engine's instance
    /// pool is held by a live instance, even after retiring idle instances.
    #[error("{0}; retry shortly")]
    PoolFull(String),
    /// 504 Gateway Timeout: the program did not answer within `resources.seconds`.
    #[error("the program did not answer within its time limit ({seconds} s)")]
    Timeout {
        /// `resources.seconds`.
        seconds: u64,
    },
    /// 502 Bad Gateway: the program failed without producing a response (exit, trap, out of
    /// memory, malformed response …). The reason is short and never names host paths.
    #[error("{0}")]
    ProgramFailed(String),
    /// 502 Bad Gateway: the program, or something it needs, is missing here and could not be
    /// obtained from the node's API (unreachable, or what arrived failed verification: the
    /// reason names the hash).
    #[error("{0}")]
    Unobtainable(String),
    /// 500 Internal Server Error: a failure of the node itself. Logged in full; the client gets
    /// a generic message.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServiceError::UnknownProgram(_)
            | ServiceError::HttpDisabled(_)
            | ServiceError::UnknownHost(_)
            | ServiceError::NoRoute(_) => StatusCode::NOT_FOUND,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Unauthorized | ServiceError::NotAuthorized(_) => StatusCode::UNAUTHORIZED,
            ServiceError::ControlDisabled => StatusCode::FORBIDDEN,
            ServiceError::QueueFull { .. }
            | ServiceError::QueueTimeout { .. }
            | ServiceError::MemoryFull(_)
            | ServiceError::PoolFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServiceError::ProgramFailed(_) | ServiceError::Unobtainable(_) => {
                StatusCode::BAD_GATEWAY
            }
            ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Refused> for ServiceError {
    fn from(r: Refused) -> Self {
        match r.cause {
            Refusal::MemoryBudget => ServiceError::MemoryFull(r.message),
            Refusal::InstancePool => ServiceError::PoolFull(r.message),
        }
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        if let ServiceError::Internal(e) = &self {
            tracing::error!("internal error: {e:#}");
        }
        let mut response = (self.status(), format!("{self}\n")).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ServiceError::QueueFull { .. }
            | ServiceError::QueueTimeout { .. }
            | ServiceError::MemoryFull(_)
            | ServiceError::PoolFull(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ServiceError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ServiceError::NotAuthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Aleph-EIP191-V1, Bearer"),
                );
            }
            _ => {}
        }
        response
    }
}
