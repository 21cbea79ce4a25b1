//! Test harness: `TestServer` starts the real server in-process on 127.0.0.1:0 and hands out
//! generated tonic clients; it shuts the server down on drop. No fixed ports, no sleeps.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use torchwire::config::Config;
use torchwire::model::SharedFactory;
use torchwire::model::torch::TorchFactory;
use torchwire::proto::admin_client::AdminClient;
use torchwire::proto::inference_client::InferenceClient;

/// The committed fixture repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

/// A running in-process server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A connected channel.
    pub channel: Channel,
    /// Cancelling it starts the server's graceful shutdown.
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// The real libtorch server over `config`.
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, Arc::new(TorchFactory)).await
    }

    /// A server with the given backend factory.
    pub async fn start_with(config: Config, factory: SharedFactory) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(torchwire::server::run_with_factory(config, listener, shutdown.clone(), factory));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to test server");
        TestServer { addr, channel, shutdown, task: Some(task) }
    }

    /// An Inference client.
    pub fn inference(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel.clone())
    }

    /// An Admin client.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// Shuts down gracefully and returns how `run` ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("task present until stop");
        task.await?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
