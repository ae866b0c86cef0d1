//! Capped capture of a guest's stdout and stderr.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// What a capped stream captured: the first `cap` bytes, and how many bytes were dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The bytes kept, at most the cap.
    pub bytes: Vec<u8>,
    /// The bytes written past the cap and dropped.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Inner {
    bytes: Vec<u8>,
    dropped: u64,
}

/// An output stream that keeps at most `cap` bytes and counts the rest.
///
/// The guest is never told about the cap: writes past it succeed and are dropped, so a guest
/// that floods stdout costs the host no more than `cap` bytes of memory.
#[derive(Debug, Clone)]
pub struct CappedOutput {
    cap: usize,
    inner: Arc<Mutex<Inner>>,
}

impl CappedOutput {
    /// A stream that keeps the first `cap` bytes written to it.
    pub fn new(cap: usize) -> Self {
        CappedOutput {
            cap,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut inner = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = self.cap.saturating_sub(inner.bytes.len());
        let kept = room.min(data.len());
        inner.bytes.extend_from_slice(&data[..kept]);
        inner.dropped += (data.len() - kept) as u64;
    }

    /// What was captured so far.
    pub fn captured(&self) -> Captured {
        let inner = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        Captured {
            bytes: inner.bytes.clone(),
            dropped: inner.dropped,
        }
    }
}

impl Sink for CappedOutput {
    fn push(&self, data: &[u8]) {
        CappedOutput::push(self, data)
    }
}

/// Anything a guest's output can be written into.
pub trait Sink: Clone + Send + Sync + Unpin + 'static {
    /// Takes bytes the guest wrote. Never fails: a sink that is full drops and counts.
    fn push(&self, data: &[u8]);
}

/// A [`Sink`] as a WASI stdout/stderr: every write succeeds and goes to the sink.
#[derive(Debug, Clone)]
pub struct SinkStream<S>(pub S);

impl<S: Sink> IsTerminal for SinkStream<S> {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl<S: Sink> StdoutStream for SinkStream<S> {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl<S: Sink> OutputStream for SinkStream<S> {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.0.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl<S: Sink> Pollable for SinkStream<S> {
    async fn ready(&mut self) {}
}

impl<S: Sink> AsyncWrite for SinkStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cap_and_counts_the_rest() {
        let out = CappedOutput::new(4);
        out.push(b"abc");
        out.push(b"defgh");
        let c = out.captured();
        assert_eq!(c.bytes, b"abcd");
        assert_eq!(c.dropped, 4);
    }
}
