//! The audit log: who did what to which object, when and from where (issue 13).
//!
//! Entries live in the append-only `audit_log` table (a trigger refuses UPDATE, DELETE and
//! TRUNCATE; only [`purge`] may delete, for the retention of `AUDIT_RETENTION_DAYS`). A change
//! and its entry are written in one transaction ([`record`] takes the change's connection), so
//! the log never shows a change that did not happen nor misses one that did.
//!
//! "From where" is the request's [`Source`] (API or dashboard, the peer address, the
//! `User-Agent`), set once per request by the router's middleware in a task-local, so services
//! need not pass it along; work outside a request (worker, sweeps) is `system`.

use crate::error::AppError;
use crate::model::{AuditEntry, AuditFilter};
use crate::ssr::auth::Principal;
use axum::body::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// Default page size of [`list`].
pub const DEFAULT_PAGE: i64 = 100;
/// Largest page of [`list`].
pub const MAX_PAGE: i64 = 1000;
/// Rows read per database round trip by [`export`].
const EXPORT_CHUNK: i64 = 500;
/// Longest `User-Agent` kept, characters.
const MAX_USER_AGENT: usize = 256;

/// Which door a change came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The REST API, with a bearer token.
    Api,
    /// The dashboard, with a session.
    Dashboard,
    /// The server itself (worker, expiry and retention sweeps).
    System,
}

impl Via {
    /// The stored name: `api`, `dashboard` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Dashboard => "dashboard",
            Via::System => "system",
        }
    }
}

/// Where the current request came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub via: Via,
    /// The peer's IP address (the TCP connection's; no proxy header is trusted).
    pub client_ip: Option<String>,
    /// The `User-Agent` header, cut to 256 characters.
    pub user_agent: Option<String>,
}

tokio::task_local! {
    static SOURCE: Source;
}

impl Source {
    /// Work the server does on its own.
    pub fn system() -> Self {
        Self {
            via: Via::System,
            client_ip: None,
            user_agent: None,
        }
    }

    /// A request's source; the user agent is cut to a bounded length.
    pub fn request(via: Via, client_ip: Option<String>, user_agent: Option<&str>) -> Self {
        Self {
            via,
            client_ip,
            user_agent: user_agent.map(|a| a.chars().take(MAX_USER_AGENT).collect()),
        }
    }

    /// The source of the request being handled, or [`Source::system`] outside one.
    pub fn current() -> Self {
        SOURCE
            .try_with(Clone::clone)
            .unwrap_or_else(|_| Self::system())
    }

    /// Runs `work` with this as the current source.
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        SOURCE.scope(self, work).await
    }
}

/// Who acted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The user (`user_…`), when known.
    pub user_id: Option<String>,
    /// The token's or session's subject (`user_…` or `exp_…`).
    pub subject: Option<String>,
    /// The experiment acted in, when the actor acts for one.
    pub experiment_id: Option<String>,
}

impl Actor {
    /// The holder of a verified token (or a session acting as one).
    pub fn of(principal: &Principal) -> Self {
        Self {
            user_id: principal.user_id.clone(),
            subject: Some(principal.subject.clone()),
            experiment_id: principal.experiment_id.clone(),
        }
    }

    /// A user acting outside any experiment.
    pub fn user(user_id: &str) -> Self {
        Self {
            user_id: Some(user_id.to_string()),
            subject: Some(user_id.to_string()),
            experiment_id: None,
        }
    }

    /// Nobody known (a request without a valid token).
    pub fn anonymous() -> Self {
        Self::default()
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Event {
    action: String,
    object_id: Option<String>,
    experiment_id: Option<String>,
    refused: bool,
    detail: Value,
}

impl Event {
    /// A successful `action` (dotted verb, e.g. `resource.create`).
    pub fn new(action: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            object_id: None,
            experiment_id: None,
            refused: false,
            detail: Value::Object(Default::default()),
        }
    }

    /// The object acted on (a typed id, or a name where there is none).
    pub fn object(mut self, id: impl Into<String>) -> Self {
        self.object_id = Some(id.into());
        self
    }

    /// The experiment the object belongs to, when it is not the actor's own.
    pub fn experiment(mut self, id: impl Into<String>) -> Self {
        self.experiment_id = Some(id.into());
        self
    }

    /// Facts about the change (never a secret).
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// Marks the attempt as refused by the access rules.
    pub fn refused(mut self) -> Self {
        self.refused = true;
        self
    }
}

/// The fields of `value` that are set (JSON object members other than `null`), for the
/// detail of a change given as a patch.
pub fn fields_set(value: &impl serde::Serialize) -> Value {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        Ok(other) => other,
        Err(_) => Value::Null,
    }
}

/// Writes one entry on `conn`: pass the transaction of the change it records.
pub async fn record(conn: &mut PgConnection, actor: &Actor, event: Event) -> sqlx::Result<()> {
    record_many(conn, actor, vec![event]).await
}

/// Writes one entry on the change's transaction `tx` and commits both.
pub async fn commit(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &Actor,
    event: Event,
) -> sqlx::Result<()> {
    record(&mut tx, actor, event).await?;
    tx.commit().await
}

/// Writes several entries of one actor in one statement (e.g. one per resource of a
/// request), on the transaction of the change they record.
pub async fn record_many(
    conn: &mut PgConnection,
    actor: &Actor,
    events: Vec<Event>,
) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let source = Source::current();
    let n = events.len();
    let (mut actions, mut objects, mut experiments, mut outcomes, mut details) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for event in events {
        actions.push(event.action);
        objects.push(event.object_id);
        experiments.push(event.experiment_id.or_else(|| actor.experiment_id.clone()));
        outcomes.push(if event.refused { "refused" } else { "ok" }.to_string());
        details.push(event.detail);
    }
    sqlx::query!(
        r#"INSERT INTO audit_log (user_id, actor, via, client_ip, user_agent,
                                  action, object_id, experiment_id, outcome, detail)
           SELECT $1, $2, $3, $4, $5, e.action, e.object_id, e.experiment_id, e.outcome, e.detail
           FROM UNNEST($6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[])
                AS e(action, object_id, experiment_id, outcome, detail)"#,
        actor.user_id,
        actor.subject,
        source.via.as_str(),
        source.client_ip,
        source.user_agent,
        &actions,
        &objects as &[Option<String>],
        &experiments as &[Option<String>],
        &outcomes,
        &details
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes one entry on its own (for events that change nothing else in the database, such as
/// a sign-in or a refused attempt). A failure is logged, not returned: the request it records
/// has already been decided.
pub async fn record_alone(pool: &PgPool, actor: &Actor, event: Event) {
    let action = event.action.clone();
    let result = async {
        let mut conn = pool.acquire().await?;
        record(&mut conn, actor, event).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, %action, "could not write an audit entry");
    }
}

/// The filters of `filter` as SQL parameters: the action filter as (text, is-prefix).
struct Params {
    action: Option<String>,
    action_prefix: bool,
}

impl Params {
    fn of(filter: &AuditFilter) -> Self {
        match filter.action.as_deref().map(str::trim) {
            Some(a) if a.ends_with('*') => Self {
                action: Some(a.trim_end_matches('*').to_string()),
                action_prefix: true,
            },
            Some(a) if !a.is_empty() => Self {
                action: Some(a.to_string()),
                action_prefix: false,
            },
            _ => Self {
                action: None,
                action_prefix: false,
            },
        }
    }
}

/// 400 naming the query parameter when `filter` is unusable: `limit` outside
/// 1..=[`MAX_PAGE`], a negative `offset`, an `outcome` other than `ok` or `refused`, or a
/// filter longer than 256 characters.
pub fn check_filter(filter: &AuditFilter) -> Result<(), AppError> {
    if let Some(limit) = filter.limit {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AppError::BadRequest(format!(
                "limit: must be between 1 and {MAX_PAGE}, got {limit}"
            )));
        }
    }
    if filter.offset.is_some_and(|o| o < 0) {
        return Err(AppError::BadRequest("offset: must not be negative".into()));
    }
    if let Some(outcome) = filter.outcome.as_deref() {
        if !matches!(outcome, "ok" | "refused") {
            return Err(AppError::BadRequest(format!(
                "outcome: `ok` or `refused`, got `{}`",
                outcome.chars().take(40).collect::<String>()
            )));
        }
    }
    for (name, value) in [
        ("user_id", &filter.user_id),
        ("experiment_id", &filter.experiment_id),
        ("object_id", &filter.object_id),
        ("action", &filter.action),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(AppError::BadRequest(format!(
                "{name}: at most 256 characters"
            )));
        }
    }
    Ok(())
}

/// One page of entries matching `filter`, newest first. The
/// caller has checked `limit` (1..=[`MAX_PAGE`]) and `offset` (≥ 0).
pub async fn list(pool: &PgPool, filter: &AuditFilter) -> sqlx::Result<Vec<AuditEntry>> {
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
    let offset = filter.offset.unwrap_or(0);
    page(pool, filter, None, limit, offset).await
}

async fn page(
    pool: &PgPool,
    filter: &AuditFilter,
    before_id: Option<i64>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    let p = Params::of(filter);
    sqlx::query_as!(
        AuditEntry,
        r#"SELECT id, at AS "at: DateTime<Utc>", user_id, actor, experiment_id, action,
                  object_id, outcome, via, client_ip, user_agent, detail
           FROM audit_log
           WHERE ($1::text IS NULL OR user_id = $1)
             AND ($2::text IS NULL OR experiment_id = $2)
             AND ($3::text IS NULL OR object_id = $3)
             AND ($4::text IS NULL OR action = $4 OR ($5 AND starts_with(action, $4)))
             AND ($6::text IS NULL OR outcome = $6)
             AND ($7::timestamptz IS NULL OR at >= $7)
             AND ($8::timestamptz IS NULL OR at < $8)
             AND ($9::bigint IS NULL OR id < $9)
           ORDER BY id DESC
           LIMIT $10 OFFSET $11"#,
        filter.user_id,
        filter.experiment_id,
        filter.object_id,
        p.action,
        p.action_prefix,
        filter.outcome,
        filter.since as _,
        filter.until as _,
        before_id,
        limit,
        offset
    )
    .fetch_all(pool)
    .await
}

/// Every entry matching `filter` (its `limit` and `offset` apply when given), newest first, as
/// JSON lines (one [`AuditEntry`] per line), read from the database in chunks of 500 so
/// an export of any size holds one chunk in memory.
pub fn export(
    pool: PgPool,
    filter: AuditFilter,
) -> impl Stream<Item = Result<Bytes, sqlx::Error>> + Send + 'static {
    struct At {
        before: Option<i64>,
        left: Option<i64>,
        skip: i64,
        done: bool,
    }
    let start = At {
        before: None,
        left: filter.limit,
        skip: filter.offset.unwrap_or(0),
        done: false,
    };
    futures::stream::try_unfold(start, move |at| {
        let pool = pool.clone();
        let filter = filter.clone();
        async move {
            if at.done || at.left == Some(0) {
                return Ok(None);
            }
            let want = at.left.map_or(EXPORT_CHUNK, |l| l.min(EXPORT_CHUNK));
            let rows = page(&pool, &filter, at.before, want, at.skip).await?;
            let mut out = Vec::with_capacity(rows.len() * 256);
            for row in &rows {
                serde_json::to_writer(&mut out, row).map_err(|e| sqlx::Error::Decode(e.into()))?;
                out.push(b'\n');
            }
            let next = At {
                before: rows.last().map(|r| r.id).or(at.before),
                left: at.left.map(|l| l - rows.len() as i64),
                skip: 0,
                done: (rows.len() as i64) < want,
            };
            Ok(Some((Bytes::from(out), next)))
        }
    })
}

/// Deletes the entries written before `before` (the retention): the only deletion the
/// table's trigger lets through, because this transaction sets `slices.audit_purge`. One
/// process at a time purges (`singleton::AUDIT_PURGE`, held by this transaction; 0 when
/// another one is purging). Returns how many went.
pub async fn purge(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    // One process at a time (another one purging now: nothing to do here).
    if !crate::ssr::singleton::try_lock_in(&mut tx, crate::ssr::singleton::AUDIT_PURGE).await? {
        return Ok(0);
    }
    sqlx::query!("SELECT set_config('slices.audit_purge', 'on', true)")
        .fetch_one(&mut *tx)
        .await?;
    let deleted = sqlx::query!("DELETE FROM audit_log WHERE at < $1", before as _)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}
