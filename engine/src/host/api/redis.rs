//! The Redis cache backend (`serve --cache redis://host:port`), laid out as aleph-vm lays it
//! out: a program's key `K` is the Redis key `<program item hash>:K`, set with `EX` (the time
//! to live in seconds, 7 days by default); listing scans for `<program item hash>:<pattern>`.
//! A node can so take over the cache of an aleph-vm node on the same Redis server.
//!
//! Keys and patterns never contain `:` ([`super::cache::valid_key`]), so one program's
//! pattern never reaches another program's keys.

use std::future::Future;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use bytes::Bytes;

use super::cache::{CacheBackend, CacheError, CacheFuture};

/// Longest wait for a connection to the server, and for each answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// A Redis server holding the cache; reconnects by itself after a lost connection (the
/// command that saw the loss fails).
#[derive(Clone)]
pub struct RedisCache {
    url: String,
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("url", &self.url)
            .finish()
    }
}

impl RedisCache {
    /// Connects to the server at `url` and checks it answers `PING`.
    pub async fn connect(url: &str) -> Result<Self, CacheError> {
        let client = ::redis::Client::open(url);
        let url = redacted(url);
        let failed = |e: ::redis::RedisError| CacheError(format!("the Redis cache at {url}: {e}"));
        let client = client.map_err(failed)?;
        // One attempt first, so a wrong address fails at once rather than after the
        // manager's retries.
        let mut probe = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| {
                CacheError(format!(
                    "the Redis cache at {url}: no connection within {TIMEOUT:?}"
                ))
            })?
            .map_err(failed)?;
        ping(&mut probe).await.map_err(failed)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(failed)?;
        ping(&mut conn).await.map_err(failed)?;
        Ok(RedisCache { url, conn })
    }

    /// The server's URL, its password (if any) replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on a handle of the shared connection; its error names the command.
    fn run<'a, T, F>(
        &'a self,
        what: &'static str,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> CacheFuture<'a, T>
    where
        F: Future<Output = ::redis::RedisResult<T>> + Send + 'a,
    {
        let done = f(self.conn.clone());
        Box::pin(async move {
            done.await
                .map_err(|e| CacheError(format!("the Redis cache at {}: {what}: {e}", self.url)))
        })
    }
}

async fn ping(conn: &mut impl ::redis::aio::ConnectionLike) -> ::redis::RedisResult<()> {
    let pong: String = ::redis::cmd("PING").query_async(conn).await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(::redis::RedisError::from((
            ::redis::ErrorKind::UnexpectedReturnType,
            "unexpected answer to PING",
            pong,
        )))
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and errors.
pub(super) fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The Redis key of a program's key: `<program>:<key>`, as aleph-vm writes it.
fn redis_key(program: &str, key: &str) -> String {
    format!("{program}:{key}")
}

/// `program` with Redis's glob characters escaped, so it matches only itself.
fn glob_literal(program: &str) -> String {
    let mut out = String::with_capacity(program.len());
    for c in program.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl CacheBackend for RedisCache {
    fn get<'a>(&'a self, program: &'a str, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        self.run("GET", |mut conn| async move {
            ::redis::cmd("GET")
                .arg(redis_key(program, key))
                .query_async(&mut conn)
                .await
        })
    }

    fn set<'a>(
        &'a self,
        program: &'a str,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> CacheFuture<'a, ()> {
        self.run("SET", |mut conn| async move {
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(redis_key(program, key)).arg(value.as_ref());
            // Whole seconds as aleph-vm sets them (EX); a finer time to live in milliseconds.
            if ttl.subsec_nanos() == 0 {
                cmd.arg("EX").arg(ttl.as_secs().max(1));
            } else {
                cmd.arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            }
            cmd.query_async::<()>(&mut conn).await
        })
    }

    fn delete<'a>(&'a self, program: &'a str, key: &'a str) -> CacheFuture<'a, bool> {
        self.run("DEL", |mut conn| async move {
            let n: u64 = ::redis::cmd("DEL")
                .arg(redis_key(program, key))
                .query_async(&mut conn)
                .await?;
            Ok(n > 0)
        })
    }

    fn keys<'a>(&'a self, program: &'a str, pattern: &'a str) -> CacheFuture<'a, Vec<String>> {
        self.run("SCAN", |mut conn| async move {
            let prefix = format!("{program}:");
            let matching = format!("{}:{pattern}", glob_literal(program));
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&matching)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn)
                    .await?;
                keys.extend(batch.into_iter().filter_map(|k| {
                    String::from_utf8(k)
                        .ok()
                        .and_then(|k| k.strip_prefix(&prefix).map(str::to_string))
                }));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // SCAN may return a key twice.
            keys.sort();
            keys.dedup();
            Ok(keys)
        })
    }

    fn describe(&self) -> String {
        format!("redis ({})", self.url)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted("redis://:secret@cache.example:6379/1"),
            "redis://:***@cache.example:6379/1"
        );
        assert_eq!(
            super::redacted("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
