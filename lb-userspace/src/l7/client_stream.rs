//! A client's connection, registered with the worker's runtime only once it has to wait.
//!
//! Most connections that carry one request (`Connection: close`, health checkers, scripts) never
//! wait: the request is in the socket when it is accepted and the answer fits in the socket's
//! send buffer. Such a connection is read, written and closed with plain system calls; it never
//! costs the two `epoll_ctl` calls of a registration (nginx makes both for every connection) nor
//! the runtime's bookkeeping for it. The first read or write that would block registers it, and
//! from then on it is an ordinary tokio stream.

use std::{
    io,
    mem::MaybeUninit,
    net::{Shutdown, SocketAddr},
    pin::Pin,
    task::{Context, Poll, ready},
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf, unix::AsyncFd},
    net::TcpStream,
};

/// A client connection: plain until it has to wait, then registered.
#[derive(Debug)]
pub enum ClientStream {
    /// Not known to the runtime: reads and writes are plain, non-blocking system calls.
    Plain(std::net::TcpStream),
    Registered(TcpStream),
    /// Its registration failed: the descriptor is closed, and every call fails.
    Lost,
}

impl ClientStream {
    /// Registers the connection with the current runtime (the first wait does it on its own).
    pub fn register(&mut self) -> io::Result<&mut TcpStream> {
        if let ClientStream::Plain(_) = self {
            // Left `Lost` if registering fails: the descriptor is closed with the error.
            if let ClientStream::Plain(plain) = std::mem::replace(self, ClientStream::Lost) {
                *self = ClientStream::Registered(TcpStream::from_std(plain)?);
            }
        }
        match self {
            ClientStream::Registered(stream) => Ok(stream),
            _ => Err(lost()),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            ClientStream::Plain(plain) => plain.set_nodelay(on),
            ClientStream::Registered(stream) => stream.set_nodelay(on),
            ClientStream::Lost => Err(lost()),
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection could not be registered with the runtime")
}

/// What a plain socket's call settles: its result, or (None) that it would block and the
/// stream must register and wait. An interrupted call is asked again at once.
fn settled<T>(result: io::Result<T>, cx: &Context<'_>) -> Option<Poll<io::Result<T>>> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            cx.waker().wake_by_ref();
            Some(Poll::Pending)
        }
        done => Some(Poll::Ready(done)),
    }
}

/// Reads into `buf`'s unfilled part without initializing it first.
fn recv_into(socket: &std::net::TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    // SAFETY: recv writes bytes only; the bytes it wrote are marked initialized below and no
    // uninitialized byte is read.
    let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
    let n = SockRef::from(socket).recv(unfilled)?;
    // SAFETY: recv initialized the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(())
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let ClientStream::Plain(plain) = this
            && let Some(done) = settled(recv_into(plain, buf), cx)
        {
            return done;
        }
        Pin::new(this.register()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // std's send passes MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
        if let ClientStream::Plain(plain) = this
            && let Some(done) = settled(io::Write::write(&mut &*plain, bytes), cx)
        {
            return done;
        }
        Pin::new(this.register()?).poll_write(cx, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(_) | ClientStream::Lost => Poll::Ready(Ok(())),
            ClientStream::Registered(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(plain) => Poll::Ready(plain.shutdown(Shutdown::Write)),
            ClientStream::Registered(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientStream::Lost => Poll::Ready(Ok(())),
        }
    }
}

/// How long a connection may wait for its first bytes before it is accepted anyway.
const DEFER_ACCEPT_SECONDS: libc::c_int = 1;

/// A non-blocking listening socket on `endpoint`, one of several (SO_REUSEPORT: one per worker).
pub fn bind(endpoint: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(endpoint), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Accepted once the client's first bytes are in (HTTP, TLS and PROXY clients speak first),
    // as nginx's `deferred`: the request is read at once, without a registration and a wait,
    // and a connection that never sends costs the proxy nothing. One slow to send is accepted
    // after the wait all the same.
    crate::sockopt::set_int(&socket, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)?;
    socket.bind(&endpoint.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A listening socket on the worker's runtime whose connections come out unregistered.
#[derive(Debug)]
pub struct ClientListener {
    listener: AsyncFd<std::net::TcpListener>,
}

impl ClientListener {
    /// `listener` must be non-blocking; it is registered with the current runtime.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        // SAFETY: the listener owns its descriptor, which stays open and the same until the
        // `AsyncFd` (its only owner) is dropped; it is never taken out again.
        let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }?;
        Ok(ClientListener { listener })
    }

    /// The next connection, non-blocking and close-on-exec from the start (one `accept4`).
    pub async fn accept(&self) -> io::Result<(ClientStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(ClientStream, SocketAddr)>> {
        loop {
            let mut ready = ready!(self.listener.poll_read_ready(cx))?;
            let accepted = ready
                .try_io(|listener| SockRef::from(listener.get_ref()).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC));
            match accepted {
                Ok(Ok((socket, address))) => {
                    let peer = address.as_socket().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "an accepted connection without an IP address")
                    })?;
                    return Poll::Ready(Ok((ClientStream::Plain(socket.into()), peer)));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: readiness was cleared; wait for the next.
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, io::Write as _, time::Duration};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn listener() -> (ClientListener, SocketAddr) {
        let std_listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let address = std_listener.local_addr().unwrap();
        (ClientListener::new(std_listener).unwrap(), address)
    }

    #[tokio::test]
    async fn a_connection_that_never_waits_is_never_registered() {
        let (listener, address) = listener();
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client.write_all(b"request").unwrap();
        let (mut stream, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // Accepted only once the bytes were in (deferred accept): read without a wait.
        let mut got = [0u8; 7];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");
        stream.write_all(b"answer").await.unwrap();
        stream.flush().await.unwrap();
        assert!(matches!(stream, ClientStream::Plain(_)), "read and written without a wait: {stream:?}");
        drop(stream);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"answer", "the answer, then the close");
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_accepted_after_the_deferral_and_its_read_waits() {
        let (listener, address) = listener();
        let mut client = std::net::TcpStream::connect(address).unwrap();
        let started = std::time::Instant::now();
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(900), "accepted before the deferral ended");
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"late").unwrap();
            client
        });
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"late");
        assert!(matches!(stream, ClientStream::Registered(_)), "registered for the wait");
        let client = late.join().unwrap();
        // An EOF reaches a registered stream too.
        client.shutdown(Shutdown::Write).unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut got)).await.unwrap().unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_takes_waits_for_the_reader() {
        let (listener, address) = listener();
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client.write_all(b"GET").unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        // Far more than loopback's send and receive buffers hold.
        let body = vec![7u8; 16 << 20];
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut all = Vec::new();
            (&client).take(16 << 20).read_to_end(&mut all).unwrap();
            all.len()
        });
        tokio::time::timeout(Duration::from_secs(20), stream.write_all(&body)).await.unwrap().unwrap();
        assert!(matches!(stream, ClientStream::Registered(_)), "the write had to wait");
        assert_eq!(reader.join().unwrap(), 16 << 20);
    }
}
