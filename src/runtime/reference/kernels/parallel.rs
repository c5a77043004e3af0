//! Splitting a kernel's work over the cores, on one pool of threads kept
//! for the life of the process: a decode step runs dozens of small
//! products, and starting threads for each would cost about what the
//! second core saves.
//!
//! The pool has one thread fewer than [`cores`]; the calling thread takes
//! parts too. An idle pool thread, and a caller waiting for its parts,
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

/// The cores a kernel may split its work over (at most 8: past that, the
/// memory bandwidth most of these kernels are bound by is spent).
///
/// Read once per process: `available_parallelism` reads the cgroup's CPU
/// quota from files at every call, which costs more than a small product.
pub(crate) fn cores() -> usize {
    const MOST_THREADS: usize = 8;
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MOST_THREADS))
    })
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
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            job: Mutex::new(None),
            arrived: Condvar::new(),
            finished: Condvar::new(),
            running: Mutex::new(()),
            published: AtomicU64::new(0),
            parts_finished: AtomicU64::new(0),
        }));
        for index in 1..cores() {
            // A pool thread that cannot start leaves more parts to the
            // others and the caller.
            let _ = std::thread::Builder::new()
                .name(format!("coreml-reference-kernels-{index}"))
                .spawn(move || pool.serve());
        }
        pool
    })
}

impl Pool {
    /// A pool thread: claims parts of whatever job is under way.
    fn serve(&self) {
        let mut job = lock(&self.job);
        loop {
            match job.as_mut() {
                Some(j) if j.next < j.parts => {
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
                _ => {
                    // Watch for the next job, then sleep; the job's state
                    // is read again under the lock either way.
                    let seen = self.published.load(Ordering::Acquire);
                    drop(job);
                    let arrived = spin_until(|| self.published.load(Ordering::Acquire) != seen);
                    job = lock(&self.job);
                    let waiting = job.as_ref().is_none_or(|j| j.next >= j.parts);
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
    if parts <= 1 || cores() == 1 {
        (0..parts).for_each(work);
        return;
    }
    let pool = pool();
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
    *job = Some(Job {
        work: erased,
        parts,
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
}
