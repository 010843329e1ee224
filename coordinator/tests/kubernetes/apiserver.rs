//! The webhook registered with a real `kube-apiserver` (issue 12, item 5): the API server, not a
//! fixture, sends the AdmissionReview. etcd and kube-apiserver are built from the Go module
//! proxy by `scripts/kube-apiserver.sh` (cached; `SLUICE_KUBE_BIN` names the folder) and run on
//! 127.0.0.1; the webhook configuration is `manifests/base`'s own, its `clientConfig` pointed at
//! the test coordinator's HTTPS listener by `url`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::{TestPki, TestServer, send_with};

/// How long the API server may take to start, or to pick up a new webhook configuration.
const START: Duration = Duration::from_secs(60);

/// The folder holding `etcd` and `kube-apiserver`: `SLUICE_KUBE_BIN`, or what the install
/// script prints (it builds them the first time, about 5 minutes on 2 cores).
fn kube_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_KUBE_BIN") {
        return dir.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    String::from_utf8(out.stdout).unwrap().trim().into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child killed (and reaped) when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// etcd and a kube-apiserver on 127.0.0.1, with an admin bearer token.
pub struct ApiServer {
    // Dropped in field order: the API server before its etcd.
    _api: Kid,
    _etcd: Kid,
    addr: SocketAddr,
    token: String,
    connector: TlsConnector,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts both and waits for `/readyz`.
    pub async fn start() -> Self {
        let bin = kube_bin();
        let dir = tempfile::Builder::new()
            .prefix("sluice-kube-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // stdout and stderr into one file through one open file (two opens would overwrite
        // each other from offset 0).
        let log = |name: &str| {
            let f = std::fs::File::create(d.join(name)).unwrap();
            (f.try_clone().unwrap(), f)
        };
        let (etcd_out, etcd_err) = log("etcd.log");
        let (api_out, api_err) = log("kube-apiserver.log");
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Kid(Command::new(bin.join("etcd"))
            .args([
                "--name=sluice".into(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=sluice={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ])
            .stdout(etcd_out)
            .stderr(etcd_err)
            .spawn()
            .expect("etcd"));
        // The service-account key the API server insists on (nothing here uses it). RSA with
        // openssl: the API server reads no PKCS#8 ECDSA key, which is what rcgen writes.
        let made = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(d.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(made.success(), "openssl genrsa failed");
        let token = format!("{:032x}", rand_u128());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )
        .unwrap();
        let sa = d.join("sa.key").display().to_string();
        let mut api = Kid(Command::new(bin.join("kube-apiserver"))
            .args([
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", d.join("certs").display()),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={sa}"),
                format!("--service-account-signing-key-file={sa}"),
                "--endpoint-reconciler-type=none".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
            ])
            .stdout(api_out)
            .stderr(api_err)
            .spawn()
            .expect("kube-apiserver"));
        // The API server writes its self-signed serving certificate (and the CA that signed
        // it) before it listens; read it once it parses whole.
        let crt = d.join("certs/apiserver.crt");
        let deadline = Instant::now() + START;
        let certs = loop {
            let read: Option<Vec<CertificateDer>> = CertificateDer::pem_file_iter(&crt)
                .ok()
                .and_then(|certs| certs.collect::<Result<_, _>>().ok())
                .filter(|certs: &Vec<_>| !certs.is_empty());
            if let Some(certs) = read {
                break certs;
            }
            assert!(Instant::now() < deadline, "no {}", crt.display());
            assert!(api.0.try_wait().unwrap().is_none(), "kube-apiserver exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs);
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let server = Self {
            _api: api,
            _etcd: etcd,
            addr: ([127, 0, 0, 1], api_port).into(),
            token,
            connector: TlsConnector::from(Arc::new(config)),
            dir,
        };
        loop {
            if let Ok((StatusCode::OK, _)) = server.call("GET", "/readyz", None).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready:\n{}",
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }

    /// One authenticated request; the body, if any, is JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let bytes = body.map_or_else(Vec::new, |b| serde_json::to_vec(b).unwrap());
        let host = self.addr.to_string();
        let (status, body) = send_with(tls, method, path, bytes, &host, Some(&self.token)).await?;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        Ok((status, value))
    }

    /// The API server's last log lines, for a failure message.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Creates an object and returns it as stored; panics on anything but 201.
    pub async fn create(&self, collection: &str, object: &Value) -> Value {
        let (status, v) = self.call("POST", collection, Some(object)).await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "POST {collection}: {v}");
        v
    }
}

/// Randomness enough for a throwaway token (no `rand` in this crate's dev-dependencies).
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    (u128::from(s.hash_one(1u8)) << 64) | u128::from(s.hash_one(2u8))
}

fn namespace(name: &str, injection: bool) -> Value {
    let labels = if injection {
        json!({"sluice.dev/injection": "enabled"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A pod as the Flink operator makes them, with the opt-in annotation.
fn flink_pod(name: &str, component: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "orders-v1", "component": component, "type": "flink-native-kubernetes"},
            "annotations": {"sluice.dev/inject": "true"},
        },
        "spec": {
            "containers": [{
                "name": "flink-main-container",
                "image": "flink:2.1",
                "args": [component],
            }],
        },
    })
}

/// The names of a pod's containers, init containers (where the gate runs, as a native
/// sidecar) included.
fn containers(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    [&spec["initContainers"], &spec["containers"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// `manifests/base`'s MutatingWebhookConfiguration, sent to `url` with `ca` as its bundle.
fn webhook_configuration(url: &str, ca_pem: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/mutatingwebhookconfiguration.yaml");
    let mut v: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["webhooks"][0]["clientConfig"] = json!({
        "url": url,
        "caBundle": BASE64.encode(ca_pem),
    });
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_the_webhook_and_stores_taskmanagers_with_the_gate() {
    let kube = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The API server reaches the webhook by URL: the certificate names 127.0.0.1.
    let pki = TestPki::for_names("sluice webhook CA", &["127.0.0.1"]);
    let (cert, key) = pki.write(dir.path());
    let server = TestServer::start_injecting(dir.path(), &cert, &key).await;
    kube.create("/api/v1/namespaces", &namespace("flink", true))
        .await;
    kube.create("/api/v1/namespaces", &namespace("plain", false))
        .await;
    let url = format!("https://127.0.0.1:{}/mutate", server.webhook.port());
    kube.create(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        &webhook_configuration(&url, &pki.ca_pem),
    )
    .await;

    // The API server picks a new configuration up from its own watch, shortly.
    let pods = "/api/v1/namespaces/flink/pods";
    let deadline = Instant::now() + START;
    let mut attempt = 0;
    let (stored, took) = loop {
        attempt += 1;
        let asked = Instant::now();
        let pod = kube
            .create(
                pods,
                &flink_pod(&format!("orders-v1-taskmanager-{attempt}"), "taskmanager"),
            )
            .await;
        if containers(&pod).iter().any(|c| c == "sluice-gate") {
            break (pod, asked.elapsed());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(kube.dir.path().join("kube-apiserver.log"))
                .unwrap_or_default();
            let calls: Vec<&str> = log.lines().filter(|l| l.contains("webhook")).collect();
            panic!(
                "the API server never stored a pod with the gate; its webhook log lines:\n{}\n\
                 the coordinator's metrics:\n{}",
                calls.join("\n"),
                server.metrics().await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("webhook in effect after {attempt} pod(s); an injected create took {took:?}");
    let name = stored["metadata"]["name"].as_str().unwrap().to_owned();
    // What the API server stored (not only what it answered) has the gate, and is a valid Pod.
    let (status, got) = kube
        .call("GET", &format!("{pods}/{name}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let pod: Pod = serde_json::from_value(got.clone()).unwrap();
    let spec = pod.spec.unwrap();
    let gate = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == "sluice-gate")
        .expect("the stored pod has the gate container");
    assert_eq!(gate.image.as_deref(), Some(crate::common::IMAGE), "{got}");
    assert_eq!(
        got["metadata"]["annotations"]["sluice.dev/injected"], "true",
        "{got}"
    );
    let main = spec
        .containers
        .iter()
        .find(|c| c.name == "flink-main-container")
        .unwrap();
    assert!(
        main.env
            .iter()
            .flatten()
            .any(|e| e.name.starts_with("SLUICE_")),
        "the job's container is told where the gate is: {got}"
    );

    // A JobManager of the same deployment: the objectSelector keeps it from the webhook.
    let jm = kube
        .create(pods, &flink_pod("orders-v1-jobmanager", "jobmanager"))
        .await;
    assert_eq!(containers(&jm), ["flink-main-container"], "{jm}");
    // A TaskManager in a namespace that did not opt in: the namespaceSelector.
    let other = kube
        .create(
            "/api/v1/namespaces/plain/pods",
            &flink_pod("orders-v1-taskmanager-1", "taskmanager"),
        )
        .await;
    assert_eq!(containers(&other), ["flink-main-container"], "{other}");
    // A TaskManager without the opt-in annotation: called, left alone by the webhook.
    let mut bare = flink_pod("orders-v1-taskmanager-bare", "taskmanager");
    bare["metadata"]["annotations"] = json!({});
    let bare = kube.create(pods, &bare).await;
    assert_eq!(containers(&bare), ["flink-main-container"], "{bare}");

    // The API server called the webhook for the TaskManagers of the opted-in namespace only.
    let metrics = server.metrics().await;
    let reviews = |outcome: &str| {
        crate::common::metric(
            &metrics,
            &format!("sluice_webhook_reviews_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(reviews("injected"), f64::from(attempt), "{metrics}");
    assert_eq!(reviews("skipped"), 1.0, "the bare TaskManager: {metrics}");
    assert_eq!(reviews("error"), 0.0, "{metrics}");

    // The webhook down: pods are still created (failurePolicy: Ignore), without the gate.
    server.stop().await.unwrap();
    let asked = Instant::now();
    let down = kube
        .create(
            pods,
            &flink_pod("orders-v1-taskmanager-down", "taskmanager"),
        )
        .await;
    assert_eq!(containers(&down), ["flink-main-container"], "{down}");
    eprintln!("with the webhook down, a create took {:?}", asked.elapsed());
}

/// Where an object of `kind` is created: (collection path, namespaced).
fn collection(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "Namespace" => ("/api/v1/namespaces", false),
        "ServiceAccount" => ("/api/v1/{ns}/serviceaccounts", true),
        "Service" => ("/api/v1/{ns}/services", true),
        "PersistentVolumeClaim" => ("/api/v1/{ns}/persistentvolumeclaims", true),
        "ConfigMap" => ("/api/v1/{ns}/configmaps", true),
        "Deployment" => ("/apis/apps/v1/{ns}/deployments", true),
        "Role" => ("/apis/rbac.authorization.k8s.io/v1/{ns}/roles", true),
        "RoleBinding" => ("/apis/rbac.authorization.k8s.io/v1/{ns}/rolebindings", true),
        "NetworkPolicy" => ("/apis/networking.k8s.io/v1/{ns}/networkpolicies", true),
        "PodDisruptionBudget" => ("/apis/policy/v1/{ns}/poddisruptionbudgets", true),
        "MutatingWebhookConfiguration" => (
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            false,
        ),
        _ => return None,
    })
}

/// Every object of `manifests/base` is accepted by the real API server with strict field
/// validation (an unknown or misspelt field is refused, which k8s-openapi parsing ignores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_manifests_apply_to_the_api_server_with_strict_validation() {
    let kube = ApiServer::start().await;
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base");
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&base).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            if doc["kind"] != "Kustomization" {
                objects.push((path.file_name().unwrap().to_owned(), doc));
            }
        }
    }
    // Namespaces before what lives in them.
    objects.sort_by_key(|(_, d)| d["kind"] != "Namespace");
    let mut applied = Vec::new();
    for (file, doc) in &objects {
        let kind = doc["kind"].as_str().unwrap();
        let (path, namespaced) =
            collection(kind).unwrap_or_else(|| panic!("{file:?}: no collection known for {kind}"));
        let path = if namespaced {
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or_else(|| panic!("{file:?}: {kind} without a namespace"));
            path.replace("{ns}", &format!("namespaces/{ns}"))
        } else {
            path.to_owned()
        };
        let (status, answer) = kube
            .call("POST", &format!("{path}?fieldValidation=Strict"), Some(doc))
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{file:?}: the API server refused the {kind}: {answer}"
        );
        applied.push(kind.to_owned());
    }
    eprintln!("applied: {}", applied.join(", "));
    assert!(applied.len() >= 9, "{applied:?}");
    // And strictness is real: a misspelt field is refused.
    let (_, doc) = objects
        .iter()
        .find(|(_, d)| d["kind"] == "Service")
        .unwrap();
    let mut typo = doc.clone();
    typo["metadata"]["name"] = json!("typo");
    typo["spec"]["portz"] = typo["spec"]["ports"].take();
    let (status, answer) = kube
        .call(
            "POST",
            "/api/v1/namespaces/sluice/services?fieldValidation=Strict",
            Some(&typo),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("portz"), "{answer}");
}
