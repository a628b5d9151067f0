//! Cross-request micro-batching for one model: small requests (an Open Inference Protocol call of
//! one row, say) that arrive together are scored as one batch, which costs a GBDT or an MLP less
//! per row than many batches of one.
//!
//! A task owns the queue. It takes the first waiting request, then every request already queued
//! (up to `max_rows` rows), then — if `max_wait` is set and the batch is still small — waits up to
//! `max_wait` for more. With `max_wait` zero no request ever waits for another: batches form only
//! from requests that were queued anyway, so batching adds no latency when the server is idle.
//! Off unless `models.toml` turns it on for a model.

use crate::pool::ComputePool;
use podium_model::Model;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Micro-batching limits of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most rows in one batch.
    pub max_rows: usize,
    /// Longest a batch waits for more requests, in microseconds (tokio's timer rounds a non-zero
    /// wait up to a millisecond tick).
    #[serde(default)]
    pub max_wait_us: u64,
}

struct Job {
    columns: Vec<Vec<f32>>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The handle to a model's batching task.
#[derive(Clone, Debug)]
pub struct MicroBatcher {
    tx: mpsc::Sender<Job>,
}

impl MicroBatcher {
    /// Starts the batching task for `model` on the current tokio runtime.
    pub fn spawn(model: Model, pool: ComputePool, config: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(collect(model, pool, config, rx));
        Self { tx }
    }

    /// Scores `rows` rows (column-major, manifest defaults applied by the model) as part of a batch.
    pub async fn predict(&self, columns: Vec<Vec<f32>>, rows: usize) -> Result<Vec<f32>, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                columns,
                rows,
                reply,
            })
            .await
            .map_err(|_| "the batching task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the batching task dropped the request".to_string())?
    }
}

async fn collect(
    model: Model,
    pool: ComputePool,
    config: BatchConfig,
    mut rx: mpsc::Receiver<Job>,
) {
    let max_rows = config.max_rows.max(1);
    let max_wait = Duration::from_micros(config.max_wait_us);
    while let Some(first) = rx.recv().await {
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < max_rows {
            match rx.try_recv() {
                Ok(job) => {
                    rows += job.rows;
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if !max_wait.is_zero() {
            let until = Instant::now() + max_wait;
            while rows < max_rows {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx.recv()).await {
                    Ok(Some(job)) => {
                        rows += job.rows;
                        jobs.push(job);
                    }
                    _ => break,
                }
            }
        }
        // Scored on the pool while this task goes on collecting the next batch.
        let (model, pool) = (model.clone(), pool.clone());
        tokio::spawn(async move { score(model, pool, jobs, rows).await });
    }
}

async fn score(model: Model, pool: ComputePool, jobs: Vec<Job>, rows: usize) {
    let width = jobs[0].columns.len();
    if jobs.iter().any(|j| j.columns.len() != width) {
        for j in jobs {
            let _ = j.reply.send(Err(
                "requests of one batch disagree on the number of inputs".into(),
            ));
        }
        return;
    }
    let mut merged: Vec<Vec<f32>> = (0..width).map(|_| Vec::with_capacity(rows)).collect();
    for j in &jobs {
        for (m, c) in merged.iter_mut().zip(&j.columns) {
            m.extend_from_slice(c);
        }
    }
    let result = pool.run(move || model.predict_columns(merged, rows)).await;
    match result {
        Ok(values) => {
            let mut start = 0;
            for j in jobs {
                let _ = j.reply.send(Ok(values[start..start + j.rows].to_vec()));
                start += j.rows;
            }
        }
        Err(e) => {
            let message = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(message.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_model::linear::LinearRuntime;
    use podium_model::manifest::{OutputSpec, ServingSpec};
    use podium_model::{InputSpec, Link, Manifest, ModelKind};
    use std::sync::Arc;

    fn model() -> Model {
        let manifest = Manifest {
            name: "lin".into(),
            version: "1".into(),
            kind: ModelKind::Linear,
            task: "ctr".into(),
            weights: "w".into(),
            inputs: vec![InputSpec {
                name: "x".into(),
                kind: "f32".into(),
                default: None,
            }],
            output: OutputSpec {
                link: Link::Identity,
                ..OutputSpec::default()
            },
            serving: ServingSpec {
                latency_budget_us: 100,
                fallback_prior: 0.0,
            },
            calibration: None,
        };
        Model::new(manifest, Arc::new(LinearRuntime::new(1.0, vec![2.0]))).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_get_their_own_rows_back() {
        let b = MicroBatcher::spawn(
            model(),
            ComputePool::new(1),
            BatchConfig {
                max_rows: 16,
                max_wait_us: 2000,
            },
        );
        let calls = (0..40).map(|i| {
            let b = b.clone();
            async move {
                let xs: Vec<f32> = (0..(i % 3 + 1)).map(|k| (i * 10 + k) as f32).collect();
                let n = xs.len();
                let out = b.predict(vec![xs.clone()], n).await.unwrap();
                assert_eq!(out, xs.iter().map(|x| 1.0 + 2.0 * x).collect::<Vec<_>>());
            }
        });
        futures::future::join_all(calls).await;
    }
}
