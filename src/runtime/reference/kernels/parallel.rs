//! Splitting a kernel's work over the cores, on one pool of threads kept
//! for the life of the process: a decode step runs dozens of small
//! products, and starting threads for each would cost about what the
//! second core saves.
//!
//! A prediction splits its work over [`cores`] threads: the pool's and the
//! calling thread, which takes parts too. That count is the function's
//! `Configuration::threads` when it has one (set for the prediction by
//! [`with_threads`]), else `RAYON_NUM_THREADS` when that is a positive
//! integer, else the cores available (at most 8). The pool grows to the
//! most threads any prediction has asked for, and a job is served by only
//! as many pool threads as its prediction allows.
//!
//! A pool thread joins a job once, under the pool's lock, then claims its
//! parts one at a time with an atomic counter: a decode step hands out
//! dozens of jobs, and a lock taken per part cost more than a small part.
//! An idle pool thread, and a caller waiting for its parts, spin for up
//! to [`SPIN`] before they sleep: a thread woken from sleep
//! starts tens to hundreds of microseconds later (more on a virtual
//! machine, whose idle core the host parks), which is the whole length of
//! one of a decode step's products, so without spinning the caller would
//! run most parts itself. Spinning costs a core for at most [`SPIN`] after
//! the last job, as ONNX Runtime's and OpenMP's pools do by default.
//!
//! One job runs at a time: a caller finding the pool busy (two predictions
//! at once) runs its parts itself, which gives the same results, since
//! each part computes its own outputs.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle thread watches for work before it sleeps.
const SPIN: Duration = Duration::from_millis(1);

/// Spins until `ready()` or [`SPIN`] has passed; whether it became ready.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= SPIN {
            return ready();
        }
    }
}

/// The threads a kernel may split its work over (the calling thread
/// included): the prediction's setting ([`with_threads`]), else
/// [`default_threads`].
pub(crate) fn cores() -> usize {
    THREADS
        .with(Cell::get)
        .unwrap_or_else(default_threads)
        .min(MOST_REQUESTED)
}

/// The most threads a setting may ask for: a count past the cores only
/// shares them out, and a mistyped one should not start thousands of
/// threads.
const MOST_REQUESTED: usize = 64;

thread_local! {
    /// The thread count of the prediction running on this thread, if its
    /// function set one.
    static THREADS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The threads a prediction uses when its function sets none:
/// `RAYON_NUM_THREADS` when it is a positive integer (the variable the
/// Rust ecosystem's thread pools read), else the cores available, at most
/// 8 (past that, the memory bandwidth most of these kernels are bound by
/// is spent).
///
/// Read once per process: `available_parallelism` reads the cgroup's CPU
/// quota from files at every call, which costs more than a small product.
fn default_threads() -> usize {
    const MOST_THREADS: usize = 8;
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let requested = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<NonZeroUsize>().ok());
        match requested {
            Some(n) => n.get(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MOST_THREADS)),
        }
    })
}

/// Runs `work` with this thread's kernels split over `threads` threads (the
/// default's when `None`), restoring the previous setting after, on a panic
/// too.
pub(crate) fn with_threads<R>(threads: Option<NonZeroUsize>, work: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREADS.with(|t| t.set(self.0));
        }
    }
    let Some(threads) = threads else {
        return work();
    };
    let _restore = Restore(THREADS.with(|t| t.replace(Some(threads.get()))));
    work()
}

/// Below this many multiply-adds per thread, handing a part of a product
/// to the pool costs more than it saves.
pub(crate) const WORK_PER_THREAD: usize = 1 << 20;

/// How many threads `work` multiply-adds split into: the cores, or fewer
/// when each would get less than [`WORK_PER_THREAD`].
pub(crate) fn threads_for(work: usize) -> usize {
    cores().min(work / WORK_PER_THREAD).max(1)
}

/// Below this many elements of an elementwise or row-by-row op, handing
/// parts to the pool costs about what the second core saves.
pub(crate) const PARALLEL_ELEMENTS: usize = 1 << 16;

/// `work` applied to every item, the items split over the pool, the results
/// in the items' order.
pub(super) fn map<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    run(items.len(), &|i| {
        let result = work(&items[i]);
        *lock(&results[i]) = Some(result);
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| unreachable!("`run` ran every part"))
        })
        .collect()
}

/// `work` applied to every item, the items split over the pool.
pub(crate) fn for_each<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) {
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    run(items.len(), &|i| {
        if let Some(item) = lock(&items[i]).take() {
            work(item);
        }
    });
}

/// Locks `mutex`, ignoring poisoning (a panicking part is re-raised by
/// [`run`]; the data behind these locks stays consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job as the pool's threads see it: published under [`Pool::state`],
/// its parts claimed and counted through [`Pool::next`] and
/// [`Pool::done`], without the lock.
#[derive(Clone, Copy)]
struct Job {
    /// The work, its lifetime erased: [`run`] waits until every part has
    /// returned, and every pool thread that joined has stopped claiming,
    /// before the borrow ends.
    work: *const (dyn Fn(usize) + Sync + 'static),
    parts: usize,
    /// How many pool threads may take parts (the prediction's thread count
    /// less the caller).
    helpers: usize,
    /// The job's number ([`Pool::published`] once it is published).
    serial: u64,
}

/// What the lock guards: the job under way and who joined it.
struct State {
    job: Option<Job>,
    /// Pool threads that have joined the job under way.
    joined: usize,
}

// SAFETY: `work` points at a `Sync` closure, so calling it from several
// threads at once is sound; the pointer is only followed by a thread
// counted in `Pool::active`, which `run` waits for before the borrow ends.
unsafe impl Send for State {}

struct Pool {
    state: Mutex<State>,
    /// Signalled when a job arrives.
    arrived: Condvar,
    /// Signalled when a job's last part returns.
    finished: Condvar,
    /// Held by the caller whose job runs (one at a time).
    running: Mutex<()>,
    /// The next part of the job under way to claim (claims past its parts
    /// claim nothing). Reset only while no pool thread is active.
    next: AtomicUsize,
    /// Parts of the job under way returned.
    done: AtomicUsize,
    /// Pool threads that joined the job under way and may still claim.
    active: AtomicUsize,
    /// Jobs published so far: what a spinning pool thread watches.
    published: AtomicU64,
    /// A part's panic, re-raised on the calling thread.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Pool threads started.
    threads: Mutex<usize>,
}

/// The pool, with at least `helpers` threads started (as many as start).
fn pool(helpers: usize) -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    let pool = *POOL.get_or_init(|| {
        Box::leak(Box::new(Pool {
            state: Mutex::new(State {
                job: None,
                joined: 0,
            }),
            arrived: Condvar::new(),
            finished: Condvar::new(),
            running: Mutex::new(()),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            panic: Mutex::new(None),
            threads: Mutex::new(0),
        }))
    });
    let mut started = lock(&pool.threads);
    while *started < helpers {
        *started += 1;
        // A pool thread that cannot start leaves more parts to the others
        // and the caller.
        let spawned = std::thread::Builder::new()
            .name(format!("coreml-reference-kernels-{}", *started))
            .spawn(move || pool.serve());
        if spawned.is_err() {
            break;
        }
    }
    pool
}

impl Pool {
    /// A pool thread: joins each job it may, and claims its parts.
    fn serve(&self) {
        // The last job this thread joined.
        let mut joined = 0;
        loop {
            let job = self.join(&mut joined);
            self.claim_parts(&job);
            self.active.fetch_sub(1, Ordering::Release);
        }
    }

    /// Waits for a job this thread has not joined and may, and joins it
    /// (counted in `active`, under the lock, so `run` waits for it).
    fn join(&self, joined: &mut u64) -> Job {
        let mut state = lock(&self.state);
        loop {
            match state.job {
                Some(job) if job.serial != *joined && state.joined < job.helpers => {
                    state.joined += 1;
                    *joined = job.serial;
                    self.active.fetch_add(1, Ordering::AcqRel);
                    return job;
                }
                Some(job) if job.serial != *joined => {
                    // As many pool threads as its prediction allows: sleep
                    // (not spin, which would take a core the prediction
                    // was told to leave) until the next.
                    state = self.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                _ => {
                    // Watch for the next job, then sleep; the state is read
                    // again under the lock either way.
                    let seen = self.published.load(Ordering::Acquire);
                    drop(state);
                    let arrived = spin_until(|| self.published.load(Ordering::Acquire) != seen);
                    state = lock(&self.state);
                    let waiting = state.job.is_none_or(|j| j.serial == *joined);
                    if !arrived && waiting {
                        state = self.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }

    /// Claims and runs parts of `job` until none is left.
    fn claim_parts(&self, job: &Job) {
        loop {
            let part = self.next.fetch_add(1, Ordering::AcqRel);
            if part >= job.parts {
                return;
            }
            // SAFETY: this thread is counted in `active` (it joined `job`
            // under the lock), so `run` keeps `work` alive until it stops
            // claiming; and `next` was reset for `job` before it joined.
            let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.work)(part) }));
            self.finish(job.parts, outcome.err());
        }
    }

    /// Counts a part of a job of `parts` as returned.
    fn finish(&self, parts: usize, panic: Option<Box<dyn std::any::Any + Send>>) {
        if let Some(panic) = panic {
            lock(&self.panic).get_or_insert(panic);
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == parts {
            // Under the lock, so that a caller about to sleep sees the
            // count or is woken.
            let _state = lock(&self.state);
            self.finished.notify_all();
        }
    }
}

/// Runs `work(0)`, ..., `work(parts - 1)`, split over the pool and the
/// calling thread; returns when all have returned (re-raising a panic).
fn run(parts: usize, work: &(dyn Fn(usize) + Sync)) {
    let threads = cores();
    if parts <= 1 || threads == 1 {
        (0..parts).for_each(work);
        return;
    }
    let pool = pool(threads - 1);
    let running = match pool.running.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => {
            // Another job is under way: this one runs here.
            (0..parts).for_each(work);
            return;
        }
    };
    // SAFETY: only the lifetime changes. This function does not return
    // before every part has returned and every pool thread that joined
    // the job has stopped claiming (`active` is zero after the job is
    // taken down), so no thread follows the pointer after the borrow ends.
    let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
            work,
        )
    };
    {
        let mut state = lock(&pool.state);
        // No pool thread is active (the last job waited for them), so none
        // claims while the counters are reset.
        pool.next.store(0, Ordering::Relaxed);
        pool.done.store(0, Ordering::Relaxed);
        let serial = pool.published.load(Ordering::Relaxed) + 1;
        state.job = Some(Job {
            work: erased,
            parts,
            helpers: threads - 1,
            serial,
        });
        state.joined = 0;
        pool.published.store(serial, Ordering::Release);
        pool.arrived.notify_all();
    }
    // Take parts here too.
    loop {
        let part = pool.next.fetch_add(1, Ordering::AcqRel);
        if part >= parts {
            break;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| work(part)));
        pool.finish(parts, outcome.err());
    }
    // The other parts are under way: watch for their end, then sleep until
    // it.
    if !spin_until(|| pool.done.load(Ordering::Acquire) >= parts) {
        let mut state = lock(&pool.state);
        while pool.done.load(Ordering::Acquire) < parts {
            state = pool.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
    // Take the job down, then wait for the pool threads that joined it to
    // stop claiming (each is at most one failed claim from stopping).
    lock(&pool.state).job = None;
    while pool.active.load(Ordering::Acquire) > 0 {
        // (Yielding, in case the host has parked that thread's core.)
        std::thread::yield_now();
    }
    let panic = lock(&pool.panic).take();
    drop(running);
    if let Some(panic) = panic {
        resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_in_order_of_results() {
        for parts in [0, 1, 2, 3, 17] {
            let items: Vec<usize> = (0..parts).collect();
            assert_eq!(
                map(&items, |&i| i * i),
                items.iter().map(|i| i * i).collect::<Vec<_>>()
            );
        }
        // Jobs from several threads at once: each runs (on the pool or on
        // its own thread) and gets its own results.
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    scope.spawn(move || {
                        let items: Vec<usize> = (0..9).map(|i| i + 100 * t).collect();
                        map(&items, |&i| i + 1)
                    })
                })
                .collect();
            for (t, handle) in handles.into_iter().enumerate() {
                let expected: Vec<usize> = (0..9).map(|i| i + 100 * t + 1).collect();
                assert_eq!(handle.join().unwrap(), expected);
            }
        });
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_pool_goes_on() {
        let caught = catch_unwind(|| {
            map(&[0, 1, 2, 3], |&i| {
                assert_ne!(i, 2, "part two fails");
                i
            })
        });
        assert!(caught.is_err());
        assert_eq!(map(&[1, 2, 3], |&i| i * 2), [2, 4, 6]);
    }

    /// The threads that ran `parts` parts of one job under `threads`, each
    /// part waiting (up to 200 ms) for `wait_for` threads to have joined,
    /// so that a slow pool thread still gets one.
    fn threads_running(threads: usize, parts: usize, wait_for: usize) -> usize {
        let seen = Mutex::new(std::collections::HashSet::new());
        let items: Vec<usize> = (0..parts).collect();
        with_threads(NonZeroUsize::new(threads), || {
            map(&items, |_| {
                lock(&seen).insert(std::thread::current().id());
                let start = Instant::now();
                while lock(&seen).len() < wait_for && start.elapsed() < Duration::from_millis(200) {
                    std::thread::yield_now();
                }
            })
        });
        let count = lock(&seen).len();
        count
    }

    #[test]
    fn a_prediction_uses_as_many_threads_as_it_is_set_to() {
        // One thread: every part on the caller.
        assert_eq!(threads_running(1, 6, 2), 1);
        // Two: never a third, even with more parts than threads.
        assert!(threads_running(2, 4, 3) <= 2);
        // Three, on a machine with fewer cores: the pool grows. Another
        // test's job holding the pool makes this one run on its caller,
        // so it is tried until it has the pool.
        let most = (0..50).map(|_| threads_running(3, 3, 3)).max();
        assert_eq!(most, Some(3));
        // The setting ends with its closure.
        assert_eq!(cores(), default_threads().min(MOST_REQUESTED));
        // A huge count is held to the most a setting may ask for.
        let huge = NonZeroUsize::new(1 << 20);
        assert_eq!(with_threads(huge, cores), MOST_REQUESTED);
    }
}
