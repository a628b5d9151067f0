//! The `podium` binary started on a free port, for the end-to-end tests.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `podium serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// The admin listener's base URL.
    pub admin: String,
    pub data: tempfile::TempDir,
}

impl Server {
    /// Starts `podium serve` on port 0 and waits until `/readyz` answers 200.
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// Starts the server on a data directory prepared by `setup` first.
    pub async fn start_with(setup: impl FnOnce(&std::path::Path)) -> Server {
        Self::start_with_args(setup, &[]).await
    }

    /// Starts the server with extra `podium serve` flags.
    pub async fn start_with_args(setup: impl FnOnce(&std::path::Path), extra: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        setup(data.path());
        let mut child = Command::new(env!("CARGO_BIN_EXE_podium"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("podium starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut admin_line = String::new();
        stdout.read_line(&mut admin_line).unwrap();
        // Keep draining so the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let base = line
            .trim()
            .strip_prefix("podium listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let admin = admin_line
            .trim()
            .strip_prefix("podium admin API on ")
            .unwrap_or_else(|| panic!("unexpected second line {admin_line:?}"))
            .to_string();
        let server = Server {
            child,
            base,
            admin,
            data,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(server.url("/readyz")).await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// Starts the server on `dir`, which outlives it (a restart sees the same data).
    pub async fn start_in(dir: &std::path::Path, extra: &[&str]) -> Server {
        Self::start_with_args(
            |d| {
                std::fs::remove_dir(d).unwrap();
                std::os::unix::fs::symlink(dir, d).unwrap();
            },
            extra,
        )
        .await
    }

    /// SIGTERM, then waits for the process to drain, flush and exit.
    pub async fn stop_gracefully(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no graceful exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs a text document (the Prometheus exposition).
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// GETs a JSON document.
    pub async fn get_json(&self, path: &str) -> Value {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.post_to(self.url(path), body).await
    }

    /// POSTs JSON to the admin listener (no token).
    pub async fn admin_post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.post_to(self.admin_url(path), body).await
    }

    /// GETs a JSON document from the admin listener with the bearer `token`.
    pub async fn admin_get_json(&self, path: &str, token: &str) -> Value {
        reqwest::Client::new()
            .get(self.admin_url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GETs a text document from the admin listener.
    pub async fn admin_get_text(&self, path: &str) -> String {
        reqwest::get(self.admin_url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn post_to(&self, url: String, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request-level feature of a `POST /v1/features/hydrate` answer, by name.
pub fn feature(hydration: &Value, name: &str) -> f64 {
    hydration["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == name)
        .unwrap_or_else(|| panic!("no {name} in {hydration}"))[1]
        .as_f64()
        .unwrap()
}

/// Runs `podium ARGS` in `cwd`: whether it succeeded, its last stdout line as JSON (null when
/// not JSON), and its stderr.
pub fn podium(args: &[&str], cwd: &std::path::Path) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("null");
    (
        out.status.success(),
        serde_json::from_str(last).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free TCP port on loopback (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private `redis-server` on a port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Redis {
    /// Keeps nothing on disk: a restart is empty.
    pub fn start(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Self::start_in(port, dir.path(), false);
        r._dir = Some(dir);
        r
    }

    /// Persists to `dir` with an fsync'd append-only file, as a fleet's Redis should: a
    /// restart keeps the budget ledger.
    pub fn start_in(port: u16, dir: &std::path::Path, persist: bool) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir);
        if persist {
            cmd.args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]);
        } else {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "this test needs `redis-server` on PATH (Debian: apt-get install redis-server)",
            );
        wait_listening(port, "redis-server");
        Redis {
            child,
            port,
            _dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `nats-server` with JetStream storing under `dir`, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
}

impl Nats {
    pub fn start_in(port: u16, dir: &std::path::Path) -> Nats {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("this test needs `nats-server` on PATH (Debian: apt-get install nats-server)");
        wait_listening(port, "nats-server");
        Nats { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a directory tree (a data directory, to start another server on the same world).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
