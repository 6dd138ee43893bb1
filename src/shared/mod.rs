//! State shared by detour replicas through Redis (`[shared] redis_url`), or a compatible
//! server such as Valkey. Optional: without it nothing here runs and nothing changes.
//!
//! Shared now: the highest `eth_blockNumber` answered per chain, so a client moved between
//! replicas never sees the head go back (see [`Shared::raise_block`]); and upstream verdicts:
//! an upstream one replica ejected (refused connections, a 429 with its `Retry-After`,
//! rejected credentials) is cooled down by the others too, and its recovery lifts that; one
//! found on another chain is checked again by the others at once (see [`Verdict`]). Client
//! rate limits hold across replicas ([`Shared::take_requests`]), upstream quotas are split
//! between them ([`Shared::share_budget`]), and final cached answers are shared
//! ([`Shared::cached`], [`Shared::store`]). Each replica still probes on its own; latency estimates are not shared.
//!
//! It fails open and never stalls a request: every operation on the request path has
//! `op_timeout` (5 ms by default), and while Redis is unreachable (an error, or three
//! operations in a row past their time) none is attempted at all: requests are served with the
//! replica's own state, as without Redis, while a background check pings Redis every
//! [`RECHECK`] and brings sharing back when it answers. Each transition is logged once, and
//! shown in `/status` and the metrics. The URL's password is a secret like upstream keys: it
//! is never logged, shown or part of an error.

pub mod metrics;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::SharedConfig;

/// How often an unreachable Redis is asked again.
pub const RECHECK: Duration = Duration::from_millis(500);
/// Operations in a row past their time that count as Redis being unreachable.
const SLOW_IN_A_ROW: u32 = 3;

/// Raises the shared highest block to ARGV[1] if higher (refreshing its expiry), tells every
/// replica on channel ARGV[3] (`<chain id> <block>`, chain id ARGV[4]), and returns the
/// highest: one round trip, atomic on the server. A stored block more than ARGV[2] above the
/// answer is from before a chain reset (a dev chain restarted): the answer replaces it.
const RAISE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if n > cur or cur > n + tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400)
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[1])
  return n
end
return cur
";

/// One GCRA step for a client's shared rate limit, taking up to ARGV[3] requests at once.
/// KEYS[1] holds the theoretical arrival time (µs, the server's clock: replicas' clocks never
/// matter); ARGV[1] is the emission interval (µs per request), ARGV[2] the burst. Returns
/// `{granted, wait_us}`: `granted` requests were taken (at most the room left), or none, and
/// then `wait_us` until one can be.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local step = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + burst * step - tat) / step)
if room <= 0 then
  return {0, tat + step - burst * step - now}
end
local granted = math.min(want, room)
tat = tat + granted * step
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
";

/// Looks a shared cached answer up (KEYS[1]): its value, or, when there is none, how many
/// lookups have missed it lately (KEYS[2], counted for [`ASKED_FOR`] seconds), this one
/// included: an answer is shared once a second lookup misses it, so reads made once (an
/// indexer's scan) cost Redis no memory.
const CACHE_GET: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return n
";

/// Records what this replica (ARGV[1]) tells of an upstream's budget (ARGV[2]: what it
/// used, per second, and whether it wanted more) in the budget's hash (KEYS[1]), with the
/// server's time, and returns what every replica that told within ARGV[3] ms said, as
/// `{replica, text, …}` (the others are dropped).
const BUDGET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local at = string.match(all[i + 1], ' (%d+)$')
  if at and now - tonumber(at) <= tonumber(ARGV[3]) then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

/// What a replica tells the others of its use of an upstream's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUse {
    /// Calls or compute units it sent lately, per second.
    pub used: u64,
    /// It had requests wait for room in its part: it would use more.
    pub wants_more: bool,
}

/// How long (s) Redis counts the lookups that missed a shared cached answer.
pub const ASKED_FOR: u64 = 300;

/// What Redis holds for a cached answer.
#[derive(Debug)]
pub enum Stored {
    /// The stored value.
    Found(Vec<u8>),
    /// None; lookups that missed it lately, this one included.
    Missing(u64),
}

/// How far the shared highest block may be above a replica's answer before it counts as
/// left from a chain reset rather than a replica ahead.
pub const RESET_GAP: u64 = 1024;

/// An upstream verdict, as replicas tell each other (JSON on the `<prefix>:verdicts` channel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// The chain's id.
    pub chain_id: u64,
    /// The upstream's configured name.
    pub upstream: String,
    /// Ejected until this time (Unix ms); 0: it recovered.
    pub until_unix_ms: u64,
    /// The replica that reached it.
    pub from: String,
    /// It answered with another chain's id: the others check its chain id again at once.
    #[serde(default)]
    pub wrong_chain: bool,
}

/// What a replica does with what the others tell it (through pub/sub).
pub trait Listener: Send + Sync {
    /// Another replica's upstream verdict.
    fn verdict(&self, verdict: Verdict);
    /// The highest block any replica answered on chain `chain_id` is now `n`.
    fn highest_block(&self, chain_id: u64, n: u64);
    /// The subscription was made again: messages may have been lost meanwhile.
    fn resubscribed(&self);
}

/// The connection to Redis and what this replica knows of it.
pub struct Shared {
    prefix: String,
    /// The channel new highest blocks are published on.
    blocks: String,
    /// This replica's id in verdicts (random per process).
    replica: String,
    client: redis::Client,
    op_timeout: Duration,
    /// The URL with its password masked.
    display: String,
    /// Texts never to show (the password, the user name).
    secrets: Vec<String>,
    /// Made by [`Shared::start`] (it needs a Tokio runtime); it reconnects by itself.
    conn: std::sync::OnceLock<ConnectionManager>,
    /// The time budget of operations off the request path.
    response_timeout: Duration,
    raise: redis::Script,
    gcra: redis::Script,
    cache_get: redis::Script,
    budget: redis::Script,
    /// Redis answered lately: operations are attempted.
    up: AtomicBool,
    /// A background check is running.
    checking: AtomicBool,
    /// Operations in a row that ran out of time.
    slow: AtomicU32,
    ops: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("redis", &self.display)
            .field("prefix", &self.prefix)
            .field("up", &self.up.load(Relaxed))
            .finish()
    }
}

impl Shared {
    /// The connection for `config`, when it names a Redis (`None`: nothing is shared). Made
    /// without connecting, outside a runtime too; [`Shared::start`] connects.
    pub fn new(config: &SharedConfig) -> Result<Option<Arc<Shared>>, String> {
        let Some(url) = config.redis_url.as_deref() else {
            return Ok(None);
        };
        let (display, secrets) = redact_url(url);
        let opened = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("shared.ca_file {}: {e}", path.display()))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url, certs)
            }
            None => redis::Client::open(url),
        };
        let client = opened.map_err(|e| {
            format!(
                "shared.redis_url {display}: {}",
                scrub(&e.to_string(), &secrets)
            )
        })?;
        Ok(Some(Arc::new(Shared {
            prefix: config.prefix.clone(),
            blocks: format!("{}:blocks", config.prefix),
            replica: format!("{:016x}", fastrand::u64(..)),
            client,
            op_timeout: config.op_timeout,
            display,
            secrets,
            conn: std::sync::OnceLock::new(),
            response_timeout: config.op_timeout.max(Duration::from_millis(100)),
            raise: redis::Script::new(RAISE),
            gcra: redis::Script::new(GCRA),
            cache_get: redis::Script::new(CACHE_GET),
            budget: redis::Script::new(BUDGET),
            up: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            slow: AtomicU32::new(0),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })))
    }

    /// Connects in the background (inside a Tokio runtime).
    pub fn start(self: &Arc<Self>) {
        if self.conn.get().is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_max_delay(RECHECK);
            match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
                Ok(conn) => {
                    let _ = self.conn.set(conn);
                }
                Err(e) => {
                    let why = scrub(&e.to_string(), &self.secrets);
                    tracing::warn!(redis = %self.display, reason = %why, "shared state unavailable");
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    return;
                }
            }
        }
        self.recheck();
    }

    /// The connection, once [`Shared::start`] made it.
    fn conn(&self) -> Option<ConnectionManager> {
        self.conn.get().cloned()
    }

    /// Whether Redis answers: operations are attempted.
    pub fn available(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// The URL as shown (password masked).
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Raises the highest `eth_blockNumber` answered on chain `chain_id` by any replica to `n`,
    /// and returns that highest, or `None` when Redis is unavailable or too slow (the caller
    /// answers from its own state).
    pub async fn raise_block(self: &Arc<Self>, chain_id: u64, n: u64) -> Option<u64> {
        let key = format!("{}:chain:{chain_id}:block", self.prefix);
        let mut conn = self.conn()?;
        let mut call = self.raise.key(key);
        call.arg(n)
            .arg(RESET_GAP)
            .arg(self.blocks_channel())
            .arg(chain_id);
        self.op(call.invoke_async::<u64>(&mut conn)).await
    }

    /// Takes up to `want` requests from `client`'s cluster-wide budget of `per_second` with
    /// `burst` (an atomic GCRA step on the server): `Ok(n)`, `n` ≥ 1 taken, or `Err(wait)` until
    /// one can be. `None` when Redis is unavailable or too slow (the replica's own limit
    /// stands).
    pub async fn take_requests(
        self: &Arc<Self>,
        client: &str,
        per_second: u32,
        burst: u32,
        want: u32,
    ) -> Option<Result<u32, Duration>> {
        let mut conn = self.conn()?;
        let step = 1_000_000u64.div_ceil(u64::from(per_second.max(1)));
        let mut call = self.gcra.key(format!("{}:ratelimit:{client}", self.prefix));
        call.arg(step).arg(burst.max(1)).arg(want.max(1));
        let (granted, wait_us) = self.op(call.invoke_async::<(u32, u64)>(&mut conn)).await?;
        Some(if granted > 0 {
            Ok(granted)
        } else {
            Err(Duration::from_micros(wait_us.max(1)))
        })
    }

    fn cache_key(&self, chain_id: u64, id: &str) -> String {
        format!("{}:cache:{chain_id}:{id}", self.prefix)
    }

    /// The cached answer stored as `id` for chain `chain_id`, or how often it was missed;
    /// `None` when Redis is unavailable or too slow (the read goes upstream).
    pub async fn cached(self: &Arc<Self>, chain_id: u64, id: &str) -> Option<Stored> {
        let mut conn = self.conn()?;
        let mut call = self.cache_get.key(self.cache_key(chain_id, id));
        call.key(format!("{}:asked:{chain_id}:{id}", self.prefix))
            .arg(ASKED_FOR);
        match self
            .op(call.invoke_async::<redis::Value>(&mut conn))
            .await?
        {
            redis::Value::BulkString(v) => Some(Stored::Found(v)),
            redis::Value::Int(n) => Some(Stored::Missing(n.max(0) as u64)),
            _ => None,
        }
    }

    /// Stores a cached answer as `id` for chain `chain_id`, kept `ttl`, in the background.
    pub fn store(self: &Arc<Self>, chain_id: u64, id: &str, value: Vec<u8>, ttl: Duration) {
        if !self.up.load(Relaxed) {
            return;
        }
        let Some(mut conn) = self.conn() else {
            return;
        };
        let (me, key) = (self.clone(), self.cache_key(chain_id, id));
        // Off the request path: it may take longer than `op_timeout`.
        tokio::spawn(async move {
            let limit = me.response_timeout;
            let _ = me
                .op_within(
                    limit,
                    redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("EX")
                        .arg(ttl.as_secs().max(1))
                        .query_async::<()>(&mut conn),
                )
                .await;
        });
    }

    /// Tells the other replicas how this one uses upstream `upstream`'s budget on chain
    /// `chain_id`, and learns how each of those that told within `fresh` does (this one
    /// first). Off the request path.
    pub async fn share_budget(
        self: &Arc<Self>,
        chain_id: u64,
        upstream: &str,
        mine: BudgetUse,
        fresh: Duration,
    ) -> Option<Vec<BudgetUse>> {
        let mut conn = self.conn()?;
        let mut call = self
            .budget
            .key(format!("{}:budget:{chain_id}:{upstream}", self.prefix));
        call.arg(&self.replica)
            .arg(format!("{} {}", mine.used, u8::from(mine.wants_more)))
            .arg(fresh.as_millis() as u64);
        let limit = self.response_timeout;
        let told = self
            .op_within(limit, call.invoke_async::<Vec<(String, String)>>(&mut conn))
            .await?;
        let mut all = vec![mine];
        for (replica, text) in told {
            let mut words = text.split(' ');
            let (Some(used), Some(more)) = (words.next(), words.next()) else {
                continue;
            };
            if replica != self.replica {
                all.push(BudgetUse {
                    used: used.parse().unwrap_or(0),
                    wants_more: more == "1",
                });
            }
        }
        Some(all)
    }

    /// This replica's id in verdicts.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn verdicts_channel(&self) -> String {
        format!("{}:verdicts", self.prefix)
    }

    fn blocks_channel(&self) -> &str {
        &self.blocks
    }

    /// Tells the other replicas of a verdict, in the background (nothing when Redis is
    /// unavailable: each replica still finds out by itself).
    pub fn publish(self: &Arc<Self>, verdict: Verdict) {
        if !self.up.load(Relaxed) {
            return;
        }
        let Ok(text) = serde_json::to_string(&verdict) else {
            return;
        };
        let Some(mut conn) = self.conn() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let channel = me.verdicts_channel();
            let _ = me
                .op(redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(text)
                    .query_async::<i64>(&mut conn))
                .await;
        });
    }

    /// Hands what other replicas publish (verdicts, highest blocks) to `listener`, for as long
    /// as this lives: a subscription of its own, made again whenever it breaks.
    pub fn subscribe(self: &Arc<Self>, listener: Arc<dyn Listener>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                let Some(me) = weak.upgrade() else {
                    return;
                };
                let client = me.client.clone();
                let (verdicts, blocks) = (me.verdicts_channel(), me.blocks.clone());
                let replica = me.replica.clone();
                drop(me);
                let subscribed = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&[&verdicts, &blocks]).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                })
                .await;
                if let Ok(Ok(pubsub)) = subscribed {
                    listener.resubscribed();
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        if weak.strong_count() == 0 {
                            return;
                        }
                        let payload = msg.get_payload_bytes();
                        if msg.get_channel_name() == blocks {
                            let text = std::str::from_utf8(payload).unwrap_or("");
                            let mut words = text.split(' ').map(str::parse::<u64>);
                            if let (Some(Ok(chain_id)), Some(Ok(n))) = (words.next(), words.next())
                            {
                                listener.highest_block(chain_id, n);
                            }
                            continue;
                        }
                        let Ok(v) = serde_json::from_slice::<Verdict>(payload) else {
                            continue;
                        };
                        if v.from != replica {
                            listener.verdict(v);
                        }
                    }
                }
                // Lost: what was learned may be stale until subscribed again.
                listener.resubscribed();
                tokio::time::sleep(RECHECK).await;
            }
        });
    }

    /// Runs one operation within `op_timeout`, unless Redis is known to be unavailable.
    async fn op<T>(
        self: &Arc<Self>,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        self.op_within(self.op_timeout, fut).await
    }

    /// Runs one operation within `limit`, unless Redis is known to be unavailable.
    async fn op_within<T>(
        self: &Arc<Self>,
        limit: Duration,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        if !self.up.load(Relaxed) {
            self.recheck();
            return None;
        }
        self.ops.fetch_add(1, Relaxed);
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => {
                if self.slow.load(Relaxed) != 0 {
                    self.slow.store(0, Relaxed);
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.errors.fetch_add(1, Relaxed);
                self.went_down(&e.to_string());
                None
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Relaxed);
                if self.slow.fetch_add(1, Relaxed) + 1 >= SLOW_IN_A_ROW {
                    self.went_down(&format!(
                        "{SLOW_IN_A_ROW} operations in a row took over {limit:?}"
                    ));
                }
                None
            }
        }
    }

    fn went_down(self: &Arc<Self>, why: &str) {
        let why = scrub(why, &self.secrets);
        if self.up.swap(false, Relaxed) {
            tracing::warn!(redis = %self.display, reason = %why,
                "shared state unavailable: serving with this replica's own state until Redis answers again");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.recheck();
    }

    /// Starts the background check that pings Redis until it answers (one at a time).
    fn recheck(self: &Arc<Self>) {
        if self.checking.swap(true, Relaxed) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.checking.store(false, Relaxed);
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(check(weak));
    }

    /// What `/status` shows.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "redis": self.display,
            "prefix": self.prefix,
            "replica": self.replica,
            "state": if self.up.load(Relaxed) { "up" } else { "down" },
            "op_timeout_ms": self.op_timeout.as_secs_f64() * 1000.0,
            "operations": self.ops.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "timeouts": self.timeouts.load(Relaxed),
            "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }
}

/// Pings Redis every [`RECHECK`] until it answers, then marks it up (logged once).
async fn check(shared: Weak<Shared>) {
    let mut first = true;
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        let Some(mut conn) = s.conn() else {
            s.checking.store(false, Relaxed);
            return;
        };
        let pinged = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match pinged {
            Ok(Ok(_)) => {
                s.slow.store(0, Relaxed);
                s.checking.store(false, Relaxed);
                if !s.up.swap(true, Relaxed) {
                    tracing::info!(redis = %s.display, "shared state available: Redis answers");
                }
                return;
            }
            Ok(Err(e)) => {
                let why = scrub(&e.to_string(), &s.secrets);
                if first && s.last_error.lock().map(|l| l.is_none()).unwrap_or(true) {
                    tracing::warn!(redis = %s.display, reason = %why,
                        "shared state unavailable: serving with this replica's own state until Redis answers");
                }
                *s.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
            Err(_) => {
                *s.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some("no answer to PING within 1 s".into());
            }
        }
        first = false;
        drop(s);
        tokio::time::sleep(RECHECK).await;
    }
}

/// The URL with its password masked, and the texts to keep out of messages.
fn redact_url(url: &str) -> (String, Vec<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return ("(unparsable URL)".into(), vec![url.to_owned()]);
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
            let mut secrets = vec![];
            if !password.is_empty() {
                secrets.push(password.to_owned());
            }
            let shown = if user.is_empty() {
                format!("{scheme}://***@{host}{path}")
            } else {
                format!("{scheme}://{user}:***@{host}{path}")
            };
            (shown, secrets)
        }
        None => (url.to_owned(), vec![]),
    }
}

/// `text` with every secret replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        let (shown, secrets) = redact_url("redis://app:s3cret@10.0.0.5:6380/2");
        assert_eq!(shown, "redis://app:***@10.0.0.5:6380/2");
        assert_eq!(secrets, vec!["s3cret".to_string()]);
        let (shown, secrets) = redact_url("rediss://:pw@cache.internal");
        assert_eq!(shown, "rediss://***@cache.internal");
        assert_eq!(secrets, vec!["pw".to_string()]);
        assert_eq!(
            redact_url("redis://127.0.0.1:6379").0,
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            scrub("auth failed for s3cret", &["s3cret".into()]),
            "auth failed for ***"
        );
    }
}
