//! A TCP proxy on 127.0.0.1 between the browser and the server, which the test can cut
//! (every connection through it is closed, new ones are accepted and closed at once) and
//! restore. A browser's offline mode does not close open sockets; this does, as a network
//! that goes away would. Before a cut, it can also stall: the connections stay open but
//! nothing more goes through, as on a network that stops answering before it is noticed.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Passes it.
    Pass,
    /// Holds the open connections without forwarding anything (until a cut closes them);
    /// new connections are closed at once.
    Stall,
    /// Closes every connection; new ones are closed at once.
    Cut,
}

/// A running proxy to one upstream address; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port, passing traffic.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watching) = watch::channel(Mode::Pass);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *watching.borrow() != Mode::Pass {
                    // The connection is closed as soon as it is made.
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, upstream, watching.clone()));
            }
        });
        Proxy {
            addr,
            mode,
            accepting,
        }
    }

    /// The proxy's address, which the browser uses as the site's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding on every open connection, without closing any; new connections
    /// are refused. What is sent meanwhile never arrives. Ends with [`Proxy::cut`].
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Closes every connection through the proxy and refuses new ones until
    /// [`Proxy::restore`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Passes new connections again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        // Relays still open end with the cut.
        self.mode.send_replace(Mode::Cut);
    }
}

/// Copies both ways between `client` and a new connection to `upstream` until either
/// side ends or the proxy stops passing; a stalled connection is then held, unread,
/// until the proxy is cut or passes again; then both connections are closed (dropped).
async fn relay(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => return,
        _ = mode.wait_for(|mode| *mode != Mode::Pass) => {}
    }
    let _ = mode.wait_for(|mode| *mode != Mode::Stall).await;
}
