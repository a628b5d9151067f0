//! The compute pool: model compute runs here, never on the async I/O workers, so a burst of
//! scoring cannot stall the accept loop or a store read.

use std::sync::Arc;

/// Threads dedicated to model compute, sized to the machine's cores.
#[derive(Clone)]
pub struct ComputePool {
    pool: Arc<rayon::ThreadPool>,
}

impl ComputePool {
    /// A pool of `threads` threads (0 = one per core).
    pub fn new(threads: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("podium-compute-{i}"))
            .build()
            .expect("compute pool threads start");
        Self {
            pool: Arc::new(pool),
        }
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on the pool and awaits its result without blocking the async worker.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            let _ = tx.send(f());
        });
        rx.await.expect("compute task panicked")
    }

    /// Starts `f` on the pool and returns at once; `f` reports its own result.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        self.pool.spawn(f);
    }

    /// Runs `f` on the pool from synchronous code (replay, benchmarks), blocking until it ends.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl Default for ComputePool {
    fn default() -> Self {
        Self::new(0)
    }
}
