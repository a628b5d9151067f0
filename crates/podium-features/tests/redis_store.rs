//! `RedisStore` against a real, private `redis-server` per test (never the shared one on 6379):
//! round trips, key layout and encoding, corrupt values, one MGET per read, expiry, a single-node
//! cluster, and a server killed and restarted under a live store.

use podium_features::{OnlineStore, RedisStore, StoredValue};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on its own port and directory; killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl RedisServer {
    fn start() -> Self {
        Self::spawn(free_port(), tempfile::tempdir().unwrap(), false)
    }

    /// One node of cluster mode that owns every slot.
    fn start_cluster() -> Self {
        let server = Self::spawn(free_port(), tempfile::tempdir().unwrap(), true);
        server.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server
            .cli(&["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
        {
            assert!(
                Instant::now() < deadline,
                "the one-node cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn spawn(port: u16, dir: tempfile::TempDir, cluster: bool) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "these tests need `redis-server` on PATH (Debian: apt-get install redis-server): {e}"
            )
        });
        let server = Self {
            child: Some(child),
            port,
            dir,
            cluster,
        };
        server.wait_ready();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut reply = [0u8; 5];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG"
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (shipped with redis-server) on PATH");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the server process.
    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} {pid}");
    }

    /// Starts a fresh (empty) server on the same port and directory.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "kill before restart");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        *self = Self::spawn(self.port, dir, self.cluster);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn value(i: usize) -> StoredValue {
    StoredValue::new(
        vec![i as f32, 0.25, -(i as f32)],
        1_700_000_000_000 + i as i64,
    )
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn values_round_trip_in_the_documented_layout() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    assert_eq!(store.backend(), "redis");
    store.ping().await.unwrap();

    store
        .put_many(vec![
            ("user:u1".into(), value(1)),
            ("line_item:7".into(), value(7)),
            (
                "advertiser:a".into(),
                StoredValue::new(Vec::<f32>::new(), -3),
            ),
        ])
        .await
        .unwrap();
    let keys = ["user:u1", "line_item:7", "advertiser:a"].map(String::from);
    let got = store.get_many(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(value(1)),
            Some(value(7)),
            Some(StoredValue::new(Vec::<f32>::new(), -3))
        ]
    );

    // From outside: the key is hash-tagged and the value is as-of then f32s, little-endian.
    let mut c = raw(&server).await;
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg("podium:f:{line_item:7}")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut expected = (1_700_000_000_007i64).to_le_bytes().to_vec();
    for x in [7.0f32, 0.25, -7.0] {
        expected.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!(bytes, expected);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("podium:f:{line_item:7}")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "no expiry unless asked for");
}

#[tokio::test]
async fn missing_keys_read_as_none() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store.put("user:u1".into(), value(1)).await.unwrap();
    let keys = ["user:nobody", "user:u1", "line_item:404"].map(String::from);
    assert_eq!(
        store.get_many(&keys).await.unwrap(),
        vec![None, Some(value(1)), None]
    );
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    assert_eq!(store.corrupt_values(), 0);
}

#[tokio::test]
async fn a_corrupt_value_reads_as_none_and_is_counted() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store
        .put_many(vec![
            ("line_item:1".into(), value(1)),
            ("line_item:3".into(), value(3)),
        ])
        .await
        .unwrap();
    let mut c = raw(&server).await;
    // Ten bytes: an as-of and half a float. And seven: not even an as-of.
    redis::cmd("SET")
        .arg("podium:f:{line_item:2}")
        .arg(&[1u8; 10][..])
        .exec_async(&mut c)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg("podium:f:{line_item:4}")
        .arg("garbage")
        .exec_async(&mut c)
        .await
        .unwrap();

    let keys = ["line_item:1", "line_item:2", "line_item:3", "line_item:4"].map(String::from);
    let got = store.get_many(&keys).await.unwrap();

    assert_eq!(got, vec![Some(value(1)), None, Some(value(3)), None]);
    assert_eq!(store.corrupt_values(), 2);
}

#[tokio::test]
async fn two_hundred_keys_are_one_mget() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let entries: Vec<(String, StoredValue)> = (0..200)
        .filter(|i| i % 4 != 0)
        .map(|i| (format!("line_item:{i}"), value(i)))
        .collect();
    server.cli(&["CONFIG", "RESETSTAT"]);
    store.put_many(entries).await.unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("line_item:{i}")).collect();

    let got = store.get_many(&keys).await.unwrap();

    for (i, v) in got.iter().enumerate() {
        let expected = (i % 4 != 0).then(|| value(i));
        assert_eq!(v, &expected, "line_item:{i}");
    }
    let stats = server.cli(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_mget:calls=1,"), "{stats}");
    assert!(stats.contains("cmdstat_set:calls=150,"), "{stats}");
    assert!(!stats.contains("cmdstat_get:"), "{stats}");
}

#[tokio::test]
async fn writes_expire_when_asked_to() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_expiry(Duration::from_secs(3600));
    store.put("content:c1".into(), value(1)).await.unwrap();
    let mut c = raw(&server).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("podium:f:{content:c1}")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "PTTL {ttl}");
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    let port = free_port();
    let started = Instant::now();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn a_killed_redis_fails_fast_and_the_store_recovers_by_itself() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let keys = ["user:u1", "line_item:1"].map(String::from);
    store.put("user:u1".into(), value(1)).await.unwrap();
    assert_eq!(store.get_many(&keys).await.unwrap()[0], Some(value(1)));

    server.kill();
    for attempt in 0..3 {
        let started = Instant::now();
        let result = store.get_many(&keys).await;
        let took = started.elapsed();
        eprintln!("attempt {attempt}: a dead Redis failed in {took:?}: {result:?}");
        assert!(result.is_err(), "attempt {attempt}: read from a dead Redis");
        assert!(
            took < Duration::from_secs(1),
            "attempt {attempt}: a dead Redis took {took:?} to fail"
        );
    }
    assert!(store.ping().await.is_err());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut failures = 0;
    loop {
        match store.get_many(&keys).await {
            Ok(values) => {
                // The restarted server kept nothing (`--save ''`).
                assert_eq!(values, vec![None, None]);
                break;
            }
            Err(e) => {
                failures += 1;
                assert!(Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(
        failures, 0,
        "the first read after the restart should reconnect"
    );
    store.put("user:u1".into(), value(2)).await.unwrap();
    assert_eq!(store.get_many(&keys).await.unwrap()[0], Some(value(2)));
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_hung_redis_times_out_and_the_store_recovers_when_it_answers_again() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let keys = ["user:u1".to_string()];
    store.put("user:u1".into(), value(1)).await.unwrap();

    server.signal("STOP");
    let started = Instant::now();
    let result = store.get_many(&keys).await;
    let took = started.elapsed();
    server.signal("CONT");
    eprintln!("a stopped Redis failed in {took:?}: {result:?}");

    assert!(result.is_err(), "read from a stopped Redis");
    assert!(
        took < Duration::from_secs(2),
        "a hung Redis took {took:?} to fail"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.get_many(&keys).await {
            Ok(values) => {
                assert_eq!(values, vec![Some(value(1))]);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_cluster_url_reads_and_writes_through_the_cluster_client() {
    let server = RedisServer::start_cluster();
    let url = format!("redis+cluster://127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&url)
        .await
        .unwrap()
        .with_expiry(Duration::from_secs(60));
    store.ping().await.unwrap();
    let entries: Vec<(String, StoredValue)> = (0..50)
        .map(|i| (format!("advertiser:{i}"), value(i)))
        .collect();
    store.put_many(entries).await.unwrap();
    let mut keys: Vec<String> = (0..50).map(|i| format!("advertiser:{i}")).collect();
    keys.push("advertiser:none".into());

    let got = store.get_many(&keys).await.unwrap();

    for (i, v) in got[..50].iter().enumerate() {
        assert_eq!(v, &Some(value(i)), "advertiser:{i}");
    }
    assert_eq!(got[50], None);
}
