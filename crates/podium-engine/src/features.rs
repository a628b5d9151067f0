//! Feature setup shared by the worlds: which definitions say what each entity's stored vector
//! holds, which online store serves them, and filling that store with the world's audience when
//! it does not hold it yet (a warm snapshot or a shared Redis already does).

use podium_features::space::relay;
use podium_features::{
    Definitions, Entity, FeatureSpace, Hydrator, MemoryStore, OnlineStore, StoredValue,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How an engine gets its features. The default: `<data-dir>/features.toml` (written with the
/// world's defaults at first start) and a fresh in-memory store.
#[derive(Clone, Default)]
pub struct FeatureSetup {
    /// A definitions file other than `<data-dir>/features.toml`.
    pub definitions: Option<PathBuf>,
    /// The online store; `None`: a fresh in-memory store.
    pub store: Option<Arc<dyn OnlineStore>>,
}

/// What [`prepare`] built.
pub struct PreparedFeatures {
    /// The hydrator over the world's space with the definitions' stored features.
    pub hydrator: Hydrator,
    /// The definitions, for the stream aggregator.
    pub definitions: Arc<Definitions>,
    /// Viewers written to the store (0 when it already held them).
    pub filled: usize,
}

/// Writes between two store round trips while filling a remote store.
const FILL_BATCH: usize = 2_000;

/// Reads (writing `default_text` first if absent) the definitions, lays the world's space over
/// them, and fills the store with `audience` (keys and values in `world_user_names` order) unless
/// it already holds the first viewer. Blocking: call it off the async workers.
pub(crate) fn prepare(
    data_dir: &Path,
    setup: &FeatureSetup,
    world: &FeatureSpace,
    default_text: impl FnOnce() -> String,
    audience: impl Iterator<Item = (String, Vec<f32>)>,
    viewers: usize,
) -> Result<PreparedFeatures, String> {
    let path = match &setup.definitions {
        Some(p) => p.clone(),
        None => {
            let p = data_dir.join("features.toml");
            if !p.exists() {
                std::fs::write(&p, default_text())
                    .map_err(|e| format!("{}: cannot write: {e}", p.display()))?;
            }
            p
        }
    };
    let definitions = Arc::new(Definitions::load(&path).map_err(|e| e.to_string())?);
    let space = Arc::new(
        world
            .with_definitions(&definitions)
            .map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let names = world.user_names();
    let now = podium_features::now_ms();
    let layout = space.layout_of(Entity::User, &names);
    let lay = |values: Vec<f32>| StoredValue::new(relay(&layout, &values), now);

    let (store, filled): (Arc<dyn OnlineStore>, usize) = match &setup.store {
        None => {
            let store = MemoryStore::with_capacity(viewers);
            let mut n = 0;
            for (key, values) in audience {
                store.insert(key, lay(values));
                n += 1;
            }
            (Arc::new(store), n)
        }
        Some(store) => {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| "filling the online store needs a tokio runtime".to_string())?;
            let mut audience = audience.peekable();
            let held = match audience.peek() {
                Some((first, _)) => handle
                    .block_on(store.get_many(std::slice::from_ref(first)))
                    .map_err(|e| format!("reading the online store: {e}"))?
                    .pop()
                    .flatten()
                    .is_some(),
                None => true,
            };
            let mut n = 0;
            if !held {
                let mut batch = Vec::with_capacity(FILL_BATCH);
                for (key, values) in audience {
                    batch.push((key, lay(values)));
                    if batch.len() == FILL_BATCH {
                        n += batch.len();
                        handle
                            .block_on(store.put_many(std::mem::take(&mut batch)))
                            .map_err(|e| format!("filling the online store: {e}"))?;
                    }
                }
                n += batch.len();
                handle
                    .block_on(store.put_many(batch))
                    .map_err(|e| format!("filling the online store: {e}"))?;
            }
            (store.clone(), n)
        }
    };
    let signals = podium_features::Signals::new(definitions.sources())?;
    let hydrator = Hydrator::new(space, store)
        .and_then(|h| h.with_signals(signals))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(PreparedFeatures {
        hydrator,
        definitions,
        filled,
    })
}
