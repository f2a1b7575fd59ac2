//! The hub: which session wants which topic, and the fan-out of published events.
//!
//! The tailer [`Hub::publish`]es events in position order; each event's [`Frame`] is
//! serialised once and shared by every session that receives it, at most once per
//! session. Every session has a bounded queue ([`SessionQueue`]); a full one ends the session
//! (4000, the client resumes with `since`), so nobody waits for a slow client. A
//! WebSocket session attaches its socket as a [`Sink`], and a few writer tasks
//! ([`Hub::run_writer`]) write its queue straight to it. A resuming session joins in
//! replaying mode and switches to live with [`Hub::go_live`], with nothing missed or
//! doubled. docs/architecture.md ("Fan-out", "Replay and the switch to live") says why.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::Event;

/// An event's `event` message: JSON text, serialised once and shared by every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// The frame of a serialised message.
    pub(crate) fn new(text: String) -> Frame {
        Frame(Bytes::from(text))
    }

    /// The frame's bytes, shared.
    pub(crate) fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The frame's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        // Built only from a `String`.
        std::str::from_utf8(&self.0).expect("a frame is UTF-8 text")
    }
}

/// Where the hub's writers write a session's frames: the transport's socket.
pub(crate) trait Sink: Send + Sync + std::fmt::Debug {
    /// Writes what is left of an earlier frame, then `frames` in order, without waiting.
    /// Writes nothing while the transport is halfway through a write of its own, nor, if
    /// `unless_held`, while the session holds the socket to answer its client.
    fn write_frames(&self, frames: &[&[u8]], unless_held: bool) -> io::Result<Written>;

    /// Whether part of a frame written here still waits for the socket.
    fn has_rest(&self) -> bool;
}

/// The outcome of [`Sink::write_frames`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// How many frames the socket took, whole or (the last one) in part.
    pub(crate) taken: usize,
    /// Whether the earlier rest and every frame were written whole.
    pub(crate) all: bool,
}

/// An event ready to send: its position, its topics and its serialised frame.
#[derive(Debug)]
pub struct Published {
    /// Position in the log.
    pub pos: i64,
    /// The event (its name, `row.updated`), for transports that label frames (SSE).
    pub event: Event,
    /// Topics the event is published on.
    pub topics: Vec<String>,
    /// The `event` message, serialised once.
    pub frame: Frame,
    /// When an UPDATE moved the row off some topics: how many of `topics`, from the
    /// first, get this event; the rest get [`Published::left`].
    pub kept: Option<usize>,
    /// What the topics the row left get instead (`row.left`, the key only).
    pub left: Option<Arc<Published>>,
}

impl Published {
    /// What a session subscribed to `wants` gets of this event: the event itself when
    /// one of its topics that keep the row is wanted, else the key-only `row.left` when
    /// one the row left is, else nothing.
    pub fn for_topics(self: &Arc<Self>, wants: impl Fn(&str) -> bool) -> Option<&Arc<Published>> {
        let kept = self.kept.unwrap_or(self.topics.len());
        if self.topics[..kept.min(self.topics.len())]
            .iter()
            .any(|t| wants(t))
        {
            return Some(self);
        }
        self.left
            .as_ref()
            .filter(|left| left.topics.iter().any(|t| wants(t)))
    }
}

/// Identifies a session in the hub.
pub(crate) type SessionId = u64;

/// The topic index and fan-out.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    feed_live: AtomicBool,
    /// The fan-out writers' inboxes; a session's writer is `id % writers.len()`.
    writers: Box<[Writer]>,
    /// Whether the writers run: if not, sessions write their own queues.
    writing: AtomicBool,
    /// Notified whenever the head moves ([`Hub::wait_for_head`]).
    advanced: Notify,
}

/// A fan-out writer's inbox: queues that received events since it last ran.
#[derive(Debug, Default)]
struct Writer {
    pending: Mutex<Vec<Arc<Mutex<Queue>>>>,
    wake: Notify,
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
    /// SessionQueue for this session, in position order. Ends (`None`) when the hub dropped
    /// the session for being too slow.
    pub events: SessionQueue,
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
            writers: (0..writer_count()).map(|_| Writer::default()).collect(),
            writing: AtomicBool::new(false),
            advanced: Notify::new(),
        })
    }

    /// How many fan-out writers to run ([`Hub::run_writer`] with `0..writers()`).
    pub(crate) fn writers(&self) -> usize {
        self.writers.len()
    }

    /// Runs fan-out writer `index` until `shutdown`: writes the queues [`Hub::publish`]
    /// hands it to their sessions' sockets.
    pub(crate) async fn run_writer(self: Arc<Self>, index: usize, shutdown: CancellationToken) {
        let writer = &self.writers[index];
        self.writing.store(true, Ordering::Release);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = writer.wake.notified() => {}
            }
            let pending = std::mem::take(&mut *lock_pending(&writer.pending));
            let mut sent = 0;
            for queue in pending {
                sent += write_for_session(&queue);
            }
            if sent > 0 {
                metrics::counter!(crate::metrics::DELIVERIES).increment(sent);
            }
        }
        // Sessions write their own queues from now on.
        self.writing.store(false, Ordering::Release);
        for queue in std::mem::take(&mut *lock_pending(&writer.pending)) {
            let mut queue = lock_queue(&queue);
            queue.handed = false;
            queue.draining = true;
            if let Some(waker) = queue.waker.take() {
                waker.wake();
            }
        }
    }

    /// Records whether the tailer currently holds a live connection to the log.
    pub(crate) fn set_feed_live(&self, live: bool) {
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

    /// Waits until the head reaches `pos`, for at most `limit`, and returns the head then
    /// (below `pos` if the wait ran out).
    pub(crate) async fn wait_for_head(&self, pos: i64, limit: std::time::Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the head is read, so a publish in between is not missed.
            let advanced = self.advanced.notified();
            let head = self.head();
            if head >= pos {
                return head;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return self.head();
            }
        }
    }

    /// Number of sessions.
    pub(crate) fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Number of topics with at least one subscriber.
    pub(crate) fn topics(&self) -> usize {
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
    pub(crate) fn unsubscribe<T: AsRef<str>>(&self, id: SessionId, topics: &[T]) {
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
    pub(crate) fn go_live(&self, id: SessionId, replayed: i64) -> Result<(), i64> {
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
    pub(crate) fn drop_all(&self) -> usize {
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
    pub(crate) fn publish(&self, events: &[Arc<Published>], upto: i64) {
        let mut guard = self.lock();
        let State {
            head,
            by_topic,
            sessions,
        } = &mut *guard;
        let mut dropped = Vec::new();
        let writing = self.writing.load(Ordering::Acquire);
        let mut handed: Vec<Vec<Arc<Mutex<Queue>>>> = Vec::new();
        for published in events {
            // The topics that keep the row come first: a session subscribed to one of
            // them gets the event, one subscribed only to topics the row left gets
            // `row.left`.
            let kept = published.kept.unwrap_or(usize::MAX);
            for (index, topic) in published.topics.iter().enumerate() {
                let event = match &published.left {
                    Some(left) if index >= kept => left,
                    _ => published,
                };
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
                    match sub.tx.send(event, writing) {
                        Sent::Hand => {
                            if handed.is_empty() {
                                handed.resize_with(self.writers.len(), Vec::new);
                            }
                            let writer = (id % self.writers.len() as u64) as usize;
                            handed[writer].push(sub.tx.shared.clone());
                        }
                        Sent::Queued => {}
                        Sent::Refused => dropped.push(id),
                    }
                }
            }
            *head = published.pos;
        }
        *head = (*head).max(upto);
        for (writer, queues) in self.writers.iter().zip(handed) {
            if !queues.is_empty() {
                lock_pending(&writer.pending).extend(queues);
                writer.wake.notify_one();
            }
        }
        for id in dropped {
            if let Some(sub) = sessions.remove(&id) {
                tracing::info!(session = id, "session queue full or closed: dropping it");
                unindex(by_topic, id, &sub.topics);
            }
        }
        drop(guard);
        self.advanced.notify_waiters();
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
pub struct SessionQueue {
    shared: Arc<Mutex<Queue>>,
}

/// Why [`SessionQueue::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(test)]
pub(crate) enum TryRecvError {
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

/// What [`Sender::send`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Queued; hand the queue to the session's writer.
    Hand,
    /// Queued (for the session, or for a writer that already has the queue).
    Queued,
    /// The queue is full or the session gone.
    Refused,
}

/// What [`SessionQueue::write_queued`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// SessionQueue written (or started: their rest waits in the socket's wire).
    pub(crate) sent: u64,
    /// Whether the queue and the wire are empty; otherwise wait for the socket.
    pub(crate) done: bool,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Arc<Published>>,
    /// The session's socket, which the fan-out writers write to.
    wire: Option<Arc<dyn Sink>>,
    /// SessionQueue at or below this position are not written (the session replayed them).
    written: i64,
    /// The queue is in its writer's inbox.
    handed: bool,
    /// The session writes its queue itself (its writer could not finish it).
    draining: bool,
    capacity: usize,
    /// The hub still holds the session's sender.
    sending: bool,
    /// The session still holds its [`SessionQueue`].
    receiving: bool,
    waker: Option<Waker>,
}

fn queue(capacity: usize) -> (Sender, SessionQueue) {
    let shared = Arc::new(Mutex::new(Queue {
        items: VecDeque::new(),
        wire: None,
        written: 0,
        handed: false,
        draining: false,
        capacity,
        sending: true,
        receiving: true,
        waker: None,
    }));
    (
        Sender {
            shared: shared.clone(),
        },
        SessionQueue { shared },
    )
}

fn lock_queue(shared: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sender {
    /// Queues `event`. With `writing` and a socket attached, the queue's writer writes
    /// it (`Hand` when the writer does not have the queue yet); otherwise the session
    /// is woken to send it.
    fn send(&self, event: &Arc<Published>, writing: bool) -> Sent {
        let mut queue = lock_queue(&self.shared);
        if !queue.receiving || queue.items.len() >= queue.capacity {
            return Sent::Refused;
        }
        queue.items.push_back(event.clone());
        if writing && !queue.draining && queue.wire.is_some() {
            if queue.handed {
                return Sent::Queued;
            }
            queue.handed = true;
            return Sent::Hand;
        }
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
        Sent::Queued
    }
}

/// A writer's work on one queue: writes it without waiting, unless its session holds
/// its socket; wakes the session if something is left. Returns how many events went.
fn write_for_session(shared: &Mutex<Queue>) -> u64 {
    let mut queue = lock_queue(shared);
    queue.handed = false;
    if !queue.receiving || queue.draining {
        return 0;
    }
    let result = write_queue(&mut queue, true);
    let sent = result.as_ref().map_or(0, |d| d.sent);
    if !result.is_ok_and(|d| d.done) {
        // The session finishes (or meets the error) on its own time.
        queue.draining = true;
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
    sent
}

/// Writes the rest of any started frame, then the queued events, to the queue's socket
/// without waiting (see [`SessionQueue::write_queued`]).
fn write_queue(queue: &mut Queue, unless_held: bool) -> io::Result<Drained> {
    let Some(wire) = queue.wire.clone() else {
        return Err(io::Error::other("no socket attached to this queue"));
    };
    let mut sent = 0;
    loop {
        while queue.items.front().is_some_and(|e| e.pos <= queue.written) {
            queue.items.pop_front();
        }
        let batch: Vec<&[u8]> = queue
            .items
            .iter()
            .take(32)
            .map(|e| e.frame.as_bytes())
            .collect();
        let count = batch.len();
        let written = wire.write_frames(&batch, unless_held)?;
        drop(batch);
        for event in queue.items.drain(..written.taken) {
            queue.written = queue.written.max(event.pos);
        }
        sent += written.taken as u64;
        if !written.all {
            return Ok(Drained { sent, done: false });
        }
        if count == 0 || queue.items.is_empty() {
            return Ok(Drained { sent, done: true });
        }
    }
}

fn lock_pending(pending: &Mutex<Vec<Arc<Mutex<Queue>>>>) -> MutexGuard<'_, Vec<Arc<Mutex<Queue>>>> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many fan-out writers a hub runs: one per core, at most 8.
fn writer_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8))
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

impl SessionQueue {
    /// The next event; `None` once the queue is empty and the hub dropped the session.
    /// Cancel-safe: an event is only taken when it is returned.
    pub async fn recv(&mut self) -> Option<Arc<Published>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event (see [`SessionQueue::recv`]).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Published>>> {
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

    /// Lets the hub write events straight to `wire` while nothing is queued; queued
    /// events are then written with [`SessionQueue::write_queued`].
    pub(crate) fn attach(&mut self, wire: Arc<dyn Sink>) {
        lock_queue(&self.shared).wire = Some(wire);
    }

    /// Waits until there is something to write (queued events, or the rest of a
    /// frame the hub started): `true`; or until the queue has ended: `false`.
    /// Cancel-safe.
    pub(crate) async fn writable(&mut self) -> bool {
        poll_fn(|cx| {
            let mut queue = lock_queue(&self.shared);
            let rest = queue.wire.as_ref().is_some_and(|wire| wire.has_rest());
            if !queue.items.is_empty() || rest {
                return Poll::Ready(true);
            }
            if !queue.sending {
                return Poll::Ready(false);
            }
            match &mut queue.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the rest of any started frame, then the queued events, to the attached
    /// socket without waiting. Once everything is written (`done`), the session's
    /// writer takes its queue again.
    pub(crate) fn write_queued(&mut self) -> io::Result<Drained> {
        let mut queue = lock_queue(&self.shared);
        let drained = write_queue(&mut queue, false)?;
        if drained.done {
            queue.draining = false;
        }
        Ok(drained)
    }

    /// SessionQueue at or below `pos` will not be written: the session sent them (replay).
    pub(crate) fn skip_through(&mut self, pos: i64) {
        let mut queue = lock_queue(&self.shared);
        queue.written = queue.written.max(pos);
    }

    /// The next event if one is queued.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<Arc<Published>, TryRecvError> {
        let mut queue = lock_queue(&self.shared);
        match queue.items.pop_front() {
            Some(event) => Ok(event),
            None if queue.sending => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }
}

impl Drop for SessionQueue {
    fn drop(&mut self) {
        let mut queue = lock_queue(&self.shared);
        queue.receiving = false;
        queue.items = VecDeque::new();
        queue.wire = None;
        queue.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pos: i64, topics: &[&str]) -> Arc<Published> {
        Arc::new(Published {
            pos,
            event: Event::Row(crate::events::Op::Update),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            frame: Frame::new(format!("frame {pos}")),
            kept: None,
            left: None,
        })
    }

    fn topics(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn topics_a_row_left_get_the_left_frame_and_the_others_the_event() {
        let hub = Hub::new(0);
        let left = Arc::new(Published {
            pos: 1,
            event: Event::Left,
            topics: topics(&["user:7"]),
            frame: Frame::new("left".into()),
            kept: None,
            left: None,
        });
        let moved = Arc::new(Published {
            pos: 1,
            event: Event::Row(crate::events::Op::Update),
            topics: topics(&["bookings", "user:8", "user:7"]),
            frame: Frame::new("moved".into()),
            kept: Some(2),
            left: Some(left),
        });
        let mut seven = hub.join(8);
        hub.subscribe(seven.id(), topics(&["user:7"]), false);
        let mut eight = hub.join(8);
        hub.subscribe(eight.id(), topics(&["user:8"]), false);
        let mut both = hub.join(8);
        hub.subscribe(both.id(), topics(&["user:7", "user:8"]), false);
        hub.publish(&[moved], 0);
        assert_eq!(seven.events.try_recv().unwrap().frame.as_str(), "left");
        assert_eq!(eight.events.try_recv().unwrap().frame.as_str(), "moved");
        assert_eq!(both.events.try_recv().unwrap().frame.as_str(), "moved");
        for m in [&mut seven, &mut eight, &mut both] {
            assert!(m.events.try_recv().is_err());
        }
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
        assert_eq!(tx.send(&event(1, &["x"]), false), Sent::Queued);
        drop(events);
        assert_eq!(tx.send(&event(2, &["x"]), false), Sent::Refused);
    }

    #[tokio::test]
    async fn writers_send_an_attached_session_its_events_in_order_without_the_session() {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let hub = Hub::new(0);
        let shutdown = CancellationToken::new();
        let writers: Vec<_> = (0..hub.writers())
            .map(|i| tokio::spawn(hub.clone().run_writer(i, shutdown.clone())))
            .collect();
        while !hub.writing.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut m = hub.join(8);
        m.events.attach(crate::serve::wire::Wire::new(server));
        hub.subscribe(m.id(), topics(&["x"]), false);
        hub.publish(&[event(1, &["x"]), event(2, &["x"])], 0);
        hub.publish(&[event(3, &["x"])], 0);
        let mut got = [0u8; 27];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut got),
        )
        .await
        .expect("written within the timeout")
        .unwrap();
        assert_eq!(&got, b"\x81\x07frame 1\x81\x07frame 2\x81\x07frame 3");
        assert_eq!(m.events.try_recv().unwrap_err(), TryRecvError::Empty);
        shutdown.cancel();
        for writer in writers {
            writer.await.unwrap();
        }
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
