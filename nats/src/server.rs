//! A private nats-server with JetStream, for tests and `latch dev`.
//!
//! Started from the `nats-server` binary on PATH on a random loopback port with its own store
//! directory; killed when the guard drops. It can be stopped and restarted on the same port and
//! store, which is how tests show that nothing is lost while NATS is away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not start nats-server (is it on PATH?): {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nats-server did not report a port within 10 s")]
    NoPort,
}

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
    _temp: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A server in a fresh temporary directory, deleted on drop.
    pub async fn start() -> Result<Self, ServerError> {
        Self::start_with_config(None).await
    }

    /// As [`start`](Self::start), with a server configuration file's text (e.g. authorization).
    pub async fn start_with_config(config: Option<&str>) -> Result<Self, ServerError> {
        let temp = tempfile::Builder::new().prefix("latch-nats-").tempdir()?;
        let mut server = Self::start_in(temp.path(), config).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// A server keeping its store under `dir` (kept after drop).
    pub async fn start_in(dir: &Path, config: Option<&str>) -> Result<Self, ServerError> {
        std::fs::create_dir_all(dir)?;
        let config = match config {
            Some(text) => {
                let path = dir.join("nats.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            child: None,
            port: 0,
            dir: dir.to_owned(),
            config,
            _temp: None,
        };
        server.spawn(None).await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id (for reload signals), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        self.stop();
        let port = self.port;
        self.spawn(Some(port)).await
    }

    async fn spawn(&mut self, port: Option<u16>) -> Result<(), ServerError> {
        let ports_dir = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let mut cmd = Command::new("nats-server");
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", "127.0.0.1", "-js", "-p"])
            .arg(port.map_or("-1".to_owned(), |p| p.to_string()));
        // A configuration that names its own store (one that is reloaded must: after a reload
        // the file's JetStream settings replace the command line's) gets no `-sd`.
        let own_store = self
            .config
            .as_ref()
            .and_then(|c| std::fs::read_to_string(c).ok())
            .is_some_and(|text| text.contains("store_dir"));
        if !own_store {
            cmd.arg("-sd").arg(self.dir.join("store"));
        }
        cmd.arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn()?;
        self.child = Some(child);
        for _ in 0..200 {
            if let Some(port) = read_port(&ports_dir) {
                self.port = port;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop();
        Err(ServerError::NoPort)
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "ports") {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
            let url = ports["nats"][0].as_str()?;
            return url.rsplit(':').next()?.parse().ok();
        }
    }
    None
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
