//! The watch on the served model files (`watch` in the serving config): a changed file is
//! loaded, checked and swapped in while the server keeps answering (see `live::reload`).
//!
//! Files are looked at (size, modification time, inode) every [`POLL`] rather than through
//! inotify: the server runs in containers whose model directories are mounted from another
//! machine's file system as often as from this kernel's, and a few `stat` calls a second cost
//! nothing. A file is loaded once it has stayed the same for one more look, so a model still
//! being written is not tried half-way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AppState;
use super::live::{self, Stamp};

const POLL: Duration = Duration::from_millis(100);

/// Watches until the task is dropped.
pub(crate) async fn run(state: Arc<AppState>) {
    let mut names: Vec<&String> = state.models.keys().collect();
    names.sort_unstable();
    let names: Vec<String> = names.into_iter().cloned().collect();
    // Per model and variant: the stamp last acted on, and a newer one seen once.
    let mut acted: HashMap<(String, usize), Option<Stamp>> = HashMap::new();
    let mut seen: HashMap<(String, usize), Option<Stamp>> = HashMap::new();
    for (name, model) in &state.models {
        for (i, variant) in model.variants.iter().enumerate() {
            acted.insert((name.clone(), i), Stamp::of(&variant.path));
        }
    }
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for name in &names {
            let Some(model) = state.models.get(name) else {
                continue;
            };
            let mut settled = false;
            for (i, variant) in model.variants.iter().enumerate() {
                let key = (name.clone(), i);
                let now = Stamp::of(&variant.path);
                if acted.get(&key) == Some(&now) {
                    seen.remove(&key);
                    continue;
                }
                if seen.get(&key) == Some(&now) {
                    acted.insert(key.clone(), now);
                    seen.remove(&key);
                    if now.is_none() {
                        eprintln!(
                            "ferry serve-model: model '{name}' (variant '{}'): {} was removed; still serving the model loaded",
                            variant.name,
                            variant.path.display()
                        );
                    } else {
                        settled = true;
                    }
                } else {
                    seen.insert(key, now);
                }
            }
            if settled && model.is_loaded() {
                reload(&state, name).await;
            }
        }
    }
}

async fn reload(state: &Arc<AppState>, name: &str) {
    let started = Instant::now();
    let task_state = state.clone();
    let task_name = name.to_string();
    let result = tokio::task::spawn_blocking(move || {
        task_state
            .models
            .get(&task_name)
            .map(|model| live::reload(&task_state, model))
    })
    .await;
    match result {
        Ok(Some(Ok(swapped))) => {
            for (variant, old, new) in swapped {
                eprintln!(
                    "ferry serve-model: model '{name}' (variant '{variant}'): now serving sha256 {} (was {}), swapped in {} ms",
                    short(&new),
                    old.as_deref().map_or("none", short),
                    started.elapsed().as_millis()
                );
            }
        }
        Ok(Some(Err(e))) => {
            eprintln!("ferry serve-model: {e}; the model loaded before keeps serving");
        }
        Ok(None) => {}
        Err(e) => eprintln!("ferry serve-model: model '{name}': loading stopped: {e}"),
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
