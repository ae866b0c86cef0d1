//! The session of one instance: requests in flight over one pair of pipes.
//!
//! The host writes frames on the guest's stdin ([`Session::send`]); what the guest writes on
//! stdout goes through [`Session`]'s demultiplexer as it is written, in the guest's own turn:
//! a frame with a request's id goes to that request's [`Stream`], the instance's own frames
//! (`READY`, `BOOT_ERROR`, `SERVING`) and logs written outside any request are kept for
//! [`Session::wait_instance`] and [`Session::take_logs`], and a guest's call is answered by
//! the session's [`HostCalls`] on a task of its own, so other requests proceed meanwhile — or,
//! for [`OrderedCalls`](super::calls::OrderedCalls), by one task that takes the calls in the
//! guest's order and writes the replies each makes due, so that what the guest reads depends
//! on nothing but what it wrote.
//! When the guest ends, every open stream ends too ([`Session::close`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::calls::InstanceCalls;
use super::pipe::ChannelInput;
use super::wire::{Frame, Item, Reader};
use crate::sandbox::output::Sink;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What the guest said about itself (not about a request).
#[derive(Debug, Clone, Default)]
pub struct InstanceState {
    /// `READY`'s JSON, once the app was imported.
    pub ready: Option<serde_json::Value>,
    /// `BOOT_ERROR`'s JSON, when the app could not be imported.
    pub boot_error: Option<serde_json::Value>,
    /// `SERVING`'s JSON, once the serving loop runs.
    pub serving: Option<serde_json::Value>,
    /// Frames that could not be decoded, or that came for no request the host knows of and
    /// should have (what was wrong with each).
    pub malformed: Vec<String>,
    /// The guest has ended (or the host stopped it).
    pub closed: bool,
}

/// Logs written outside any request: stdout and stderr text, capped.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    /// What was written on stdout (LOG frames with stream 1, and stray bytes).
    pub stdout: Vec<u8>,
    /// What was written on stderr (LOG frames with stream 2).
    pub stderr: Vec<u8>,
    /// Bytes dropped past the cap.
    pub dropped: u64,
}

impl Logs {
    /// Keeps `data` written on `stream` (2 stderr, else stdout), at most `cap` bytes a stream;
    /// the rest is counted as dropped.
    fn keep(&mut self, stream: u8, data: &[u8], cap: usize) {
        let target = if stream == 2 {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let room = cap.saturating_sub(target.len()).min(data.len());
        target.extend_from_slice(&data[..room]);
        self.dropped += (data.len() - room) as u64;
    }
}

#[derive(Default)]
struct State {
    reader: Reader,
    streams: HashMap<u32, mpsc::UnboundedSender<Frame>>,
    instance: InstanceState,
    logs: Logs,
    /// Binary programs: complete stdout lines, for [`Session::next_line`].
    lines: VecDeque<Vec<u8>>,
    /// Ordered calls: where the task that takes them in order gets them (made at the first).
    ordered: Option<mpsc::UnboundedSender<(u32, String, Vec<u8>)>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    input: ChannelInput,
    calls: InstanceCalls,
    log_cap: usize,
}

/// The host's side of one instance's channel. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// The frames of one request or event, as the guest writes them.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    session: Session,
}

impl Stream {
    /// The request's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next frame; `None` once the instance has ended.
    pub async fn next(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        lock(&self.session.shared.state).streams.remove(&self.id);
    }
}

impl Session {
    /// A session over `input` (the guest's stdin) that answers calls with `calls` and keeps at
    /// most `log_cap` bytes of each instance log stream.
    pub fn new(input: ChannelInput, calls: InstanceCalls, log_cap: usize) -> Self {
        Session {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                input,
                calls,
                log_cap,
            }),
            next_id: Arc::new(AtomicU32::new(1)),
        }
    }

    /// Writes bytes on the guest's stdin (frames, or the one REPL line that starts serving).
    pub fn send(&self, bytes: impl Into<Bytes>) {
        self.shared.input.send_bytes(bytes.into());
    }

    /// Opens a stream for a new request or event: its id and where its frames arrive.
    pub fn open(&self) -> Stream {
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = lock(&self.shared.state);
        if !state.instance.closed {
            state.streams.insert(id, tx);
        }
        drop(state);
        Stream {
            id,
            rx,
            session: self.clone(),
        }
    }

    /// Ends every open stream and wakes every waiter: the guest has ended.
    pub fn close(&self) {
        let mut state = lock(&self.shared.state);
        state.instance.closed = true;
        state.streams.clear();
        drop(state);
        self.wake();
    }

    fn wake(&self) {
        self.shared.changed.notify_waiters();
        self.shared.changed.notify_one();
    }

    /// Waits until `until` holds of the instance's state (checked at every change), and
    /// returns what it gave.
    pub async fn wait_instance<T>(&self, until: impl Fn(&InstanceState) -> Option<T>) -> T {
        loop {
            let changed = self.shared.changed.notified();
            if let Some(t) = until(&lock(&self.shared.state).instance) {
                return t;
            }
            changed.await;
        }
    }

    /// A copy of the instance's state.
    #[cfg(test)]
    pub fn instance(&self) -> InstanceState {
        lock(&self.shared.state).instance.clone()
    }

    /// Takes the logs written outside any request so far.
    pub fn take_logs(&self) -> Logs {
        std::mem::take(&mut lock(&self.shared.state).logs)
    }

    /// The next line a binary program wrote on stdout; `None` once it has ended and every
    /// line was taken.
    pub async fn next_line(&self) -> Option<Vec<u8>> {
        loop {
            let changed = self.shared.changed.notified();
            {
                let mut state = lock(&self.shared.state);
                if let Some(line) = state.lines.pop_front() {
                    return Some(line);
                }
                if state.instance.closed {
                    return None;
                }
            }
            changed.await;
        }
    }

    /// Takes what the guest wrote on stdout, in its own turn.
    fn take_output(&self, data: &[u8]) {
        let mut state = lock(&self.shared.state);
        state.reader.push(data);
        let mut changed = false;
        let mut calls = Vec::new();
        while let Some(item) = state.reader.next() {
            match item {
                Item::Frame(frame) => match frame {
                    Frame::Ready(v) => {
                        state.instance.ready = Some(v);
                        changed = true;
                    }
                    Frame::BootError(v) => {
                        state.instance.boot_error = Some(v);
                        changed = true;
                    }
                    Frame::Serving(v) => {
                        state.instance.serving = Some(v);
                        changed = true;
                    }
                    Frame::Call { id, name, args } => calls.push((id, name, args)),
                    frame => {
                        let id = frame.id();
                        let frame = match state.streams.get(&id) {
                            Some(tx) => match tx.send(frame) {
                                Ok(()) => continue,
                                Err(e) => e.0,
                            },
                            None => frame,
                        };
                        // No stream for it: the request was given up (a log or the frames a
                        // cancelled request still writes) or it is the instance's own log.
                        if let Frame::Log { stream, data, .. } = frame {
                            let cap = self.shared.log_cap;
                            state.logs.keep(stream, &data, cap);
                        }
                    }
                },
                Item::Malformed(e) => {
                    state.instance.malformed.push(e.to_string());
                    changed = true;
                }
                Item::Stray(bytes) => {
                    let cap = self.shared.log_cap;
                    state.logs.keep(1, &bytes, cap);
                    if state.lines.len() < 4096 {
                        let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec();
                        state.lines.push_back(line);
                    }
                    changed = true;
                }
            }
        }
        match &self.shared.calls {
            InstanceCalls::Concurrent(host) => {
                drop(state);
                for (id, name, args) in calls {
                    let (session, host) = (self.clone(), Arc::clone(host));
                    tokio::spawn(async move {
                        let answer = host.call(&name, args).await;
                        session.send(Frame::Reply(id, answer).to_bytes());
                    });
                }
            }
            InstanceCalls::Ordered(host) => {
                if !calls.is_empty() {
                    let tx = state.ordered.get_or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(take_in_order(
                            Arc::clone(host),
                            rx,
                            self.shared.input.clone(),
                        ));
                        tx
                    });
                    for call in calls {
                        // The task ends only when the session does, with this sender.
                        let _ = tx.send(call);
                    }
                }
                drop(state);
            }
        }
        if changed {
            self.wake();
        }
    }
}

/// Takes ordered calls one at a time, in the order the guest made them, and writes the replies
/// each makes due, in order.
async fn take_in_order(
    host: Arc<tokio::sync::Mutex<Box<dyn super::calls::OrderedCalls>>>,
    mut calls: mpsc::UnboundedReceiver<(u32, String, Vec<u8>)>,
    input: ChannelInput,
) {
    while let Some((id, name, args)) = calls.recv().await {
        let replies = host.lock().await.call(id, &name, args).await;
        for (id, answer) in replies {
            input.send_bytes(Frame::Reply(id, answer).to_bytes().into());
        }
    }
}

impl Sink for Session {
    fn push(&self, data: &[u8]) {
        self.take_output(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::calls::Builtin;
    use crate::channel::wire::CallFailure;

    fn session() -> (Session, ChannelInput) {
        let input = ChannelInput::new();
        (
            Session::new(
                input.clone(),
                InstanceCalls::Concurrent(Arc::new(Builtin)),
                1 << 10,
            ),
            input,
        )
    }

    #[tokio::test]
    async fn frames_go_to_their_request_and_logs_to_the_instance() {
        let (s, _) = session();
        let mut a = s.open();
        let mut b = s.open();
        let mut out = Vec::new();
        Frame::Ready(serde_json::json!({"asgi_version": "3.0"})).encode(&mut out);
        Frame::Done(b.id()).encode(&mut out);
        Frame::Log {
            id: 0,
            stream: 2,
            data: b"boot\n".to_vec(),
        }
        .encode(&mut out);
        Frame::Error(a.id(), "ValueError: x".into()).encode(&mut out);
        // Written in pieces, as a guest may write.
        for piece in out.chunks(7) {
            Sink::push(&s, piece);
        }
        assert_eq!(b.next().await, Some(Frame::Done(b.id())));
        assert_eq!(
            a.next().await,
            Some(Frame::Error(a.id(), "ValueError: x".into()))
        );
        assert!(s.instance().ready.is_some());
        assert_eq!(s.take_logs().stderr, b"boot\n");
        s.close();
        assert_eq!(a.next().await, None);
    }

    #[tokio::test]
    async fn a_call_is_answered_on_stdin_while_requests_go_on() {
        let (s, input) = session();
        let call = |id, name: &str| Frame::Call {
            id,
            name: name.into(),
            args: b"abc".to_vec(),
        };
        Sink::push(&s, &call(5, "ping").to_bytes());
        Sink::push(&s, &call(6, "no_such_call").to_bytes());
        let mut reader = Reader::new();
        let mut replies = Vec::new();
        while replies.len() < 2 {
            let mut probe = input.clone();
            wasmtime_wasi::p2::Pollable::ready(&mut probe).await;
            let bytes = wasmtime_wasi::p2::InputStream::read(&mut probe, 1 << 16).unwrap();
            reader.push(&bytes);
            while let Some(Item::Frame(f)) = reader.next() {
                replies.push(f);
            }
        }
        replies.sort_by_key(Frame::id);
        assert_eq!(replies[0], Frame::Reply(5, Ok(b"abc".to_vec())));
        let Frame::Reply(6, Err(CallFailure { kind, message })) = &replies[1] else {
            panic!("{:?}", replies[1]);
        };
        assert_eq!(kind, "unknown_call");
        assert!(message.contains("no_such_call"), "{message}");
    }

    /// Holds each `wait` until a `release`, which answers itself and then every held call.
    struct Gate {
        held: Vec<u32>,
    }

    impl crate::channel::calls::OrderedCalls for Gate {
        fn call<'a>(
            &'a mut self,
            id: u32,
            name: &'a str,
            _args: Vec<u8>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = crate::channel::calls::Replies> + Send + 'a>,
        > {
            Box::pin(async move {
                // A pause before answering: on a task per call, later calls would overtake.
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(id % 3))).await;
                match name {
                    "wait" => {
                        self.held.push(id);
                        Vec::new()
                    }
                    _ => {
                        let mut replies = vec![(id, Ok(name.as_bytes().to_vec()))];
                        replies.extend(self.held.drain(..).map(|h| (h, Ok(b"released".to_vec()))));
                        replies
                    }
                }
            })
        }
    }

    async fn read_frames(input: &ChannelInput, reader: &mut Reader, n: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        while frames.len() < n {
            let mut probe = input.clone();
            wasmtime_wasi::p2::Pollable::ready(&mut probe).await;
            let bytes = wasmtime_wasi::p2::InputStream::read(&mut probe, 1 << 16).unwrap();
            reader.push(&bytes);
            while let Some(Item::Frame(f)) = reader.next() {
                frames.push(f);
            }
        }
        frames
    }

    #[tokio::test]
    async fn ordered_calls_are_answered_in_the_order_they_make_replies_due() {
        let input = ChannelInput::new();
        let calls = crate::channel::CallsFactory::ordered(|| Box::new(Gate { held: Vec::new() }));
        let s = Session::new(input.clone(), calls.make(), 1 << 10);
        let call = |id, name: &str| Frame::Call {
            id,
            name: name.into(),
            args: Vec::new(),
        };
        let mut out = Vec::new();
        for (id, name) in [(1, "wait"), (2, "a"), (3, "wait"), (4, "b"), (5, "c")] {
            call(id, name).encode(&mut out);
        }
        Sink::push(&s, &out);
        let mut reader = Reader::new();
        let replies: Vec<(u32, Vec<u8>)> = read_frames(&input, &mut reader, 5)
            .await
            .into_iter()
            .map(|f| match f {
                Frame::Reply(id, Ok(bytes)) => (id, bytes),
                other => panic!("{other:?}"),
            })
            .collect();
        let expected: Vec<(u32, Vec<u8>)> = vec![
            (2, b"a".to_vec()),
            (1, b"released".to_vec()),
            (4, b"b".to_vec()),
            (3, b"released".to_vec()),
            (5, b"c".to_vec()),
        ];
        assert_eq!(replies, expected);
    }

    #[tokio::test]
    async fn a_caller_that_waits_gets_would_block_for_an_ordered_call_that_would_wait() {
        let calls = crate::channel::CallsFactory::ordered(|| Box::new(Gate { held: Vec::new() }));
        let one = calls.make().one_at_a_time();
        let failure = one.call("wait", Vec::new()).await.unwrap_err();
        assert_eq!(failure.kind, crate::channel::calls::WOULD_BLOCK);
        assert_eq!(one.call("go", Vec::new()).await.unwrap(), b"go");
    }
}
