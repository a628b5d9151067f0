//! Run-time settings a fleet shares: daily budgets set through the admin API and the
//! experiments file. One server takes the change; every server reads the settings every second
//! and applies them, so the fleet converges within a poll.

use crate::ledger::connect_manager;
use async_trait::async_trait;
use podium_core::Micros;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What the fleet shares at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Daily budgets set at run time, by line item id; they replace the marketplace's.
    pub budgets: BTreeMap<String, Micros>,
    /// The experiments file (TOML) set at run time; `None`: the one the servers started with.
    pub experiments: Option<String>,
}

/// Where the settings live.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// The settings now.
    async fn get(&self) -> Result<Settings, String>;
    /// Sets line item `id`'s daily budget, or removes the override (`None`).
    async fn set_budget(&self, id: &str, budget: Option<Micros>) -> Result<(), String>;
    /// Sets the experiments file, or goes back to the servers' own (`None`).
    async fn set_experiments(&self, toml: Option<String>) -> Result<(), String>;
}

/// Settings of one process.
#[derive(Default)]
pub struct MemorySettings {
    settings: Mutex<Settings>,
}

#[async_trait]
impl SettingsStore for MemorySettings {
    async fn get(&self) -> Result<Settings, String> {
        Ok(self.settings.lock().map_err(|e| e.to_string())?.clone())
    }

    async fn set_budget(&self, id: &str, budget: Option<Micros>) -> Result<(), String> {
        let mut s = self.settings.lock().map_err(|e| e.to_string())?;
        match budget {
            Some(b) => s.budgets.insert(id.to_string(), b),
            None => s.budgets.remove(id),
        };
        Ok(())
    }

    async fn set_experiments(&self, toml: Option<String>) -> Result<(), String> {
        self.settings.lock().map_err(|e| e.to_string())?.experiments = toml;
        Ok(())
    }
}

/// Settings in Redis: the hash `podium:settings:budgets` (line item → micros) and the string
/// `podium:settings:experiments`. Should live with the budget ledger (persisted).
pub struct RedisSettings {
    conn: redis::aio::ConnectionManager,
    shown: String,
}

const BUDGETS_KEY: &str = "podium:settings:budgets";
const EXPERIMENTS_KEY: &str = "podium:settings:experiments";
const DEADLINE: Duration = Duration::from_millis(500);

impl RedisSettings {
    /// Connects to `redis://host:port[/db]`.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let timeout = Duration::from_millis(250);
        let (conn, shown) = connect_manager(url, timeout, timeout).await?;
        Ok(Self { conn, shown })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Pipeline) -> Result<T, String> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(
            DEADLINE,
            async move { cmd.query_async::<T>(&mut conn).await },
        )
        .await
        .map_err(|_| format!("settings on {}: no answer within {DEADLINE:?}", self.shown))?
        .map_err(|e| format!("settings on {}: {e}", self.shown))
    }
}

#[async_trait]
impl SettingsStore for RedisSettings {
    async fn get(&self) -> Result<Settings, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(BUDGETS_KEY)
            .cmd("GET")
            .arg(EXPERIMENTS_KEY);
        let (budgets, experiments): (BTreeMap<String, i64>, Option<String>) =
            self.run(pipe).await?;
        Ok(Settings {
            budgets: budgets.into_iter().map(|(k, v)| (k, Micros(v))).collect(),
            experiments,
        })
    }

    async fn set_budget(&self, id: &str, budget: Option<Micros>) -> Result<(), String> {
        let mut pipe = redis::pipe();
        match budget {
            Some(b) => pipe.cmd("HSET").arg(BUDGETS_KEY).arg(id).arg(b.0).ignore(),
            None => pipe.cmd("HDEL").arg(BUDGETS_KEY).arg(id).ignore(),
        };
        self.run(pipe).await
    }

    async fn set_experiments(&self, toml: Option<String>) -> Result<(), String> {
        let mut pipe = redis::pipe();
        match toml {
            Some(t) => pipe.cmd("SET").arg(EXPERIMENTS_KEY).arg(t).ignore(),
            None => pipe.cmd("DEL").arg(EXPERIMENTS_KEY).ignore(),
        };
        self.run(pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_settings_set_and_clear() {
        let s = MemorySettings::default();
        s.set_budget("li-1", Some(Micros(5))).await.unwrap();
        s.set_experiments(Some("x".into())).await.unwrap();
        let got = s.get().await.unwrap();
        assert_eq!(got.budgets["li-1"], Micros(5));
        assert_eq!(got.experiments.as_deref(), Some("x"));
        s.set_budget("li-1", None).await.unwrap();
        s.set_experiments(None).await.unwrap();
        assert_eq!(s.get().await.unwrap(), Settings::default());
    }
}
