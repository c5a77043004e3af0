//! Reuse of the f32 buffers a prediction's intermediate values live in.
//!
//! Nearly every op allocates its result and frees it a few steps later.
//! The allocator maps a large buffer from the kernel and unmaps it when it
//! is freed, so each one's pages fault in again on first touch: on
//! ViT-B/16 that was about a seventh of a prediction. Instead each
//! function keeps a [`Recycler`]: when the interpreter releases a value it
//! alone holds, its buffer goes back to the recycler ([`recycle`]), and the
//! ops that make large results take their buffers from it ([`zeroed`],
//! [`with_capacity`]). Kept from one prediction to the next, the buffers
//! are mapped once, by the first.
//!
//! A function's recycler is installed in a thread-local for one run
//! ([`using`]). Elsewhere (a kernel's worker thread, a test, a second
//! prediction running at the same time) the functions here allocate as
//! usual, so nothing depends on a recycler being there.

use std::cell::RefCell;

use super::value::Value;

/// The fewest elements a buffer is recycled for: 128 KiB, the size from
/// which glibc maps allocations from the kernel by default. Smaller ones
/// come from the allocator's heap, without faults.
const SMALLEST: usize = 1 << 15;

/// The most buffers a recycler keeps; past it, the smallest is freed. A
/// program has a handful of large values alive at a time, so this keeps
/// every buffer the next prediction will want, while bounding what an
/// idle function holds to this many of its largest values.
const KEPT: usize = 16;

/// The buffers of released values, waiting for the next op's result.
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    free: Vec<Vec<f32>>,
}

impl Recycler {
    /// A buffer of at least `len` elements and at most twice that (so a
    /// large buffer is not spent on a small result), emptied; the smallest
    /// such.
    fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| (len..=len.saturating_mul(2)).contains(&b.capacity()))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        let mut buffer = self.free.swap_remove(best);
        buffer.clear();
        Some(buffer)
    }

    /// Keeps `buffer` for a later result, freeing the smallest buffer kept
    /// when there are too many.
    fn keep(&mut self, buffer: Vec<f32>) {
        self.free.push(buffer);
        if self.free.len() > KEPT {
            if let Some(smallest) = (0..self.free.len()).min_by_key(|&i| self.free[i].capacity()) {
                self.free.swap_remove(smallest);
            }
        }
    }
}

thread_local! {
    /// The recycler of the run on this thread, if any.
    static CURRENT: RefCell<Option<Recycler>> = const { RefCell::new(None) };
}

/// Runs `f` with `recycler` serving this thread's [`zeroed`],
/// [`with_capacity`] and [`recycle`], and puts it back (with the buffers
/// `f` released) when `f` returns.
pub(crate) fn using<R>(recycler: &mut Recycler, f: impl FnOnce() -> R) -> R {
    /// Puts the recycler back even when `f` unwinds.
    struct Restore<'a> {
        recycler: &'a mut Recycler,
        outer: Option<Recycler>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let outer = self.outer.take();
            if let Some(used) = CURRENT.with(|current| current.replace(outer)) {
                *self.recycler = used;
            }
        }
    }
    let outer = CURRENT.with(|current| current.replace(Some(std::mem::take(recycler))));
    let _restore = Restore { recycler, outer };
    f()
}

/// An empty buffer with room for `len` elements, recycled when it is large
/// and a recycler has one.
pub(crate) fn with_capacity(len: usize) -> Vec<f32> {
    if len >= SMALLEST {
        let recycled = CURRENT.with(|current| {
            current
                .try_borrow_mut()
                .ok()
                .and_then(|mut r| r.as_mut()?.take(len))
        });
        if let Some(buffer) = recycled {
            return buffer;
        }
    }
    Vec::with_capacity(len)
}

/// A tensor's element type, for the ops generic over it: only f32 tensors
/// are large enough in practice to recycle.
pub(crate) trait Recyclable: Copy {
    /// An empty buffer with room for `len` elements ([`with_capacity`]
    /// for f32).
    fn buffer(len: usize) -> Vec<Self>;
}

impl Recyclable for f32 {
    fn buffer(len: usize) -> Vec<f32> {
        with_capacity(len)
    }
}

impl Recyclable for i32 {
    fn buffer(len: usize) -> Vec<i32> {
        Vec::with_capacity(len)
    }
}

impl Recyclable for bool {
    fn buffer(len: usize) -> Vec<bool> {
        Vec::with_capacity(len)
    }
}

/// `len` zeros, in a recycled buffer when it is large and a recycler has
/// one.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    let mut buffer = with_capacity(len);
    buffer.resize(len, 0.0);
    buffer
}

/// Gives the buffer of `value` back to this thread's recycler, when the
/// value is a large float tensor nothing else holds; otherwise drops it.
pub(crate) fn recycle(value: Value) {
    let Value::Float(array) = value else {
        return;
    };
    if array.len() < SMALLEST {
        return;
    }
    let Ok(owned) = array.try_into_owned_nocopy() else {
        // Shared (a constant, an output, a value still read elsewhere).
        return;
    };
    let (buffer, _) = owned.into_raw_vec_and_offset();
    CURRENT.with(|current| {
        if let Ok(mut current) = current.try_borrow_mut() {
            if let Some(recycler) = current.as_mut() {
                recycler.keep(buffer);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn float(len: usize) -> Value {
        Value::Float(ArrayD::from_elem(IxDyn(&[len]), 1.5f32).into_shared())
    }

    #[test]
    fn a_released_buffer_serves_the_next_result_of_a_fitting_size() {
        let mut recycler = Recycler::default();
        let len = SMALLEST * 2;
        let (first, second, third) = using(&mut recycler, || {
            let value = float(len);
            let Value::Float(array) = &value else {
                unreachable!()
            };
            let address = array.as_ptr();
            recycle(value);
            // Too small a request for it: a fresh buffer.
            let small = zeroed(len / 4);
            // A fitting one: the same buffer, zeroed.
            let again = zeroed(len - 5);
            assert!(again.iter().all(|&v| v == 0.0));
            (address, small.as_ptr(), again.as_ptr())
        });
        assert_ne!(first, second);
        assert_eq!(first, third);
        // The recycler was put back, and holds nothing taken.
        assert!(recycler.free.is_empty());
    }

    #[test]
    fn shared_small_and_unrecycled_values_are_not_kept() {
        let mut recycler = Recycler::default();
        using(&mut recycler, || {
            let shared = float(SMALLEST);
            let Value::Float(array) = &shared else {
                unreachable!()
            };
            let _other_holder = array.clone();
            recycle(shared.clone());
            recycle(float(SMALLEST - 1));
            recycle(Value::Int(ndarray::ArcArray::zeros(IxDyn(&[SMALLEST]))));
        });
        assert!(recycler.free.is_empty());
        // Outside a run, recycling drops the buffer and zeroed allocates.
        recycle(float(SMALLEST));
        assert_eq!(zeroed(SMALLEST).len(), SMALLEST);
    }

    #[test]
    fn a_recycler_keeps_its_largest_buffers_up_to_its_bound() {
        let mut recycler = Recycler::default();
        using(&mut recycler, || {
            for i in 0..KEPT + 3 {
                recycle(float(SMALLEST + i));
            }
        });
        assert_eq!(recycler.free.len(), KEPT);
        let smallest = recycler.free.iter().map(Vec::capacity).min();
        assert_eq!(smallest, Some(SMALLEST + 3));
    }
}
