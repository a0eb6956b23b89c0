//! Durable tasks in PostgreSQL and the worker that runs them.
//!
//! Why our own table rather than a job-queue crate: a task is a domain object of the SLICES
//! API (`GET /tasks/{id}` shows `status`, `completed`, `message`), so its row must be ours
//! to read and shape; the queue mechanics on top are the crates.io pattern (one row per job,
//! `FOR UPDATE SKIP LOCKED`, LISTEN/NOTIFY to wake workers, retries with backoff).
//!
//! Guarantees:
//! - A claimed task holds a lease (`locked_until`, [`LEASE`]) that its worker renews every
//!   [`HEARTBEAT`]; a task left `running` by a crashed process is claimed again once its
//!   lease has run out, so no task is forgotten.
//! - Two workers never run the same task at once: claiming is one `UPDATE … WHERE id =
//!   (SELECT … FOR UPDATE SKIP LOCKED)`, and a worker whose heartbeat finds the lease taken
//!   stops working on it.
//! - Tasks of one resource run in creation order (a delete waits for the create before it;
//!   a create sees the deletion request at its next heartbeat and stops).
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
//! - Retryable backend errors re-queue the task with exponential backoff (2, 4, 8, … ≤ 60 s)
//!   up to `max_attempts`; then the task fails and the resource is cleaned up.

use crate::error::AppError;
use crate::ids::{format_id, IdKind};
use crate::model::{AllocationState, BackendDetails, OperationalState, Task, TaskKind, TaskStatus};
use crate::ssr::auth::Principal;
use crate::ssr::backend::{BackendError, ResourceRecord};
use crate::ssr::resources::Scope;
use crate::ssr::state::AppState;
use crate::ssr::{internal, path_id};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// How long a claim lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a running task renews its lease (and checks for a deletion request).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The NOTIFY channel that wakes workers.
pub const CHANNEL: &str = "slices_tasks";
/// Fallback poll for retries that became due and expired leases.
const POLL: Duration = Duration::from_secs(1);
const REAP_EVERY: Duration = Duration::from_secs(15);

/// A `tasks` row as the API shows it.
pub(crate) struct TaskRow {
    pub id: Uuid,
    pub resource_id: Uuid,
    pub kind: String,
    pub status: String,
    pub completed: i16,
    pub message: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TaskRow {
    pub(crate) fn into_wire(self, site: &str) -> Result<Task, AppError> {
        Ok(Task {
            id: format_id(IdKind::Task, site, self.id),
            resource_id: format_id(IdKind::Resource, site, self.resource_id),
            kind: TaskKind::parse(&self.kind)
                .ok_or_else(|| internal(anyhow::anyhow!("task {} kind {}", self.id, self.kind)))?,
            status: TaskStatus::parse(&self.status).ok_or_else(|| {
                internal(anyhow::anyhow!("task {} status {}", self.id, self.status))
            })?,
            completed: self.completed,
            message: self.message,
            attempts: self.attempts,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

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
/// wakes this process's worker with [`AppState::tasks_queued`]).
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
/// the next poll ([`POLL`]), so a failure is logged, not returned.
pub async fn notify_queued(pool: &PgPool) {
    if let Err(e) = sqlx::query!("SELECT pg_notify($1, '')", CHANNEL)
        .execute(pool)
        .await
    {
        tracing::warn!(error = %e, "could not notify the workers");
    }
}

/// One task whose resource is visible to `scope`.
pub(crate) async fn fetch(state: &AppState, scope: &Scope, id: Uuid) -> Result<Task, AppError> {
    let row = sqlx::query_as!(
        TaskRow,
        r#"SELECT t.id, t.resource_id, t.kind, t.status, t.completed, t.message, t.attempts,
                  t.created_at AS "created_at: DateTime<Utc>", t.updated_at AS "updated_at: DateTime<Utc>",
                  t.started_at AS "started_at: DateTime<Utc>", t.finished_at AS "finished_at: DateTime<Utc>"
           FROM tasks t JOIN resources r ON r.id = t.resource_id
           WHERE t.id = $1
             AND ($2::text IS NULL OR r.experiment_id = $2)
             AND ($3::text IS NULL OR r.requested_by = $3)"#,
        id,
        scope.experiment_id,
        scope.requested_by
    )
    .fetch_optional(&state.pool)
    .await?;
    match row {
        Some(r) => r.into_wire(state.site()),
        None => Err(AppError::NotFound(format!(
            "task `{}` not found",
            format_id(IdKind::Task, state.site(), id)
        ))),
    }
}

/// `GET /tasks/{id}`.
pub async fn get_task(state: &AppState, principal: &Principal, id: &str) -> Result<Task, AppError> {
    let uuid = path_id(IdKind::Task, state.site(), id)?;
    fetch(state, &Scope::of(principal), uuid).await
}

/// `GET /tasks?resource_id=`: the resource's tasks, oldest first.
pub async fn list_tasks(
    state: &AppState,
    principal: &Principal,
    resource_id: &str,
) -> Result<Vec<Task>, AppError> {
    let uuid = crate::ssr::field_id(IdKind::Resource, state.site(), "resource_id", resource_id)
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    let scope = Scope::of(principal);
    crate::ssr::resources::fetch(state, &scope, uuid).await?;
    let rows = sqlx::query_as!(
        TaskRow,
        r#"SELECT id, resource_id, kind, status, completed, message, attempts,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>",
                  started_at AS "started_at: DateTime<Utc>", finished_at AS "finished_at: DateTime<Utc>"
           FROM tasks WHERE resource_id = $1 ORDER BY created_at, id"#,
        uuid
    )
    .fetch_all(&state.pool)
    .await?;
    rows.into_iter()
        .map(|r| r.into_wire(state.site()))
        .collect()
}

/// This process's worker as request handlers see it: present while [`run_worker`] runs in
/// this process (the default `serve`; absent with `--no-worker`/`RUN_WORKER=false` and in
/// API-only test apps). Handlers reserve one of its free slots per new task, insert the task
/// already claimed by it ([`Reserved::worker_id`], lease [`LEASE`]) and, after the commit,
/// hand it over with [`Reserved::start`]. A slot is one of the worker's
/// `WORKER_CONCURRENCY` permits, shared with its own claims, so the two paths together never
/// run more tasks at once than configured.
#[derive(Default)]
pub struct LocalWorker {
    inner: Mutex<Option<LocalInner>>,
}

#[derive(Clone)]
struct LocalInner {
    worker_id: String,
    slots: Arc<Semaphore>,
    handoff: mpsc::UnboundedSender<Handoff>,
}

/// A task handed from a request to this process's worker, with the record the request
/// already holds and the slot it reserved.
struct Handoff {
    task: Claimed,
    record: ResourceRecord,
    permit: OwnedSemaphorePermit,
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

    /// Makes `worker_id` this process's worker with `concurrency` slots until the returned
    /// [`Attached`] is dropped. [`run_worker`] does this; tests use it to stand in for a
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
/// over but not started stay claimed by it until [`run_worker`]'s shutdown re-queues them
/// or their lease runs out.
pub struct Attached {
    owner: Arc<LocalWorker>,
    worker_id: String,
    slots: Arc<Semaphore>,
    handoffs: mpsc::UnboundedReceiver<Handoff>,
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

/// Claims the next runnable task, if any.
pub async fn claim(pool: &PgPool, worker_id: &str) -> Result<Option<Claimed>, sqlx::Error> {
    let row = sqlx::query!(
        r#"UPDATE tasks SET status = 'running', attempts = attempts + 1, locked_by = $1,
               locked_until = now() + make_interval(secs => $2),
               started_at = COALESCE(started_at, now()), updated_at = now()
           WHERE id = (
               SELECT t.id FROM tasks t
               WHERE ((t.status = 'queued' AND t.run_after <= now())
                      OR (t.status = 'running' AND t.locked_until < now()))
                 AND NOT EXISTS (
                     SELECT 1 FROM tasks p
                     WHERE p.resource_id = t.resource_id
                       AND (p.created_at, p.id) < (t.created_at, t.id)
                       AND p.status IN ('queued', 'running'))
               ORDER BY t.run_after, t.created_at
               LIMIT 1
               FOR UPDATE SKIP LOCKED)
           RETURNING id, resource_id, kind, attempts, max_attempts"#,
        worker_id,
        LEASE.as_secs_f64()
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| {
        Some(Claimed {
            id: r.id,
            resource_id: r.resource_id,
            kind: TaskKind::parse(&r.kind)?,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
        })
    }))
}

/// Progress reporting handed to backends: updates the task's `completed`/`message` and the
/// resource's state, guarded by the lease (a worker that lost its lease writes nothing).
#[derive(Clone)]
pub struct Progress {
    pool: PgPool,
    task_id: Uuid,
    resource_id: Uuid,
    worker_id: String,
}

impl Progress {
    /// A reporter for `task_id` on `resource_id` held by `worker_id` (writes only while that
    /// worker holds the task's lease).
    pub fn new(pool: PgPool, task_id: Uuid, resource_id: Uuid, worker_id: &str) -> Self {
        Self {
            pool,
            task_id,
            resource_id,
            worker_id: worker_id.to_string(),
        }
    }

    /// Sets the task's progress (0-100) and message, and mirrors the message on the resource.
    pub async fn report(&self, completed: i16, message: &str) {
        let result = sqlx::query!(
            r#"WITH t AS (
                   UPDATE tasks SET completed = GREATEST(completed, $3), message = $4, updated_at = now()
                   WHERE id = $1 AND locked_by = $2 AND status = 'running'
                   RETURNING resource_id)
               UPDATE resources SET status_message = $4, updated_at = now()
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

    /// Sets the resource's two state axes, message and (when given) backend details.
    pub async fn set_resource(
        &self,
        allocation: AllocationState,
        operational: OperationalState,
        message: &str,
        details: Option<&BackendDetails>,
    ) {
        self.write_state(None, allocation, operational, message, details)
            .await;
    }

    /// [`Progress::set_resource`] and [`Progress::report`] in one statement (one round trip):
    /// the resource's state axes, message and (when given) backend details, and the task's
    /// `completed` (0-100) and the same message. Backends call it at the step where the
    /// Pod or server has been created, while the API server is busy starting it.
    pub async fn stage(
        &self,
        completed: i16,
        allocation: AllocationState,
        operational: OperationalState,
        message: &str,
        details: Option<&BackendDetails>,
    ) {
        self.write_state(Some(completed), allocation, operational, message, details)
            .await;
    }

    /// The one statement behind both: the resource always; the task's progress only when
    /// `completed` is given and this worker holds the task's lease.
    async fn write_state(
        &self,
        completed: Option<i16>,
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
                   UPDATE tasks SET completed = GREATEST(completed, $6), message = $4, updated_at = now()
                   WHERE $6::smallint IS NOT NULL AND id = $7 AND locked_by = $8
                     AND status = 'running')
               UPDATE resources SET allocation_state = $2, operational_state = $3,
                   status_message = $4, backend_details = COALESCE($5, backend_details),
                   updated_at = now()
               WHERE id = $1"#,
            self.resource_id,
            allocation.as_str(),
            operational.as_str(),
            message,
            details,
            completed.map(|c| c.clamp(0, 100)),
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

/// Runs tasks until `shutdown` turns true; then hands its running tasks back to the queue.
pub async fn run_worker(
    state: AppState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let worker_id = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
        std::process::id(),
        &crate::ids::encode_suffix(Uuid::now_v7())[20..]
    );
    let concurrency = state.config.worker_concurrency;
    let mut listener = sqlx::postgres::PgListener::connect_with(&state.pool).await?;
    listener.listen(CHANNEL).await?;
    let mut attached = state.local_worker.attach(&worker_id, concurrency);
    let slots = attached.slots.clone();
    tracing::info!(%worker_id, concurrency, "task worker started");
    let mut running: JoinSet<()> = JoinSet::new();
    let mut last_reap = tokio::time::Instant::now() - REAP_EVERY;
    loop {
        if last_reap.elapsed() >= REAP_EVERY {
            last_reap = tokio::time::Instant::now();
            if let Err(e) = reap_expired(&state.pool).await {
                tracing::warn!(error = %e, "expiry sweep failed");
            }
        }
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            match claim(&state.bookkeeping, &worker_id).await {
                Ok(Some(task)) => {
                    let state = state.clone();
                    let worker_id = worker_id.clone();
                    running.spawn(async move {
                        run_task(state, worker_id, task, None).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a task failed");
                    break;
                }
            }
        }
        tokio::select! {
            n = listener.recv() => {
                if let Err(e) = n {
                    tracing::warn!(error = %e, "task notification listener failed; reconnecting");
                    tokio::time::sleep(POLL).await;
                }
            }
            Some(h) = attached.handoffs.recv() => {
                let state = state.clone();
                let worker_id = worker_id.clone();
                running.spawn(async move {
                    run_task(state, worker_id, h.task, Some(h.record)).await;
                    drop(h.permit);
                });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = state.task_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => break,
        }
    }
    // No more hand-offs; what was sent but not started is re-queued with the rest below.
    drop(attached);
    running.abort_all();
    while running.join_next().await.is_some() {}
    let released = sqlx::query!(
        r#"UPDATE tasks SET status = 'queued', locked_by = NULL, locked_until = NULL,
               run_after = now(), message = 'interrupted by a worker shutdown; queued again',
               updated_at = now()
           WHERE locked_by = $1 AND status = 'running'"#,
        worker_id
    )
    .execute(&state.pool)
    .await?;
    tracing::info!(released = released.rows_affected(), "task worker stopped");
    Ok(())
}

/// Marks expired live resources `deleting` and enqueues their delete tasks.
pub async fn reap_expired(pool: &PgPool) -> Result<u64, AppError> {
    let mut tx = pool.begin().await?;
    let due = sqlx::query_scalar!(
        r#"SELECT id FROM resources
           WHERE expires_at <= now() AND allocation_state IN ('requested', 'provisioning', 'provisioned')
           ORDER BY expires_at LIMIT 100 FOR UPDATE SKIP LOCKED"#
    )
    .fetch_all(&mut *tx)
    .await?;
    for id in &due {
        sqlx::query!(
            r#"UPDATE resources SET allocation_state = 'deleting',
                   status_message = 'expired; deleting', updated_at = now() WHERE id = $1"#,
            id
        )
        .execute(&mut *tx)
        .await?;
        enqueue(&mut tx, *id, TaskKind::Delete).await?;
    }
    tx.commit().await?;
    if !due.is_empty() {
        tracing::info!(count = due.len(), "expired resources queued for deletion");
    }
    Ok(due.len() as u64)
}

enum Outcome {
    Finished(String),
    Cancelled(String),
    Failed(BackendError),
    LeaseLost,
}

/// Runs one claimed task to an outcome and records it.
#[tracing::instrument(skip_all, fields(task = %task.id, resource = %task.resource_id, kind = task.kind.as_str(), attempt = task.attempts))]
async fn run_task(
    state: AppState,
    worker_id: String,
    task: Claimed,
    record: Option<ResourceRecord>,
) {
    let progress = Progress {
        pool: state.bookkeeping.clone(),
        task_id: task.id,
        resource_id: task.resource_id,
        worker_id: worker_id.clone(),
    };
    let outcome = if task.attempts > task.max_attempts {
        Outcome::Failed(BackendError::permanent(format!(
            "gave up after {} attempts (the worker running it stopped)",
            task.max_attempts
        )))
    } else {
        // A hand-off from a request brings the record the request just wrote.
        let loaded = match record {
            Some(record) => Ok(record),
            None => ResourceRecord::load(&state, task.resource_id).await,
        };
        match loaded {
            Ok(record) => supervise(&state, &worker_id, &task, &progress, record).await,
            Err(e) => Outcome::Failed(BackendError::retryable(format!(
                "loading the resource: {e}"
            ))),
        }
    };
    if let Err(e) = finish(&state, &worker_id, &task, &progress, outcome).await {
        tracing::error!(error = %e, "recording the task outcome failed; its lease will expire and it will run again");
    }
}

/// Runs the backend call next to a heartbeat that renews the lease and, for creates,
/// notices a deletion request.
async fn supervise(
    state: &AppState,
    worker_id: &str,
    task: &Claimed,
    progress: &Progress,
    record: ResourceRecord,
) -> Outcome {
    let Some(backend) = state.backends.for_type(record.flavor_type) else {
        return Outcome::Failed(BackendError::permanent(format!(
            "this site has no backend for {} resources",
            record.flavor_type.as_str()
        )));
    };
    if task.kind == TaskKind::Create && record.allocation_state == AllocationState::Deleting {
        return Outcome::Cancelled("cancelled: the resource's deletion was requested".into());
    }
    let work = async {
        match task.kind {
            TaskKind::Create => {
                // At most one write before the backend starts (the claim already marked the
                // task running): the sooner the Pod or server is requested, the sooner it
                // runs. A task handed over by its request starts with the resource already
                // `provisioning` (written by that request's insert): no write at all.
                if !(task.attempts == 1 && record.allocation_state == AllocationState::Provisioning)
                {
                    progress
                        .set_resource(
                            AllocationState::Provisioning,
                            OperationalState::Pending,
                            "provisioning",
                            None,
                        )
                        .await;
                }
                backend
                    .create(&record, progress)
                    .await
                    .map(|details| (details, "ready".to_string()))
            }
            TaskKind::Delete => {
                progress.report(10, "deleting").await;
                backend
                    .delete(&record, progress)
                    .await
                    .map(|()| (BackendDetails::default(), "deleted".to_string()))
            }
        }
    };
    let heartbeat = async {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.tick().await;
        loop {
            tick.tick().await;
            let row = sqlx::query!(
                r#"WITH t AS (
                       UPDATE tasks SET locked_until = now() + make_interval(secs => $3)
                       WHERE id = $1 AND locked_by = $2 AND status = 'running'
                       RETURNING resource_id)
                   SELECT r.allocation_state FROM resources r JOIN t ON t.resource_id = r.id"#,
                task.id,
                worker_id,
                LEASE.as_secs_f64()
            )
            .fetch_optional(&state.bookkeeping)
            .await;
            match row {
                Ok(None) => return Outcome::LeaseLost,
                Ok(Some(r))
                    if task.kind == TaskKind::Create && r.allocation_state == "deleting" =>
                {
                    return Outcome::Cancelled(
                        "cancelled: the resource's deletion was requested".into(),
                    )
                }
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    };
    tokio::select! {
        result = work => match result {
            Ok((details, message)) => {
                if task.kind == TaskKind::Create {
                    progress
                        .set_resource(
                            AllocationState::Provisioned,
                            OperationalState::Ready,
                            &message,
                            Some(&details),
                        )
                        .await;
                }
                Outcome::Finished(message)
            }
            Err(e) => Outcome::Failed(e),
        },
        outcome = heartbeat => outcome,
    }
}

/// Records the outcome on the task and its resource (one transaction per outcome).
async fn finish(
    state: &AppState,
    worker_id: &str,
    task: &Claimed,
    progress: &Progress,
    outcome: Outcome,
) -> Result<(), AppError> {
    match outcome {
        Outcome::LeaseLost => {
            tracing::warn!("lease lost; another worker owns this task now");
            Ok(())
        }
        Outcome::Finished(message) => {
            if task.kind == TaskKind::Delete {
                sqlx::query!(
                    r#"UPDATE resources SET
                           allocation_state = CASE WHEN expires_at <= now() THEN 'expired' ELSE 'deleted' END,
                           operational_state = 'pending', status_message = $2,
                           backend_details = '{}'::jsonb, updated_at = now()
                       WHERE id = $1"#,
                    task.resource_id,
                    message
                )
                .execute(&state.pool)
                .await?;
            }
            complete(state, task.id, worker_id, TaskStatus::Finished, &message).await
        }
        Outcome::Cancelled(message) => {
            complete(state, task.id, worker_id, TaskStatus::Failed, &message).await
        }
        Outcome::Failed(error) if error.retryable && task.attempts < task.max_attempts => {
            let delay = backoff(task.attempts);
            let message = format!(
                "attempt {} of {} failed: {}; retrying in {} s",
                task.attempts,
                task.max_attempts,
                error.message,
                delay.as_secs()
            );
            tracing::warn!(error = %error.message, retry_in_s = delay.as_secs(), "task attempt failed");
            sqlx::query!(
                r#"UPDATE tasks SET status = 'queued', locked_by = NULL, locked_until = NULL,
                       run_after = now() + make_interval(secs => $3), message = $4, updated_at = now()
                   WHERE id = $1 AND locked_by = $2"#,
                task.id,
                worker_id,
                delay.as_secs_f64(),
                message
            )
            .execute(&state.pool)
            .await?;
            sqlx::query!(
                "UPDATE resources SET status_message = $2, updated_at = now() WHERE id = $1",
                task.resource_id,
                message
            )
            .execute(&state.pool)
            .await?;
            Ok(())
        }
        Outcome::Failed(error) => {
            tracing::warn!(error = %error.message, "task failed");
            match task.kind {
                TaskKind::Create => {
                    // Leave nothing half-made behind: remove whatever the backend created.
                    if let Ok(record) = ResourceRecord::load(state, task.resource_id).await {
                        if let Some(backend) = state.backends.for_type(record.flavor_type) {
                            if let Err(e) = backend.delete(&record, progress).await {
                                tracing::warn!(error = %e.message, "cleanup after a failed create failed");
                            }
                        }
                    }
                    progress
                        .set_resource(
                            AllocationState::Failed,
                            OperationalState::Error,
                            &error.message,
                            Some(&BackendDetails::default()),
                        )
                        .await;
                }
                TaskKind::Delete => {
                    sqlx::query!(
                        "UPDATE resources SET status_message = $2, operational_state = 'error', updated_at = now() WHERE id = $1",
                        task.resource_id,
                        format!("deletion failed: {}", error.message)
                    )
                    .execute(&state.pool)
                    .await?;
                }
            }
            complete(
                state,
                task.id,
                worker_id,
                TaskStatus::Failed,
                &error.message,
            )
            .await
        }
    }
}

/// Marks the task finished or failed. The resource's own writes are committed by now: the
/// list cache is invalidated first, so a client that sees the task end never reads an older
/// resource list afterwards.
async fn complete(
    state: &AppState,
    id: Uuid,
    worker_id: &str,
    status: TaskStatus,
    message: &str,
) -> Result<(), AppError> {
    state.list_cache.invalidate();
    sqlx::query!(
        r#"UPDATE tasks SET status = $3, message = $4,
               completed = CASE WHEN $3 = 'finished' THEN 100 ELSE completed END,
               locked_by = NULL, locked_until = NULL, finished_at = now(), updated_at = now()
           WHERE id = $1 AND locked_by = $2"#,
        id,
        worker_id,
        status.as_str(),
        message
    )
    .execute(&state.pool)
    .await?;
    Ok(())
}

/// 2^attempt seconds, at most 60.
pub fn backoff(attempt: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.clamp(1, 6) as u32).min(60))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (1..=8).map(|a| super::backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
