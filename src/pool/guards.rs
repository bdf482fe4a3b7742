//! Drop guards that keep the pool's counts whole when an `acquire` is dropped part-way (a
//! client that disconnects while its session is being created, validated or waited for).
//! Each holds what the acquirer took from the pool — a creation slot, a checked-out session,
//! a place in the waiters' queue — and gives it back on drop unless it was committed.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::state::Member;
use super::{Inner, SessionFactory};

/// A slot counted in `creating` by an acquirer. Dropped uncommitted (the creation failed or
/// was abandoned), it frees the slot, waking warmup if a waiter could use it.
pub(super) struct CreatingSlot<'a, F: SessionFactory> {
    pool: &'a Arc<Inner<F>>,
    armed: bool,
}

impl<'a, F: SessionFactory> CreatingSlot<'a, F> {
    /// Call with `creating` already counted (under the same lock as the decision).
    pub fn counted(pool: &'a Arc<Inner<F>>) -> Self {
        CreatingSlot { pool, armed: true }
    }

    /// The session exists: the slot becomes an active session.
    pub fn commit(mut self, session: F::Session) -> Member<F::Session> {
        self.armed = false;
        let mut st = self.pool.lock();
        st.creating -= 1;
        st.active += 1;
        st.metrics.sessions_created += 1;
        Member::new(session)
    }
}

impl<F: SessionFactory> Drop for CreatingSlot<'_, F> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.pool.lock();
        st.creating -= 1;
        // The slot is free again: a waiter may need it.
        if st.open_waiters() > 0 {
            self.pool.trigger_warmup(&mut st);
        }
    }
}

/// A session counted `active` by an acquirer that has not handed it out yet (it is being
/// validated). Dropped uncommitted, the session is released back to the pool.
pub(super) struct Checkout<'a, F: SessionFactory> {
    pool: &'a Arc<Inner<F>>,
    member: Option<Member<F::Session>>,
}

impl<'a, F: SessionFactory> Checkout<'a, F> {
    pub fn new(pool: &'a Arc<Inner<F>>, member: Member<F::Session>) -> Self {
        Checkout {
            pool,
            member: Some(member),
        }
    }

    pub fn session(&self) -> Option<&F::Session> {
        self.member.as_ref().map(|m| &m.session)
    }

    /// Takes the session out of the guard (to hand it out, or to remove it).
    pub fn take(mut self) -> Option<Member<F::Session>> {
        self.member.take()
    }
}

impl<F: SessionFactory> Drop for Checkout<'_, F> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.pool.release(member);
        }
    }
}

/// A place in the waiters' queue. A session handed over after the acquirer stopped waiting
/// sits in the channel, already counted active: dropping the guard closes the channel (no
/// more hand-overs) and releases whatever was handed over.
pub(super) struct Waiting<'a, F: SessionFactory> {
    pool: &'a Arc<Inner<F>>,
    pub rx: oneshot::Receiver<Member<F::Session>>,
}

impl<'a, F: SessionFactory> Waiting<'a, F> {
    pub fn new(pool: &'a Arc<Inner<F>>, rx: oneshot::Receiver<Member<F::Session>>) -> Self {
        Waiting { pool, rx }
    }

    /// Stops waiting; returns a session handed over at the last instant, if any.
    pub fn close(mut self) -> Option<Member<F::Session>> {
        self.rx.close();
        self.rx.try_recv().ok()
    }
}

impl<F: SessionFactory> Drop for Waiting<'_, F> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(member) = self.rx.try_recv() {
            self.pool.release(member);
        }
    }
}
