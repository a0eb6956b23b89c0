//! The durable task queue in PostgreSQL: enqueueing, claims and leases, progress, hand-over
//! to this process's worker, and each outcome written in one transaction. The loop that runs
//! tasks is `worker`; the task API is `tasks`.
//!
//! Why our own table rather than a job-queue crate: a task is a domain object of the SLICES
//! API (`GET /tasks/{id}` shows `status`, `completed`, `message`), so its row must be ours
//! to read and shape; the queue mechanics on top are the crates.io pattern (one row per job,
//! `FOR UPDATE SKIP LOCKED`, LISTEN/NOTIFY to wake workers, retries with backoff).
//!
//! Guarantees:
//! - A claimed task holds a lease (`locked_until`, [`LEASE`]) that its worker renews every
//!   [`HEARTBEAT`] (one statement for all its tasks, [`renew_leases`]); a task left `running`
//!   by a crashed process is claimed again once its lease has run out, so no task is forgotten.
//! - Two workers never run the same task at once: claiming is one `UPDATE … WHERE id IN
//!   (SELECT … FOR UPDATE SKIP LOCKED)` ([`claim_many`]), and a worker whose heartbeat finds
//!   the lease taken stops working on it; every write of a worker is guarded by `locked_by`.
//! - Tasks of one resource run in creation order (a delete waits for the create before it).
//! - Durability: the request that queues a task and the task's outcome commit with the
//!   server's `synchronous_commit` (normally on: flushed to disk before the client hears of
//!   it). The worker's bookkeeping in between (claim, heartbeat, progress) goes through
//!   [`bookkeeping_pool`] without waiting for the flush: if Postgres itself crashes, at most
//!   the last fraction of a second of those writes is lost, which is the crash case the lease
//!   already covers (the task runs again and the backend adopts what it made).
//! - A request served by a process that runs a worker hands its new tasks straight to that
//!   worker ([`LocalWorker`]): the task row is inserted already claimed (status `running`,
//!   `locked_by` that worker, a fresh lease) in the same statement as the resource, and the
//!   worker starts it without a claim query. If the process dies first, the lease runs out
//!   and any worker claims the task as above.
//! - Retryable backend errors re-queue the task with exponential backoff ([`backoff`]) up to
//!   `max_attempts`; then the task fails.

use crate::error::AppError;
use crate::model::{AllocationState, BackendDetails, OperationalState, TaskKind, TaskStatus};
use crate::ssr::backend::{BackendError, ObjectHandle, Progress, ResourceRecord};
use crate::ssr::list_cache::ListCache;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// How long a claim lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a running task renews its lease (and checks for a deletion request).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The NOTIFY channel that wakes workers.
pub const CHANNEL: &str = "slices_tasks";

/// A pool for the worker's bookkeeping writes: the same server and credentials as `pool`,
/// at most 8 connections, each opened with `synchronous_commit = off` (PostgreSQL manual,
/// "Asynchronous Commit": the commit returns before its WAL reaches disk; it is visible to
/// others at once, and a database crash can lose it but never leaves it half-applied).
/// Waiting for the flush (~0.3 ms alone, more under load) on every claim and progress step
/// would sit on the path between a request and its Pod or server being created, and would
/// compete for the disk with the backends' own stores.
pub fn bookkeeping_pool(pool: &PgPool) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options)
}

/// Adds a queued task inside `tx`; workers are notified when `tx` commits (and the caller
/// wakes this process's worker with [`LocalWorker::wake`]).
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    resource_id: Uuid,
    kind: TaskKind,
) -> Result<Uuid, AppError> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO tasks (id, resource_id, kind, message) VALUES ($1, $2, $3, 'queued')",
        id,
        resource_id,
        kind.as_str()
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// Wakes the workers of every process after tasks were queued outside [`enqueue`] (whose
/// notification rides on its transaction). A lost notification only delays a task until
/// the workers' next poll, so a failure is logged, not returned.
pub async fn notify_queued(pool: &PgPool) {
    if let Err(e) = sqlx::query!("SELECT pg_notify($1, '')", CHANNEL)
        .execute(pool)
        .await
    {
        tracing::warn!(error = %e, "could not notify the workers");
    }
}

/// This process's worker as request handlers see it: attached while the worker runs in
/// this process (the default `serve`; absent with `--no-worker`/`RUN_WORKER=false` and in
/// API-only test apps). Handlers reserve one of its free slots per new task, insert the task
/// already claimed by it ([`Reserved::worker_id`], lease [`LEASE`]) and, after the commit,
/// hand it over with [`Reserved::start`]. A slot is one of the worker's
/// `WORKER_CONCURRENCY` permits, shared with its own claims, so the two paths together never
/// run more tasks at once than configured. [`LocalWorker::wake`] makes it look for queued
/// tasks at once (other processes' workers hear the `pg_notify`).
#[derive(Default)]
pub struct LocalWorker {
    inner: Mutex<Option<LocalInner>>,
    wake: Notify,
    /// A slot given back by a task that now only waits ([`TaskSlot`]).
    freed: Notify,
}

#[derive(Clone)]
struct LocalInner {
    worker_id: String,
    slots: Arc<Semaphore>,
    handoff: mpsc::UnboundedSender<Handoff>,
}

/// A task handed from a request to this process's worker, with the record the request
/// already holds and the slot it reserved.
pub struct Handoff {
    pub task: Claimed,
    pub record: ResourceRecord,
    pub permit: OwnedSemaphorePermit,
}

/// A free slot of this process's worker, held by a request until its tasks are committed.
pub struct Reserved {
    worker_id: String,
    permit: OwnedSemaphorePermit,
    handoff: mpsc::UnboundedSender<Handoff>,
}

impl LocalWorker {
    /// Up to `n` free slots of this process's worker (none when it runs elsewhere or is busy).
    pub fn reserve(&self, n: usize) -> Vec<Reserved> {
        let Some(inner) = self.lock().clone() else {
            return Vec::new();
        };
        (0..n)
            .map_while(|_| inner.slots.clone().try_acquire_owned().ok())
            .map(|permit| Reserved {
                worker_id: inner.worker_id.clone(),
                permit,
                handoff: inner.handoff.clone(),
            })
            .collect()
    }

    /// Whether a worker is attached (runs in this process).
    pub fn is_attached(&self) -> bool {
        self.lock().is_some()
    }

    /// Call after committing a transaction that queued tasks: this process's worker claims
    /// them at once instead of waiting for the notification's round trip through Postgres.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`LocalWorker::wake`] (or at once if one is pending).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Says a running task gave its slot back (no new task was queued).
    fn slot_freed(&self) {
        self.freed.notify_one();
    }

    /// Resolves when a slot was given back since the last call (or at once if one was).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Makes `worker_id` this process's worker with `concurrency` slots until the returned
    /// [`Attached`] is dropped. The worker loop does this; tests use it to stand in for a
    /// worker that dies before it starts what it was handed.
    pub fn attach(self: &Arc<Self>, worker_id: &str, concurrency: usize) -> Attached {
        let slots = Arc::new(Semaphore::new(concurrency));
        let (handoff, handoffs) = mpsc::unbounded_channel();
        *self.lock() = Some(LocalInner {
            worker_id: worker_id.to_string(),
            slots: slots.clone(),
            handoff,
        });
        Attached {
            owner: self.clone(),
            worker_id: worker_id.to_string(),
            slots,
            handoffs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LocalInner>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A worker attached to its process's [`LocalWorker`]: its slots and the tasks handed to
/// it. Dropping it detaches the worker (requests queue their tasks again); tasks handed
/// over but not started stay claimed by it until the worker's shutdown re-queues them
/// ([`release`]) or their lease runs out.
pub struct Attached {
    owner: Arc<LocalWorker>,
    worker_id: String,
    /// The worker's slots (shared with the requests that reserve them).
    pub slots: Arc<Semaphore>,
    /// Tasks handed over by requests.
    pub handoffs: mpsc::UnboundedReceiver<Handoff>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Detach only ourselves (a newer worker may have attached since).
        let mut current = self.owner.lock();
        if current
            .as_ref()
            .is_some_and(|c| c.worker_id == self.worker_id)
        {
            *current = None;
        }
    }
}

impl Reserved {
    /// The id to write into the task's `locked_by`.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Starts the committed, claimed task `task_id` (attempt 1 of its `max_attempts`, a
    /// create or delete of `record`). If the worker has stopped meanwhile, its shutdown
    /// already re-queued every task it held, or the lease runs out: the task runs later,
    /// never twice at once.
    pub fn start(self, task_id: Uuid, kind: TaskKind, max_attempts: i32, record: ResourceRecord) {
        let task = Claimed {
            id: task_id,
            resource_id: record.id,
            kind,
            attempts: 1,
            max_attempts,
        };
        let handoff = Handoff {
            task,
            record,
            permit: self.permit,
        };
        if self.handoff.send(handoff).is_err() {
            tracing::info!(task = %task_id, "the worker stopped before a handed-over task started; it runs after its lease");
        }
    }
}

/// A task a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub resource_id: Uuid,
    pub kind: TaskKind,
    pub attempts: i32,
    pub max_attempts: i32,
}

/// Claims the next runnable task, if any ([`claim_many`] with `n` = 1).
pub async fn claim(
    pool: &PgPool,
    worker_id: &str,
    slots_per_experiment: usize,
) -> Result<Option<Claimed>, sqlx::Error> {
    Ok(claim_many(pool, worker_id, slots_per_experiment, 1)
        .await?
        .into_iter()
        .next())
}

/// Claims up to `n` runnable tasks in one statement: queued tasks whose time has come, or
/// running ones whose lease ran out, whose resource has no older unfinished task. Fair
/// between experiments: an experiment holding `slots_per_experiment` running tasks (live
/// leases, all workers) gets no more, and the tasks go round the experiments — each task is
/// ranked by how many its experiment would then run (those running plus its own place in the
/// experiment's line), lowest first, then the oldest.
///
/// A claimed create's resource turns `provisioning` (message `provisioning`) in the same
/// statement, unless its deletion was requested meanwhile (the worker then cancels the task).
///
/// One statement for many claims because a claim reads every runnable task to rank it: in a
/// burst of 1,000 tasks, claiming them one by one made PostgreSQL the busiest process on the
/// machine. The ranking reads a snapshot; the rows are then locked with `SKIP LOCKED` and
/// checked again, so a task another worker claimed meanwhile is left out, never run twice.
pub async fn claim_many(
    pool: &PgPool,
    worker_id: &str,
    slots_per_experiment: usize,
    n: usize,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"WITH busy AS (
               SELECT x.experiment_id, count(*) AS running
               FROM tasks b JOIN resources x ON x.id = b.resource_id
               WHERE b.status = 'running' AND b.locked_until >= now()
               GROUP BY x.experiment_id),
           due AS (
               SELECT t.id, t.run_after, t.created_at,
                      COALESCE(busy.running, 0) + row_number() OVER (
                          PARTITION BY r.experiment_id ORDER BY t.run_after, t.created_at, t.id
                      ) AS nth
               FROM tasks t
               JOIN resources r ON r.id = t.resource_id
               LEFT JOIN busy ON busy.experiment_id = r.experiment_id
               WHERE ((t.status = 'queued' AND t.run_after <= now())
                      OR (t.status = 'running' AND t.locked_until < now()))
                 AND NOT EXISTS (
                     SELECT 1 FROM tasks p
                     WHERE p.resource_id = t.resource_id
                       AND (p.created_at, p.id) < (t.created_at, t.id)
                       AND p.status IN ('queued', 'running'))),
           picked AS (
               SELECT id FROM due WHERE nth <= $3
               ORDER BY nth, run_after, created_at
               LIMIT $4),
           locked AS (
               SELECT t.id FROM tasks t
               WHERE t.id IN (SELECT id FROM picked)
                 AND ((t.status = 'queued' AND t.run_after <= now())
                      OR (t.status = 'running' AND t.locked_until < now()))
               FOR UPDATE OF t SKIP LOCKED),
           claimed AS (
               UPDATE tasks SET status = 'running', attempts = attempts + 1, locked_by = $1,
                   locked_until = now() + make_interval(secs => $2),
                   started_at = COALESCE(started_at, now())
               WHERE id IN (SELECT id FROM locked)
               RETURNING id, resource_id, kind, attempts, max_attempts),
           started AS (
               UPDATE resources r SET allocation_state = 'provisioning',
                   operational_state = 'pending', status_message = 'provisioning'
               FROM claimed c
               WHERE r.id = c.resource_id AND c.kind = 'create'
                 AND r.allocation_state IN ('requested', 'provisioning'))
           SELECT id AS "id!", resource_id AS "resource_id!", kind AS "kind!: TaskKind",
                  attempts AS "attempts!", max_attempts AS "max_attempts!"
           FROM claimed"#,
        worker_id,
        LEASE.as_secs_f64(),
        i64::try_from(slots_per_experiment).unwrap_or(i64::MAX),
        i64::try_from(n).unwrap_or(i64::MAX)
    )
    .fetch_all(pool)
    .await
}

/// Renews the leases of `tasks` that `worker_id` still holds, in one statement (a worker's
/// heartbeat for all its running tasks). Answers each renewed task with its resource's
/// allocation state (a create stops when it reads `deleting`); a task missing from the
/// answer has lost its lease (another worker owns it now, or it ended).
pub async fn renew_leases(
    pool: &PgPool,
    worker_id: &str,
    tasks: &[Uuid],
) -> Result<Vec<(Uuid, AllocationState)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH t AS (
               UPDATE tasks SET locked_until = now() + make_interval(secs => $3)
               WHERE id = ANY($1) AND locked_by = $2 AND status = 'running'
               RETURNING id, resource_id)
           SELECT t.id, r.allocation_state AS "allocation_state: AllocationState"
           FROM resources r JOIN t ON t.resource_id = r.id"#,
        tasks,
        worker_id,
        LEASE.as_secs_f64()
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id, row.allocation_state))
        .collect())
}

/// Hands every task `worker_id` still holds back to the queue, runnable at once (a worker's
/// shutdown). Returns how many.
pub async fn release(pool: &PgPool, worker_id: &str) -> Result<u64, sqlx::Error> {
    let released = sqlx::query!(
        r#"UPDATE tasks SET status = 'queued', locked_by = NULL, locked_until = NULL,
               run_after = now(), message = 'interrupted by a worker shutdown; queued again'
           WHERE locked_by = $1 AND status = 'running'"#,
        worker_id
    )
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}

/// The queue's [`Progress`]: writes the task's `completed`/`message` and the resource's
/// state, the task part guarded by the lease (a worker that lost its lease writes nothing
/// to the task).
#[derive(Clone)]
pub struct PgProgress {
    pool: PgPool,
    task_id: Uuid,
    resource_id: Uuid,
    worker_id: String,
    slot: Option<Arc<TaskSlot>>,
    /// Where steps go when given (else each is its own statement).
    writer: Option<TaskWriter>,
}

/// The worker slot a running task holds, which it trades for a waiting place (a permit of a
/// larger semaphore) once it only waits ([`Progress::waiting`]): a create whose Pod is made
/// need not keep a slot while the kubelet starts it, so a burst of creates is bounded by the
/// slots only while they talk to the API server.
pub struct TaskSlot {
    /// The slot, or (once traded) the waiting place.
    held: Mutex<Held>,
    waiting: Arc<Semaphore>,
    local: Arc<LocalWorker>,
}

/// What a [`TaskSlot`] holds: the slot's permit, or once `traded` the waiting place's;
/// released when the task ends.
struct Held {
    _permit: OwnedSemaphorePermit,
    traded: bool,
}

impl TaskSlot {
    /// `permit` is the task's slot; `waiting` the places of tasks that only wait; `local`
    /// hears when a slot is given back ([`LocalWorker::freed`]), so its worker can claim the
    /// next task.
    pub fn new(
        permit: OwnedSemaphorePermit,
        waiting: Arc<Semaphore>,
        local: Arc<LocalWorker>,
    ) -> Self {
        Self {
            held: Mutex::new(Held {
                _permit: permit,
                traded: false,
            }),
            waiting,
            local,
        }
    }

    /// Gives the slot back for a waiting place, when one is free (else keeps the slot);
    /// once per task.
    fn trade(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.traded {
            return;
        }
        if let Ok(place) = self.waiting.clone().try_acquire_owned() {
            // The slot's permit is dropped here: free for the next task.
            *held = Held {
                _permit: place,
                traded: true,
            };
            drop(held);
            self.local.slot_freed();
        }
    }
}

impl PgProgress {
    /// A reporter for `task_id` on `resource_id` held by `worker_id`.
    pub fn new(pool: PgPool, task_id: Uuid, resource_id: Uuid, worker_id: &str) -> Self {
        Self {
            pool,
            task_id,
            resource_id,
            worker_id: worker_id.to_string(),
            slot: None,
            writer: None,
        }
    }

    /// The same, its steps written together with other tasks' ([`TaskWriter`]).
    pub fn with_writer(mut self, writer: TaskWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    /// The same, holding the task's worker slot (given back on [`Progress::waiting`]).
    pub fn with_slot(mut self, slot: TaskSlot) -> Self {
        self.slot = Some(Arc::new(slot));
        self
    }

    /// The one statement behind [`Progress::stage`]: the resource always; the task's
    /// progress only while this worker holds the task's lease.
    async fn write_state(
        &self,
        completed: i16,
        allocation: AllocationState,
        operational: OperationalState,
        message: &str,
        details: Option<&BackendDetails>,
    ) {
        let details = details.and_then(|d| serde_json::to_value(d).ok());
        // A data-modifying WITH runs whether or not the main statement reads it (PostgreSQL
        // manual, 7.8.4 "Data-Modifying Statements in WITH").
        let result = sqlx::query!(
            r#"WITH t AS (
                   UPDATE tasks SET completed = GREATEST(completed, $6), message = $4
                   WHERE id = $7 AND locked_by = $8 AND status = 'running')
               UPDATE resources SET allocation_state = $2, operational_state = $3,
                   status_message = $4, backend_details = COALESCE($5, backend_details)
               WHERE id = $1"#,
            self.resource_id,
            allocation.as_str(),
            operational.as_str(),
            message,
            details,
            completed.clamp(0, 100),
            self.task_id,
            self.worker_id
        )
        .execute(&self.pool)
        .await;
        if let Err(e) = result {
            tracing::warn!(task = %self.task_id, resource = %self.resource_id, error = %e, "could not record state");
        }
    }
}

#[async_trait::async_trait]
impl Progress for PgProgress {
    async fn report(&self, completed: i16, message: &str) {
        let result = sqlx::query!(
            r#"WITH t AS (
                   UPDATE tasks SET completed = GREATEST(completed, $3), message = $4
                   WHERE id = $1 AND locked_by = $2 AND status = 'running'
                   RETURNING resource_id)
               UPDATE resources SET status_message = $4
               WHERE id IN (SELECT resource_id FROM t)"#,
            self.task_id,
            self.worker_id,
            completed.clamp(0, 100),
            message
        )
        .execute(&self.pool)
        .await;
        if let Err(e) = result {
            tracing::warn!(task = %self.task_id, error = %e, "could not record progress");
        }
    }

    async fn stage(
        &self,
        completed: i16,
        allocation: AllocationState,
        operational: OperationalState,
        message: &str,
        details: Option<&BackendDetails>,
    ) {
        if let Some(writer) = &self.writer {
            let row = StageRow {
                resource_id: self.resource_id,
                completed: completed.clamp(0, 100),
                allocation,
                operational,
                message: message.to_string(),
                details: details.cloned(),
            };
            let task_id = self.task_id;
            let written = writer
                .write(|done| Write::Stage(Pending { task_id, row, done }))
                .await;
            if written.is_some() {
                return;
            }
        }
        self.write_state(completed, allocation, operational, message, details)
            .await;
    }

    async fn waiting(&self) {
        if let Some(slot) = &self.slot {
            slot.trade();
        }
    }
}

/// How a task attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done; a create brings what the backend made.
    Finished {
        message: String,
        details: Option<BackendDetails>,
    },
    /// Stopped on purpose (a create whose resource's deletion was requested).
    Cancelled(String),
    /// The backend failed; retried later when retryable and attempts remain.
    Failed(BackendError),
    /// Another worker holds the task now: nothing is written.
    LeaseLost,
}

impl Outcome {
    /// Whether this outcome re-queues the task rather than ending it (an unreachable backend
    /// always does, until [`record_outcome`] finds the outage longer than its budget).
    pub fn retries(&self, task: &Claimed) -> bool {
        matches!(self, Outcome::Failed(e)
            if e.unreachable.is_some() || (e.retryable && task.attempts < task.max_attempts))
    }
}

/// Most writes one [`TaskWriter`] statement carries.
pub const WRITE_BATCH: usize = 128;
/// A write handed to a [`TaskWriter`] less than this after its last statement waits
/// [`LINGER`] for others: it is busy (a burst), and one statement for many rows costs about
/// what one for a single row does.
pub const BUSY_WITHIN: Duration = Duration::from_millis(100);
/// How long a write waits for others while its [`TaskWriter`] is busy.
pub const LINGER: Duration = Duration::from_millis(50);

/// Writes a worker's frequent per-task rows together: the outcomes of finished creates (the
/// tasks `finished`, their resources `provisioned`/`ready` with what the backend made) and
/// progress steps ([`PgProgress::stage`]), each guarded by the lease as when written alone.
/// Every write waiting at a moment (up to [`WRITE_BATCH`]) goes into one statement per kind;
/// a statement is atomic (PostgreSQL commits it as one transaction). Outcomes commit with the
/// server's `synchronous_commit` through the request pool, steps without the flush through
/// the bookkeeping pool, as before. A lone write goes out at once; while the writer is busy
/// ([`BUSY_WITHIN`]) a write waits [`LINGER`] for others: in a burst of 1,000 Pods the
/// outcomes and steps of the creates that ended meanwhile share one statement and one flush,
/// instead of a statement (an outcome: a transaction of four round trips) each.
#[derive(Clone)]
pub struct TaskWriter {
    tx: mpsc::UnboundedSender<Write>,
}

/// One row waiting for the writer (its task and what to write, serialized as one element of
/// the statement's JSON array), and where its answer goes: `Some(held)` (whether this worker
/// still held the task), `None` when the statement failed.
#[derive(serde::Serialize)]
struct Pending<R> {
    task_id: Uuid,
    #[serde(flatten)]
    row: R,
    #[serde(skip)]
    done: tokio::sync::oneshot::Sender<Option<bool>>,
}

/// A finished create's outcome.
#[derive(serde::Serialize)]
struct FinishRow {
    message: String,
    details: Option<BackendDetails>,
}

/// A progress step ([`PgProgress::stage`]) of the task on `resource_id`.
#[derive(serde::Serialize)]
struct StageRow {
    resource_id: Uuid,
    completed: i16,
    allocation: AllocationState,
    operational: OperationalState,
    message: String,
    details: Option<BackendDetails>,
}

enum Write {
    Finish(Pending<FinishRow>),
    Stage(Pending<StageRow>),
}

impl TaskWriter {
    /// Starts the writer of `worker_id`'s rows: outcomes through `pool`, steps through
    /// `bookkeeping` ([`bookkeeping_pool`]). It ends once every clone of the returned
    /// [`TaskWriter`] is dropped.
    pub fn start(
        pool: PgPool,
        bookkeeping: PgPool,
        list_cache: Arc<ListCache>,
        worker_id: String,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
        let writer = tokio::spawn(async move {
            let mut last: Option<tokio::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                if last.is_some_and(|at| at.elapsed() < BUSY_WITHIN) {
                    tokio::time::sleep(LINGER).await;
                }
                let (mut finishes, mut stages) = (Vec::new(), Vec::new());
                let waiting = std::iter::once(first)
                    .chain(std::iter::from_fn(|| rx.try_recv().ok()))
                    .take(WRITE_BATCH);
                for write in waiting {
                    match write {
                        Write::Finish(p) => finishes.push(p),
                        Write::Stage(p) => stages.push(p),
                    }
                }
                // A task's step is older than its outcome: steps first.
                if !stages.is_empty() {
                    let written = write_stages(&bookkeeping, &worker_id, rows(&stages)).await;
                    answer(stages, written, "recording progress steps together failed");
                }
                if !finishes.is_empty() {
                    let written = {
                        let _writing = list_cache.writing();
                        finish_creates(&pool, &worker_id, rows(&finishes)).await
                    };
                    answer(
                        finishes,
                        written,
                        "ending finished creates together failed; each is written alone",
                    );
                }
                last = Some(tokio::time::Instant::now());
            }
        });
        (Self { tx }, writer)
    }

    /// Hands the write `wrap` makes of its answer channel to the writer and waits for its
    /// statement: `Some(held)` once written, `None` when it could not be.
    async fn write(
        &self,
        wrap: impl FnOnce(tokio::sync::oneshot::Sender<Option<bool>>) -> Write,
    ) -> Option<bool> {
        let (done, answered) = tokio::sync::oneshot::channel();
        self.tx.send(wrap(done)).ok()?;
        answered.await.ok().flatten()
    }
}

/// The JSON array a [`TaskWriter`] statement reads its rows from (`jsonb_to_recordset`).
fn rows<R: serde::Serialize>(batch: &[Pending<R>]) -> serde_json::Value {
    serde_json::to_value(batch).unwrap_or_default()
}

/// Tells each write of `batch` whether its task was among `written` (or `None` for all when
/// the statement failed, logged with `failure`).
fn answer<R>(batch: Vec<Pending<R>>, written: Result<Vec<Uuid>, sqlx::Error>, failure: &str) {
    let written = match written {
        Ok(ids) => Some(ids),
        Err(e) => {
            tracing::warn!(error = %e, rows = batch.len(), "{failure}");
            None
        }
    };
    for write in batch {
        let held = written.as_ref().map(|ids| ids.contains(&write.task_id));
        let _ = write.done.send(held);
    }
}

/// The outcome statement of a [`TaskWriter`] (`rows`: [`Pending`]`<`[`FinishRow`]`>` as JSON):
/// answers the ids of the tasks it ended (those `worker_id` still held).
async fn finish_creates(
    pool: &PgPool,
    worker_id: &str,
    rows: serde_json::Value,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH done AS (
               SELECT * FROM jsonb_to_recordset($2::jsonb)
                   AS d(task_id uuid, message text, details jsonb)),
           ended AS (
               UPDATE tasks t SET status = 'finished', message = d.message, completed = 100,
                   locked_until = NULL, finished_at = now(), unreachable_since = NULL
               FROM done d
               WHERE t.id = d.task_id AND t.locked_by = $1 AND t.status = 'running'
                 AND t.kind = 'create'
               RETURNING t.id, t.resource_id, d.message, d.details),
           ready AS (
               UPDATE resources r SET allocation_state = 'provisioned',
                   operational_state = 'ready', status_message = e.message,
                   backend_details = COALESCE(e.details, r.backend_details)
               FROM ended e
               WHERE r.id = e.resource_id)
           SELECT id AS "id!" FROM ended"#,
        worker_id,
        rows
    )
    .fetch_all(pool)
    .await
}

/// The step statement of a [`TaskWriter`] (`rows`: [`Pending`]`<`[`StageRow`]`>` as JSON):
/// each resource always, each task only while `worker_id` holds it (as
/// [`PgProgress::stage`] alone); answers the tasks it wrote.
async fn write_stages(
    pool: &PgPool,
    worker_id: &str,
    rows: serde_json::Value,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH step AS (
               SELECT * FROM jsonb_to_recordset($2::jsonb)
                   AS s(task_id uuid, resource_id uuid, completed int2, allocation text,
                        operational text, message text, details jsonb)),
           t AS (
               UPDATE tasks SET completed = GREATEST(tasks.completed, s.completed),
                   message = s.message
               FROM step s
               WHERE tasks.id = s.task_id AND tasks.locked_by = $1 AND tasks.status = 'running'
               RETURNING tasks.id),
           r AS (
               UPDATE resources SET allocation_state = s.allocation,
                   operational_state = s.operational, status_message = s.message,
                   backend_details = COALESCE(s.details, resources.backend_details)
               FROM step s
               WHERE resources.id = s.resource_id)
           SELECT id AS "id!" FROM t"#,
        worker_id,
        rows
    )
    .fetch_all(pool)
    .await
}

/// Writes `outcome` on the task and its resource in one transaction, guarded by the lease
/// (nothing is written when `worker_id` no longer holds the task); a finished create goes
/// through `writer` when given (one statement for the creates finished meanwhile). While
/// it runs, the list cache serves no page ([`ListCache::writing`]), so a client that sees
/// the task end never reads an older resource list afterwards. A backend that did not
/// answer is waited out for at most `outage_budget`.
pub async fn record_outcome(
    pool: &PgPool,
    list_cache: &ListCache,
    writer: Option<&TaskWriter>,
    worker_id: &str,
    task: &Claimed,
    outcome: Outcome,
    outage_budget: Duration,
) -> Result<(), sqlx::Error> {
    if let Outcome::LeaseLost = outcome {
        tracing::warn!("lease lost; another worker owns this task now");
        return Ok(());
    }
    if let (Some(writer), Outcome::Finished { message, details }, TaskKind::Create) =
        (writer, &outcome, task.kind)
    {
        let row = FinishRow {
            message: message.clone(),
            details: details.clone(),
        };
        let task_id = task.id;
        let written = writer
            .write(|done| Write::Finish(Pending { task_id, row, done }))
            .await;
        match written {
            Some(true) => return Ok(()),
            Some(false) => {
                tracing::warn!(
                    "lease lost before the outcome was written; another worker owns this task now"
                );
                return Ok(());
            }
            None => {}
        }
    }
    let _writing = list_cache.writing();
    let mut tx = pool.begin().await?;
    let held = match outcome {
        Outcome::Finished { message, details } => {
            finished(&mut tx, worker_id, task, &message, details.as_ref()).await?
        }
        Outcome::Cancelled(message) => {
            end_task(&mut tx, task.id, worker_id, TaskStatus::Failed, &message).await?
        }
        Outcome::Failed(error) if error.unreachable.is_some() => {
            wait_out(&mut tx, worker_id, task, &error, outage_budget).await?
        }
        Outcome::Failed(error) if error.retryable && task.attempts < task.max_attempts => {
            retry_later(&mut tx, worker_id, task, &error).await?
        }
        Outcome::Failed(error) => failed(&mut tx, worker_id, task, &error).await?,
        Outcome::LeaseLost => false,
    };
    if held {
        tx.commit().await
    } else {
        tracing::warn!(
            "lease lost before the outcome was written; another worker owns this task now"
        );
        tx.rollback().await
    }
}

/// Ends the task (`finished` with `completed` 100, or `failed`) if `worker_id` holds it.
/// `Ok(false)` when it does not. The ended task keeps `locked_by` (which worker ended it;
/// nothing claims an ended task) and loses its lease.
async fn end_task(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    worker_id: &str,
    status: TaskStatus,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query!(
        r#"UPDATE tasks SET status = $3, message = $4,
               completed = CASE WHEN $3 = 'finished' THEN 100 ELSE completed END,
               locked_until = NULL, finished_at = now(),
               unreachable_since = NULL
           WHERE id = $1 AND locked_by = $2 AND status = 'running'"#,
        id,
        worker_id,
        status.as_str(),
        message
    )
    .execute(&mut **tx)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// A create leaves its resource provisioned and ready with what the backend made; a delete
/// leaves it `deleted` (or `expired`, when it was due).
async fn finished(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: &str,
    task: &Claimed,
    message: &str,
    details: Option<&BackendDetails>,
) -> Result<bool, sqlx::Error> {
    if !end_task(tx, task.id, worker_id, TaskStatus::Finished, message).await? {
        return Ok(false);
    }
    match task.kind {
        TaskKind::Create => {
            let details = details.and_then(|d| serde_json::to_value(d).ok());
            sqlx::query!(
                r#"UPDATE resources SET allocation_state = 'provisioned',
                       operational_state = 'ready', status_message = $2,
                       backend_details = COALESCE($3, backend_details)
                   WHERE id = $1"#,
                task.resource_id,
                message,
                details
            )
            .execute(&mut **tx)
            .await?;
        }
        TaskKind::Delete => {
            sqlx::query!(
                r#"UPDATE resources SET
                       allocation_state = CASE WHEN expires_at <= now() THEN 'expired' ELSE 'deleted' END,
                       operational_state = 'pending', status_message = $2,
                       backend_details = '{}'::jsonb
                   WHERE id = $1"#,
                task.resource_id,
                message
            )
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(true)
}

/// A retryable failure with attempts left: queued again after [`backoff`], the reason on
/// the task and the resource.
async fn retry_later(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: &str,
    task: &Claimed,
    error: &BackendError,
) -> Result<bool, sqlx::Error> {
    let delay = backoff(task.attempts);
    let message = format!(
        "attempt {} of {} failed: {}; retrying in {} s",
        task.attempts,
        task.max_attempts,
        error.message,
        delay.as_secs()
    );
    tracing::warn!(error = %error.message, retry_in_s = delay.as_secs(), "task attempt failed");
    requeue(tx, worker_id, task, delay, &message, None).await
}

/// Queues the held task again after `delay`, with `message` on it and its resource. `outage`:
/// since when the backend has not answered (the attempt is given back, [`wait_out`]); `None`
/// for an ordinary retry. `Ok(false)` when `worker_id` no longer holds the task.
async fn requeue(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: &str,
    task: &Claimed,
    delay: Duration,
    message: &str,
    outage: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    let queued = sqlx::query!(
        r#"UPDATE tasks SET status = 'queued', locked_by = NULL, locked_until = NULL,
               run_after = now() + make_interval(secs => $3), message = $4,
               unreachable_since = $5,
               attempts = CASE WHEN $5::timestamptz IS NULL THEN attempts
                               ELSE GREATEST(attempts - 1, 0) END
           WHERE id = $1 AND locked_by = $2 AND status = 'running'"#,
        task.id,
        worker_id,
        delay.as_secs_f64(),
        message,
        outage as _
    )
    .execute(&mut **tx)
    .await?;
    if queued.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query!(
        "UPDATE resources SET status_message = $2 WHERE id = $1",
        task.resource_id,
        message
    )
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// The backend did not answer at all (`error.unreachable` names it): the task is queued
/// again after [`outage_delay`] without using up an attempt, its message saying since when
/// the service has been unreachable (the first such failure of this task, kept in
/// `tasks.unreachable_since`), until the outage has lasted longer than `budget`; then it
/// fails ([`failed`]).
async fn wait_out(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: &str,
    task: &Claimed,
    error: &BackendError,
    budget: Duration,
) -> Result<bool, sqlx::Error> {
    let service = error.unreachable.unwrap_or("the backend");
    let since = sqlx::query_scalar!(
        r#"SELECT COALESCE(unreachable_since, now()) AS "since!: DateTime<Utc>"
           FROM tasks WHERE id = $1 AND locked_by = $2 AND status = 'running'"#,
        task.id,
        worker_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let Some(since) = since else {
        return Ok(false);
    };
    let down_for = (Utc::now() - since).to_std().unwrap_or_default();
    let since_text = since.format("%Y-%m-%d %H:%M:%S UTC");
    if down_for > budget {
        let failure = BackendError::permanent(format!(
            "{service} unreachable since {since_text}, longer than this site waits ({} s): {}",
            budget.as_secs(),
            error.message
        ));
        return failed(tx, worker_id, task, &failure).await;
    }
    let delay = outage_delay(down_for);
    let message = format!(
        "{service} unreachable since {since_text}; retrying in {} s ({})",
        delay.as_secs().max(1),
        error.message
    );
    tracing::warn!(error = %error.message, retry_in_s = delay.as_secs(), "backend unreachable; task waits");
    requeue(tx, worker_id, task, delay, &message, Some(since)).await
}

/// The wait before the next try at a backend that has not answered for `down_for`: a quarter
/// of the outage so far, between 2 and 30 s, ±20 % jitter (so the tasks of one outage do not
/// all knock at once when it ends).
pub fn outage_delay(down_for: Duration) -> Duration {
    use rand::Rng as _;
    let base = (down_for / 4).clamp(Duration::from_secs(2), OUTAGE_RETRY_CAP);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// The longest wait between two tries at an unreachable backend.
pub const OUTAGE_RETRY_CAP: Duration = Duration::from_secs(30);

/// A failure for good: a create leaves its resource `failed` (the worker removed what the
/// backend made before), a delete leaves it in error with the reason.
async fn failed(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: &str,
    task: &Claimed,
    error: &BackendError,
) -> Result<bool, sqlx::Error> {
    tracing::warn!(error = %error.message, "task failed");
    if !end_task(tx, task.id, worker_id, TaskStatus::Failed, &error.message).await? {
        return Ok(false);
    }
    match task.kind {
        TaskKind::Create => {
            sqlx::query!(
                r#"UPDATE resources SET allocation_state = 'failed', operational_state = 'error',
                       status_message = $2, backend_details = '{}'::jsonb
                   WHERE id = $1"#,
                task.resource_id,
                error.message
            )
            .execute(&mut **tx)
            .await?;
        }
        TaskKind::Delete => {
            sqlx::query!(
                "UPDATE resources SET status_message = $2, operational_state = 'error' WHERE id = $1",
                task.resource_id,
                format!("deletion failed: {}", error.message)
            )
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(true)
}

/// The wait before attempt `attempt + 1`: 2^attempt seconds, at most 60.
pub fn backoff(attempt: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.clamp(1, 6) as u32).min(60))
}

/// The kind of the reconcile tasks: an orphan's removal (migration
/// `20261207000001_reconcile_tasks.sql`). Such a task names no resource, so it never appears
/// in an experiment's task list, and [`claim_many`] (which joins each task's resource) never
/// hands it to the task loop: the reconciler of every worker process claims it with
/// [`claim_orphan_removals`] instead.
pub const REMOVE_ORPHAN: &str = "remove_orphan";
/// How many orphan removals one claim takes.
pub const ORPHAN_CLAIM: i64 = 16;

/// The object a reconcile task removes, as stored in `tasks.target` (JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrphanTarget {
    /// [`ObjectHandle::key`] of `handle` (stored for the unique index: at most one unfinished
    /// removal per key); set by [`OrphanTarget::new`], never by hand.
    key: String,
    pub handle: ObjectHandle,
    /// The typed resource id the object names (`resource_<site>_…`), `None` when it names none.
    pub resource_id: Option<String>,
}

impl OrphanTarget {
    /// The removal target of the object at `handle`, naming `resource_id`.
    pub fn new(handle: ObjectHandle, resource_id: Option<String>) -> Self {
        Self {
            key: handle.key(),
            handle,
            resource_id,
        }
    }

    /// One key per object ([`ObjectHandle::key`]).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A claimed orphan removal.
#[derive(Debug, Clone)]
pub struct ClaimedRemoval {
    pub id: Uuid,
    pub target: OrphanTarget,
    pub attempts: i32,
    pub max_attempts: i32,
}

/// Queues the removal of the orphan `target`, runnable once it has been an orphan for
/// `grace`; nothing when an unfinished removal of the same object is queued already (another
/// pass, or another replica, saw it first). `Ok(true)` when this call queued it.
pub async fn enqueue_orphan_removal(
    pool: &PgPool,
    target: &OrphanTarget,
    grace: Duration,
) -> Result<bool, sqlx::Error> {
    // Looked up first: an INSERT fires the table's statement trigger (the list caches'
    // notification) even when it inserts nothing, and a pass sees each orphan every 2 s.
    let known = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM tasks
                          WHERE kind = 'remove_orphan' AND status IN ('queued', 'running')
                            AND target ->> 'key' = $1) AS "known!""#,
        target.key()
    )
    .fetch_one(pool)
    .await?;
    if known {
        return Ok(false);
    }
    let json = serde_json::to_value(target).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let queued = sqlx::query!(
        r#"INSERT INTO tasks (id, resource_id, kind, message, target, run_after)
           VALUES ($1, NULL, 'remove_orphan', $2, $3, now() + make_interval(secs => $4))
           ON CONFLICT ((target ->> 'key'))
               WHERE kind = 'remove_orphan' AND status IN ('queued', 'running')
           DO NOTHING"#,
        Uuid::now_v7(),
        format!(
            "{} is an orphan; removed after the grace period",
            target.handle
        ),
        json,
        grace.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(queued.rows_affected() == 1)
}

/// Claims up to [`ORPHAN_CLAIM`] due orphan removals for `worker_id` (queued and due, or
/// running with a lease that ran out), with a lease of [`LEASE`]: the same `FOR UPDATE SKIP
/// LOCKED` claim as the task loop's, so two replicas never take one removal. A row whose
/// `target` does not read as an [`OrphanTarget`] is left out (and logged).
pub async fn claim_orphan_removals(
    pool: &PgPool,
    worker_id: &str,
) -> Result<Vec<ClaimedRemoval>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH picked AS (
               SELECT id FROM tasks
               WHERE kind = 'remove_orphan'
                 AND ((status = 'queued' AND run_after <= now())
                      OR (status = 'running' AND locked_until < now()))
               ORDER BY run_after
               LIMIT $3
               FOR UPDATE SKIP LOCKED)
           UPDATE tasks t SET status = 'running', attempts = t.attempts + 1, locked_by = $1,
               locked_until = now() + make_interval(secs => $2),
               started_at = COALESCE(t.started_at, now())
           FROM picked WHERE t.id = picked.id
           RETURNING t.id, t.target AS "target!", t.attempts, t.max_attempts"#,
        worker_id,
        LEASE.as_secs_f64(),
        ORPHAN_CLAIM
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| match serde_json::from_value(row.target) {
            Ok(target) => Some(ClaimedRemoval {
                id: row.id,
                target,
                attempts: row.attempts,
                max_attempts: row.max_attempts,
            }),
            Err(e) => {
                tracing::warn!(task = %row.id, error = %e, "a reconcile task's target does not read; left to its lease");
                None
            }
        })
        .collect())
}

/// Ends the held removal `id` (`finished` or `failed`) with `message`. `Ok(false)` when
/// `worker_id` no longer holds it.
pub async fn end_removal(
    pool: &PgPool,
    id: Uuid,
    worker_id: &str,
    status: TaskStatus,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ended = end_task(&mut tx, id, worker_id, status, message).await?;
    tx.commit().await?;
    Ok(ended)
}

/// Queues the held removal `id` again after [`backoff`] of its attempts, ±20 % at random (so
/// that replicas retrying the same backend spread out), with `message`. `Ok(false)` when
/// `worker_id` no longer holds it.
pub async fn retry_removal(
    pool: &PgPool,
    removal: &ClaimedRemoval,
    worker_id: &str,
    message: &str,
) -> Result<bool, sqlx::Error> {
    use rand::Rng as _;
    let delay = backoff(removal.attempts).mul_f64(rand::thread_rng().gen_range(0.8..1.2));
    let queued = sqlx::query!(
        r#"UPDATE tasks SET status = 'queued', locked_by = NULL, locked_until = NULL,
               run_after = now() + make_interval(secs => $3), message = $4
           WHERE id = $1 AND locked_by = $2 AND status = 'running'"#,
        removal.id,
        worker_id,
        delay.as_secs_f64(),
        format!("{message}; retrying in {} s", delay.as_secs().max(1))
    )
    .execute(pool)
    .await?;
    Ok(queued.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn outage_delay_grows_and_caps() {
        use std::time::Duration;
        for (down, lo, hi) in [(0, 1.6, 2.4), (40, 8.0, 12.0), (600, 24.0, 36.0)] {
            let d = super::outage_delay(Duration::from_secs(down)).as_secs_f64();
            assert!((lo..=hi).contains(&d), "{down} s down: waited {d} s");
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (1..=8).map(|a| super::backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
