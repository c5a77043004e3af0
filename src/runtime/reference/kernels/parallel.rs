//! Splitting a kernel's work over the cores.

/// The cores a kernel may split its work over (at most 8: past that, the
/// memory bandwidth most of these kernels are bound by is spent).
pub(crate) fn cores() -> usize {
    const MOST_THREADS: usize = 8;
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MOST_THREADS))
}

/// `work` applied to every item, each on a thread of its own (the first on
/// the calling thread), the results in the items' order.
pub(super) fn map<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    match items {
        [] => Vec::new(),
        [only] => vec![work(only)],
        [first, rest @ ..] => {
            let work = &work;
            std::thread::scope(|scope| {
                let handles: Vec<_> = rest
                    .iter()
                    .map(|item| scope.spawn(move || work(item)))
                    .collect();
                let mut results = vec![work(first)];
                for handle in handles {
                    // A kernel does not panic; if one did, so does this.
                    match handle.join() {
                        Ok(result) => results.push(result),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                results
            })
        }
    }
}

/// `work` applied to every item, each on a thread of its own (the first on
/// the calling thread).
pub(super) fn for_each<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) {
    let mut items = items.into_iter();
    let Some(first) = items.next() else {
        return;
    };
    let work = &work;
    std::thread::scope(|scope| {
        for item in items {
            scope.spawn(move || work(item));
        }
        work(first);
    });
}
