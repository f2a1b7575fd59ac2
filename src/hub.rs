//! The hub: which session wants which topic, and the fan-out of published events.
//!
//! The tailer [`Hub::publish`]es events in position order; each event's frame is
//! serialised once and shared (`Arc`) by every session that receives it. A session
//! receives an event at most once, however many of its topics match.
//!
//! Back-pressure: every session has a bounded queue ([`Events`]). When a live session's
//! queue is full the hub drops the session's sender: the session drains what it has, sees
//! the end of its queue and closes with 4000 ("too slow"); the client resumes with `since`.
//! Nobody else waits for it.
//!
//! Memory: an idle session costs the hub one index entry per topic, the topic's name
//! (shared by the index and the session as an `Arc<str>`) and its queue, which holds no
//! buffer until the first event.
//!
//! Replay: a session that resumes with `since` subscribes in *replaying* mode. The hub
//! then only advances its head past the session; the session reads the log up to the
//! head it was given, and asks [`Hub::go_live`] to switch. The switch succeeds only if
//! the head has not moved since the session's last read, so the last replayed position
//! and the first live one are adjacent: nothing is missed and nothing doubled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;

/// An event ready to send: its position, its topics and its serialised frame.
#[derive(Debug)]
pub struct Published {
    /// Position in the log.
    pub pos: i64,
    /// The event's name (`row.updated`), for transports that label frames (SSE).
    pub event: &'static str,
    /// Topics the event is published on.
    pub topics: Vec<String>,
    /// The `event` message, serialised once.
    pub frame: Utf8Bytes,
}

/// Identifies a session in the hub.
pub type SessionId = u64;

/// The topic index and fan-out.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    feed_live: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Last position published (the tailer's cursor).
    head: i64,
    by_topic: HashMap<Arc<str>, Subscribers>,
    sessions: HashMap<SessionId, Sub>,
}

/// The sessions subscribed to one topic. Most topics (`user:7`) have one.
#[derive(Debug)]
enum Subscribers {
    One(SessionId),
    // Boxed so the index's entries stay small: most topics never need the set.
    #[expect(
        clippy::box_collection,
        reason = "keeps one-subscriber index entries small"
    )]
    Many(Box<HashSet<SessionId>>),
}

impl Subscribers {
    fn insert(&mut self, id: SessionId) {
        match self {
            Subscribers::One(one) if *one == id => {}
            Subscribers::One(one) => {
                *self = Subscribers::Many(Box::new(HashSet::from([*one, id])));
            }
            Subscribers::Many(ids) => {
                ids.insert(id);
            }
        }
    }

    /// Removes `id`; returns whether nobody is left.
    fn remove(&mut self, id: SessionId) -> bool {
        match self {
            Subscribers::One(one) => *one == id,
            Subscribers::Many(ids) => {
                ids.remove(&id);
                ids.is_empty()
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = SessionId> + '_ {
        let (one, many) = match self {
            Subscribers::One(one) => (Some(*one), None),
            Subscribers::Many(ids) => (None, Some(ids.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[derive(Debug)]
struct Sub {
    tx: Sender,
    /// The session's topics, few in general: a vector sized to fit.
    topics: Vec<Arc<str>>,
    /// Last position queued to this session (one delivery per event).
    last: i64,
    replaying: bool,
}

/// A session's membership in the hub: its queue of events. Leaves the hub when dropped.
#[derive(Debug)]
pub struct Membership {
    id: SessionId,
    hub: Arc<Hub>,
    /// Events for this session, in position order. Ends (`None`) when the hub dropped
    /// the session for being too slow.
    pub events: Events,
}

impl Membership {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

impl Hub {
    /// A hub whose head is `head` (the tailer starts reading after it).
    pub fn new(head: i64) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State {
                head,
                by_topic: HashMap::new(),
                sessions: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            feed_live: AtomicBool::new(false),
        })
    }

    /// Records whether the tailer currently holds a live connection to the log.
    pub fn set_feed_live(&self, live: bool) {
        self.feed_live.store(live, Ordering::Relaxed);
    }

    /// Whether the tailer currently holds a live connection to the log.
    pub fn feed_live(&self) -> bool {
        self.feed_live.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated in a way
        // that matters more than stopping every session would: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Last position published.
    pub fn head(&self) -> i64 {
        self.lock().head
    }

    /// Number of sessions.
    pub fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Number of topics with at least one subscriber.
    pub fn topics(&self) -> usize {
        self.lock().by_topic.len()
    }

    /// Adds a session with a queue of `capacity` events.
    pub fn join(self: &Arc<Self>, capacity: usize) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = queue(capacity.max(1));
        self.lock().sessions.insert(
            id,
            Sub {
                tx,
                topics: Vec::new(),
                last: 0,
                replaying: false,
            },
        );
        Membership {
            id,
            hub: self.clone(),
            events,
        }
    }

    fn leave(&self, id: SessionId) {
        let mut state = self.lock();
        if let Some(sub) = state.sessions.remove(&id) {
            unindex(&mut state.by_topic, id, &sub.topics);
        }
    }

    /// Adds topics to a session and returns the head at that moment: every event after
    /// it that is published on one of the topics reaches the session's queue, unless
    /// `replay` is set, in which case nothing is queued until [`Hub::go_live`] succeeds.
    /// Returns `None` if the session was dropped for being too slow.
    pub fn subscribe<I>(&self, id: SessionId, topics: I, replay: bool) -> Option<i64>
    where
        I: IntoIterator,
        I::Item: Into<Arc<str>>,
    {
        let mut guard = self.lock();
        let State {
            head,
            by_topic,
            sessions,
        } = &mut *guard;
        let sub = sessions.get_mut(&id)?;
        sub.replaying |= replay;
        for topic in topics {
            let topic: Arc<str> = topic.into();
            if sub.topics.contains(&topic) {
                continue;
            }
            match by_topic.get_mut(&topic) {
                Some(ids) => ids.insert(id),
                None => {
                    by_topic.insert(topic.clone(), Subscribers::One(id));
                }
            }
            sub.topics.reserve_exact(1);
            sub.topics.push(topic);
        }
        Some(*head)
    }

    /// Removes topics from a session.
    pub fn unsubscribe<T: AsRef<str>>(&self, id: SessionId, topics: &[T]) {
        let mut guard = self.lock();
        let State {
            by_topic, sessions, ..
        } = &mut *guard;
        if let Some(sub) = sessions.get_mut(&id) {
            let (removed, kept): (Vec<Arc<str>>, Vec<Arc<str>>) = std::mem::take(&mut sub.topics)
                .into_iter()
                .partition(|t| topics.iter().any(|u| u.as_ref() == &**t));
            sub.topics = kept;
            sub.topics.shrink_to_fit();
            unindex(by_topic, id, &removed);
        }
    }

    /// Ends a replay that has read the log up to `replayed`. If the head is still there
    /// the session goes live and `Ok` is returned; otherwise `Err(head)` tells the
    /// session to read up to the new head first.
    pub fn go_live(&self, id: SessionId, replayed: i64) -> Result<(), i64> {
        let mut state = self.lock();
        let head = state.head;
        match state.sessions.get_mut(&id) {
            Some(sub) if head <= replayed => {
                sub.replaying = false;
                sub.last = sub.last.max(replayed);
                Ok(())
            }
            Some(_) => Err(head),
            // Gone: let the session find out from its queue.
            None => Ok(()),
        }
    }

    /// Drops every session, live or replaying, as if each were too slow: their queues
    /// end and their clients resume with `since`. For when this replica can no longer
    /// give them a gap-free stream (the log was pruned past its head). Returns how many
    /// sessions were dropped.
    pub fn drop_all(&self) -> usize {
        let mut state = self.lock();
        state.by_topic.clear();
        let dropped = state.sessions.len();
        state.sessions.clear();
        dropped
    }

    /// Publishes events in position order: queues each to every live session with a
    /// matching topic (once per session), then advances the head past it, and at the
    /// end to `upto` (positions that had nothing to publish). Sessions whose queue is
    /// full or closed are dropped from the hub.
    pub fn publish(&self, events: &[Arc<Published>], upto: i64) {
        let mut guard = self.lock();
        let State {
            head,
            by_topic,
            sessions,
        } = &mut *guard;
        let mut dropped = Vec::new();
        for event in events {
            for topic in &event.topics {
                let Some(ids) = by_topic.get(topic.as_str()) else {
                    continue;
                };
                for id in ids.iter() {
                    let Some(sub) = sessions.get_mut(&id) else {
                        continue;
                    };
                    if sub.replaying || sub.last >= event.pos {
                        continue;
                    }
                    sub.last = event.pos;
                    if !sub.tx.try_send(event.clone()) {
                        dropped.push(id);
                    }
                }
            }
            *head = event.pos;
        }
        *head = (*head).max(upto);
        for id in dropped {
            if let Some(sub) = sessions.remove(&id) {
                tracing::info!(session = id, "session queue full or closed: dropping it");
                unindex(by_topic, id, &sub.topics);
            }
        }
    }
}

fn unindex(by_topic: &mut HashMap<Arc<str>, Subscribers>, id: SessionId, topics: &[Arc<str>]) {
    for topic in topics {
        if let Some(ids) = by_topic.get_mut(topic)
            && ids.remove(id)
        {
            by_topic.remove(topic);
        }
    }
}

/// A session's queue of events, read by the session: bounded, filled by the hub.
///
/// Lighter than a channel for the common case of an idle session: one small shared
/// allocation, and no buffer until the first event (then one that holds at most the
/// capacity given to [`Hub::join`]). It ends when the hub drops its side.
#[derive(Debug)]
pub struct Events {
    shared: Arc<Mutex<Queue>>,
}

/// Why [`Events::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued right now.
    Empty,
    /// Nothing queued, and the hub dropped the session: nothing more will come.
    Disconnected,
}

/// The hub's side of a session's queue.
#[derive(Debug)]
struct Sender {
    shared: Arc<Mutex<Queue>>,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Arc<Published>>,
    capacity: usize,
    /// The hub still holds the session's sender.
    sending: bool,
    /// The session still holds its [`Events`].
    receiving: bool,
    waker: Option<Waker>,
}

fn queue(capacity: usize) -> (Sender, Events) {
    let shared = Arc::new(Mutex::new(Queue {
        items: VecDeque::new(),
        capacity,
        sending: true,
        receiving: true,
        waker: None,
    }));
    (
        Sender {
            shared: shared.clone(),
        },
        Events { shared },
    )
}

fn lock_queue(shared: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sender {
    /// Queues `event`; `false` if the queue is full or the session is gone.
    fn try_send(&self, event: Arc<Published>) -> bool {
        let mut queue = lock_queue(&self.shared);
        if !queue.receiving || queue.items.len() >= queue.capacity {
            return false;
        }
        queue.items.push_back(event);
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut queue = lock_queue(&self.shared);
        queue.sending = false;
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Events {
    /// The next event; `None` once the queue is empty and the hub dropped the session.
    /// Cancel-safe: an event is only taken when it is returned.
    pub async fn recv(&mut self) -> Option<Arc<Published>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event (see [`Events::recv`]).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Published>>> {
        let mut queue = lock_queue(&self.shared);
        if let Some(event) = queue.items.pop_front() {
            return Poll::Ready(Some(event));
        }
        if !queue.sending {
            return Poll::Ready(None);
        }
        match &mut queue.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Result<Arc<Published>, TryRecvError> {
        let mut queue = lock_queue(&self.shared);
        match queue.items.pop_front() {
            Some(event) => Ok(event),
            None if queue.sending => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let mut queue = lock_queue(&self.shared);
        queue.receiving = false;
        queue.items = VecDeque::new();
        queue.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pos: i64, topics: &[&str]) -> Arc<Published> {
        Arc::new(Published {
            pos,
            event: "row.updated",
            topics: topics.iter().map(|t| t.to_string()).collect(),
            frame: Utf8Bytes::from(format!("frame {pos}")),
        })
    }

    fn topics(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn an_event_matching_several_topics_is_queued_once() {
        let hub = Hub::new(0);
        let mut m = hub.join(8);
        hub.subscribe(m.id(), topics(&["bookings", "user:7"]), false);
        hub.publish(&[event(1, &["bookings", "booking:1", "user:7"])], 0);
        assert_eq!(m.events.try_recv().unwrap().pos, 1);
        assert!(m.events.try_recv().is_err());
        assert_eq!(hub.head(), 1);
    }

    #[test]
    fn sessions_only_get_their_topics() {
        let hub = Hub::new(0);
        let mut a = hub.join(8);
        let mut b = hub.join(8);
        hub.subscribe(a.id(), topics(&["user:1"]), false);
        hub.subscribe(b.id(), topics(&["user:2"]), false);
        hub.publish(&[event(1, &["t", "user:1"]), event(2, &["t", "user:2"])], 0);
        assert_eq!(a.events.try_recv().unwrap().pos, 1);
        assert!(a.events.try_recv().is_err());
        assert_eq!(b.events.try_recv().unwrap().pos, 2);
        assert!(b.events.try_recv().is_err());
    }

    #[test]
    fn unsubscribe_stops_delivery_and_cleans_the_index() {
        let hub = Hub::new(0);
        let mut a = hub.join(8);
        hub.subscribe(a.id(), topics(&["x"]), false);
        hub.unsubscribe(a.id(), &topics(&["x"]));
        hub.publish(&[event(1, &["x"])], 0);
        assert!(a.events.try_recv().is_err());
        assert_eq!(hub.topics(), 0);
    }

    #[test]
    fn a_full_queue_drops_only_that_session() {
        let hub = Hub::new(0);
        let mut slow = hub.join(1);
        let mut fast = hub.join(8);
        hub.subscribe(slow.id(), topics(&["x"]), false);
        hub.subscribe(fast.id(), topics(&["x"]), false);
        hub.publish(&[event(1, &["x"]), event(2, &["x"]), event(3, &["x"])], 0);
        assert_eq!(slow.events.try_recv().unwrap().pos, 1);
        assert!(matches!(
            slow.events.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
        for pos in 1..=3 {
            assert_eq!(fast.events.try_recv().unwrap().pos, pos);
        }
        assert_eq!(hub.sessions(), 1);
    }

    #[test]
    fn replaying_sessions_go_live_only_at_the_head() {
        let hub = Hub::new(5);
        let mut m = hub.join(8);
        assert_eq!(hub.subscribe(m.id(), topics(&["x"]), true), Some(5));
        hub.publish(&[event(6, &["x"])], 0);
        assert!(
            m.events.try_recv().is_err(),
            "nothing queued while replaying"
        );
        assert_eq!(hub.go_live(m.id(), 5), Err(6));
        assert_eq!(hub.go_live(m.id(), 6), Ok(()));
        hub.publish(&[event(7, &["x"])], 0);
        assert_eq!(m.events.try_recv().unwrap().pos, 7);
    }

    #[test]
    fn drop_all_ends_every_queue() {
        let hub = Hub::new(0);
        let mut a = hub.join(8);
        let mut b = hub.join(8);
        hub.subscribe(a.id(), topics(&["x"]), false);
        hub.subscribe(b.id(), topics(&["y"]), true);
        assert_eq!(hub.drop_all(), 2);
        hub.publish(&[event(1, &["x", "y"])], 0);
        for m in [&mut a, &mut b] {
            assert!(matches!(
                m.events.try_recv(),
                Err(TryRecvError::Disconnected)
            ));
        }
        assert_eq!((hub.sessions(), hub.topics()), (0, 0));
    }

    #[test]
    fn a_topic_shared_by_sessions_stays_indexed_until_the_last_leaves() {
        let hub = Hub::new(0);
        let mut a = hub.join(8);
        let b = hub.join(8);
        hub.subscribe(a.id(), topics(&["x"]), false);
        hub.subscribe(b.id(), topics(&["x"]), false);
        drop(b);
        assert_eq!(hub.topics(), 1);
        hub.publish(&[event(1, &["x"])], 0);
        assert_eq!(a.events.try_recv().unwrap().pos, 1);
        hub.unsubscribe(a.id(), &["x"]);
        assert_eq!(hub.topics(), 0);
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_when_an_event_is_queued() {
        let hub = Hub::new(0);
        let mut m = hub.join(8);
        hub.subscribe(m.id(), topics(&["x"]), false);
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                hub.publish(&[event(1, &["x"])], 0);
            })
        };
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), m.events.recv())
            .await
            .expect("woken within the timeout");
        assert_eq!(received.map(|e| e.pos), Some(1));
        publisher.await.unwrap();
    }

    #[test]
    fn a_queue_whose_reader_is_gone_refuses_events() {
        let (tx, events) = queue(8);
        assert!(tx.try_send(event(1, &["x"])));
        drop(events);
        assert!(!tx.try_send(event(2, &["x"])));
    }

    #[test]
    fn dropping_a_membership_leaves_the_hub() {
        let hub = Hub::new(0);
        let m = hub.join(8);
        hub.subscribe(m.id(), topics(&["x"]), false);
        drop(m);
        assert_eq!(hub.sessions(), 0);
        assert_eq!(hub.topics(), 0);
    }
}
