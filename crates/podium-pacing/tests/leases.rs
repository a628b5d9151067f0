//! Shared budgets end to end: `MemoryLedger` and `RedisLedger` (a private `redis-server` per
//! test, never the shared one on 6379) never allocate past a limit under concurrent callers;
//! four lease books spending one budget concurrently end within it; a budget cut below spend
//! stops reserves at once; a ledger that stops answering stops spending at the lease, and
//! spending resumes when it answers again.

use podium_core::Micros;
use podium_pacing::{BudgetLedger, LeaseBook, LeaseConfig, LedgerError, MemoryLedger, RedisLedger};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `redis-server` child on its own port and directory; killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need `redis-server` on PATH (Debian: apt-get install redis-server): {e}"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let mut reply = [0u8; 5];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG"
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends a signal (`STOP`, `CONT`) to the server process.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Many concurrent callers each asking for random amounts: the grants sum to the limit exactly
/// (everyone kept asking until refused), never more, and `allocated` agrees.
async fn never_allocates_past_the_limit(ledgers: Vec<Arc<dyn BudgetLedger>>) {
    let limit = Micros(1_000_003);
    let mut tasks = Vec::new();
    for (t, ledger) in ledgers.iter().enumerate() {
        for k in 0..4u64 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = 0i64;
                let mut x = (t as u64 * 4 + k) * 7919 + 1;
                loop {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let want = Micros(1 + (x >> 40) as i64 % 20_000);
                    let g = ledger
                        .allocate("li-1:2026-11-27", limit, want)
                        .await
                        .unwrap();
                    assert!(g <= want && g.0 >= 0);
                    got += g.0;
                    if g.0 == 0 {
                        return got;
                    }
                }
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, limit.0);
    assert_eq!(
        ledgers[0].allocated("li-1:2026-11-27").await.unwrap(),
        limit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_ledger_never_allocates_past_the_limit() {
    let ledger: Arc<dyn BudgetLedger> = Arc::new(MemoryLedger::new());
    never_allocates_past_the_limit(vec![ledger.clone(), ledger]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_ledger_never_allocates_past_the_limit() {
    let server = RedisServer::start();
    let mut ledgers: Vec<Arc<dyn BudgetLedger>> = Vec::new();
    // Separate connections, as separate servers would have.
    for _ in 0..3 {
        ledgers.push(Arc::new(RedisLedger::connect(&server.url()).await.unwrap()));
    }
    never_allocates_past_the_limit(ledgers.clone()).await;
    let l = &ledgers[0];
    l.release("li-1:2026-11-27", Micros(3)).await.unwrap();
    assert_eq!(
        l.allocated("li-1:2026-11-27").await.unwrap(),
        Micros(1_000_000)
    );
    l.release("li-1:2026-11-27", Micros(5_000_000))
        .await
        .unwrap();
    assert_eq!(
        l.allocated("li-1:2026-11-27").await.unwrap(),
        Micros(0),
        "never below zero"
    );
    l.record_spent("li-1:life", Micros(42)).await.unwrap();
    l.record_spent("li-1:life", Micros(8)).await.unwrap();
    assert_eq!(ledgers[1].spent("li-1:life").await.unwrap(), Micros(50));
    assert_eq!(l.spent("nothing").await.unwrap(), Micros(0));
    // The key layout operators look for, with a hash tag for Redis Cluster.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &server.port.to_string(),
            "GET",
            "podium:budget:{li-1:life}:spent",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "50");
}

/// Four servers spend one budget as fast as they can, each from its own lease book.
async fn four_servers_spend_within_the_limit(ledger: Arc<dyn BudgetLedger>) {
    let limit = Micros(5_000_000);
    let cost = Micros(1_700);
    let config = LeaseConfig {
        servers: 4,
        ..LeaseConfig::default()
    };
    let mut tasks = Vec::new();
    for s in 0..4i64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let book = LeaseBook::new(config);
            let key = "li-9:2026-11-27";
            let mut now = 0i64;
            loop {
                now += 1 + s;
                if book.reserve(key, cost, now) {
                    book.confirm(key, cost);
                    continue;
                }
                let granted = book.refill(ledger.as_ref(), key, limit, now).await.unwrap();
                if granted == Micros::ZERO && !book.reserve(key, cost, now) {
                    // Refused with nothing left to take: the budget is out.
                    book.settle(ledger.as_ref()).await.unwrap();
                    return book.status(key).unwrap().spent;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().0;
    }
    assert!(total <= limit.0, "overspent: {total} > {limit:?}");
    assert!(total >= limit.0 - 4 * cost.0, "stranded too much: {total}");
    assert_eq!(
        ledger.spent("li-9:2026-11-27").await.unwrap(),
        Micros(total)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_lease_books_share_a_memory_ledger_without_overspending() {
    four_servers_spend_within_the_limit(Arc::new(MemoryLedger::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_lease_books_share_a_redis_ledger_without_overspending() {
    let server = RedisServer::start();
    four_servers_spend_within_the_limit(Arc::new(
        RedisLedger::connect(&server.url()).await.unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn a_budget_cut_below_spend_stops_at_once() {
    let ledger = MemoryLedger::new();
    let book = LeaseBook::new(LeaseConfig::default());
    let key = "li-3:life";
    book.refill(&ledger, key, Micros(1_000_000), 0)
        .await
        .unwrap();
    for _ in 0..100 {
        assert!(book.reserve(key, Micros(1_000), 1));
        book.confirm(key, Micros(1_000));
    }
    assert!(
        book.status(key).unwrap().available > Micros::ZERO,
        "lease left"
    );
    book.set_limit(key, Micros(50_000));
    assert!(
        !book.reserve(key, Micros(1), 2),
        "stops at once, before any refill"
    );
    assert_eq!(
        book.refill(&ledger, key, Micros(50_000), 3).await.unwrap(),
        Micros::ZERO
    );
    assert!(!book.reserve(key, Micros(1), 4));
    // The unused lease went back: the ledger holds only what was spent.
    assert_eq!(ledger.allocated(key).await.unwrap(), Micros(100_000));
    assert_eq!(ledger.spent(key).await.unwrap(), Micros(100_000));
}

#[tokio::test]
async fn unconfirmed_reservations_expire_back_into_the_lease() {
    let ledger = MemoryLedger::new();
    let book = LeaseBook::new(LeaseConfig::default());
    let key = "li-4:life";
    book.refill(&ledger, key, Micros(10_000), 0).await.unwrap();
    let lease = book.status(key).unwrap().granted;
    assert_eq!(
        lease,
        Micros(2_500),
        "a quarter of what is left for one server"
    );
    assert!(book.reserve(key, Micros(2_000), 1_000));
    assert!(!book.reserve(key, Micros(1_000), 1_000), "only 500 left");
    book.expire(1_000 + 4 * 60_000);
    assert_eq!(book.status(key).unwrap().pending, Micros(2_000));
    book.expire(1_000 + 6 * 60_000);
    let st = book.status(key).unwrap();
    assert_eq!(
        (st.pending, st.available, st.expired),
        (Micros(0), lease, Micros(2_000))
    );
}

/// A ledger that can be made to fail, standing in for one that is unreachable.
struct Flaky {
    inner: MemoryLedger,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), LedgerError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(LedgerError::Unavailable("test: down".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BudgetLedger for Flaky {
    async fn allocate(
        &self,
        key: &str,
        limit: Micros,
        want: Micros,
    ) -> Result<Micros, LedgerError> {
        self.check()?;
        self.inner.allocate(key, limit, want).await
    }
    async fn release(&self, key: &str, amount: Micros) -> Result<(), LedgerError> {
        self.check()?;
        self.inner.release(key, amount).await
    }
    async fn record_spent(&self, key: &str, amount: Micros) -> Result<(), LedgerError> {
        self.check()?;
        self.inner.record_spent(key, amount).await
    }
    async fn spent(&self, key: &str) -> Result<Micros, LedgerError> {
        self.check()?;
        self.inner.spent(key).await
    }
    async fn allocated(&self, key: &str) -> Result<Micros, LedgerError> {
        self.check()?;
        self.inner.allocated(key).await
    }
}

/// Spends `cost` until reserve refuses, refilling first; returns what was spent.
async fn spend_until_refused(
    book: &LeaseBook,
    ledger: &dyn BudgetLedger,
    key: &str,
    limit: Micros,
) -> (i64, bool) {
    // Spend what the lease holds, then refill (which must report that spend to the ledger, so
    // it talks to it), then spend what the refill brought.
    let mut spent = 0;
    let mut spend = || {
        while book.reserve(key, Micros(100), 0) {
            book.confirm(key, Micros(100));
            spent += 100;
        }
    };
    spend();
    let refilled = book.refill(ledger, key, limit, 0).await.is_ok();
    spend();
    (spent, refilled)
}

#[tokio::test]
async fn ledger_down_spends_only_the_lease_and_recovers() {
    let ledger = Flaky {
        inner: MemoryLedger::new(),
        down: AtomicBool::new(false),
    };
    let book = LeaseBook::new(LeaseConfig::default());
    let (key, limit) = ("li-5:2026-11-27", Micros(1_000_000));
    book.refill(&ledger, key, limit, 0).await.unwrap();
    assert!(book.reserve(key, Micros(100), 0));
    book.confirm(key, Micros(100));
    ledger.down.store(true, Ordering::Relaxed);
    let lease = book.status(key).unwrap().granted;
    let (spent, refilled) = spend_until_refused(&book, &ledger, key, limit).await;
    assert!(!refilled);
    assert_eq!(
        spent + 100,
        lease.0,
        "spent exactly the rest of the lease, no more"
    );
    assert_eq!(book.status(key).unwrap().available, Micros(0));
    ledger.down.store(false, Ordering::Relaxed);
    let (more, refilled) = spend_until_refused(&book, &ledger, key, limit).await;
    assert!(refilled && more > 0, "resumes when the ledger answers");
    // Spend recorded while it was down reached the ledger on recovery.
    book.settle(&ledger).await.unwrap();
    assert_eq!(
        ledger.spent(key).await.unwrap(),
        book.status(key).unwrap().spent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_spends_only_the_lease_and_recovers() {
    let server = RedisServer::start();
    let ledger = RedisLedger::connect(&server.url()).await.unwrap();
    let book = LeaseBook::new(LeaseConfig::default());
    let (key, limit) = ("li-6:2026-11-27", Micros(1_000_000));
    book.refill(&ledger, key, limit, 0).await.unwrap();
    let lease = book.status(key).unwrap().granted;
    server.signal("STOP");
    let started = Instant::now();
    let (spent, refilled) = spend_until_refused(&book, &ledger, key, limit).await;
    assert!(!refilled, "refill fails while Redis does not answer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timeouts are short: {:?}",
        started.elapsed()
    );
    assert_eq!(spent, lease.0);
    server.signal("CONT");
    let mut recovered = false;
    for _ in 0..20 {
        let (more, refilled) = spend_until_refused(&book, &ledger, key, limit).await;
        if refilled && more > 0 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "spending resumes once Redis answers");
    book.settle(&ledger).await.unwrap();
    assert_eq!(
        ledger.spent(key).await.unwrap(),
        book.status(key).unwrap().spent
    );
    assert!(ledger.allocated(key).await.unwrap() <= limit);
}
