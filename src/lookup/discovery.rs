//! L7 / Q16: a topic created at run time while nsqlookupds are known asks
//! each of them (`GET /channels?topic=`) which channels it has, and creates
//! those (not `#ephemeral` ones) before its first message moves on, so that
//! every channel consumers use elsewhere gets every message.
//!
//! nsqd blocks the creating publisher for these queries; here the topic
//! holds its messages instead (`Topic::awaiting_channels`) while a task on
//! its core asks, so the publisher gets its OK at once and no core blocks.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use smol_hyper::rt::FuturesIo;

use super::{LookupHandle, LookupdHttp};
use crate::shard::Announce;
use crate::storage::notify::Notify;

/// One per core: the topics waiting to ask. It is also how the core's shard
/// tells nsqlookupd what comes and goes (`Announce`).
pub struct Discovery {
    lookup: LookupHandle,
    pending: RefCell<Vec<String>>,
    signal: Notify,
    /// --http-client-connect-timeout, --http-client-request-timeout.
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Discovery {
    pub fn new(lookup: LookupHandle, connect_timeout: Duration, request_timeout: Duration) -> Self {
        Discovery {
            lookup,
            pending: RefCell::new(Vec::new()),
            signal: Notify::default(),
            connect_timeout,
            request_timeout,
        }
    }

    /// Called when a topic is created at run time: true if it must wait
    /// for the answer (some nsqlookupd has identified itself).
    pub fn request(&self, topic: &str) -> bool {
        if self.lookup.http_addresses().is_empty() {
            return false;
        }
        self.pending.borrow_mut().push(topic.to_string());
        self.signal.notify();
        true
    }

    /// The core's discovery task: asks for every requested topic and hands
    /// the channel names (ephemeral ones left out) to `found`, which must
    /// also release the topic when the list is empty or the query failed.
    pub async fn run(self: Rc<Self>, found: impl Fn(&str, Vec<String>) + 'static) {
        let found = Rc::new(found);
        loop {
            let seen = self.signal.generation();
            let topics = std::mem::take(&mut *self.pending.borrow_mut());
            if topics.is_empty() {
                self.signal.changed(seen).await;
                continue;
            }
            for topic in topics {
                let me = self.clone();
                let found = found.clone();
                glommio::spawn_local(async move {
                    let channels = me.channels_of(&topic).await;
                    found(&topic, channels);
                })
                .detach();
            }
        }
    }

    /// The union over every lookupd; a failing one is logged and skipped.
    async fn channels_of(&self, topic: &str) -> Vec<String> {
        let lookupds = self.lookup.http_addresses();
        let answers = futures::future::join_all(
            lookupds
                .iter()
                .map(|l| fetch_channels(l, topic, self.connect_timeout, self.request_timeout)),
        )
        .await;
        let mut channels = Vec::new();
        for (lookupd, answer) in lookupds.iter().zip(answers) {
            match answer {
                Ok(names) => channels.extend(names),
                Err(e) => tracing::warn!(
                    topic,
                    lookupd = %lookupd.host,
                    error = %e,
                    "failed to query nsqlookupd for channels to pre-create"
                ),
            }
        }
        channels.sort();
        channels.dedup();
        channels.retain(|c| !crate::protocol::names::is_ephemeral(c));
        channels
    }
}

/// The shard's view of nsqlookupd: registrations go to the lookup thread
/// (L5), channel queries to this core's discovery task (L7).
impl Announce for Discovery {
    fn register(&self, topic: &str, channel: Option<&str>) {
        self.lookup.register(topic, channel);
    }

    fn unregister(&self, topic: &str, channel: Option<&str>) {
        self.lookup.unregister(topic, channel);
    }

    fn request_channels(&self, topic: &str) -> bool {
        self.request(topic)
    }
}

#[derive(serde::Deserialize)]
struct ChannelsReply {
    #[serde(default)]
    channels: Vec<String>,
}

/// `GET http://<lookupd>/channels?topic=<topic>` (V1 reply
/// `{"channels": [...]}`).
async fn fetch_channels(
    lookupd: &LookupdHttp,
    topic: &str,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Vec<String>, String> {
    let mut stream = None;
    let mut last_error = String::from("no address");
    for addr in &lookupd.addrs {
        match glommio::net::TcpStream::connect_timeout(addr, connect_timeout).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let stream = stream.ok_or(last_error)?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        glommio::spawn_local(async move {
            let _ = conn.await;
        })
        .detach();
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("topic", topic)
            .finish();
        let request = hyper::Request::get(format!("/channels?{query}"))
            .header(hyper::header::HOST, &lookupd.host)
            .header(hyper::header::ACCEPT, "application/vnd.nsq; version=1.0")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice::<ChannelsReply>(&body)
            .map(|r| r.channels)
            .map_err(|e| format!("bad JSON: {e}"))
    };
    futures_lite::future::or(exchange, async {
        glommio::timer::sleep(request_timeout).await;
        Err(format!("timed out after {request_timeout:?}"))
    })
    .await
}
