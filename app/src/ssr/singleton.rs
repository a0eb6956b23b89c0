//! Periodic jobs that one process at a time runs, however many replicas share the database
//! (issue 14): the expiry sweep, the reconcile passes, the audit purge and the session
//! clean-up.
//!
//! Each run of such a job holds a PostgreSQL advisory lock (PostgreSQL manual §9.27.10
//! "Advisory Lock Functions") for as long as it runs: a job that is one transaction takes the
//! transaction-level lock in it ([`try_lock_in`], `pg_try_advisory_xact_lock`: no connection
//! besides its own); a longer one holds the session-level lock on a pooled connection of its
//! own ([`exclusive`], `pg_try_advisory_lock`). A process that does not get the lock skips that run; it
//! tries again at its next tick. Nobody holds a job between runs, so there is no leader to
//! elect and nothing to hand over: when the process running a job dies, PostgreSQL ends its
//! session and drops the lock with it, and the next tick of any other replica (at most one
//! period later: 2 s for the reconcile pass over Pods and for the expiry sweep) runs the job. A connection that
//! cannot unlock is closed instead of returned to the pool, which releases its locks.
//!
//! Every job is also safe to run twice (each write is guarded by the state it expects), so the
//! lock saves work and log noise rather than guarding correctness.

use sqlx::PgPool;
use std::future::Future;

/// A job that one process at a time runs; its advisory lock key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The advisory lock key (eight ASCII bytes of the job's name, so that `pg_locks` shows
    /// something recognisable in `objid`).
    pub key: i64,
    /// For logs.
    pub name: &'static str,
}

/// The reconcile pass ("slices-r"; the key of earlier builds, so that a mixed rollout never
/// reconciles twice at once).
pub const RECONCILE: Job = Job {
    key: 0x736c_6963_6573_2d72,
    name: "reconcile",
};
/// Expired resources marked `deleting` ("slices-e").
pub const EXPIRY_SWEEP: Job = Job {
    key: 0x736c_6963_6573_2d65,
    name: "expiry sweep",
};
/// Audit entries past their retention purged ("slices-a").
pub const AUDIT_PURGE: Job = Job {
    key: 0x736c_6963_6573_2d61,
    name: "audit purge",
};
/// Expired dashboard sessions deleted ("slices-s").
pub const SESSION_CLEANUP: Job = Job {
    key: 0x736c_6963_6573_2d73,
    name: "session clean-up",
};

/// Takes `job`'s lock for the rest of the transaction `conn` is in, if no other process holds
/// it: `Ok(false)` when one does (skip this run). Errors: the database could not be asked.
pub async fn try_lock_in(conn: &mut sqlx::PgConnection, job: Job) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
        job.key
    )
    .fetch_one(conn)
    .await
}

/// Runs `run` if no other process is running `job` now: `Ok(Some(output))`, or `Ok(None)`
/// when another process holds the job's lock. Errors: the database could not be asked.
pub async fn exclusive<T>(
    pool: &PgPool,
    job: Job,
    run: impl Future<Output = T>,
) -> Result<Option<T>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked = sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, job.key)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        tracing::trace!(job = job.name, "another process runs this job now");
        return Ok(None);
    }
    let output = run.await;
    let unlocked = sqlx::query_scalar!(r#"SELECT pg_advisory_unlock($1) AS "unlocked!""#, job.key)
        .fetch_one(&mut *conn)
        .await;
    if !matches!(unlocked, Ok(true)) {
        // Closing the session releases its advisory locks.
        drop(conn.detach());
    }
    Ok(Some(output))
}
