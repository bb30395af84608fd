//! The agent's probe of a running instance: does it answer on its superserver port, is
//! nothing listening there (starting or stopping), or does it take the connection and say
//! nothing (hung)?

use std::time::Duration;

use crate::error::Error;

/// How a running instance reacted to a probe.
pub(super) enum Probe {
    /// It answered: alive.
    Answered,
    /// Nothing listens on its port: it is starting up (or stopping), not hung.
    NotListening,
    /// It took the connection but said nothing in time: hung.
    Silent,
}

pub(super) fn probe_instance(address: &str, timeout: Duration) -> Probe {
    use crate::mirror::protocol::{Control, read_message, write_control};
    use std::io::Write;
    let Ok(addr) = address.parse::<std::net::SocketAddr>() else {
        return Probe::NotListening;
    };
    let mut stream = match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Probe::NotListening;
        }
        Err(_) => return Probe::Silent,
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let asked = write_control(
        &mut stream,
        &Control::Info {
            mirror_name: String::new(),
        },
    )
    .and_then(|_| stream.flush().map_err(Error::from));
    match asked.and_then(|_| read_message(&mut stream)) {
        Ok(_) => Probe::Answered,
        Err(Error::Io(_)) => Probe::Silent,
        // Anything it said, even nonsense, shows it is alive.
        Err(_) => Probe::Answered,
    }
}
