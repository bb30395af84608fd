//! Length-prefixed JSON frames over TCP, for the agent and arbiter protocols (async for the
//! agent and arbiter processes, blocking for the instance's mirror threads), and the blocking
//! threads' way to connect.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. A length above the
//! receiver's limit closes the connection instead of allocating: a peer cannot make a member
//! reserve memory by sending a large number.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// Largest frame accepted on the agent port.
pub const MAX_AGENT_FRAME: usize = 1 << 20;

/// A frame's bytes: the length prefix and the JSON body.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let body =
        serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encode frame: {e}")))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::Internal("frame too large".into()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a prefix announces, refused above `max` before anything is allocated.
fn body_len(prefix: [u8; 4], max: usize) -> Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(Error::InvalidInput(format!(
            "frame of {len} bytes exceeds the limit of {max}"
        )));
    }
    Ok(len)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>> {
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| Error::InvalidInput(format!("bad frame: {e}")))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<()> {
    writer.write_all(&encode(value)?).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame; `None` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
    max: usize,
) -> Result<Option<T>> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(prefix, max)?];
    reader.read_exact(&mut body).await?;
    decode(&body)
}

/// A TCP connection to `address` from a blocking thread, trying each address it resolves to,
/// each for at most `timeout`.
pub fn connect(address: &str, timeout: std::time::Duration) -> Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = Error::Unavailable(format!("{address} did not resolve"));
    for addr in address
        .to_socket_addrs()
        .map_err(|e| Error::Unavailable(format!("{address}: {e}")))?
    {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Error::Unavailable(format!("{address}: {err}")),
        }
    }
    Err(last)
}

/// Writes one frame on a blocking stream.
pub fn write_frame_sync<W: std::io::Write, T: Serialize>(writer: &mut W, value: &T) -> Result<()> {
    writer.write_all(&encode(value)?)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame from a blocking stream; `None` when the peer closed between frames.
pub fn read_frame_sync<R: std::io::Read, T: DeserializeOwned>(
    reader: &mut R,
    max: usize,
) -> Result<Option<T>> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(prefix, max)?];
    reader.read_exact(&mut body)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &serde_json::json!({"op": "status"}))
            .await
            .unwrap();
        let mut reader = &buf[..];
        let value: serde_json::Value = read_frame(&mut reader, 100).await.unwrap().unwrap();
        assert_eq!(value["op"], "status");
        assert!(
            read_frame::<_, serde_json::Value>(&mut reader, 100)
                .await
                .unwrap()
                .is_none()
        );

        let mut reader = &buf[..];
        assert!(
            read_frame::<_, serde_json::Value>(&mut reader, 3)
                .await
                .is_err()
        );
        // The blocking twins read and write the same frames.
        let mut sync_buf = Vec::new();
        write_frame_sync(&mut sync_buf, &serde_json::json!({"op": "status"})).unwrap();
        assert_eq!(sync_buf, buf);
        let value: serde_json::Value = read_frame_sync(&mut &buf[..], 100).unwrap().unwrap();
        assert_eq!(value["op"], "status");
        assert!(read_frame_sync::<_, serde_json::Value>(&mut &buf[..], 3).is_err());

        let garbage = [0u8, 0, 0, 3, b'{', b'{', b'{'];
        assert!(
            read_frame::<_, serde_json::Value>(&mut &garbage[..], 100)
                .await
                .is_err()
        );
    }
}
