//! `GET /api/events`: Server-Sent Events. An `status` event carries the overview (the
//! JSON of `/api/status`) whenever it changed: after a new daemon snapshot or a new count
//! of the spool, at most every second. A comment line every 15 s keeps proxies from
//! closing an idle stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use tokio::sync::mpsc;

use super::http::Resp;
use super::Shared;

const KEEPALIVE: Duration = Duration::from_secs(15);
const MIN_GAP: Duration = Duration::from_secs(1);

/// A body fed by a channel: the stream ends when the sender goes.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// One event in the wire format.
pub fn event(name: &str, data: &str) -> Bytes {
    let mut s = format!("event: {name}\n");
    for line in data.lines() {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

pub fn stream(shared: Arc<Shared>) -> Resp {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut snap = shared.snapshot.clone();
        let mut ticks = shared.ticks.subscribe();
        let mut last = String::new();
        // Tells the browser to retry after 2 s if the stream drops.
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let mut o = serde_json::to_value(super::overview::build(&shared)).unwrap_or_default();
            // Only what changes the picture: the clock alone is not news.
            let now = o.as_object_mut().and_then(|m| m.remove("now_unix"));
            let key = o.to_string();
            if key != last {
                if let (Some(m), Some(now)) = (o.as_object_mut(), now) {
                    m.insert("now_unix".into(), now);
                }
                if tx.send(event("status", &o.to_string())).await.is_err() {
                    return;
                }
                last = key;
            }
            tokio::time::sleep(MIN_GAP).await;
            let woke = tokio::select! {
                r = snap.changed() => r.is_ok(),
                r = ticks.changed() => r.is_ok(),
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                    true
                }
            };
            if !woke {
                return;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_are_framed() {
        assert_eq!(
            super::event("status", "{\"a\":1}\n{\"b\":2}"),
            "event: status\ndata: {\"a\":1}\ndata: {\"b\":2}\n\n"
        );
    }
}
