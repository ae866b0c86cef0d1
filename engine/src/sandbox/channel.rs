//! Channels between the host and a long-lived guest: a stdin the host feeds line by line, and a
//! stdout the host reads as frames.
//!
//! A guest blocked reading an empty [`ChannelInput`] waits (asynchronously; no host thread is
//! held) until the host sends more or closes it. [`FrameOutput`] splits what the guest writes
//! into lines: lines that start with [`FRAME_PREFIX`] are protocol frames, every other line is
//! the program's own output and becomes a log line. What is queued and not yet taken by the
//! host is capped; past the cap, log lines are dropped and counted, and an oversized frame
//! marks the channel as overflowed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError};

use super::output::Sink;

/// The bytes that open every protocol frame line on the guest's stdout.
pub const FRAME_PREFIX: &[u8] = b"\x1eAW1 ";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[derive(Debug, Default)]
struct InputState {
    buf: VecDeque<u8>,
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
        lock(&self.state).buf.extend(bytes);
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
        let n = size.min(s.buf.len());
        let out: Vec<u8> = s.buf.drain(..n).collect();
        Ok(Bytes::from(out))
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

/// One line the guest wrote on stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A protocol frame (the JSON after [`FRAME_PREFIX`]).
    Frame(Vec<u8>),
    /// Anything else: the program's own output.
    Log(Vec<u8>),
}

#[derive(Debug, Default)]
struct OutputState {
    partial: Vec<u8>,
    lines: VecDeque<Line>,
    queued: usize,
    dropped: u64,
    overflowed: bool,
}

/// The guest's stdout, read by the host as lines.
#[derive(Debug, Clone)]
pub struct FrameOutput {
    cap: usize,
    state: Arc<Mutex<OutputState>>,
    notify: Arc<Notify>,
}

impl FrameOutput {
    /// A stdout that holds at most `cap` bytes not yet taken by the host.
    pub fn new(cap: usize) -> Self {
        FrameOutput {
            cap,
            state: Arc::new(Mutex::new(OutputState::default())),
            notify: Arc::new(Notify::new()),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut s = lock(&self.state);
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut s.partial);
            line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            Self::queue(&mut s, self.cap, line);
        }
        if s.partial.len() + rest.len() > self.cap {
            // A line longer than the cap: whatever it is, it cannot be kept.
            s.dropped += (s.partial.len() + rest.len()) as u64;
            if s.partial.starts_with(FRAME_PREFIX) {
                s.overflowed = true;
            }
            s.partial.clear();
        } else {
            s.partial.extend_from_slice(rest);
        }
        drop(s);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    fn queue(s: &mut OutputState, cap: usize, line: Vec<u8>) {
        let line = match line.strip_prefix(FRAME_PREFIX) {
            Some(frame) => Line::Frame(frame.to_vec()),
            None => Line::Log(line),
        };
        let len = match &line {
            Line::Frame(b) | Line::Log(b) => b.len(),
        };
        if s.queued + len > cap {
            match line {
                Line::Frame(_) => s.overflowed = true,
                Line::Log(_) => s.dropped += len as u64,
            }
            return;
        }
        s.queued += len;
        s.lines.push_back(line);
    }

    /// The next line, waiting for one. `None` once `closed()` says the guest is gone and every
    /// line was taken.
    pub async fn next(&self, closed: impl Fn() -> bool) -> Option<Line> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = lock(&self.state);
                if let Some(line) = s.lines.pop_front() {
                    let len = match &line {
                        Line::Frame(b) | Line::Log(b) => b.len(),
                    };
                    s.queued -= len;
                    return Some(line);
                }
                if closed() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Wakes anyone waiting in [`FrameOutput::next`] (e.g. when the guest has ended).
    pub fn wake(&self) {
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Bytes of log output dropped so far, and whether a frame was lost.
    pub fn losses(&self) -> (u64, bool) {
        let s = lock(&self.state);
        (s.dropped, s.overflowed)
    }
}

impl Sink for FrameOutput {
    fn push(&self, data: &[u8]) {
        FrameOutput::push(self, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_and_logs_are_told_apart() {
        let out = FrameOutput::new(1024);
        out.push(b"hello\n\x1eAW1 {\"t\":\"done\"}\npart");
        out.push(b"ial\n");
        assert_eq!(out.next(|| false).await, Some(Line::Log(b"hello".to_vec())));
        assert_eq!(
            out.next(|| false).await,
            Some(Line::Frame(b"{\"t\":\"done\"}".to_vec()))
        );
        assert_eq!(
            out.next(|| false).await,
            Some(Line::Log(b"partial".to_vec()))
        );
        assert_eq!(out.next(|| true).await, None);
    }

    #[tokio::test]
    async fn logs_past_the_cap_are_dropped_and_counted() {
        let out = FrameOutput::new(8);
        out.push(b"12345\n12345\n");
        assert_eq!(out.losses(), (5, false));
        out.push(b"\x1eAW1 0123456789\n");
        assert!(out.losses().1);
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
