//! Chunked functions: one function of the merged model split into
//! consecutive chunks, each a function of its own, for models too big for
//! the Neural Engine in one piece (coremltools' `bisect_model`, N-way,
//! stateful and multifunction).
//!
//! A split is planned over the function's top-level ops, leaving out the
//! constants (`const` and `constexpr_*`): those are emitted again in every
//! chunk that uses them, and their weights stay the source's blob
//! references, so the merge stores them once like any shared weight. A cut
//! between two ops makes every value computed before it and used after it
//! an output of the earlier chunk and an input of the later one, under its
//! own name and declared type. Cuts are chosen in two steps:
//!
//! 1. **Which weights go together.** A chunk's weight bytes depend only on
//!    which weights its ops use, so candidate cuts are the boundaries
//!    between weights in order of first use. A dynamic program picks the
//!    boundaries: every chunk within the limit (the budget, or the
//!    balanced share plus the largest op's weights), then the fewest and
//!    smallest crossing values, then the smallest largest chunk.
//! 2. **Where between two weights.** Between the last op using weight `w -
//!    1` first and the op using weight `w` first, any position splits the
//!    weights the same way; the one with the fewest and smallest crossing
//!    values is taken (between transformer layers, one residual-stream
//!    tensor).
//!
//! Functions with the same weights in the same order (an LLM's prefill and
//! decode) are planned together over those boundaries, so chunk `k` of each
//! uses the same weights as the other's chunk `k`.
//!
//! Planning counts a weight by its reference in the source: one the
//! source stores twice counts twice, though the merge stores it once. So a
//! chunk holds at most the bytes planned, and a budget met here is met in
//! the merged file (whose bytes the merge report gives).
//!
//! Nothing here reads a file: the merge passes each weight reference's
//! stored size in.

use std::collections::{BTreeMap, BTreeSet};

use coreml_multifunction_format::mil::infer::shape_text;
use coreml_multifunction_format::mil::materialize::declared_dims;
use coreml_multifunction_format::package::values;
use coreml_multifunction_format::proto::mil_spec::{self, argument::binding, value, value_type};
use coreml_multifunction_format::proto::specification::{
    array_feature_type::{self, ArrayDataType, ShapeFlexibility},
    feature_type, ArrayFeatureType, FeatureType, SizeRange,
};
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

use super::{Chunk, Chunks, CrossingValue};

/// The stored size of a weight reference (a blob file value), given by the
/// merge, which knows the blob files.
pub(super) type WeightSize<'a> = dyn Fn(&mil_spec::Value) -> Option<u64> + 'a;

/// A function to split, as the merge has it (fixed shapes already applied).
pub(super) struct Request<'a> {
    /// The target name.
    pub target: &'a str,
    pub function: &'a mil_spec::Function,
    pub description: &'a FunctionDescription,
    pub chunks: Chunks,
    /// The stored size of each of its weight references.
    pub weight_size: Box<WeightSize<'a>>,
}

/// One chunk, built: its body, its description and its report.
#[derive(Debug, Clone)]
pub(super) struct Built {
    pub function: mil_spec::Function,
    pub description: FunctionDescription,
    pub report: Chunk,
}

/// Why a split failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SplitError {
    /// One op's own weights exceed the budget.
    OpOverBudget {
        op: String,
        op_type: String,
        bytes: u64,
        budget: u64,
    },
    /// Anything else, in words that say what to do.
    Cannot(String),
}

/// The name of chunk `index` (from 1) of `target`.
pub(crate) fn chunk_name(target: &str, index: usize) -> String {
    format!("{target}_chunk{index}")
}

/// Splits every request, planning together those whose weights are the
/// same in the same order and whose chunking is the same. Returns each
/// request's chunks, in request order.
pub(super) fn split_all(requests: &[Request<'_>]) -> Vec<Result<Vec<Built>, SplitError>> {
    let analyses: Vec<Result<Analysis, SplitError>> = requests
        .iter()
        .map(|r| Analysis::of(r.function, &*r.weight_size))
        .collect();
    let mut results: Vec<Option<Result<Vec<Built>, SplitError>>> = vec![None; requests.len()];
    let mut done = vec![false; requests.len()];
    for first in 0..requests.len() {
        if done[first] {
            continue;
        }
        let lead = match &analyses[first] {
            Ok(lead) => lead,
            Err(error) => {
                results[first] = Some(Err(error.clone()));
                done[first] = true;
                continue;
            }
        };
        // The group: this request and every later one with the same weights
        // in the same order and the same chunking.
        let mut group = vec![first];
        for other in first + 1..requests.len() {
            if done[other] || requests[other].chunks != requests[first].chunks {
                continue;
            }
            if let Ok(analysis) = &analyses[other] {
                if analysis.signature() == lead.signature() {
                    group.push(other);
                }
            }
        }
        let members: Vec<&Analysis> = group
            .iter()
            .map(|&i| analyses[i].as_ref().expect("grouped analyses are Ok"))
            .collect();
        let planned = plan(&members, requests[first].chunks);
        for (slot, &index) in group.iter().enumerate() {
            done[index] = true;
            results[index] = Some(planned.clone().and_then(|cuts| {
                build(
                    &requests[index],
                    analyses[index].as_ref().expect("ok"),
                    &cuts[slot],
                )
            }));
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every request planned"))
        .collect()
}

/// The crossing values at one position between two top-level ops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct CrossingCost {
    count: usize,
    bytes: u64,
}

/// What a split needs to know of a function.
#[derive(Debug, Clone)]
struct Analysis {
    /// Indices into the body's ops of the ops that compute (everything but
    /// constants), in order: "units".
    units: Vec<usize>,
    /// Each unit's first output name and op type, for messages.
    unit_ops: Vec<(String, String)>,
    /// Each unit's weights (indices into `weights`), sorted.
    unit_weights: Vec<Vec<usize>>,
    /// The distinct weight references, in order of first use by a unit:
    /// (a description that is the same for the same weight in another
    /// function, stored bytes).
    weights: Vec<(String, u64)>,
    /// For each weight, the units using it, in order.
    users: Vec<Vec<usize>>,
    /// The weights more than one unit uses.
    shared_weights: Vec<usize>,
    /// For each position, the bytes of the weights that only one unit
    /// uses, used by the units before it.
    unshared_before: Vec<u64>,
    /// For each position `p` (a cut before unit `p`, 0 ..= units), the
    /// number of weights first used by units before it.
    first_used_before: Vec<usize>,
    /// For each position, its crossing values' cost, or `None` where a
    /// value Core ML cannot pass between functions would cross.
    crossing: Vec<Option<CrossingCost>>,
}

impl Analysis {
    fn of(
        function: &mil_spec::Function,
        weight_size: &WeightSize<'_>,
    ) -> Result<Analysis, SplitError> {
        if function.block_specializations.len() != 1 {
            return Err(SplitError::Cannot(format!(
                "it has {} bodies (one per opset), and only a function with one body can be \
                 split",
                function.block_specializations.len()
            )));
        }
        let block = body(function);
        let ops = &block.operations;
        let producer = producers(block);
        let constant: Vec<bool> = ops.iter().map(is_constant).collect();
        let units: Vec<usize> = (0..ops.len()).filter(|&i| !constant[i]).collect();
        let unit_ops = units.iter().map(|&i| describe_op(&ops[i])).collect();

        // Weights: the blob references of the constants each unit reaches.
        let mut weight_index: BTreeMap<(String, u64), usize> = BTreeMap::new();
        let mut weights: Vec<(String, u64)> = Vec::new();
        let mut users: Vec<Vec<usize>> = Vec::new();
        let mut unit_weights: Vec<Vec<usize>> = Vec::with_capacity(units.len());
        let mut first_used_before = Vec::with_capacity(units.len() + 1);
        for (u, &i) in units.iter().enumerate() {
            first_used_before.push(weights.len());
            let mut mine = BTreeSet::new();
            for c in constant_closure(ops, &producer, &constant, &references(&ops[i])) {
                for (key, signature, bytes) in blob_references(&ops[c], weight_size) {
                    let next = weights.len();
                    let w = *weight_index.entry(key).or_insert(next);
                    if w == next {
                        weights.push((signature, bytes));
                        users.push(Vec::new());
                    }
                    if mine.insert(w) {
                        users[w].push(u);
                    }
                }
            }
            unit_weights.push(mine.into_iter().collect());
        }
        first_used_before.push(weights.len());

        // Crossing values: every unit output read by a later unit.
        let mut last_reader: BTreeMap<&str, usize> = BTreeMap::new();
        for (u, &i) in units.iter().enumerate() {
            for name in references(&ops[i]) {
                if let Some(&p) = producer.get(name.as_str()) {
                    if !constant[p] {
                        last_reader.insert(producer_output(ops, p, &name), u);
                    }
                }
            }
        }
        let states = StateValues::of(function);
        let unit_of: BTreeMap<usize, usize> =
            units.iter().enumerate().map(|(u, &i)| (i, u)).collect();
        let mut count_delta = vec![0i64; units.len() + 2];
        let mut bytes_delta = vec![0i128; units.len() + 2];
        let mut forbidden_delta = vec![0i64; units.len() + 2];
        for (u, &i) in units.iter().enumerate() {
            for output in &ops[i].outputs {
                let Some(&last) = last_reader.get(output.name.as_str()) else {
                    continue;
                };
                // A state's value is read again after a cut, not passed,
                // until the state is next written.
                let from = match states.valid_until(&output.name) {
                    Some(write) => unit_of.get(&write).map_or(last, |&w| w.min(last)),
                    None => u,
                };
                if last <= from {
                    continue;
                }
                // Crosses every position from+1 ..= last.
                let (bytes, passable) = crossing_size(output);
                count_delta[from + 1] += 1;
                count_delta[last + 1] -= 1;
                bytes_delta[from + 1] += bytes as i128;
                bytes_delta[last + 1] -= bytes as i128;
                if !passable {
                    forbidden_delta[from + 1] += 1;
                    forbidden_delta[last + 1] -= 1;
                }
            }
        }
        let mut crossing = Vec::with_capacity(units.len() + 1);
        let (mut count, mut bytes, mut forbidden) = (0i64, 0i128, 0i64);
        for p in 0..=units.len() {
            count += count_delta[p];
            bytes += bytes_delta[p];
            forbidden += forbidden_delta[p];
            crossing.push((forbidden == 0).then_some(CrossingCost {
                count: count as usize,
                bytes: bytes as u64,
            }));
        }
        let shared_weights: Vec<usize> =
            (0..weights.len()).filter(|&w| users[w].len() > 1).collect();
        let mut unshared_before = vec![0u64; units.len() + 1];
        for u in 0..units.len() {
            let own: u64 = unit_weights[u]
                .iter()
                .filter(|&&w| users[w].len() == 1)
                .map(|&w| weights[w].1)
                .sum();
            unshared_before[u + 1] = unshared_before[u] + own;
        }
        Ok(Analysis {
            units,
            unit_ops,
            shared_weights,
            unshared_before,
            unit_weights,
            weights,
            users,
            first_used_before,
            crossing,
        })
    }

    /// What must be equal for two functions to be cut at the same weights.
    fn signature(&self) -> &[(String, u64)] {
        &self.weights
    }

    /// Bytes of the distinct weights units `from..to` use: a weight one
    /// unit uses is counted by prefix sums, a weight several use by
    /// looking its users up.
    fn bytes(&self, from: usize, to: usize) -> u64 {
        let shared: u64 = self
            .shared_weights
            .iter()
            .filter(|&&w| {
                let users = &self.users[w];
                let first = users.partition_point(|&u| u < from);
                first < users.len() && users[first] < to
            })
            .map(|&w| self.weights[w].1)
            .sum();
        self.unshared_before[to] - self.unshared_before[from] + shared
    }

    fn total_bytes(&self) -> u64 {
        self.weights.iter().map(|(_, b)| b).sum()
    }

    /// Bytes of one unit's own weights.
    fn unit_bytes(&self, unit: usize) -> u64 {
        self.unit_weights[unit]
            .iter()
            .map(|&w| self.weights[w].1)
            .sum()
    }

    /// Whether weights `w - 1` and `w` are first used by the same op, so
    /// that no cut falls between them.
    fn is_first_use_together(&self, w: usize) -> bool {
        self.users[w - 1].first() == self.users[w].first()
    }

    /// The best position to cut with exactly `w` weights before it: the
    /// one with the cheapest crossing values, the earliest on a tie.
    fn best_position(&self, w: usize) -> Option<(usize, CrossingCost)> {
        let start = self.first_used_before.partition_point(|&n| n < w);
        let end = self.first_used_before.partition_point(|&n| n <= w);
        (start..end)
            .filter_map(|p| self.crossing[p].map(|cost| (p, cost)))
            .min_by_key(|&(p, cost)| (cost, p))
    }
}

/// Plans a group's cuts: for each member, the positions (in units) of its
/// cuts, starting with 0 and ending with its unit count.
fn plan(group: &[&Analysis], chunks: Chunks) -> Result<Vec<Vec<usize>>, SplitError> {
    let lead = group[0];
    let weights = lead.weights.len();
    let largest_op = group
        .iter()
        .flat_map(|a| (0..a.units.len()).map(move |u| (a, u)))
        .max_by_key(|(a, u)| a.unit_bytes(*u));
    let largest_op_bytes = largest_op.map_or(0, |(a, u)| a.unit_bytes(u));
    match chunks {
        Chunks::Count(0) => {
            return Err(SplitError::Cannot(
                "it is asked for 0 chunks; ask for 1 or more".to_string(),
            ))
        }
        Chunks::Count(1) => return Ok(group.iter().map(|a| vec![0, a.units.len()]).collect()),
        Chunks::MaxBytes(budget) if largest_op_bytes > budget => {
            let (analysis, unit) = largest_op.expect("an op holds the weights");
            let (op, op_type) = analysis.unit_ops[unit].clone();
            return Err(SplitError::OpOverBudget {
                op,
                op_type,
                bytes: largest_op_bytes,
                budget,
            });
        }
        _ => {}
    }

    // Candidate boundaries: 0 (the start), each weight boundary every
    // member can cut at (some position between the weights lets only
    // values Core ML can pass cross), and `weights` (the end).
    let mut candidates: Vec<(Vec<usize>, CrossingCost)> =
        vec![(vec![0; group.len()], CrossingCost::default())];
    let mut blocked = 0;
    for w in 1..weights {
        if group.iter().any(|a| a.is_first_use_together(w)) {
            continue;
        }
        let positions: Option<Vec<(usize, CrossingCost)>> =
            group.iter().map(|a| a.best_position(w)).collect();
        match positions {
            Some(positions) => {
                let cost = positions
                    .iter()
                    .fold(CrossingCost::default(), |sum, (_, c)| CrossingCost {
                        count: sum.count + c.count,
                        bytes: sum.bytes + c.bytes,
                    });
                candidates.push((positions.into_iter().map(|(p, _)| p).collect(), cost));
            }
            None => blocked += 1,
        }
    }
    candidates.push((
        group.iter().map(|a| a.units.len()).collect(),
        CrossingCost::default(),
    ));
    let blocked_note = if blocked == 0 {
        String::new()
    } else {
        format!(
            " ({blocked} other place{} between weights would pass a value Core ML cannot pass \
             between functions: only fp16, fp32 and int32 tensors of rank 1 or more cross)",
            if blocked == 1 { "" } else { "s" }
        )
    };
    let most = candidates.len() - 1;
    if let Chunks::Count(n) = chunks {
        if n > most {
            return Err(SplitError::Cannot(format!(
                "it is asked for {n} chunks, but it can be cut in {} place{} that leave weights \
                 on both sides{blocked_note}; ask for at most {most}",
                most - 1,
                if most == 2 { "" } else { "s" }
            )));
        }
    }
    let chunk_bytes = |a: usize, b: usize| -> u64 {
        group
            .iter()
            .enumerate()
            .map(|(m, analysis)| analysis.bytes(candidates[a].0[m], candidates[b].0[m]))
            .max()
            .unwrap_or(0)
    };

    let found = match chunks {
        // Balanced: the tightest limit over the balanced share that some
        // cuts meet, at most the share plus the largest op's weights.
        Chunks::Count(n) => {
            let total = group.iter().map(|a| a.total_bytes()).max().unwrap_or(0);
            let share = total.div_ceil(n as u64);
            [8, 4, 2, 1].iter().find_map(|&fraction| {
                let limit = share + largest_op_bytes / fraction;
                cheapest(&candidates, &chunk_bytes, limit, Some(n))
            })
        }
        Chunks::MaxBytes(budget) => cheapest(&candidates, &chunk_bytes, budget, None),
    };
    let Some(path) = found else {
        return Err(SplitError::Cannot(match chunks {
            Chunks::Count(n) => format!(
                "no {n} chunks keep every chunk within its balanced share plus the largest \
                 op's weights{blocked_note}; ask for fewer chunks"
            ),
            Chunks::MaxBytes(_) => format!(
                "no cuts keep every chunk within the budget{blocked_note}; raise the budget"
            ),
        }));
    };
    Ok((0..group.len())
        .map(|m| path.iter().map(|&c| candidates[c].0[m]).collect())
        .collect())
}

/// The cheapest path from the first candidate to the last (candidate
/// indices) whose every chunk is within `limit`: in exactly `count` chunks,
/// or in the fewest. Paths compare by chunk count (when free), then
/// crossing values' count, their bytes, and the largest chunk.
fn cheapest(
    candidates: &[(Vec<usize>, CrossingCost)],
    chunk_bytes: &dyn Fn(usize, usize) -> u64,
    limit: u64,
    count: Option<usize>,
) -> Option<Vec<usize>> {
    type Key = (usize, usize, u64, u64);
    let last = candidates.len() - 1;
    // With a count, layer k holds the paths of k chunks; without, one
    // layer holds them all, and the count is the key's first part.
    let layers = count.map_or(1, |n| n + 1);
    let layer_after = |layer: usize| if count.is_some() { layer + 1 } else { layer };
    // best[layer][j]: the cheapest path reaching candidate j, and the
    // candidate before j on it.
    let mut best: Vec<Vec<Option<(Key, usize)>>> = vec![vec![None; candidates.len()]; layers];
    best[0][0] = Some(((0, 0, 0, 0), 0));
    for layer in 0..layers {
        if layer_after(layer) >= layers {
            break;
        }
        // Candidates in order: every path into j is final before j extends.
        for j in 0..last {
            let Some((key, _)) = best[layer][j] else {
                continue;
            };
            for next in j + 1..=last {
                let bytes = chunk_bytes(j, next);
                // Chunks only grow with `next`: past the limit, stop.
                if bytes > limit {
                    break;
                }
                let cost = candidates[next].1;
                let extended = (
                    key.0 + 1,
                    key.1 + cost.count,
                    key.2 + cost.bytes,
                    key.3.max(bytes),
                );
                let slot = &mut best[layer_after(layer)][next];
                if slot.is_none_or(|(old, _)| extended < old) {
                    *slot = Some((extended, j));
                }
            }
        }
    }
    let mut layer = layers - 1;
    best[layer][last]?;
    let mut path = vec![last];
    let mut at = last;
    while at != 0 {
        let (_, previous) = best[layer][at].expect("on the path");
        path.push(previous);
        at = previous;
        if count.is_some() {
            layer -= 1;
        }
    }
    path.reverse();
    Some(path)
}

/// Builds the chunks of one function at `cuts` (positions in units, from 0
/// to the unit count).
fn build(
    request: &Request<'_>,
    analysis: &Analysis,
    cuts: &[usize],
) -> Result<Vec<Built>, SplitError> {
    let function = request.function;
    let block = body(function);
    let ops = &block.operations;
    let producer = producers(block);
    let constant: Vec<bool> = ops.iter().map(is_constant).collect();
    let chunk_count = cuts.len() - 1;
    // The chunk of each unit op, by op index.
    let mut chunk_of_op: BTreeMap<usize, usize> = BTreeMap::new();
    for k in 0..chunk_count {
        for u in cuts[k]..cuts[k + 1] {
            chunk_of_op.insert(analysis.units[u], k);
        }
    }
    // Every unit output: its type, and the chunks reading it.
    let mut output_type: BTreeMap<&str, &mil_spec::NamedValueType> = BTreeMap::new();
    for &i in &analysis.units {
        for output in &ops[i].outputs {
            output_type.insert(output.name.as_str(), output);
        }
    }
    let mut chunk_refs: Vec<BTreeSet<String>> = vec![BTreeSet::new(); chunk_count];
    for (&i, &k) in &chunk_of_op {
        chunk_refs[k].extend(references(&ops[i]));
    }
    // The function's outputs: each goes to the chunk computing it; one that
    // no unit computes (a constant, or an input passed through) to the last.
    let mut function_outputs: Vec<Vec<&str>> = vec![Vec::new(); chunk_count];
    for name in &block.outputs {
        let k = producer
            .get(name.as_str())
            .and_then(|p| chunk_of_op.get(p))
            .copied()
            .unwrap_or(chunk_count - 1);
        function_outputs[k].push(name);
        if producer.get(name.as_str()).is_none_or(|&p| constant[p]) {
            chunk_refs[k].insert(name.clone());
        }
    }
    // What each chunk takes from earlier chunks (by producing op), and the
    // states' values it reads again instead.
    let states = StateValues::of(function);
    let mut crossing_in: Vec<Vec<(usize, &mil_spec::NamedValueType)>> =
        vec![Vec::new(); chunk_count];
    let mut read_again: Vec<Vec<&mil_spec::NamedValueType>> = vec![Vec::new(); chunk_count];
    for k in 0..chunk_count {
        for r in &chunk_refs[k] {
            let Some(&p) = producer.get(r.as_str()) else {
                continue;
            };
            if chunk_of_op.get(&p).is_none_or(|&from| from >= k) {
                continue;
            }
            let value = output_type[r.as_str()];
            let valid_here = states.valid_until(r).is_some_and(|write| {
                chunk_of_op
                    .get(&write)
                    .is_none_or(|&written_in| written_in >= k)
            });
            if valid_here {
                read_again[k].push(value);
            } else {
                crossing_in[k].push((p, value));
            }
        }
        crossing_in[k].sort_by(|(p, a), (q, b)| (p, &a.name).cmp(&(q, &b.name)));
        for value in &read_again[k] {
            let (state, _) = &states.values[&value.name];
            chunk_refs[k].insert(state.clone());
        }
    }
    // The chunks reading each crossing value.
    let mut readers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, values) in crossing_in.iter().enumerate() {
        for (_, value) in values {
            readers.entry(value.name.as_str()).or_default().push(k);
        }
    }
    let names = |chunks: &[usize]| -> String {
        chunks
            .iter()
            .map(|&c| chunk_name(request.target, c + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let mut built = Vec::with_capacity(chunk_count);
    for k in 0..chunk_count {
        let name = chunk_name(request.target, k + 1);
        let refs = &chunk_refs[k];
        // Ops: the states' values read again first, then this chunk's units
        // and every constant they reach, in order.
        let mut keep: BTreeSet<usize> = chunk_of_op
            .iter()
            .filter(|(_, &c)| c == k)
            .map(|(&i, _)| i)
            .collect();
        keep.extend(constant_closure(ops, &producer, &constant, refs));
        let operations: Vec<mil_spec::Operation> = read_again[k]
            .iter()
            .map(|value| states.read_again(value))
            .chain(keep.iter().map(|&i| ops[i].clone()))
            .collect();

        // Inputs: the function's, in its order, then values from earlier
        // chunks, in the order they were computed.
        let mut inputs: Vec<mil_spec::NamedValueType> = function
            .inputs
            .iter()
            .filter(|i| refs.contains(&i.name))
            .cloned()
            .collect();
        let mut crossing_inputs = Vec::new();
        for &(p, value) in &crossing_in[k] {
            inputs.push(value.clone());
            crossing_inputs.push(CrossingValue {
                name: value.name.clone(),
                from_chunk: chunk_of_op[&p] + 1,
                type_text: type_text(value),
                bytes: crossing_bytes(value),
            });
        }

        // Outputs: the function's computed here, then values later chunks
        // take.
        let mut outputs: Vec<String> = function_outputs[k].iter().map(|s| s.to_string()).collect();
        let mut crossing_out: Vec<&mil_spec::NamedValueType> = Vec::new();
        for (&i, &c) in &chunk_of_op {
            if c != k {
                continue;
            }
            for output in &ops[i].outputs {
                if readers.contains_key(output.name.as_str()) && !outputs.contains(&output.name) {
                    crossing_out.push(output);
                }
            }
        }
        for value in &crossing_out {
            outputs.push(value.name.clone());
        }
        if outputs.is_empty() {
            return Err(SplitError::Cannot(format!(
                "chunk {} would compute nothing that a later chunk or the caller reads; ask \
                 for fewer chunks",
                k + 1
            )));
        }

        let chunk_function = mil_spec::Function {
            inputs,
            opset: function.opset.clone(),
            block_specializations: BTreeMap::from([(
                function.opset.clone(),
                mil_spec::Block {
                    inputs: Vec::new(),
                    outputs: outputs.clone(),
                    operations,
                    attributes: block.attributes.clone(),
                },
            )]),
            attributes: function.attributes.clone(),
        };

        let description = request.description;
        let crossing_feature =
            |value: &mil_spec::NamedValueType, text: String| FeatureDescription {
                name: value.name.clone(),
                short_description: text,
                r#type: Some(feature_type_of(value)),
            };
        let mut input_features: Vec<FeatureDescription> = description
            .input
            .iter()
            .filter(|f| refs.contains(&f.name))
            .cloned()
            .collect();
        for &(p, value) in &crossing_in[k] {
            input_features.push(crossing_feature(
                value,
                format!(
                    "Computed by {}, chunk {} of {}.",
                    chunk_name(request.target, chunk_of_op[&p] + 1),
                    chunk_of_op[&p] + 1,
                    request.target
                ),
            ));
        }
        let mut output_features: Vec<FeatureDescription> = Vec::new();
        for name in &function_outputs[k] {
            if let Some(feature) = description.output.iter().find(|f| f.name == *name) {
                output_features.push(feature.clone());
            }
        }
        for value in &crossing_out {
            output_features.push(crossing_feature(
                value,
                format!(
                    "Passed on to {} of {}.",
                    names(&readers[value.name.as_str()]),
                    request.target
                ),
            ));
        }
        let keeps = |name: &str| outputs.iter().any(|o| o == name);
        let chunk_description = FunctionDescription {
            name: name.clone(),
            input: input_features,
            output: output_features,
            state: description
                .state
                .iter()
                .filter(|s| refs.contains(&s.name))
                .cloned()
                .collect(),
            predicted_feature_name: if keeps(&description.predicted_feature_name) {
                description.predicted_feature_name.clone()
            } else {
                String::new()
            },
            predicted_probabilities_name: if keeps(&description.predicted_probabilities_name) {
                description.predicted_probabilities_name.clone()
            } else {
                String::new()
            },
        };
        built.push(Built {
            function: chunk_function,
            description: chunk_description,
            report: Chunk {
                name,
                weight_bytes: analysis.bytes(cuts[k], cuts[k + 1]),
                crossing_inputs,
            },
        });
    }
    Ok(built)
}

/// The body of a function with one.
fn body(function: &mil_spec::Function) -> &mil_spec::Block {
    function
        .block_specializations
        .get(&function.opset)
        .or_else(|| function.block_specializations.values().next())
        .expect("a validated function has a body")
}

/// Constants are emitted in every chunk that uses them, never cut between.
fn is_constant(op: &mil_spec::Operation) -> bool {
    op.r#type == "const" || op.r#type.starts_with("constexpr_")
}

/// The op index producing each top-level value.
fn producers(block: &mil_spec::Block) -> BTreeMap<&str, usize> {
    let mut producer = BTreeMap::new();
    for (i, op) in block.operations.iter().enumerate() {
        for output in &op.outputs {
            producer.insert(output.name.as_str(), i);
        }
    }
    producer
}

/// The values that are a state's content: the outputs of `read_state` and
/// `coreml_update_state`, each valid until the state is next written. A
/// later chunk reads such a value from the state again instead of taking
/// it as an input, so a KV cache never crosses a cut.
struct StateValues {
    /// For each such value, its state and the op producing it.
    values: BTreeMap<String, (String, usize)>,
    /// For each state, the ops writing it, in order.
    writes: BTreeMap<String, Vec<usize>>,
}

impl StateValues {
    fn of(function: &mil_spec::Function) -> StateValues {
        let states: BTreeSet<&str> = function
            .inputs
            .iter()
            .filter(|i| {
                matches!(
                    i.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
                    Some(value_type::Type::StateType(_))
                )
            })
            .map(|i| i.name.as_str())
            .collect();
        let mut values = BTreeMap::new();
        let mut writes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, op) in body(function).operations.iter().enumerate() {
            let (parameter, writes_it) = match op.r#type.as_str() {
                "read_state" => ("input", false),
                "write_state" => ("input", true),
                "coreml_update_state" => ("state", true),
                _ => continue,
            };
            let state = op
                .inputs
                .get(parameter)
                .and_then(|a| a.arguments.first())
                .and_then(|b| match &b.binding {
                    Some(binding::Binding::Name(name)) => Some(name.as_str()),
                    _ => None,
                })
                .filter(|name| states.contains(name));
            let Some(state) = state else { continue };
            if writes_it {
                writes.entry(state.to_string()).or_default().push(i);
            }
            if let [output] = op.outputs.as_slice() {
                values.insert(output.name.clone(), (state.to_string(), i));
            }
        }
        StateValues { values, writes }
    }

    /// For a state's value, the op that next writes its state (`usize::MAX`
    /// for none): until then, reading the state again gives the value.
    fn valid_until(&self, value: &str) -> Option<usize> {
        let (state, producer) = self.values.get(value)?;
        let writes = &self.writes[state.as_str()];
        Some(
            writes
                .get(writes.partition_point(|&w| w <= *producer))
                .copied()
                .unwrap_or(usize::MAX),
        )
    }

    /// A `read_state` op giving `value` from its state.
    fn read_again(&self, value: &mil_spec::NamedValueType) -> mil_spec::Operation {
        let (state, _) = &self.values[&value.name];
        let name = format!("{}_read_again", value.name);
        mil_spec::Operation {
            r#type: "read_state".to_string(),
            inputs: BTreeMap::from([(
                "input".to_string(),
                mil_spec::Argument {
                    arguments: vec![mil_spec::argument::Binding {
                        binding: Some(binding::Binding::Name(state.clone())),
                    }],
                },
            )]),
            outputs: vec![value.clone()],
            blocks: Vec::new(),
            attributes: BTreeMap::from([("name".to_string(), string_value(name))]),
        }
    }
}

/// A MIL string scalar, as op `name` attributes hold.
fn string_value(text: String) -> mil_spec::Value {
    use mil_spec::{tensor_value, value::immediate_value, TensorType, TensorValue, ValueType};
    mil_spec::Value {
        doc_string: String::new(),
        r#type: Some(ValueType {
            r#type: Some(value_type::Type::TensorType(TensorType {
                data_type: mil_spec::DataType::String as i32,
                ..Default::default()
            })),
        }),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(immediate_value::Value::Tensor(TensorValue {
                value: Some(tensor_value::Value::Strings(
                    tensor_value::RepeatedStrings { values: vec![text] },
                )),
            })),
        })),
    }
}

/// `name`, borrowed from the op that produces it.
fn producer_output<'o>(ops: &'o [mil_spec::Operation], producer: usize, name: &str) -> &'o str {
    ops[producer]
        .outputs
        .iter()
        .find(|o| o.name == name)
        .map(|o| o.name.as_str())
        .expect("the producer has the output")
}

/// Every name an op reads, its nested blocks included (their own values
/// too, which no top-level op produces, so they never match one).
fn references(op: &mil_spec::Operation) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    fn walk(op: &mil_spec::Operation, names: &mut BTreeSet<String>) {
        for argument in op.inputs.values() {
            for b in &argument.arguments {
                if let Some(binding::Binding::Name(name)) = &b.binding {
                    names.insert(name.clone());
                }
            }
        }
        for block in &op.blocks {
            for nested in &block.operations {
                walk(nested, names);
            }
            names.extend(block.outputs.iter().cloned());
        }
    }
    walk(op, &mut names);
    names
}

/// The constants (op indices) `names` reach, through constants reading
/// constants (`constexpr_*` of `const`s).
fn constant_closure(
    ops: &[mil_spec::Operation],
    producer: &BTreeMap<&str, usize>,
    constant: &[bool],
    names: &BTreeSet<String>,
) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut pending: Vec<usize> = names
        .iter()
        .filter_map(|n| producer.get(n.as_str()).copied())
        .filter(|&p| constant[p])
        .collect();
    while let Some(op) = pending.pop() {
        if found.insert(op) {
            pending.extend(
                references(&ops[op])
                    .iter()
                    .filter_map(|n| producer.get(n.as_str()).copied())
                    .filter(|&p| constant[p]),
            );
        }
    }
    found
}

/// The blob references of one constant op: (identity, a description that
/// is equal for equal weights in another package, stored bytes).
fn blob_references(
    op: &mil_spec::Operation,
    weight_size: &WeightSize<'_>,
) -> Vec<((String, u64), String, u64)> {
    let mut found = Vec::new();
    let mut visit = |value: &mil_spec::Value| {
        if let Some(value::Value::BlobFileValue(blob)) = &value.value {
            let bytes = weight_size(value).unwrap_or(0);
            let shape = value
                .r#type
                .as_ref()
                .map(|t| format!("{t:?}"))
                .unwrap_or_default();
            found.push(((blob.file_name.clone(), blob.offset), shape, bytes));
        }
    };
    for value in op.attributes.values() {
        visit(value);
    }
    for argument in op.inputs.values() {
        for b in &argument.arguments {
            if let Some(binding::Binding::Value(value)) = &b.binding {
                visit(value);
            }
        }
    }
    found
}

/// A tensor value's element type and dimensions, if it is a tensor.
fn tensor_of(value: &mil_spec::NamedValueType) -> Option<&mil_spec::TensorType> {
    match value.r#type.as_ref()?.r#type.as_ref()? {
        value_type::Type::TensorType(tensor) => Some(tensor),
        _ => None,
    }
}

/// The multi-array type Core ML passes a MIL element type as, if any.
fn array_type_of(data_type: i32) -> Option<ArrayDataType> {
    match mil_spec::DataType::try_from(data_type).ok()? {
        mil_spec::DataType::Float16 => Some(ArrayDataType::Float16),
        mil_spec::DataType::Float32 => Some(ArrayDataType::Float32),
        mil_spec::DataType::Int32 => Some(ArrayDataType::Int32),
        _ => None,
    }
}

/// The bytes a crossing value takes (unknown dimensions counted as 1, for
/// ranking cuts only), and whether Core ML can pass it between functions.
fn crossing_size(value: &mil_spec::NamedValueType) -> (u64, bool) {
    let Some(tensor) = tensor_of(value) else {
        return (0, false);
    };
    let dims = declared_dims(tensor);
    let elements: u64 = dims.iter().map(|d| d.unwrap_or(1)).product();
    let passable = array_type_of(tensor.data_type).is_some() && !dims.is_empty();
    let width = match mil_spec::DataType::try_from(tensor.data_type) {
        Ok(mil_spec::DataType::Float16) => 2,
        _ => 4,
    };
    (elements * width, passable)
}

/// The bytes of a crossing value with a fixed shape.
fn crossing_bytes(value: &mil_spec::NamedValueType) -> Option<u64> {
    let tensor = tensor_of(value)?;
    let dims = declared_dims(tensor);
    dims.iter()
        .all(Option::is_some)
        .then(|| crossing_size(value).0)
}

/// `fp16[1, 8, 64]`.
fn type_text(value: &mil_spec::NamedValueType) -> String {
    match tensor_of(value) {
        Some(tensor) => {
            let dtype = mil_spec::DataType::try_from(tensor.data_type)
                .map(|d| d.as_str_name().to_ascii_lowercase())
                .unwrap_or_else(|_| "unknown".to_string());
            let dtype = match dtype.as_str() {
                "float16" => "fp16".to_string(),
                "float32" => "fp32".to_string(),
                _ => dtype,
            };
            format!("{dtype}{}", shape_text(&declared_dims(tensor)))
        }
        None => "not a tensor".to_string(),
    }
}

/// The feature type of a crossing value: a multi-array of its element type
/// and shape, a flexible dimension taking any size from 1.
fn feature_type_of(value: &mil_spec::NamedValueType) -> FeatureType {
    let tensor = tensor_of(value).expect("only tensors cross");
    let dims = declared_dims(tensor);
    let shape: Vec<i64> = dims.iter().map(|d| d.map_or(1, |d| d as i64)).collect();
    let shape_flexibility = dims.iter().any(Option::is_none).then(|| {
        ShapeFlexibility::ShapeRange(array_feature_type::ShapeRange {
            size_ranges: dims
                .iter()
                .map(|d| match d {
                    Some(d) => SizeRange {
                        lower_bound: *d,
                        upper_bound: *d as i64,
                    },
                    None => SizeRange {
                        lower_bound: 1,
                        upper_bound: -1,
                    },
                })
                .collect(),
        })
    });
    FeatureType {
        is_optional: false,
        r#type: Some(feature_type::Type::MultiArrayType(ArrayFeatureType {
            shape,
            data_type: array_type_of(tensor.data_type).expect("only passable values cross") as i32,
            shape_flexibility,
            default_optional_value: None,
        })),
    }
}

/// An op's first output name (or its `name` attribute) and its type, for
/// messages.
fn describe_op(op: &mil_spec::Operation) -> (String, String) {
    let name = op
        .outputs
        .first()
        .map(|o| o.name.clone())
        .or_else(|| values::op_name(op).map(str::to_string))
        .unwrap_or_else(|| "unnamed".to_string());
    (name, op.r#type.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates at unit positions 0..=n, with the given crossing counts
    /// (one byte each), over units of the given weight bytes.
    fn line(weights: &[u64], crossing: &[usize]) -> (Vec<(Vec<usize>, CrossingCost)>, Vec<u64>) {
        let candidates = (0..=weights.len())
            .map(|p| {
                let count = if p == 0 || p == weights.len() {
                    0
                } else {
                    crossing[p - 1]
                };
                (
                    vec![p],
                    CrossingCost {
                        count,
                        bytes: count as u64,
                    },
                )
            })
            .collect();
        let mut prefix = vec![0];
        for w in weights {
            prefix.push(prefix.last().unwrap() + w);
        }
        (candidates, prefix)
    }

    fn run(
        weights: &[u64],
        crossing: &[usize],
        limit: u64,
        count: Option<usize>,
    ) -> Option<Vec<usize>> {
        let (candidates, prefix) = line(weights, crossing);
        let bytes = |a: usize, b: usize| prefix[b] - prefix[a];
        cheapest(&candidates, &bytes, limit, count)
    }

    #[test]
    fn a_count_gives_exactly_that_many_chunks_at_the_cheapest_cuts() {
        // Four equal units; cutting after the second crosses one value,
        // after the first or third, three.
        assert_eq!(
            run(&[10, 10, 10, 10], &[3, 1, 3], 20, Some(2)),
            Some(vec![0, 2, 4])
        );
        // With room for an uneven split, the cheaper crossing still wins.
        assert_eq!(
            run(&[10, 10, 10, 10], &[1, 3, 3], 30, Some(2)),
            Some(vec![0, 1, 4])
        );
        assert_eq!(
            run(&[10, 10, 10, 10], &[1, 1, 1], 10, Some(4)),
            Some(vec![0, 1, 2, 3, 4])
        );
        // Not possible within the limit.
        assert_eq!(run(&[10, 10, 10, 10], &[1, 1, 1], 15, Some(2)), None);
    }

    #[test]
    fn a_budget_gives_the_fewest_chunks_then_the_cheapest_cuts() {
        assert_eq!(
            run(&[10, 10, 10, 10], &[1, 1, 1], 40, None),
            Some(vec![0, 4])
        );
        assert_eq!(
            run(&[10, 10, 10, 10], &[1, 5, 1], 30, None),
            Some(vec![0, 1, 4])
        );
        assert_eq!(
            run(&[10, 10, 10, 10], &[1, 1, 1], 20, None).map(|p| p.len()),
            Some(3)
        );
        // A unit over the budget can never fit.
        assert_eq!(run(&[10, 50, 10], &[1, 1], 40, None), None);
    }

    #[test]
    fn ties_in_crossing_go_to_the_smaller_largest_chunk() {
        assert_eq!(
            run(&[10, 10, 10, 10], &[1, 1, 1], 30, Some(2)),
            Some(vec![0, 2, 4])
        );
    }
}
