//! The service hyper calls for every request `super::h1` does not read itself (hyper's, so no
//! adapter sits between): inference requests go straight to their handler, all else through the
//! router.
//!
//! Inference is nearly all of a busy server's traffic, and for a light model the router's share
//! of a request (matching, URL parameters in a map of extensions, a boxed clone of the route's
//! service, the matched path) was a tenth of its cost. The paths recognised here are exactly
//! the router's inference routes; anything else, or a path with percent-escapes (which the
//! router decodes), goes to the router, so behaviour is the same either way.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Method;
use axum::response::Response;
use hyper::body::Incoming;
use tower_service::Service;

use super::AppState;
use super::http::{Call, Protocol, serve_inference};

#[derive(Clone)]
pub(crate) struct Front {
    state: Arc<AppState>,
    router: Router,
}

impl Front {
    pub(crate) fn new(state: Arc<AppState>) -> Front {
        Front {
            router: super::http::router(state.clone()),
            state,
        }
    }

    /// What it serves: also what plain inference requests are answered from (`super::h1`).
    pub(crate) fn state(&self) -> &Arc<AppState> {
        &self.state
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: hyper::Request<Incoming>) -> Answer {
        let request = request.map(Body::new);
        if request.method() == Method::POST
            && let Some(target) = inference_target(request.uri().path())
        {
            // Owned: the request, which the path borrows from, is taken apart for the handler.
            let model = target.model.to_owned();
            let version = target.version.map(str::to_owned);
            let protocol = target.protocol;
            let state = self.state.clone();
            let call = Call::of(request, &state.key_header);
            return Box::pin(async move {
                let answer = serve_inference(&state, &model, version.as_deref(), call, protocol);
                Ok(answer.await.into_response())
            });
        }
        // The router's future owns what it needs; the clone is of an `Arc`.
        Box::pin(self.router.clone().call(request))
    }
}

/// What an inference path names.
#[derive(Debug, PartialEq)]
pub(super) struct Target<'a> {
    pub(super) model: &'a str,
    pub(super) version: Option<&'a str>,
    pub(super) protocol: Protocol,
}

/// `/v2/models/{m}/infer`, `/v2/models/{m}/versions/{v}/infer` and `/v1/models/{m}:predict`,
/// with plain segments (no percent-escapes, none empty).
pub(super) fn inference_target(path: &str) -> Option<Target<'_>> {
    if path.contains('%') {
        return None;
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let mut parts = rest.split('/');
        let model = parts.next().filter(|m| !m.is_empty())?;
        return match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("infer"), None, None, None) => Some(Target {
                model,
                version: None,
                protocol: Protocol::V2,
            }),
            (Some("versions"), Some(version), Some("infer"), None) if !version.is_empty() => {
                Some(Target {
                    model,
                    version: Some(version),
                    protocol: Protocol::V2,
                })
            }
            _ => None,
        };
    }
    let target = path.strip_prefix("/v1/models/")?;
    let model = target.strip_suffix(":predict")?;
    (!model.is_empty() && !target.contains('/')).then_some(Target {
        model,
        version: None,
        protocol: Protocol::V1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(model: &'static str, version: Option<&'static str>) -> Option<Target<'static>> {
        Some(Target {
            model,
            version,
            protocol: Protocol::V2,
        })
    }

    #[test]
    fn inference_paths_are_recognised() {
        assert_eq!(
            inference_target("/v2/models/churn/infer"),
            v2("churn", None)
        );
        assert_eq!(
            inference_target("/v2/models/churn/versions/sha256:ab/infer"),
            v2("churn", Some("sha256:ab"))
        );
        assert_eq!(
            inference_target("/v1/models/churn:predict"),
            Some(Target {
                model: "churn",
                version: None,
                protocol: Protocol::V1
            })
        );
    }

    #[test]
    fn everything_else_goes_to_the_router() {
        for path in [
            "/v2/models/churn",
            "/v2/models//infer",
            "/v2/models/churn/infer/",
            "/v2/models/churn/infer/x",
            "/v2/models/churn/versions//infer",
            "/v2/models/churn/versions/1/infer/",
            "/v2/models/churn/ready",
            "/v2/models/ch%75rn/infer",
            "/v1/models/churn",
            "/v1/models/:predict",
            "/v1/models/a/b:predict",
            "/v2/repository/index",
            "/metrics",
        ] {
            assert_eq!(inference_target(path), None, "{path}");
        }
    }
}
