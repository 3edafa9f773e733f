//! A TCP proxy on 127.0.0.1 between the browser and the server, which the test can cut
//! (every connection through it is closed, new ones are accepted and closed at once) and
//! restore. A browser's offline mode does not close open sockets; this does, as a network
//! that goes away would.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy to one upstream address; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port, passing traffic.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watching) = watch::channel(true);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !*watching.borrow() {
                    // Cut: the connection is closed as soon as it is made.
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, upstream, watching.clone()));
            }
        });
        Proxy {
            addr,
            up,
            accepting,
        }
    }

    /// The proxy's address, which the browser uses as the site's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy and refuses new ones until
    /// [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Passes new connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        // Relays still open end with the cut.
        self.up.send_replace(false);
    }
}

/// Copies both ways between `client` and a new connection to `upstream` until either
/// side ends or the proxy is cut; then both connections are closed (dropped).
async fn relay(mut client: TcpStream, upstream: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}
