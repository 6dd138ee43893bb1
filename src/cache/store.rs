//! One chain's cache: entries bounded by bytes, the index of entries a reorg may invalidate,
//! the reads in flight, and counts of what it did.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;

use super::rules::{self, Rule};
use crate::config::{CacheConfig, TrackerConfig};
use crate::follow::filters::Registry;
use crate::follow::tracker::{Observer, Tracker};
use crate::rpc::jsonrpc::Raw;
use crate::state::metrics::{method_slot, KNOWN_METHODS};

/// How long the cache keeps a chain followed after the last read that needed it.
const LEASE: Duration = Duration::from_secs(60);

/// The window over which the rate of reads that need the chain followed is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A cached answer's key: the method and params as the client wrote them, and their hash.
#[derive(Clone, Debug)]
struct Key {
    hash: u64,
    /// `method`, a 0 byte, `params`.
    bytes: Arc<[u8]>,
}

impl Key {
    fn method(&self) -> &str {
        let end = memchr::memchr(0, &self.bytes).unwrap_or(self.bytes.len());
        std::str::from_utf8(&self.bytes[..end]).unwrap_or("")
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A key being looked up, without copying it.
struct KeyRef<'a> {
    hash: u64,
    method: &'a str,
    params: &'a str,
}

impl<'a> KeyRef<'a> {
    fn new(method: &'a str, params: Option<Raw<'a>>) -> KeyRef<'a> {
        let params = params.map_or("", |p| p.get());
        let mut h = foldhash::fast::FixedState::with_seed(0x6465_746f_7572).build_hasher();
        h.write(method.as_bytes());
        h.write_u8(0);
        h.write(params.as_bytes());
        KeyRef {
            hash: h.finish(),
            method,
            params,
        }
    }

    /// `method`, 0, `params`.
    fn bytes<const N: usize>(&self) -> SmallVec<[u8; N]> {
        let mut bytes = SmallVec::with_capacity(self.method.len() + 1 + self.params.len());
        bytes.extend_from_slice(self.method.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(self.params.as_bytes());
        bytes
    }

    /// The key's name in the cache shared by replicas: 128 bits of hash, in hex (the value
    /// holds the key in full, compared on every read, so a collision is only a miss).
    fn shared_id(&self) -> String {
        let mut h = foldhash::fast::FixedState::with_seed(0x7368_6172_6564).build_hasher();
        h.write(self.method.as_bytes());
        h.write_u8(0);
        h.write(self.params.as_bytes());
        format!("{:016x}{:016x}", self.hash, h.finish())
    }

    fn to_key(&self) -> Key {
        Key {
            hash: self.hash,
            bytes: Arc::from(&self.bytes::<256>()[..]),
        }
    }

    fn is(&self, bytes: &[u8]) -> bool {
        let (m, p) = (self.method.as_bytes(), self.params.as_bytes());
        bytes.len() == m.len() + 1 + p.len()
            && bytes[..m.len()] == *m
            && bytes[m.len()] == 0
            && bytes[m.len() + 1..] == *p
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        key.hash == self.hash && self.is(&key.bytes)
    }
}

/// Keys carry their hash: the map uses it as it is.
#[derive(Clone, Default)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PassBuild = std::hash::BuildHasherDefault<PassHasher>;

/// How long an entry is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// About a final block: for good.
    Final,
    /// About a canonical block above the final one: until a reorg replaces it (the entry is
    /// in the index, and evicted then).
    Canonical,
    /// About the latest state: while the head generation is this one.
    Head(u64),
}

#[derive(Debug, Clone)]
struct Entry {
    result: Bytes,
    life: Life,
    /// The block it is about (for `Head`, the head when it was cached).
    height: u64,
}

/// An entry's weight: its bytes, its key's, and a fixed cost for the bookkeeping.
#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Key, Entry> for Weigh {
    fn weight(&self, key: &Key, val: &Entry) -> u64 {
        (key.bytes.len() + val.result.len() + 96) as u64
    }
}

/// What a chain's cache did, by method slot (see [`KNOWN_METHODS`]).
#[derive(Debug)]
pub struct Stats {
    by_method: Box<[[AtomicU64; COUNTS]]>,
}

/// The counts kept per method.
const COUNTS: usize = 7;

/// A count kept per method.
#[derive(Debug, Clone, Copy)]
pub enum Count {
    /// Answered from the cache.
    Hit = 0,
    /// Cacheable, not in the cache: asked upstream.
    Miss = 1,
    /// Answered with an identical read's answer, which was in flight.
    Merged = 2,
    /// Asked upstream with the cache bypassed (`Cache-Control: no-cache`).
    Bypass = 3,
    /// Evicted to make room.
    EvictedSize = 4,
    /// Evicted because a reorg replaced its block (or following the chain stopped).
    EvictedReorg = 5,
    /// Not in this replica's cache; answered from the one shared through Redis.
    Shared = 6,
}

impl Count {
    /// Every count, with its metric name and label.
    pub const ALL: [(Count, &'static str); COUNTS] = [
        (Count::Hit, "hit"),
        (Count::Miss, "miss"),
        (Count::Merged, "merged"),
        (Count::Bypass, "bypass"),
        (Count::EvictedSize, "size"),
        (Count::EvictedReorg, "reorg"),
        (Count::Shared, "shared"),
    ];
}

impl Stats {
    fn new() -> Stats {
        Stats {
            by_method: (0..=KNOWN_METHODS.len())
                .map(|_| Default::default())
                .collect(),
        }
    }

    fn add(&self, slot: usize, count: Count) {
        self.by_method[slot][count as usize].fetch_add(1, Relaxed);
    }

    /// A read counted as `from` turned out to be `to`.
    fn recount(&self, slot: usize, from: Count, to: Count) {
        self.by_method[slot][from as usize].fetch_sub(1, Relaxed);
        self.add(slot, to);
    }

    /// The non-zero counts of `count`, as (method label, value).
    pub fn counts(&self, count: Count) -> Vec<(&'static str, u64)> {
        self.by_method
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let n = c[count as usize].load(Relaxed);
                (n > 0).then(|| (KNOWN_METHODS.get(slot).copied().unwrap_or("other"), n))
            })
            .collect()
    }

    /// The total of `count` over every method.
    pub fn total(&self, count: Count) -> u64 {
        self.by_method
            .iter()
            .map(|c| c[count as usize].load(Relaxed))
            .sum()
    }
}

/// Counts entries evicted for room.
#[derive(Clone)]
struct Evictions(Arc<Stats>);

impl quick_cache::Lifecycle<Key, Entry> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), key: Key, _: Entry) {
        self.0.add(method_slot(key.method()), Count::EvictedSize);
    }
}

type Store = quick_cache::sync::Cache<Key, Entry, Weigh, PassBuild, Evictions>;

/// Entries a reorg may invalidate, by the height of their block.
#[derive(Debug, Default)]
struct Index {
    by_height: BTreeMap<u64, Vec<Key>>,
}

/// What identical reads wait on: made when the first of them arrives (a read nobody waits
/// for costs no allocation).
#[derive(Debug, Default)]
struct Flight {
    /// Its answer once it has one (`None`: it failed, or was given up).
    done: OnceLock<Option<Bytes>>,
    landed: tokio::sync::Notify,
}

/// A read in flight, in the map identical reads look in.
#[derive(Debug)]
struct Marker {
    /// Which read (to find its own marker when it lands).
    id: u64,
    /// The head generation it started at: only reads at the same one wait for it.
    gen: u64,
    /// `method`, 0, `params`: compared in full (a hash alone could be made to collide).
    key: SmallVec<[u8; 192]>,
    /// What waiting reads wait on, once there are any.
    flight: Option<Arc<Flight>>,
}

/// Reads in flight, by their key's hash.
type Flights = HashMap<u64, SmallVec<[Marker; 1]>, PassBuild>;

/// The first bytes of a value in the cache shared by replicas (its format's version).
const SHARED_MAGIC: &[u8] = b"detour-cache-1\n";

/// A value for the cache shared by replicas: [`SHARED_MAGIC`], the key's length (4 bytes,
/// little-endian) and the key (method, 0, params), the block hash's length (1 byte) and the
/// hash (empty where not known), then the result.
fn encode_shared(key: &KeyRef<'_>, hash: &str, result: &[u8]) -> Vec<u8> {
    let k = key.bytes::<256>();
    let hash = if hash.len() <= 255 { hash } else { "" };
    let mut v =
        Vec::with_capacity(SHARED_MAGIC.len() + 4 + k.len() + 1 + hash.len() + result.len());
    v.extend_from_slice(SHARED_MAGIC);
    v.extend_from_slice(&(k.len() as u32).to_le_bytes());
    v.extend_from_slice(&k);
    v.push(hash.len() as u8);
    v.extend_from_slice(hash.as_bytes());
    v.extend_from_slice(result);
    v
}

/// The key, block hash and result of a shared value; `None` if it is not one.
fn decode_shared(value: &[u8]) -> Option<(&[u8], &str, &[u8])> {
    let rest = value.strip_prefix(SHARED_MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len + 1 {
        return None;
    }
    let (key, rest) = rest.split_at(len);
    let (&hlen, rest) = rest.split_first()?;
    if rest.len() < hlen as usize {
        return None;
    }
    let (hash, result) = rest.split_at(hlen as usize);
    Some((key, std::str::from_utf8(hash).ok()?, result))
}

/// Slots of the admission filter (a power of two).
const SEEN_SLOTS: usize = 1 << 14;

/// One chain's cache.
pub struct ChainCache {
    /// The chain's name.
    pub chain: Arc<str>,
    /// Its chain id: a reload that changes it starts a new cache.
    pub chain_id: u64,
    store: Store,
    /// The tracked head (0: the chain is not followed).
    head: AtomicU64,
    /// Moves with every head change and reorg: `Head` entries of another generation are stale.
    gen: AtomicU64,
    /// The highest height taken as final so far (a reorg below it evicts final entries too).
    final_seen: AtomicU64,
    index: Mutex<Index>,
    /// Counts reorgs (and losses of the tracked chain): an answer fetched across one is not
    /// cached as canonical. Changed only under `index`'s lock.
    epoch: AtomicU64,
    flights: Mutex<Flights>,
    /// Numbers reads in flight.
    next_flight: AtomicU64,
    /// The admission filter: the hashes of keys seen lately, one per slot. An answer is
    /// stored the second time its key is seen, so reads made once (an indexer's scan, unique
    /// calls) cost the cache neither memory nor the work of storing.
    seen: Box<[AtomicU64]>,
    /// The chain's tracker, once the cache has asked for the chain to be followed.
    tracker: OnceLock<Arc<Tracker>>,
    /// Until when the chain is known to be followed for the cache (`now_us` µs).
    leased_until: AtomicU64,
    /// Reads that need the chain followed, counted since `window_start` (`now_us` µs).
    window_reads: AtomicU64,
    window_start: AtomicU64,
    me: Weak<ChainCache>,
    /// What it did.
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for ChainCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainCache")
            .field("chain", &self.chain)
            .field("entries", &self.store.len())
            .field("bytes", &self.store.weight())
            .finish_non_exhaustive()
    }
}

/// What a request brings to a lookup.
pub struct Ctx<'a> {
    /// `[cache]`.
    pub config: &'a CacheConfig,
    /// `[tracker]`, to follow the chain.
    pub tracker: &'a TrackerConfig,
    /// Who follows chains.
    pub registry: &'a Arc<Registry>,
    /// The highest block the chain's upstreams are known to have.
    pub known_head: Option<u64>,
    /// The chain's `finality_depth`.
    pub depth: u64,
    /// Now, in `now_us` µs.
    pub now_us: u64,
}

/// What the cache says about a call.
pub enum Lookup<'a> {
    /// Not cacheable: ask upstream, as without a cache.
    Skip,
    /// The answer (a `result`, verbatim).
    Hit(Bytes),
    /// An identical read is in flight: wait for its answer.
    Wait(Waiter),
    /// Ask upstream, then [`Ticket::complete`] with the answer.
    Miss(Ticket<'a>),
}

/// A read that waits for an identical one in flight.
pub struct Waiter {
    flight: Arc<Flight>,
    cache: Arc<ChainCache>,
    slot: usize,
}

impl Waiter {
    /// The first read's answer, if it arrives within `limit` and is a result; `None`: ask
    /// upstream yourself.
    pub async fn wait(self, limit: Duration) -> Option<Bytes> {
        let flight = &self.flight;
        let landed = async {
            loop {
                let notified = flight.landed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if let Some(answer) = flight.done.get() {
                    return answer.clone();
                }
                notified.await;
            }
        };
        let answer = tokio::time::timeout(limit, landed).await.ok().flatten();
        if answer.is_some() {
            self.cache.stats.add(self.slot, Count::Merged);
        }
        answer
    }
}

/// A cacheable read that goes upstream: its answer is offered to the cache, and to the
/// identical reads waiting for it.
pub struct Ticket<'a> {
    cache: Arc<ChainCache>,
    key: KeyRef<'a>,
    rule: Rule,
    gen: u64,
    epoch: u64,
    /// Its marker among the reads in flight, if it has one (not with a bypass).
    flight: Option<u64>,
    /// Its answer may be final: worth a look in the cache shared by replicas.
    may_be_final: bool,
    /// The cache shared by replicas, when its answer is to go there too.
    share: Option<Share>,
}

/// Where a final answer is shared.
struct Share {
    shared: Arc<crate::shared::Shared>,
    /// The answer's name there ([`Ticket::shared_id`]).
    id: String,
    /// Lookups that missed it there lately (it is shared from the second on).
    asked: u64,
    ttl: Duration,
    max_bytes: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.flight.take() {
            // Given up (the client left): the waiting reads go on their own.
            self.cache.land(self.key.hash, id, None);
        }
    }
}

impl Ticket<'_> {
    /// The name of its answer in the cache shared by replicas, when the answer may be final
    /// (nothing else is shared).
    pub fn shared_id(&self) -> Option<String> {
        self.may_be_final.then(|| self.key.shared_id())
    }

    /// Its answer goes to the cache shared by replicas too, if final, as `id` (its
    /// [`Ticket::shared_id`]); `asked`: lookups that missed it there lately.
    pub fn share(
        &mut self,
        shared: Arc<crate::shared::Shared>,
        id: String,
        asked: u64,
        config: &crate::config::SharedConfig,
    ) {
        self.share = Some(Share {
            shared,
            id,
            asked,
            ttl: config.cache_ttl,
            max_bytes: config.cache_max_entry_bytes,
        });
    }

    /// The answer the cache shared by replicas holds for this read (`value`, as
    /// [`Ticket::shared_id`] named it), when it is this very read's (its key in full) and
    /// final here too (at or below this replica's final block, of the block this replica
    /// has at that height where it knows it): it is cached here and given to the reads
    /// waiting for it (the ticket is then spent: drop it). `None`: ask upstream.
    pub fn from_shared(&mut self, value: &[u8], ctx: &Ctx<'_>) -> Option<Bytes> {
        let (height, result) = self.check_shared(value, ctx)?;
        let result = Bytes::copy_from_slice(result);
        if let Some(id) = self.flight.take() {
            self.cache.land(self.key.hash, id, Some(&result));
        }
        let slot = method_slot(self.key.method);
        self.cache.stats.recount(slot, Count::Miss, Count::Shared);
        let entry = Entry {
            result: result.clone(),
            life: Life::Final,
            height,
        };
        self.cache.store.insert(self.key.to_key(), entry);
        Some(result)
    }

    /// The block height and result of a shared value, if it holds here.
    fn check_shared<'v>(&self, value: &'v [u8], ctx: &Ctx<'_>) -> Option<(u64, &'v [u8])> {
        let (key, hash, result) = decode_shared(value)?;
        if !self.key.is(key) || result == b"null" {
            return None;
        }
        let cache = &self.cache;
        let final_height = cache.final_height(ctx, cache.current_head(ctx))?;
        let height = match self.rule {
            Rule::At(n) => n,
            Rule::BlockAt(_) | Rule::ByHash => {
                let (number, named) = crate::method::block::named_block(self.key.method, result)?;
                if !named.eq_ignore_ascii_case(hash)
                    || matches!(self.rule, Rule::BlockAt(n) if n != number)
                {
                    return None;
                }
                number
            }
            Rule::Never | Rule::Head => return None,
        };
        let here = cache.tracker.get().and_then(|t| t.hash_at(height));
        let same_block = match (&here, hash.is_empty()) {
            (Some(h), false) => h.eq_ignore_ascii_case(hash),
            _ => true,
        };
        (height <= final_height && same_block).then_some((height, result))
    }

    /// Offers the upstream's answer (`Ok`: a `result`; `Err`: an error, not cached) to the
    /// cache and to the reads waiting for it.
    pub fn complete(mut self, answer: Result<&Bytes, ()>, ctx: &Ctx<'_>) {
        if let Some(id) = self.flight.take() {
            self.cache.land(self.key.hash, id, answer.ok());
        }
        if let Ok(result) = answer {
            let cache = self.cache.clone();
            cache.offer(&self, result, ctx);
        }
    }
}

impl ChainCache {
    /// An empty cache for `chain`, holding at most `max_bytes`.
    pub fn new(chain: Arc<str>, chain_id: u64, max_bytes: u64) -> Arc<ChainCache> {
        let stats = Arc::new(Stats::new());
        let store = Store::with(
            usize::try_from(max_bytes / 2048)
                .unwrap_or(1 << 20)
                .clamp(16, 1 << 20),
            max_bytes,
            Weigh,
            PassBuild::default(),
            Evictions(stats.clone()),
        );
        Arc::new_cyclic(|me| ChainCache {
            chain,
            chain_id,
            store,
            head: AtomicU64::new(0),
            gen: AtomicU64::new(0),
            final_seen: AtomicU64::new(0),
            index: Mutex::default(),
            epoch: AtomicU64::new(0),
            flights: Mutex::default(),
            next_flight: AtomicU64::new(0),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            tracker: OnceLock::new(),
            leased_until: AtomicU64::new(0),
            window_reads: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            me: me.clone(),
            stats,
        })
    }

    /// Answers about the head are no longer served from the cache until they are asked again
    /// (a write went through: the state may change before the tracker sees a new head).
    pub fn head_changed(&self) {
        self.gen.fetch_add(1, Relaxed);
    }

    /// Changes the most bytes kept (a reload).
    pub fn set_capacity(&self, max_bytes: u64) {
        if self.store.capacity() != max_bytes {
            self.store.set_capacity(max_bytes);
        }
    }

    /// Bytes held now (answers, keys and bookkeeping) and entries.
    pub fn held(&self) -> (u64, usize) {
        (self.store.weight(), self.store.len())
    }

    /// What `/status` shows of the cache.
    pub fn describe(
        &self,
        config: &CacheConfig,
        tracker_config: &TrackerConfig,
    ) -> serde_json::Value {
        let (bytes, entries) = self.held();
        let now = crate::state::upstream::now_us();
        let s = &self.stats;
        serde_json::json!({
            "enabled": config.enabled,
            "bytes": bytes,
            "max_bytes": config.max_bytes,
            "entries": entries,
            "hits": s.total(Count::Hit),
            "merged": s.total(Count::Merged),
            "shared_hits": s.total(Count::Shared),
            "misses": s.total(Count::Miss),
            "evicted_for_room": s.total(Count::EvictedSize),
            "evicted_by_reorgs": s.total(Count::EvictedReorg),
            "head": self.followed_head(now, tracker_config),
            "finalized": self.tracker.get().and_then(|t| t.finalized()),
            "followed_for_cache": self.leased_until.load(Relaxed) > now,
        })
    }

    /// The tracked head, while the chain is followed for the cache and current.
    pub fn followed_head(&self, now_us: u64, tracker_config: &TrackerConfig) -> Option<u64> {
        let tracker = self.tracker.get()?;
        let checked = tracker.checked_us();
        let stale = 3 * tracker_config.poll_interval.as_micros() as u64 + 1_000_000;
        let head = self.head.load(Relaxed);
        (checked != 0 && now_us.saturating_sub(checked) <= stale && head != 0).then_some(head)
    }

    /// The tracked head, when answers about the head or recent blocks may be cached and
    /// served: the chain is followed, current, and nobody is known to have a higher block (an
    /// answer that proved one, a health check: the tracker has not seen the new head yet, so
    /// what was cached for the old one is not served meanwhile).
    fn current_head(&self, ctx: &Ctx<'_>) -> Option<u64> {
        if !ctx.config.head {
            return None;
        }
        let head = self.followed_head(ctx.now_us, ctx.tracker)?;
        ctx.known_head
            .is_none_or(|known| known <= head)
            .then_some(head)
    }

    /// The highest final block: the chain's `finalized` block where detour has read it, else
    /// the head less `finality_depth`.
    fn final_height(&self, ctx: &Ctx<'_>, followed: Option<u64>) -> Option<u64> {
        let tagged = self.tracker.get().and_then(|t| t.finalized());
        let height = match (tagged, followed.or(ctx.known_head)) {
            (Some(f), _) => Some(f),
            (None, Some(head)) => head.checked_sub(ctx.depth),
            (None, None) => None,
        }?;
        if self.final_seen.load(Relaxed) < height {
            self.final_seen.fetch_max(height, Relaxed);
        }
        Some(height)
    }

    /// A read that depends on the head or on recent blocks arrived: the cache learns the
    /// chain's changes from its tracker (whoever has it followed), and has the chain followed
    /// while such reads arrive at least once per `tracker.poll_interval` on average over
    /// [`RATE_WINDOW`]: following costs about one upstream call per interval, so it is only
    /// started where it can save more than it costs.
    fn recent_read(&self, ctx: &Ctx<'_>) {
        if self.tracker.get().is_none() {
            let observer: Weak<dyn Observer> = self.me.clone();
            let _ = self
                .tracker
                .set(ctx.registry.observe(&self.chain, ctx.tracker, observer));
        }
        let window = RATE_WINDOW.as_micros() as u64;
        let started = self.window_start.load(Relaxed);
        let count = if ctx.now_us.saturating_sub(started) >= window {
            self.window_start.store(ctx.now_us, Relaxed);
            self.window_reads.store(1, Relaxed);
            1
        } else {
            self.window_reads.fetch_add(1, Relaxed) + 1
        };
        let worth = (window / (ctx.tracker.poll_interval.as_micros() as u64).max(1)).max(1);
        let leased = self.leased_until.load(Relaxed);
        if leased > ctx.now_us + LEASE.as_micros() as u64 / 2 {
            return;
        }
        // Once following, any such read extends the lease; before, the rate must be worth it.
        if leased > ctx.now_us || count >= worth {
            let until = ctx.now_us + LEASE.as_micros() as u64;
            self.leased_until.store(until, Relaxed);
            ctx.registry.lease(&self.chain, ctx.tracker, until);
        }
    }

    /// Looks a call up. `bypass`: the client wants a fresh answer (which is still cached).
    pub fn lookup<'a>(
        &self,
        method: &'a str,
        params: Option<Raw<'a>>,
        bypass: bool,
        ctx: &Ctx<'_>,
    ) -> Lookup<'a> {
        let policy = if ctx.config.methods.is_empty() {
            None
        } else {
            ctx.config.methods.get(method).copied()
        };
        let rule = rules::rule(method, params, policy);
        if rule == Rule::Never {
            return Lookup::Skip;
        }
        if ctx.config.head && !matches!(rule, Rule::At(_)) {
            self.recent_read(ctx);
        }
        let followed = self.current_head(ctx);
        // Whether an answer could be cached at all now.
        let cacheable = match rule {
            Rule::Never => false,
            Rule::Head => followed.is_some(),
            Rule::At(n) => self.final_height(ctx, followed).is_some_and(|f| n <= f),
            Rule::BlockAt(n) => {
                followed.is_some_and(|h| n <= h)
                    || self.final_height(ctx, followed).is_some_and(|f| n <= f)
            }
            Rule::ByHash => true,
        };
        if !cacheable {
            return Lookup::Skip;
        }
        let Some(me) = self.me.upgrade() else {
            return Lookup::Skip;
        };
        let slot = method_slot(method);
        let key = KeyRef::new(method, params);
        let gen = self.gen.load(Relaxed);
        if bypass {
            self.stats.add(slot, Count::Bypass);
        } else if let Some(entry) = self.store.get(&key) {
            let good = match entry.life {
                Life::Final => true,
                Life::Canonical => followed.is_some(),
                Life::Head(g) => g == gen && followed.is_some(),
            };
            if good {
                self.stats.add(slot, Count::Hit);
                return Lookup::Hit(entry.result);
            }
        }
        let epoch = self.epoch.load(Relaxed);
        let flight = if bypass {
            None
        } else {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            let same = flights.entry(key.hash).or_default();
            if let Some(m) = same.iter_mut().find(|m| m.gen == gen && key.is(&m.key)) {
                let flight = m.flight.get_or_insert_with(Default::default).clone();
                return Lookup::Wait(Waiter {
                    flight,
                    cache: me,
                    slot,
                });
            }
            let id = self.next_flight.fetch_add(1, Relaxed);
            same.push(Marker {
                id,
                gen,
                key: key.bytes(),
                flight: None,
            });
            Some(id)
        };
        if !bypass {
            self.stats.add(slot, Count::Miss);
        }
        let may_be_final = match rule {
            Rule::At(_) | Rule::ByHash => true,
            Rule::BlockAt(n) => self.final_height(ctx, followed).is_some_and(|f| n <= f),
            Rule::Never | Rule::Head => false,
        };
        Lookup::Miss(Ticket {
            cache: me,
            key,
            rule,
            gen,
            epoch,
            flight,
            may_be_final,
            share: None,
        })
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read in flight `id` (its key's hash `hash`) ended with `answer` (a `result`):
    /// identical reads no longer wait for it, and those that did get the answer.
    fn land(&self, hash: u64, id: u64, answer: Option<&Bytes>) {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            let Some(same) = flights.get_mut(&hash) else {
                return;
            };
            let flight = same
                .iter()
                .position(|m| m.id == id)
                .and_then(|at| same.remove(at).flight);
            if same.is_empty() {
                flights.remove(&hash);
            }
            flight
        };
        if let Some(flight) = flight {
            let _ = flight.done.set(answer.cloned());
            flight.landed.notify_waiters();
        }
    }

    /// Whether `hash`'s key was seen lately (and notes that it is seen now).
    fn seen_before(&self, hash: u64) -> bool {
        // 0 marks an empty slot: a key hashing to 0 is counted as seen.
        self.seen[hash as usize & (SEEN_SLOTS - 1)].swap(hash, Relaxed) == hash
    }

    /// Caches `result`, if its ticket's rule allows it now.
    fn offer(&self, ticket: &Ticket<'_>, result: &Bytes, ctx: &Ctx<'_>) {
        if result.as_ref() == b"null" {
            return;
        }
        let admitted = self.seen_before(ticket.key.hash);
        // Shared when final and asked for twice, here or across the replicas.
        let share = ticket
            .share
            .as_ref()
            .filter(|s| (admitted || s.asked >= 2) && result.len() as u64 <= s.max_bytes);
        if !admitted && share.is_none() {
            return;
        }
        let followed = self.current_head(ctx);
        let final_height = self.final_height(ctx, followed);
        let is_final = |n: u64| final_height.is_some_and(|f| n <= f);
        let mut named_hash = None;
        let (life, height) = match ticket.rule {
            Rule::Never => return,
            Rule::Head => match followed {
                Some(head) if self.gen.load(Relaxed) == ticket.gen => {
                    (Life::Head(ticket.gen), head)
                }
                _ => return,
            },
            Rule::At(n) if is_final(n) => (Life::Final, n),
            Rule::At(_) => return,
            Rule::BlockAt(_) | Rule::ByHash => {
                let Some((number, hash)) =
                    crate::method::block::named_block(ticket.key.method, result)
                else {
                    return;
                };
                if let Rule::BlockAt(n) = ticket.rule {
                    if n != number {
                        return;
                    }
                }
                named_hash = Some(hash);
                if is_final(number) {
                    (Life::Final, number)
                } else {
                    // Canonical: the tracked chain has this very block at that height.
                    let tracked = match (followed, self.tracker.get()) {
                        (Some(_), Some(t)) => t.hash_at(number),
                        _ => None,
                    };
                    if tracked
                        .as_deref()
                        .is_none_or(|h| !h.eq_ignore_ascii_case(hash))
                    {
                        return;
                    }
                    (Life::Canonical, number)
                }
            }
        };
        if let (Life::Final, Some(share)) = (life, share) {
            // With the hash of the block it depends on, where known, checked by every reader.
            let tracked = match named_hash {
                Some(_) => None,
                None => self.tracker.get().and_then(|t| t.hash_at(height)),
            };
            let hash = named_hash.or(tracked.as_deref()).unwrap_or("");
            let value = encode_shared(&ticket.key, hash, result);
            share
                .shared
                .store(self.chain_id, &share.id, value, share.ttl);
        }
        if !admitted {
            return;
        }
        // A copy of its own: the answer may be a slice of a larger buffer, which the cache must
        // not keep alive (its size is what the cache counts).
        let entry = Entry {
            result: Bytes::copy_from_slice(result),
            life,
            height,
        };
        let key = ticket.key.to_key();
        if life == Life::Canonical {
            let mut index = self.lock_index();
            if self.epoch.load(Relaxed) != ticket.epoch {
                // A reorg came between: the answer may be from the replaced branch.
                return;
            }
            index.by_height.entry(height).or_default().push(key.clone());
            self.store.insert(key, entry);
        } else {
            self.store.insert(key, entry);
        }
    }

    /// Evicts every indexed (non-final) entry at or above `height`, and final ones too when
    /// `height` is at or below what was taken as final.
    fn evict_from(&self, index: &mut Index, height: u64) {
        self.epoch.fetch_add(1, Relaxed);
        let dropped = index.by_height.split_off(&height);
        for key in dropped.into_values().flatten() {
            if let Some((key, _)) = self.store.remove(&key) {
                self.stats
                    .add(method_slot(key.method()), Count::EvictedReorg);
            }
        }
        if height <= self.final_seen.load(Relaxed) {
            tracing::warn!(
                chain = &*self.chain,
                height,
                "a reorg replaced blocks taken as final: evicting cached answers from there on"
            );
            self.store.retain(|key, e| {
                let keep = e.height < height || matches!(e.life, Life::Head(_));
                if !keep {
                    self.stats
                        .add(method_slot(key.method()), Count::EvictedReorg);
                }
                keep
            });
        }
    }
}

impl Observer for ChainCache {
    fn moved(&self, head: u64, replaced_from: Option<u64>) {
        let mut index = self.lock_index();
        if let Some(h) = replaced_from {
            self.evict_from(&mut index, h);
        }
        self.head.store(head, Relaxed);
        self.gen.fetch_add(1, Relaxed);
        // Entries at heights now final stay cached, and out of the index.
        let fin = self.final_seen.load(Relaxed);
        if index
            .by_height
            .first_key_value()
            .is_some_and(|(&h, _)| h <= fin)
        {
            index.by_height = index.by_height.split_off(&(fin + 1));
        }
    }

    fn lost(&self) {
        let mut index = self.lock_index();
        self.head.store(0, Relaxed);
        self.gen.fetch_add(1, Relaxed);
        self.epoch.fetch_add(1, Relaxed);
        let dropped = std::mem::take(&mut index.by_height);
        for key in dropped.into_values().flatten() {
            if let Some((key, _)) = self.store.remove(&key) {
                self.stats
                    .add(method_slot(key.method()), Count::EvictedReorg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_values_carry_key_and_hash_and_bad_ones_are_refused() {
        let params = serde_json::value::RawValue::from_string(r#"["0xa",false]"#.into()).unwrap();
        let key = KeyRef::new("eth_getBlockByNumber", Some(Raw::from(&*params)));
        let result = br#"{"number":"0xa","hash":"0xab"}"#;
        let v = encode_shared(&key, "0xab", result);
        let (k, hash, r) = decode_shared(&v).unwrap();
        assert!(key.is(k));
        assert_eq!((hash, r), ("0xab", &result[..]));
        // Another key's value is told apart by its key, in full.
        let other = KeyRef::new("eth_getBlockByNumber", None);
        assert!(!other.is(k));
        assert_ne!(key.shared_id(), other.shared_id());
        assert_eq!(key.shared_id().len(), 32);
        // Truncated or foreign values are not read.
        for cut in [0, 5, SHARED_MAGIC.len() + 2, SHARED_MAGIC.len() + 6] {
            assert!(decode_shared(&v[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode_shared(b"{\"result\":1}").is_none());
    }
}
