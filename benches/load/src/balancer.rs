//! `--servers N`: several Narutalk servers on one PostgreSQL database behind a round-robin
//! TCP forwarder of the harness's own, so that every scenario runs unchanged against the
//! group: each new connection (HTTP or WebSocket) goes to the next server, with no sticky
//! sessions, as behind a load balancer. A socket and the posts it hears from therefore
//! usually meet on different servers (`ws-fanout` counts what the group loses).
//!
//! The forwarder copies bytes both ways on the harness's runtime; it costs some of the
//! machine the servers run on, which the report says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Starts the forwarder on a free loopback port in front of `servers`, and answers its
/// address. It runs until the harness exits.
pub async fn start(servers: Vec<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the forwarder")?;
    let addr = listener.local_addr().context("the forwarder's address")?;
    let servers = Arc::new(servers);
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let server = servers[next.fetch_add(1, Ordering::Relaxed) % servers.len()];
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                if let Ok(mut upstream) = TcpStream::connect(server).await {
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    Ok(addr)
}
