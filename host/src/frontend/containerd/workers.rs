//! Where containerd's requests run: [`STORE_HANDLES`] worker threads, each owning one store
//! handle, fed by one bounded queue.
//!
//! Why not tokio's `spawn_blocking` with a pool of handles: a request waiting there for a
//! handle holds one of the runtime's blocking threads, and the request that has a handle
//! calls a driver whose WASI file operations run on the blocking pool of the runtime they are
//! called from. 700 concurrent requests filled the 512 blocking threads with waiters, the
//! driver's file operations could never run, and the daemon hung — SIGTERM included (the
//! runtime waits for its blocking threads before it exits).
//!
//! Here the async runtime only receives requests, queues them and awaits their answers: it
//! never blocks. Worker threads are plain threads outside any tokio runtime, so a driver's
//! WASI I/O runs on wasmtime-wasi's own runtime, which only the [`STORE_HANDLES`] workers use:
//! nothing that waits can take the threads the work needs. A request that finds
//! [`MAX_QUEUED_REQUESTS`] others waiting, or that waits longer than [`MAX_QUEUE_WAIT`], is
//! answered `RESOURCE_EXHAUSTED` without being run (containerd's callers may retry it); one a
//! worker has started always gets its real answer. A request whose client went away before a
//! worker reached it is dropped unrun.
//!
//! Stopping ([`Workers::close`]): queued requests are answered `UNAVAILABLE` unrun, each
//! worker finishes the request it is running and exits; [`Workers::stopped`] resolves when all
//! have.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tonic::Status;

use crate::layers::Strata;

/// Store handles (SQLite connection and driver runtime each), one per worker thread: the
/// requests that run at once.
pub const STORE_HANDLES: usize = 4;

/// Requests that may wait for a worker; one more is answered `RESOURCE_EXHAUSTED`.
pub const MAX_QUEUED_REQUESTS: usize = 128;

/// The longest a request waits for a worker before it is answered `RESOURCE_EXHAUSTED`.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce(&Strata) + Send>;

/// A queued request's state: a worker starts it only from `QUEUED`, the waiting side
/// abandons it only from `QUEUED`, so a request is either run or refused, never both.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

struct Queued {
    job: Job,
    state: Arc<AtomicU8>,
    /// Whether the waiting side is gone (its client cancelled).
    gone: Box<dyn Fn() -> bool + Send>,
    /// Answers the request `UNAVAILABLE` when the workers stop before it ran.
    refuse: Box<dyn FnOnce(Status) + Send>,
}

struct Queue {
    jobs: VecDeque<Queued>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The worker threads and their queue.
pub struct Workers {
    shared: Arc<Shared>,
    /// Closed when every worker has exited (each holds a sender).
    stopped: Mutex<Option<tokio::sync::mpsc::Receiver<()>>>,
}

fn shutting_down() -> Status {
    Status::unavailable("the snapshotter is shutting down; the request was not run")
}

impl Workers {
    /// Starts one worker thread per handle.
    pub fn start(handles: Vec<Strata>) -> std::io::Result<Workers> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let (done, stopped) = tokio::sync::mpsc::channel::<()>(1);
        for (i, handle) in handles.into_iter().enumerate() {
            let shared = shared.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name(format!("strata-worker-{i}"))
                .spawn(move || {
                    work(&shared, &handle);
                    drop(done);
                })?;
        }
        Ok(Workers {
            shared,
            stopped: Mutex::new(Some(stopped)),
        })
    }

    /// Runs `f` on a worker with its store handle, after the requests queued before it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Strata) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<T, Status>>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let state = Arc::new(AtomicU8::new(QUEUED));
        let answer = {
            let tx = tx.clone();
            move |r: Result<T, Status>| {
                if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(r);
                }
            }
        };
        let refuse = answer.clone();
        let gone = {
            let tx = tx.clone();
            move || {
                tx.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_none_or(|tx| tx.is_closed())
            }
        };
        let job: Job = Box::new(move |handle: &Strata| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(handle)));
            answer(result.unwrap_or_else(|_| Err(Status::internal("the request panicked"))));
        });
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.closed {
                return Err(shutting_down());
            }
            if q.jobs.len() >= MAX_QUEUED_REQUESTS {
                // Requests given up on still hold their place until a worker reaches them.
                q.jobs
                    .retain(|j| j.state.load(Ordering::Acquire) == QUEUED && !(j.gone)());
            }
            if q.jobs.len() >= MAX_QUEUED_REQUESTS {
                return Err(Status::resource_exhausted(format!(
                    "the snapshotter is busy: {MAX_QUEUED_REQUESTS} requests are already \
                     waiting for its {STORE_HANDLES} workers (limit MAX_QUEUED_REQUESTS); retry later"
                )));
            }
            q.jobs.push_back(Queued {
                job,
                state: state.clone(),
                gone: Box::new(gone),
                refuse: Box::new(move |s| refuse(Err(s))),
            });
        }
        self.shared.ready.notify_one();
        tokio::select! {
            r = &mut rx => return r.unwrap_or_else(|_| Err(shutting_down())),
            _ = tokio::time::sleep(MAX_QUEUE_WAIT) => {}
        }
        if state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Err(Status::resource_exhausted(format!(
                "the snapshotter is busy: the request waited {} s for a worker (limit \
                 MAX_QUEUE_WAIT) and was not run; retry later",
                MAX_QUEUE_WAIT.as_secs()
            )));
        }
        // A worker started it: its answer comes (the driver's call limits bound it).
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Stops taking requests: queued ones are answered `UNAVAILABLE` unrun; each worker
    /// exits after the request it is running.
    pub fn close(&self) {
        let refused: Vec<Queued> = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.closed = true;
            q.jobs.drain(..).collect()
        };
        self.shared.ready.notify_all();
        for j in refused {
            (j.refuse)(shutting_down());
        }
    }

    /// Resolves when every worker has exited (after [`Workers::close`]). Only the first
    /// caller waits; later ones return at once.
    pub async fn stopped(&self) {
        let rx = self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut rx) = rx {
            while rx.recv().await.is_some() {}
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.close();
    }
}

/// A worker: takes requests until the queue is closed.
fn work(shared: &Shared, handle: &Strata) {
    loop {
        let next = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.closed {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        if (next.gone)() {
            continue;
        }
        if next
            .state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            (next.job)(handle);
        }
    }
}
