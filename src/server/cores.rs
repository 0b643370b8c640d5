//! How many sessions (instances) a model variant runs and how many ONNX Runtime threads each
//! gets: what the spec says, else derived from the CPUs this process may use — the container's
//! CPU quota or CPU set, which is where a pod's `resources.cpu` limit and `docker --cpus` end up.
//!
//! The default spreads the CPUs over instances (one intra-op thread each): requests then run
//! side by side, which serves concurrent traffic best and keeps ONNX Runtime's thread pool from
//! spinning against the HTTP threads. Each instance holds its own copy of the weights, so a
//! large model gets fewer instances, each with more threads, and still every core.

/// Weights kept in memory per variant by default, across its instances.
const WEIGHTS_BUDGET: u64 = 1 << 30;

/// The CPUs this process may use: its affinity mask and cgroup quota (what
/// `std::thread::available_parallelism` reads), at least 1.
pub(crate) fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Instances and threads per instance for a variant whose model file has `model_bytes`.
/// Explicit settings win (a setting of 0 counts as unset); what is derived never asks for more
/// threads in all than `cpus`.
pub(crate) fn plan(
    instances: Option<u32>,
    threads: Option<u32>,
    cpus: usize,
    model_bytes: u64,
) -> (usize, usize) {
    let cpus = cpus.max(1);
    let instances = instances.filter(|&n| n > 0).map(|n| n as usize);
    let threads = threads.filter(|&n| n > 0).map(|n| n as usize);
    match (instances, threads) {
        (Some(i), Some(t)) => (i, t),
        (Some(i), None) => (i, (cpus / i).max(1)),
        (None, Some(t)) => ((cpus / t).max(1).min(by_memory(model_bytes)), t),
        (None, None) => {
            let i = cpus.min(by_memory(model_bytes));
            (i, (cpus / i).max(1))
        }
    }
}

/// How many copies of a model of `bytes` fit the default weights budget (at least 1).
fn by_memory(bytes: u64) -> usize {
    usize::try_from(WEIGHTS_BUDGET / bytes.max(1))
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_models_get_one_instance_per_cpu() {
        assert_eq!(plan(None, None, 8, 10_000), (8, 1));
        assert_eq!(plan(None, None, 1, 10_000), (1, 1));
        assert_eq!(plan(None, None, 0, 10_000), (1, 1));
    }

    #[test]
    fn large_models_get_fewer_instances_with_more_threads() {
        // 400 MB: two copies fit the budget; the 8 CPUs are split between them.
        assert_eq!(plan(None, None, 8, 400 << 20), (2, 4));
        // Larger than the budget: one instance with every CPU.
        assert_eq!(plan(None, None, 8, 3 << 30), (1, 8));
    }

    #[test]
    fn settings_win_and_the_rest_is_derived() {
        assert_eq!(plan(Some(3), Some(2), 2, 10), (3, 2));
        assert_eq!(plan(Some(2), None, 8, 10), (2, 4));
        assert_eq!(plan(Some(16), None, 8, 10), (16, 1));
        assert_eq!(plan(None, Some(4), 8, 10), (2, 4));
        assert_eq!(plan(None, Some(16), 8, 10), (1, 16));
        assert_eq!(plan(Some(0), Some(0), 4, 10), (4, 1));
    }

    #[test]
    fn the_process_may_use_at_least_one_cpu() {
        assert!(available() >= 1);
    }
}
