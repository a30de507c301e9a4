//! Keeps this broker's commits and its own quick user/role changes from overlapping, while
//! commits overlap each other freely and so do the changes.
//!
//! Why: etcd refuses a KV request with "auth revision is old" when a user or role change
//! applied between accepting and applying it. Under concurrent binds most refused commits were
//! refused by the same broker's adds and grants, and each then paid a pause and a second send.
//! A commit that waits until this broker's changes in flight are done, and holds new ones back
//! while it is sent, is not refused by them. One exclusive lock did that but made commits wait
//! for each other as well (a deprovision's steps queued behind other commits; a commit stuck on
//! a stopped member held every other one back), so the two kinds are two sides here: a side
//! may be inside while the other side is not.
//!
//! Fairness and bounds: a side that waits gets the next turn (new arrivals of the side inside
//! then wait as well, so neither side starves), and nobody waits longer than the gate's
//! patience: then it goes in anyway and meets, at worst, the refusal and resend it met without
//! the gate. A member that hangs with a request in flight therefore costs the other side one
//! patience, never its own timeout.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::unpoisoned::lock;

/// The two kinds of request kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Commits: compare-and-swap transactions, which etcd refuses when auth changed under them.
    Commits,
    /// This broker's quick user and role changes (adds, grants, revokes, user deletions).
    AuthChanges,
}

impl Side {
    fn index(self) -> usize {
        self as usize
    }

    fn other(self) -> Side {
        match self {
            Side::Commits => Side::AuthChanges,
            Side::AuthChanges => Side::Commits,
        }
    }
}

/// Who is inside, who waits, and whose turn is next.
#[derive(Debug, Default)]
struct State {
    inside: [usize; 2],
    waiting: [usize; 2],
    /// The side whose waiters go in next: the first side to wait takes it, and it passes to the
    /// other side (if that one waits) once none of its waiters is left.
    turn: Option<Side>,
}

impl State {
    fn may_enter(&self, side: Side) -> bool {
        self.inside[side.other().index()] == 0 && self.turn != Some(side.other())
    }

    /// One waiter of `side` stops waiting (it went in or gave up); the turn moves on once the
    /// side has no waiter left.
    fn stop_waiting(&mut self, side: Side) {
        self.waiting[side.index()] -= 1;
        if self.waiting[side.index()] == 0 && self.turn == Some(side) {
            self.turn = (self.waiting[side.other().index()] > 0).then(|| side.other());
        }
    }
}

/// The gate: [`SideGate::enter`] returns a pass that keeps its side inside until dropped.
#[derive(Debug)]
pub(crate) struct SideGate {
    state: Mutex<State>,
    changed: Notify,
    patience: Duration,
}

/// A request of one side inside the gate: dropping it lets the other side in once the last of
/// its side has left.
#[must_use = "the side leaves the gate when the pass is dropped"]
pub(crate) struct Pass<'a> {
    gate: &'a SideGate,
    side: Side,
}

/// A waiter's registration: counted while it waits, so that a request dropped while waiting
/// (its caller gave up) does not keep the other side out.
struct Waiting<'a> {
    gate: &'a SideGate,
    side: Side,
}

impl SideGate {
    /// A gate where nobody waits longer than `patience`.
    pub(crate) fn new(patience: Duration) -> Self {
        SideGate { state: Mutex::new(State::default()), changed: Notify::new(), patience }
    }

    /// Waits until `side` may go in (or the patience has run out) and goes in.
    pub(crate) async fn enter(&self, side: Side) -> Pass<'_> {
        {
            let mut state = lock(&self.state);
            if state.may_enter(side) {
                state.inside[side.index()] += 1;
                return Pass { gate: self, side };
            }
            state.waiting[side.index()] += 1;
            state.turn.get_or_insert(side);
        }
        let waiting = Waiting { gate: self, side };
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut overdue = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if overdue || state.may_enter(side) {
                    state.inside[side.index()] += 1;
                    // Counted out here, under the same lock as the entry.
                    std::mem::forget(waiting);
                    state.stop_waiting(side);
                    break;
                }
            }
            overdue = tokio::time::timeout_at(deadline, notified).await.is_err();
        }
        // The turn may have passed to the other side: its waiters check again.
        self.changed.notify_waiters();
        Pass { gate: self, side }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.gate.state).stop_waiting(self.side);
        self.gate.changed.notify_waiters();
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.state);
        state.inside[self.side.index()] -= 1;
        let last = state.inside[self.side.index()] == 0;
        drop(state);
        if last {
            self.gate.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(60);

    fn counts(gate: &SideGate) -> ([usize; 2], [usize; 2], Option<Side>) {
        let state = lock(&gate.state);
        (state.inside, state.waiting, state.turn)
    }

    /// Lets every spawned task run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_shares_with_itself() {
        let gate = SideGate::new(PATIENCE);
        let a = gate.enter(Side::Commits).await;
        let b = gate.enter(Side::Commits).await;
        assert_eq!(counts(&gate).0, [2, 0]);
        drop((a, b));
        let c = gate.enter(Side::AuthChanges).await;
        let d = gate.enter(Side::AuthChanges).await;
        assert_eq!(counts(&gate).0, [0, 2]);
        drop((c, d));
    }

    #[tokio::test(start_paused = true)]
    async fn the_other_side_waits_until_the_last_one_leaves() {
        let gate = std::sync::Arc::new(SideGate::new(PATIENCE));
        let (a, b) = (gate.enter(Side::Commits).await, gate.enter(Side::Commits).await);
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _pass = gate.enter(Side::AuthChanges).await;
                tokio::time::Instant::now()
            })
        };
        settle().await;
        assert_eq!(counts(&gate), ([2, 0], [0, 1], Some(Side::AuthChanges)));
        drop(a);
        settle().await;
        assert!(!waiter.is_finished(), "went in while a commit was still inside");
        let released = tokio::time::Instant::now();
        drop(b);
        assert_eq!(waiter.await.unwrap(), released);
        assert_eq!(counts(&gate), ([0, 0], [0, 0], None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_side_keeps_new_arrivals_of_the_side_inside_out() {
        let gate = std::sync::Arc::new(SideGate::new(PATIENCE));
        let inside = gate.enter(Side::Commits).await;
        let spawn = |side| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _pass = gate.enter(side).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            })
        };
        let change = spawn(Side::AuthChanges);
        settle().await;
        // Commits keep coming: without the turn they would keep the change out for ever.
        let late_commit = spawn(Side::Commits);
        settle().await;
        assert_eq!(counts(&gate), ([1, 0], [1, 1], Some(Side::AuthChanges)));
        drop(inside);
        settle().await;
        assert_eq!(counts(&gate), ([0, 1], [1, 0], Some(Side::Commits)), "the change went first");
        change.await.unwrap();
        late_commit.await.unwrap();
        assert_eq!(counts(&gate), ([0, 0], [0, 0], None));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_waits_longer_than_the_patience() {
        let patience = Duration::from_millis(50);
        let gate = std::sync::Arc::new(SideGate::new(patience));
        // A commit that never comes back (its member hangs).
        let _stuck = gate.enter(Side::Commits).await;
        let started = tokio::time::Instant::now();
        let change = gate.enter(Side::AuthChanges).await;
        assert_eq!(started.elapsed(), patience);
        assert_eq!(counts(&gate), ([1, 1], [0, 0], None));
        drop(change);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_hands_the_turn_on() {
        let gate = std::sync::Arc::new(SideGate::new(PATIENCE));
        let inside = gate.enter(Side::Commits).await;
        let given_up = tokio::time::timeout(Duration::from_millis(1), gate.enter(Side::AuthChanges)).await;
        assert!(given_up.is_err());
        assert_eq!(counts(&gate), ([1, 0], [0, 0], None));
        // Commits are not kept out by a turn nobody waits for.
        let next = gate.enter(Side::Commits).await;
        drop((inside, next));
    }
}
