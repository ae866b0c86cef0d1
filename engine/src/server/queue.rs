//! The node's execution slots and the bounded queue in front of them.
//!
//! A request to a program runs on one of the node's execution slots
//! ([`ServerConfig::max_concurrent`](super::ServerConfig::max_concurrent)). When every slot is
//! taken it waits in line — first come, first served (tokio's semaphore is fair: a slot that
//! frees goes to the longest waiter, never to a newcomer) — provided fewer than
//! [`ServerConfig::queue_limit`](super::ServerConfig::queue_limit) requests already wait, and
//! for at most [`ServerConfig::queue_timeout`](super::ServerConfig::queue_timeout). A request
//! that finds the queue full is refused at once ([`Refusal::Full`]); one that waited out the
//! time bound is refused then ([`Refusal::TimedOut`]); both are answered 503 with
//! `Retry-After: 1`.
//!
//! The hot path is a `try_acquire` on the semaphore; only a request that finds no free slot
//! touches the waiting count (one atomic), through a [`Waiting`] guard whose drop gives its
//! place back — also when the request is dropped while it waits (its client went away).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why a request got no execution slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot was taken and `limit` requests already waited for one.
    Full {
        /// The queue's bound.
        limit: usize,
    },
    /// The request waited `waited` without a slot freeing.
    TimedOut {
        /// The queue's time bound.
        waited: Duration,
    },
    /// The slots are closed (the node is stopping).
    Closed,
}

/// The node's execution slots and the requests waiting for one.
#[derive(Debug)]
pub struct ExecutionSlots {
    semaphore: Arc<Semaphore>,
    slots: usize,
    limit: usize,
    timeout: Option<Duration>,
    waiting: AtomicUsize,
}

/// A place in the queue: the waiting count is decremented when it is dropped.
#[derive(Debug)]
pub struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ExecutionSlots {
    /// `slots` execution slots; at most `limit` requests wait for one, each at most `timeout`
    /// (`None`: as long as it takes).
    pub fn new(slots: usize, limit: usize, timeout: Option<Duration>) -> Self {
        ExecutionSlots {
            semaphore: Arc::new(Semaphore::new(slots)),
            slots,
            limit,
            timeout,
            waiting: AtomicUsize::new(0),
        }
    }

    /// The semaphore of the slots (for work that waits without the queue's bounds: triggers,
    /// the shutdown's drain).
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// How many slots there are.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// How many requests may wait for a slot.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How long a request may wait for a slot (`None`: no bound).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Slots taken now (running executions, and the shutdown's drain once it holds them).
    pub fn taken(&self) -> usize {
        self.slots
            .saturating_sub(self.semaphore.available_permits())
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A place in the queue, unless `limit` requests already wait.
    pub fn enter(&self) -> Option<Waiting<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(&self.waiting))
    }

    /// A slot: a free one at once, else after waiting in the queue (see the module's
    /// documentation). Dropping the future while it waits gives its place in the queue back.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(Refusal::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        let Some(_place) = self.enter() else {
            return Err(Refusal::Full { limit: self.limit });
        };
        let wait = self.semaphore.clone().acquire_owned();
        let acquired = match self.timeout {
            Some(timeout) => tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| Refusal::TimedOut { waited: timeout })?,
            None => wait.await,
        };
        acquired.map_err(|_| Refusal::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn requests_wait_in_line_and_a_full_queue_refuses() {
        let slots = ExecutionSlots::new(1, 2, None);
        let Poll::Ready(Ok(running)) = poll_once(pin!(slots.acquire())) else {
            panic!("a free slot is taken at once");
        };
        assert_eq!((slots.taken(), slots.waiting()), (1, 0));
        let mut first = pin!(slots.acquire());
        let mut second = pin!(slots.acquire());
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        assert_eq!(slots.waiting(), 2);
        assert_eq!(
            poll_once(pin!(slots.acquire())).map(|r| r.err()),
            Poll::Ready(Some(Refusal::Full { limit: 2 })),
        );
        assert_eq!(slots.waiting(), 2, "a refused request takes no place");
        // The freed slot goes to the first in line, not to a newcomer.
        drop(running);
        assert!(poll_once(second.as_mut()).is_pending());
        let Poll::Ready(Ok(permit)) = poll_once(first.as_mut()) else {
            panic!("the first in line gets the freed slot");
        };
        assert_eq!(slots.waiting(), 1);
        drop(permit);
        assert!(matches!(poll_once(second.as_mut()), Poll::Ready(Ok(_))));
        assert_eq!((slots.taken(), slots.waiting()), (0, 0));
    }

    #[test]
    fn a_request_dropped_while_it_waits_gives_its_place_back() {
        let slots = ExecutionSlots::new(1, 1, None);
        let Poll::Ready(Ok(_running)) = poll_once(pin!(slots.acquire())) else {
            panic!("a free slot is taken at once");
        };
        {
            let mut waiting = pin!(slots.acquire());
            assert!(poll_once(waiting.as_mut()).is_pending());
            assert_eq!(slots.waiting(), 1);
        }
        assert_eq!(slots.waiting(), 0);
        let mut next = pin!(slots.acquire());
        assert!(
            poll_once(next.as_mut()).is_pending(),
            "the place is free again"
        );
        assert_eq!(slots.waiting(), 1);
    }

    #[test]
    fn without_a_queue_a_busy_node_refuses_at_once() {
        let slots = ExecutionSlots::new(1, 0, None);
        let Poll::Ready(Ok(_running)) = poll_once(pin!(slots.acquire())) else {
            panic!("a free slot is taken at once");
        };
        assert_eq!(
            poll_once(pin!(slots.acquire())).map(|r| r.err()),
            Poll::Ready(Some(Refusal::Full { limit: 0 })),
        );
    }

    #[tokio::test]
    async fn a_request_waits_no_longer_than_the_time_bound() {
        let bound = Duration::from_millis(50);
        let slots = ExecutionSlots::new(1, 4, Some(bound));
        let _running = slots.acquire().await.unwrap();
        let refused = slots.acquire().await.err();
        assert_eq!(refused, Some(Refusal::TimedOut { waited: bound }));
        assert_eq!(slots.waiting(), 0);
    }
}
