//! The broker as `ringsqd` runs it: the runtime's cores with nsqlookupd
//! registration, the HTTP API and statsd plugged in. The top layer: the
//! only module that knows all the others.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use glommio::Task;

use crate::config::Options;
use crate::lookup::discovery::Discovery;
use crate::lookup::{Identity, LookupHandle};
use crate::runtime::core::Core;
use crate::runtime::listen::{ListenAddr, Listener};
use crate::runtime::{CoreServices, Listening, Services, StartError};
use crate::shard::Announce;

/// Runs the broker until SIGINT/SIGTERM.
pub fn run(opts: Options) -> Result<(), StartError> {
    let services = Arc::new(Server {
        opts: opts.clone(),
        lookup: Mutex::new(None),
    });
    crate::runtime::run(opts, services)
}

struct Server {
    opts: Options,
    /// The nsqlookupd client thread (L1-L6), once started.
    lookup: Mutex<Option<(LookupHandle, JoinHandle<()>)>>,
}

impl Server {
    fn lookup_handle(&self) -> Option<LookupHandle> {
        self.lookup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(h, _)| h.clone())
    }
}

/// L3: what nsqlookupd is told; ports 0 mean the real listening ports.
fn lookup_identity(opts: &Options, l: &Listening<'_>) -> Identity {
    Identity {
        broadcast_address: opts.effective_broadcast_address(),
        hostname: crate::config::hostname(),
        tcp_port: opts.effective_broadcast_tcp_port(l.tcp.port()),
        http_port: opts.effective_broadcast_http_port(l.http.and_then(ListenAddr::port)),
        max_response: opts.max_body_size.max(0) as u64,
    }
}

impl Services for Server {
    fn start(&self, listening: &Listening<'_>) -> Result<(), StartError> {
        let identity = lookup_identity(&self.opts, listening);
        let started =
            crate::lookup::start(identity, listening.lookupd_addresses.clone()).map_err(|e| {
                StartError::Executor {
                    core: 0,
                    err: format!("lookup thread: {e}"),
                }
            })?;
        *self.lookup.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
        Ok(())
    }

    fn for_core(&self, core: usize) -> Box<dyn CoreServices> {
        let discovery = self.lookup_handle().map(|lookup| {
            Rc::new(Discovery::new(
                lookup,
                self.opts.http_client_connect_timeout,
                self.opts.http_client_request_timeout,
            ))
        });
        Box::new(ServerCore { core, discovery })
    }

    fn lookupd_peers_changed(&self) {
        if let Some(h) = self.lookup_handle() {
            h.peers_changed();
        }
    }

    fn stop(&self) {
        let started = self.lookup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((handle, thread)) = started {
            handle.stop();
            let _ = thread.join();
        }
    }
}

/// One core's nsqlookupd discovery, HTTP server and (core 0) statsd.
struct ServerCore {
    core: usize,
    discovery: Option<Rc<Discovery>>,
}

impl CoreServices for ServerCore {
    fn announce(&self) -> Option<Rc<dyn Announce>> {
        self.discovery.clone().map(|d| d as Rc<dyn Announce>)
    }

    fn serve(
        self: Box<Self>,
        core: &Rc<Core>,
        http: Option<Listener>,
        https: Option<Listener>,
    ) -> Vec<Task<()>> {
        if let Some(discovery) = self.discovery {
            // L7: a weak handle, so the detached task never keeps the core
            // alive.
            let weak = Rc::downgrade(&core.broker);
            glommio::spawn_local(discovery.run(move |topic, channels| {
                if let Some(broker) = weak.upgrade() {
                    broker
                        .shard
                        .borrow_mut()
                        .channels_discovered(topic, channels);
                }
            }))
            .detach();
        }
        let mut tasks = Vec::new();
        if let Some(l) = http {
            tasks.push(glommio::spawn_local(crate::http::serve(core.clone(), l)));
        }
        if let Some(l) = https {
            tasks.push(glommio::spawn_local(crate::http::serve_tls(
                core.clone(),
                l,
            )));
        }
        if self.core == 0 {
            tasks.push(glommio::spawn_local(crate::metrics::statsd::run(
                core.clone(),
            )));
        }
        tasks
    }
}
