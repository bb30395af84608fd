//! The agent asks its own instance about its mirror, on the instance's superserver port: the
//! `Info` conversation of the data channel ([`crate::mirror::protocol`]), answered with the
//! mirror's description — for a member about to join, and before forcing a stale primary down.

use std::time::Duration;

use crate::error::Error;
use crate::mirror::protocol::MirrorDescription;

/// `127.0.0.1:port` for a wildcard bind address.
pub(super) fn local_address(bind: &str) -> String {
    match bind.rsplit_once(':') {
        Some(("0.0.0.0", port)) | Some(("[::]", port)) => format!("127.0.0.1:{port}"),
        _ => bind.to_string(),
    }
}

/// Why the instance described no mirror when asked.
#[derive(Debug)]
pub(super) enum AskError {
    /// Nothing listens on its superserver port: it is starting (or just went).
    NotListening(String),
    /// It answered that it is no member of that mirror.
    NotMember(String),
    /// No answer, a broken connection or an answer that makes no sense.
    Failed(Error),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NotListening(why) | AskError::NotMember(why) => f.write_str(why),
            AskError::Failed(err) => write!(f, "{err}"),
        }
    }
}

impl From<Error> for AskError {
    fn from(err: Error) -> AskError {
        AskError::Failed(err)
    }
}

impl From<std::io::Error> for AskError {
    fn from(err: std::io::Error) -> AskError {
        AskError::Failed(err.into())
    }
}

pub(super) fn ask_instance(
    address: &str,
    mirror_name: &str,
) -> std::result::Result<MirrorDescription, AskError> {
    use crate::mirror::protocol::{Control, Message, read_message, write_control};
    use std::io::Write;
    let addr: std::net::SocketAddr = address
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(address)
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
        })
        .map_err(|e| Error::Unavailable(format!("instance superserver {address}: {e}")))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
            let why = format!("instance superserver {address}: {e}");
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                AskError::NotListening(why)
            } else {
                AskError::Failed(Error::Unavailable(why))
            }
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write_control(
        &mut stream,
        &Control::Info {
            mirror_name: mirror_name.to_string(),
        },
    )?;
    stream.flush()?;
    match read_message(&mut stream)? {
        Some(Message::Control(control)) => match *control {
            Control::InfoReply { description } => Ok(description),
            Control::Refused { reason, .. } => Err(AskError::NotMember(reason)),
            other => Err(Error::InvalidInput(format!("unexpected answer {other:?}")).into()),
        },
        _ => Err(Error::Unavailable("the instance did not answer".into()).into()),
    }
}
