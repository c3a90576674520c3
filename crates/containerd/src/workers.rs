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

type Job<H> = Box<dyn FnOnce(&H) + Send>;

/// A queued request's state: a worker starts it only from `QUEUED`, the waiting side
/// abandons it only from `QUEUED`, so a request is either run or refused, never both.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

struct Queued<H> {
    job: Job<H>,
    state: Arc<AtomicU8>,
    /// Whether the waiting side is gone (its client cancelled).
    gone: Box<dyn Fn() -> bool + Send>,
    /// Answers the request `UNAVAILABLE` when the workers stop before it ran.
    refuse: Box<dyn FnOnce(Status) + Send>,
}

struct Queue<H> {
    jobs: VecDeque<Queued<H>>,
    closed: bool,
}

struct Shared<H> {
    queue: Mutex<Queue<H>>,
    ready: Condvar,
}

/// The worker threads and their queue; each worker owns one handle `H` (a store handle).
pub struct Workers<H: Send + 'static = Strata> {
    shared: Arc<Shared<H>>,
    /// How long a request may wait in the queue: [`MAX_QUEUE_WAIT`] (shorter in tests).
    wait: Duration,
    /// Closed when every worker has exited (each holds a sender).
    stopped: Mutex<Option<tokio::sync::mpsc::Receiver<()>>>,
}

fn shutting_down() -> Status {
    Status::unavailable("the snapshotter is shutting down; the request was not run")
}

impl<H: Send + 'static> Workers<H> {
    /// Starts one worker thread per handle.
    pub fn start(handles: Vec<H>) -> std::io::Result<Workers<H>> {
        Workers::start_with_wait(handles, MAX_QUEUE_WAIT)
    }

    fn start_with_wait(handles: Vec<H>, wait: Duration) -> std::io::Result<Workers<H>> {
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
            wait,
            stopped: Mutex::new(Some(stopped)),
        })
    }

    /// Runs `f` on a worker with its store handle, after the requests queued before it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&H) -> Result<T, Status> + Send + 'static,
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
        let job: Job<H> = Box::new(move |handle: &H| {
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
            _ = tokio::time::sleep(self.wait) => {}
        }
        if state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Err(Status::resource_exhausted(format!(
                "the snapshotter is busy: the request waited {} s for a worker (limit \
                 MAX_QUEUE_WAIT) and was not run; retry later",
                self.wait.as_secs_f64()
            )));
        }
        // A worker started it: its answer comes (the driver's call limits bound it).
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Stops taking requests: queued ones are answered `UNAVAILABLE` unrun; each worker
    /// exits after the request it is running.
    pub fn close(&self) {
        let refused: Vec<Queued<H>> = {
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

impl<H: Send + 'static> Drop for Workers<H> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A worker: takes requests until the queue is closed.
fn work<H>(shared: &Shared<H>, handle: &H) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    /// A request that keeps a worker busy until `gate` is sent to; returns once it runs.
    async fn blocked(
        workers: &Arc<Workers<()>>,
    ) -> (mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (gate, wait) = mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let w = workers.clone();
        let running = tokio::spawn(async move {
            w.run(move |_| {
                started_tx.send(()).unwrap();
                wait.recv().unwrap();
                Ok(())
            })
            .await
            .unwrap();
        });
        started.await.unwrap();
        (gate, running)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_what_it_queued_runs() {
        let rt = runtime();
        rt.block_on(async {
            let workers = Arc::new(Workers::start(vec![()]).unwrap());
            let (gate, running) = blocked(&workers).await;
            let ran = Arc::new(AtomicUsize::new(0));
            let mut queued = Vec::new();
            for _ in 0..MAX_QUEUED_REQUESTS {
                let (w, ran) = (workers.clone(), ran.clone());
                queued.push(tokio::spawn(async move {
                    w.run(move |_| {
                        ran.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                }));
            }
            // Let the spawned requests queue.
            while workers.shared.queue.lock().unwrap().jobs.len() < MAX_QUEUED_REQUESTS {
                tokio::task::yield_now().await;
            }
            let refused = workers.run(|_| Ok(())).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            assert!(
                refused.message().contains("MAX_QUEUED_REQUESTS"),
                "{refused:?}"
            );
            gate.send(()).unwrap();
            running.await.unwrap();
            for q in queued {
                q.await.unwrap().unwrap();
            }
            assert_eq!(ran.load(Ordering::SeqCst), MAX_QUEUED_REQUESTS);
        });
    }

    #[test]
    fn a_request_that_waits_too_long_is_refused_and_never_runs() {
        let rt = runtime();
        rt.block_on(async {
            // The worker stays busy until after the refusal: the wait's length does not
            // matter, only that it passes.
            let workers =
                Arc::new(Workers::start_with_wait(vec![()], Duration::from_millis(50)).unwrap());
            let (gate, running) = blocked(&workers).await;
            let ran = Arc::new(AtomicUsize::new(0));
            let r = ran.clone();
            let refused = workers
                .run(move |_| {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            assert!(refused.message().contains("MAX_QUEUE_WAIT"), "{refused:?}");
            gate.send(()).unwrap();
            running.await.unwrap();
            // The worker passes the refused request by, and serves the next.
            workers.run(|_| Ok(())).await.unwrap();
            assert_eq!(ran.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn close_refuses_what_waits_lets_the_running_finish_and_stops_the_workers() {
        let rt = runtime();
        rt.block_on(async {
            let workers = Arc::new(Workers::start(vec![(), ()]).unwrap());
            let (gate_a, running_a) = blocked(&workers).await;
            let (gate_b, running_b) = blocked(&workers).await;
            let w = workers.clone();
            let waiting = tokio::spawn(async move { w.run(|_| Ok(())).await });
            while workers.shared.queue.lock().unwrap().jobs.is_empty() {
                tokio::task::yield_now().await;
            }
            workers.close();
            let refused = waiting.await.unwrap().unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable);
            assert_eq!(
                workers.run(|_| Ok(())).await.unwrap_err().code(),
                tonic::Code::Unavailable
            );
            gate_a.send(()).unwrap();
            gate_b.send(()).unwrap();
            running_a.await.unwrap();
            running_b.await.unwrap();
            workers.stopped().await;
        });
    }
}
