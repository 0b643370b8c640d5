//! Prometheus metrics: the families `/metrics` exposes and the handles the request path updates.
//! The names are a contract with dashboards (`crate::monitoring`): keep them.
//!
//! Every variant gets its handles at load time, so the request path increments atomics (and
//! takes one short histogram lock) instead of looking label sets up. The values are kept here,
//! not in a client library's registry, because `/metrics` is written in two formats (see
//! `exposition`), and that needs the values themselves rather than one library's encoder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};

use super::exposition::{Family, HistogramValue, Labels, Series};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A whole number that goes up and down.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one and returns the value before.
    pub(crate) fn inc(&self) -> i64 {
        self.0.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn dec(&self) {
        self.dec_by(1);
    }

    pub(crate) fn dec_by(&self, n: i64) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }

    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, value: i64) {
        self.0.store(value, Ordering::Release);
    }
}

/// A measurement that is set rather than counted.
#[derive(Debug, Default)]
pub(crate) struct FloatGauge(AtomicU64);

impl FloatGauge {
    pub(crate) fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into fixed buckets.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Upper bounds, ascending; the `+Inf` bucket is implied.
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug)]
struct HistogramState {
    /// Per bucket, not cumulative; one more than `bounds` (the `+Inf` bucket).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    pub(crate) fn observe(&self, value: f64) {
        // Bucket `i` counts values up to and including `bounds[i]`.
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.counts[bucket] += 1;
        state.sum += value;
        state.count += 1;
    }

    fn value(&self) -> HistogramValue {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&state.counts)
            .map(|(bound, &n)| {
                cumulative += n;
                (bound, cumulative)
            })
            .collect();
        HistogramValue {
            buckets,
            sum: state.sum,
            count: state.count,
        }
    }
}

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |b| Some(b * factor))
        .take(count)
        .collect()
}

/// Seconds, from 50 µs to about 27 s.
static SECONDS: LazyLock<Vec<f64>> = LazyLock::new(|| exponential(0.00005, 2.0, 20));
/// Rows per inference run: 1, 2, 4, ... 4096.
static ROWS: LazyLock<Vec<f64>> = LazyLock::new(|| exponential(1.0, 2.0, 13));

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct RequestLabels {
    model: String,
    variant: String,
    /// Of the model file that answered: a swap starts new series.
    sha256: String,
    status: u16,
}

/// One variant's series, shared by its handles and by the exposition.
#[derive(Debug)]
struct VariantSeries {
    model: String,
    variant: String,
    sha256: String,
    request_duration: Arc<Histogram>,
    batch_size: Arc<Histogram>,
    queue_depth: Arc<Gauge>,
    inference_duration: Arc<Histogram>,
    model_load: Arc<FloatGauge>,
    instances: Arc<Gauge>,
    busy: Arc<Gauge>,
}

impl VariantSeries {
    fn labels(&self) -> Labels {
        vec![
            ("model", self.model.clone()),
            ("variant", self.variant.clone()),
            ("sha256", self.sha256.clone()),
        ]
    }
}

type RequestCounters = RwLock<HashMap<RequestLabels, Arc<Counter>>>;

/// Largest absolute difference between a shadow's score and the primary's, per request.
static DIFFS: [f64; 9] = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0];
/// Share of the top-k classes a shadow and the primary have in common, per request.
static OVERLAPS: [f64; 5] = [0.25, 0.5, 0.75, 0.99, 1.0];

/// How a shadow's answer to one request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShadowResult {
    Agree,
    Disagree,
    Error,
    Timeout,
    /// Not sent: the shadow's queue was full.
    Dropped,
}

impl ShadowResult {
    const ALL: [ShadowResult; 5] = [
        ShadowResult::Agree,
        ShadowResult::Disagree,
        ShadowResult::Error,
        ShadowResult::Timeout,
        ShadowResult::Dropped,
    ];

    fn name(self) -> &'static str {
        match self {
            ShadowResult::Agree => "agree",
            ShadowResult::Disagree => "disagree",
            ShadowResult::Error => "error",
            ShadowResult::Timeout => "timeout",
            ShadowResult::Dropped => "dropped",
        }
    }
}

/// One shadow variant's agreement with the model's answers.
#[derive(Debug)]
pub(crate) struct ShadowMetrics {
    model: String,
    variant: String,
    results: [Counter; 5],
    outputs: Vec<ShadowOutput>,
}

#[derive(Debug)]
struct ShadowOutput {
    name: String,
    kind: &'static str,
    rows_agree: Counter,
    rows_disagree: Counter,
    max_abs_diff: Histogram,
    topk_overlap: Histogram,
}

impl ShadowMetrics {
    pub(crate) fn count(&self, result: ShadowResult) {
        self.results[result as usize].inc();
    }

    /// One compared answer, output by output.
    pub(crate) fn compared(&self, comparison: &super::compare::Comparison) {
        for output in &comparison.outputs {
            let Some(series) = self.outputs.iter().find(|o| o.name == output.name) else {
                continue;
            };
            series.rows_agree.add(output.agreeing_rows as u64);
            series
                .rows_disagree
                .add(output.rows.saturating_sub(output.agreeing_rows) as u64);
            if let Some(diff) = output.max_abs_diff {
                series.max_abs_diff.observe(diff);
            }
            if let Some(overlap) = output.topk_overlap {
                series.topk_overlap.observe(overlap);
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    requests: Arc<RequestCounters>,
    variants: Mutex<Vec<Arc<VariantSeries>>>,
    shadows: Mutex<Vec<Arc<ShadowMetrics>>>,
    /// Model (re)loads after start, by model and result.
    reloads: RwLock<HashMap<(String, bool), Arc<Counter>>>,
    /// HTTP threads taking connections now (`lanes`).
    pub(crate) lanes_open: Gauge,
    /// Connections moved from one HTTP thread to another.
    pub(crate) connections_moved: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics::default()
    }

    pub(crate) fn variant(&self, model: &str, variant: &str, sha256: &str) -> VariantMetrics {
        let series = Arc::new(VariantSeries {
            model: model.to_string(),
            variant: variant.to_string(),
            sha256: sha256.to_string(),
            request_duration: Arc::new(Histogram::new(&SECONDS)),
            batch_size: Arc::new(Histogram::new(&ROWS)),
            queue_depth: Arc::default(),
            inference_duration: Arc::new(Histogram::new(&SECONDS)),
            model_load: Arc::default(),
            instances: Arc::default(),
            busy: Arc::default(),
        });
        self.variants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(series.clone());
        let status = |status: u16| {
            counter(
                &self.requests,
                RequestLabels {
                    model: model.to_string(),
                    variant: variant.to_string(),
                    sha256: sha256.to_string(),
                    status,
                },
            )
        };
        VariantMetrics {
            ok: status(200),
            bad_request: status(400),
            requests: self.requests.clone(),
            request_duration: series.request_duration.clone(),
            batch_size: series.batch_size.clone(),
            queue_depth: series.queue_depth.clone(),
            inference_duration: series.inference_duration.clone(),
            model_load: series.model_load.clone(),
            instances: series.instances.clone(),
            busy: series.busy.clone(),
            series,
        }
    }

    /// Counts a request that never reached a variant (unknown model or version). The labels stay
    /// fixed so that clients probing names cannot grow the series without bound.
    pub(crate) fn unrouted(&self, model: Option<&str>, status: u16) {
        counter(
            &self.requests,
            RequestLabels {
                model: model.unwrap_or("").to_string(),
                variant: String::new(),
                sha256: String::new(),
                status,
            },
        )
        .inc();
    }

    /// A shadow variant's series; `outputs` are the model's (name, label or score).
    pub(crate) fn shadow(
        &self,
        model: &str,
        variant: &str,
        outputs: &[(String, &'static str)],
    ) -> Arc<ShadowMetrics> {
        let series = Arc::new(ShadowMetrics {
            model: model.to_string(),
            variant: variant.to_string(),
            results: Default::default(),
            outputs: outputs
                .iter()
                .map(|(name, kind)| ShadowOutput {
                    name: name.clone(),
                    kind,
                    rows_agree: Counter::default(),
                    rows_disagree: Counter::default(),
                    max_abs_diff: Histogram::new(&DIFFS),
                    topk_overlap: Histogram::new(&OVERLAPS),
                })
                .collect(),
        });
        self.shadows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(series.clone());
        series
    }

    /// Starts `model`'s reload counts at zero, so they are series before the first reload.
    pub(crate) fn model(&self, model: &str) {
        let mut reloads = self.reloads.write().unwrap_or_else(PoisonError::into_inner);
        for ok in [true, false] {
            reloads.entry((model.to_string(), ok)).or_default();
        }
    }

    /// Counts a load of a model's files after start (the watch, the repository API).
    pub(crate) fn reloaded(&self, model: &str, ok: bool) {
        let key = (model.to_string(), ok);
        if let Some(c) = self
            .reloads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            c.inc();
            return;
        }
        self.reloads
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .inc();
    }

    /// Every family with its current values, in a fixed order (series sorted by labels).
    pub(crate) fn families(&self) -> Vec<Family> {
        let mut requests: Vec<(RequestLabels, u64)> = self
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(labels, counter)| (labels.clone(), counter.get()))
            .collect();
        requests.sort_unstable();
        let requests = requests
            .into_iter()
            .map(|(l, n)| {
                let labels = vec![
                    ("model", l.model),
                    ("variant", l.variant),
                    ("sha256", l.sha256),
                    ("status", l.status.to_string()),
                ];
                (labels, n)
            })
            .collect();

        let mut variants = self
            .variants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        variants.sort_by(|a, b| {
            (&a.model, &a.variant, &a.sha256).cmp(&(&b.model, &b.variant, &b.sha256))
        });
        let mut reloads: Vec<(Labels, u64)> = self
            .reloads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((model, ok), c)| {
                let result = if *ok { "loaded" } else { "refused" };
                (
                    vec![("model", model.clone()), ("result", result.to_string())],
                    c.get(),
                )
            })
            .collect();
        reloads.sort();
        let histograms = |pick: fn(&VariantSeries) -> &Histogram| {
            Series::Histogram(
                variants
                    .iter()
                    .map(|v| (v.labels(), pick(v).value()))
                    .collect(),
            )
        };
        let mut families = vec![
            Family {
                name: "ferry_requests",
                help: "Inference requests by model, variant and HTTP status.",
                series: Series::Counter(requests),
            },
            Family {
                name: "ferry_request_duration_seconds",
                help: "Time from request to response, in seconds.",
                series: histograms(|v| &v.request_duration),
            },
            Family {
                name: "ferry_batch_size",
                help: "Rows per inference run.",
                series: histograms(|v| &v.batch_size),
            },
            Family {
                name: "ferry_queue_depth",
                help: "Requests admitted and waiting for an inference run.",
                series: Series::Gauge(
                    variants
                        .iter()
                        .map(|v| (v.labels(), v.queue_depth.get() as f64))
                        .collect(),
                ),
            },
            Family {
                name: "ferry_inference_duration_seconds",
                help: "Time ONNX Runtime spent per inference run, in seconds.",
                series: histograms(|v| &v.inference_duration),
            },
            Family {
                name: "ferry_model_load_seconds",
                help: "Time taken to load the model variant, in seconds.",
                series: Series::Gauge(
                    variants
                        .iter()
                        .map(|v| (v.labels(), v.model_load.get()))
                        .collect(),
                ),
            },
            Family {
                name: "ferry_instances",
                help: "Sessions of the model variant, each run by its own thread.",
                series: Series::Gauge(
                    variants
                        .iter()
                        .map(|v| (v.labels(), v.instances.get() as f64))
                        .collect(),
                ),
            },
            Family {
                name: "ferry_instances_busy",
                help: "Sessions of the model variant running an inference now.",
                series: Series::Gauge(
                    variants
                        .iter()
                        .map(|v| (v.labels(), v.busy.get() as f64))
                        .collect(),
                ),
            },
            Family {
                name: "ferry_model_reloads",
                help: "Model files loaded while serving (watched files, the repository API), by result.",
                series: Series::Counter(reloads),
            },
            Family {
                name: "ferry_http_lanes_open",
                help: "HTTP threads taking connections; the server opens more under load where CPUs have time for them.",
                series: Series::Gauge(vec![(Vec::new(), self.lanes_open.get() as f64)]),
            },
            Family {
                name: "ferry_http_connections_moved",
                help: "Connections moved between HTTP threads as threads opened and closed.",
                series: Series::Counter(vec![(Vec::new(), self.connections_moved.get())]),
            },
        ];
        families.extend(self.shadow_families());
        families
    }

    fn shadow_families(&self) -> Vec<Family> {
        let shadows = self
            .shadows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // No shadow, no shadow families: most servers have none.
        if shadows.is_empty() {
            return Vec::new();
        }
        let base =
            |s: &ShadowMetrics| vec![("model", s.model.clone()), ("variant", s.variant.clone())];
        let mut requests = Vec::new();
        let mut rows = Vec::new();
        let mut diffs = Vec::new();
        let mut overlaps = Vec::new();
        for s in &shadows {
            for result in ShadowResult::ALL {
                let mut labels = base(s);
                labels.push(("result", result.name().to_string()));
                requests.push((labels, s.results[result as usize].get()));
            }
            for o in &s.outputs {
                let mut labels = base(s);
                labels.push(("output", o.name.clone()));
                labels.push(("kind", o.kind.to_string()));
                for (result, counter) in [("agree", &o.rows_agree), ("disagree", &o.rows_disagree)]
                {
                    let mut labels = labels.clone();
                    labels.push(("result", result.to_string()));
                    rows.push((labels, counter.get()));
                }
                if o.kind == "score" {
                    diffs.push((labels.clone(), o.max_abs_diff.value()));
                    overlaps.push((labels, o.topk_overlap.value()));
                }
            }
        }
        vec![
            Family {
                name: "ferry_shadow_requests",
                help: "Requests copied to a shadow variant, by how its answer compared with the model's.",
                series: Series::Counter(requests),
            },
            Family {
                name: "ferry_shadow_rows",
                help: "Rows a shadow variant answered like the model (agree) or not, by output.",
                series: Series::Counter(rows),
            },
            Family {
                name: "ferry_shadow_max_abs_diff",
                help: "Largest absolute difference between a shadow's scores and the model's, per request.",
                series: Series::Histogram(diffs),
            },
            Family {
                name: "ferry_shadow_topk_overlap",
                help: "Share of the top-k classes a shadow and the model have in common, per request.",
                series: Series::Histogram(overlaps),
            },
        ]
    }
}

fn counter(family: &RequestCounters, labels: RequestLabels) -> Arc<Counter> {
    if let Some(counter) = family
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&labels)
    {
        return counter.clone();
    }
    family
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(labels)
        .or_default()
        .clone()
}

/// One variant's handles.
#[derive(Clone)]
pub(crate) struct VariantMetrics {
    series: Arc<VariantSeries>,
    ok: Arc<Counter>,
    bad_request: Arc<Counter>,
    requests: Arc<RequestCounters>,
    pub request_duration: Arc<Histogram>,
    pub batch_size: Arc<Histogram>,
    pub queue_depth: Arc<Gauge>,
    pub inference_duration: Arc<Histogram>,
    pub model_load: Arc<FloatGauge>,
    pub instances: Arc<Gauge>,
    pub busy: Arc<Gauge>,
}

impl VariantMetrics {
    pub(crate) fn request_done(&self, status: u16, seconds: f64) {
        match status {
            200 => self.ok.inc(),
            400 => self.bad_request.inc(),
            other => counter(
                &self.requests,
                RequestLabels {
                    model: self.series.model.clone(),
                    variant: self.series.variant.clone(),
                    sha256: self.series.sha256.clone(),
                    status: other,
                },
            )
            .inc(),
        };
        self.request_duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        static BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];
        let h = Histogram::new(&BOUNDS);
        for v in [0.5, 1.0, 1.5, 4.0, 9.0] {
            h.observe(v);
        }
        let value = h.value();
        assert_eq!(
            value.buckets,
            vec![(1.0, 2), (2.0, 3), (4.0, 4), (f64::INFINITY, 5)]
        );
        assert_eq!(value.count, 5);
        assert_eq!(value.sum, 16.0);
    }

    #[test]
    fn bucket_bounds_match_the_dashboards() {
        assert_eq!(SECONDS.len(), 20);
        assert_eq!(SECONDS[0], 0.00005);
        assert!((SECONDS[19] - 26.2144).abs() < 1e-9, "{}", SECONDS[19]);
        assert_eq!(ROWS.first(), Some(&1.0));
        assert_eq!(ROWS.last(), Some(&4096.0));
    }

    #[test]
    fn families_hold_every_variant_and_status() {
        let metrics = Metrics::new();
        let b = metrics.variant("m", "b", "bb");
        let a = metrics.variant("m", "a", "aa");
        a.request_done(200, 0.001);
        a.request_done(503, 0.002);
        b.queue_depth.inc();
        b.model_load.set(0.25);
        metrics.unrouted(None, 404);
        let families = metrics.families();
        let names: Vec<&str> = families.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "ferry_requests",
                "ferry_request_duration_seconds",
                "ferry_batch_size",
                "ferry_queue_depth",
                "ferry_inference_duration_seconds",
                "ferry_model_load_seconds",
                "ferry_instances",
                "ferry_instances_busy",
                "ferry_model_reloads",
                "ferry_http_lanes_open",
                "ferry_http_connections_moved"
            ]
        );
        let Series::Counter(requests) = &families[0].series else {
            panic!("ferry_requests is a counter");
        };
        let flat: Vec<(String, u64)> = requests
            .iter()
            .map(|(labels, n)| {
                let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (text.join(","), *n)
            })
            .collect();
        assert_eq!(
            flat,
            [
                ("model=,variant=,sha256=,status=404".to_string(), 1),
                ("model=m,variant=a,sha256=aa,status=200".to_string(), 1),
                ("model=m,variant=a,sha256=aa,status=400".to_string(), 0),
                ("model=m,variant=a,sha256=aa,status=503".to_string(), 1),
                ("model=m,variant=b,sha256=bb,status=200".to_string(), 0),
                ("model=m,variant=b,sha256=bb,status=400".to_string(), 0),
            ]
        );
        let Series::Gauge(depth) = &families[3].series else {
            panic!("ferry_queue_depth is a gauge");
        };
        assert_eq!(depth[0].1, 0.0, "variant a first");
        assert_eq!(depth[1].1, 1.0);
        let Series::Gauge(load) = &families[5].series else {
            panic!("ferry_model_load_seconds is a gauge");
        };
        assert_eq!(load[1].1, 0.25);
        let Series::Histogram(durations) = &families[1].series else {
            panic!("ferry_request_duration_seconds is a histogram");
        };
        assert_eq!(durations[0].1.count, 2);
        assert_eq!(durations[1].1.count, 0);
    }
}
