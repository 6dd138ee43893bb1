//! Subscriptions on the chain tracker (`eth_subscribe` `newHeads` and `logs`): each reads the
//! tracker's events from where it started, so it gets every canonical head (and every matching
//! log) once, in order, whichever upstream the tracker follows; after a reorg, the new branch's
//! heads from the fork point, and the dropped blocks' logs again with `"removed": true`.
//! Notifications are written as geth writes them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use serde_json::value::RawValue;

use super::filters::{removed, Criteria, Registry};
use super::tracker::{Event, Tracker};
use crate::config::TrackerConfig;

/// What a subscription follows.
#[derive(Debug)]
pub enum Topic {
    /// Each new canonical head.
    NewHeads,
    /// Logs matching the criteria.
    Logs(Criteria),
}

impl Topic {
    /// Parses `eth_subscribe`'s params (`["newHeads"]`, `["logs", {criteria}]`). `Ok(None)`:
    /// a kind detour does not build from its tracker (the caller decides what to do with it).
    pub fn parse(params: Option<&str>) -> Result<Option<Topic>, String> {
        let args: Vec<&RawValue> = params
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| "missing value for required argument 0".to_owned())?;
        let kind: &str = match args.first() {
            Some(k) => serde_json::from_str(k.get())
                .map_err(|_| "invalid argument 0: the subscription kind must be a string")?,
            None => return Err("missing value for required argument 0".into()),
        };
        match (kind, &args[1..]) {
            ("newHeads", []) => Ok(Some(Topic::NewHeads)),
            ("newHeads", _) => Err("too many arguments, want at most 1".into()),
            ("logs", []) => Ok(Some(Topic::Logs(Criteria::parse("{}")?))),
            ("logs", [c]) if c.get() == "null" => Ok(Some(Topic::Logs(Criteria::parse("{}")?))),
            ("logs", [c]) => Criteria::parse(c.get())
                .map(|c| Some(Topic::Logs(c)))
                .map_err(|e| e.replacen("argument 0", "argument 1", 1)),
            ("logs", _) => Err("too many arguments, want at most 2".into()),
            _ => Ok(None),
        }
    }

    /// The kind's name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Topic::NewHeads => "newHeads",
            Topic::Logs(_) => "logs",
        }
    }
}

/// The kind of an `eth_subscribe` whose params [`Topic::parse`] left to the caller.
pub fn kind_of(params: &str) -> Option<String> {
    let args: Vec<&RawValue> = serde_json::from_str(params).ok()?;
    serde_json::from_str(args.first()?.get()).ok()
}

/// One subscription: it stays registered (and the chain followed) until dropped.
#[derive(Debug)]
pub struct Subscription {
    key: u64,
    registry: Weak<Registry>,
    tracker: Arc<Tracker>,
    topic: Topic,
    /// The event to read next, shared with the registry (which keeps unread events).
    next: Arc<AtomicU64>,
    changed: tokio::sync::watch::Receiver<u64>,
}

/// The subscription fell so far behind that the tracker dropped events it had not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost(pub u64);

impl Registry {
    /// Subscribes to `topic` on `chain`, starting the chain's tracker when needed (its first
    /// round reads the head: an error when no upstream answers).
    pub async fn subscribe(
        self: &Arc<Self>,
        chain: &str,
        topic: Topic,
        tracker_config: &TrackerConfig,
    ) -> Result<Subscription, String> {
        let key = fastrand::u64(..);
        let logs = matches!(topic, Topic::Logs(_));
        let kind = topic.kind();
        let (tracker, next) = self
            .join(chain, tracker_config, |book, tracker| {
                let next = if logs {
                    tracker.join_logs()
                } else {
                    tracker.next_seq()
                };
                let next = Arc::new(AtomicU64::new(next));
                book.subs
                    .insert(key, (tracker.chain.clone(), kind, next.clone()));
                (tracker.clone(), next)
            })
            .await?;
        let mut changed = tracker.watch();
        changed.mark_changed();
        Ok(Subscription {
            key,
            registry: Arc::downgrade(self),
            tracker,
            topic,
            next,
            changed,
        })
    }
}

impl Subscription {
    /// The chain's name.
    pub fn chain(&self) -> &str {
        &self.tracker.chain
    }

    /// A receiver that sees a change whenever the chain's tracker adds events (the same for
    /// every subscription of the chain).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tracker.watch()
    }

    /// What it follows.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Waits until the tracker may have events this subscription has not read. `false`: the
    /// tracker is gone (the proxy shut down).
    pub async fn changed(&mut self) -> bool {
        self.changed.changed().await.is_ok()
    }

    /// Calls `each` with each notification's `result` not read yet, in order.
    pub fn results(&mut self, mut each: impl FnMut(&str)) -> Result<(), Lost> {
        let (events, next, lost) = self.tracker.read(self.next.load(Relaxed));
        self.next.store(next, Relaxed);
        if lost > 0 {
            return Err(Lost(lost));
        }
        for event in &events {
            match (&self.topic, event) {
                (Topic::NewHeads, Event::Added(b)) => each(b.header.get()),
                (Topic::NewHeads, Event::Removed(_)) => {}
                (Topic::Logs(c), Event::Added(b)) => {
                    for log in b.logs.iter().flatten().filter(|l| c.matches(b.number, l)) {
                        each(log.raw.get());
                    }
                }
                (Topic::Logs(c), Event::Removed(b)) => {
                    for log in b.logs.iter().flatten().filter(|l| c.matches(b.number, l)) {
                        each(&removed(log.raw.get()));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock_book().subs.remove(&self.key);
        }
        if matches!(self.topic, Topic::Logs(_)) {
            self.tracker.leave_logs();
        }
    }
}
