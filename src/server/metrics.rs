//! Prometheus metrics. The names are a contract with dashboards: keep them.
//!
//! Every variant gets its handles at load time, so the request path increments atomics (and
//! takes one short histogram lock) instead of looking label sets up in the families.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VariantLabels {
    pub model: String,
    pub variant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub model: String,
    pub variant: String,
    pub status: u16,
}

#[derive(Clone)]
struct Buckets(fn() -> Histogram);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

/// Seconds, from 50 µs to about 27 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// Rows per inference run: 1, 2, 4, ... 4096.
fn rows_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

pub(crate) struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<VariantLabels, Histogram, Buckets>,
    batch_size: Family<VariantLabels, Histogram, Buckets>,
    queue_depth: Family<VariantLabels, Gauge>,
    inference_duration: Family<VariantLabels, Histogram, Buckets>,
    model_load: Family<VariantLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::new_with_constructor(Buckets(seconds_histogram));
        let batch_size = Family::new_with_constructor(Buckets(rows_histogram));
        let queue_depth = Family::<VariantLabels, Gauge>::default();
        let inference_duration = Family::new_with_constructor(Buckets(seconds_histogram));
        let model_load = Family::<VariantLabels, Gauge<f64, AtomicU64>>::default();
        // The client appends `_total` to counters.
        registry.register(
            "ferry_requests",
            "Inference requests by model, variant and HTTP status",
            requests.clone(),
        );
        registry.register(
            "ferry_request_duration_seconds",
            "Time from request to response, in seconds",
            request_duration.clone(),
        );
        registry.register(
            "ferry_batch_size",
            "Rows per inference run",
            batch_size.clone(),
        );
        registry.register(
            "ferry_queue_depth",
            "Requests admitted and waiting for an inference run",
            queue_depth.clone(),
        );
        registry.register(
            "ferry_inference_duration_seconds",
            "Time ONNX Runtime spent per inference run, in seconds",
            inference_duration.clone(),
        );
        registry.register(
            "ferry_model_load_seconds",
            "Time taken to load the model variant, in seconds",
            model_load.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            batch_size,
            queue_depth,
            inference_duration,
            model_load,
        }
    }

    pub(crate) fn variant(&self, model: &str, variant: &str) -> VariantMetrics {
        let labels = VariantLabels {
            model: model.to_string(),
            variant: variant.to_string(),
        };
        let status = |status: u16| {
            self.requests.get_or_create_owned(&RequestLabels {
                model: model.to_string(),
                variant: variant.to_string(),
                status,
            })
        };
        VariantMetrics {
            ok: status(200),
            bad_request: status(400),
            labels: labels.clone(),
            requests: self.requests.clone(),
            request_duration: self.request_duration.get_or_create_owned(&labels),
            batch_size: self.batch_size.get_or_create_owned(&labels),
            queue_depth: self.queue_depth.get_or_create_owned(&labels),
            inference_duration: self.inference_duration.get_or_create_owned(&labels),
            model_load: self.model_load.get_or_create_owned(&labels),
        }
    }

    /// Counts a request that never reached a variant (unknown model or version). The labels stay
    /// fixed so that clients probing names cannot grow the series without bound.
    pub(crate) fn unrouted(&self, model: Option<&str>, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.unwrap_or("").to_string(),
                variant: String::new(),
                status,
            })
            .inc();
    }
}

/// One variant's handles.
#[derive(Clone)]
pub(crate) struct VariantMetrics {
    labels: VariantLabels,
    ok: Counter,
    bad_request: Counter,
    requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    pub inference_duration: Histogram,
    pub model_load: Gauge<f64, AtomicU64>,
}

impl VariantMetrics {
    pub(crate) fn request_done(&self, status: u16, seconds: f64) {
        match status {
            200 => self.ok.inc(),
            400 => self.bad_request.inc(),
            other => self
                .requests
                .get_or_create(&RequestLabels {
                    model: self.labels.model.clone(),
                    variant: self.labels.variant.clone(),
                    status: other,
                })
                .inc(),
        };
        self.request_duration.observe(seconds);
    }
}
