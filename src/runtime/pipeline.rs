//! Running a split function: the chunks `T_chunk1` … `T_chunkN` the merge
//! made of function `T` (issue 21), one after the other, as if they were
//! `T`.
//!
//! Chunk `k` takes the inputs of `T` its ops use, then "crossing values":
//! outputs of earlier chunks, under their own names. It returns the outputs
//! of `T` it computes, then the crossing values later chunks read (a value
//! that is both is one output). Each chunk declares the states its ops use,
//! with the descriptions `T` has, so one [`State`] serves every chunk,
//! updated in order.
//!
//! [`Pipeline::new`] plans the run once, from the chunks' descriptions:
//! which values each chunk takes and where from (an input that no earlier
//! chunk outputs comes from the caller), and for each value the last chunk
//! reading it. A value is moved into its last reader's inputs and cloned
//! only for the readers before it (and when it is also an output of `T`),
//! so a crossing value is copied no more than it must be.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

use super::error::{Error, Result};
use super::prediction::{Loading, Prediction};
use super::value::Features;
use super::{check, describe_states, Backend, Configuration, Function, ModelLocation, State};

/// The chunks of a split function, run in order as that function: built
/// from the loaded chunks (functions of one package, in order) and the
/// output names of the function they were split from. The generated API
/// wraps one per split function, under that function's name.
///
/// Like [`Function`], it is `Send` and not `Sync`: it may move to another
/// thread, and is used by one thread at a time. Its futures
/// ([`Pipeline::predict_async`]) own what they need, so they are `Send`
/// and outlive the borrow of the pipeline.
///
/// States: a stateful pipeline's [`State`] (from [`Pipeline::new_state`])
/// holds every state any chunk declares, and each chunk reads and updates
/// the ones it declares. On Core ML a state is made by one function's
/// model, so there the stateful chunks must all declare the same states
/// (a pipeline whose chunks declare different state sets is refused when
/// it is built); the reference backend has no such limit.
#[derive(Debug)]
pub struct Pipeline {
    plan: Arc<Plan>,
    /// Locked for each chunk's start, so a future may start the next chunk
    /// from whatever thread polls it.
    chunks: Arc<Mutex<Vec<Function>>>,
    package: PathBuf,
    backend: Backend,
    /// `Send` without `Sync` on every target, as [`Function`].
    _not_sync: PhantomData<Cell<()>>,
}

// As for `Function`: this fails to compile if a pipeline stops being `Send`
// or becomes `Sync`.
const _: () = {
    const fn send<T: Send>() {}
    send::<Pipeline>();
    trait AmbiguousIfSync<A> {
        fn item() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
    let _ = <Pipeline as AmbiguousIfSync<_>>::item;
};

/// What [`Pipeline::new`] works out once from the chunks' descriptions.
#[derive(Debug)]
struct Plan {
    /// The caller's side: named as the pipeline, its inputs are those the
    /// chunks take from the caller (each as the first chunk declaring it
    /// declares it), its outputs the split function's, its states every
    /// chunk's.
    caller: FunctionDescription,
    chunks: Vec<ChunkPlan>,
    /// The chunk whose states are all the pipeline's, if one is: the one
    /// that makes its state.
    state_maker: Option<usize>,
}

#[derive(Debug)]
struct ChunkPlan {
    name: String,
    /// Its inputs, in its declaration order.
    inputs: Vec<Take>,
    /// The outputs kept once it ran: the pipeline's outputs and the values
    /// later chunks read. The others are dropped.
    keep: BTreeSet<String>,
    /// Whether it declares states (and so is run with the state).
    stateful: bool,
}

/// One input of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Take {
    name: String,
    /// The chunk computing it, `None` for the caller's inputs.
    from: Option<usize>,
    /// No later chunk reads it and it is not an output of the pipeline (or,
    /// for a caller's input, no later chunk reads it): it is moved into
    /// this chunk's inputs rather than cloned.
    moved: bool,
}

impl Plan {
    fn new(
        name: &str,
        chunks: &[&FunctionDescription],
        outputs: &[&str],
        backend: Backend,
    ) -> Result<Plan> {
        let invalid = |detail: String| Error::InvalidModel {
            function: name.to_string(),
            detail,
        };
        if chunks.is_empty() {
            return Err(invalid("a pipeline needs at least one chunk".to_string()));
        }
        // Which chunk computes each value.
        let mut producer: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, chunk) in chunks.iter().enumerate() {
            for output in &chunk.output {
                if let Some(first) = producer.insert(&output.name, k) {
                    return Err(invalid(format!(
                        "chunks {:?} and {:?} both output {:?}",
                        chunks[first].name, chunk.name, output.name
                    )));
                }
            }
        }
        let mut caller_inputs: Vec<FeatureDescription> = Vec::new();
        // The last chunk reading each value, by (source, name).
        let mut last_reader: BTreeMap<(Option<usize>, &str), usize> = BTreeMap::new();
        for (k, chunk) in chunks.iter().enumerate() {
            for input in &chunk.input {
                let from = match producer.get(input.name.as_str()) {
                    Some(&j) if j < k => Some(j),
                    Some(&j) => {
                        return Err(invalid(format!(
                            "input {:?} of chunk {:?} is an output of chunk {:?}, which does \
                             not run before it",
                            input.name, chunk.name, chunks[j].name
                        )))
                    }
                    None => None,
                };
                if from.is_none() {
                    match caller_inputs.iter().find(|d| d.name == input.name) {
                        None => caller_inputs.push(input.clone()),
                        Some(first) if first == input => {}
                        Some(_) => {
                            return Err(invalid(format!(
                                "the chunks declare input {:?} differently",
                                input.name
                            )))
                        }
                    }
                }
                last_reader.insert((from, &input.name), k);
            }
        }
        for output in outputs {
            if !producer.contains_key(output) {
                return Err(invalid(format!(
                    "no chunk computes its output {output:?}; the chunks output {}",
                    quoted_list(producer.keys().copied())
                )));
            }
        }

        // States: one description per name, across the chunks.
        let mut states: Vec<FeatureDescription> = Vec::new();
        for chunk in chunks {
            for state in &chunk.state {
                match states.iter().find(|s| s.name == state.name) {
                    None => states.push(state.clone()),
                    Some(first) if first == state => {}
                    Some(_) => {
                        return Err(invalid(format!(
                            "the chunks declare state {:?} differently",
                            state.name
                        )))
                    }
                }
            }
        }
        let covers_all = |chunk: &FunctionDescription| chunk.state.len() == states.len();
        let state_maker = chunks.iter().position(|c| covers_all(c));
        if backend.resolve() == Backend::CoreMl {
            let stateful: Vec<_> = chunks.iter().filter(|c| !c.state.is_empty()).collect();
            if let Some(partial) = stateful.iter().find(|c| !covers_all(c)) {
                return Err(invalid(format!(
                    "Core ML shares a state only between functions declaring the same states: \
                     chunk {:?} declares {}, the chunks together {}; split the function so \
                     that every stateful chunk uses every state, or run it on the reference \
                     backend",
                    partial.name,
                    describe_states(&partial.state),
                    describe_states(&states)
                )));
            }
        }

        let is_output = |name: &str| outputs.contains(&name);
        let plans = chunks
            .iter()
            .enumerate()
            .map(|(k, chunk)| {
                let inputs = chunk
                    .input
                    .iter()
                    .map(|input| {
                        let from = producer
                            .get(input.name.as_str())
                            .copied()
                            .filter(|&j| j < k);
                        let last = last_reader[&(from, input.name.as_str())] == k;
                        Take {
                            name: input.name.clone(),
                            from,
                            moved: last && (from.is_none() || !is_output(&input.name)),
                        }
                    })
                    .collect();
                let keep = chunk
                    .output
                    .iter()
                    .filter(|o| {
                        is_output(&o.name)
                            || last_reader
                                .keys()
                                .any(|(from, name)| *from == Some(k) && *name == o.name.as_str())
                    })
                    .map(|o| o.name.clone())
                    .collect();
                ChunkPlan {
                    name: chunk.name.clone(),
                    inputs,
                    keep,
                    stateful: !chunk.state.is_empty(),
                }
            })
            .collect();
        let caller = FunctionDescription {
            name: name.to_string(),
            input: caller_inputs,
            output: outputs
                .iter()
                .map(|&o| {
                    let k = producer[o];
                    chunks[k]
                        .output
                        .iter()
                        .find(|d| d.name == o)
                        .expect("the producer outputs it")
                        .clone()
                })
                .collect(),
            state: states,
            ..Default::default()
        };
        Ok(Plan {
            caller,
            chunks: plans,
            state_maker,
        })
    }

    /// Error `error` of chunk `k`, naming the pipeline and the chunk.
    fn failed(&self, k: usize, error: Error) -> Error {
        Error::Pipeline {
            pipeline: self.caller.name.clone(),
            chunk: self.chunks[k].name.clone(),
            source: Box::new(error),
        }
    }
}

/// One run of the pipeline: the values computed so far that a later chunk
/// or the caller still needs.
struct Run<'a> {
    plan: Arc<Plan>,
    caller: Cow<'a, Features>,
    values: Features,
}

impl<'a> Run<'a> {
    fn new(plan: Arc<Plan>, caller: Cow<'a, Features>) -> Self {
        Run {
            plan,
            caller,
            values: Features::new(),
        }
    }

    /// Chunk `k`'s inputs: moved from the run where it is their last
    /// reader, cloned where another still needs them (a borrowed caller's
    /// inputs are always cloned).
    fn inputs(&mut self, k: usize) -> Features {
        let Run {
            plan,
            caller,
            values,
        } = self;
        let mut features = Features::new();
        for take in &plan.chunks[k].inputs {
            let value = match (take.from, &mut *caller) {
                (None, Cow::Owned(owned)) if take.moved => owned.remove(&take.name),
                (None, caller) => caller.get(&take.name).cloned(),
                (Some(_), _) if take.moved => values.remove(&take.name),
                (Some(_), _) => values.get(&take.name).cloned(),
            };
            // A missing one is an optional input not given.
            if let Some(value) = value {
                features.insert(take.name.clone(), value);
            }
        }
        features
    }

    /// Chunk `k` computed `outputs`: keeps those still needed.
    fn done(&mut self, k: usize, outputs: Features) {
        let keep = &self.plan.chunks[k].keep;
        self.values
            .extend(outputs.into_iter().filter(|(name, _)| keep.contains(name)));
    }

    /// The pipeline's outputs.
    fn finish(mut self) -> Features {
        self.plan
            .caller
            .output
            .iter()
            .filter_map(|o| self.values.remove_entry(&o.name))
            .collect()
    }
}

/// Locks `chunks`, whatever a panicking holder left (the functions are
/// valid at every point).
fn lock(chunks: &Mutex<Vec<Function>>) -> MutexGuard<'_, Vec<Function>> {
    chunks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts chunk `k` on `features`, with `state` when it is stateful; the
/// prediction holds no borrow of the state (see `Function::start_with_state`).
fn start(
    chunks: &Mutex<Vec<Function>>,
    plan: &Plan,
    k: usize,
    features: &Features,
    state: Option<&mut State>,
) -> Prediction<'static> {
    let chunks = lock(chunks);
    let chunk = &chunks[k];
    let started = match state {
        Some(state) if plan.chunks[k].stateful => chunk.start_with_state(features, state),
        _ => chunk.start(features),
    };
    Prediction::new(started, chunk.description.clone())
}

impl Pipeline {
    /// The pipeline `name` (the split function's name) of `chunks`, loaded
    /// functions of one package in the order they run, returning the
    /// outputs `outputs` (the split function's, in its order).
    ///
    /// Refused when the chunks come from different packages or backends;
    /// an input of a chunk is the output of a chunk that does not run
    /// before it; two chunks output one name; chunks declare one input or
    /// one state differently; no chunk computes one of `outputs`; or, on
    /// Core ML, the stateful chunks do not all declare the same states
    /// (see [`Pipeline`]).
    pub fn new(name: &str, chunks: Vec<Function>, outputs: &[&str]) -> Result<Pipeline> {
        let invalid = |detail: String| Error::InvalidModel {
            function: name.to_string(),
            detail,
        };
        let Some(first) = chunks.first() else {
            return Err(invalid("a pipeline needs at least one chunk".to_string()));
        };
        let (package, backend) = (first.package.clone(), first.backend);
        for chunk in &chunks {
            if chunk.package != package {
                return Err(invalid(format!(
                    "its chunks come from different packages: {:?} from {}, {:?} from {}",
                    first.function_name(),
                    package.display(),
                    chunk.function_name(),
                    chunk.package.display()
                )));
            }
            if chunk.backend != backend {
                return Err(invalid(format!(
                    "its chunks run on different backends: {:?} on the {}, {:?} on the {}",
                    first.function_name(),
                    backend.name(),
                    chunk.function_name(),
                    chunk.backend.name()
                )));
            }
        }
        let descriptions: Vec<&FunctionDescription> =
            chunks.iter().map(|c| &*c.description).collect();
        let plan = Plan::new(name, &descriptions, outputs, backend)?;
        Ok(Pipeline {
            plan: Arc::new(plan),
            chunks: Arc::new(Mutex::new(chunks)),
            package,
            backend,
            _not_sync: PhantomData,
        })
    }

    /// What the generated API's pipeline structs load through: the chunks
    /// `chunks` (each a function's name and its encoded description, as
    /// [`Function::load_generated`] takes them) from `location`, as
    /// pipeline `name` returning `outputs`.
    #[doc(hidden)]
    pub fn load_generated(
        location: &ModelLocation,
        name: &str,
        chunks: &[(&str, &[u8])],
        outputs: &[&str],
        configuration: &Configuration,
    ) -> Result<Pipeline> {
        let path = location.resolve(configuration)?;
        let chunks = chunks
            .iter()
            .map(|(chunk, description)| {
                Function::load_generated(&path, chunk, description, configuration)
            })
            .collect::<Result<Vec<_>>>()?;
        Pipeline::new(name, chunks, outputs)
    }

    /// [`Pipeline::load_generated`] off the calling thread: the future never
    /// blocks it (with Core ML the chunks load one after the other with the
    /// synchronous load, on a thread of their own, sharing one compiled
    /// copy; at once on the reference backend).
    #[doc(hidden)]
    pub fn load_generated_async(
        location: ModelLocation,
        name: &str,
        chunks: &'static [(&'static str, &'static [u8])],
        outputs: &'static [&'static str],
        configuration: &Configuration,
    ) -> Loading<Pipeline> {
        let name = name.to_string();
        super::load_on_thread(configuration, move |configuration| {
            Pipeline::load_generated(&location, &name, chunks, outputs, configuration)
        })
    }

    /// The pipeline's name: the split function's.
    pub fn name(&self) -> &str {
        &self.plan.caller.name
    }

    /// The chunks' names (functions of the package), in the order they run.
    pub fn chunk_names(&self) -> Vec<&str> {
        self.plan.chunks.iter().map(|c| c.name.as_str()).collect()
    }

    /// Runs `f` on the loaded chunks, in order: to read their descriptions,
    /// or run one alone.
    pub fn with_chunks<R>(&self, f: impl FnOnce(&[Function]) -> R) -> R {
        f(&lock(&self.chunks))
    }

    /// The inputs the caller gives: those the chunks take that no earlier
    /// chunk computes, in the order the chunks declare them.
    pub fn inputs(&self) -> &[FeatureDescription] {
        &self.plan.caller.input
    }

    /// The outputs it returns: the split function's, in its order, each as
    /// the chunk computing it declares it.
    pub fn outputs(&self) -> &[FeatureDescription] {
        &self.plan.caller.output
    }

    /// Every state the chunks declare (each once), empty for a stateless
    /// pipeline.
    pub fn states(&self) -> &[FeatureDescription] {
        &self.plan.caller.state
    }

    /// The package its chunks were loaded from, as a canonical path.
    pub fn package(&self) -> &Path {
        &self.package
    }

    /// The backend running its chunks.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn check_stateless(&self, inputs: &Features) -> Result<()> {
        check::inputs(&self.plan.caller, inputs)?;
        if !self.plan.caller.state.is_empty() {
            return Err(Error::WrongState {
                function: self.name().to_string(),
                detail: "the function is stateful: create a state with new_state() and call \
                         predict_with_state"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Checks the inputs and the state for every chunk before any runs, so
    /// that a bad one fails the call before any chunk updates the state.
    fn check_with_state(&self, inputs: &Features, state: &State) -> Result<()> {
        check::inputs(&self.plan.caller, inputs)?;
        if self.plan.caller.state.is_empty() {
            return Err(Error::WrongState {
                function: self.name().to_string(),
                detail: format!(
                    "it holds {}, the function is stateless: call predict",
                    describe_states(&state.descriptions)
                ),
            });
        }
        let chunks = lock(&self.chunks);
        for (k, chunk) in chunks.iter().enumerate() {
            if self.plan.chunks[k].stateful {
                chunk
                    .check_state(state)
                    .map_err(|e| self.plan.failed(k, e))?;
            }
        }
        Ok(())
    }

    /// Runs a stateless prediction: each chunk in turn, returning the split
    /// function's outputs.
    pub fn predict(&self, inputs: &Features) -> Result<Features> {
        self.check_stateless(inputs)?;
        self.run(Cow::Borrowed(inputs), None)
    }

    /// Runs a prediction that reads and updates `state`: each chunk in turn,
    /// the stateful ones on `state`.
    pub fn predict_with_state(&self, inputs: &Features, state: &mut State) -> Result<Features> {
        self.check_with_state(inputs, state)?;
        self.run(Cow::Borrowed(inputs), Some(state))
    }

    fn run(&self, inputs: Cow<'_, Features>, mut state: Option<&mut State>) -> Result<Features> {
        let chunks = lock(&self.chunks);
        let mut run = Run::new(self.plan.clone(), inputs);
        for (k, chunk) in chunks.iter().enumerate() {
            let features = run.inputs(k);
            let outputs = match state.as_deref_mut() {
                Some(state) if self.plan.chunks[k].stateful => {
                    chunk.predict_with_state(&features, state)
                }
                _ => chunk.predict(&features),
            }
            .map_err(|e| self.plan.failed(k, e))?;
            run.done(k, outputs);
        }
        Ok(run.finish())
    }

    /// Starts a stateless prediction and returns a future of the split
    /// function's outputs, as [`Function::predict_async`] does: the first
    /// chunk starts now, each next one when the one before finishes (on
    /// Core ML, with its completion-handler API). The future owns what it
    /// needs (the inputs later chunks read among them), so it is `Send` and
    /// outlives this borrow of the pipeline. An error is its output.
    pub fn predict_async(
        &self,
        inputs: &Features,
    ) -> impl Future<Output = Result<Features>> + Send + use<> {
        let checked = self.check_stateless(inputs);
        self.run_async(checked, inputs, None::<&'static mut State>)
    }

    /// Starts a prediction that reads and updates `state` and returns a
    /// future of its outputs, as [`Pipeline::predict_async`] does. The
    /// future borrows `state` until it finishes; the chunks update it in
    /// turn.
    pub fn predict_with_state_async<'s>(
        &self,
        inputs: &Features,
        state: &'s mut State,
    ) -> impl Future<Output = Result<Features>> + Send + use<'s> {
        let checked = self.check_with_state(inputs, state);
        self.run_async(checked, inputs, Some(state))
    }

    fn run_async<'s>(
        &self,
        checked: Result<()>,
        inputs: &Features,
        mut state: Option<&'s mut State>,
    ) -> impl Future<Output = Result<Features>> + Send + use<'s> {
        let chunks = self.chunks.clone();
        // The first chunk starts now, as a function's prediction does. The
        // run owns a copy of the (checked, so known) inputs, each moved into
        // its last reader.
        let started = checked.map(|()| {
            let mut run = Run::new(self.plan.clone(), Cow::Owned(inputs.clone()));
            let features = run.inputs(0);
            let first = start(&chunks, &run.plan, 0, &features, state.as_deref_mut());
            (run, first)
        });
        async move {
            let (mut run, first) = started?;
            let outputs = first.await.map_err(|e| run.plan.failed(0, e))?;
            run.done(0, outputs);
            for k in 1..run.plan.chunks.len() {
                let features = run.inputs(k);
                let prediction = start(&chunks, &run.plan, k, &features, state.as_deref_mut());
                drop(features);
                let outputs = prediction.await.map_err(|e| run.plan.failed(k, e))?;
                run.done(k, outputs);
            }
            Ok(run.finish())
        }
    }

    /// A fresh state (every buffer zero) holding every state the chunks
    /// declare, usable with the pipeline and with every function of the
    /// package whose states it holds. Made by the chunk declaring all of
    /// them; on the reference backend, when none does, from the chunks'
    /// descriptions.
    pub fn new_state(&self) -> Result<State> {
        if self.plan.caller.state.is_empty() {
            return Err(Error::WrongState {
                function: self.name().to_string(),
                detail: "the function is stateless: it has no state to make".to_string(),
            });
        }
        match self.plan.state_maker {
            Some(k) => lock(&self.chunks)[k]
                .new_state()
                .map_err(|e| self.plan.failed(k, e)),
            None => self.union_state(),
        }
    }

    /// A state of every chunk's states, which no single chunk declares.
    #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
    fn union_state(&self) -> Result<State> {
        let inner = super::reference::State::of_descriptions(self.name(), &self.plan.caller.state)?;
        Ok(State {
            package: self.package.clone(),
            descriptions: self.plan.caller.state.clone(),
            inner: super::StateImpl::Reference(inner),
        })
    }

    /// Core ML makes states only from a function declaring all of them,
    /// which [`Pipeline::new`] made sure of.
    #[cfg(all(target_vendor = "apple", not(feature = "reference-backend")))]
    fn union_state(&self) -> Result<State> {
        Err(Error::InvalidModel {
            function: self.name().to_string(),
            detail: "Core ML shares a state only between functions declaring the same states"
                .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::FeatureValue;
    use super::*;
    use coreml_multifunction_format::proto::specification::{
        array_feature_type, feature_type, state_feature_type, ArrayFeatureType, FeatureType,
        StateFeatureType,
    };

    fn array(shape: &[i64]) -> FeatureType {
        FeatureType {
            r#type: Some(feature_type::Type::MultiArrayType(ArrayFeatureType {
                shape: shape.to_vec(),
                data_type: array_feature_type::ArrayDataType::Float32 as i32,
                ..Default::default()
            })),
            is_optional: false,
        }
    }

    fn feature(name: &str) -> FeatureDescription {
        FeatureDescription {
            name: name.to_string(),
            r#type: Some(array(&[1, 2])),
            ..Default::default()
        }
    }

    fn state(name: &str, shape: &[i64]) -> FeatureDescription {
        let Some(feature_type::Type::MultiArrayType(a)) = array(shape).r#type else {
            unreachable!()
        };
        FeatureDescription {
            name: name.to_string(),
            r#type: Some(FeatureType {
                r#type: Some(feature_type::Type::StateType(StateFeatureType {
                    r#type: Some(state_feature_type::Type::ArrayType(a)),
                })),
                is_optional: false,
            }),
            ..Default::default()
        }
    }

    fn chunk(
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        states: &[FeatureDescription],
    ) -> FunctionDescription {
        FunctionDescription {
            name: name.to_string(),
            input: inputs.iter().map(|n| feature(n)).collect(),
            output: outputs.iter().map(|n| feature(n)).collect(),
            state: states.to_vec(),
            ..Default::default()
        }
    }

    fn take(name: &str, from: Option<usize>, moved: bool) -> Take {
        Take {
            name: name.to_string(),
            from,
            moved,
        }
    }

    /// x → chunk1 → (h, logits_a) → chunk2 (x, h) → (g, logits_b) → chunk3 (h, g).
    fn three_chunks() -> Vec<FunctionDescription> {
        vec![
            chunk("t_chunk1", &["x"], &["logits_a", "h"], &[]),
            chunk("t_chunk2", &["x", "h"], &["g", "logits_b"], &[]),
            chunk("t_chunk3", &["h", "g"], &["y"], &[]),
        ]
    }

    fn plan(chunks: &[FunctionDescription], outputs: &[&str], backend: Backend) -> Result<Plan> {
        let refs: Vec<&FunctionDescription> = chunks.iter().collect();
        Plan::new("t", &refs, outputs, backend)
    }

    #[test]
    fn values_move_into_their_last_reader_and_are_cloned_before() {
        let plan = plan(
            &three_chunks(),
            &["logits_a", "logits_b", "y"],
            Backend::Reference,
        )
        .unwrap();
        assert_eq!(plan.chunks[0].inputs, [take("x", None, false)]);
        // `x`'s last reader is chunk 2; `h` is read again by chunk 3.
        assert_eq!(
            plan.chunks[1].inputs,
            [take("x", None, true), take("h", Some(0), false)]
        );
        assert_eq!(
            plan.chunks[2].inputs,
            [take("h", Some(0), true), take("g", Some(1), true)]
        );
        let keep = |k: usize| plan.chunks[k].keep.iter().cloned().collect::<Vec<_>>();
        assert_eq!(keep(0), ["h", "logits_a"]);
        assert_eq!(keep(1), ["g", "logits_b"]);
        assert_eq!(keep(2), ["y"]);
        assert_eq!(plan.caller.input, [feature("x")]);
        let outputs: Vec<&str> = plan.caller.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["logits_a", "logits_b", "y"]);
        assert_eq!(plan.state_maker, Some(0));
    }

    #[test]
    fn a_crossing_value_that_is_an_output_is_never_moved_out() {
        // `h` is an output of the split function and read by chunk 3.
        let plan = plan(&three_chunks(), &["h", "y"], Backend::Reference).unwrap();
        assert_eq!(plan.chunks[2].inputs[0], take("h", Some(0), false));
        // `logits_a` and `logits_b` are neither read later nor outputs.
        assert!(!plan.chunks[0].keep.contains("logits_a"));
        assert!(!plan.chunks[1].keep.contains("logits_b"));

        // A run gives exactly the outputs, `h` among them.
        let plan = Arc::new(plan);
        let inputs: Features = [("x".to_string(), FeatureValue::Double(1.0))].into();
        let mut run = Run::new(plan.clone(), Cow::Owned(inputs));
        let value = FeatureValue::Double;
        assert_eq!(run.inputs(0).keys().collect::<Vec<_>>(), ["x"]);
        run.done(
            0,
            [
                ("h".to_string(), value(2.0)),
                ("logits_a".to_string(), value(3.0)),
            ]
            .into(),
        );
        let second = run.inputs(1);
        assert_eq!(second.keys().collect::<Vec<_>>(), ["h", "x"]);
        // `x` was moved: the run no longer holds it.
        assert!(run.caller.is_empty());
        run.done(1, [("g".to_string(), value(4.0))].into());
        let third = run.inputs(2);
        assert_eq!(third.keys().collect::<Vec<_>>(), ["g", "h"]);
        run.done(2, [("y".to_string(), value(5.0))].into());
        let outputs = run.finish();
        assert_eq!(
            outputs,
            [("h".to_string(), value(2.0)), ("y".to_string(), value(5.0))].into()
        );
    }

    #[test]
    fn inconsistent_chunks_are_refused_naming_the_problem() {
        let error = |chunks: &[FunctionDescription], outputs: &[&str]| {
            plan(chunks, outputs, Backend::Reference)
                .unwrap_err()
                .to_string()
        };
        let chunks = three_chunks();
        let message = error(&chunks, &["z"]);
        assert!(
            message.contains("function \"t\"")
                && message.contains("no chunk computes its output \"z\""),
            "{message}"
        );
        let reversed: Vec<_> = chunks.iter().rev().cloned().collect();
        let message = error(&reversed, &["y"]);
        assert!(message.contains("does not run before it"), "{message}");
        let twice = vec![
            chunk("a", &["x"], &["y"], &[]),
            chunk("b", &["x"], &["y"], &[]),
        ];
        assert!(error(&twice, &["y"]).contains("both output \"y\""));
        let mut differing = three_chunks();
        differing[1].input[0].r#type = Some(array(&[3]));
        assert!(error(&differing, &["y"]).contains("declare input \"x\" differently"));
        let states = vec![
            chunk("a", &["x"], &["h"], &[state("k", &[2])]),
            chunk("b", &["h"], &["y"], &[state("k", &[3])]),
        ];
        assert!(error(&states, &["y"]).contains("declare state \"k\" differently"));
        assert!(error(&[], &[]).contains("at least one chunk"));
    }

    #[test]
    fn core_ml_refuses_chunks_declaring_different_state_sets() {
        let (k, v) = (state("k", &[2]), state("v", &[2]));
        let partial = vec![
            chunk("a", &["x"], &["h"], std::slice::from_ref(&k)),
            chunk("b", &["h"], &["y"], &[k.clone(), v.clone()]),
            chunk("c", &["y"], &["z"], &[]),
        ];
        // The reference backend shares one state of both, made by `b`.
        let reference = plan(&partial, &["z"], Backend::Reference).unwrap();
        assert_eq!(reference.state_maker, Some(1));
        assert_eq!(reference.caller.state, [k.clone(), v.clone()]);
        assert!(!reference.chunks[2].stateful);
        let message = plan(&partial, &["z"], Backend::CoreMl)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(
                "Core ML shares a state only between functions declaring the same states"
            ) && message.contains("chunk \"a\" declares states \"k\""),
            "{message}"
        );
        // Stateless chunks beside stateful ones declaring every state are fine.
        let same = vec![
            chunk("a", &["x"], &["h"], &[v.clone(), k.clone()]),
            chunk("b", &["h"], &["y"], &[k.clone(), v.clone()]),
            chunk("c", &["y"], &["z"], &[]),
        ];
        assert_eq!(
            plan(&same, &["z"], Backend::CoreMl).unwrap().state_maker,
            Some(0)
        );
        // No chunk declares both: only the reference backend makes the state.
        let split = vec![
            chunk("a", &["x"], &["h"], std::slice::from_ref(&k)),
            chunk("b", &["h"], &["y"], std::slice::from_ref(&v)),
        ];
        assert_eq!(
            plan(&split, &["y"], Backend::Reference)
                .unwrap()
                .state_maker,
            None
        );
        assert!(plan(&split, &["y"], Backend::CoreMl).is_err());
    }
}
