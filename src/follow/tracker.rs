//! The chain tracker: the canonical chain of one chain as detour sees it, followed by polling the
//! latest block through detour's failover, and the events subscribers read from it.
//!
//! Each round reads the latest block. A block above the tracked tip is linked to the tracked
//! chain through its ancestry, fetched by parent hash (`eth_getBlockByHash`) back to a block
//! the tracker holds: every height between is filled in (a backfill, when the followed
//! upstream changed or polls were missed), and a parent that differs from the tracked block at
//! its height is a reorg, undone from the fork point. A round is applied whole or not at all: a
//! round whose fetches fail changes nothing, and the next one tries again. A block at the tip's
//! height with another hash is a reorg that kept the height (as `anvil_reorg` makes them), and
//! is linked the same way. A block below the tip (an upstream behind the others) changes
//! nothing.
//!
//! What the tracker saw goes into an event log, in order: `Added` for each block that became
//! canonical (lowest first), `Removed` for each block a reorg dropped (highest first, before the
//! new branch's blocks). Readers keep a sequence number and read what came after it, so every
//! height reaches each reader once, in order, with no gaps. While log filters exist, each added
//! block's logs are fetched with it (`eth_getLogs` by block hash: one call per block, however
//! many filters; none for a block whose `logsBloom` is empty), so a reorg can report the
//! dropped blocks' logs as removed. An empty answer for a block whose bloom is not empty is
//! taken for an upstream that does not have the block yet, and the round is tried again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Source;

/// One block of the tracked chain.
#[derive(Debug, Clone)]
pub struct Block {
    /// Its height.
    pub number: u64,
    /// Its hash, lowercase `0x…`.
    pub hash: Box<str>,
    /// Its parent's hash, lowercase `0x…`.
    pub parent: Box<str>,
    /// Its logs, when log filters existed as it was added.
    pub logs: Option<Vec<Log>>,
    /// Its `logsBloom` is all zeros (or absent): it has no logs.
    pub no_logs: bool,
    /// The header as `newHeads` notifications carry it: the block without its transactions,
    /// uncles, withdrawals, size and total difficulty, as geth sends it.
    pub header: Box<RawValue>,
}

/// One log of a block, as the upstream returned it, with what filters match on.
#[derive(Debug, Clone)]
pub struct Log {
    /// The log object, verbatim.
    pub raw: Box<RawValue>,
    /// The emitting contract, lowercase.
    pub address: Box<str>,
    /// The topics, lowercase.
    pub topics: Vec<Box<str>>,
}

/// What happened to the canonical chain.
#[derive(Debug, Clone)]
pub enum Event {
    /// The block became canonical.
    Added(Arc<Block>),
    /// A reorg dropped the block.
    Removed(Arc<Block>),
}

/// Told of every change to the tracked chain, in the order they happen. Called under the
/// tracker's lock, before anyone can read the change: keep it short, and never call the
/// tracker back.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// The tracked head is now block `head` (height and hash). `replaced_from`: the lowest height
    /// whose block was dropped or is no longer known to be canonical (a reorg, a restart from a
    /// new head), if any.
    fn moved(&self, head: u64, replaced_from: Option<u64>);
    /// The tracked chain is forgotten: following stopped, or restarts from scratch.
    fn lost(&self);
}

/// Tracker settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The deepest reorg undone: blocks kept to compare against. A deeper one restarts the
    /// tracked chain from the new head (and is logged).
    pub reorg_depth: usize,
    /// Most events kept for readers that have not read them yet.
    pub max_events: usize,
}

/// One chain's tracker.
#[derive(Debug)]
pub struct Tracker {
    /// The chain's name (its first URL path).
    pub chain: Arc<str>,
    settings: Settings,
    state: Mutex<State>,
    /// One round at a time.
    rounds: tokio::sync::Mutex<()>,
    /// The sequence number after the last event, sent when a round adds events: subscribers
    /// wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// What the tracker has done, for metrics.
    pub stats: Stats,
    /// The upstream whose WebSocket `newHeads` the chain is followed by now (`None`: by
    /// polling over HTTP), and since when.
    source: Mutex<(Option<Arc<str>>, std::time::Instant)>,
    /// Who is told of changes (the response cache), if anyone.
    observer: Mutex<Option<std::sync::Weak<dyn Observer>>>,
    /// When the head was last confirmed (a round, or a WebSocket source with nobody known past
    /// it), in `now_us` microseconds; 0: not followed now.
    checked_us: AtomicU64,
    /// The chain's `finalized` block as an upstream last reported it (0: not known);
    /// `u64::MAX`: the chain has no such tag.
    finalized: AtomicU64,
}

/// Counts of what a tracker did since detour started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blocks that became canonical.
    pub added: AtomicU64,
    /// Of those, blocks filled in below a new head (missed polls, an upstream switch).
    pub backfilled: AtomicU64,
    /// Blocks dropped by reorgs.
    pub removed: AtomicU64,
    /// Reorgs.
    pub reorgs: AtomicU64,
    /// Heads received over an upstream's WebSocket.
    pub ws_heads: AtomicU64,
    /// Times the WebSocket head source was given up (it closed, went silent, lagged or became
    /// unfit).
    pub source_changes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The tracked canonical chain's last blocks, contiguous, lowest first.
    window: VecDeque<Arc<Block>>,
    /// Events not yet dropped, in order; the first has sequence number `first_seq`.
    events: VecDeque<Event>,
    first_seq: u64,
    /// Log filters open on this chain: added blocks get their logs while there are any.
    log_readers: usize,
}

impl State {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }

    fn at(&self, number: u64) -> Option<&Arc<Block>> {
        let first = self.window.front()?.number;
        let i = number.checked_sub(first)?;
        self.window.get(usize::try_from(i).ok()?)
    }
}

/// The fields of a block header the tracker reads.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    number: &'a str,
    #[serde(borrow)]
    hash: &'a str,
    #[serde(borrow, rename = "parentHash")]
    parent: &'a str,
    #[serde(borrow, rename = "logsBloom", default)]
    bloom: Option<&'a str>,
}

/// The fields of a log the filters match on.
#[derive(Deserialize)]
struct LogFields {
    address: String,
    #[serde(default)]
    topics: Vec<String>,
}

/// What a round did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Blocks that became canonical.
    pub added: usize,
    /// Blocks a reorg dropped.
    pub removed: usize,
    /// Of `added`, blocks below the new head (filled in).
    pub backfilled: usize,
}

impl Tracker {
    /// A tracker with nothing tracked yet.
    pub fn new(chain: Arc<str>, settings: Settings) -> Tracker {
        Tracker {
            chain,
            settings: Settings {
                reorg_depth: settings.reorg_depth.max(1),
                max_events: settings.max_events.max(16),
            },
            state: Mutex::default(),
            rounds: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::Sender::new(0),
            stats: Stats::default(),
            source: Mutex::new((None, std::time::Instant::now())),
            observer: Mutex::new(None),
            checked_us: AtomicU64::new(0),
            finalized: AtomicU64::new(0),
        }
    }

    /// Tells `observer` of every change from now on (replacing any observer before it),
    /// starting with the tracked head, if there is one.
    pub fn set_observer(&self, observer: std::sync::Weak<dyn Observer>) {
        let state = self.lock();
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(observer);
        if let Some(head) = state.window.back() {
            let head = head.number;
            self.tell(|o| o.moved(head, None));
        }
    }

    fn tell(&self, f: impl FnOnce(&dyn Observer)) {
        let observer = self.observer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = observer.as_ref().and_then(std::sync::Weak::upgrade) {
            f(&*o);
        }
    }

    /// Records that the tracked head was confirmed now.
    pub fn checked(&self) {
        self.checked_us
            .store(crate::state::upstream::now_us(), Relaxed);
    }

    /// When the head was last confirmed (`now_us` µs; 0: the chain is not followed).
    pub fn checked_us(&self) -> u64 {
        self.checked_us.load(Relaxed)
    }

    /// Following stopped: the tracked chain is no longer kept current.
    pub fn stopped(&self) {
        self.checked_us.store(0, Relaxed);
        let _state = self.lock();
        self.tell(|o| o.lost());
    }

    /// The chain's `finalized` block as last read; `None`: not read yet, or the chain has no
    /// such tag.
    pub fn finalized(&self) -> Option<u64> {
        match self.finalized.load(Relaxed) {
            0 | u64::MAX => None,
            n => Some(n),
        }
    }

    /// Records the chain's `finalized` block (it only moves up), or `None`: the chain has no
    /// such tag.
    pub fn set_finalized(&self, number: Option<u64>) {
        match number {
            Some(n) => {
                let _ = self
                    .finalized
                    .fetch_update(Relaxed, Relaxed, |f| (f == u64::MAX || f < n).then_some(n));
            }
            None => self.finalized.store(u64::MAX, Relaxed),
        }
    }

    /// The hash of the tracked canonical block at `number`, if the tracker holds it.
    pub fn hash_at(&self, number: u64) -> Option<Box<str>> {
        self.lock().at(number).map(|b| b.hash.clone())
    }

    /// The upstream whose WebSocket heads the chain follows now (`None`: polling over HTTP).
    pub fn source(&self) -> Option<Arc<str>> {
        self.lock_source().0.clone()
    }

    pub(super) fn set_source(&self, upstream: Option<Arc<str>>) {
        let mut source = self.lock_source();
        if source.0 != upstream {
            *source = (upstream, std::time::Instant::now());
        }
    }

    /// How long the current source (or polling) has been in place.
    pub(super) fn source_age(&self) -> std::time::Duration {
        self.lock_source().1.elapsed()
    }

    fn lock_source(&self) -> std::sync::MutexGuard<'_, (Option<Arc<str>>, std::time::Instant)> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees a change whenever a round adds events.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number the next event will have: a reader starting now reads from here.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq()
    }

    /// The tracked head, once the first round succeeded.
    pub fn head(&self) -> Option<Arc<Block>> {
        self.lock().window.back().cloned()
    }

    /// Events from `seq` on, and the sequence number to read from next time. `lost` counts
    /// events dropped before this reader read them (it fell more than `max_events` behind).
    pub fn read(&self, seq: u64) -> (Vec<Event>, u64, u64) {
        let state = self.lock();
        let lost = state.first_seq.saturating_sub(seq);
        let from = seq.max(state.first_seq) - state.first_seq;
        let events = state
            .events
            .iter()
            .skip(usize::try_from(from).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        (events, state.next_seq(), lost)
    }

    /// Drops events every reader has read (`oldest` is the lowest sequence number a reader
    /// still needs; `None`: no readers).
    pub fn forget_before(&self, oldest: Option<u64>) {
        let mut state = self.lock();
        let keep_from = oldest.unwrap_or_else(|| state.next_seq());
        while state.first_seq < keep_from && state.events.pop_front().is_some() {
            state.first_seq += 1;
        }
    }

    /// Counts a log reader in and returns the sequence number it reads from: every block
    /// added from there on carries its logs.
    pub fn join_logs(&self) -> u64 {
        let mut state = self.lock();
        state.log_readers += 1;
        state.next_seq()
    }

    /// Counts a log reader out.
    pub fn leave_logs(&self) {
        let mut state = self.lock();
        state.log_readers = state.log_readers.saturating_sub(1);
    }

    /// Forgets the tracked chain and its readers (no filter is left: the next round starts
    /// afresh).
    pub fn reset(&self) {
        let mut state = self.lock();
        state.window.clear();
        state.log_readers = 0;
        self.tell(|o| o.lost());
    }

    /// One round: reads the latest block, links it to the tracked chain and records what
    /// changed. An error (a fetch failed, or an answer was not a block) changes nothing.
    pub async fn round(&self, source: &dyn Source) -> Result<Round, String> {
        self.round_from(source, None).await
    }

    /// A round from `head` (a `newHeads` notification) instead of asking for the latest block.
    pub async fn round_from(
        &self,
        source: &dyn Source,
        head: Option<Block>,
    ) -> Result<Round, String> {
        let _one = self.rounds.lock().await;
        let latest = match head {
            Some(head) => head,
            None => fetch_block(source, &self.chain, "eth_getBlockByNumber", "\"latest\"")
                .await?
                .ok_or("the latest block was null")?,
        };
        // Walk the new block's ancestry back to a block the tracker holds.
        let mut branch = vec![latest];
        let (fork, tip) = loop {
            let (tip, tip_hash, front, linked) = {
                let state = self.lock();
                let Some((tip, tip_hash)) = state.window.back().map(|b| (b.number, b.hash.clone()))
                else {
                    break (None, None);
                };
                let front = state.window.front().map_or(0, |b| b.number);
                let low = branch.last().map(|b| (b.number, b.parent.clone()));
                let linked = low.and_then(|(n, parent)| {
                    let at = state.at(n.checked_sub(1)?)?;
                    (at.hash == parent).then_some(at.number)
                });
                (tip, tip_hash, front, linked)
            };
            let newest = &branch[0];
            if branch.len() == 1
                && (newest.number < tip || (newest.number == tip && newest.hash == tip_hash))
            {
                // Below the tip (an upstream behind the others) or the tip itself: nothing new.
                // A different block at the tip's height is the upstream's new canonical head:
                // a reorg that kept the height, followed back to the fork point.
                return Ok(Round::default());
            }
            let newest = newest.number;
            if let Some(fork) = linked {
                break (Some(fork), Some(tip));
            }
            let low = &branch[branch.len() - 1];
            if low.number <= front || branch.len() > self.settings.reorg_depth + 1024 {
                // The branch does not meet the tracked chain within the reorg depth (or the gap
                // is too long to fill): start again from the new head.
                tracing::warn!(
                    chain = &*self.chain,
                    head = newest,
                    tracked = tip,
                    "the chain's new head does not link to the tracked chain within tracker.reorg_depth; following from the new head"
                );
                branch.truncate(1);
                break (None, Some(tip));
            }
            let parent = format!("\"{}\"", low.parent);
            let block = fetch_block(source, &self.chain, "eth_getBlockByHash", &parent)
                .await?
                .ok_or_else(|| {
                    format!("block {} (parent of {}) was null", low.parent, low.number)
                })?;
            if block.hash != low.parent || block.number + 1 != low.number {
                return Err(format!(
                    "asked for block {}, got {} at height {}",
                    low.parent, block.hash, block.number
                ));
            }
            branch.push(block);
        };
        branch.reverse();
        let with_logs = self.lock().log_readers > 0;
        if with_logs {
            for block in &mut branch {
                let logs = if block.no_logs {
                    Vec::new()
                } else {
                    fetch_logs(source, &self.chain, &block.hash).await?
                };
                if logs.is_empty() && !block.no_logs {
                    // Some nodes answer an unknown block hash with no logs rather than an error.
                    return Err(format!(
                        "no logs for block {} ({}), whose logsBloom says it has some",
                        block.number, block.hash
                    ));
                }
                block.logs = Some(logs);
            }
        }
        let mut round = Round::default();
        let mut state = self.lock();
        // Rounds take turns, and nothing else moves the window: this is a consistency check.
        let current_tip = state.window.back().map(|b| b.number);
        if current_tip != tip {
            return Ok(round);
        }
        if state.log_readers > 0 && !with_logs && tip.is_some() {
            // A log filter joined while the blocks were fetched: it reads from here, so these
            // blocks need their logs. The next round fetches them again, with logs.
            return Ok(round);
        }
        let first_new = branch[0].number;
        let replaced_from = match fork {
            Some(_) if state.window.back().is_some_and(|b| b.number >= first_new) => {
                Some(first_new)
            }
            Some(_) => None,
            None if tip.is_some() => Some(0),
            None => None,
        };
        match fork {
            Some(_) => {
                while state.window.back().is_some_and(|b| b.number >= first_new) {
                    if let Some(dropped) = state.window.pop_back() {
                        round.removed += 1;
                        state.events.push_back(Event::Removed(dropped));
                    }
                }
            }
            None if tip.is_some() => {
                // Restarted from the new head: what was tracked is not known to be canonical
                // or not, and is left as it was reported.
                state.window.clear();
            }
            None => {}
        }
        let baseline = tip.is_none();
        let newest = branch.len();
        for (i, block) in branch.into_iter().enumerate() {
            let block = Arc::new(block);
            if !baseline {
                round.added += 1;
                round.backfilled += usize::from(i + 1 < newest);
                state.events.push_back(Event::Added(block.clone()));
            }
            state.window.push_back(block);
        }
        while state.window.len() > self.settings.reorg_depth {
            state.window.pop_front();
        }
        if let Some(head) = state.window.back() {
            let head = head.number;
            self.tell(|o| o.moved(head, replaced_from));
        }
        while state.events.len() > self.settings.max_events {
            state.events.pop_front();
            state.first_seq += 1;
        }
        if round.added + round.removed > 0 {
            self.changed.send_replace(state.next_seq());
            let s = &self.stats;
            s.added.fetch_add(round.added as u64, Relaxed);
            s.backfilled.fetch_add(round.backfilled as u64, Relaxed);
            s.removed.fetch_add(round.removed as u64, Relaxed);
            s.reorgs.fetch_add(u64::from(round.removed > 0), Relaxed);
        }
        Ok(round)
    }
}

/// A block without transactions (`method` with `arg`, then `false`), or `None` for `null`.
async fn fetch_block(
    source: &dyn Source,
    chain: &str,
    method: &'static str,
    arg: &str,
) -> Result<Option<Block>, String> {
    let result = source
        .call(chain, method, format!("[{arg},false]"))
        .await
        .map_err(|e| format!("{method}: {}", e.message))?;
    if result.get() == "null" {
        return Ok(None);
    }
    Block::parse(&result)
        .map(Some)
        .map_err(|e| format!("{method}: {e}"))
}

impl Block {
    /// A block (or a `newHeads` header) as an upstream sent it.
    pub fn parse(result: &RawValue) -> Result<Block, String> {
        let header: Header<'_> =
            serde_json::from_str(result.get()).map_err(|e| format!("not a block: {e}"))?;
        let number = crate::method::block::parse_quantity(header.number)
            .ok_or_else(|| format!("block number {:?} is not a quantity", header.number))?;
        let no_logs = header
            .bloom
            .is_none_or(|b| b.trim_start_matches("0x").bytes().all(|c| c == b'0'));
        Ok(Block {
            number,
            hash: header.hash.to_ascii_lowercase().into(),
            parent: header.parent.to_ascii_lowercase().into(),
            logs: None,
            no_logs,
            header: head_of(result).map_err(|e| format!("not a block: {e}"))?,
        })
    }
}

/// The block's fields that are not its header's, as geth's `newHeads` leaves them out.
const NOT_HEADER: &[&str] = &[
    "transactions",
    "uncles",
    "withdrawals",
    "size",
    "totalDifficulty",
];

/// A block object without [`NOT_HEADER`]'s fields; the others as they were.
fn head_of(block: &RawValue) -> Result<Box<RawValue>, serde_json::Error> {
    let fields: Vec<(&str, &RawValue)> =
        serde_json::from_str::<std::collections::BTreeMap<&str, &RawValue>>(block.get())?
            .into_iter()
            .filter(|(k, _)| !NOT_HEADER.contains(k))
            .collect();
    let mut out = String::with_capacity(block.get().len().min(4096));
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        out.push_str(v.get());
    }
    out.push('}');
    RawValue::from_string(out)
}

/// The logs of the block with this hash.
async fn fetch_logs(source: &dyn Source, chain: &str, hash: &str) -> Result<Vec<Log>, String> {
    let result = source
        .call(
            chain,
            "eth_getLogs",
            format!("[{{\"blockHash\":\"{hash}\"}}]"),
        )
        .await
        .map_err(|e| format!("eth_getLogs: {}", e.message))?;
    let raw: Vec<Box<RawValue>> =
        serde_json::from_str(result.get()).map_err(|e| format!("eth_getLogs: {e}"))?;
    raw.into_iter()
        .map(|raw| {
            let fields: LogFields =
                serde_json::from_str(raw.get()).map_err(|e| format!("eth_getLogs: a log: {e}"))?;
            Ok(Log {
                address: fields.address.to_ascii_lowercase().into(),
                topics: fields
                    .topics
                    .into_iter()
                    .map(|t| t.to_ascii_lowercase().into())
                    .collect(),
                raw,
            })
        })
        .collect()
}
