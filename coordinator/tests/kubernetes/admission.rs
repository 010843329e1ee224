//! The webhook over real HTTPS with AdmissionReview fixtures shaped like the API server's:
//! injected pods get exactly the expected additions, everything else comes back allowed and
//! unchanged, and bad input gets a clear answer without ever stopping the server.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{
    CA_CONFIGMAP, Client, Exchange, IMAGE, SIDECAR_COORDINATOR, TestPki, TestServer, fixture,
    metric,
};

struct Setup {
    _dir: tempfile::TempDir,
    server: TestServer,
    client: Client,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("sluice test CA");
    let (cert, key) = pki.write(dir.path());
    let server = TestServer::start_injecting(dir.path(), &cert, &key).await;
    let client = Client::new(server.webhook, &[&pki.ca_der]);
    Setup {
        _dir: dir,
        server,
        client,
    }
}

/// The `response` of a 200 answer, after checking the envelope and the uid.
fn response(x: &Exchange, request: &Value) -> Value {
    assert_eq!(
        x.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&x.body)
    );
    let review: Value = serde_json::from_slice(&x.body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let resp = review["response"].clone();
    assert_eq!(resp["uid"], request["request"]["uid"], "uid must be echoed");
    assert_eq!(resp["allowed"], true, "the webhook never denies");
    resp
}

/// The pod after applying the response's patch (the object unchanged if there is none).
fn patched(resp: &Value, request: &Value) -> Value {
    let mut object = request["request"]["object"].clone();
    if let Some(patch) = resp.get("patch") {
        assert_eq!(resp["patchType"], "JSONPatch");
        let bytes = BASE64.decode(patch.as_str().unwrap()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
    }
    object
}

/// Paths where `a` and `b` differ (to print a readable failure).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(va, vb, &format!("{at}/{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: got {a}, expected {b}")),
        _ => {}
    }
}

fn assert_same(got: &Value, expected: &Value) {
    let mut diffs = Vec::new();
    differences(got, expected, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "patched pod differs:\n{}",
        diffs.join("\n")
    );
}

/// The sidecar exactly as it must be injected, written out here independently of the code.
fn expected_sidecar(pipeline: &str, deployment: &str) -> Value {
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": "sluice-health"},
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2
        })
    };
    json!({
        "name": "sluice-gate",
        "image": IMAGE,
        "restartPolicy": "Always",
        "env": [
            {"name": "SLUICE_COORDINATOR", "value": SIDECAR_COORDINATOR},
            {"name": "SLUICE_PIPELINE", "value": pipeline},
            {"name": "SLUICE_DEPLOYMENT", "value": deployment},
            {"name": "SLUICE_SOCKET", "value": "/var/run/sluice/gate.sock"},
            {"name": "SLUICE_HIGH_MARK_FILE", "value": "/var/run/sluice/gate.highmark"},
            {"name": "SLUICE_SOCKET_MODE", "value": "0666"},
            {"name": "SLUICE_GATE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "SLUICE_SINK", "value": "stdout"},
            {"name": "SLUICE_HEALTH_LISTEN", "value": "0.0.0.0:9901"},
            {"name": "SLUICE_COORDINATOR_CA", "value": "/etc/sluice/coordinator-ca/ca.crt"},
        ],
        "ports": [{"name": "sluice-health", "containerPort": 9901, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "startupProbe": probe("/livez", 1, 30),
        "livenessProbe": probe("/livez", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "sluice-socket", "mountPath": "/var/run/sluice"},
            {
                "name": "sluice-coordinator-ca",
                "mountPath": "/etc/sluice/coordinator-ca",
                "readOnly": true,
            },
        ],
    })
}

/// `object` with exactly the additions an injection must make.
fn expected_injection(object: &Value, pipeline: &str, deployment: &str) -> Value {
    let mut pod = object.clone();
    pod["metadata"]["annotations"]["sluice.dev/injected"] = json!("true");
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.entry("volumes")
        .or_insert(json!([]))
        .as_array_mut()
        .unwrap()
        .extend([
            json!({"name": "sluice-socket", "emptyDir": {}}),
            // The CA is not optional: without it the pod does not start (rather than run a
            // sidecar that cannot verify the coordinator).
            json!({
                "name": "sluice-coordinator-ca",
                "configMap": {
                    "name": CA_CONFIGMAP,
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    "optional": false,
                },
            }),
        ]);
    spec.entry("initContainers")
        .or_insert(json!([]))
        .as_array_mut()
        .unwrap()
        .push(expected_sidecar(pipeline, deployment));
    let main = spec["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "flink-main-container")
        .unwrap();
    main["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sluice-socket", "mountPath": "/var/run/sluice"}));
    let env = main["env"].as_array_mut().unwrap();
    for (name, value) in [
        ("SLUICE_SOCKET", "/var/run/sluice/gate.sock"),
        ("SLUICE_PIPELINE", pipeline),
        ("SLUICE_DEPLOYMENT", deployment),
    ] {
        // A variable the pod already sets is kept as it is.
        if !env.iter().any(|e| e["name"] == name) {
            env.push(json!({"name": name, "value": value}));
        }
    }
    pod
}

/// The review of `object` as the API server would send it on a reinvocation.
fn review_of(object: &Value, template: &Value, uid: &str) -> Value {
    let mut r = template.clone();
    r["request"]["uid"] = json!(uid);
    r["request"]["object"] = object.clone();
    r
}

async fn check_injected(client: &Client, name: &str, pipeline: &str, deployment: &str) -> Value {
    let request: Value = serde_json::from_slice(&fixture(name)).unwrap();
    let x = client.review(&fixture(name)).await;
    let resp = response(&x, &request);
    assert!(resp.get("warnings").is_none(), "{name}: {resp}");
    let pod = patched(&resp, &request);
    assert_same(
        &pod,
        &expected_injection(&request["request"]["object"], pipeline, deployment),
    );
    // The result is still a valid Pod, with the sidecar as a native sidecar.
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let sidecar = spec.init_containers.unwrap().pop().unwrap();
    assert_eq!(sidecar.name, "sluice-gate");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));

    // Idempotent: the webhook applied to its own output adds nothing.
    let again = review_of(&pod, &request, "reinvocation-1");
    let x = client.review(again.to_string().as_bytes()).await;
    let resp = response(&x, &again);
    assert!(
        resp.get("patch").is_none(),
        "{name}: second pass patched: {resp}"
    );
    assert!(resp.get("warnings").is_none(), "{resp}");
    pod
}

#[tokio::test]
async fn an_operator_taskmanager_gets_exactly_the_gate() {
    let s = setup().await;
    check_injected(&s.client, "taskmanager.json", "shop/orders-v1", "orders-v1").await;
    // Identity from annotations, a generateName-only pod, an existing init container and a
    // SLUICE_DEPLOYMENT the job already sets.
    let pod = check_injected(
        &s.client,
        "taskmanager-green-standalone.json",
        "shop/orders",
        "orders-v2",
    )
    .await;
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["fetch-reference-data", "sluice-gate"]);

    let m = s.server.metrics().await;
    assert_eq!(reviews(&m), (2.0, 2.0, 0.0));
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn the_already_injected_fixture_is_left_alone() {
    let s = setup().await;
    let request: Value = serde_json::from_slice(&fixture("already-injected.json")).unwrap();
    let resp = response(
        &s.client.review(&fixture("already-injected.json")).await,
        &request,
    );
    assert!(resp.get("patch").is_none(), "{resp}");
    assert!(resp.get("warnings").is_none(), "{resp}");
    // It is what the webhook makes of taskmanager.json: the fixture is not stale.
    let original: Value = serde_json::from_slice(&fixture("taskmanager.json")).unwrap();
    assert_same(
        &request["request"]["object"],
        &expected_injection(
            &original["request"]["object"],
            "shop/orders-v1",
            "orders-v1",
        ),
    );
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn pods_that_are_not_opted_in_taskmanagers_come_back_unchanged() {
    let s = setup().await;
    for (name, warns) in [
        ("jobmanager.json", false),
        ("non-flink.json", false),
        ("taskmanager-no-identity.json", true),
    ] {
        let request: Value = serde_json::from_slice(&fixture(name)).unwrap();
        let resp = response(&s.client.review(&fixture(name)).await, &request);
        assert!(resp.get("patch").is_none(), "{name}: {resp}");
        assert!(resp.get("patchType").is_none(), "{name}: {resp}");
        let warnings = resp.get("warnings").and_then(Value::as_array);
        if warns {
            let w = warnings.unwrap_or_else(|| panic!("{name}: no warning: {resp}"));
            assert_eq!(w.len(), 1);
            assert!(
                w[0].as_str().unwrap().contains("sluice.dev/pipeline"),
                "{name}: {w:?}"
            );
        } else {
            assert!(warnings.is_none(), "{name}: {resp}");
        }
    }
    let m = s.server.metrics().await;
    assert_eq!(reviews(&m), (0.0, 2.0, 1.0));
    s.server.stop().await.unwrap();
}

/// The webhook's review counters: (injected, skipped, error).
fn reviews(metrics: &str) -> (f64, f64, f64) {
    let n = |outcome: &str| {
        metric(
            metrics,
            &format!("sluice_webhook_reviews_total{{outcome=\"{outcome}\"}}"),
        )
    };
    (n("injected"), n("skipped"), n("error"))
}

/// After each bad input the same server still answers a good review and gRPC health.
async fn still_serving(s: &Setup) {
    let request: Value = serde_json::from_slice(&fixture("taskmanager.json")).unwrap();
    let resp = response(
        &s.client.review(&fixture("taskmanager.json")).await,
        &request,
    );
    assert!(resp.get("patch").is_some());
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let s = setup().await;

    let x = s.client.review(&fixture("not-json.txt")).await;
    assert_eq!(x.status, StatusCode::BAD_REQUEST);
    let body = String::from_utf8_lossy(&x.body);
    assert!(body.contains("not JSON"), "{body}");
    still_serving(&s).await;

    let x = s.client.review(&fixture("wrong-kind.json")).await;
    assert_eq!(x.status, StatusCode::BAD_REQUEST);
    let body = String::from_utf8_lossy(&x.body);
    assert!(
        body.contains("AdmissionReview") && body.contains("AdmissionRequest"),
        "{body}"
    );
    still_serving(&s).await;

    // A missing object still has a uid: allowed, with a warning.
    let request: Value = serde_json::from_slice(&fixture("missing-object.json")).unwrap();
    let resp = response(
        &s.client.review(&fixture("missing-object.json")).await,
        &request,
    );
    assert!(resp.get("patch").is_none());
    let w = resp["warnings"][0].as_str().unwrap();
    assert!(w.contains("no object"), "{w}");
    still_serving(&s).await;

    let x = s
        .client
        .review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
        .await;
    assert_eq!(x.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&x.body).contains("no request"));

    // Too large: 413, before the whole body is read into memory.
    let big = vec![b' '; 4 * 1024 * 1024];
    let x = s.client.request("POST", "/mutate", big).await.unwrap();
    assert_eq!(x.status, StatusCode::PAYLOAD_TOO_LARGE);
    still_serving(&s).await;

    let x = s
        .client
        .request("GET", "/mutate", Vec::new())
        .await
        .unwrap();
    assert_eq!(x.status, StatusCode::METHOD_NOT_ALLOWED);
    let x = s.client.request("GET", "/nope", Vec::new()).await.unwrap();
    assert_eq!(x.status, StatusCode::NOT_FOUND);
    let x = s
        .client
        .request("GET", "/healthz", Vec::new())
        .await
        .unwrap();
    assert_eq!(x.status, StatusCode::OK);

    // Plain HTTP on the TLS port: that connection fails, nothing else does.
    let tcp = tokio::net::TcpStream::connect(s.server.webhook)
        .await
        .unwrap();
    assert!(
        crate::common::send(tcp, "POST", "/mutate", b"{}".to_vec())
            .await
            .is_err()
    );
    // A client that does not trust the certificate cannot talk to the webhook.
    let stranger = Client::new(s.server.webhook, &[&TestPki::new("other CA").ca_der]);
    let err = stranger
        .request("GET", "/healthz", Vec::new())
        .await
        .err()
        .unwrap();
    assert!(err.contains("TLS handshake failed"), "{err}");
    still_serving(&s).await;

    let m = s.server.metrics().await;
    // Errors: not JSON, wrong kind, missing object, missing request, too large.
    let (injected, _, errors) = reviews(&m);
    assert_eq!((injected, errors), (5.0, 5.0));

    // gRPC was never affected.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    s.server.stop().await.unwrap();
}
