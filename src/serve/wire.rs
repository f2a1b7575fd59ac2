//! A connection's socket, shared by the task that serves the connection and the hub's
//! fan-out writers.
//!
//! A WebSocket frame from the server is not masked, so an event's frame is the same
//! bytes for every session: its header (a few bytes, made on the stack) and the event's
//! shared payload, written with one `writev` and never copied per session. The hub's
//! writers write queued events straight to every idle session's socket
//! ([`Wire::write_frames`]), without waking the session's task. Everything else goes
//! through the session: tungstenite writes replies, pings and the closing frame through
//! [`Conn`], and the session writes the events the writers could not.
//!
//! Writes never interleave inside a frame. Every write to the socket happens under the
//! wire's lock. A frame the socket took only in part leaves its rest in the wire, written
//! before anything else. Events are not written while tungstenite is halfway through its
//! buffer, and the writers keep away while the session holds the wire ([`Wire::hold`],
//! while it answers a client message, so that an answer such as `subscribed` is not
//! overtaken by the events it announces).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hub::{Sink, Written};

/// At most this many frames are written in one `writev`.
const FRAMES_PER_WRITE: usize = 32;

/// A connection's socket and what its writers must know about each other.
#[derive(Debug)]
pub(crate) struct Wire {
    stream: TcpStream,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The session is answering a client message: the hub queues.
    held: bool,
    /// The connection's own writer (HTTP, then tungstenite) wrote part of its buffer:
    /// the socket is inside one of its frames until it writes the rest.
    dirty: bool,
    /// What the socket has not yet taken of a frame written here.
    rest: Vec<u8>,
}

impl Wire {
    /// Wraps an accepted connection.
    pub(crate) fn new(stream: TcpStream) -> Arc<Wire> {
        Arc::new(Wire {
            stream,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps the hub from writing to this socket until [`Wire::release`].
    pub(crate) fn hold(&self) {
        self.lock().held = true;
    }

    /// Lets the hub write to this socket again.
    pub(crate) fn release(&self) {
        self.lock().held = false;
    }

    /// Whether the connection's own writer is halfway through its buffer (it must
    /// flush before anything else is written).
    pub(crate) fn dirty(&self) -> bool {
        self.lock().dirty
    }

    /// Waits until the socket can take more bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }
}

impl Sink for Wire {
    /// Whether part of a frame written here still waits for the socket.
    fn has_rest(&self) -> bool {
        !self.lock().rest.is_empty()
    }

    /// Writes what is left of an earlier frame, then text frames of `payloads` in
    /// order, in one `writev`, without waiting. Returns how many of `payloads` the
    /// socket took (a frame taken in part counts: its rest is kept) and whether
    /// everything was written. Writes nothing while the connection's own writer is
    /// halfway through its buffer, nor, if `unless_held`, while the session holds the
    /// wire.
    fn write_frames(&self, payloads: &[&[u8]], unless_held: bool) -> io::Result<Written> {
        let mut state = self.lock();
        if state.dirty || (unless_held && state.held) {
            return Ok(Written {
                taken: 0,
                all: false,
            });
        }
        write_frames(&self.stream, &mut state, payloads)
    }
}

/// The header of an unmasked, final text frame of `len` bytes.
fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x81;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

fn write_frames(stream: &TcpStream, state: &mut State, payloads: &[&[u8]]) -> io::Result<Written> {
    let payloads = &payloads[..payloads.len().min(FRAMES_PER_WRITE)];
    let mut headers = [([0u8; 10], 0usize); FRAMES_PER_WRITE];
    let mut slices = Vec::with_capacity(1 + 2 * payloads.len());
    if !state.rest.is_empty() {
        slices.push(IoSlice::new(&state.rest));
    }
    for (header, payload) in headers.iter_mut().zip(payloads) {
        *header = text_header(payload.len());
    }
    for (header, payload) in headers.iter().zip(payloads) {
        slices.push(IoSlice::new(&header.0[..header.1]));
        slices.push(IoSlice::new(payload));
    }
    let mut n = match stream.try_write_vectored(&slices) {
        Ok(n) => n,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
            return Ok(Written {
                taken: 0,
                all: false,
            });
        }
        Err(err) => return Err(err),
    };
    drop(slices);
    if n < state.rest.len() {
        state.rest.drain(..n);
        return Ok(Written {
            taken: 0,
            all: false,
        });
    }
    n -= state.rest.len();
    state.rest.clear();
    let mut taken = 0;
    for (header, payload) in headers.iter().zip(payloads) {
        let (header, payload) = (&header.0[..header.1], *payload);
        let len = header.len() + payload.len();
        if n >= len {
            n -= len;
            taken += 1;
            continue;
        }
        if n > 0 {
            if n < header.len() {
                state.rest.extend_from_slice(&header[n..]);
                state.rest.extend_from_slice(payload);
            } else {
                state.rest.extend_from_slice(&payload[n - header.len()..]);
            }
            taken += 1;
        }
        return Ok(Written { taken, all: false });
    }
    Ok(Written { taken, all: true })
}

/// The connection as hyper, and after the upgrade tungstenite, see it: reads from the
/// socket, and writes that first finish any frame the hub left in part and that keep
/// the hub away while a write of theirs is incomplete.
#[derive(Debug)]
pub(crate) struct Conn {
    wire: Arc<Wire>,
}

impl Conn {
    /// The connection over `wire`.
    pub(crate) fn new(wire: Arc<Wire>) -> Conn {
        Conn { wire }
    }

    /// The shared socket.
    pub(crate) fn wire(&self) -> &Arc<Wire> {
        &self.wire
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.wire.stream.poll_read_ready(cx))?;
            match self.wire.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.wire.stream;
        loop {
            let mut state = self.wire.lock();
            let result = if state.rest.is_empty() {
                stream.try_write(buf)
            } else {
                stream.try_write(&state.rest)
            };
            match result {
                Ok(n) if !state.rest.is_empty() => {
                    state.rest.drain(..n);
                }
                Ok(n) => {
                    state.dirty = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    drop(state);
                    ready!(stream.poll_write_ready(cx))?;
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(&self.wire.stream);
        match socket.shutdown(std::net::Shutdown::Write) {
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Arc<Wire>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Wire::new(server), client)
    }

    #[test]
    fn headers_follow_rfc_6455() {
        assert_eq!(&text_header(5).0[..2], &[0x81, 5]);
        assert_eq!(&text_header(300).0[..4], &[0x81, 126, 1, 44]);
        let (big, n) = text_header(70_000);
        assert_eq!(n, 10);
        assert_eq!(&big[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order() {
        let (wire, mut client) = pair().await;
        let all = Written {
            taken: 2,
            all: true,
        };
        assert_eq!(wire.write_frames(&[b"one", b"two"], true).unwrap(), all);
        wire.hold();
        let none = Written {
            taken: 0,
            all: false,
        };
        assert_eq!(wire.write_frames(&[b"three"], true).unwrap(), none);
        let one = Written {
            taken: 1,
            all: true,
        };
        assert_eq!(wire.write_frames(&[b"three"], false).unwrap(), one);
        let mut got = [0u8; 17];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x81\x03one\x81\x03two\x81\x05three");
    }

    #[tokio::test]
    async fn a_frame_the_socket_took_in_part_is_finished_before_other_writes() {
        let (wire, mut client) = pair().await;
        let payload = vec![b'x'; 100_000];
        // Fill the socket until a frame goes in only in part.
        let mut frames = 0;
        loop {
            let written = wire.write_frames(&[&payload], true).unwrap();
            assert_eq!(
                written.taken, 1,
                "a full socket takes part of a frame first"
            );
            frames += 1;
            if !written.all {
                break;
            }
        }
        assert!(wire.has_rest());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut conn = Conn::new(wire.clone());
        conn.write_all(b"after").await.unwrap();
        assert!(!wire.has_rest() && !wire.dirty());
        conn.shutdown().await.unwrap();
        drop(conn);
        drop(wire);
        let all = reader.await.unwrap();
        let (header, len) = text_header(payload.len());
        let frame = len + payload.len();
        assert_eq!(all.len(), frames * frame + 5);
        for i in 0..frames {
            assert_eq!(&all[i * frame..i * frame + len], &header[..len]);
            assert!(
                all[i * frame + len..(i + 1) * frame]
                    .iter()
                    .all(|b| *b == b'x')
            );
        }
        assert_eq!(&all[all.len() - 5..], b"after");
    }
}
