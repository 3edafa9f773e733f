//! Starting a server for a test and talking to it.

use std::net::SocketAddr;
use std::sync::Arc;

use narutalk_core::Narutalk;
use narutalk_core::config::Config;
use narutalk_core::db::OpenMode;
use tokio::sync::oneshot;

/// A running server on a free port, stopped when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// The absolute URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }
}

/// Starts a server with `Config::for_tests` in a new temporary folder. The listener is
/// bound before the server task starts, so requests can be sent at once.
pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(dir.path());
    let open_config = config.clone();
    let core = tokio::task::spawn_blocking(move || {
        Narutalk::open(&open_config, OpenMode::CreateIfMissing)
    })
    .await
    .unwrap()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        narutalk_server::serve(Arc::new(core), &config, listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    TestApp {
        addr,
        http: reqwest::Client::new(),
        _stop: stop,
        _dir: dir,
    }
}
