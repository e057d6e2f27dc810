//! A library thread whose end can be awaited, so that the async forms wait
//! for the engine, the pool's or the grinder's threads without blocking a
//! runtime, and still join them.
//!
//! The thread sets an [`Ended`] flag as the very last thing its closure does
//! (everything the closure owned is dropped by then), and wakes every task
//! awaiting it. Joining after that returns at once: the thread has nothing
//! left to run but its exit. No runtime is involved: the future needs only a
//! [`Waker`], so tokio, smol or `futures::executor` all drive it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};

/// A named library thread and the flag it sets when its work is over.
#[derive(Debug)]
pub(crate) struct Joinable<R> {
    handle: JoinHandle<R>,
    ended: Ended,
}

/// Set once a [`Joinable`]'s closure has returned (or unwound).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ended(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    done: bool,
    wakers: Vec<Waker>,
}

/// Sets [`Ended`] when dropped: at the closure's end, also when it panics.
struct SetOnDrop(Ended);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        let wakers = {
            let mut state = (self.0).0.lock().unwrap_or_else(PoisonError::into_inner);
            state.done = true;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Starts `f` on a thread called `name`.
pub(crate) fn spawn<R, F>(name: &str, f: F) -> io::Result<Joinable<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ended = Ended::default();
    let set = SetOnDrop(ended.clone());
    let handle = thread::Builder::new().name(name.into()).spawn(move || {
        let _set = set;
        f()
    })?;
    Ok(Joinable { handle, ended })
}

impl<R> Joinable<R> {
    /// The flag to await before [`join`](Self::join), so the join does not
    /// block.
    pub(crate) fn ended(&self) -> Ended {
        self.ended.clone()
    }

    /// Waits for the thread (at once, after its [`Ended`] is set).
    pub(crate) fn join(self) -> thread::Result<R> {
        self.handle.join()
    }
}

impl Ended {
    /// Whether the thread's work is over.
    #[cfg(test)]
    pub(crate) fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).done
    }

    /// Resolves once the thread's work is over.
    pub(crate) fn wait(&self) -> EndedFuture {
        EndedFuture(self.clone())
    }
}

/// [`Ended::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub(crate) struct EndedFuture(Ended);

impl Future for EndedFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = (self.0).0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.done {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_flag_is_set_after_the_closure_and_wakes_every_waiter() {
        let (go_tx, go) = mpsc::channel::<()>();
        let thread = spawn("wf-test", move || {
            let _ = go.recv();
            7
        })
        .expect("thread");
        let ended = thread.ended();
        assert!(!ended.is_set());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let ended = ended.clone();
                std::thread::spawn(move || futures_executor::block_on(ended.wait()))
            })
            .collect();
        go_tx.send(()).expect("thread waits");
        for waiter in waiters {
            waiter.join().expect("woken");
        }
        assert!(ended.is_set());
        assert_eq!(thread.join().expect("no panic"), 7);
    }

    #[test]
    fn a_panicking_closure_still_sets_the_flag() {
        let thread = spawn("wf-test-panic", || -> () { panic!("on purpose") }).expect("thread");
        futures_executor::block_on(thread.ended().wait());
        assert!(thread.join().is_err());
    }
}
