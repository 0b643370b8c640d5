//! What a build leaves in the engine when it does not finish, and its removal.
//!
//! The classic builder commits every step to an image. A build that finishes is tagged and its
//! steps are the image's own layers; one that is cancelled (Ctrl-C drops the connection) or
//! fails leaves its last step as an untagged, dangling image — for an environment that can be a
//! full virtualenv, hundreds of MB. Helper containers (the Python probe) are left the same way
//! when their future is dropped.
//!
//! Builds and helper containers register here while they run and deregister when they end on
//! their own. Whatever is still registered when a command returns was cut off; the CLI calls
//! [`clean`] then. Cancelling does not stop a commit the engine is in the middle of, so cleaning
//! first waits for the build's step container to go (the builder removes it when it stops) and
//! then removes the steps seen plus any step committed after the connection closed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};

/// How long cleaning waits for the engine to stop an interrupted build's step.
const STOP_WAIT: Duration = Duration::from_secs(180);
/// How long the engine must have run no step of the build before cleaning ends.
const SETTLE: Duration = Duration::from_millis(1500);

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    next: 0,
    builds: Vec::new(),
    containers: Vec::new(),
});

struct Pending {
    next: u64,
    builds: Vec<(u64, Trace)>,
    containers: Vec<(u64, String)>,
}

/// The images one build made, as its output named them.
#[derive(Clone, Debug, Default)]
struct Trace {
    /// Unix seconds when the build started (the engine's `Created` has this resolution).
    started: i64,
    /// Every image ID the build printed (`---> <id>`), oldest first: FROM images, cached and
    /// committed steps.
    seen: Vec<String>,
    /// The image the build printed last: what its next step starts from (a FROM may name an
    /// image seen before, which `seen` does not list twice).
    current: Option<String>,
    /// A step the build started and has not finished (no `---> <id>` after its `Step` line
    /// yet), on top of the last image seen then. The engine finishes a COPY, ADD or metadata
    /// step even once the build is cancelled, and commits it without a container: the only
    /// trace of it is the image it makes.
    open_step: Option<OpenStep>,
}

#[derive(Clone, Debug)]
struct OpenStep {
    parent: String,
    /// A RUN step runs in a container, which the engine kills when the build is cancelled:
    /// it commits nothing then.
    run: bool,
}

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves plain data behind; it is still usable.
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A running build's registration: note each image it prints; [`BuildGuard::finished`] when it
/// succeeded. Dropped without that (failed or cut off), its images stay registered for [`clean`].
pub struct BuildGuard {
    key: u64,
}

/// Registers a build that starts now.
pub fn build_started() -> BuildGuard {
    let mut p = pending();
    p.next += 1;
    let key = p.next;
    p.builds.push((
        key,
        Trace {
            started: unix_now(),
            seen: Vec::new(),
            current: None,
            open_step: None,
        },
    ));
    BuildGuard { key }
}

impl BuildGuard {
    /// The build printed `---> id`.
    pub fn saw(&self, id: &str) {
        let mut p = pending();
        if let Some((_, t)) = p.builds.iter_mut().find(|(k, _)| *k == self.key) {
            let id = short_id(id);
            if !t.seen.contains(&id) {
                t.seen.push(id.clone());
            }
            t.current = Some(id);
            t.open_step = None;
        }
    }

    /// The engine reported the build failed: it runs no step any more.
    pub fn stopped(&self) {
        let mut p = pending();
        if let Some((_, t)) = p.builds.iter_mut().find(|(k, _)| *k == self.key) {
            t.open_step = None;
        }
    }

    /// The build printed `Step N/M : INSTRUCTION …`.
    pub fn step(&self, line: &str) {
        let mut p = pending();
        if let Some((_, t)) = p.builds.iter_mut().find(|(k, _)| *k == self.key) {
            let instruction = line
                .split_once(" : ")
                .map(|(_, i)| i.trim_start())
                .unwrap_or_default();
            let is = |word: &str| {
                instruction
                    .get(..word.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(word))
            };
            // FROM makes no image: its `--->` names the one it starts from.
            t.open_step = match &t.current {
                Some(parent) if !is("FROM") => Some(OpenStep {
                    parent: parent.clone(),
                    run: is("RUN"),
                }),
                _ => None,
            };
        }
    }

    /// The build finished and is tagged: nothing of it is left over.
    pub fn finished(self) {
        pending().builds.retain(|(k, _)| *k != self.key);
    }
}

/// The build prints IDs cut to 12 hex digits, listings give them whole: compared in the short
/// form.
fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// A helper container's registration; dropped without [`ContainerGuard::remove`], the
/// container is removed by [`clean`].
pub struct ContainerGuard {
    key: u64,
    id: String,
}

/// A name for a helper container, unique to this process and call, to register (with
/// [`container_created`]) before asking the engine to create it: then a Ctrl-C that lands while
/// the engine's answer is on its way still finds the container to remove.
pub fn helper_name(what: &str) -> String {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("ferry-{what}-{}-{stamp}", std::process::id())
}

pub fn container_created(id: &str) -> ContainerGuard {
    let mut p = pending();
    p.next += 1;
    let key = p.next;
    p.containers.push((key, id.to_string()));
    ContainerGuard {
        key,
        id: id.to_string(),
    }
}

impl ContainerGuard {
    /// Removes the helper container, which has done its work (explicitly rather than with
    /// auto-remove, which races with reading its output), and deregisters it. Best effort: a
    /// container the engine keeps is no reason to fail the command.
    pub async fn remove(self, docker: &Docker) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&self.id, Some(opts)).await;
        pending().containers.retain(|(k, _)| *k != self.key);
    }
}

/// Whether anything was cut off and waits for [`clean`].
pub fn any() -> bool {
    let p = pending();
    !p.builds.is_empty() || !p.containers.is_empty()
}

/// Removes what builds and helper containers that did not end on their own left behind; reports
/// through `say` what it waits for. Best effort: the engine refusing (an image another build now
/// uses) leaves that image, never fails the command.
pub async fn clean(docker: &Docker, say: &dyn Fn(&str)) {
    let (builds, containers) = {
        let mut p = pending();
        (
            std::mem::take(&mut p.builds),
            std::mem::take(&mut p.containers),
        )
    };
    // A helper registered by name and not found may be one whose creation was still on its way
    // to the engine when the command was cut off: it is looked for again once the engine has
    // had a moment to finish that request.
    let mut not_found = Vec::new();
    for (_, id) in containers {
        if remove_helper(docker, &id).await == Removal::NotFound {
            not_found.push(id);
        }
    }
    if !not_found.is_empty() {
        tokio::time::sleep(SETTLE).await;
        for id in not_found {
            remove_helper(docker, &id).await;
        }
    }
    for (_, trace) in builds {
        clean_build(docker, &trace, say).await;
    }
}

#[derive(PartialEq)]
enum Removal {
    Done,
    NotFound,
}

/// Best effort: any refusal but "no such container" counts as done.
async fn remove_helper(docker: &Docker, id: &str) -> Removal {
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(id, Some(opts)).await {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Removal::NotFound,
        _ => Removal::Done,
    }
}

/// The engine checks for a cancelled build only between steps: after the connection closes it
/// finishes the step it is in, and may have started the next. So cleaning repeats — wait while
/// a step container of the build exists, remove its images — until the engine has been quiet
/// for a moment.
async fn clean_build(docker: &Docker, trace: &Trace, say: &dyn Fn(&str)) {
    if trace.seen.is_empty() {
        return;
    }
    let start = Instant::now();
    let mut said = false;
    if let Some(open) = trace.open_step.as_ref().filter(|o| !o.run) {
        wait_for_commit(docker, trace, open, say).await;
        said = true;
    }
    let mut quiet_since: Option<Instant> = None;
    loop {
        let Ok(images) = docker
            .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
            .await
        else {
            return;
        };
        let leftovers = leftover_images(&images, trace);
        let mut ours: BTreeSet<String> = trace.seen.iter().cloned().collect();
        ours.extend(leftovers.iter().map(|i| short_id(i)));
        if step_running(docker, trace, &ours).await {
            quiet_since = None;
            if !said {
                say("waiting for the engine to stop the interrupted build's current step");
                said = true;
            }
        } else {
            for id in &leftovers {
                let opts = RemoveImageOptionsBuilder::default().build();
                let _ = docker.remove_image(id, Some(opts), None).await;
            }
            match quiet_since {
                Some(t) if t.elapsed() >= SETTLE => return,
                Some(_) => {}
                None => quiet_since = Some(Instant::now()),
            }
        }
        if start.elapsed() > STOP_WAIT {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The images of `trace` to remove, children before parents: the steps it printed and any step
/// committed on top of them after its output stopped being read (a parent among them, no older
/// than the build). Tagged images (the base, another project's environment) are never among
/// them; the engine itself refuses an image that still has children.
fn leftover_images(images: &[bollard::models::ImageSummary], trace: &Trace) -> Vec<String> {
    let tagged = |i: &bollard::models::ImageSummary| {
        i.repo_tags
            .iter()
            .any(|t| !t.is_empty() && t != "<none>:<none>")
    };
    let mut ours: BTreeSet<String> = trace.seen.iter().cloned().collect();
    loop {
        let more: Vec<String> = images
            .iter()
            .filter(|i| {
                !ours.contains(&short_id(&i.id))
                    && ours.contains(&short_id(&i.parent_id))
                    && i.created >= trace.started - 1
                    && !tagged(i)
            })
            .map(|i| short_id(&i.id))
            .collect();
        if more.is_empty() {
            break;
        }
        ours.extend(more);
    }
    let mut order: Vec<&bollard::models::ImageSummary> = images
        .iter()
        .filter(|i| ours.contains(&short_id(&i.id)) && !tagged(i))
        .collect();
    order.sort_by_key(|i| std::cmp::Reverse(i.created));
    order.into_iter().map(|i| i.id.clone()).collect()
}

/// Waits for the engine to commit the step it was in when the build was cancelled: an image on
/// top of the step's parent, made since the build started.
async fn wait_for_commit(docker: &Docker, trace: &Trace, open: &OpenStep, say: &dyn Fn(&str)) {
    say("waiting for the engine to finish the interrupted build's current step");
    let start = Instant::now();
    while start.elapsed() < STOP_WAIT {
        let Ok(images) = docker
            .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
            .await
        else {
            return;
        };
        let committed = images.iter().any(|i| {
            short_id(&i.parent_id) == open.parent
                && i.created >= trace.started - 1
                && !trace.seen.contains(&short_id(&i.id))
        });
        if committed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a container runs a step of the build: made since it started, from one of its images.
async fn step_running(docker: &Docker, trace: &Trace, ours: &BTreeSet<String>) -> bool {
    let opts = ListContainersOptionsBuilder::default().all(true).build();
    match docker.list_containers(Some(opts)).await {
        Ok(list) => list.iter().any(|c| {
            c.created.unwrap_or(0) >= trace.started - 1
                && c.image_id
                    .as_deref()
                    .is_some_and(|i| ours.contains(&short_id(i)))
        }),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ImageSummary;

    fn image(id: &str, parent: &str, created: i64, tag: Option<&str>) -> ImageSummary {
        ImageSummary {
            id: format!("sha256:{id}{}", "0".repeat(64 - id.len())),
            parent_id: if parent.is_empty() {
                String::new()
            } else {
                format!("sha256:{parent}{}", "0".repeat(64 - parent.len()))
            },
            created,
            repo_tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn the_steps_seen_and_a_late_commit_go_children_first_and_tagged_images_stay() {
        let images = vec![
            image("base00000001", "", 10, Some("ferry-base:bookworm")),
            image("venv00000001", "base00000001", 50, None),
            image("reqs00000001", "venv00000001", 101, None),
            image("whls00000001", "reqs00000001", 102, None),
            // Committed after the connection closed: never printed.
            image("late00000001", "whls00000001", 103, None),
            // Another build's step on the same base, older than this build.
            image("othr00000001", "base00000001", 20, None),
            // A tagged image on top of a step: not this build's to remove.
            image("tagd00000001", "venv00000001", 104, Some("ferry/x-env:1")),
        ];
        let trace = Trace {
            current: None,
            open_step: None,
            started: 100,
            seen: [
                "base00000001",
                "venv00000001",
                "reqs00000001",
                "whls00000001",
            ]
            .map(String::from)
            .to_vec(),
        };
        let ids: Vec<String> = leftover_images(&images, &trace)
            .iter()
            .map(|i| short_id(i))
            .collect();
        assert_eq!(
            ids,
            [
                "late00000001",
                "whls00000001",
                "reqs00000001",
                "venv00000001"
            ]
        );
    }

    fn trace_of(key: u64) -> Trace {
        pending()
            .builds
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, t)| t.clone())
            .unwrap()
    }

    #[test]
    fn a_step_is_open_from_its_line_to_its_image() {
        let guard = build_started();
        guard.step("Step 1/4 : FROM ferry-base:bookworm");
        guard.saw("9bffcb923cfc");
        assert!(
            trace_of(guard.key).open_step.is_none(),
            "FROM makes no image"
        );
        guard.step("Step 2/4 : RUN python3 -m venv /opt/venv");
        let open = trace_of(guard.key).open_step.unwrap();
        assert!(open.run);
        assert_eq!(open.parent, "9bffcb923cfc");
        guard.saw("sha256:470f0de61131f474292963383f10431c93d132d7614d2c96546aac3e838255b6");
        assert!(trace_of(guard.key).open_step.is_none());
        guard.step("Step 3/4 : COPY --from=wheels /opt/venv /opt/venv");
        let open = trace_of(guard.key).open_step.unwrap();
        assert!(!open.run);
        assert_eq!(open.parent, "470f0de61131");
        guard.saw("c0c0c0c0c0c0");
        // A second stage from an image of the first: its steps start from that image.
        guard.step("Step 4/5 : FROM system");
        guard.saw("470f0de61131");
        guard.step("Step 5/5 : COPY --from=wheels /opt/venv /opt/venv");
        assert_eq!(
            trace_of(guard.key).open_step.unwrap().parent,
            "470f0de61131"
        );
        guard.stopped();
        assert!(trace_of(guard.key).open_step.is_none());
        guard.finished();
    }
}
