//! The network between members, as a seam: how a member's blocking threads open a connection
//! to another member's superserver, and how the superserver takes connections in.
//!
//! A member reaches the network through one [`Network`], passed in with its settings
//! ([`InstanceSettings::network`](crate::instance::InstanceSettings::network)):
//!
//! - [`Tcp`], the real one: TCP sockets (TLS is put on them afterwards, by
//!   [`crate::mirror::dial`] and the superserver, when the mirror requires it);
//! - [`MemoryNetwork`], a network inside one process: the members of a test are its hosts
//!   ([`MemoryHost`]) and listen and connect by address as they would over TCP, and the test
//!   cuts a direction of traffic, or every connection, where a real network would fail
//!   ([`memory`]).
//!
//! What goes through the seam is the mirror's data channel and every conversation on the
//! superserver port (a backup's or async's link, a Catchup's fetch, Copy from Primary): the
//! protocol code — the receiver's thread, the superserver's threads, the hub's outbox — runs
//! unchanged over either network, because both give it the same [`Channel`] (one handle
//! reads while another writes; reads and writes wait at most their timeouts).
//!
//! # Left out
//!
//! The agents' and the arbiter's connections stay on TCP (they are async code, and the tests
//! that need them run real processes). TLS runs over TCP only: the in-process network carries
//! mirrors that do not require SSL/TLS, and [`crate::mirror::dial`] says so otherwise.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::tls::Channel;

pub mod memory;

pub use memory::{MemoryHost, MemoryNetwork};

/// Where a member's connections to other members go (see the module essay).
pub trait Network: Send + Sync + fmt::Debug {
    /// A plain connection to `address` (`host:port`), made within `timeout`.
    fn connect(&self, address: &str, timeout: Duration) -> Result<Connection>;

    /// Listens on `address` (`host:port`; port 0 picks one).
    fn listen(&self, address: &str) -> Result<Listener>;
}

/// A plain connection, before anything is put on it.
#[derive(Debug)]
pub enum Connection {
    /// A TCP socket (TLS may go on it).
    Tcp(TcpStream),
    /// A connection on an in-process network.
    Memory(memory::MemoryStream),
}

impl Connection {
    /// The connection as a [`Channel`], plain.
    pub fn plain(self) -> Channel {
        match self {
            Connection::Tcp(tcp) => Channel::Plain(tcp),
            Connection::Memory(stream) => Channel::Memory(stream),
        }
    }
}

/// The real network: TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Network for Tcp {
    fn connect(&self, address: &str, timeout: Duration) -> Result<Connection> {
        let tcp = crate::wire::connect(address, timeout)?;
        // Acknowledgements and frames are small and latency is what a commit waits for.
        tcp.set_nodelay(true)?;
        Ok(Connection::Tcp(tcp))
    }

    fn listen(&self, address: &str) -> Result<Listener> {
        TcpListener::bind(address)
            .map(Listener::Tcp)
            .map_err(|e| Error::Io(format!("listen on {address}: {e}")))
    }
}

/// A connection the superserver took in, with where it came from.
pub struct Incoming {
    /// The connection, plain (the superserver puts TLS on it when it starts with a handshake).
    pub connection: Connection,
    /// The other end's address.
    pub peer: SocketAddr,
    /// This end's address (a peer with the same IP is a process on this host).
    pub local: SocketAddr,
}

/// Where the superserver takes connections from.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// An address on an in-process network.
    Memory(memory::MemoryListener),
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr(),
            Listener::Memory(listener) => Ok(listener.address()),
        }
    }

    /// The next connection (blocking); an error for one that failed on its way in.
    pub fn accept(&self) -> io::Result<Incoming> {
        match self {
            Listener::Tcp(listener) => {
                let (tcp, peer) = listener.accept()?;
                let local = tcp.local_addr()?;
                Ok(Incoming {
                    connection: Connection::Tcp(tcp),
                    peer,
                    local,
                })
            }
            Listener::Memory(listener) => listener.accept(),
        }
    }

    /// Wakes a thread blocked in [`accept`](Self::accept) (it then finds its stop flag set).
    pub fn wake(address: SocketAddr, network: &dyn Network) {
        let wake = if address.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), address.port())
        } else {
            address
        };
        let _ = network.connect(&wake.to_string(), Duration::from_secs(1));
    }
}
