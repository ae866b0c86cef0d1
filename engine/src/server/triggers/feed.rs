//! The network message feed: a node started with another node's API (`serve --api URL`)
//! subscribes to that node's websocket `GET /api/ws0/messages` (`ws://` or `wss://`, TLS by
//! rustls) and takes in every message it pushes.
//!
//! Each frame is one message in its final form. Nothing from the network is trusted: it is
//! checked and stored by [`Remote::accept_message`] exactly as a fetched message (an inline
//! message only if the sha256 of its `item_content` is its item hash), then handed to the
//! triggers as an arrival ([`Triggers::arrived`]): subscribed programs get it, a PROGRAM
//! message is activated, an amend restarts what uses it. A message already in the store is
//! skipped. A frame that is not JSON, or a message refused, is logged and skipped; the feed
//! goes on.
//!
//! When the connection cannot be made or drops, it is made again after a [`Backoff`] (the
//! triggers' [`super::TriggerConfig::backoff`]; a connection that lasted reset it). The feed
//! is pinged every [`KEEPALIVE`]; a connection silent for two of them is dropped. Messages
//! published while the node was not connected are not caught up here (the programs a request
//! needs are still fetched on first use, [`crate::store::prefetch`]).

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Backoff, Triggers};
use crate::server::AppState;
use crate::server::ws::MESSAGES_WS_PATH;
use crate::store::remote::{Remote, RemoteConfig, RemoteError};

/// How often the feed is pinged.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The feed's URL for the API base URL `api` (`http://h:4020` → `ws://h:4020/api/ws0/messages`,
/// `https://…` → `wss://…`).
pub fn url(api: &str) -> String {
    let api = api.trim_end_matches('/');
    match api.strip_prefix("http") {
        Some(rest) => format!("ws{rest}{MESSAGES_WS_PATH}"),
        None => format!("{api}{MESSAGES_WS_PATH}"),
    }
}

/// Follows the feed of `remote`, reconnecting, until aborted.
pub(super) async fn run(state: AppState, triggers: Triggers, remote: Remote) {
    let url = url(remote.api());
    let mut backoff = Backoff::new(triggers.config().backoff);
    loop {
        let started = Instant::now();
        match connect(&url, remote.config()).await {
            Ok(socket) => {
                tracing::info!("following the message feed {url}");
                let end = follow(&state, &triggers, &remote, socket).await;
                tracing::warn!("the message feed {url} ended: {end}");
                backoff.ran_for(started.elapsed());
            }
            Err(e) => tracing::warn!("cannot connect to the message feed {url}: {e}"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Opens the websocket, within the remote's connect timeout; frames are limited to the
/// remote's listing size.
async fn connect(url: &str, config: &RemoteConfig) -> Result<Socket, String> {
    let limit = usize::try_from(config.max_listing_bytes).unwrap_or(usize::MAX);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true);
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) => Err(format!("no connection after {:?}", config.connect_timeout)),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// Takes in the frames of one connection; returns why it ended.
async fn follow(
    state: &AppState,
    triggers: &Triggers,
    remote: &Remote,
    mut socket: Socket,
) -> String {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            frame = socket.next() => {
                last_seen = Instant::now();
                match frame {
                    None => return "the connection closed".into(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(Frame::Text(text))) => take(state, triggers, remote, text.as_bytes()).await,
                    Some(Ok(Frame::Binary(bytes))) => take(state, triggers, remote, &bytes).await,
                    Some(Ok(Frame::Close(frame))) => {
                        return match frame {
                            Some(f) => format!("closed by the node ({}: {})", u16::from(f.code), f.reason),
                            None => "closed by the node".into(),
                        };
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > 2 * KEEPALIVE {
                    return format!("silent for {:?}", last_seen.elapsed());
                }
                if let Err(e) = socket.send(Frame::Ping(Default::default())).await {
                    return e.to_string();
                }
            }
        }
    }
}

/// Takes in one frame: a message, verified and stored, then an arrival.
async fn take(state: &AppState, triggers: &Triggers, remote: &Remote, bytes: &[u8]) {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!("a frame of the message feed skipped: not JSON: {e}");
            return;
        }
    };
    match remote
        .accept_message(state.executor().store(), &value)
        .await
    {
        Ok(Some(msg)) => {
            tracing::info!(message = %msg.item_hash, kind = msg.kind.as_str(), "message received from the feed");
            triggers.arrived(state, msg);
        }
        Ok(None) => {}
        Err(e @ RemoteError::HashMismatch { .. }) => {
            tracing::warn!("a message of the feed refused: {e}");
        }
        Err(e) => tracing::info!("a message of the feed skipped: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_url_follows_the_api_scheme_and_prefix() {
        assert_eq!(
            url("http://127.0.0.1:4020"),
            "ws://127.0.0.1:4020/api/ws0/messages"
        );
        assert_eq!(
            url("https://api.example/p/"),
            "wss://api.example/p/api/ws0/messages"
        );
    }
}
