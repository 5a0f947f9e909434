//! What the layers above the runtime (nsqlookupd, HTTP, statsd) plug into
//! it. The runtime starts cores and runs them; it does not know those
//! layers, they implement these traits (`crate::server` wires them).

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use glommio::Task;

use super::core::Core;
use super::listen::{ListenAddr, Listener};
use super::StartError;
use crate::shard::Announce;

/// Where the broker listens, once resolved (port 0 → the real port).
pub struct Listening<'a> {
    pub tcp: &'a ListenAddr,
    pub http: Option<&'a ListenAddr>,
    /// --nsqlookupd-tcp-address, changed at run time by PUT /config (H21).
    pub lookupd_addresses: Arc<Mutex<Vec<String>>>,
}

/// Process-wide services: started before the cores, stopped after them.
pub trait Services: Send + Sync {
    /// Once the listen addresses are known, before any core starts.
    fn start(&self, listening: &Listening<'_>) -> Result<(), StartError>;

    /// On core `core`'s thread, before it opens its queues.
    fn for_core(&self, core: usize) -> Box<dyn CoreServices>;

    /// Called when PUT /config changed the nsqlookupd addresses (H21).
    fn lookupd_peers_changed(&self);

    /// After every core has stopped.
    fn stop(&self);
}

/// One core's share of the services; lives on that core only.
pub trait CoreServices {
    /// What the core's shard tells of topics and channels coming and going
    /// (nsqlookupd, L5, L7); None: nobody listens.
    fn announce(&self) -> Option<Rc<dyn Announce>>;

    /// Once the core serves: the tasks that run until it stops (HTTP on
    /// this core's listener, statsd ...). They end when `core.stopping` is
    /// set; the core awaits them before writing its queues out.
    /// `https`: the HTTPS listener, with a certificate only.
    fn serve(
        self: Box<Self>,
        core: &Rc<Core>,
        http: Option<Listener>,
        https: Option<Listener>,
    ) -> Vec<Task<()>>;
}

/// No services: a broker with nothing above the runtime (tests, tools).
pub struct NoServices;

struct NoCoreServices;

impl Services for NoServices {
    fn start(&self, _: &Listening<'_>) -> Result<(), StartError> {
        Ok(())
    }

    fn for_core(&self, _: usize) -> Box<dyn CoreServices> {
        Box::new(NoCoreServices)
    }

    fn lookupd_peers_changed(&self) {}

    fn stop(&self) {}
}

impl CoreServices for NoCoreServices {
    fn announce(&self) -> Option<Rc<dyn Announce>> {
        None
    }

    fn serve(
        self: Box<Self>,
        _: &Rc<Core>,
        _: Option<Listener>,
        _: Option<Listener>,
    ) -> Vec<Task<()>> {
        Vec::new()
    }
}
