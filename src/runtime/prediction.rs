//! Work that finishes later: the future [`Prediction`] that
//! `Function::predict_async` returns and the future [`Loading`] that
//! `Function::load_async` returns, the one-shot channel a backend's
//! completion handler (or loading thread) fills them through, and the
//! claim that keeps a state from being used while a prediction on it is
//! under way.
//!
//! No async runtime is involved: the channel is a `Mutex` holding the value
//! and the waker of the task waiting for it, so the future works under any
//! executor (or a plain `block_on`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use coreml_multifunction_format::proto::FunctionDescription;

use super::error::{Error, Result};
use super::value::Features;
use super::State;

// The channel and the state claim serve the Core ML backend (and the tests
// here); the reference backend finishes every prediction at once.

/// Locks `mutex`, whatever a panicking holder left: every value guarded
/// here is valid at every point (an `Option` or a flag).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// What the channel holds.
struct Slot<T> {
    value: Option<T>,
    /// The task to wake when the value arrives.
    waker: Option<Waker>,
    /// The sender is gone (after sending, or without).
    closed: bool,
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// The sending half of a one-shot channel: the completion handler's.
pub(crate) struct Sender<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

/// The receiving half: a future of the value, `None` when the sender was
/// dropped without sending.
pub(crate) struct Receiver<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// A one-shot channel.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        closed: false,
    }));
    (Sender { slot: slot.clone() }, Receiver { slot })
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
impl<T> Sender<T> {
    /// Sends `value` and wakes the receiver's task, if one waits.
    pub(crate) fn send(self, value: T) {
        lock(&self.slot).value = Some(value);
        // `drop` closes and wakes.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.closed = true;
            slot.waker.take()
        };
        // Woken outside the lock: the task may poll at once. The sender
        // drops on Core ML's queue (in the handler, or when Core ML
        // releases a handler it never called), where a panic of the
        // executor's waker must not unwind into libdispatch: caught, and
        // the task, not woken, is then the executor's own bug.
        if let Some(waker) = waker {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.slot);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        match &mut slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// Whether a state is in use by a prediction under way.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    flag: Arc<(Mutex<bool>, Condvar)>,
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// A claim on a [`Busy`] state, released on drop (by the completion
/// handler, on whatever thread runs it).
#[derive(Debug)]
pub(crate) struct Claim {
    flag: Arc<(Mutex<bool>, Condvar)>,
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
impl Busy {
    /// Waits until no prediction uses the state.
    pub(crate) fn wait_idle(&self) {
        let (busy, idle) = &*self.flag;
        let mut busy = lock(busy);
        while *busy {
            busy = idle.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until no prediction uses the state, then claims it.
    pub(crate) fn claim(&self) -> Claim {
        let (busy, idle) = &*self.flag;
        let mut busy = lock(busy);
        while *busy {
            busy = idle.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy = true;
        Claim {
            flag: self.flag.clone(),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (busy, idle) = &*self.flag;
        *lock(busy) = false;
        idle.notify_all();
    }
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// A state's claim held by both the code starting a prediction and the
/// prediction's completion handler, released by whichever lets go first:
/// the handler when the prediction finishes, or the starter when the call
/// starting it fails (an exception after Core ML retained the handler,
/// which then never runs), so the state is never left claimed.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedClaim {
    claim: Arc<Mutex<Option<Claim>>>,
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
impl SharedClaim {
    /// Shares `claim` (none for a stateless prediction).
    pub(crate) fn new(claim: Option<Claim>) -> Self {
        SharedClaim {
            claim: Arc::new(Mutex::new(claim)),
        }
    }

    /// Releases the claim if it is still held; later calls do nothing.
    pub(crate) fn release(&self) {
        // Taken out of the lock before it drops: its drop notifies.
        let claim = lock(&self.claim).take();
        drop(claim);
    }
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
/// The tail of a completion handler, which runs on Core ML's queue: frees
/// the state (`claim`), then sends `outcome` to the waiting future, which
/// drops the sender and wakes the future's waker. A panic there (a waker
/// is the executor's code) is caught, since it must not unwind into
/// libdispatch, which would abort (the sender's drop catches a waker's
/// panic itself; this catches whatever else might panic here). Returns
/// whether a panic was caught.
pub(crate) fn complete<T>(
    sender: &Mutex<Option<Sender<T>>>,
    claim: &SharedClaim,
    outcome: T,
) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        claim.release();
        let sender = lock(sender).take();
        if let Some(sender) = sender {
            sender.send(outcome);
        }
    }))
    .is_err()
}

/// A load under way, from `Function::load_async` or the generated API's
/// `load_async` / `load_from_async`: a future of the loaded function (or of
/// what the generated struct wraps it in).
///
/// It is `Send` and `'static`, so it may be awaited on any thread or
/// executor; it needs no particular async runtime. On Core ML a
/// short-lived thread finds or compiles the compiled model (a compile with
/// Core ML's completion-handler API where the system has it), then starts
/// Core ML's completion-handler load, whose handler fills the one-shot
/// channel above that the future waits on; on the reference backend the
/// load ran when the future was made, and it is ready at once.
#[must_use = "a load's result is only seen by awaiting it"]
pub struct Loading<T> {
    future: Pin<Box<dyn Future<Output = Result<T>> + Send>>,
}

impl<T> std::fmt::Debug for Loading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loading").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Loading<T> {
    /// A load that has finished.
    pub(crate) fn ready(result: Result<T>) -> Self {
        Loading::new(std::future::ready(result))
    }

    pub(crate) fn new(future: impl Future<Output = Result<T>> + Send + 'static) -> Self {
        Loading {
            future: Box::pin(future),
        }
    }

    #[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
    /// A load whose result arrives on `receiver` (from a loading thread or
    /// Core ML's completion handler); the sender dropped without sending
    /// means that thread panicked or Core ML never called the handler.
    pub(crate) fn received(receiver: Receiver<Result<T>>) -> Self {
        Loading::new(async move {
            receiver.await.unwrap_or_else(|| {
                Err(Error::CoreMl {
                    domain: "coreml-multifunction".to_string(),
                    code: 0,
                    message: "the model's load ended without a result: the thread loading \
                              it panicked, or Core ML released the load's completion handler \
                              without calling it"
                        .to_string(),
                    underlying: None,
                })
            })
        })
    }

    /// The same load, its result passed through `wrap` (what the generated
    /// API wraps the loaded function in).
    pub fn map<U: Send + 'static>(
        self,
        wrap: impl FnOnce(T) -> Result<U> + Send + 'static,
    ) -> Loading<U> {
        Loading::new(async move { wrap(self.await?) })
    }
}

impl<T> Future for Loading<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.future.as_mut().poll(cx)
    }
}

/// Where a prediction stands when it is started.
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub(crate) enum Started {
    /// Finished already (the reference backend; Core ML's synchronous
    /// fallback; an input refused before starting).
    Done(Result<Features>),
    /// Running: its outputs arrive on the channel.
    Running(Receiver<Result<Features>>),
}

/// A prediction under way, started by `Function::predict_async` (or
/// `predict_with_state_async`): a future of its outputs.
///
/// It owns what it needs (the outputs' channel and the function's
/// description), not a borrow of the function, so it is `Send` and may be
/// awaited on any thread or executor while the function is used or moved
/// elsewhere. A stateful prediction borrows its state (`'s`) for as long as
/// the future lives; dropping the future early does not stop Core ML, and
/// the state then waits for that prediction before its next use.
#[must_use = "the prediction runs whether or not it is awaited; await it for the outputs"]
pub struct Prediction<'s> {
    started: Option<Started>,
    description: Arc<FunctionDescription>,
    _state: PhantomData<&'s mut State>,
}

impl std::fmt::Debug for Prediction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.started {
            Some(Started::Done(_)) => "finished",
            Some(Started::Running(_)) => "running",
            None => "taken",
        };
        f.debug_struct("Prediction")
            .field("function", &self.description.name)
            .field("stage", &stage)
            .finish()
    }
}

impl Prediction<'_> {
    pub(crate) fn new(started: Started, description: Arc<FunctionDescription>) -> Self {
        Prediction {
            started: Some(started),
            description,
            _state: PhantomData,
        }
    }
}

impl Future for Prediction<'_> {
    type Output = Result<Features>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Features>> {
        let outputs = match self.started.take() {
            Some(Started::Done(outputs)) => outputs,
            Some(Started::Running(mut receiver)) => match Pin::new(&mut receiver).poll(cx) {
                Poll::Ready(Some(outputs)) => outputs,
                Poll::Ready(None) => Err(Error::CoreMl {
                    domain: "coreml-multifunction".to_string(),
                    code: 0,
                    message: format!(
                        "function {:?}: Core ML released the prediction's completion handler \
                         without calling it",
                        self.description.name
                    ),
                    underlying: None,
                }),
                Poll::Pending => {
                    self.started = Some(Started::Running(receiver));
                    return Poll::Pending;
                }
            },
            None => Err(Error::InvalidModel {
                function: self.description.name.clone(),
                detail: "this prediction's outputs were already taken (polled after it finished)"
                    .to_string(),
            }),
        };
        Poll::Ready(outputs.and_then(|outputs| super::check_outputs(&self.description, outputs)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;
    use std::thread;

    /// Wakes a parked thread.
    struct Unpark(thread::Thread, AtomicBool);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.1.store(true, Ordering::SeqCst);
            self.0.unpark();
        }
    }

    /// Runs `future` to completion on this thread: a minimal executor, as an
    /// app's would be, for the tests.
    pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let unpark = Arc::new(Unpark(thread::current(), AtomicBool::new(false)));
        let waker = Waker::from(unpark.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            while !unpark.1.swap(false, Ordering::SeqCst) {
                thread::park();
            }
        }
    }

    #[test]
    fn a_value_sent_from_another_thread_wakes_the_waiting_task() {
        let (sender, receiver) = channel::<u32>();
        let (ready, go) = std::sync::mpsc::channel::<()>();
        let handler = thread::spawn(move || {
            // Sends only once the receiver has been polled and is waiting.
            go.recv().unwrap();
            sender.send(42);
        });
        let mut receiver = std::pin::pin!(receiver);
        let waker = Waker::noop();
        assert_eq!(
            receiver.as_mut().poll(&mut Context::from_waker(waker)),
            Poll::Pending
        );
        ready.send(()).unwrap();
        assert_eq!(block_on(receiver), Some(42));
        handler.join().unwrap();
    }

    #[test]
    fn a_sender_dropped_without_sending_ends_the_wait() {
        let (sender, receiver) = channel::<u32>();
        thread::spawn(move || drop(sender)).join().unwrap();
        assert_eq!(block_on(receiver), None);
    }

    /// A waker whose `wake` panics, as a buggy executor's might.
    struct Panicking;

    impl Wake for Panicking {
        fn wake(self: Arc<Self>) {
            panic!("the executor's waker panicked");
        }
    }

    #[test]
    fn a_panicking_waker_does_not_unwind_out_of_the_handler() {
        let (sender, receiver) = channel::<u32>();
        let mut receiver = std::pin::pin!(receiver);
        let waker = Waker::from(Arc::new(Panicking));
        assert_eq!(
            receiver.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        let busy = Busy::default();
        let claim = SharedClaim::new(Some(busy.claim()));
        let sender = Mutex::new(Some(sender));
        // On another thread, as Core ML's queue would run it: the panic is
        // caught inside, so the thread ends normally.
        let caught = thread::scope(|scope| {
            scope
                .spawn(|| complete(&sender, &claim, 7))
                .join()
                .expect("no panic escapes the handler's tail")
        });
        assert!(!caught, "the waker's panic stayed inside the send");
        // The state was freed before the send.
        busy.wait_idle();
        // The value was stored before the waker ran.
        assert_eq!(block_on(receiver), Some(7));
        // A second completion (Core ML calls the handler once) does nothing.
        assert!(!complete(&sender, &claim, 8));

        // A handler Core ML releases without calling drops its sender
        // there too: the waker's panic does not escape that drop either.
        let (sender, receiver) = channel::<u32>();
        let mut receiver = std::pin::pin!(receiver);
        assert_eq!(
            receiver.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        thread::spawn(move || drop(sender))
            .join()
            .expect("no panic escapes the sender's drop");
        assert_eq!(block_on(receiver), None);
    }

    #[test]
    fn a_prediction_that_fails_to_start_frees_its_state() {
        let busy = Busy::default();
        let claim = SharedClaim::new(Some(busy.claim()));
        // The handler's copy, retained by Core ML and never run.
        let in_handler = claim.clone();
        // The starter saw the call fail.
        claim.release();
        // Would wait forever if the claim lived only in the handler.
        busy.wait_idle();
        let again = busy.claim();
        // The handler's copy releasing later does not free the new claim.
        in_handler.release();
        drop(in_handler);
        let (busy_now, _) = &*busy.flag;
        assert!(*lock(busy_now), "the new claim is still held");
        drop(again);
        busy.wait_idle();
    }

    #[test]
    fn a_claimed_state_waits_for_its_release() {
        let busy = Busy::default();
        busy.wait_idle();
        let claim = busy.claim();
        let (released, done) = std::sync::mpsc::channel();
        let handler = thread::spawn(move || {
            drop(claim);
            released.send(()).unwrap();
        });
        // Returns only once the other thread released it (it cannot
        // return before: the flag is set until then).
        busy.wait_idle();
        done.recv().unwrap();
        let again = busy.claim();
        drop(again);
        busy.wait_idle();
        handler.join().unwrap();
    }
}
