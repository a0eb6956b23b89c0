//! Serialized `GET /resources` pages, kept until anything they show may have changed.
//!
//! The SLICES CLI, scripts and the dashboard poll the resource list while they wait; most polls
//! see the same page as the one before. A page is kept as the exact JSON bytes sent, keyed by
//! who may see what ([`ListKey`]: the token's scope and the query), and served again while it
//! is still valid:
//!
//! - Every change that can alter a page (a `resources` row written, a task created, a disk
//!   image's login name changed) raises a PostgreSQL notification on [`CHANNEL`] from a
//!   statement trigger (migration `20261123000001_list_cache.sql`), from any process: the API,
//!   in-process or separate workers, `psql`. [`listen`] turns each notification into
//!   [`ListCache::invalidate`], which makes every kept page stale at once (a generation counter).
//! - This process also invalidates right after its own writes (creating, patching or deleting
//!   a resource, and before a task is marked finished or failed), so a client that saw its
//!   POST answered or its task end never reads an older page afterwards.
//! - Pages are filled only while the listener is connected; a lost connection (notifications
//!   sent meanwhile are lost) empties the cache and turns it off until it is back. A page
//!   fill that began before an invalidation is not kept. Pages are also dropped after
//!   [`MAX_AGE`] whatever happens, and at most [`MAX_ENTRIES`] are kept.
//! - Several replicas: a write on another process reaches this one only through its
//!   notification, which can arrive after the writer's client already asked this replica for
//!   the list (20-40 ms late in the scale-out bench). So before a kept page is served,
//!   [`ListCache::catch_up`] sends a notification of its own on [`SYNC_CHANNEL`] and waits for
//!   it to come back: PostgreSQL delivers notifications in commit order, so every change
//!   committed before the call has invalidated the cache by then. Concurrent hits share one
//!   such round trip (one `pg_notify` in flight per process, `coordinate`).

use axum::body::Bytes;
use axum::http::HeaderValue;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The notification channel the triggers of migration `20261123000001_list_cache.sql` use.
pub const CHANNEL: &str = "slices_resources_changed";
/// The channel of [`ListCache::catch_up`]'s own notifications (payload `<cache tag>:<round>`).
pub const SYNC_CHANNEL: &str = "slices_list_cache_sync";
/// How long [`ListCache::catch_up`] waits for its notification before it gives up (a miss).
const SYNC_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a page is served from memory, even without any notification.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// The most pages kept (about 80 KB each at 100 rows); past it the cache starts over.
pub const MAX_ENTRIES: usize = 1024;

/// What a page depends on besides the data: the token's scope and the query string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    /// The experiment of an experiment token.
    pub scope_experiment: Option<String>,
    /// The user of a user token.
    pub scope_user: Option<String>,
    pub experiment_id: Option<String>,
    pub project: Option<String>,
    pub include_deleted: bool,
    pub limit: i64,
    pub offset: i64,
}

/// One page as sent: the JSON body and the `Link: <…>; rel="next"` header, if any.
#[derive(Debug, Clone)]
pub struct Page {
    pub body: Bytes,
    pub next: Option<HeaderValue>,
}

struct Entry {
    generation: u64,
    filled: Instant,
    page: Page,
}

/// The page cache of one server process (one per application state).
pub struct ListCache {
    generation: AtomicU64,
    listening: AtomicBool,
    /// Writes in flight ([`ListCache::writing`]): while any is, pages are neither served nor kept.
    writers: AtomicU64,
    entries: Mutex<HashMap<ListKey, Entry>>,
    /// Names this cache's own [`SYNC_CHANNEL`] notifications (other caches ignore them).
    tag: String,
    /// The newest of its sync rounds whose notification came back.
    synced: tokio::sync::watch::Sender<u64>,
    /// Where [`ListCache::catch_up`] asks `coordinate` for a round (set by
    /// [`spawn_listener`]).
    rounds: Mutex<Option<tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<bool>>>>,
}

impl Default for ListCache {
    fn default() -> Self {
        Self {
            generation: AtomicU64::default(),
            listening: AtomicBool::default(),
            writers: AtomicU64::default(),
            entries: Mutex::default(),
            tag: crate::ids::encode_suffix(uuid::Uuid::now_v7()),
            synced: tokio::sync::watch::Sender::new(0),
            rounds: Mutex::default(),
        }
    }
}

/// A write in flight (from [`ListCache::writing`] until dropped, which the writer does right
/// after its commit): no page is served or kept meanwhile, and every page read before is
/// stale afterwards. So a client that sees the write's effect anywhere (e.g. a task that
/// ended) never reads a page from before it, however the commit and the drop interleave with
/// its requests.
pub struct WriteGuard<'a> {
    cache: &'a ListCache,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.cache.invalidate();
        self.cache.writers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ListCache {
    /// The generation a page fill must record before it reads the database; `None` while the
    /// cache is off (no listener connected), when pages must not be kept.
    pub fn begin_fill(&self) -> Option<u64> {
        self.serving()
            .then(|| self.generation.load(Ordering::Acquire))
    }

    /// Pages may be served and kept: the listener is connected and no write is in flight.
    fn serving(&self) -> bool {
        self.listening.load(Ordering::Acquire) && self.writers.load(Ordering::Acquire) == 0
    }

    /// Marks a write in flight until the guard is dropped (see [`WriteGuard`]).
    pub fn writing(&self) -> WriteGuard<'_> {
        self.writers.fetch_add(1, Ordering::AcqRel);
        self.invalidate();
        WriteGuard { cache: self }
    }

    /// The kept page for `key`, if it is still valid.
    pub fn get(&self, key: &ListKey) -> Option<Page> {
        if !self.serving() {
            return None;
        }
        let current = self.generation.load(Ordering::Acquire);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|e| e.generation == current && e.filled.elapsed() < MAX_AGE)
            .map(|e| e.page.clone())
    }

    /// Keeps `page`, read by a fill that began at `generation`, unless anything changed since.
    pub fn put(&self, key: ListKey, generation: u64, page: Page) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: an invalidation after this point makes the entry stale.
        if !self.serving() || self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, e| e.generation == generation && e.filled.elapsed() < MAX_AGE);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                generation,
                filled: Instant::now(),
                page,
            },
        );
    }

    /// Makes every kept page stale (and any fill in progress not kept).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        crate::ssr::metrics::list_cache_invalidated();
    }

    fn set_listening(&self, on: bool) {
        self.invalidate();
        self.listening.store(on, Ordering::Release);
        if !on {
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// Whether pages are being kept (the listener is connected).
    pub fn is_on(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Waits until every change committed (in any process) before this call has reached this
    /// cache: true then; false when that cannot be known within `SYNC_TIMEOUT` (no listener,
    /// the database slow or gone), and the caller must read the database instead.
    pub async fn catch_up(&self) -> bool {
        let rounds = self
            .rounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(rounds) = rounds else { return false };
        let (done, answer) = tokio::sync::oneshot::channel();
        if rounds.send(done).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// A [`SYNC_CHANNEL`] payload came back: `<tag>:<round>`, ours or another cache's.
    fn sync_arrived(&self, payload: &str) {
        let Some((tag, round)) = payload.rsplit_once(':') else {
            return;
        };
        if let (true, Ok(round)) = (tag == self.tag, round.parse::<u64>()) {
            self.synced.send_if_modified(|seen| {
                let newer = round > *seen;
                if newer {
                    *seen = round;
                }
                newer
            });
        }
    }
}

/// Runs the sync rounds of [`ListCache::catch_up`]: takes every waiting caller, sends one
/// notification on [`SYNC_CHANNEL`], answers them all when [`listen`] has seen it come back.
/// Callers that ask meanwhile wait for the next round (theirs must start after they asked).
async fn coordinate(
    pool: PgPool,
    cache: Weak<ListCache>,
    mut asks: tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<bool>>,
) {
    let mut round = 0u64;
    while let Some(first) = asks.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = asks.try_recv() {
            waiting.push(next);
        }
        let Some((tag, mut synced)) = cache
            .upgrade()
            .map(|c| (c.tag.clone(), c.synced.subscribe()))
        else {
            return;
        };
        round += 1;
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SYNC_CHANNEL)
            .bind(format!("{tag}:{round}"))
            .execute(&pool)
            .await
            .is_ok();
        let back = sent
            && tokio::time::timeout(SYNC_TIMEOUT, synced.wait_for(|seen| *seen >= round))
                .await
                .is_ok_and(|r| r.is_ok());
        for caller in waiting {
            let _ = caller.send(back);
        }
    }
}

/// Listens on [`CHANNEL`] and invalidates `cache` on every notification, reconnecting after
/// errors (1 s apart). Ends when the pool is closed, or at the first notification or
/// connection attempt after the cache was dropped.
pub async fn listen(pool: PgPool, cache: Weak<ListCache>) {
    loop {
        if pool.is_closed() {
            return;
        }
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen_all([CHANNEL, SYNC_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                tracing::debug!(error = %e, "list cache listener cannot connect; cache off");
                if cache.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match cache.upgrade() {
            Some(c) => c.set_listening(true),
            None => return,
        }
        loop {
            // `try_recv` answers `Ok(None)` when the connection was lost, and an error once the
            // pool is closed.
            let received = listener.try_recv().await;
            let Some(c) = cache.upgrade() else { return };
            match received {
                Ok(Some(n)) if n.channel() == SYNC_CHANNEL => c.sync_arrived(n.payload()),
                Ok(Some(_)) => c.invalidate(),
                Ok(None) | Err(_) => {
                    tracing::debug!("list cache listener lost its connection; cache off");
                    c.set_listening(false);
                    break;
                }
            }
        }
    }
}

/// Starts [`listen`] and `coordinate` for `cache` on the runtime.
pub fn spawn_listener(pool: &PgPool, cache: &Arc<ListCache>) {
    let (rounds, asks) = tokio::sync::mpsc::unbounded_channel();
    *cache.rounds.lock().unwrap_or_else(|e| e.into_inner()) = Some(rounds);
    tokio::spawn(listen(pool.clone(), Arc::downgrade(cache)));
    tokio::spawn(coordinate(pool.clone(), Arc::downgrade(cache), asks));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: i64) -> ListKey {
        ListKey {
            scope_experiment: Some("experiment_x".into()),
            scope_user: None,
            experiment_id: None,
            project: None,
            include_deleted: false,
            limit: 100,
            offset,
        }
    }

    fn page(text: &'static str) -> Page {
        Page {
            body: Bytes::from_static(text.as_bytes()),
            next: None,
        }
    }

    /// A cache whose listener is connected, and the generation a fill would record.
    fn listening() -> (ListCache, u64) {
        let cache = ListCache::default();
        cache.set_listening(true);
        let generation = cache.begin_fill().expect("on");
        (cache, generation)
    }

    #[test]
    fn off_until_listening() {
        let cache = ListCache::default();
        assert_eq!(cache.begin_fill(), None);
        cache.put(key(0), 0, page("[]"));
        assert!(cache.get(&key(0)).is_none());
    }

    #[test]
    fn kept_until_invalidated() {
        let (cache, generation) = listening();
        cache.put(key(0), generation, page("[1]"));
        assert_eq!(cache.get(&key(0)).expect("kept").body, "[1]");
        assert!(
            cache.get(&key(100)).is_none(),
            "another page is another key"
        );
        cache.invalidate();
        assert!(cache.get(&key(0)).is_none());
    }

    #[test]
    fn nothing_is_served_or_kept_while_a_write_is_in_flight() {
        let (cache, generation) = listening();
        cache.put(key(0), generation, page("before"));
        let guard = cache.writing();
        assert!(cache.get(&key(0)).is_none(), "a page from before the write");
        assert!(cache.begin_fill().is_none(), "a fill during the write");
        cache.put(key(0), generation, page("during"));
        drop(guard);
        assert!(cache.get(&key(0)).is_none(), "stale after the write");
        let after = cache.begin_fill().expect("serving again");
        cache.put(key(0), after, page("after"));
        assert_eq!(
            cache.get(&key(0)).map(|p| p.body),
            Some(Bytes::from("after"))
        );
    }

    #[test]
    fn a_fill_overtaken_by_a_change_is_not_kept() {
        let (cache, generation) = listening();
        cache.invalidate(); // a write committed while the page was being read
        cache.put(key(0), generation, page("[old]"));
        assert!(cache.get(&key(0)).is_none());
    }

    #[test]
    fn losing_the_listener_empties_and_disables() {
        let (cache, generation) = listening();
        cache.put(key(0), generation, page("[1]"));
        cache.set_listening(false);
        assert!(cache.get(&key(0)).is_none());
        assert_eq!(cache.begin_fill(), None);
        cache.set_listening(true);
        assert!(cache.get(&key(0)).is_none(), "nothing survives a reconnect");
    }

    #[test]
    fn only_its_own_sync_notifications_count_and_never_backwards() {
        let cache = ListCache::default();
        let seen = || *cache.synced.borrow();
        cache.sync_arrived("someone-else:7");
        assert_eq!(seen(), 0);
        cache.sync_arrived(&format!("{}:3", cache.tag));
        assert_eq!(seen(), 3);
        cache.sync_arrived(&format!("{}:2", cache.tag));
        assert_eq!(seen(), 3, "an older round came back late");
        cache.sync_arrived(&format!("{}:x", cache.tag));
        cache.sync_arrived("no separator");
        assert_eq!(seen(), 3);
    }

    #[tokio::test]
    async fn without_a_listener_it_cannot_catch_up() {
        assert!(!ListCache::default().catch_up().await);
    }

    #[test]
    fn bounded() {
        let (cache, generation) = listening();
        for offset in 0..(MAX_ENTRIES as i64 + 10) {
            cache.put(key(offset), generation, page("[]"));
        }
        let kept = cache.entries.lock().expect("lock").len();
        assert!(kept <= MAX_ENTRIES, "{kept} entries");
    }
}
