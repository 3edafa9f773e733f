//! Background reachability probes of the services health reports (contract section 4):
//! a TCP connection to the service's host and port every 10 seconds, the first at start.
//! Until a probe has connected, a service counts as unreachable (the `template` AI needs
//! no service and is always reachable).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How often a service is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes the service at `url` every [`PROBE_INTERVAL`], recording in `reachable` whether
/// it accepted a connection. A URL with no usable host is recorded as unreachable.
pub fn spawn(url: &str, reachable: Arc<AtomicBool>) -> JoinHandle<()> {
    let address = service_address(url);
    tokio::spawn(async move {
        let Some(address) = address else {
            reachable.store(false, Ordering::Relaxed);
            return;
        };
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        loop {
            ticks.tick().await;
            let connected = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(address.as_str())).await,
                Ok(Ok(_))
            );
            reachable.store(connected, Ordering::Relaxed);
        }
    })
}

/// `host:port` of an `http://` or `https://` URL (default ports 80 and 443).
fn service_address(url: &str) -> Option<String> {
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else {
        (url.strip_prefix("https://")?, 443)
    };
    let authority = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|a| !a.is_empty())?;
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    })
}

#[cfg(test)]
mod tests {
    use super::service_address;

    #[test]
    fn the_address_is_the_urls_host_and_port() {
        assert_eq!(
            service_address("http://localhost:8001/api/search/").as_deref(),
            Some("localhost:8001")
        );
        assert_eq!(
            service_address("https://search.example.org/x").as_deref(),
            Some("search.example.org:443")
        );
        assert_eq!(
            service_address("http://[::1]/x").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            service_address("http://[::1]:9000").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(service_address("ftp://x"), None);
        assert_eq!(service_address("http:///x"), None);
    }
}
