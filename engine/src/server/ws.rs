//! `GET /api/ws0/messages`: the node's message feed as a websocket, as Aleph's API serves it.
//!
//! Every message that enters this node's store after the connection was made — posted to it
//! ([`super::ingest`]), written by another process and found by the store watcher, fetched
//! from another node, or received from another node's feed — is sent as one text frame
//! holding the message's final-form JSON, in the order the node took the messages in (the
//! arrivals journal's order, [`super::triggers::Triggers::arrived`]).
//!
//! The query takes the filters of `GET /api/v0/messages.json` ([`MessageQuery`]: `msgType` /
//! `msgTypes`, `hashes`, `refs`, `owners`, `addresses`, `channels`, `chains`; paging and
//! sorting parameters are ignored) and `history=N`: the last `N` messages the node took in
//! (at most [`MAX_HISTORY`]), filtered alike, are sent first, oldest first. A bad parameter
//! is a 422 before the upgrade.
//!
//! Frames the client sends are read and ignored. A client too slow to keep up with
//! [`super::triggers::FEED_CAPACITY`] messages is disconnected (close code 1008) rather than
//! silently skipped; the connection is closed (1001) when the node shuts down.

use axum::Router;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::api::{MessageQuery, error};
use crate::message::Message;

/// The path of the message feed.
pub const MESSAGES_WS_PATH: &str = "/api/ws0/messages";
/// The most messages `history` replays.
pub const MAX_HISTORY: usize = 1000;

/// `GET /api/ws0/messages`.
pub fn router() -> Router<AppState> {
    Router::new().route(MESSAGES_WS_PATH, get(subscribe))
}

/// The filters of a feed subscription and how much history it asks for.
fn parse(pairs: &[(String, String)]) -> Result<(MessageQuery, usize), String> {
    let query = MessageQuery::parse(pairs)?;
    let mut history = 0;
    for (name, value) in pairs {
        if name == "history" {
            history = value
                .trim()
                .parse()
                .ok()
                .filter(|n| *n <= MAX_HISTORY)
                .ok_or_else(|| {
                    format!(
                        "{name}: expected a number of messages up to {MAX_HISTORY}, got {value:?}"
                    )
                })?;
        }
    }
    Ok((query, history))
}

/// Whether `msg` passes every filter of `query`, `hashes` included.
fn passes(query: &MessageQuery, msg: &Message) -> bool {
    query.matches(msg) && (query.hashes.is_empty() || query.hashes.contains(&msg.item_hash))
}

async fn subscribe(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let (query, history) = match parse(&pairs) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade.on_upgrade(move |socket| stream(state, socket, query, history))
}

/// Sends the history, then every arrival that passes `query`, until the client leaves, lags
/// behind or the node shuts down.
async fn stream(state: AppState, mut socket: WebSocket, query: MessageQuery, history: usize) {
    let triggers = state.triggers();
    let mut closing = triggers.closing();
    // Subscribed first, so nothing falls between the history and the live messages.
    let (past, mut live) = triggers.subscribe_feed(history);
    let past = {
        let store = state.executor().store().clone();
        tokio::task::spawn_blocking(move || {
            past.iter()
                .filter_map(|hash| store.get_message(hash).ok())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    };
    for msg in &past {
        if passes(&query, msg) && !send(&mut socket, msg).await {
            return;
        }
    }
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            arrival = live.recv() => match arrival {
                Ok(msg) => {
                    if passes(&query, &msg) && !send(&mut socket, &msg).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!("a feed client fell {missed} messages behind: disconnected");
                    close(socket, close_code::POLICY, "too slow: messages were missed").await;
                    return;
                }
                Err(RecvError::Closed) => {
                    close(socket, close_code::AWAY, "the node is shutting down").await;
                    return;
                }
            },
            () = async { drop(closing.wait_for(|c| *c).await) } => {
                close(socket, close_code::AWAY, "the node is shutting down").await;
                return;
            }
        }
    }
}

/// Sends `msg` as one text frame; false when the client is gone.
async fn send(socket: &mut WebSocket, msg: &Message) -> bool {
    let text = msg.to_json().to_string();
    socket.send(Frame::Text(text.into())).await.is_ok()
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Frame::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn history_is_bounded_and_filters_are_the_listings() {
        let (q, history) = parse(&pairs(&[("msgType", "POST"), ("history", "5")])).unwrap();
        assert_eq!(history, 5);
        assert_eq!(q.types, [crate::message::MessageType::Post]);
        assert_eq!(parse(&pairs(&[])).unwrap().1, 0);
        for bad in [("history", "-1"), ("history", "1001"), ("msgType", "NOPE")] {
            assert!(parse(&pairs(&[bad])).is_err(), "{bad:?}");
        }
    }
}
