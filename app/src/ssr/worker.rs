//! The task worker: claims tasks from the queue (`queue`) or takes them handed over by this
//! process's requests, runs each against its backend next to a heartbeat that keeps the
//! lease, records the outcome, and sweeps expired resources. Several workers (in-process or
//! `slices-blueprint worker`) share one database safely: see the guarantees in `queue`.

use crate::model::{AllocationState, TaskKind};
use crate::ssr::backend::{BackendError, Backends, ResourceRecord};
use crate::ssr::list_cache::ListCache;
use crate::ssr::queue::{
    self, Attached, Claimed, LocalWorker, Outcome, PgProgress, TaskSlot, HEARTBEAT,
};
use crate::ssr::reconcile::Reconciler;
use crate::ssr::rows::{load_record, load_records};
use crate::ssr::singleton;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Fallback poll for retries that became due and expired leases.
const POLL: Duration = Duration::from_secs(1);
/// How often the expiry sweep runs (one indexed query; a resource is torn down at most this
/// long after its `expires_at`, plus the delete itself).
const REAP_EVERY: Duration = Duration::from_secs(2);
/// Tasks that only wait for their backend (a Pod being started) per slot: they give their
/// slot back ([`TaskSlot`]) while this many places per slot are free.
pub const WAITING_PER_SLOT: usize = 8;
/// Most tasks claimed by one statement ([`queue::claim_many`]).
const CLAIM_BATCH: usize = 32;
/// The share of a worker's slots worth a claim at once (a quarter). With fewer free, a claim
/// waits until [`CLAIM_GAP`] has passed since the last one: during a burst, slots come free one
/// by one (each create gives its slot back once its Pod is made), and a claim ranks every
/// runnable task (about 2 ms with 900 queued). A worker of 4 or fewer slots claims at once.
const CLAIM_SHARE: usize = 4;
/// The shortest time between two claims for fewer than a [`CLAIM_SHARE`] of the slots, and
/// between two claims after one that found the queue dry, unless tasks were queued since.
/// In a burst of 1,000 Pods the queue drains within seconds while the creates still wait for
/// their Pods, and each create that ended used to start a claim that found nothing (700 of
/// them, PostgreSQL's largest work in the burst).
const CLAIM_GAP: Duration = Duration::from_millis(100);

/// What the worker works with (taken from the application state by its entry point).
#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    /// Connections for claims, heartbeats and progress (`queue::bookkeeping_pool`).
    pub bookkeeping: PgPool,
    /// The site part of typed ids.
    pub site: String,
    pub backends: Backends,
    pub list_cache: Arc<ListCache>,
    /// This process's hand-over point ([`LocalWorker`]).
    pub local: Arc<LocalWorker>,
    /// Tasks run at once (`WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Running tasks one experiment may hold at once, over all workers
    /// (`WORKER_SLOTS_PER_EXPERIMENT`).
    pub slots_per_experiment: usize,
    /// How long a task waits out an unreachable backend (`OUTAGE_BUDGET_SECS`).
    pub outage_budget: Duration,
    /// How long an unknown Pod or server of ours may live (`ORPHAN_GRACE_SECS`).
    pub orphan_grace: Duration,
    /// Between two reconcile passes over the VMs of one (user, cloud) (`VM_RECONCILE_SECS`).
    pub vm_reconcile_every: Duration,
    /// How long audit entries are kept (`AUDIT_RETENTION_DAYS`; `None`: forever).
    pub audit_retention_days: Option<u32>,
}

/// How often audit entries past their retention are purged.
const AUDIT_PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Purges audit entries older than `days` now and every [`AUDIT_PURGE_EVERY`] until
/// `shutdown` turns true; one process at a time purges ([`singleton::AUDIT_PURGE`]).
async fn purge_audit_forever(
    pool: PgPool,
    days: u32,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(AUDIT_PURGE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
        match crate::ssr::audit::purge(&pool, before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                days,
                "purged audit entries past their retention"
            ),
            Err(e) => tracing::warn!(error = %e, "purging old audit entries failed"),
        }
    }
}

/// A process-unique worker id: `<HOSTNAME>-<pid>-<random>`.
fn worker_id() -> String {
    format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
        std::process::id(),
        &crate::ids::encode_suffix(Uuid::now_v7())[20..]
    )
}

/// Runs tasks until `shutdown` turns true; then hands its running tasks back to the queue.
pub async fn run_worker(
    worker: Worker,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let worker_id = worker_id();
    let mut listener = sqlx::postgres::PgListener::connect_with(&worker.pool).await?;
    listener.listen(queue::CHANNEL).await?;
    let mut attached = worker.local.attach(&worker_id, worker.concurrency);
    let waiting = Arc::new(Semaphore::new(worker.concurrency * WAITING_PER_SLOT));
    let leases = Arc::new(Leases::default());
    let heartbeat = tokio::spawn(
        leases
            .clone()
            .renew_forever(worker.bookkeeping.clone(), worker_id.clone()),
    );
    let (writer, writing) = queue::TaskWriter::start(
        worker.pool.clone(),
        worker.bookkeeping.clone(),
        worker.list_cache.clone(),
        worker_id.clone(),
    );
    let runner = Runner {
        worker: &worker,
        worker_id: &worker_id,
        waiting: &waiting,
        leases: &leases,
        writer,
    };
    tracing::info!(%worker_id, concurrency = worker.concurrency, "task worker started");
    let reconciling = start_housekeeping(&worker, &worker_id, &shutdown);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut last_reap = tokio::time::Instant::now() - REAP_EVERY;
    let mut claims = ClaimPacer::new(worker.concurrency);
    loop {
        reap_when_due(&worker.pool, &mut last_reap).await;
        let deferred = claims.next(
            attached.slots.available_permits(),
            tokio::time::Instant::now(),
        );
        if deferred.is_none() {
            let dry = claim_free_slots(&runner, &attached, &mut running).await;
            claims.ran_dry(dry);
        }
        let claim_due = deferred.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = tokio::time::sleep_until(claim_due), if deferred.is_some() => {}
            n = listener.recv() => {
                claims.fresh();
                if let Err(e) = n {
                    tracing::warn!(error = %e, "task notification listener failed; reconnecting");
                    tokio::time::sleep(POLL).await;
                }
            }
            Some(h) = attached.handoffs.recv() => {
                runner.start(&mut running, h.task, Some(h.record), h.permit);
            }
            // A task ended or gave its slot back: a task waiting behind it (a delete after its
            // create, an experiment at its share) may be runnable now.
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = worker.local.freed() => {}
            _ = worker.local.woken() => claims.fresh(),
            _ = tokio::time::sleep(POLL) => claims.fresh(),
            _ = shutdown.changed() => break,
        }
    }
    // No more hand-offs; what was sent but not started is re-queued with the rest below.
    drop(attached);
    reconciling.abort();
    running.abort_all();
    heartbeat.abort();
    while running.join_next().await.is_some() {}
    // The writer ends with the last outcome handed to it (before the release below).
    drop(runner);
    if let Err(e) = writing.await {
        tracing::warn!(error = %e, "the outcome writer ended abnormally");
    }
    let released = queue::release(&worker.pool, &worker_id).await?;
    tracing::info!(released, "task worker stopped");
    Ok(())
}

/// Starts the worker's companions until `shutdown`: the reconciler (its handle, aborted when
/// the worker stops; its reconcile tasks are `worker_id`'s, handed back with the others) and,
/// with a retention set, the audit purge.
fn start_housekeeping(
    worker: &Worker,
    worker_id: &str,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let reconciler = Reconciler::new(
        worker.pool.clone(),
        worker.site.clone(),
        worker.backends.clone(),
        worker.list_cache.clone(),
        (worker.orphan_grace, worker.vm_reconcile_every),
        worker_id.to_string(),
    );
    if let Some(days) = worker.audit_retention_days {
        tokio::spawn(purge_audit_forever(
            worker.pool.clone(),
            days,
            shutdown.clone(),
        ));
    }
    tokio::spawn(reconciler.run(shutdown.clone()))
}

/// What the worker loop lends each task it starts.
struct Runner<'a> {
    worker: &'a Worker,
    worker_id: &'a str,
    /// Places of tasks that only wait ([`TaskSlot`]).
    waiting: &'a Arc<Semaphore>,
    leases: &'a Arc<Leases>,
    /// Writes outcomes and progress steps together ([`queue::TaskWriter`]).
    writer: queue::TaskWriter,
}

impl Runner<'_> {
    /// Runs `task` on `running` in the slot `permit` (traded for a waiting place while it
    /// only waits), its lease renewed with the others until it ends.
    fn start(
        &self,
        running: &mut JoinSet<()>,
        task: Claimed,
        record: Option<ResourceRecord>,
        permit: OwnedSemaphorePermit,
    ) {
        let slot = TaskSlot::new(permit, self.waiting.clone(), self.worker.local.clone());
        let lease = self.leases.register(task.id);
        let worker = self.worker.clone();
        let worker_id = self.worker_id.to_string();
        let writer = self.writer.clone();
        running.spawn(async move {
            run_task(&worker, &worker_id, &writer, task, record, slot, lease).await;
        });
    }
}

/// When the worker loop claims: at once while a [`CLAIM_SHARE`] of the slots is free or the
/// last claim is [`CLAIM_GAP`] old, else at the end of that gap (slots freed meanwhile join
/// that claim); after a claim that found no more runnable tasks, only at the end of that gap,
/// unless tasks were queued or came due since ([`ClaimPacer::fresh`]).
struct ClaimPacer {
    /// Free slots that claim at once.
    enough: usize,
    last: Option<tokio::time::Instant>,
    /// The last claim found fewer runnable tasks than it asked for.
    dry: bool,
}

impl ClaimPacer {
    /// The pacer of a worker with `concurrency` slots.
    fn new(concurrency: usize) -> Self {
        Self {
            enough: (concurrency / CLAIM_SHARE).max(1),
            last: None,
            dry: false,
        }
    }

    /// At `now`, with `free` slots: `None` to claim now (recorded as the last claim; with no
    /// free slot there is nothing to claim), `Some(t)` to wait until `t`.
    fn next(&mut self, free: usize, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if free == 0 {
            return None;
        }
        if let Some(due) = self.last.map(|last| last + CLAIM_GAP) {
            if (self.dry || free < self.enough) && now < due {
                return Some(due);
            }
        }
        self.last = Some(now);
        None
    }

    /// What the claim [`ClaimPacer::next`] allowed found: `dry` when fewer tasks than asked.
    fn ran_dry(&mut self, dry: bool) {
        self.dry = dry;
    }

    /// Tasks were queued (a notification, this process's requests) or may have come due (the
    /// poll): the next claim need not wait for the gap.
    fn fresh(&mut self) {
        self.dry = false;
    }
}

/// Claims queued tasks while the worker has free slots (up to [`CLAIM_BATCH`] per
/// statement), and starts each. True when a claim found fewer runnable tasks than it asked
/// for (or failed): the queue has run dry for now.
async fn claim_free_slots(
    runner: &Runner<'_>,
    attached: &Attached,
    running: &mut JoinSet<()>,
) -> bool {
    let worker = runner.worker;
    loop {
        let permits: Vec<_> =
            std::iter::from_fn(|| attached.slots.clone().try_acquire_owned().ok())
                .take(CLAIM_BATCH)
                .collect();
        if permits.is_empty() {
            return false;
        }
        let asked = permits.len();
        let claimed = match queue::claim_many(
            &worker.bookkeeping,
            runner.worker_id,
            worker.slots_per_experiment,
            asked,
        )
        .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming tasks failed");
                return true;
            }
        };
        let got = claimed.len();
        let mut records = claimed_records(worker, &claimed).await;
        // Fewer than asked: the unused permits go back when dropped.
        for (task, permit) in claimed.into_iter().zip(permits) {
            let record = records.remove(&task.resource_id);
            runner.start(running, task, record, permit);
        }
        if got < asked {
            return true;
        }
    }
}

/// The records of `claimed`'s resources by id, loaded in one statement. A resource missing
/// from it (or all of them, when the statement fails) is loaded again by its task.
async fn claimed_records(worker: &Worker, claimed: &[Claimed]) -> HashMap<Uuid, ResourceRecord> {
    let ids: Vec<Uuid> = claimed.iter().map(|task| task.resource_id).collect();
    if ids.is_empty() {
        return HashMap::new();
    }
    match load_records(&worker.pool, &worker.site, &ids).await {
        Ok(records) => records.into_iter().map(|r| (r.id, r)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "loading the claimed resources failed; each task loads its own");
            HashMap::new()
        }
    }
}

/// Runs [`reap_expired`] when [`REAP_EVERY`] has passed since `last`.
async fn reap_when_due(pool: &PgPool, last: &mut tokio::time::Instant) {
    if last.elapsed() < REAP_EVERY {
        return;
    }
    *last = tokio::time::Instant::now();
    if let Err(e) = reap_expired(pool).await {
        tracing::warn!(error = %e, "expiry sweep failed");
    }
}

/// Marks expired live resources `deleting` and enqueues their delete tasks, unless another
/// process is sweeping now ([`singleton::EXPIRY_SWEEP`], held by this transaction).
pub async fn reap_expired(pool: &PgPool) -> Result<u64, crate::error::AppError> {
    let mut tx = pool.begin().await?;
    if !singleton::try_lock_in(&mut tx, singleton::EXPIRY_SWEEP).await? {
        return Ok(0);
    }
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
                   status_message = 'expired; deleting' WHERE id = $1"#,
            id
        )
        .execute(&mut *tx)
        .await?;
        queue::enqueue(&mut tx, *id, TaskKind::Delete).await?;
    }
    tx.commit().await?;
    if !due.is_empty() {
        tracing::info!(count = due.len(), "expired resources queued for deletion");
    }
    Ok(due.len() as u64)
}

/// Runs one claimed task to an outcome and records it.
#[tracing::instrument(skip_all, fields(task = %task.id, resource = %task.resource_id, kind = task.kind.as_str(), attempt = task.attempts))]
async fn run_task(
    worker: &Worker,
    worker_id: &str,
    writer: &queue::TaskWriter,
    task: Claimed,
    record: Option<ResourceRecord>,
    slot: TaskSlot,
    lease: LeaseWatch,
) {
    let started = std::time::Instant::now();
    let progress = PgProgress::new(
        worker.bookkeeping.clone(),
        task.id,
        task.resource_id,
        worker_id,
    )
    .with_slot(slot)
    .with_writer(writer.clone());
    let outcome = if task.attempts > task.max_attempts {
        Outcome::Failed(BackendError::permanent(format!(
            "gave up after {} attempts (the worker running it stopped)",
            task.max_attempts
        )))
    } else {
        // A hand-off from a request brings the record the request just wrote.
        let loaded = match record {
            Some(record) => Ok(record),
            None => load_record(&worker.pool, &worker.site, task.resource_id).await,
        };
        match loaded {
            Ok(record) => supervise(worker, &task, &progress, &record, lease).await,
            Err(e) => Outcome::Failed(BackendError::retryable(format!(
                "loading the resource: {e}"
            ))),
        }
    };
    if matches!(outcome, Outcome::Failed(_)) && !outcome.retries(&task) {
        clean_up_failed(worker, &task, &progress).await;
    }
    let label = match &outcome {
        Outcome::Finished { .. } => "finished",
        Outcome::Cancelled(_) => "cancelled",
        Outcome::Failed(_) if outcome.retries(&task) => "retry",
        Outcome::Failed(_) => "failed",
        Outcome::LeaseLost => "lease_lost",
    };
    crate::ssr::metrics::task_finished(task.kind.as_str(), label, started.elapsed().as_secs_f64());
    if let Err(e) = queue::record_outcome(
        &worker.pool,
        &worker.list_cache,
        Some(writer),
        worker_id,
        &task,
        outcome,
        worker.outage_budget,
    )
    .await
    {
        tracing::error!(error = %e, "recording the task outcome failed; its lease will expire and it will run again");
    }
}

/// A create that failed for good leaves nothing half-made behind: whatever the backend
/// created is removed before the failure is recorded.
async fn clean_up_failed(worker: &Worker, task: &Claimed, progress: &PgProgress) {
    if task.kind != TaskKind::Create {
        return;
    }
    let Ok(record) = load_record(&worker.pool, &worker.site, task.resource_id).await else {
        return;
    };
    if let Some(backend) = worker.backends.for_type(record.flavor_type) {
        if let Err(e) = backend.delete(&record, progress).await {
            tracing::warn!(error = %e.message, "cleanup after a failed create failed");
        }
    }
}

/// Runs the backend call next to a heartbeat that renews the lease and, for creates,
/// notices a deletion request; whichever ends first decides the outcome.
async fn supervise(
    worker: &Worker,
    task: &Claimed,
    progress: &PgProgress,
    record: &ResourceRecord,
    lease: LeaseWatch,
) -> Outcome {
    if task.kind == TaskKind::Create && record.allocation_state == AllocationState::Deleting {
        return Outcome::Cancelled("cancelled: the resource's deletion was requested".into());
    }
    tokio::select! {
        outcome = work(worker, task, progress, record) => outcome,
        outcome = heartbeat(task, lease) => outcome,
    }
}

/// The backend call of a task.
async fn work(
    worker: &Worker,
    task: &Claimed,
    progress: &PgProgress,
    record: &ResourceRecord,
) -> Outcome {
    let Some(backend) = worker.backends.for_type(record.flavor_type) else {
        return Outcome::Failed(BackendError::permanent(format!(
            "this site has no backend for {} resources",
            record.flavor_type.as_str()
        )));
    };
    let started = std::time::Instant::now();
    let result = match task.kind {
        TaskKind::Create => {
            // No write before the backend starts: the claim (or the request that handed the
            // task over) already marked the resource `provisioning`; the sooner the Pod or
            // server is requested, the sooner it runs.
            backend.create(record, progress).await.map(Some)
        }
        TaskKind::Delete => {
            crate::ssr::backend::Progress::report(progress, 10, "deleting").await;
            backend.delete(record, progress).await.map(|()| None)
        }
    };
    crate::ssr::metrics::backend_call(
        record.flavor_type.as_str(),
        task.kind.as_str(),
        result.is_ok(),
        started.elapsed().as_secs_f64(),
    );
    match result {
        Ok(details) => Outcome::Finished {
            message: match task.kind {
                TaskKind::Create => "ready",
                TaskKind::Delete => "deleted",
            }
            .to_string(),
            details,
        },
        Err(e) => Outcome::Failed(e),
    }
}

/// Ends only when the worker's heartbeat finds the lease lost, or a create's resource being
/// deleted.
async fn heartbeat(task: &Claimed, mut lease: LeaseWatch) -> Outcome {
    loop {
        if lease.rx.changed().await.is_err() {
            // The sender lives in `Leases` until this watch is dropped: not reached while
            // the task runs, but never spin if it were.
            std::future::pending::<()>().await;
        }
        let state = *lease.rx.borrow_and_update();
        match state {
            Lease::Lost => return Outcome::LeaseLost,
            Lease::Deleting if task.kind == TaskKind::Create => {
                return Outcome::Cancelled(
                    "cancelled: the resource's deletion was requested".into(),
                )
            }
            Lease::Held | Lease::Deleting => {}
        }
    }
}

/// What the last heartbeat found of a running task's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    Held,
    /// Held, and the task's resource is being deleted.
    Deleting,
    /// Another worker owns the task now, or it ended.
    Lost,
}

/// The leases of this worker's running tasks, renewed together every [`HEARTBEAT`] by one
/// statement ([`queue::renew_leases`]) rather than one per task: a burst of 500 tasks
/// waiting for their Pods used to send 500 renewals at the same moment.
#[derive(Default)]
struct Leases {
    tasks: std::sync::Mutex<HashMap<Uuid, tokio::sync::watch::Sender<Lease>>>,
}

/// A running task's view of its lease; unregistered when dropped.
struct LeaseWatch {
    leases: Arc<Leases>,
    task: Uuid,
    rx: tokio::sync::watch::Receiver<Lease>,
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.task);
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, tokio::sync::watch::Sender<Lease>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews `task`'s lease with the others from now on.
    fn register(self: &Arc<Self>, task: Uuid) -> LeaseWatch {
        let (tx, rx) = tokio::sync::watch::channel(Lease::Held);
        self.lock().insert(task, tx);
        LeaseWatch {
            leases: self.clone(),
            task,
            rx,
        }
    }

    /// Every [`HEARTBEAT`]: renews the leases of the registered tasks and tells each what
    /// was found. Runs until aborted.
    async fn renew_forever(self: Arc<Self>, pool: PgPool, worker_id: String) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let ids: Vec<Uuid> = self.lock().keys().copied().collect();
            if ids.is_empty() {
                continue;
            }
            let renewed = match queue::renew_leases(&pool, &worker_id, &ids).await {
                Ok(rows) => rows.into_iter().collect::<HashMap<_, _>>(),
                Err(e) => {
                    tracing::warn!(error = %e, tasks = ids.len(), "heartbeat failed");
                    continue;
                }
            };
            let tasks = self.lock();
            for id in ids {
                let Some(tx) = tasks.get(&id) else { continue };
                let state = match renewed.get(&id) {
                    None => Lease::Lost,
                    Some(AllocationState::Deleting) => Lease::Deleting,
                    Some(_) => Lease::Held,
                };
                tx.send_if_modified(|current| std::mem::replace(current, state) != state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ClaimPacer, CLAIM_GAP};
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn few_free_slots_wait_for_the_gap_a_quarter_claims_at_once() {
        let start = Instant::now();
        let mut pacer = ClaimPacer::new(64);
        assert_eq!(
            pacer.next(1, start),
            None,
            "the first claim is never held back"
        );
        let soon = start + Duration::from_millis(5);
        assert_eq!(pacer.next(1, soon), Some(start + CLAIM_GAP));
        assert_eq!(
            pacer.next(0, soon),
            None,
            "no free slot: nothing to wait for"
        );
        assert_eq!(
            pacer.next(16, soon),
            None,
            "a quarter of the slots claims at once"
        );
        let later = soon + CLAIM_GAP;
        assert_eq!(
            pacer.next(15, later - Duration::from_millis(1)),
            Some(later)
        );
        assert_eq!(pacer.next(15, later), None);
        // A small worker claims for every freed slot, as before.
        let mut small = ClaimPacer::new(4);
        assert_eq!(small.next(1, start), None);
        assert_eq!(small.next(1, soon), None);
    }

    #[test]
    fn after_a_dry_claim_only_new_tasks_claim_before_the_gap() {
        let start = Instant::now();
        let mut pacer = ClaimPacer::new(64);
        assert_eq!(pacer.next(40, start), None);
        pacer.ran_dry(true);
        let soon = start + Duration::from_millis(5);
        assert_eq!(
            pacer.next(64, soon),
            Some(start + CLAIM_GAP),
            "a task that ended does not make the dry queue worth a claim at once"
        );
        pacer.fresh();
        assert_eq!(pacer.next(64, soon), None, "tasks were queued: claim now");
        pacer.ran_dry(false);
        assert_eq!(pacer.next(64, soon + Duration::from_millis(1)), None);
    }
}
