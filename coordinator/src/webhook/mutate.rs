//! The pure decision of the webhook: does a pod get the gate sidecar, under which pipeline and
//! deployment, and the JSON patch (RFC 6902) that injects it.
//!
//! What an opted-in Flink TaskManager pod gets (every addition is skipped if the pod already
//! has it, and a pod that carries [`ANNOTATION_INJECTED`] or a [`SIDECAR_NAME`] container is
//! left alone, so injecting twice is a no-op):
//!
//! - the gate sidecar as a Kubernetes *native sidecar* (an init container with
//!   `restartPolicy: Always`, Kubernetes >= 1.29): it starts before the TaskManager and is
//!   stopped only after it, so the records the job's sink handed over last are still decided
//!   and flushed to the real sink when the TaskManager stops;
//! - an `emptyDir` volume [`VOLUME_NAME`] mounted at [`SOCKET_DIR`] in the sidecar and in the
//!   Flink containers, holding the Unix socket and the sidecar's high-mark file (which must
//!   survive a restart of the sidecar container, and does: an `emptyDir` lives as long as the
//!   pod);
//! - the environment of the sidecar and of the Flink containers (the job's sink reads
//!   `SLUICE_SOCKET`, `SLUICE_PIPELINE`, `SLUICE_DEPLOYMENT`); a variable the user already set
//!   is kept;
//! - with [`InjectionConfig::coordinator_ca_configmap`] (gRPC over TLS to the coordinator): a
//!   `configMap` volume [`CA_VOLUME_NAME`] of that ConfigMap's `ca.crt`, mounted read-only at
//!   [`CA_DIR`] in the sidecar only, and `SLUICE_COORDINATOR_CA` pointing at it. The ConfigMap
//!   is not optional: a pod whose namespace lacks it does not start (visibly, in its events)
//!   rather than run a sidecar that cannot verify the coordinator;
//! - the annotation [`ANNOTATION_INJECTED`].
//!
//! The patch is computed from the typed pod (whose lists keep the API server's order) and only
//! ever *adds*: fields the typed model does not know are untouched in the real object.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use thiserror::Error;

/// Opt-in annotation: `"true"` asks for the sidecar.
pub const ANNOTATION_INJECT: &str = "sluice.dev/inject";
/// Set on an injected pod; its presence makes the webhook leave the pod alone.
pub const ANNOTATION_INJECTED: &str = "sluice.dev/injected";
/// Pipeline id, `namespace/name`; defaults to `<pod namespace>/<label app>`.
pub const ANNOTATION_PIPELINE: &str = "sluice.dev/pipeline";
/// Deployment id; defaults to the label `app` (the FlinkDeployment's name).
pub const ANNOTATION_DEPLOYMENT: &str = "sluice.dev/deployment";
/// Sink of this pod's sidecar; defaults to the coordinator's `--sidecar-sink`.
pub const ANNOTATION_SINK: &str = "sluice.dev/sink";
/// librdkafka options of this pod's sidecar, `name=value;name=value` (its
/// `SLUICE_KAFKA_OPTIONS`). Not for secrets: annotations are readable by anyone who can read
/// the pod, so names that look secret are refused.
pub const ANNOTATION_KAFKA_OPTIONS: &str = "sluice.dev/kafka-options";
/// Runtime worker threads of this pod's sidecar (its `SLUICE_WORKER_THREADS`), 1 to 64.
pub const ANNOTATION_WORKER_THREADS: &str = "sluice.dev/worker-threads";
/// A Secret in the pod's namespace whose key [`KAFKA_SECRET_KEY`] holds librdkafka options
/// (credentials), one `name=value` per line; mounted into the sidecar only, read by it as
/// `SLUICE_KAFKA_OPTIONS_FILE`.
pub const ANNOTATION_KAFKA_SECRET: &str = "sluice.dev/kafka-secret";
/// `"true"`: the sidecar serves the Kafka front on [`KAFKA_FRONT_ADDR`] and the job's
/// containers get `SLUICE_KAFKA_BOOTSTRAP` to point their stock Kafka producer at.
pub const ANNOTATION_KAFKA_FRONT: &str = "sluice.dev/kafka-front";
/// The real cluster behind the Kafka front (its `SLUICE_KAFKA_UPSTREAM`); defaults to the
/// `kafka:` sink's servers.
pub const ANNOTATION_KAFKA_UPSTREAM: &str = "sluice.dev/kafka-upstream";
/// With the Kafka front: the Flink REST endpoint the sidecar follows for an exact drain
/// (`SLUICE_FLINK_REST`), `http://HOST:PORT`; `none` keeps the derived (approximate)
/// watermark. Defaults to the Flink operator's REST Service of the FlinkDeployment (label
/// `app`): `http://<app>-rest.<namespace>:8081`.
pub const ANNOTATION_FLINK_REST: &str = "sluice.dev/flink-rest";
/// Where the Kafka front takes a record's event time (its `SLUICE_EVENT_TIME`).
pub const ANNOTATION_EVENT_TIME: &str = "sluice.dev/event-time";
/// The Kafka front's address inside the pod (the pod's loopback, shared by its containers).
pub const KAFKA_FRONT_ADDR: &str = "127.0.0.1:9092";
/// The key of the Kafka Secret that is mounted.
pub const KAFKA_SECRET_KEY: &str = "kafka.properties";
/// Name of the injected volume of the Kafka Secret.
pub const KAFKA_SECRET_VOLUME: &str = "sluice-kafka";
/// Where the Kafka Secret is mounted, in the sidecar only.
pub const KAFKA_SECRET_DIR: &str = "/etc/sluice/kafka";
/// Option names that look like secrets, refused in [`ANNOTATION_KAFKA_OPTIONS`].
const SECRET_MARKERS: &[&str] = &["password", "secret", "token", "jaas", "key", "private"];
/// Label the Flink Kubernetes Operator sets to the FlinkDeployment's name.
pub const LABEL_APP: &str = "app";
/// Label the Flink Kubernetes Operator sets to `jobmanager` or `taskmanager`.
pub const LABEL_COMPONENT: &str = "component";
/// The value of [`LABEL_COMPONENT`] on the pods that get a sidecar.
pub const TASKMANAGER: &str = "taskmanager";
/// Name of the main container of a pod created by Flink's native Kubernetes integration.
pub const FLINK_MAIN_CONTAINER: &str = "flink-main-container";
/// Name of the injected sidecar container.
pub const SIDECAR_NAME: &str = "sluice-gate";
/// Name of the injected volume holding the socket.
pub const VOLUME_NAME: &str = "sluice-socket";
/// Where the volume is mounted, in the sidecar and the Flink containers.
pub const SOCKET_DIR: &str = "/var/run/sluice";
/// The Unix socket the job's sink connects to.
pub const SOCKET_PATH: &str = "/var/run/sluice/gate.sock";
/// The sidecar's persisted high-mark ceiling (on the pod's `emptyDir`, see the sidecar).
pub const HIGH_MARK_PATH: &str = "/var/run/sluice/gate.highmark";
/// Port of the sidecar's `/livez` and `/readyz` (bound on every interface, for the kubelet).
pub const HEALTH_PORT: i32 = 9901;
/// Name of [`HEALTH_PORT`] in the sidecar's ports (probes refer to it by name).
pub const HEALTH_PORT_NAME: &str = "sluice-health";
/// User (and group) the sidecar runs as: the conventional unprivileged "nonroot" id.
pub const SIDECAR_USER: i64 = 65532;

/// Name of the injected volume holding the coordinator's CA (with a CA ConfigMap only).
pub const CA_VOLUME_NAME: &str = "sluice-coordinator-ca";
/// Where the CA volume is mounted, in the sidecar only.
pub const CA_DIR: &str = "/etc/sluice/coordinator-ca";
/// The key of the CA ConfigMap that is mounted (trust-manager's and `kubectl create configmap
/// --from-file=ca.crt`'s default).
pub const CA_KEY: &str = "ca.crt";
/// The CA file the sidecar trusts (`SLUICE_COORDINATOR_CA`).
pub const CA_PATH: &str = "/etc/sluice/coordinator-ca/ca.crt";

/// What the webhook injects (from the coordinator's `--sidecar-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionConfig {
    /// Container image of the gate sidecar.
    pub image: String,
    /// CPU request (a Kubernetes quantity).
    pub cpu_request: String,
    /// Memory request (a Kubernetes quantity).
    pub memory_request: String,
    /// CPU limit, if any (a Kubernetes quantity).
    pub cpu_limit: Option<String>,
    /// Memory limit (a Kubernetes quantity).
    pub memory_limit: String,
    /// Default sink of the sidecar (`SLUICE_SINK`).
    pub sink: String,
    /// gRPC URL of the coordinator, as the sidecar reaches it (`SLUICE_COORDINATOR`).
    pub coordinator: String,
    /// ConfigMap (in the pod's namespace) whose `ca.crt` the sidecar trusts for TLS to the
    /// coordinator; `None`: no CA is mounted (plaintext, or the sidecar's system roots).
    pub coordinator_ca_configmap: Option<String>,
}

/// A pod that gets the sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// Pipeline id given to the sidecar and the job.
    pub pipeline: String,
    /// Deployment id given to the sidecar and the job.
    pub deployment: String,
    /// The additions, as a JSON patch against the pod the API server sent.
    pub patch: Patch,
    /// Things the pod's author should know (e.g. an environment variable that was kept).
    pub warnings: Vec<String>,
}

/// Why a pod is admitted unchanged. One variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Skip {
    /// The pod does not carry the opt-in annotation.
    #[error("not opted in (no annotation {ANNOTATION_INJECT}: \"true\")")]
    NotOptedIn,
    /// The opt-in annotation has a value other than `"true"` or `"false"`.
    #[error("annotation {ANNOTATION_INJECT} is {0:?}; only \"true\" opts in")]
    BadOptIn(String),
    /// The pod is not a Flink TaskManager (only TaskManagers run sink subtasks).
    #[error("not a Flink TaskManager (label {LABEL_COMPONENT} is {0:?})")]
    NotTaskManager(Option<String>),
    /// The pod already has the sidecar (or the annotation saying so).
    #[error("already injected")]
    AlreadyInjected,
    /// The pod says it is injected but has no sidecar container (e.g. copied annotations).
    #[error(
        "annotation {ANNOTATION_INJECTED} is set but there is no {SIDECAR_NAME} container: \
         remove the annotation to get the gate"
    )]
    MarkedWithoutSidecar,
    /// Neither a pipeline annotation nor a namespace and an `app` label.
    #[error(
        "no pipeline id: set annotation {ANNOTATION_PIPELINE}: namespace/name (or label \
         {LABEL_APP})"
    )]
    NoPipeline,
    /// Neither a deployment annotation nor an `app` label.
    #[error("no deployment id: set annotation {ANNOTATION_DEPLOYMENT} (or label {LABEL_APP})")]
    NoDeployment,
    /// The pipeline id is not `namespace/name`.
    #[error("pipeline id {0:?} is not namespace/name")]
    BadPipeline(String),
    /// The deployment id is empty, too long, or has a `/` or whitespace.
    #[error("deployment id {0:?} is not a simple name")]
    BadDeployment(String),
    /// The sink annotation is empty or has whitespace.
    #[error("annotation {ANNOTATION_SINK} {0:?} is not a sink")]
    BadSink(String),
    /// An item of the Kafka options annotation is not `name=value`.
    #[error("annotation {ANNOTATION_KAFKA_OPTIONS}: {0:?} is not name=value")]
    BadKafkaOption(String),
    /// The Kafka options annotation names an option that looks like a secret.
    #[error(
        "annotation {ANNOTATION_KAFKA_OPTIONS}: {0:?} looks like a secret; annotations are \
         readable by anyone who can read the pod, so pass it another way"
    )]
    SecretInAnnotation(String),
    /// The Kafka Secret annotation is not a Secret name.
    #[error("annotation {ANNOTATION_KAFKA_SECRET} {0:?} is not a Secret name")]
    BadKafkaSecret(String),
    /// The Kafka front annotation is neither `"true"` nor `"false"`.
    #[error("annotation {ANNOTATION_KAFKA_FRONT} is {0:?}; \"true\" turns the Kafka front on")]
    BadKafkaFront(String),
    /// The Kafka front has no cluster to forward to.
    #[error(
        "annotation {ANNOTATION_KAFKA_FRONT} needs the real cluster: set \
         {ANNOTATION_KAFKA_UPSTREAM}: HOST:PORT, or a kafka: sink"
    )]
    KafkaFrontWithoutUpstream,
    /// An upstream or event-time annotation with whitespace or nothing in it.
    #[error("annotation {0} {1:?} is not a value")]
    BadKafkaFrontValue(&'static str, String),
    /// The worker threads annotation is not a number from 1 to 64.
    #[error("annotation {ANNOTATION_WORKER_THREADS} {0:?} is not a number from 1 to 64")]
    BadWorkerThreads(String),
    /// The pod has no spec or no container to give the socket to.
    #[error("the pod has no containers")]
    NoContainers,
    /// Something the webhook would add already exists with another meaning.
    #[error("{0}: not injecting rather than overwriting it")]
    Conflict(String),
}

impl Skip {
    /// The warning returned to the pod's creator, for a pod that asked for the sidecar but
    /// does not get it. `None` for a pod that did not ask, or already has it.
    pub fn warning(&self) -> Option<String> {
        match self {
            Skip::NotOptedIn | Skip::NotTaskManager(_) | Skip::AlreadyInjected => None,
            _ => Some(format!("sluice: gate sidecar not injected: {self}")),
        }
    }
}

/// Decides whether `pod` gets the gate sidecar and returns the patch that injects it.
///
/// `namespace` is the admission request's namespace: on CREATE the API server often sends a
/// pod without `metadata.namespace` (and without a name, when it has `generateName`).
pub fn mutate(
    pod: &Pod,
    namespace: Option<&str>,
    config: &InjectionConfig,
) -> Result<Injection, Skip> {
    let meta = &pod.metadata;
    let annotations = meta.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let label = |key: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    };

    match annotation(ANNOTATION_INJECT) {
        Some("true") => {}
        None | Some("false") => return Err(Skip::NotOptedIn),
        Some(other) => return Err(Skip::BadOptIn(other.to_owned())),
    }
    if label(LABEL_COMPONENT) != Some(TASKMANAGER) {
        return Err(Skip::NotTaskManager(
            label(LABEL_COMPONENT).map(str::to_owned),
        ));
    }
    let spec = pod.spec.as_ref().ok_or(Skip::NoContainers)?;
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let has_sidecar = spec
        .containers
        .iter()
        .chain(init)
        .any(|c| c.name == SIDECAR_NAME);
    if has_sidecar {
        return Err(Skip::AlreadyInjected);
    }
    if annotation(ANNOTATION_INJECTED).is_some() {
        return Err(Skip::MarkedWithoutSidecar);
    }

    let namespace = namespace
        .filter(|n| !n.is_empty())
        .or(meta.namespace.as_deref());
    let app = label(LABEL_APP).filter(|a| !a.is_empty());
    let pipeline = match (annotation(ANNOTATION_PIPELINE), namespace, app) {
        (Some(p), _, _) => p.to_owned(),
        (None, Some(ns), Some(app)) => format!("{ns}/{app}"),
        (None, _, _) => return Err(Skip::NoPipeline),
    };
    if !is_pipeline_id(&pipeline) {
        return Err(Skip::BadPipeline(pipeline));
    }
    let deployment = annotation(ANNOTATION_DEPLOYMENT)
        .or(app)
        .ok_or(Skip::NoDeployment)?
        .to_owned();
    if !is_simple_name(&deployment) {
        return Err(Skip::BadDeployment(deployment));
    }
    let sink = annotation(ANNOTATION_SINK)
        .unwrap_or(&config.sink)
        .to_owned();
    if sink.is_empty() || sink.chars().any(char::is_whitespace) {
        return Err(Skip::BadSink(sink));
    }
    let kafka_options = annotation(ANNOTATION_KAFKA_OPTIONS)
        .map(kafka_options)
        .transpose()?;
    let worker_threads = annotation(ANNOTATION_WORKER_THREADS)
        .map(|v| match v.trim().parse::<u8>() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(Skip::BadWorkerThreads(v.to_owned())),
        })
        .transpose()?;
    let kafka_secret = annotation(ANNOTATION_KAFKA_SECRET)
        .map(|name| {
            if crate::config::is_object_name(name) {
                Ok(name.to_owned())
            } else {
                Err(Skip::BadKafkaSecret(name.to_owned()))
            }
        })
        .transpose()?;
    let kafka_front = match annotation(ANNOTATION_KAFKA_FRONT) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(Skip::BadKafkaFront(other.to_owned())),
    };
    let value = |key: &'static str| {
        annotation(key)
            .map(|v| {
                if v.is_empty() || v.chars().any(char::is_whitespace) {
                    Err(Skip::BadKafkaFrontValue(key, v.to_owned()))
                } else {
                    Ok(v)
                }
            })
            .transpose()
    };
    let kafka_upstream = value(ANNOTATION_KAFKA_UPSTREAM)?;
    let event_time = value(ANNOTATION_EVENT_TIME)?;
    let flink_rest = match value(ANNOTATION_FLINK_REST)? {
        Some("none") => None,
        Some(url) => Some(url.to_owned()),
        None => match (app, namespace) {
            (Some(app), Some(ns)) => Some(format!("http://{app}-rest.{ns}:8081")),
            _ => None,
        },
    };
    if kafka_front && kafka_upstream.is_none() && !sink.starts_with("kafka:") {
        return Err(Skip::KafkaFrontWithoutUpstream);
    }
    let pod_settings = PodSettings {
        pipeline: &pipeline,
        deployment: &deployment,
        sink: &sink,
        kafka_options: kafka_options.as_deref(),
        worker_threads,
        kafka_secret: kafka_secret.is_some(),
        kafka_front: kafka_front.then_some(KafkaFront {
            upstream: kafka_upstream,
            event_time,
            flink_rest: flink_rest.as_deref(),
        }),
    };

    // The Flink containers: the operator's main container, else every regular container.
    let targets: Vec<usize> = match spec
        .containers
        .iter()
        .position(|c| c.name == FLINK_MAIN_CONTAINER)
    {
        Some(i) => vec![i],
        None => (0..spec.containers.len()).collect(),
    };
    if targets.is_empty() {
        return Err(Skip::NoContainers);
    }

    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let ours = [
        Some(VOLUME_NAME),
        config
            .coordinator_ca_configmap
            .as_ref()
            .map(|_| CA_VOLUME_NAME),
        kafka_secret.as_ref().map(|_| KAFKA_SECRET_VOLUME),
    ];
    for name in ours.into_iter().flatten() {
        if volumes.iter().any(|v| v.name == name) {
            return Err(Skip::Conflict(format!(
                "the pod already has a volume named {name}"
            )));
        }
    }
    for &i in &targets {
        let c = &spec.containers[i];
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        if mounts.iter().any(|m| m.mount_path == SOCKET_DIR) {
            return Err(Skip::Conflict(format!(
                "container {} already mounts something at {SOCKET_DIR}",
                c.name
            )));
        }
    }

    let mut ops = Patch(Vec::new());
    let mut warnings = Vec::new();

    // The marker first: should the API server apply only part of a patch (it does not), a
    // second pass would still leave the pod alone rather than double anything.
    append_to_map(
        &mut ops,
        &["metadata", "annotations"],
        annotations.is_some(),
        ANNOTATION_INJECTED,
        "true",
    );
    append_to_list(
        &mut ops,
        &["spec", "volumes"],
        spec.volumes.is_some(),
        &socket_volume(),
    );
    if let Some(configmap) = &config.coordinator_ca_configmap {
        // The list exists now: the socket volume was just added.
        append_to_list(&mut ops, &["spec", "volumes"], true, &ca_volume(configmap));
    }
    if let Some(secret) = &kafka_secret {
        append_to_list(&mut ops, &["spec", "volumes"], true, &kafka_volume(secret));
    }
    let mut identity = vec![
        ("SLUICE_SOCKET", SOCKET_PATH),
        ("SLUICE_PIPELINE", pipeline.as_str()),
        ("SLUICE_DEPLOYMENT", deployment.as_str()),
    ];
    if kafka_front {
        identity.push(("SLUICE_KAFKA_BOOTSTRAP", KAFKA_FRONT_ADDR));
    }
    for &i in &targets {
        let c = &spec.containers[i];
        let base = ["spec", "containers", &i.to_string()].map(str::to_owned);
        let at = |field: &str| {
            let mut p = base.to_vec();
            p.push(field.to_owned());
            p
        };
        append_to_list(
            &mut ops,
            &at("volumeMounts"),
            c.volume_mounts.is_some(),
            &socket_mount(),
        );
        let env = c.env.as_deref().unwrap_or_default();
        let mut env_exists = c.env.is_some();
        for &(name, value) in &identity {
            if let Some(set) = env.iter().find(|e| e.name == name) {
                if set.value.as_deref() != Some(value) {
                    warnings.push(format!(
                        "sluice: container {} sets {name} itself; kept (the gate expects {value})",
                        c.name
                    ));
                }
                continue;
            }
            append_to_list(&mut ops, &at("env"), env_exists, &env_var(name, value));
            env_exists = true;
        }
    }
    append_to_list(
        &mut ops,
        &["spec", "initContainers"],
        spec.init_containers.is_some(),
        &sidecar(config, &pod_settings),
    );

    Ok(Injection {
        pipeline,
        deployment,
        patch: ops,
        warnings,
    })
}

/// `namespace/name`, both parts non-empty simple names.
fn is_pipeline_id(s: &str) -> bool {
    s.split_once('/')
        .is_some_and(|(ns, name)| is_simple_name(ns) && is_simple_name(name))
}

/// Non-empty, at most 253 bytes (a Kubernetes name), no `/`, no whitespace or control
/// character (the ids end up in environment variables, logs and the state file).
fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

fn pointer<S: AsRef<str>>(tokens: &[S]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().map(AsRef::as_ref))
}

fn add(ops: &mut Patch, tokens: &[impl AsRef<str>], value: serde_json::Value) {
    ops.0.push(PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    }));
}

fn to_value(v: &impl Serialize) -> serde_json::Value {
    // Serializing the k8s-openapi types into a `Value` cannot fail (string keys only).
    serde_json::to_value(v).expect("k8s-openapi types serialize to JSON")
}

/// Appends `item` to the list at `path`, creating the list if the pod has none.
fn append_to_list(ops: &mut Patch, path: &[impl AsRef<str>], exists: bool, item: &impl Serialize) {
    if exists {
        let mut p: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
        p.push("-");
        add(ops, &p, to_value(item));
    } else {
        add(ops, path, serde_json::Value::Array(vec![to_value(item)]));
    }
}

/// Sets `key` in the map at `path`, creating the map if the pod has none.
fn append_to_map(ops: &mut Patch, path: &[&str], exists: bool, key: &str, value: &str) {
    if exists {
        let mut p = path.to_vec();
        p.push(key);
        add(ops, &p, value.into());
    } else {
        add(ops, path, serde_json::json!({ key: value }));
    }
}

fn socket_volume() -> Volume {
    Volume {
        name: VOLUME_NAME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn ca_volume(configmap: &str) -> Volume {
    Volume {
        name: CA_VOLUME_NAME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap.into(),
            // Only the CA, under a fixed name; a missing key fails the mount like a missing
            // ConfigMap does.
            items: Some(only_key(CA_KEY)),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn kafka_volume(secret: &str) -> Volume {
    Volume {
        name: KAFKA_SECRET_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            // Only the options file; a missing Secret or key fails the mount (the pod waits)
            // rather than starting a sidecar without its credentials.
            items: Some(only_key(KAFKA_SECRET_KEY)),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The items of a ConfigMap or Secret volume that holds only `key`, under its own name.
fn only_key(key: &str) -> Vec<KeyToPath> {
    vec![KeyToPath {
        key: key.into(),
        path: key.into(),
        ..Default::default()
    }]
}

fn ca_mount() -> VolumeMount {
    // No subPath: the kubelet then updates the file when the ConfigMap changes, and the
    // sidecar reads it again at every connection, so a rotated CA is picked up without a
    // restart.
    read_only_mount(CA_VOLUME_NAME, CA_DIR)
}

fn read_only_mount(volume: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn socket_mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_NAME.into(),
        mount_path: SOCKET_DIR.into(),
        ..Default::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HEALTH_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// Checks the Kafka options annotation item by item and returns it normalised
/// (`name=value;...`, blanks dropped). The sidecar's librdkafka checks the names and values.
fn kafka_options(value: &str) -> Result<String, Skip> {
    let mut items = Vec::new();
    for item in value.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, v)) = item.split_once('=') else {
            return Err(Skip::BadKafkaOption(item.to_owned()));
        };
        let name = name.trim();
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(Skip::BadKafkaOption(item.to_owned()));
        }
        let lower = name.to_ascii_lowercase();
        if SECRET_MARKERS.iter().any(|m| lower.contains(m)) {
            return Err(Skip::SecretInAnnotation(name.to_owned()));
        }
        items.push(format!("{name}={}", v.trim()));
    }
    Ok(items.join(";"))
}

/// What the pod's identity and annotations give its sidecar.
#[derive(Debug, Clone, Copy)]
pub struct PodSettings<'a> {
    /// Pipeline id, `namespace/name`.
    pub pipeline: &'a str,
    /// Deployment id.
    pub deployment: &'a str,
    /// The sidecar's `--sink`.
    pub sink: &'a str,
    /// librdkafka options, `name=value;...` ([`ANNOTATION_KAFKA_OPTIONS`]).
    pub kafka_options: Option<&'a str>,
    /// Runtime worker threads ([`ANNOTATION_WORKER_THREADS`]).
    pub worker_threads: Option<u8>,
    /// Whether the Kafka Secret volume is mounted ([`ANNOTATION_KAFKA_SECRET`]).
    pub kafka_secret: bool,
    /// The Kafka front, when on ([`ANNOTATION_KAFKA_FRONT`]).
    pub kafka_front: Option<KafkaFront<'a>>,
}

/// The Kafka front of a pod's sidecar.
#[derive(Debug, Clone, Copy)]
pub struct KafkaFront<'a> {
    /// [`ANNOTATION_KAFKA_UPSTREAM`], if set.
    pub upstream: Option<&'a str>,
    /// [`ANNOTATION_EVENT_TIME`], if set.
    pub event_time: Option<&'a str>,
    /// The Flink REST endpoint for the exact drain ([`ANNOTATION_FLINK_REST`]), if any.
    pub flink_rest: Option<&'a str>,
}

/// The gate sidecar container.
pub fn sidecar(config: &InjectionConfig, pod: &PodSettings<'_>) -> Container {
    let PodSettings {
        pipeline,
        deployment,
        sink,
        ..
    } = *pod;
    let quantities = |pairs: &[(&str, Option<&String>)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), Quantity(v.clone()))))
            .collect()
    };
    let mut env = vec![
        env_var("SLUICE_COORDINATOR", &config.coordinator),
        env_var("SLUICE_PIPELINE", pipeline),
        env_var("SLUICE_DEPLOYMENT", deployment),
        env_var("SLUICE_SOCKET", SOCKET_PATH),
        env_var("SLUICE_HIGH_MARK_FILE", HIGH_MARK_PATH),
        // The job runs under another uid than the sidecar; the socket sits in the pod's private
        // emptyDir, so opening it to every uid opens it only to this pod's containers.
        env_var("SLUICE_SOCKET_MODE", "0666"),
    ];
    // The pod's final name (on CREATE the pod often has only a generateName): a stable gate
    // id for the life of the pod, also across restarts of the sidecar container.
    env.push(EnvVar {
        name: "SLUICE_GATE_ID".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    env.push(env_var("SLUICE_SINK", sink));
    if let Some(options) = pod.kafka_options.filter(|o| !o.is_empty()) {
        env.push(env_var("SLUICE_KAFKA_OPTIONS", options));
    }
    if let Some(n) = pod.worker_threads {
        env.push(env_var("SLUICE_WORKER_THREADS", &n.to_string()));
    }
    if let Some(front) = pod.kafka_front {
        env.push(env_var("SLUICE_KAFKA_LISTEN", KAFKA_FRONT_ADDR));
        if let Some(u) = front.upstream {
            env.push(env_var("SLUICE_KAFKA_UPSTREAM", u));
        }
        if let Some(t) = front.event_time {
            env.push(env_var("SLUICE_EVENT_TIME", t));
        }
        if let Some(r) = front.flink_rest {
            env.push(env_var("SLUICE_FLINK_REST", r));
        }
    }
    env.push(env_var(
        "SLUICE_HEALTH_LISTEN",
        &format!("0.0.0.0:{HEALTH_PORT}"),
    ));
    let mut mounts = vec![socket_mount()];
    if config.coordinator_ca_configmap.is_some() {
        env.push(env_var("SLUICE_COORDINATOR_CA", CA_PATH));
        mounts.push(ca_mount());
    }
    if pod.kafka_secret {
        env.push(env_var(
            "SLUICE_KAFKA_OPTIONS_FILE",
            &format!("{KAFKA_SECRET_DIR}/{KAFKA_SECRET_KEY}"),
        ));
        mounts.push(read_only_mount(KAFKA_SECRET_VOLUME, KAFKA_SECRET_DIR));
    }
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(config.image.clone()),
        // Native sidecar: an init container that keeps running (see the module doc).
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(HEALTH_PORT_NAME.into()),
            container_port: HEALTH_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", Some(&config.cpu_request)),
                ("memory", Some(&config.memory_request)),
            ])),
            limits: Some(quantities(&[
                ("cpu", config.cpu_limit.as_ref()),
                ("memory", Some(&config.memory_limit)),
            ])),
            ..Default::default()
        }),
        // Startup waits only for the process (the TaskManager starts once it is up; records
        // are held until the coordinator answers: the gate fails closed). Readiness also needs
        // the socket bound and an assignment from the coordinator.
        startup_probe: Some(http_probe("/livez", 1, 30)),
        liveness_probe: Some(http_probe("/livez", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_USER),
            run_as_group: Some(SIDECAR_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::{Value, json};

    fn config() -> InjectionConfig {
        InjectionConfig {
            image: "registry.example/sluice/gate-sidecar:0.1.0".into(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: None,
            memory_limit: "256Mi".into(),
            sink: "stdout".into(),
            coordinator: "http://sluice-coordinator.sluice.svc:7070".into(),
            coordinator_ca_configmap: None,
        }
    }

    /// As the manifests configure it: gRPC over TLS, the CA from a ConfigMap.
    fn tls_config() -> InjectionConfig {
        InjectionConfig {
            coordinator: "https://sluice-coordinator.sluice.svc:7070".into(),
            coordinator_ca_configmap: Some("sluice-ca".into()),
            ..config()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        )
    }

    /// A TaskManager pod as the Flink operator makes it, opted in.
    fn tm(annotations: &[(&str, &str)]) -> Pod {
        let mut all = vec![(ANNOTATION_INJECT, "true")];
        all.extend_from_slice(annotations);
        Pod {
            metadata: ObjectMeta {
                generate_name: Some("orders-v1-taskmanager-1-".into()),
                labels: map(&[
                    ("app", "orders-v1"),
                    ("component", "taskmanager"),
                    ("type", "flink-native-kubernetes"),
                ]),
                annotations: map(&all),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: FLINK_MAIN_CONTAINER.into(),
                    image: Some("flink:2.1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn apply(pod: &Pod, inj: &Injection) -> Pod {
        let mut doc = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut doc, &inj.patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn env_of(c: &Container) -> BTreeMap<String, Value> {
        c.env
            .iter()
            .flatten()
            .map(|e| {
                let v = match (&e.value, &e.value_from) {
                    (Some(v), _) => json!(v),
                    (None, Some(from)) => serde_json::to_value(from).unwrap(),
                    (None, None) => Value::Null,
                };
                (e.name.clone(), v)
            })
            .collect()
    }

    #[test]
    fn the_kafka_front_annotation_turns_the_front_on_and_gives_the_job_its_address() {
        let pod = tm(&[
            (ANNOTATION_KAFKA_FRONT, "true"),
            (ANNOTATION_KAFKA_UPSTREAM, "kafka.prod:9092"),
            (ANNOTATION_EVENT_TIME, "json:/event_time"),
        ]);
        let out = apply(&pod, &mutate(&pod, Some("shop"), &config()).unwrap());
        let spec = out.spec.as_ref().unwrap();
        let side = env_of(&spec.init_containers.as_ref().unwrap()[0]);
        assert_eq!(side["SLUICE_KAFKA_LISTEN"], KAFKA_FRONT_ADDR);
        assert_eq!(side["SLUICE_KAFKA_UPSTREAM"], "kafka.prod:9092");
        assert_eq!(side["SLUICE_EVENT_TIME"], "json:/event_time");
        // The operator's REST Service of the FlinkDeployment (label app), for the exact drain.
        assert_eq!(side["SLUICE_FLINK_REST"], "http://orders-v1-rest.shop:8081");
        let job = env_of(&spec.containers[0]);
        assert_eq!(job["SLUICE_KAFKA_BOOTSTRAP"], KAFKA_FRONT_ADDR);
        // An explicit REST address wins; `none` keeps the derived watermark.
        for (value, expected) in [
            ("http://jm.shop:9000", Some("http://jm.shop:9000")),
            ("none", None),
        ] {
            let pod = tm(&[
                (ANNOTATION_KAFKA_FRONT, "true"),
                (ANNOTATION_KAFKA_UPSTREAM, "kafka.prod:9092"),
                (ANNOTATION_FLINK_REST, value),
            ]);
            let out = apply(&pod, &mutate(&pod, Some("shop"), &config()).unwrap());
            let spec = out.spec.as_ref().unwrap();
            let side = env_of(&spec.init_containers.as_ref().unwrap()[0]);
            assert_eq!(
                side.get("SLUICE_FLINK_REST").and_then(|v| v.as_str()),
                expected
            );
        }
        // Without the annotation: no front, nothing for the job.
        let plain = apply(
            &tm(&[]),
            &mutate(&tm(&[]), Some("shop"), &config()).unwrap(),
        );
        let spec = plain.spec.as_ref().unwrap();
        assert!(!env_of(&spec.containers[0]).contains_key("SLUICE_KAFKA_BOOTSTRAP"));
        assert!(
            !env_of(&spec.init_containers.as_ref().unwrap()[0]).contains_key("SLUICE_KAFKA_LISTEN")
        );
        // No cluster to forward to (the sink is stdout), or a bad value: left alone, saying why.
        assert_eq!(
            mutate(
                &tm(&[(ANNOTATION_KAFKA_FRONT, "true")]),
                Some("shop"),
                &config()
            )
            .unwrap_err(),
            Skip::KafkaFrontWithoutUpstream
        );
        assert_eq!(
            mutate(
                &tm(&[(ANNOTATION_KAFKA_FRONT, "yes")]),
                Some("shop"),
                &config()
            )
            .unwrap_err(),
            Skip::BadKafkaFront("yes".into())
        );
        let with_sink = tm(&[
            (ANNOTATION_KAFKA_FRONT, "true"),
            (ANNOTATION_SINK, "kafka:kafka.prod:9092"),
        ]);
        assert!(mutate(&with_sink, Some("shop"), &config()).is_ok());
    }

    #[test]
    fn an_opted_in_taskmanager_gets_sidecar_volume_mounts_env_and_marker() {
        let pod = tm(&[]);
        let inj = mutate(&pod, Some("shop"), &config()).unwrap();
        assert_eq!(inj.pipeline, "shop/orders-v1");
        assert_eq!(inj.deployment, "orders-v1");
        assert!(inj.warnings.is_empty());
        let out = apply(&pod, &inj);
        let spec = out.spec.as_ref().unwrap();
        assert_eq!(
            out.metadata.annotations.as_ref().unwrap()[ANNOTATION_INJECTED],
            "true"
        );
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        let side = &init[0];
        assert_eq!(side.name, SIDECAR_NAME);
        assert_eq!(side.restart_policy.as_deref(), Some("Always"));
        let env = env_of(side);
        assert_eq!(env["SLUICE_PIPELINE"], "shop/orders-v1");
        assert_eq!(env["SLUICE_DEPLOYMENT"], "orders-v1");
        assert_eq!(env["SLUICE_SOCKET"], SOCKET_PATH);
        assert_eq!(env["SLUICE_HIGH_MARK_FILE"], HIGH_MARK_PATH);
        assert_eq!(env["SLUICE_SOCKET_MODE"], "0666");
        assert_eq!(env["SLUICE_SINK"], "stdout");
        assert_eq!(env["SLUICE_HEALTH_LISTEN"], "0.0.0.0:9901");
        assert_eq!(
            env["SLUICE_COORDINATOR"],
            "http://sluice-coordinator.sluice.svc:7070"
        );
        assert_eq!(
            env["SLUICE_GATE_ID"],
            json!({"fieldRef": {"fieldPath": "metadata.name"}})
        );
        let sc = side.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(SIDECAR_USER));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        for probe in [&side.readiness_probe, &side.liveness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.port, IntOrString::String(HEALTH_PORT_NAME.into()));
        }
        assert_eq!(
            side.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, VOLUME_NAME);
        assert!(volumes[0].empty_dir.is_some());
        let main = &spec.containers[0];
        assert_eq!(
            main.volume_mounts.as_ref().unwrap()[0].mount_path,
            SOCKET_DIR
        );
        let env = env_of(main);
        assert_eq!(env.len(), 3);
        assert_eq!(env["SLUICE_SOCKET"], SOCKET_PATH);
        assert_eq!(env["SLUICE_PIPELINE"], "shop/orders-v1");
        assert_eq!(env["SLUICE_DEPLOYMENT"], "orders-v1");
    }

    #[test]
    fn without_a_ca_configmap_no_ca_is_mounted() {
        let pod = tm(&[]);
        let out = apply(&pod, &mutate(&pod, Some("shop"), &config()).unwrap());
        let spec = out.spec.unwrap();
        assert_eq!(spec.volumes.unwrap().len(), 1);
        let side = &spec.init_containers.unwrap()[0];
        assert!(!env_of(side).contains_key("SLUICE_COORDINATOR_CA"));
        assert_eq!(side.volume_mounts.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_ca_configmap_is_mounted_read_only_into_the_sidecar_only() {
        let pod = tm(&[]);
        let inj = mutate(&pod, Some("shop"), &tls_config()).unwrap();
        let out = apply(&pod, &inj);
        let spec = out.spec.as_ref().unwrap();
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[1].name, CA_VOLUME_NAME);
        let cm = volumes[1].config_map.as_ref().unwrap();
        assert_eq!(cm.name, "sluice-ca");
        assert_eq!(cm.optional, Some(false));
        let items = cm.items.as_ref().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            (CA_KEY, CA_KEY)
        );
        let side = &spec.init_containers.as_ref().unwrap()[0];
        let env = env_of(side);
        assert_eq!(env["SLUICE_COORDINATOR_CA"], CA_PATH);
        assert_eq!(
            env["SLUICE_COORDINATOR"],
            "https://sluice-coordinator.sluice.svc:7070"
        );
        let mount = side
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == CA_VOLUME_NAME)
            .unwrap();
        assert_eq!(mount.mount_path, CA_DIR);
        assert_eq!(mount.read_only, Some(true));
        assert!(mount.sub_path.is_none(), "a subPath mount is never updated");
        assert!(CA_PATH.starts_with(CA_DIR) && CA_PATH.ends_with(CA_KEY));
        // The Flink container gets the socket, not the CA.
        let main = &spec.containers[0];
        assert_eq!(main.volume_mounts.as_ref().unwrap().len(), 1);
        assert!(!env_of(main).contains_key("SLUICE_COORDINATOR_CA"));
        // Idempotent with the CA too.
        assert_eq!(
            mutate(&out, Some("shop"), &tls_config()),
            Err(Skip::AlreadyInjected)
        );
        // A pod with a volume of that name is not overwritten.
        let mut pod = tm(&[]);
        pod.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: CA_VOLUME_NAME.into(),
            ..Default::default()
        }]);
        assert!(matches!(
            mutate(&pod, Some("ns"), &tls_config()),
            Err(Skip::Conflict(m)) if m.contains(CA_VOLUME_NAME)
        ));
        // ... but without a CA ConfigMap that name is not ours.
        assert!(mutate(&pod, Some("ns"), &config()).is_ok());
    }

    #[test]
    fn injecting_the_output_again_is_a_no_op() {
        let pod = tm(&[]);
        let once = apply(&pod, &mutate(&pod, Some("shop"), &config()).unwrap());
        assert_eq!(
            mutate(&once, Some("shop"), &config()),
            Err(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn annotations_override_the_identity_and_sink() {
        let pod = tm(&[
            (ANNOTATION_PIPELINE, "payments/orders"),
            (ANNOTATION_DEPLOYMENT, "orders-v41"),
            (ANNOTATION_SINK, "file:/var/run/sluice/out.jsonl"),
        ]);
        let inj = mutate(&pod, None, &config()).unwrap();
        assert_eq!(inj.pipeline, "payments/orders");
        assert_eq!(inj.deployment, "orders-v41");
        let out = apply(&pod, &inj);
        let side = &out.spec.unwrap().init_containers.unwrap()[0];
        assert_eq!(
            env_of(side)["SLUICE_SINK"],
            "file:/var/run/sluice/out.jsonl"
        );
    }

    fn settings() -> PodSettings<'static> {
        PodSettings {
            pipeline: "a/b",
            deployment: "d",
            sink: "stdout",
            kafka_options: None,
            worker_threads: None,
            kafka_secret: false,
            kafka_front: None,
        }
    }

    #[test]
    fn a_kafka_secret_is_mounted_read_only_into_the_sidecar_only() {
        let pod = tm(&[(ANNOTATION_KAFKA_SECRET, "orders-kafka")]);
        let out = apply(&pod, &mutate(&pod, Some("ns"), &config()).unwrap());
        let spec = out.spec.as_ref().unwrap();
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == KAFKA_SECRET_VOLUME)
            .unwrap();
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("orders-kafka"));
        assert_eq!(secret.optional, Some(false));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, KAFKA_SECRET_KEY);
        let side = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            env_of(side)["SLUICE_KAFKA_OPTIONS_FILE"],
            "/etc/sluice/kafka/kafka.properties"
        );
        let mount = side
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == KAFKA_SECRET_VOLUME)
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (KAFKA_SECRET_DIR, Some(true))
        );
        // The Flink containers do not see it.
        for c in &spec.containers {
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| m.name != KAFKA_SECRET_VOLUME),
                "{} mounts the Kafka Secret",
                c.name
            );
        }
        for bad in ["", "Orders", "a_b", "-a", "a/b", "a..b", "a.-b"] {
            let pod = tm(&[(ANNOTATION_KAFKA_SECRET, bad)]);
            assert_eq!(
                mutate(&pod, Some("ns"), &config()),
                Err(Skip::BadKafkaSecret(bad.into()))
            );
        }
    }

    #[test]
    fn annotations_pass_kafka_options_and_worker_threads_to_the_sidecar() {
        let pod = tm(&[
            (
                ANNOTATION_KAFKA_OPTIONS,
                " linger.ms=5 ; compression.type = lz4;; ",
            ),
            (ANNOTATION_WORKER_THREADS, "2"),
        ]);
        let inj = mutate(&pod, Some("ns"), &config()).unwrap();
        let out = apply(&pod, &inj);
        let side = &out.spec.unwrap().init_containers.unwrap()[0];
        let env = env_of(side);
        assert_eq!(
            env["SLUICE_KAFKA_OPTIONS"],
            "linger.ms=5;compression.type=lz4"
        );
        assert_eq!(env["SLUICE_WORKER_THREADS"], "2");
        // Without the annotations the sidecar keeps its own defaults.
        let plain = apply(&tm(&[]), &mutate(&tm(&[]), Some("ns"), &config()).unwrap());
        let env = env_of(&plain.spec.unwrap().init_containers.unwrap()[0]);
        assert!(!env.contains_key("SLUICE_KAFKA_OPTIONS"));
        assert!(!env.contains_key("SLUICE_WORKER_THREADS"));
    }

    #[test]
    fn bad_kafka_options_worker_threads_and_secrets_are_refused_with_a_warning() {
        for (value, want) in [
            ("linger.ms", Skip::BadKafkaOption("linger.ms".into())),
            ("=5", Skip::BadKafkaOption("=5".into())),
            (
                "sasl.password=hunter2",
                Skip::SecretInAnnotation("sasl.password".into()),
            ),
            (
                "ssl.key.location=/k",
                Skip::SecretInAnnotation("ssl.key.location".into()),
            ),
        ] {
            let pod = tm(&[(ANNOTATION_KAFKA_OPTIONS, value)]);
            let skip = mutate(&pod, Some("ns"), &config()).unwrap_err();
            assert_eq!(skip, want, "{value}");
            let warning = skip.warning().unwrap();
            assert!(warning.contains(ANNOTATION_KAFKA_OPTIONS), "{warning}");
            assert!(
                !warning.contains("hunter2"),
                "a secret in a warning: {warning}"
            );
        }
        for bad in ["0", "65", "two", "-1"] {
            let pod = tm(&[(ANNOTATION_WORKER_THREADS, bad)]);
            assert_eq!(
                mutate(&pod, Some("ns"), &config()),
                Err(Skip::BadWorkerThreads(bad.into()))
            );
        }
    }

    #[test]
    fn the_namespace_falls_back_to_the_pods_own() {
        let mut pod = tm(&[]);
        pod.metadata.namespace = Some("team-a".into());
        assert_eq!(
            mutate(&pod, None, &config()).unwrap().pipeline,
            "team-a/orders-v1"
        );
        // The request's namespace wins (it is the one the pod is created in).
        assert_eq!(
            mutate(&pod, Some("team-b"), &config()).unwrap().pipeline,
            "team-b/orders-v1"
        );
    }

    #[test]
    fn pods_that_did_not_opt_in_or_are_not_taskmanagers_are_skipped_silently() {
        let mut pod = tm(&[]);
        pod.metadata.annotations = None;
        assert_eq!(mutate(&pod, Some("ns"), &config()), Err(Skip::NotOptedIn));
        let pod = tm(&[(ANNOTATION_INJECT, "false")]);
        assert_eq!(mutate(&pod, Some("ns"), &config()), Err(Skip::NotOptedIn));

        let mut jm = tm(&[]);
        jm.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("component".into(), "jobmanager".into());
        let skip = mutate(&jm, Some("ns"), &config()).unwrap_err();
        assert_eq!(skip, Skip::NotTaskManager(Some("jobmanager".into())));
        assert_eq!(skip.warning(), None);
        assert_eq!(Skip::NotOptedIn.warning(), None);
    }

    #[test]
    fn an_opted_in_pod_that_cannot_be_injected_gets_a_warning() {
        let pod = tm(&[(ANNOTATION_INJECT, "yes")]);
        let skip = mutate(&pod, Some("ns"), &config()).unwrap_err();
        assert_eq!(skip, Skip::BadOptIn("yes".into()));
        assert!(skip.warning().unwrap().contains("only \"true\""));

        let mut pod = tm(&[]);
        pod.metadata.labels = map(&[("component", "taskmanager")]);
        let skip = mutate(&pod, Some("ns"), &config()).unwrap_err();
        assert_eq!(skip, Skip::NoPipeline);
        assert!(skip.warning().unwrap().contains(ANNOTATION_PIPELINE));

        // A pipeline but no deployment id.
        let mut pod = tm(&[(ANNOTATION_PIPELINE, "ns/p")]);
        pod.metadata.labels = map(&[("component", "taskmanager")]);
        assert_eq!(mutate(&pod, Some("ns"), &config()), Err(Skip::NoDeployment));

        for bad in ["noslash", "a/b/c", "/b", "a/", "a b/c"] {
            let pod = tm(&[(ANNOTATION_PIPELINE, bad)]);
            assert_eq!(
                mutate(&pod, Some("ns"), &config()),
                Err(Skip::BadPipeline(bad.into())),
                "{bad}"
            );
        }
        let pod = tm(&[(ANNOTATION_DEPLOYMENT, "v 1")]);
        assert_eq!(
            mutate(&pod, Some("ns"), &config()),
            Err(Skip::BadDeployment("v 1".into()))
        );
        let pod = tm(&[(ANNOTATION_SINK, "")]);
        assert_eq!(
            mutate(&pod, Some("ns"), &config()),
            Err(Skip::BadSink(String::new()))
        );
    }

    #[test]
    fn a_marker_without_a_sidecar_is_reported_not_fixed() {
        let pod = tm(&[(ANNOTATION_INJECTED, "true")]);
        let skip = mutate(&pod, Some("ns"), &config()).unwrap_err();
        assert_eq!(skip, Skip::MarkedWithoutSidecar);
        assert!(skip.warning().is_some());
    }

    #[test]
    fn conflicting_volume_or_mount_is_not_overwritten() {
        let mut pod = tm(&[]);
        pod.spec.as_mut().unwrap().volumes = Some(vec![socket_volume()]);
        assert!(matches!(
            mutate(&pod, Some("ns"), &config()),
            Err(Skip::Conflict(_))
        ));
        let mut pod = tm(&[]);
        pod.spec.as_mut().unwrap().containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "other".into(),
            mount_path: SOCKET_DIR.into(),
            ..Default::default()
        }]);
        assert!(matches!(
            mutate(&pod, Some("ns"), &config()),
            Err(Skip::Conflict(_))
        ));
    }

    #[test]
    fn env_the_user_set_is_kept_with_a_warning_if_it_differs() {
        let mut pod = tm(&[]);
        pod.spec.as_mut().unwrap().containers[0].env = Some(vec![
            env_var("SLUICE_SOCKET", "/elsewhere.sock"),
            env_var("SLUICE_DEPLOYMENT", "orders-v1"),
            env_var("OTHER", "x"),
        ]);
        let inj = mutate(&pod, Some("ns"), &config()).unwrap();
        assert_eq!(inj.warnings.len(), 1, "{:?}", inj.warnings);
        assert!(inj.warnings[0].contains("SLUICE_SOCKET"));
        let out = apply(&pod, &inj);
        let env = env_of(&out.spec.unwrap().containers[0]);
        assert_eq!(env.len(), 4);
        assert_eq!(env["SLUICE_SOCKET"], "/elsewhere.sock");
        assert_eq!(env["SLUICE_PIPELINE"], "ns/orders-v1");
    }

    #[test]
    fn without_a_flink_main_container_every_container_gets_the_socket() {
        let mut pod = tm(&[]);
        pod.spec.as_mut().unwrap().containers = vec![
            Container {
                name: "a".into(),
                ..Default::default()
            },
            Container {
                name: "b".into(),
                ..Default::default()
            },
        ];
        let out = apply(&pod, &mutate(&pod, Some("ns"), &config()).unwrap());
        for c in out.spec.unwrap().containers {
            assert_eq!(
                c.volume_mounts.as_ref().unwrap()[0].name,
                VOLUME_NAME,
                "{}",
                c.name
            );
            assert_eq!(env_of(&c).len(), 3);
        }
        // With a flink-main-container, only that one.
        let mut pod = tm(&[]);
        pod.spec.as_mut().unwrap().containers.push(Container {
            name: "log-shipper".into(),
            ..Default::default()
        });
        let out = apply(&pod, &mutate(&pod, Some("ns"), &config()).unwrap());
        let containers = out.spec.unwrap().containers;
        assert!(containers[0].volume_mounts.is_some());
        assert!(containers[1].volume_mounts.is_none());
        assert!(containers[1].env.is_none());
    }

    #[test]
    fn existing_lists_are_appended_to_not_replaced() {
        let mut pod = tm(&[]);
        let spec = pod.spec.as_mut().unwrap();
        spec.volumes = Some(vec![Volume {
            name: "flink-config-volume".into(),
            ..Default::default()
        }]);
        spec.init_containers = Some(vec![Container {
            name: "fetch-artifacts".into(),
            ..Default::default()
        }]);
        let inj = mutate(&pod, Some("ns"), &config()).unwrap();
        let paths: Vec<String> = inj
            .patch
            .0
            .iter()
            .map(|op| match op {
                PatchOperation::Add(a) => a.path.to_string(),
                other => panic!("only adds expected, got {other:?}"),
            })
            .collect();
        assert!(paths.contains(&"/spec/volumes/-".to_owned()), "{paths:?}");
        assert!(
            paths.contains(&"/spec/initContainers/-".to_owned()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/metadata/annotations/sluice.dev~1injected".to_owned()),
            "{paths:?}"
        );
        let out = apply(&pod, &inj);
        let spec = out.spec.unwrap();
        let names: Vec<_> = spec
            .init_containers
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["fetch-artifacts", SIDECAR_NAME]);
        assert_eq!(spec.volumes.unwrap().len(), 2);
    }

    #[test]
    fn resources_follow_the_configuration() {
        let mut c = config();
        c.cpu_limit = Some("2".into());
        let side = sidecar(&c, &settings());
        let r = side.resources.unwrap();
        let limits = r.limits.unwrap();
        assert_eq!(limits["cpu"], Quantity("2".into()));
        assert_eq!(limits["memory"], Quantity("256Mi".into()));
        assert_eq!(r.requests.unwrap()["cpu"], Quantity("100m".into()));
        let side = sidecar(&config(), &settings());
        assert!(!side.resources.unwrap().limits.unwrap().contains_key("cpu"));
    }
}
