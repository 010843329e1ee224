//! `admission.k8s.io/v1` `AdmissionReview`: the request the API server posts and the response
//! the webhook returns, and [`review`], which turns one into the other.
//!
//! Own small serde types rather than `kube-core`'s `admission` module: that one serializes the
//! patch as an array of numbers (kube-rs/kube#1781) where the API documents a base64 string,
//! and it fails the whole review, uid included, when the object does not parse — here the uid
//! is read first, so any request that has one gets a proper (allowing) answer.
//!
//! Answers: a body that is not a v1 `AdmissionReview` with a request and a uid is a client
//! error (HTTP 400, with a readable message; the API server then applies the webhook's
//! `failurePolicy: Ignore`, so the pod is still created). Everything else is HTTP 200 with
//! `allowed: true` — with a JSON patch for an injected pod, and warnings where the creator of
//! the pod should know why it was not injected. The webhook never denies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::mutate::{InjectionConfig, mutate};

/// The `apiVersion` of the reviews this webhook speaks.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The `kind` of a review.
pub const KIND: &str = "AdmissionReview";

/// Group, version and kind of the reviewed object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group (empty for the core group).
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// Group, version and resource of the reviewed object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupVersionResource {
    /// API group (empty for the core group).
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Resource (plural, lower case).
    #[serde(default)]
    pub resource: String,
}

/// The `request` of an `AdmissionReview` (the fields the webhook reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this request; echoed in the response.
    pub uid: String,
    /// Kind of the object.
    pub kind: GroupVersionKind,
    /// Resource of the object.
    pub resource: GroupVersionResource,
    /// Subresource, if the request is for one (e.g. `ephemeralcontainers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_resource: Option<String>,
    /// Name of the object; often empty on CREATE (the pod has only a `generateName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace the object is created in (the pod itself often lacks it on CREATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// Who asked (part of the API's request; not used for decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_info: Option<UserInfo>,
    /// The object as it would be stored, raw (parsed as a Pod by [`review`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// Whether the request is a dry run (harmless here: the webhook has no side effects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// The `response` of an `AdmissionReview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the object may be stored: always `true` from this webhook.
    pub allowed: bool,
    /// `JSONPatch` when there is a patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// The JSON patch, base64 of its JSON text (a Go `[]byte` in JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Warnings for the client that created the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A review sent back to the API server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// The answer.
    pub response: AdmissionResponse,
}

/// A body that is not a v1 `AdmissionReview` carrying a request with a uid. One variant per
/// cause; answered with HTTP 400 and this message.
#[derive(Debug, Error)]
pub enum ReviewError {
    /// The body is not JSON.
    #[error("the body is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not a v1 `AdmissionReview`.
    #[error(
        "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got apiVersion {api_version:?} \
         and kind {kind:?}"
    )]
    WrongType {
        /// The `apiVersion` found, if any.
        api_version: Option<String>,
        /// The `kind` found, if any.
        kind: Option<String>,
    },
    /// The review has no `request` object.
    #[error("the AdmissionReview has no request")]
    MissingRequest,
    /// The request has no `uid` string, so no response can refer to it.
    #[error("the AdmissionReview request has no uid")]
    MissingUid,
}

/// How a review was answered (the label of the reviews metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The pod got the sidecar.
    Injected,
    /// The pod was admitted unchanged, as intended (not opted in, not a TaskManager, already
    /// injected, not a pod CREATE).
    Skipped,
    /// The pod was admitted unchanged because something was wrong: a malformed review, an
    /// object that is not a readable Pod, or an opted-in pod that could not be injected.
    Error,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// For the metric.
    pub outcome: Outcome,
    /// The review to send back, or why the body is not a review (HTTP 400).
    pub response: Result<AdmissionReviewResponse, ReviewError>,
}

impl Reviewed {
    fn allowed(uid: String, outcome: Outcome, warnings: Vec<String>) -> Self {
        Self {
            outcome,
            response: Ok(AdmissionReviewResponse {
                api_version: API_VERSION.into(),
                kind: KIND.into(),
                response: AdmissionResponse {
                    uid,
                    allowed: true,
                    patch_type: None,
                    patch: None,
                    warnings,
                },
            }),
        }
    }

    fn invalid(e: ReviewError) -> Self {
        Self {
            outcome: Outcome::Error,
            response: Err(e),
        }
    }
}

/// Answers one `AdmissionReview` body. Pure: no I/O, never panics on any input.
pub fn review(body: &[u8], config: &InjectionConfig) -> Reviewed {
    let mut doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Reviewed::invalid(ReviewError::NotJson(e)),
    };
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (api_version, kind) = (field(&doc, "apiVersion"), field(&doc, "kind"));
    if api_version.as_deref() != Some(API_VERSION) || kind.as_deref() != Some(KIND) {
        return Reviewed::invalid(ReviewError::WrongType { api_version, kind });
    }
    // Taken out of the document rather than cloned: it holds the whole pod.
    let Some(raw) = doc
        .get_mut("request")
        .filter(|r| r.is_object())
        .map(Value::take)
    else {
        return Reviewed::invalid(ReviewError::MissingRequest);
    };
    let Some(uid) = field(&raw, "uid") else {
        return Reviewed::invalid(ReviewError::MissingUid);
    };

    // From here on the request has a uid: every answer allows, with a warning when useful.
    let error = |warning: String| {
        tracing::warn!(%uid, "{warning}");
        Reviewed::allowed(uid.clone(), Outcome::Error, vec![warning])
    };
    let request: AdmissionRequest = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return error(format!("sluice: cannot read the admission request: {e}")),
    };
    let is_pod = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.resource.resource == "pods";
    if !is_pod {
        return error(format!(
            "sluice: the webhook handles pods, not {}/{}; admitted unchanged",
            request.kind.group, request.kind.kind
        ));
    }
    if request.operation != "CREATE" || request.sub_resource.is_some() {
        // The configuration registers pod CREATE only; anything else passes untouched.
        return Reviewed::allowed(uid, Outcome::Skipped, Vec::new());
    }
    let Some(object) = request.object else {
        return error("sluice: the admission request has no object; admitted unchanged".into());
    };
    let pod: Pod = match serde_json::from_value(object) {
        Ok(p) => p,
        Err(e) => {
            return error(format!(
                "sluice: cannot read the pod: {e}; admitted unchanged"
            ));
        }
    };
    let namespace = request.namespace.as_deref();
    let pod_name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default();
    match mutate(&pod, namespace, config) {
        Ok(injection) => {
            let patch = match serde_json::to_vec(&injection.patch) {
                Ok(p) => p,
                Err(e) => return error(format!("sluice: cannot encode the patch: {e}")),
            };
            tracing::info!(
                %uid, namespace = namespace.unwrap_or_default(), pod = pod_name,
                pipeline = %injection.pipeline, deployment = %injection.deployment,
                "injecting the gate sidecar"
            );
            let mut reviewed = Reviewed::allowed(uid, Outcome::Injected, injection.warnings);
            if let Ok(r) = &mut reviewed.response {
                r.response.patch_type = Some("JSONPatch".into());
                r.response.patch = Some(BASE64.encode(patch));
            }
            reviewed
        }
        Err(skip) => {
            let warning = skip.warning();
            let outcome = if warning.is_some() {
                Outcome::Error
            } else {
                Outcome::Skipped
            };
            tracing::debug!(
                %uid, namespace = namespace.unwrap_or_default(), pod = pod_name,
                reason = %skip, "not injecting"
            );
            if let Some(w) = &warning {
                tracing::warn!(%uid, namespace = namespace.unwrap_or_default(), pod = pod_name, "{w}");
            }
            Reviewed::allowed(uid, outcome, warning.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> InjectionConfig {
        InjectionConfig {
            image: "gate:1".into(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: None,
            memory_limit: "256Mi".into(),
            sink: "stdout".into(),
            coordinator: "http://c:7070".into(),
            coordinator_ca_configmap: None,
        }
    }

    fn request(object: Value) -> Value {
        json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "ns", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:flink:flink"},
                "object": object,
            }
        })
    }

    fn tm() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": "x-taskmanager-1-",
                "labels": {"app": "x", "component": "taskmanager"},
                "annotations": {"sluice.dev/inject": "true"},
            },
            "spec": {"containers": [{"name": "flink-main-container", "image": "flink"}]},
        })
    }

    fn ok(r: Reviewed) -> AdmissionResponse {
        r.response.unwrap().response
    }

    #[test]
    fn an_injected_pod_gets_a_base64_json_patch() {
        let r = review(request(tm()).to_string().as_bytes(), &config());
        assert_eq!(r.outcome, Outcome::Injected);
        let resp = ok(r);
        assert_eq!(resp.uid, "u-1");
        assert!(resp.allowed);
        assert_eq!(resp.patch_type.as_deref(), Some("JSONPatch"));
        let patch: json_patch::Patch =
            serde_json::from_slice(&BASE64.decode(resp.patch.unwrap()).unwrap()).unwrap();
        let mut pod = tm();
        json_patch::patch(&mut pod, &patch).unwrap();
        assert_eq!(
            pod["metadata"]["annotations"]["sluice.dev/injected"],
            "true"
        );
    }

    #[test]
    fn bodies_that_are_not_reviews_are_client_errors() {
        type Expect = fn(&ReviewError) -> bool;
        let cases: [(&[u8], Expect); 5] = [
            (b"not json", |e| matches!(e, ReviewError::NotJson(_))),
            (br#"{"apiVersion":"v1","kind":"Pod"}"#, |e| {
                matches!(e, ReviewError::WrongType { .. })
            }),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
                |e| matches!(e, ReviewError::WrongType { .. }),
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                |e| matches!(e, ReviewError::MissingRequest),
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                |e| matches!(e, ReviewError::MissingUid),
            ),
        ];
        for (body, expected) in cases {
            let r = review(body, &config());
            assert_eq!(r.outcome, Outcome::Error);
            let e = r.response.unwrap_err();
            assert!(expected(&e), "{}: {e:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_request_with_a_uid_is_always_allowed() {
        let mut no_object = request(tm());
        no_object["request"]
            .as_object_mut()
            .unwrap()
            .remove("object");
        let mut not_a_pod = request(json!({"kind": "ConfigMap"}));
        not_a_pod["request"]["kind"]["kind"] = json!("ConfigMap");
        not_a_pod["request"]["resource"]["resource"] = json!("configmaps");
        let unreadable_pod = request(json!({"spec": {"containers": "nope"}}));
        let mut no_operation = request(tm());
        no_operation["request"]
            .as_object_mut()
            .unwrap()
            .remove("operation");
        for body in [no_object, not_a_pod, unreadable_pod, no_operation] {
            let r = review(body.to_string().as_bytes(), &config());
            assert_eq!(r.outcome, Outcome::Error, "{body}");
            let resp = ok(r);
            assert!(resp.allowed);
            assert_eq!(resp.uid, "u-1");
            assert!(resp.patch.is_none());
            assert_eq!(resp.warnings.len(), 1, "{body}");
        }
    }

    #[test]
    fn updates_and_subresources_pass_untouched() {
        let mut update = request(tm());
        update["request"]["operation"] = json!("UPDATE");
        let mut sub = request(tm());
        sub["request"]["subResource"] = json!("ephemeralcontainers");
        for body in [update, sub] {
            let r = review(body.to_string().as_bytes(), &config());
            assert_eq!(r.outcome, Outcome::Skipped);
            let resp = ok(r);
            assert!(resp.allowed && resp.patch.is_none() && resp.warnings.is_empty());
        }
    }
}
