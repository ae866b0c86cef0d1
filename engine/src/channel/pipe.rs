//! The pipes between the host and a long-lived guest: a stdin the host feeds, and a stream
//! the host reads as lines (a guest's raw stderr, a binary job's stdout).
//!
//! A guest blocked reading an empty [`ChannelInput`] waits (asynchronously; no host thread is
//! held) until the host sends more or closes it; `poll_oneoff` on stdin waits the same way, so
//! a guest can wait on stdin and its timers together. [`LineOutput`] splits what the guest
//! writes into lines; what is queued and not yet taken by the host is capped, and lines past
//! the cap are dropped and counted.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError};

use crate::sandbox::output::Sink;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[derive(Debug, Default)]
struct InputState {
    /// What the host sent and the guest has not read, in the pieces it was sent in.
    buf: VecDeque<Bytes>,
    closed: bool,
    waiting: bool,
}

/// The guest's stdin, fed by the host.
#[derive(Debug, Clone, Default)]
pub struct ChannelInput {
    state: Arc<Mutex<InputState>>,
    data: Arc<Notify>,
    blocked: Arc<Notify>,
}

impl ChannelInput {
    /// An empty, open stdin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues bytes for the guest to read.
    pub fn send(&self, bytes: &[u8]) {
        self.send_bytes(Bytes::copy_from_slice(bytes));
    }

    /// Queues bytes for the guest to read, without copying them.
    pub fn send_bytes(&self, bytes: Bytes) {
        if !bytes.is_empty() {
            lock(&self.state).buf.push_back(bytes);
        }
        self.data.notify_waiters();
        self.data.notify_one();
    }

    /// Closes stdin: once the queue is drained, the guest reads end-of-file.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.data.notify_waiters();
        self.data.notify_one();
    }

    /// Waits until the guest is blocked reading with nothing left to read.
    pub async fn wait_blocked(&self) {
        loop {
            let notified = self.blocked.notified();
            {
                let s = lock(&self.state);
                if s.waiting && s.buf.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    fn take(&self, size: usize) -> Result<Bytes, StreamError> {
        let mut s = lock(&self.state);
        if s.buf.is_empty() {
            return if s.closed {
                Err(StreamError::Closed)
            } else {
                Ok(Bytes::new())
            };
        }
        let Some(front) = s.buf.front_mut() else {
            return Ok(Bytes::new());
        };
        if front.len() <= size {
            return Ok(s.buf.pop_front().unwrap_or_default());
        }
        Ok(front.split_to(size))
    }

    async fn wait_data(&self) {
        loop {
            let notified = self.data.notified();
            {
                let mut s = lock(&self.state);
                if !s.buf.is_empty() || s.closed {
                    s.waiting = false;
                    return;
                }
                s.waiting = true;
            }
            self.blocked.notify_waiters();
            notified.await;
        }
    }
}

impl IsTerminal for ChannelInput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for ChannelInput {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for ChannelInput {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        self.take(size)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ChannelInput {
    async fn ready(&mut self) {
        self.wait_data().await;
    }
}

impl AsyncRead for ChannelInput {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.take(buf.remaining()) {
            Ok(bytes) if bytes.is_empty() => {
                // Register interest, then re-check to avoid a lost wake-up.
                let this = self.clone();
                let waker = cx.waker().clone();
                tokio::spawn(async move {
                    this.wait_data().await;
                    waker.wake();
                });
                Poll::Pending
            }
            Ok(bytes) => {
                buf.put_slice(&bytes);
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Ok(())),
        }
    }
}

#[derive(Debug, Default)]
struct OutputState {
    partial: Vec<u8>,
    lines: VecDeque<Vec<u8>>,
    queued: usize,
    dropped: u64,
}

/// A stream the guest writes and the host reads as lines.
#[derive(Debug, Clone)]
pub struct LineOutput {
    cap: usize,
    state: Arc<Mutex<OutputState>>,
    notify: Arc<Notify>,
}

impl LineOutput {
    /// A stream that holds at most `cap` bytes not yet taken by the host.
    pub fn new(cap: usize) -> Self {
        LineOutput {
            cap,
            state: Arc::new(Mutex::new(OutputState::default())),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Takes bytes the guest wrote.
    pub fn push(&self, data: &[u8]) {
        let mut s = lock(&self.state);
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut s.partial);
            line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            Self::queue(&mut s, self.cap, line);
        }
        if s.partial.len() + rest.len() > self.cap {
            // A line longer than the cap cannot be kept.
            s.dropped += (s.partial.len() + rest.len()) as u64;
            s.partial.clear();
        } else {
            s.partial.extend_from_slice(rest);
        }
        drop(s);
        self.wake();
    }

    fn queue(s: &mut OutputState, cap: usize, line: Vec<u8>) {
        if s.queued + line.len() > cap {
            s.dropped += line.len() as u64;
            return;
        }
        s.queued += line.len();
        s.lines.push_back(line);
    }

    /// The next line, waiting for one. `None` once `closed()` says the guest is gone and every
    /// line was taken (a last line without a newline included).
    pub async fn next(&self, closed: impl Fn() -> bool) -> Option<Vec<u8>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = lock(&self.state);
                if let Some(line) = s.lines.pop_front() {
                    s.queued -= line.len();
                    return Some(line);
                }
                if closed() {
                    return (!s.partial.is_empty()).then(|| std::mem::take(&mut s.partial));
                }
            }
            notified.await;
        }
    }

    /// Wakes anyone waiting in [`LineOutput::next`] (e.g. when the guest has ended).
    pub fn wake(&self) {
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Bytes dropped so far.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }
}

impl Sink for LineOutput {
    fn push(&self, data: &[u8]) {
        LineOutput::push(self, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_the_last_comes_at_the_end() {
        let out = LineOutput::new(1024);
        out.push(b"hello\nwor");
        out.push(b"ld\npartial");
        assert_eq!(out.next(|| false).await, Some(b"hello".to_vec()));
        assert_eq!(out.next(|| false).await, Some(b"world".to_vec()));
        assert_eq!(out.next(|| true).await, Some(b"partial".to_vec()));
        assert_eq!(out.next(|| true).await, None);
    }

    #[tokio::test]
    async fn lines_past_the_cap_are_dropped_and_counted() {
        let out = LineOutput::new(8);
        out.push(b"12345\n12345\n");
        assert_eq!(out.dropped(), 5);
    }

    #[tokio::test]
    async fn input_reads_what_was_sent_then_eof() {
        let mut input = ChannelInput::new();
        input.send(b"abc");
        input.ready().await;
        assert_eq!(&input.read(2).unwrap()[..], b"ab");
        assert_eq!(&input.read(10).unwrap()[..], b"c");
        assert!(input.read(10).unwrap().is_empty());
        input.close();
        assert!(input.read(10).is_err());
    }
}
