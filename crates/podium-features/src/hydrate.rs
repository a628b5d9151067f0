//! Hydration: fetch a request's stored features in one batched read under a deadline, derive its
//! context features, and lay both out with the candidates' features as a column-major frame.

use crate::space::{FeatureSpace, Source};
use crate::store::OnlineStore;
use podium_core::{AdRequest, Device, FeatureFrame};
use std::sync::Arc;
use std::time::Duration;

/// A context feature, parsed from its name once when the hydrator is built.
#[derive(Clone, Debug, PartialEq)]
enum ContextFeature {
    DeviceIs(Device),
    Live,
    GenreIs(String),
    CountryIs(String),
    Breaks,
}

impl ContextFeature {
    fn parse(name: &str) -> Option<Self> {
        if name == "ctx_live" {
            return Some(Self::Live);
        }
        if name == "ctx_breaks" {
            return Some(Self::Breaks);
        }
        if let Some(d) = name.strip_prefix("ctx_device_") {
            return Device::ALL
                .into_iter()
                .find(|x| x.as_str() == d)
                .map(Self::DeviceIs);
        }
        if let Some(g) = name.strip_prefix("ctx_genre_") {
            return Some(Self::GenreIs(g.to_string()));
        }
        if let Some(c) = name.strip_prefix("ctx_country_") {
            return Some(Self::CountryIs(c.to_ascii_uppercase()));
        }
        None
    }

    fn value(&self, req: &AdRequest) -> f32 {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        match self {
            Self::DeviceIs(d) => flag(req.user.device == *d),
            Self::Live => flag(req.content.live),
            Self::GenreIs(g) => flag(req.content.genre == *g),
            Self::CountryIs(c) => flag(req.user.country == *c),
            Self::Breaks => req.breaks.len() as f32,
        }
    }
}

/// A context feature name the hydrator cannot derive from a request.
#[derive(Debug, thiserror::Error)]
#[error("context feature {0:?} is not derivable from a request (known: ctx_live, ctx_breaks, ctx_device_*, ctx_genre_*, ctx_country_*)")]
pub struct UnknownContextFeature(pub String);

/// The request-level feature values of one request.
#[derive(Clone, Debug)]
pub struct Hydrated {
    /// Context then user values, in column order.
    pub request_values: Vec<f32>,
    /// Whether the store held the viewer.
    pub user_found: bool,
    /// Set when the fetch failed or ran out of time and defaults were served instead.
    pub degraded: Option<String>,
}

/// Fetches request features and builds frames for one feature space.
pub struct Hydrator {
    space: Arc<FeatureSpace>,
    store: Arc<dyn OnlineStore>,
    context: Vec<(usize, ContextFeature)>,
    user_columns: Vec<usize>,
    user_defaults: Vec<f32>,
    candidate_columns: Vec<usize>,
}

impl Hydrator {
    /// A hydrator over `space`, reading stored features from `store`.
    pub fn new(
        space: Arc<FeatureSpace>,
        store: Arc<dyn OnlineStore>,
    ) -> Result<Self, UnknownContextFeature> {
        let context = space
            .of(Source::Context)
            .map(|(c, s)| {
                ContextFeature::parse(&s.name)
                    .map(|f| (c, f))
                    .ok_or_else(|| UnknownContextFeature(s.name.clone()))
            })
            .collect::<Result<_, _>>()?;
        let user: Vec<_> = space
            .of(Source::User)
            .map(|(c, s)| (c, s.default))
            .collect();
        let candidate_columns = space.of(Source::Candidate).map(|(c, _)| c).collect();
        Ok(Self {
            context,
            user_columns: user.iter().map(|u| u.0).collect(),
            user_defaults: user.iter().map(|u| u.1).collect(),
            candidate_columns,
            space,
            store,
        })
    }

    /// The feature space.
    pub fn space(&self) -> &Arc<FeatureSpace> {
        &self.space
    }

    /// The store key of a viewer's features.
    pub fn user_key(user_id: &str) -> String {
        format!("user:{user_id}")
    }

    /// Fetches the request's stored features (one batched read) within `budget`; on a miss, an
    /// error or a timeout the defaults are used and the result says why.
    pub async fn hydrate(&self, req: &AdRequest, budget: Duration) -> Hydrated {
        let width = self.context.len() + self.user_columns.len();
        let mut values = vec![f32::NAN; width];
        for (col, f) in &self.context {
            values[*col] = f.value(req);
        }
        let keys = [Self::user_key(req.user.id.as_str())];
        let fetched = tokio::time::timeout(budget, self.store.get_many(&keys)).await;
        let (row, degraded) = match fetched {
            Ok(Ok(mut rows)) => (rows.pop().flatten().map(|v| v.values), None),
            Ok(Err(e)) => (None, Some(format!("store error: {e}"))),
            Err(_) => (
                None,
                Some(format!("store read exceeded {} µs", budget.as_micros())),
            ),
        };
        let user_found = row.is_some();
        for (i, &col) in self.user_columns.iter().enumerate() {
            let stored = row
                .as_ref()
                .and_then(|r| r.get(i).copied())
                .filter(|v| !v.is_nan());
            values[col] = stored.unwrap_or(self.user_defaults[i]);
        }
        Hydrated {
            request_values: values,
            user_found,
            degraded,
        }
    }

    /// Builds the frame: request-level values broadcast to every row, then each candidate's own
    /// values (in [`FeatureSpace::candidate_names`] order) in its row.
    pub fn frame(&self, hydrated: &Hydrated, candidates: &[&[f32]]) -> FeatureFrame {
        let all: Vec<usize> = (0..self.space.schema().len()).collect();
        self.frame_of(hydrated, candidates, &all)
    }

    /// As [`frame`](Self::frame), building only the columns `present` (those a stage's models
    /// read); the others read as missing.
    pub fn frame_of(
        &self,
        hydrated: &Hydrated,
        candidates: &[&[f32]],
        present: &[usize],
    ) -> FeatureFrame {
        let rows = candidates.len();
        let mut frame = FeatureFrame::with_columns(self.space.schema().clone(), rows, present);
        for (col, &v) in hydrated.request_values.iter().enumerate() {
            if frame.has_column(col) {
                frame.fill_column(col, v);
            }
        }
        for (j, &col) in self.candidate_columns.iter().enumerate() {
            if !frame.has_column(col) {
                continue;
            }
            let column = frame.column_mut(col);
            for (cell, cand) in column.iter_mut().zip(candidates) {
                *cell = cand.get(j).copied().unwrap_or(f32::NAN);
            }
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::FeatureSpec;
    use crate::store::{MemoryStore, StoreError, StoredValue};
    use async_trait::async_trait;
    use podium_core::{AdBreak, BreakPosition, Content, User};

    fn space() -> Arc<FeatureSpace> {
        let spec = |name: &str, source, default| FeatureSpec {
            name: name.into(),
            source,
            default,
        };
        Arc::new(FeatureSpace::new(vec![
            spec("li_ctr", Source::Candidate, 0.01),
            spec("user_ctr", Source::User, 0.02),
            spec("ctx_device_tv", Source::Context, 0.0),
            spec("ctx_live", Source::Context, 0.0),
        ]))
    }

    fn request(user: &str) -> AdRequest {
        AdRequest {
            request_id: "r".into(),
            user: User {
                id: user.into(),
                country: "US".into(),
                device: Device::Tv,
            },
            content: Content {
                id: "c".into(),
                genre: "drama".into(),
                live: true,
            },
            breaks: vec![AdBreak {
                id: "b".into(),
                position: BreakPosition::Midroll,
                max_ads: 2,
                max_duration_s: 30,
            }],
            tmax: None,
        }
    }

    #[tokio::test]
    async fn lays_out_request_and_candidate_columns() {
        let store = Arc::new(MemoryStore::new());
        store.insert("user:u1".into(), StoredValue::new(vec![0.5f32], 0));
        let h = Hydrator::new(space(), store).unwrap();
        let hy = h.hydrate(&request("u1"), Duration::from_millis(5)).await;
        assert!(hy.user_found && hy.degraded.is_none());
        let frame = h.frame(&hy, &[&[0.1], &[0.2]]);
        let s = frame.schema().clone();
        assert_eq!(
            frame.column(s.column("ctx_device_tv").unwrap()),
            &[1.0, 1.0]
        );
        assert_eq!(frame.column(s.column("ctx_live").unwrap()), &[1.0, 1.0]);
        assert_eq!(frame.column(s.column("user_ctr").unwrap()), &[0.5, 0.5]);
        assert_eq!(frame.column(s.column("li_ctr").unwrap()), &[0.1, 0.2]);
    }

    #[tokio::test]
    async fn unknown_user_gets_defaults() {
        let h = Hydrator::new(space(), Arc::new(MemoryStore::new())).unwrap();
        let hy = h
            .hydrate(&request("nobody"), Duration::from_millis(5))
            .await;
        assert!(!hy.user_found);
        let col = h.space().schema().column("user_ctr").unwrap();
        assert_eq!(hy.request_values[col], 0.02);
    }

    struct SlowStore;

    #[async_trait]
    impl OnlineStore for SlowStore {
        async fn get_many(&self, _: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError> {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(vec![])
        }
        async fn put_many(&self, _: Vec<(String, StoredValue)>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_store_falls_back_to_defaults_within_budget() {
        let h = Hydrator::new(space(), Arc::new(SlowStore)).unwrap();
        let hy = h.hydrate(&request("u1"), Duration::from_millis(2)).await;
        assert!(hy.degraded.unwrap().contains("exceeded"));
        let col = h.space().schema().column("user_ctr").unwrap();
        assert_eq!(hy.request_values[col], 0.02);
    }

    #[test]
    fn refuses_an_underivable_context_feature() {
        let s = Arc::new(FeatureSpace::new(vec![FeatureSpec {
            name: "ctx_weather".into(),
            source: Source::Context,
            default: 0.0,
        }]));
        assert!(Hydrator::new(s, Arc::new(MemoryStore::new())).is_err());
    }
}
