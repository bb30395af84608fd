//! Asking an agent: one request, one answer, on a fresh connection — plain, or over mutual TLS
//! with this member's identity and the certificate the other member must show. Used by the
//! members (the failover driver asks the primary's agent, Join asks for the mirror's
//! description), by `ctl`, and by the tests.

use super::*;

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an agent request goes, and how: plain, or over TLS with this member's identity and,
/// when known, the certificate the other member must show.
#[derive(Clone)]
pub struct Target {
    /// The agent's address.
    pub address: String,
    /// TLS: this member's identity and the expected fingerprint.
    pub tls: Option<(Arc<Identity>, Option<String>)>,
}

impl Target {
    /// A plain target.
    pub fn plain(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            tls: None,
        }
    }
}

/// [`call_to`] from a blocking thread (the failover driver, a join), with blocking sockets and
/// rustls itself: the whole exchange, connection and handshake included, within `timeout`.
pub fn call_blocking(
    target: &Target,
    request: AgentRequest,
    timeout: Duration,
) -> Result<AgentReply> {
    let address = &target.address;
    let deadline = std::time::Instant::now() + timeout;
    let late = || Error::Unavailable(format!("agent at {address} did not answer in time"));
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(late)
    };
    // Only the failover driver calls here, always another member's agent: a cut of the link to
    // the other members from the Lab page stops the question (its channel's reads and writes
    // check the cut too).
    crate::lab::cuts::global()
        .wait_to_connect(
            crate::lab::cuts::Link::Members,
            left()?.min(CONNECT_TIMEOUT),
        )
        .map_err(|e| Error::Unavailable(format!("agent at {address} did not answer: {e}")))?;
    let tcp = crate::wire::connect(address, left()?.min(CONNECT_TIMEOUT))
        .map_err(|e| Error::Unavailable(format!("agent at {address} did not answer: {e}")))?;
    let mut channel = match &target.tls {
        None => tls::Channel::Plain(tcp),
        Some((identity, expected)) => {
            tls::connect_blocking(tcp, identity, expected.as_deref(), left()?)?.0
        }
    };
    let left = left()?;
    channel.set_read_timeout(Some(left))?;
    channel.set_write_timeout(Some(left))?;
    // Whatever goes wrong on the way (a timeout included) means the agent cannot be asked.
    let unavailable = |e: Error| match e {
        Error::Io(why) => Error::Unavailable(format!("agent at {address}: {why}")),
        other => other,
    };
    crate::wire::write_frame_sync(&mut channel, &request).map_err(unavailable)?;
    let reply: serde_json::Value = crate::wire::read_frame_sync(&mut channel, MAX_AGENT_FRAME)
        .map_err(unavailable)?
        .ok_or_else(|| Error::Unavailable(format!("agent at {address} closed the connection")))?;
    serde_json::from_value(reply)
        .map_err(|e| Error::Unavailable(format!("agent at {address} answered oddly: {e}")))
}

/// Sends one request to an agent and returns its reply.
pub async fn call(address: &str, request: AgentRequest) -> Result<AgentReply> {
    call_to(&Target::plain(address), request)
        .await
        .map(|(reply, _)| reply)
}

/// Sends one request as `target` says, and returns the reply and, over TLS, the fingerprint of
/// the certificate the agent showed.
pub async fn call_to(
    target: &Target,
    request: AgentRequest,
) -> Result<(AgentReply, Option<String>)> {
    let address = &target.address;
    let stream = connect_agent(address).await?;
    let (reply, peer) = match &target.tls {
        None => (exchange(stream, &request, address).await?, None),
        Some((identity, expected)) => {
            let (stream, peer) = tls::connect(stream, identity, expected.as_deref()).await?;
            (exchange(stream, &request, address).await?, Some(peer))
        }
    };
    let reply = serde_json::from_value(reply)
        .map_err(|e| Error::Unavailable(format!("agent at {address} answered oddly: {e}")))?;
    Ok((reply, peer))
}

/// Sends one request and returns the answer as plain JSON: whoever listens on an agent port —
/// a member's agent or the arbiter — can answer it (the health check asks both).
pub async fn call_raw(address: &str, request: &AgentRequest) -> Result<serde_json::Value> {
    exchange(connect_agent(address).await?, request, address).await
}

async fn connect_agent(address: &str) -> Result<TcpStream> {
    let connect = TcpStream::connect(address);
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| Error::Unavailable(format!("agent at {address} did not answer")))?
        .map_err(|e| Error::Unavailable(format!("agent at {address}: {e}")))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &AgentRequest,
    address: &str,
) -> Result<serde_json::Value> {
    write_frame(&mut stream, request).await?;
    read_frame(&mut stream, MAX_AGENT_FRAME)
        .await?
        .ok_or_else(|| Error::Unavailable(format!("agent at {address} closed the connection")))
}
