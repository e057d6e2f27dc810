//! Progress from a running task, parent side: the latest value a task
//! reported, kept on its handle, and the callbacks that hear of it.
//!
//! How it flows: the worker's handler calls
//! [`worker::Progress::report`](crate::worker::Progress::report), which
//! sends a PROGRESS frame (at most one a millisecond; see there). The
//! engine checks that the frame is for the task the worker is running and
//! stores its bytes, still encoded, in the task's [`ProgressCell`]: only the
//! latest value is kept, so memory is bounded by one value per task however
//! often it reports. A task with a callback is queued (once, however many
//! values arrive meanwhile) for the facade's `wf-progress` thread, which
//! decodes the latest value and calls the callback: user code never runs on
//! the engine, and a slow callback only coalesces more values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;

/// Decodes a progress value and hands it to the user's callback.
pub(crate) type Callback = Box<dyn Fn(&[u8]) + Send + Sync>;

/// One task's latest progress value, shared by its handle, the engine and
/// the progress thread.
#[derive(Default)]
pub(crate) struct ProgressCell {
    /// The latest value, encoded, with how many values came so far.
    latest: Mutex<Option<(u64, Vec<u8>)>>,
    /// Set while the cell waits for the progress thread.
    queued: AtomicBool,
    callback: Option<Callback>,
}

impl ProgressCell {
    pub(crate) fn new(callback: Option<Callback>) -> Self {
        ProgressCell {
            callback,
            ..ProgressCell::default()
        }
    }

    /// Stores a value (the engine); `true` if the progress thread must be
    /// told (the cell has a callback and is not queued already).
    pub(crate) fn store(&self, bytes: &[u8]) -> bool {
        {
            let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            match latest.as_mut() {
                Some((count, value)) => {
                    *count += 1;
                    value.clear();
                    value.extend_from_slice(bytes);
                }
                None => *latest = Some((1, bytes.to_vec())),
            }
        }
        self.callback.is_some() && !self.queued.swap(true, Ordering::AcqRel)
    }

    /// The latest value, decoded as `P`.
    pub(crate) fn latest<P: DeserializeOwned>(&self) -> Option<P> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, bytes) = latest.as_ref()?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::codec::decode::<P>(bytes).ok()
        }))
        .ok()
        .flatten()
    }

    /// How many values the task reported so far.
    pub(crate) fn count(&self) -> u64 {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |(n, _)| *n)
    }

    /// Calls the callback with the latest value (the progress thread).
    fn deliver(&self) {
        self.queued.store(false, Ordering::Release);
        let bytes = match &*self.latest.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((_, bytes)) => bytes.clone(),
            None => return,
        };
        if let Some(callback) = &self.callback {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&bytes)));
        }
    }
}

/// The facade's `wf-progress` thread, started by the first task that has a
/// callback.
///
/// # Drop
///
/// Closes its queue and joins the thread, which first calls the callbacks
/// still queued.
#[derive(Default)]
pub(crate) struct ProgressThread {
    running: Option<(crossbeam_channel::Sender<Arc<ProgressCell>>, JoinHandle<()>)>,
}

impl ProgressThread {
    /// Queues `cell` for its callback; starts the thread if needed. A
    /// thread that cannot start costs only the callbacks (the latest value
    /// stays on the handle).
    pub(crate) fn notify(&mut self, cell: Arc<ProgressCell>) {
        if self.running.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded::<Arc<ProgressCell>>();
            let spawned = std::thread::Builder::new()
                .name("wf-progress".into())
                .spawn(move || {
                    for cell in rx {
                        cell.deliver();
                    }
                });
            match spawned {
                Ok(thread) => self.running = Some((tx, thread)),
                Err(_) => return,
            }
        }
        if let Some((tx, _)) = &self.running {
            let _ = tx.send(cell);
        }
    }
}

impl Drop for ProgressThread {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.running.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// Wraps a typed callback as a [`Callback`] that decodes first; a value
/// that does not decode as `P` is skipped.
pub(crate) fn typed<P, F>(f: F) -> Callback
where
    P: DeserializeOwned,
    F: Fn(P) + Send + Sync + 'static,
{
    Box::new(move |bytes| {
        if let Ok(value) = crate::codec::decode::<P>(bytes) {
            f(value);
        }
    })
}
