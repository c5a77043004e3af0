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
//! as many pool threads as its prediction allows. An idle pool thread, and a caller waiting for its parts,
//! spin for up to [`SPIN`] before they sleep: a thread woken from sleep
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
use std::sync::atomic::{AtomicU64, Ordering};
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
    THREADS.with(Cell::get).unwrap_or_else(default_threads)
}

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

/// A job's parts, as the pool's threads see it.
struct Job {
    /// The work, its lifetime erased: [`run`] waits until every part has
    /// returned before the borrow ends.
    work: *const (dyn Fn(usize) + Sync + 'static),
    parts: usize,
    /// How many pool threads may take parts (the prediction's thread count
    /// less the caller).
    helpers: usize,
    /// Pool threads that have taken a part.
    joined: usize,
    /// The job's number ([`Pool::published`] once it is published).
    serial: u64,
    /// The next part to claim.
    next: usize,
    /// Parts returned.
    finished: usize,
    /// A part's panic, re-raised on the calling thread.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

// SAFETY: `work` points at a `Sync` closure, so calling it from several
// threads at once is sound; the pointer is only followed while `run`
// keeps the closure alive (see `Job::work`).
unsafe impl Send for Job {}

struct Pool {
    /// The job under way, if any.
    job: Mutex<Option<Job>>,
    /// Signalled when a job arrives.
    arrived: Condvar,
    /// Signalled when a job's last part returns.
    finished: Condvar,
    /// Held by the caller whose job runs (one at a time).
    running: Mutex<()>,
    /// Jobs published so far: what a spinning pool thread watches.
    published: AtomicU64,
    /// Parts finished so far, over all jobs: what a spinning caller
    /// watches.
    parts_finished: AtomicU64,
    /// Pool threads started.
    threads: Mutex<usize>,
}

impl Job {
    /// Whether a pool thread that last joined job `joined` may take a part
    /// of this one.
    fn open_to(&self, joined: u64) -> bool {
        self.next < self.parts && (self.serial == joined || self.joined < self.helpers)
    }
}

/// The pool, with at least `helpers` threads started (as many as start).
fn pool(helpers: usize) -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    let pool = *POOL.get_or_init(|| {
        Box::leak(Box::new(Pool {
            job: Mutex::new(None),
            arrived: Condvar::new(),
            finished: Condvar::new(),
            running: Mutex::new(()),
            published: AtomicU64::new(0),
            parts_finished: AtomicU64::new(0),
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
    /// A pool thread: claims parts of whatever job is under way.
    fn serve(&self) {
        // The last job this thread took a part of.
        let mut joined = 0;
        let mut job = lock(&self.job);
        loop {
            match job.as_mut() {
                Some(j) if j.open_to(joined) => {
                    if j.serial != joined {
                        j.joined += 1;
                        joined = j.serial;
                    }
                    let (part, work) = (j.next, j.work);
                    j.next += 1;
                    drop(job);
                    // SAFETY: the job is under way (it was in `self.job`
                    // with a part left), so `run` keeps `work` alive until
                    // this part is counted as finished.
                    let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { (*work)(part) }));
                    job = lock(&self.job);
                    self.finish(&mut job, outcome.err());
                }
                Some(j) if j.next < j.parts => {
                    // A job with as many pool threads as its prediction
                    // allows: sleep (not spin, which would take a core the
                    // prediction was told to leave) until the next.
                    job = self.arrived.wait(job).unwrap_or_else(|e| e.into_inner());
                }
                _ => {
                    // Watch for the next job, then sleep; the job's state
                    // is read again under the lock either way.
                    let seen = self.published.load(Ordering::Acquire);
                    drop(job);
                    let arrived = spin_until(|| self.published.load(Ordering::Acquire) != seen);
                    job = lock(&self.job);
                    let waiting = job.as_ref().is_none_or(|j| !j.open_to(joined));
                    if !arrived && waiting {
                        job = self.arrived.wait(job).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }

    /// Counts a part of the job under way as finished.
    fn finish(&self, job: &mut Option<Job>, panic: Option<Box<dyn std::any::Any + Send>>) {
        if let Some(j) = job.as_mut() {
            j.finished += 1;
            self.parts_finished.fetch_add(1, Ordering::Release);
            if j.panic.is_none() {
                j.panic = panic;
            }
            if j.finished == j.parts {
                self.finished.notify_all();
            }
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
    // before every part has returned (it waits for `finished == parts`
    // below) and takes the job out of the pool before returning, so no
    // thread follows the pointer after the borrow ends.
    let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
            work,
        )
    };
    let mut job = lock(&pool.job);
    let serial = pool.published.load(Ordering::Relaxed) + 1;
    *job = Some(Job {
        work: erased,
        parts,
        helpers: threads - 1,
        joined: 0,
        serial,
        next: 0,
        finished: 0,
        panic: None,
    });
    pool.published.fetch_add(1, Ordering::Release);
    pool.arrived.notify_all();
    // Take parts here too.
    loop {
        let Some(j) = job.as_mut() else {
            unreachable!("only this caller takes the job out");
        };
        if j.next < j.parts {
            let part = j.next;
            j.next += 1;
            drop(job);
            let outcome = catch_unwind(AssertUnwindSafe(|| work(part)));
            job = lock(&pool.job);
            pool.finish(&mut job, outcome.err());
        } else if j.finished < j.parts {
            // The other parts are under way: watch for their end, then
            // sleep until it.
            let target =
                pool.parts_finished.load(Ordering::Acquire) + (j.parts - j.finished) as u64;
            drop(job);
            spin_until(|| pool.parts_finished.load(Ordering::Acquire) >= target);
            job = lock(&pool.job);
            if job.as_ref().is_some_and(|j| j.finished < j.parts) {
                job = pool.finished.wait(job).unwrap_or_else(|e| e.into_inner());
            }
        } else {
            break;
        }
    }
    let panic = job.take().and_then(|j| j.panic);
    drop(job);
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
        assert_eq!(cores(), default_threads());
    }
}
