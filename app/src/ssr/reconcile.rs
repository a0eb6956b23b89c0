//! The reconciler: desired state lives in Postgres, observed state comes from the backends
//! ([`ComputeBackend::observe`]); a pass compares the two the way a Kubernetes controller
//! does (level-triggered: it looks at what is, not at events it may have missed), and acts:
//!
//! - A `provisioned` resource whose Pod or server is gone, or has ended for good, becomes
//!   `failed` with "deleted outside slices-blueprint" (the policy chosen here: the object
//!   may have been removed on purpose, and re-creating it would lose whatever the
//!   experimenter saw go; README "Lifecycle").
//! - A `provisioned` resource's object that is not working (CrashLoopBackOff, image pull
//!   errors, Nova `ERROR`/`SHUTOFF`) or restarted sets `operational_state` and
//!   `status_message`; when it works again, `ready`.
//! - An object carrying our marks whose resource the database does not know, or knows as
//!   ended (`deleted`, `expired`, `failed`), is an orphan: deleted once this process has
//!   seen it orphaned for `ORPHAN_GRACE_SECS`, and logged.
//!
//! Resources with an unfinished task are left to that task. The database is read before the
//! backend is observed, so an object made after the read is never taken for an orphan (its
//! resource row was written before it). One process at a time reconciles: each pass holds the
//! advisory lock of [`singleton::RECONCILE`] (a process that does not get it skips the
//! pass); every write is one statement guarded by the state it expects, and orphan deletes name the object's uid, so a pass that races a task or another process changes
//! nothing that moved on.

use crate::error::AppError;
use crate::ids::{parse_id, IdKind};
use crate::model::{AllocationState, FlavorType, OperationalState};
use crate::ssr::backend::{Backends, ComputeBackend, ObjectHandle, Observed, ObservedHealth};
use crate::ssr::list_cache::ListCache;
use crate::ssr::singleton;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often Pods are compared (from the shared watch's memory: no API call while it is live).
pub const PASS_EVERY: Duration = Duration::from_secs(2);

/// The reconciler of one process.
pub struct Reconciler {
    pub pool: PgPool,
    pub site: String,
    pub backends: Backends,
    pub list_cache: Arc<ListCache>,
    /// How long an orphan may live (`ORPHAN_GRACE_SECS`).
    pub orphan_grace: Duration,
    /// Between two passes over VMs (`VM_RECONCILE_SECS`, jittered).
    pub vm_every: Duration,
    /// When this process first saw each current orphan.
    orphans: HashMap<ObjectHandle, Instant>,
    next_vm_pass: Instant,
}

/// What one pass did (for the log and the tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Whether this process held the lock and compared anything.
    pub ran: bool,
    /// Resources marked failed because their object was gone or ended.
    pub gone: u32,
    /// Resources whose operational state or message changed.
    pub reflected: u32,
    /// Orphans deleted.
    pub orphans_removed: u32,
}

/// One resource as the database wants it.
struct Desired {
    allocation: AllocationState,
    operational: OperationalState,
    message: String,
    /// An unfinished task owns it.
    busy: bool,
    /// The requesting user (whose clouds.yaml a VM lives in).
    owner: Option<String>,
    /// Where its object lives within the owner's backend: the disk image's `cluster_id`
    /// (OpenStack: a cloud name, `default` for the owner's default cloud).
    scope: String,
}

impl Reconciler {
    pub fn new(
        pool: PgPool,
        site: String,
        backends: Backends,
        list_cache: Arc<ListCache>,
        orphan_grace: Duration,
        vm_every: Duration,
    ) -> Self {
        Self {
            pool,
            site,
            backends,
            list_cache,
            orphan_grace,
            vm_every,
            orphans: HashMap::new(),
            next_vm_pass: Instant::now(),
        }
    }

    /// Runs a pass every [`PASS_EVERY`] until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PASS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.pass().await {
                Ok(report) if report.gone + report.reflected + report.orphans_removed > 0 => {
                    tracing::info!(?report, "reconcile pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
            }
        }
    }

    /// One pass over every backend, if this process gets the reconcile lock.
    pub async fn pass(&mut self) -> Result<PassReport, AppError> {
        let pool = self.pool.clone();
        singleton::exclusive(&pool, singleton::RECONCILE, self.pass_locked())
            .await?
            .unwrap_or_else(|| Ok(PassReport::default()))
    }

    async fn pass_locked(&mut self) -> Result<PassReport, AppError> {
        let mut report = PassReport {
            ran: true,
            ..PassReport::default()
        };
        let mut orphans_now = HashSet::new();
        // The database first, then the backends (see the module documentation): every live
        // resource of the type, whoever owns it (a server of another user's resource in a
        // shared project is no orphan).
        if let Some(k8s) = self.backends.kubernetes.clone() {
            let desired = desired(&self.pool, FlavorType::K8s).await?;
            self.reconcile(
                k8s.as_ref(),
                (FlavorType::K8s, &desired),
                None,
                &mut report,
                &mut orphans_now,
            )
            .await?;
        }
        if let Some(openstack) = self.backends.openstack.clone() {
            if Instant::now() >= self.next_vm_pass {
                self.next_vm_pass = Instant::now() + jittered(self.vm_every);
                let desired = desired(&self.pool, FlavorType::Vm).await?;
                // Each user with live VMs: their clouds.yaml is where those VMs live.
                let owners: HashSet<String> =
                    desired.values().filter_map(|d| d.owner.clone()).collect();
                for user in owners {
                    let pass = self.reconcile(
                        openstack.as_ref(),
                        (FlavorType::Vm, &desired),
                        Some(&user),
                        &mut report,
                        &mut orphans_now,
                    );
                    if let Err(e) = pass.await {
                        tracing::warn!(user = %user, error = %e, "reconciling VMs failed");
                    }
                }
            } else {
                // Not looked at this time: keep their first sighting.
                orphans_now.extend(
                    self.orphans
                        .keys()
                        .filter(|h| matches!(h, ObjectHandle::Server { .. }))
                        .cloned(),
                );
            }
        }
        self.orphans
            .retain(|handle, _| orphans_now.contains(handle));
        if report.gone + report.reflected > 0 {
            self.list_cache.invalidate();
        }
        Ok(report)
    }

    /// Compares the live `flavor_type` resources (`desired`, read before; of `owner`, when
    /// given) with what `backend` observes, and acts on the differences.
    async fn reconcile(
        &mut self,
        backend: &dyn ComputeBackend,
        (flavor_type, desired): (FlavorType, &HashMap<Uuid, Desired>),
        owner: Option<&str>,
        report: &mut PassReport,
        orphans_now: &mut HashSet<ObjectHandle>,
    ) -> Result<(), AppError> {
        let started = Instant::now();
        let observed = backend.observe(owner).await;
        crate::ssr::metrics::backend_call(
            flavor_type.as_str(),
            "observe",
            observed.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        let observation = match observed {
            Ok(Some(observation)) => observation,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e.message, "cannot observe the backend now");
                return Ok(());
            }
        };
        let mut seen = HashSet::new();
        for object in &observation.objects {
            let id = object
                .resource_id
                .as_deref()
                .map(|typed| parse_id(IdKind::Resource, &self.site, typed));
            match id {
                // Another site's object (a cluster or cloud shared with it): not ours to judge.
                Some(Err(_)) => continue,
                Some(Ok(id)) if desired.contains_key(&id) => {
                    seen.insert(id);
                    if let Some(d) = desired.get(&id).filter(|d| is_settled(d)) {
                        self.reflect(id, d, object, report).await?;
                    }
                }
                _ => {
                    if object.health != ObservedHealth::Terminating {
                        orphans_now.insert(object.handle.clone());
                        self.collect_orphan(backend, object, report).await;
                    }
                }
            }
        }
        // Only this owner's resources, and only where the backend could look.
        let observed_here = |d: &Desired| {
            let scope = match d.scope.as_str() {
                "default" => observation.default_scope.as_deref().unwrap_or("default"),
                named => named,
            };
            (owner.is_none() || d.owner.as_deref() == owner)
                && !observation.blind.iter().any(|b| b == scope)
        };
        for (id, d) in desired {
            if is_settled(d) && observed_here(d) && !seen.contains(id) {
                report.gone += gone(&self.pool, *id, flavor_type).await?;
            }
        }
        Ok(())
    }

    /// Sets what the object shows on its `provisioned` resource.
    async fn reflect(
        &self,
        id: Uuid,
        d: &Desired,
        object: &Observed,
        report: &mut PassReport,
    ) -> Result<(), AppError> {
        let (operational, message) = match &object.health {
            ObservedHealth::Ready(note) if note.is_empty() => {
                if d.operational == OperationalState::Ready {
                    return Ok(());
                }
                (OperationalState::Ready, "running again".to_string())
            }
            ObservedHealth::Ready(note) => (OperationalState::Ready, note.clone()),
            ObservedHealth::Starting(why) => (OperationalState::Booting, why.clone()),
            ObservedHealth::Degraded(why) => (OperationalState::Error, why.clone()),
            ObservedHealth::Stopped(why) => {
                let message = format!("stopped outside slices-blueprint: {why}");
                report.gone += fail(&self.pool, id, &message).await?;
                return Ok(());
            }
            ObservedHealth::Terminating => return Ok(()),
        };
        if d.operational == operational && d.message == message {
            return Ok(());
        }
        let changed = sqlx::query!(
            r#"UPDATE resources SET operational_state = $2, status_message = $3
               WHERE id = $1 AND allocation_state = 'provisioned'
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.resource_id = $1
                                 AND t.status IN ('queued', 'running'))"#,
            id,
            operational.as_str(),
            message
        )
        .execute(&self.pool)
        .await?;
        if changed.rows_affected() > 0 {
            tracing::info!(resource = %id, state = operational.as_str(), %message, "resource state follows its backend object");
            report.reflected += 1;
        }
        Ok(())
    }

    /// Deletes `object` once it has been an orphan for the grace period (counted from this
    /// process's first sighting).
    async fn collect_orphan(
        &mut self,
        backend: &dyn ComputeBackend,
        object: &Observed,
        report: &mut PassReport,
    ) {
        let first = *self
            .orphans
            .entry(object.handle.clone())
            .or_insert_with(Instant::now);
        if first.elapsed() < self.orphan_grace {
            return;
        }
        match backend.remove_orphan(object).await {
            Ok(()) => {
                tracing::warn!(object = %object.handle, resource = object.resource_id.as_deref().unwrap_or("none"),
                    orphaned_for_s = first.elapsed().as_secs(), "deleted an orphan (its resource is unknown or gone)");
                self.orphans.remove(&object.handle);
                report.orphans_removed += 1;
            }
            Err(e) => {
                tracing::warn!(object = %object.handle, error = %e.message, "deleting an orphan failed; trying again next pass")
            }
        }
    }
}

/// Provisioned and not owned by a task: what the reconciler may change.
fn is_settled(d: &Desired) -> bool {
    d.allocation == AllocationState::Provisioned && !d.busy
}

/// `every` ± a fifth, at random.
fn jittered(every: Duration) -> Duration {
    use rand::Rng as _;
    every.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// The live (not ended) resources of `flavor_type`, each with whether an unfinished task
/// owns it.
async fn desired(
    pool: &PgPool,
    flavor_type: FlavorType,
) -> Result<HashMap<Uuid, Desired>, AppError> {
    let rows = sqlx::query!(
        r#"SELECT r.id, r.allocation_state AS "allocation: AllocationState",
                  r.operational_state AS "operational: OperationalState", r.status_message,
                  r.requested_by, i.cluster_id AS scope,
                  EXISTS (SELECT 1 FROM tasks t WHERE t.resource_id = r.id
                          AND t.status IN ('queued', 'running')) AS "busy!"
           FROM resources r JOIN disk_images i ON i.id = r.disk_image_id
           WHERE r.flavor_type = $1
             AND r.allocation_state IN ('requested', 'provisioning', 'provisioned', 'deleting')"#,
        flavor_type.as_str()
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let d = Desired {
                allocation: r.allocation,
                operational: r.operational,
                message: r.status_message,
                busy: r.busy,
                owner: r.requested_by,
                scope: r.scope,
            };
            (r.id, d)
        })
        .collect())
}

/// Marks a settled resource whose object is gone `failed`; 1 when it was marked.
async fn gone(pool: &PgPool, id: Uuid, flavor_type: FlavorType) -> Result<u32, AppError> {
    let what = match flavor_type {
        FlavorType::K8s => "pod",
        FlavorType::Vm => "server",
    };
    let at = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
    fail(
        pool,
        id,
        &format!("deleted outside slices-blueprint (its {what} was gone at {at})"),
    )
    .await
}

/// Marks a settled resource `failed` with `message`; 1 when it was marked.
async fn fail(pool: &PgPool, id: Uuid, message: &str) -> Result<u32, AppError> {
    let failed = sqlx::query!(
        r#"UPDATE resources SET allocation_state = 'failed', operational_state = 'error',
               status_message = $2
           WHERE id = $1 AND allocation_state = 'provisioned'
             AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.resource_id = $1
                             AND t.status IN ('queued', 'running'))"#,
        id,
        message
    )
    .execute(pool)
    .await?;
    if failed.rows_affected() > 0 {
        tracing::warn!(resource = %id, %message, "resource failed out of band");
    }
    Ok(u32::try_from(failed.rows_affected()).unwrap_or(u32::MAX))
}
