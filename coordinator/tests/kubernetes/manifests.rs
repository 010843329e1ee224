//! Every YAML file under `manifests/` parses into its type, knows no field its type does not
//! (a typo would otherwise be silently dropped), and the files agree with each other and with
//! the coordinator: selectors, ports, names, the webhook path, and the coordinator flags the
//! Deployment sets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_coordinator::Config;
use sluice_coordinator::webhook::mutate::CA_KEY;
use sluice_coordinator::webhook::{HEALTHZ_PATH, MUTATE_PATH};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every `.yaml`/`.yml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a multi-document YAML text (empty documents skipped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Parses `doc` as `T`, and fails if serializing it back loses anything: a field `T` does not
/// know (k8s-openapi ignores unknown fields when parsing) or a value of the wrong type.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value, origin: &str) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", doc["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    let mut lost = Vec::new();
    missing(doc, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{origin}: fields unknown to {} (typos?): {lost:?}",
        doc["kind"]
    );
    t
}

/// Paths in `a` that are absent or different in `b`.
fn missing(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => missing(v, w, &format!("{at}/{k}"), out),
                    None => out.push(format!("{at}/{k}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                missing(v, w, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: {a} became {b}")),
        _ => {}
    }
}

// Custom resources without k8s-openapi types: their required fields, and nothing unknown.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KustomizePatch {
    path: String,
    target: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Meta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Cr<S> {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerSpec {
    self_signed: Option<Value>,
    ca: Option<CaIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaIssuer {
    secret_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    issuer_ref: IssuerRef,
    #[serde(default, rename = "isCA")]
    is_ca: bool,
    common_name: Option<String>,
    #[serde(default)]
    dns_names: Vec<String>,
    duration: Option<String>,
    renew_before: Option<String>,
    private_key: Option<Value>,
    #[serde(default)]
    usages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerRef {
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlinkDeploymentSpec {
    image: String,
    flink_version: String,
    service_account: String,
    #[serde(default)]
    flink_configuration: BTreeMap<String, String>,
    job_manager: FlinkComponent,
    task_manager: FlinkComponent,
    job: FlinkJob,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlinkComponent {
    resource: BTreeMap<String, Value>,
    pod_template: Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlinkJob {
    #[serde(rename = "jarURI")]
    jar_uri: String,
    entry_class: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    parallelism: u32,
    upgrade_mode: String,
    state: String,
}

/// Everything found, by kind, with the file each came from.
#[derive(Default)]
struct Found {
    namespaces: Vec<(String, Namespace)>,
    service_accounts: Vec<(String, ServiceAccount)>,
    roles: Vec<(String, Role)>,
    role_bindings: Vec<(String, RoleBinding)>,
    deployments: Vec<(String, Deployment)>,
    services: Vec<(String, Service)>,
    webhooks: Vec<(String, MutatingWebhookConfiguration)>,
    pvcs: Vec<(String, PersistentVolumeClaim)>,
    network_policies: Vec<(String, NetworkPolicy)>,
    issuers: Vec<(String, Cr<IssuerSpec>)>,
    certificates: Vec<(String, Cr<CertificateSpec>)>,
    flink: Vec<(String, Cr<FlinkDeploymentSpec>)>,
    kustomizations: Vec<(PathBuf, Kustomization)>,
}

fn cr<S: DeserializeOwned>(doc: &Value, origin: &str) -> Cr<S> {
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", doc["kind"]))
}

fn classify(found: &mut Found, doc: &Value, file: &Path, origin: &str) {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let o = origin.to_owned();
    match (api, kind) {
        ("v1", "Namespace") => found.namespaces.push((o, typed(doc, origin))),
        ("v1", "ServiceAccount") => found.service_accounts.push((o, typed(doc, origin))),
        ("rbac.authorization.k8s.io/v1", "Role") => found.roles.push((o, typed(doc, origin))),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            found.role_bindings.push((o, typed(doc, origin)));
        }
        ("apps/v1", "Deployment") => found.deployments.push((o, typed(doc, origin))),
        ("v1", "Service") => found.services.push((o, typed(doc, origin))),
        ("v1", "PersistentVolumeClaim") => found.pvcs.push((o, typed(doc, origin))),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            found.network_policies.push((o, typed(doc, origin)));
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            found.webhooks.push((o, typed(doc, origin)));
        }
        ("cert-manager.io/v1", "Issuer") => found.issuers.push((o, cr(doc, origin))),
        ("cert-manager.io/v1", "Certificate") => found.certificates.push((o, cr(doc, origin))),
        ("flink.apache.org/v1beta1", "FlinkDeployment") => {
            found.flink.push((o, cr(doc, origin)));
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
            let k: Kustomization = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{origin}: not a valid Kustomization: {e}"));
            found.kustomizations.push((file.to_path_buf(), k));
        }
        _ => panic!("{origin}: unknown kind {api}/{kind}: add it to this test"),
    }
}

fn load_all() -> (Found, usize) {
    let dir = manifests_dir();
    let mut found = Found::default();
    let files = yaml_files(&dir);
    assert!(files.len() >= 10, "manifests missing: {files:?}");
    let mut count = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&dir).unwrap().display().to_string();
        for (i, doc) in documents(&text, &rel).iter().enumerate() {
            classify(&mut found, doc, file, &format!("{rel}#{i}"));
            count += 1;
        }
    }
    (found, count)
}

fn only<'a, T>(items: &'a [(String, T)], what: &str, pick: impl Fn(&T) -> bool) -> &'a T {
    let matching: Vec<&T> = items
        .iter()
        .filter(|(_, t)| pick(t))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(matching.len(), 1, "expected exactly one {what}");
    matching[0]
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// `--long value` arguments for the Deployment's `SLUICE_*` environment, by the clap env names.
fn args_from_env(env: &[(String, String)]) -> Vec<String> {
    let command = Config::command();
    let mut args = vec!["coordinator".to_owned()];
    for (name, value) in env.iter().filter(|(n, _)| n.starts_with("SLUICE_")) {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not a coordinator setting"));
        let long = arg.get_long().unwrap();
        if arg.get_action().takes_values() {
            args.push(format!("--{long}"));
            args.push(value.clone());
        } else {
            assert_eq!(value, "true", "{name} is a switch: \"true\" or absent");
            args.push(format!("--{long}"));
        }
    }
    args
}

fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container {} has no port {name}", c.name))
        .container_port
}

#[test]
fn every_manifest_parses_and_the_pieces_fit_together() {
    let (found, count) = load_all();
    assert!(count >= 15, "only {count} documents");

    // Kustomizations list files that exist (and patches target something that exists).
    for (file, k) in &found.kustomizations {
        assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
        assert_eq!(k.kind, "Kustomization");
        let dir = file.parent().unwrap();
        for r in k.resources.iter().chain(k.patches.iter().map(|p| &p.path)) {
            assert!(
                dir.join(r).exists(),
                "{}: {r} does not exist",
                file.display()
            );
        }
        for p in &k.patches {
            assert_eq!(p.target["kind"], "MutatingWebhookConfiguration");
        }
    }

    let ns = only(&found.namespaces, "sluice namespace", |n| {
        name_of(&n.metadata) == "sluice"
    });
    let ns_name = name_of(&ns.metadata);
    let sa = only(&found.service_accounts, "service account", |_| true);
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns_name));
    assert_eq!(sa.automount_service_account_token, Some(false));

    // RBAC: the binding names the service account and the role; the role grants nothing.
    let role = only(&found.roles, "role", |_| true);
    assert!(role.rules.as_deref().unwrap_or_default().is_empty());
    let rb = only(&found.role_bindings, "role binding", |_| true);
    assert_eq!(rb.role_ref.kind, "Role");
    assert_eq!(rb.role_ref.name, name_of(&role.metadata));
    let subject = &rb.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(subject.name, name_of(&sa.metadata));
    assert_eq!(subject.namespace.as_deref(), Some(ns_name));

    // Deployment: one replica, recreated, its service account, its PVC and Secret.
    let dep = only(&found.deployments, "deployment", |_| true);
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1), "the coordinator is a single writer");
    assert_eq!(
        spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate")
    );
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "selector {k}={v} misses the pods"
        );
    }
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(name_of(&sa.metadata))
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    let c = &pod.containers[0];
    let csc = c.security_context.as_ref().unwrap();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(
        csc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let volumes = pod.volumes.as_ref().unwrap();
    let pvc = only(&found.pvcs, "state claim", |_| true);
    assert!(volumes.iter().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|p| p.claim_name == name_of(&pvc.metadata))
    }));
    let secret_name = volumes
        .iter()
        .find_map(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
        .unwrap();

    // The coordinator accepts the Deployment's settings as they are.
    let env: Vec<(String, String)> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let config = Config::try_parse_from(args_from_env(&env))
        .unwrap_or_else(|e| panic!("the Deployment's settings do not parse: {e}"));
    let injection = config.injection().unwrap().expect("the webhook is enabled");
    assert!(config.allow_non_loopback);
    let listen = |a: Option<SocketAddr>| a.unwrap().port() as i32;
    assert_eq!(container_port(c, "grpc"), listen(Some(config.listen)));
    assert_eq!(container_port(c, "webhook"), listen(config.webhook_listen));
    assert_eq!(container_port(c, "metrics"), listen(config.metrics_listen));
    // The certificate files are the mounted Secret's.
    let tls_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| {
            volumes
                .iter()
                .any(|v| v.name == m.name && v.secret.is_some())
        })
        .unwrap();
    // gRPC serves TLS with the same Secret (its names are checked against the Service below).
    let (grpc_cert, grpc_key) = config.grpc_tls().expect("gRPC serves TLS");
    for file in [
        config.webhook_cert.as_ref(),
        config.webhook_key.as_ref(),
        Some(grpc_cert),
        Some(grpc_key),
    ] {
        assert!(file.unwrap().starts_with(&tls_mount.mount_path));
    }
    assert_eq!(Some(grpc_cert), config.webhook_cert.as_ref());
    assert_eq!(Some(grpc_key), config.webhook_key.as_ref());
    let state_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "state")
        .unwrap();
    assert!(config.state_file.starts_with(&state_mount.mount_path));
    // Probes: GET /healthz over HTTPS on the webhook port. A `grpc:` probe would fail: the
    // kubelet's gRPC probe has no TLS and the gRPC port serves only TLS.
    for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
        let probe = probe.as_ref().unwrap();
        assert!(probe.grpc.is_none() && probe.tcp_socket.is_none());
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(HEALTHZ_PATH));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        let port = match &get.port {
            IntOrString::String(name) => container_port(c, name),
            IntOrString::Int(n) => *n,
        };
        assert_eq!(port, listen(config.webhook_listen));
    }

    // The Service selects the coordinator and maps every named port.
    let svc = only(&found.services, "service", |_| true);
    let svc_spec = svc.spec.as_ref().unwrap();
    for (k, v) in svc_spec.selector.as_ref().unwrap() {
        assert_eq!(template_labels.get(k), Some(v), "service selector {k}={v}");
    }
    let svc_port = |name: &str| {
        let p = svc_spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("service has no port {name}"));
        assert_eq!(p.target_port, Some(IntOrString::String(name.into())));
        container_port(c, name);
        p.port
    };
    let svc_host = format!("{}.{}.svc", name_of(&svc.metadata), ns_name);
    // Sidecars dial the Service's gRPC port over TLS, trusting the CA of a ConfigMap.
    assert_eq!(
        injection.coordinator,
        format!("https://{svc_host}:{}", svc_port("grpc"))
    );
    let ca_configmap = injection
        .coordinator_ca_configmap
        .clone()
        .expect("sidecars get the CA from a ConfigMap");
    svc_port("metrics");

    // The webhook configuration points at the Service's webhook port and the server's path.
    let mwc = only(&found.webhooks, "webhook configuration", |w| {
        w.webhooks.is_some()
    });
    let hook = &mwc.webhooks.as_ref().unwrap()[0];
    let target = hook.client_config.service.as_ref().unwrap();
    assert_eq!(target.name, name_of(&svc.metadata));
    assert_eq!(target.namespace, ns_name);
    assert_eq!(target.path.as_deref(), Some(MUTATE_PATH));
    assert_eq!(target.port, Some(svc_port("webhook")));
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert_eq!(hook.timeout_seconds, Some(5));
    let rule = &hook.rules.as_ref().unwrap()[0];
    assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
    assert_eq!(
        hook.object_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["component"],
        "taskmanager"
    );
    let ns_label = hook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(ns_label["sluice.dev/injection"], "enabled");
    // The coordinator's own namespace is not injected.
    let own_labels = ns.metadata.labels.clone().unwrap_or_default();
    assert!(!own_labels.contains_key("sluice.dev/injection"));

    // The network policy protects the coordinator's pods and lets the sidecars' namespaces in.
    let np = only(&found.network_policies, "network policy", |_| true);
    let np_spec = np.spec.as_ref().unwrap();
    for (k, v) in np_spec
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap()
    {
        assert_eq!(template_labels.get(k), Some(v));
    }
    let np_text = serde_json::to_string(np_spec).unwrap();
    assert!(np_text.contains("sluice.dev/injection"));

    // cert-manager: the serving certificate fills the Deployment's Secret, for the Service's
    // name, and the CA injection annotation names it.
    let serving = only(&found.certificates, "serving certificate", |c| {
        !c.spec.is_ca
    });
    assert_eq!(serving.spec.secret_name, secret_name);
    assert!(serving.spec.dns_names.contains(&svc_host), "{svc_host}");
    assert!(serving.metadata.namespace.as_deref() == Some(ns_name));
    let ca_cert = only(&found.certificates, "CA certificate", |c| c.spec.is_ca);
    let ca_issuer = only(&found.issuers, "CA issuer", |i| i.spec.ca.is_some());
    assert_eq!(
        ca_issuer.spec.ca.as_ref().unwrap().secret_name,
        ca_cert.spec.secret_name
    );
    assert_eq!(serving.spec.issuer_ref.name, ca_issuer.metadata.name);
    let self_signed = only(&found.issuers, "self-signed issuer", |i| {
        i.spec.self_signed.is_some()
    });
    assert_eq!(ca_cert.spec.issuer_ref.name, self_signed.metadata.name);
    for (_, i) in &found.issuers {
        assert_eq!(
            (i.api_version.as_str(), i.kind.as_str()),
            ("cert-manager.io/v1", "Issuer")
        );
    }
    let injection_patch = only(&found.webhooks, "CA injection patch", |w| {
        w.webhooks.is_none()
    });
    assert_eq!(name_of(&injection_patch.metadata), name_of(&mwc.metadata));
    assert_eq!(
        injection_patch.metadata.annotations.as_ref().unwrap()["cert-manager.io/inject-ca-from"],
        format!("{ns_name}/{}", serving.metadata.name)
    );

    // The script for clusters without cert-manager uses the same names.
    let script =
        std::fs::read_to_string(manifests_dir().join("../scripts/webhook-certs.sh")).unwrap();
    for (var, value) in [
        ("NAMESPACE", ns_name),
        ("SERVICE", name_of(&svc.metadata)),
        ("SECRET", secret_name.as_str()),
        ("WEBHOOK_CONFIG", name_of(&mwc.metadata)),
        ("CA_CONFIGMAP", ca_configmap.as_str()),
    ] {
        assert!(
            script.contains(&format!("\n{var}={value}\n")),
            "script {var} != {value}"
        );
    }
    // The script's certificate names the host the sidecars dial (and the API server calls).
    assert!(script.contains("\nHOST=\"$SERVICE.$NAMESPACE.svc\"\n"));
    assert!(script.contains("subjectAltName=DNS:$HOST,"));
    // It publishes the CA under the key the webhook mounts.
    assert!(script.contains(&format!("--from-file={CA_KEY}=")));
    // ... in the namespaces the webhook injects into.
    assert!(script.contains(&format!(
        "-l sluice.dev/injection={}",
        ns_label["sluice.dev/injection"]
    )));

    // Examples: one pipeline, two deployments, opted in where the webhook looks.
    let shop = only(&found.namespaces, "example namespace", |n| {
        name_of(&n.metadata) == "shop"
    });
    assert_eq!(
        shop.metadata.labels.as_ref().unwrap()["sluice.dev/injection"],
        "enabled"
    );
    assert_eq!(found.flink.len(), 2);
    let mut pipelines = BTreeSet::new();
    let mut deployments = BTreeMap::new();
    for (origin, f) in &found.flink {
        assert_eq!(f.api_version, "flink.apache.org/v1beta1");
        assert_eq!(f.kind, "FlinkDeployment");
        assert_eq!(f.metadata.namespace.as_deref(), Some("shop"), "{origin}");
        assert!(f.metadata.labels.is_empty() && f.metadata.annotations.is_empty());
        let tm = f.spec.task_manager.pod_template.as_ref().unwrap();
        let a = tm.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(a["sluice.dev/inject"], "true", "{origin}");
        pipelines.insert(a["sluice.dev/pipeline"].clone());
        deployments.insert(a["sluice.dev/deployment"].clone(), f.spec.job.parallelism);
        // Only TaskManagers opt in.
        assert!(f.spec.job_manager.pod_template.is_none(), "{origin}");
        assert!(!f.spec.image.is_empty() && !f.spec.service_account.is_empty());
        assert!(!f.spec.flink_version.is_empty() && !f.spec.job.jar_uri.is_empty());
        assert!(!f.spec.job.upgrade_mode.is_empty() && !f.spec.job.state.is_empty());
        let _ = (
            &f.spec.flink_configuration,
            &f.spec.job.entry_class,
            &f.spec.job.args,
        );
        let _ = (&f.spec.job_manager.resource, &f.spec.task_manager.resource);
    }
    assert_eq!(
        pipelines.len(),
        1,
        "blue and green must name the same pipeline"
    );
    assert_eq!(
        deployments.len(),
        2,
        "blue and green need different deployment ids"
    );
    assert_eq!(
        deployments.get("orders-v2"),
        Some(&3),
        "green runs with parallelism 3"
    );
    let _ = (
        &serving.spec.common_name,
        &serving.spec.duration,
        &serving.spec.renew_before,
    );
    let _ = (
        &serving.spec.private_key,
        &serving.spec.usages,
        &serving.spec.issuer_ref.kind,
    );
}

#[test]
fn a_typo_in_a_manifest_is_caught() {
    // The round trip check is what makes the test above worth something: prove it bites.
    let doc = documents(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  slector:\n    a: b\n",
        "typo",
    );
    let caught = std::panic::catch_unwind(|| typed::<Service>(&doc[0], "typo"));
    assert!(caught.is_err(), "an unknown field passed");
    let mut found = Found::default();
    let unknown = documents(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n",
        "unknown",
    );
    let caught = std::panic::catch_unwind(move || {
        classify(&mut found, &unknown[0], Path::new("x.yaml"), "unknown")
    });
    assert!(caught.is_err(), "an unknown kind passed");
}

/// The kustomizations build with the real kustomize in kubectl (no cluster needed), and what
/// they build parses like the files do. Skipped, with a note, where kubectl is not installed.
#[test]
fn the_kustomizations_build_with_kubectl() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl not found: skipping the kustomize build check");
        return;
    }
    for overlay in ["base", "cert-manager", "examples"] {
        let dir = manifests_dir().join(overlay);
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut found = Found::default();
        let docs = documents(&text, overlay);
        for (i, doc) in docs.iter().enumerate() {
            classify(&mut found, doc, &dir, &format!("kustomize {overlay}#{i}"));
        }
        if overlay == "cert-manager" {
            let (_, mwc) = &found.webhooks[0];
            let a = mwc.metadata.annotations.as_ref().unwrap();
            assert!(a.contains_key("cert-manager.io/inject-ca-from"));
            assert!(mwc.webhooks.is_some(), "the patch must merge, not replace");
            assert_eq!(found.certificates.len(), 2);
        }
        if overlay == "base" {
            assert_eq!(docs.len(), 9, "base renders every resource once");
        }
    }
}
