//! An in-process queue with SQS's delivery rules, for the local run: a received message is hidden
//! until it is deleted or its visibility changes, a delayed one comes back when its delay is over,
//! each receive counts, and a message received more than `max_receive_count` times moves to the
//! dead-letter queue instead. Senders wait while the queue holds `capacity` messages, so a run of
//! any size keeps a bounded number of jobs in memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ports::queue::{MessageQueue, QueueError};

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub body: String,
    /// Deliveries so far, from 1 (SQS's `ApproximateReceiveCount`).
    pub receive_count: u32,
    /// What `delete` and `delay` take; stale once the message is received again.
    pub receipt_handle: String,
}

#[derive(Debug)]
struct Message {
    body: String,
    receive_count: u32,
    /// Bumped at each receive: a receipt handle names one delivery.
    delivery: u64,
    /// Hidden by [`MessageQueue::delay`] (a back-off), not by a receiver holding it.
    delayed: bool,
}

#[derive(Debug, Default)]
struct State {
    messages: HashMap<u64, Message>,
    ready: VecDeque<u64>,
    /// Hidden messages by the time they come back: (when, id, delivery).
    hidden: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    next_id: u64,
}

impl State {
    /// Makes the hidden messages whose time has come visible again.
    fn reveal(&mut self, now: Instant) {
        while let Some(Reverse((at, id, delivery))) = self.hidden.peek().copied() {
            if at > now {
                break;
            }
            self.hidden.pop();
            if self.messages.get(&id).is_some_and(|m| m.delivery == delivery) {
                self.ready.push_back(id);
            }
        }
    }
}

/// The queue; cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct LocalQueue {
    name: String,
    state: Arc<Mutex<State>>,
    /// Messages arrived (one wake-up each) or their visibility changed (every receiver).
    readable: Arc<Notify>,
    /// Room was made: a sender may go on.
    writable: Arc<Notify>,
    /// Messages held (visible or not) before senders wait.
    capacity: usize,
    /// How long a received message stays hidden when its receiver says nothing.
    visibility_timeout: Duration,
    /// Receives before a message moves to `dead_letter` (SQS `maxReceiveCount`).
    max_receive_count: u32,
    dead_letter: Option<Box<LocalQueue>>,
}

impl LocalQueue {
    /// A queue named `name` holding at most `capacity` messages, without a dead-letter queue.
    pub fn new(name: &str, capacity: usize, visibility_timeout: Duration) -> Self {
        Self {
            name: name.to_owned(),
            state: Arc::default(),
            readable: Arc::default(),
            writable: Arc::default(),
            capacity: capacity.max(1),
            visibility_timeout,
            max_receive_count: u32::MAX,
            dead_letter: None,
        }
    }

    /// Moves messages received more than `max_receive_count` times to `dead_letter`.
    pub fn with_dead_letter(mut self, dead_letter: LocalQueue, max_receive_count: u32) -> Self {
        self.dead_letter = Some(Box::new(dead_letter));
        self.max_receive_count = max_receive_count.max(1);
        self
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, QueueError> {
        self.state.lock().map_err(|_| QueueError {
            queue: self.name.clone(),
            message: "queue lock poisoned".into(),
            retryable: false,
        })
    }

    /// Messages held, visible or not.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |s| s.messages.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` visible messages, waiting until there is one; each is hidden for the visibility timeout.
    pub async fn receive(&self, max: usize) -> Result<Vec<Received>, QueueError> {
        loop {
            let notified = self.readable.notified();
            let (received, dead, wake_at) = {
                let mut state = self.lock()?;
                let now = Instant::now();
                state.reveal(now);
                let (mut received, mut dead) = (Vec::new(), Vec::new());
                while received.len() < max.max(1) {
                    let Some(id) = state.ready.pop_front() else { break };
                    let Some(message) = state.messages.get_mut(&id) else {
                        continue;
                    };
                    if message.receive_count >= self.max_receive_count && self.dead_letter.is_some() {
                        if let Some(message) = state.messages.remove(&id) {
                            dead.push(message.body);
                        }
                        continue;
                    }
                    message.receive_count += 1;
                    message.delivery += 1;
                    message.delayed = false;
                    let (receive_count, delivery) = (message.receive_count, message.delivery);
                    received.push(Received {
                        body: message.body.clone(),
                        receive_count,
                        receipt_handle: format!("{id}:{delivery}"),
                    });
                    state
                        .hidden
                        .push(Reverse((now + self.visibility_timeout, id, delivery)));
                }
                let wake_at = state.hidden.peek().map(|Reverse((at, _, _))| *at);
                (received, dead, wake_at)
            };
            if !dead.is_empty() {
                for _ in &dead {
                    self.writable.notify_one();
                }
                if let Some(dead_letter) = &self.dead_letter {
                    for body in dead {
                        dead_letter.send_batch(vec![body]).await?;
                    }
                }
            }
            if !received.is_empty() {
                return Ok(received);
            }
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Deletes a received message (its receipt handle names the current delivery).
    pub fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let Some((id, delivery)) = parse_receipt(receipt_handle) else {
            return Err(self.bad_receipt(receipt_handle));
        };
        let mut state = self.lock()?;
        if state.messages.get(&id).is_some_and(|m| m.delivery == delivery) {
            state.messages.remove(&id);
        }
        drop(state);
        self.writable.notify_one();
        Ok(())
    }

    /// Ends every back-off now: delayed messages are visible again (messages held by a receiver stay hidden).
    pub fn wake_delayed(&self) {
        let Ok(mut state) = self.lock() else { return };
        let State { messages, ready, .. } = &mut *state;
        for (id, message) in messages.iter_mut().filter(|(_, m)| m.delayed) {
            message.delayed = false;
            message.delivery += 1;
            ready.push_back(*id);
        }
        drop(state);
        self.readable.notify_waiters();
    }

    fn bad_receipt(&self, receipt_handle: &str) -> QueueError {
        QueueError {
            queue: self.name.clone(),
            message: format!("not a receipt handle of this queue: {receipt_handle:?}"),
            retryable: false,
        }
    }
}

fn parse_receipt(receipt_handle: &str) -> Option<(u64, u64)> {
    let (id, delivery) = receipt_handle.split_once(':')?;
    Some((id.parse().ok()?, delivery.parse().ok()?))
}

impl MessageQueue for LocalQueue {
    const BATCH_LIMIT: usize = 10;

    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        for body in bodies {
            loop {
                let notified = self.writable.notified();
                {
                    let mut state = self.lock()?;
                    if state.messages.len() < self.capacity {
                        let id = state.next_id;
                        state.next_id += 1;
                        state.messages.insert(
                            id,
                            Message {
                                body,
                                receive_count: 0,
                                delivery: 0,
                                delayed: false,
                            },
                        );
                        state.ready.push_back(id);
                        break;
                    }
                }
                notified.await;
            }
            self.readable.notify_one();
        }
        Ok(())
    }

    async fn delay(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        let Some((id, delivery)) = parse_receipt(receipt_handle) else {
            return Err(self.bad_receipt(receipt_handle));
        };
        let mut state = self.lock()?;
        if let Some(message) = state.messages.get_mut(&id).filter(|m| m.delivery == delivery) {
            message.delivery += 1;
            message.delayed = true;
            let delivery = message.delivery;
            state.hidden.push(Reverse((Instant::now() + delay, id, delivery)));
        }
        drop(state);
        self.readable.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> LocalQueue {
        LocalQueue::new("jobs", 100, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_received_message_is_hidden_until_deleted() {
        let q = queue();
        q.send_batch(vec!["a".into(), "b".into()]).await.unwrap();
        let first = q.receive(1).await.unwrap();
        assert_eq!((first[0].body.as_str(), first[0].receive_count), ("a", 1));
        let second = q.receive(10).await.unwrap();
        assert_eq!(second.len(), 1, "a is hidden while received");
        q.delete(&first[0].receipt_handle).unwrap();
        q.delete(&second[0].receipt_handle).unwrap();
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_message_comes_back_after_its_delay_with_its_receive_count() {
        let q = queue();
        q.send_batch(vec!["a".into()]).await.unwrap();
        let first = q.receive(1).await.unwrap().remove(0);
        q.delay(&first.receipt_handle, Duration::from_secs(30)).await.unwrap();
        let started = Instant::now();
        let again = q.receive(1).await.unwrap().remove(0);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(again.receive_count, 2);
        // The first delivery's receipt is stale: it deletes nothing.
        q.delete(&first.receipt_handle).unwrap();
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_not_handled_in_its_visibility_timeout_comes_back() {
        let q = queue();
        q.send_batch(vec!["a".into()]).await.unwrap();
        q.receive(1).await.unwrap();
        let again = q.receive(1).await.unwrap().remove(0);
        assert_eq!(again.receive_count, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_receive_limit_a_message_moves_to_the_dead_letter_queue() {
        let dlq = queue();
        let q = queue().with_dead_letter(dlq.clone(), 2);
        q.send_batch(vec!["a".into()]).await.unwrap();
        for _ in 0..2 {
            let m = q.receive(1).await.unwrap().remove(0);
            q.delay(&m.receipt_handle, Duration::ZERO).await.unwrap();
        }
        // The third receive finds it past the limit and moves it instead of delivering it.
        let third = tokio::time::timeout(Duration::from_secs(1), q.receive(1)).await;
        assert!(third.is_err(), "nothing is delivered a third time");
        let dead = dlq.receive(1).await.unwrap();
        assert_eq!(dead[0].body, "a");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn waking_ends_back_offs_but_not_deliveries_in_hand() {
        let q = queue();
        q.send_batch(vec!["a".into(), "b".into()]).await.unwrap();
        let a = q.receive(1).await.unwrap().remove(0);
        let _b_in_hand = q.receive(1).await.unwrap().remove(0);
        q.delay(&a.receipt_handle, Duration::from_secs(3600)).await.unwrap();
        q.wake_delayed();
        let again = q.receive(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].body.as_str(), again[0].receive_count), ("a", 2));
    }

    #[tokio::test]
    async fn senders_wait_while_the_queue_is_full() {
        let q = LocalQueue::new("jobs", 2, Duration::from_secs(60));
        q.send_batch(vec!["a".into(), "b".into()]).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(50), q.send_batch(vec!["c".into()])).await;
        assert!(blocked.is_err(), "a full queue takes nothing more");
        let m = q.receive(1).await.unwrap().remove(0);
        q.delete(&m.receipt_handle).unwrap();
        q.send_batch(vec!["c".into()]).await.unwrap();
        assert_eq!(q.len(), 2);
    }
}
