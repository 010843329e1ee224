//! The engine: the one task that owns every [`Pipeline`] and the [`StateStore`].
//!
//! gRPC handlers talk to it through a bounded queue of [`Command`]s (requests carry a oneshot
//! for the reply), so every protocol decision is taken by the core, one input at a time. After
//! each input the engine settles the core's [`Effects`] in a fixed order:
//!
//! 1. persist the whole state if the record changed (a failure stops the coordinator: a decision
//!    that is not durable must never be announced);
//! 2. push each connected gate its (full) assignment through a per-stream `watch` channel, only
//!    if it changed;
//! 3. deliver the events to watchers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::pipeline::{
    AttachError, CutoverError, Effects, Event, GateEventKind, Pipeline, PipelineOptions,
    PipelineRecord, Settings,
};
use sluice_proto::convert::assignment_to_wire;
use sluice_proto::v1;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::metrics::Metrics;
use crate::status;
use crate::store::{StateStore, StoreError};

/// Commands queued for the engine; handlers wait (backpressure) when it is full.
pub(crate) const ENGINE_QUEUE: usize = 1024;
/// Events queued per watcher; a watcher that lets it fill up is ended with RESOURCE_EXHAUSTED.
pub(crate) const WATCHER_QUEUE: usize = 256;

/// Wall clock, ms since the Unix epoch (the core takes time as an argument).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The state could not be persisted: the engine stops rather than announce the decision.
#[derive(Debug, Error)]
#[error(
    "cannot persist the coordinator state; stopping rather than announcing an unpersisted decision"
)]
pub struct PersistError(#[source] pub StoreError);

/// Why a request was refused (mapped to a gRPC status by [`CommandError::to_status`]).
#[derive(Debug, Error)]
pub(crate) enum CommandError {
    /// No gate ever attached to this pipeline.
    #[error("pipeline {0:?} is unknown: no gate has attached to it")]
    UnknownPipeline(String),
    /// The core refused an attach.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The core refused a cutover request.
    #[error(transparent)]
    Cutover(#[from] CutoverError),
    /// The engine has stopped (shutdown or fatal error).
    #[error("the coordinator is shutting down")]
    Unavailable,
}

impl CommandError {
    /// The gRPC status for this refusal (by type, never by message).
    pub(crate) fn to_status(&self) -> Status {
        let msg = self.to_string();
        match self {
            CommandError::UnknownPipeline(_) => Status::not_found(msg),
            CommandError::Attach(AttachError::DeploymentMismatch { .. }) => {
                Status::failed_precondition(msg)
            }
            CommandError::Cutover(e) => match e {
                CutoverError::AlreadyRunning { .. }
                | CutoverError::CandidateIsActive(_)
                | CutoverError::NothingToAbort
                | CutoverError::AlreadyCommitted { .. }
                | CutoverError::CandidateUnknown(_) => Status::failed_precondition(msg),
                CutoverError::EmptyCandidate | CutoverError::Settings(_) => {
                    Status::invalid_argument(msg)
                }
            },
            CommandError::Unavailable => Status::unavailable(msg),
        }
    }
}

/// Who a gate stream is, from its hello.
#[derive(Debug, Clone)]
pub(crate) struct GateIdent {
    /// Pipeline name.
    pub pipeline: String,
    /// Deployment id.
    pub deployment: String,
    /// Gate id.
    pub gate: String,
}

/// A gate stream accepted by the engine.
#[derive(Debug)]
pub(crate) struct Attached {
    /// This stream's connection id (names it in later reports).
    pub conn: u64,
    /// The gate's assignment: current value first, then every change. Closed when the stream
    /// is replaced by a newer one of the same gate or the engine stops.
    pub assignments: watch::Receiver<v1::GateAssignment>,
}

/// A watcher's feed.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Events, the full status first.
    pub events: mpsc::Receiver<v1::PipelineEvent>,
    /// Set before the engine drops the sender because the queue was full.
    pub overflowed: Arc<AtomicBool>,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// One input for the engine.
#[derive(Debug)]
pub(crate) enum Command {
    /// A gate stream said hello.
    Attach {
        ident: GateIdent,
        progress: v1::GateProgress,
        /// Version of the assignment the gate already holds, if any.
        held_version: Option<u64>,
        reply: Reply<Attached>,
    },
    /// A gate reported progress.
    Progress {
        pipeline: String,
        gate: String,
        conn: u64,
        progress: v1::GateProgress,
    },
    /// A gate voted.
    Vote {
        pipeline: String,
        gate: String,
        conn: u64,
        vote: v1::GateVote,
    },
    /// A gate stream ended.
    Detach {
        pipeline: String,
        gate: String,
        conn: u64,
    },
    /// Start a cutover.
    StartCutover {
        pipeline: String,
        candidate: String,
        settings: Settings,
        reply: Reply<v1::PipelineStatus>,
    },
    /// Abort the running cutover.
    Abort {
        pipeline: String,
        reason: String,
        reply: Reply<v1::PipelineStatus>,
    },
    /// One pipeline's status.
    Get {
        pipeline: String,
        reply: Reply<v1::PipelineStatus>,
    },
    /// Every pipeline's status, sorted by name.
    List {
        reply: Reply<Vec<v1::PipelineStatus>>,
    },
    /// Subscribe to a pipeline's events.
    Watch {
        pipeline: String,
        reply: Reply<Subscription>,
    },
}

/// The handlers' side of the engine's queue.
#[derive(Debug, Clone)]
pub(crate) struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// A handle feeding the engine that reads `tx`'s receiver.
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        Self { tx }
    }

    /// Queues a command that needs no reply.
    pub(crate) async fn send(&self, cmd: Command) -> Result<(), CommandError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| CommandError::Unavailable)
    }

    /// Queues a command and waits for its reply.
    pub(crate) async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| CommandError::Unavailable)?
    }
}

/// The engine's timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Period of [`Pipeline::tick`].
    pub tick: Duration,
    /// Period of status events to watchers.
    pub status: Duration,
}

/// An open gate stream.
#[derive(Debug)]
struct GateConn {
    gate: String,
    deployment: String,
    tx: watch::Sender<v1::GateAssignment>,
}

/// An open watch stream.
#[derive(Debug)]
struct Watcher {
    tx: mpsc::Sender<v1::PipelineEvent>,
    overflowed: Arc<AtomicBool>,
}

/// A pipeline and the engine's bookkeeping around it.
#[derive(Debug)]
struct Entry {
    pipeline: Pipeline,
    /// Open gate streams by connection id.
    conns: BTreeMap<u64, GateConn>,
    /// The latest progress (with counters) each gate reported on its current stream.
    reported: BTreeMap<String, v1::GateProgress>,
    watchers: Vec<Watcher>,
}

impl Entry {
    fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            conns: BTreeMap::new(),
            reported: BTreeMap::new(),
            watchers: Vec::new(),
        }
    }

    fn status(&self) -> v1::PipelineStatus {
        status::pipeline_status(&self.pipeline, &self.reported)
    }

    fn wire_assignment(&self, deployment: &str) -> v1::GateAssignment {
        let a = self.pipeline.assignment_for(deployment);
        assignment_to_wire(&a, self.pipeline.record().phase())
    }

    /// Step 2 of settling: every open stream gets its assignment if it changed.
    fn push_assignments(&self) {
        for c in self.conns.values() {
            let next = self.wire_assignment(&c.deployment);
            c.tx.send_if_modified(|cur| {
                let changed = *cur != next;
                if changed {
                    *cur = next;
                }
                changed
            });
        }
    }

    /// Sends an event to every watcher; ends those that fell behind or went away.
    fn broadcast(&mut self, event: &v1::PipelineEvent) {
        let name = &self.pipeline.record().name;
        self.watchers
            .retain(|w| match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(pipeline = %name, "watcher fell behind; ending its stream");
                    // Set before the sender is dropped, so the stream sees it once it drains.
                    w.overflowed.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

/// The engine (see the module doc).
pub(crate) struct Engine {
    store: Arc<dyn StateStore>,
    options: PipelineOptions,
    pipelines: BTreeMap<String, Entry>,
    next_conn: u64,
}

impl Engine {
    /// Loads and restores every stored pipeline, then writes the state back once (which proves
    /// the store is writable before anything is served).
    pub(crate) async fn open(
        store: Arc<dyn StateStore>,
        options: PipelineOptions,
    ) -> Result<Self, OpenError> {
        let records = store.load().await.map_err(OpenError::Load)?;
        let now = now_ms();
        let mut engine = Self {
            store,
            options,
            pipelines: BTreeMap::new(),
            next_conn: 1,
        };
        for record in records {
            let name = record.name.clone();
            let (pipeline, fx) = Pipeline::restore(record, options, now);
            for e in &fx.events {
                log_event(&name, e);
            }
            engine.pipelines.insert(name, Entry::new(pipeline));
        }
        engine.persist().await.map_err(OpenError::Persist)?;
        Ok(engine)
    }

    /// Number of pipelines known.
    pub(crate) fn len(&self) -> usize {
        self.pipelines.len()
    }

    /// Serves commands and ticks until `stop` fires or every handle is gone. Returns an error
    /// only when the state could not be persisted.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        stop: CancellationToken,
        timing: Timing,
        metrics: Metrics,
    ) -> Result<(), PersistError> {
        let mut tick = tokio::time::interval(timing.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(timing.status);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.handle(cmd).await?;
                        // Only an attach adds a pipeline; setting a gauge is cheap.
                        metrics.set_pipelines(self.pipelines.len());
                    }
                    None => return Ok(()),
                },
                _ = tick.tick() => self.tick_all().await?,
                _ = status.tick() => self.publish_status(),
            }
        }
    }

    async fn persist(&self) -> Result<(), StoreError> {
        let records: Vec<&PipelineRecord> = self
            .pipelines
            .values()
            .map(|e| e.pipeline.record())
            .collect();
        self.store.save(&records).await?;
        tracing::debug!(pipelines = records.len(), store = %self.store.describe(), "state saved");
        Ok(())
    }

    /// Step 1 of settling.
    async fn persist_if(&self, persist: bool) -> Result<(), PersistError> {
        if persist {
            self.persist().await.map_err(PersistError)?;
        }
        Ok(())
    }

    /// Steps 2 and 3 of settling, for one pipeline whose effects are already persisted.
    fn announce(&mut self, name: &str, events: &[Event]) {
        let Some(entry) = self.pipelines.get_mut(name) else {
            return;
        };
        // Forget what expired gates reported.
        let gates = &entry.pipeline.record().gates;
        entry.reported.retain(|g, _| gates.contains_key(g));
        entry.push_assignments();
        let now = now_ms();
        for e in events {
            log_event(name, e);
            entry.broadcast(&status::event_to_wire(name, e, now));
        }
    }

    /// Persists, announces.
    async fn settle(&mut self, name: &str, fx: Effects) -> Result<(), PersistError> {
        self.persist_if(fx.persist).await?;
        self.announce(name, &fx.events);
        Ok(())
    }

    async fn tick_all(&mut self) -> Result<(), PersistError> {
        let now = now_ms();
        let all: Vec<(String, Effects)> = self
            .pipelines
            .iter_mut()
            .map(|(name, e)| (name.clone(), e.pipeline.tick(now)))
            .filter(|(_, fx)| fx.persist || !fx.events.is_empty())
            .collect();
        // One save covers every pipeline's change, and precedes every announcement.
        self.persist_if(all.iter().any(|(_, fx)| fx.persist))
            .await?;
        for (name, fx) in all {
            self.announce(&name, &fx.events);
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let now = now_ms();
        for entry in self.pipelines.values_mut() {
            if !entry.watchers.is_empty() {
                let ev = status::status_event(entry.status(), now);
                entry.broadcast(&ev);
            }
        }
    }

    fn entry(&mut self, name: &str) -> Result<&mut Entry, CommandError> {
        self.pipelines
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownPipeline(name.into()))
    }

    async fn handle(&mut self, cmd: Command) -> Result<(), PersistError> {
        let now = now_ms();
        match cmd {
            Command::Attach {
                ident,
                progress,
                held_version,
                reply,
            } => {
                self.attach(ident, progress, held_version, reply, now)
                    .await?;
            }
            Command::Progress {
                pipeline,
                gate,
                conn,
                progress,
            } => {
                if let Some(entry) = self.pipelines.get_mut(&pipeline) {
                    let fx = entry
                        .pipeline
                        .progress(&gate, conn, (&progress).into(), now);
                    if entry.conns.contains_key(&conn) {
                        entry.reported.insert(gate, progress);
                    }
                    self.settle(&pipeline, fx).await?;
                }
            }
            Command::Vote {
                pipeline,
                gate,
                conn,
                vote,
            } => {
                if let Some(entry) = self.pipelines.get_mut(&pipeline) {
                    let fx = entry.pipeline.vote(
                        &gate,
                        conn,
                        vote.epoch,
                        vote.yes,
                        vote.high_mark_ms,
                        now,
                    );
                    self.settle(&pipeline, fx).await?;
                }
            }
            Command::Detach {
                pipeline,
                gate,
                conn,
            } => {
                if let Some(entry) = self.pipelines.get_mut(&pipeline) {
                    entry.conns.remove(&conn);
                    let fx = entry.pipeline.detach(&gate, conn, now);
                    self.settle(&pipeline, fx).await?;
                }
            }
            Command::StartCutover {
                pipeline,
                candidate,
                settings,
                reply,
            } => {
                let started = self
                    .entry(&pipeline)
                    .and_then(|e| Ok(e.pipeline.start_cutover(&candidate, settings, now)?));
                self.reply_after(&pipeline, started, reply).await?;
            }
            Command::Abort {
                pipeline,
                reason,
                reply,
            } => {
                let aborted = self
                    .entry(&pipeline)
                    .and_then(|e| Ok(e.pipeline.abort(&reason, now)?));
                self.reply_after(&pipeline, aborted, reply).await?;
            }
            Command::Get { pipeline, reply } => {
                let _ = reply.send(self.entry(&pipeline).map(|e| e.status()));
            }
            Command::List { reply } => {
                // BTreeMap order is name order.
                let _ = reply.send(Ok(self.pipelines.values().map(Entry::status).collect()));
            }
            Command::Watch { pipeline, reply } => {
                let sub = self.entry(&pipeline).map(|entry| {
                    let (tx, events) = mpsc::channel(WATCHER_QUEUE);
                    let first = status::status_event(entry.status(), now);
                    // Cannot fail: the queue is new and has room.
                    let _ = tx.try_send(first);
                    let overflowed = Arc::new(AtomicBool::new(false));
                    entry.watchers.push(Watcher {
                        tx,
                        overflowed: overflowed.clone(),
                    });
                    Subscription { events, overflowed }
                });
                let _ = reply.send(sub);
            }
        }
        Ok(())
    }

    /// Settles an operator command's effects, then replies with the resulting status (so the
    /// caller never sees a state that is not yet durable).
    async fn reply_after(
        &mut self,
        name: &str,
        result: Result<Effects, CommandError>,
        reply: Reply<v1::PipelineStatus>,
    ) -> Result<(), PersistError> {
        match result {
            Ok(fx) => {
                self.settle(name, fx).await?;
                let status = self.entry(name).map(|e| e.status());
                let _ = reply.send(status);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
        Ok(())
    }

    async fn attach(
        &mut self,
        ident: GateIdent,
        progress: v1::GateProgress,
        held_version: Option<u64>,
        reply: Reply<Attached>,
        now: u64,
    ) -> Result<(), PersistError> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let options = self.options;
        let entry = self
            .pipelines
            .entry(ident.pipeline.clone())
            .or_insert_with(|| Entry::new(Pipeline::new(&ident.pipeline, options, now)));
        let fx = match entry.pipeline.attach(
            &ident.gate,
            &ident.deployment,
            conn,
            (&progress).into(),
            now,
        ) {
            Ok(fx) => fx,
            Err(e) => {
                tracing::warn!(
                    pipeline = %ident.pipeline, gate = %ident.gate, error = %e,
                    "gate attach refused"
                );
                let _ = reply.send(Err(e.into()));
                return Ok(());
            }
        };
        let version = entry.pipeline.record().version;
        if let Some(held) = held_version.filter(|h| *h > version) {
            // The gate ignores assignments older than the one it holds: this coordinator's
            // state is behind what gates were told (a lost or replaced state file).
            tracing::warn!(
                pipeline = %ident.pipeline, gate = %ident.gate, held, version,
                "gate holds a newer assignment than this coordinator's state; it will ignore \
                 this coordinator until the state's version passes it (was the state file lost?)"
            );
        }
        entry.reported.insert(ident.gate.clone(), progress);
        // A newer stream replaces older ones of the same gate (the core ignores their reports);
        // dropping their senders ends them.
        entry.conns.retain(|_, c| c.gate != ident.gate);
        self.persist_if(fx.persist).await?;
        // Only now, with the state durable, does the gate get to see its assignment.
        let Some(entry) = self.pipelines.get_mut(&ident.pipeline) else {
            return Ok(());
        };
        let (tx, assignments) = watch::channel(entry.wire_assignment(&ident.deployment));
        entry.conns.insert(
            conn,
            GateConn {
                gate: ident.gate,
                deployment: ident.deployment,
                tx,
            },
        );
        self.announce(&ident.pipeline, &fx.events);
        let _ = reply.send(Ok(Attached { conn, assignments }));
        Ok(())
    }
}

/// Why the engine could not start.
#[derive(Debug, Error)]
pub(crate) enum OpenError {
    /// The stored state could not be loaded.
    #[error("cannot load the stored state")]
    Load(#[source] StoreError),
    /// The restored state could not be written back.
    #[error("cannot write the restored state")]
    Persist(#[source] StoreError),
}

fn log_event(pipeline: &str, e: &Event) {
    match e {
        Event::PhaseChanged {
            phase,
            epoch,
            barrier,
            reason,
        } => tracing::info!(
            pipeline, ?phase, epoch, barrier = ?barrier, %reason, "phase changed"
        ),
        Event::Vote {
            gate,
            epoch,
            yes,
            high_mark,
        } => tracing::info!(pipeline, %gate, epoch, yes, high_mark = ?high_mark, "gate voted"),
        Event::Gate {
            gate,
            deployment,
            kind,
        } => {
            let what = match kind {
                GateEventKind::Attached => "gate attached",
                GateEventKind::Detached => "gate detached",
                GateEventKind::Expired => "gate expired (disconnected too long; forgotten)",
            };
            tracing::info!(pipeline, %gate, %deployment, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;

    /// A store in memory that can be told to fail.
    #[derive(Default)]
    struct MemoryStore {
        records: Mutex<Vec<PipelineRecord>>,
        fail: AtomicBool,
    }

    impl StateStore for MemoryStore {
        fn load(&self) -> BoxFuture<'_, Result<Vec<PipelineRecord>, StoreError>> {
            let r = self.records.lock().unwrap().clone();
            Box::pin(async move { Ok(r) })
        }

        fn save<'a>(
            &'a self,
            records: &'a [&'a PipelineRecord],
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                if self.fail.load(Ordering::Relaxed) {
                    return Err(StoreError::Write {
                        path: "memory".into(),
                        source: std::io::Error::other("disk on fire"),
                    });
                }
                *self.records.lock().unwrap() = records.iter().map(|r| (*r).clone()).collect();
                Ok(())
            })
        }

        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn ident(gate: &str, deployment: &str) -> GateIdent {
        GateIdent {
            pipeline: "ns/p".into(),
            deployment: deployment.into(),
            gate: gate.into(),
        }
    }

    async fn attach(engine: &mut Engine, gate: &str, deployment: &str) -> Attached {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Attach {
            ident: ident(gate, deployment),
            progress: v1::GateProgress::default(),
            held_version: None,
            reply,
        };
        engine.handle(cmd).await.unwrap();
        rx.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_failed_save_is_fatal_and_nothing_is_announced() {
        let store = Arc::new(MemoryStore::default());
        let mut engine = Engine::open(store.clone(), PipelineOptions::default())
            .await
            .unwrap();
        let blue = attach(&mut engine, "b1", "blue").await;
        assert_eq!(blue.assignments.borrow().role, v1::GateRole::Active as i32);
        store.fail.store(true, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let settings = Settings {
            now: true,
            force: true,
            ..Settings::default()
        };
        let cmd = Command::StartCutover {
            pipeline: "ns/p".into(),
            candidate: "green".into(),
            settings,
            reply,
        };
        assert!(engine.handle(cmd).await.is_err());
        drop(engine);
        // No reply, and the gate never saw the (unpersisted) prepare.
        assert!(rx.await.is_err());
        assert_eq!(blue.assignments.borrow().role, v1::GateRole::Active as i32);
        assert_eq!(store.records.lock().unwrap()[0].epoch, 0);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_ended_and_flagged() {
        let store = Arc::new(MemoryStore::default());
        let mut engine = Engine::open(store, PipelineOptions::default())
            .await
            .unwrap();
        let _blue = attach(&mut engine, "b1", "blue").await;
        let (reply, rx) = oneshot::channel();
        engine
            .handle(Command::Watch {
                pipeline: "ns/p".into(),
                reply,
            })
            .await
            .unwrap();
        let mut sub = rx.await.unwrap().unwrap();
        for _ in 0..WATCHER_QUEUE {
            engine.publish_status();
        }
        assert!(sub.overflowed.load(Ordering::Acquire));
        let mut n = 0;
        while sub.events.recv().await.is_some() {
            n += 1;
        }
        // Everything queued before the overflow is still delivered, then the feed ends.
        assert_eq!(n, WATCHER_QUEUE);
    }

    #[tokio::test]
    async fn a_newer_stream_of_the_same_gate_replaces_the_older() {
        let store = Arc::new(MemoryStore::default());
        let mut engine = Engine::open(store, PipelineOptions::default())
            .await
            .unwrap();
        let mut old = attach(&mut engine, "b1", "blue").await;
        let new = attach(&mut engine, "b1", "blue").await;
        assert_ne!(old.conn, new.conn);
        assert!(old.assignments.changed().await.is_err());
        assert!(!new.assignments.has_changed().unwrap());
    }
}
