//! Raising a function's opset, as coremltools does when it merges.
//!
//! Every function of a multifunction program must target one opset: the one
//! of the output's specification version (at least 9, so at least
//! `CoreML8`). coremltools re-instantiates each op at that opset; this
//! crate keeps the ops as they are and relabels the body, which is exact for
//! every op whose interface did not change between the two opsets (and is
//! what coremltools writes for them too: even `constexpr_*` ops of older
//! opsets keep their operands as attributes in its `CoreML8` output). The few
//! ops whose inputs did change are refused, naming the op, since relabelling
//! them would give a model Core ML rejects (coremltools fails on them too).

/// The opset of a specification version (`9` → `"CoreML8"`).
pub fn opset_for_version(specification_version: i32) -> Option<String> {
    (specification_version >= 6).then(|| format!("CoreML{}", specification_version - 1))
}

/// The number of an opset label (`"CoreML7"` → 7).
pub fn opset_number(opset: &str) -> Option<u32> {
    opset.strip_prefix("CoreML")?.parse().ok()
}

/// Ops whose inputs changed incompatibly, with the first opset that has the
/// new form. Read off coremltools 9.0's op registry by comparing each op's
/// input specification between opset versions: these are the ones where an
/// input was removed or a required input added.
const CHANGED_OPS: &[(&str, u32, &str)] = &[
    (
        "constexpr_lut_to_dense",
        8,
        "its `shape` input was replaced by `vector_axis`, with a new layout for `lut`",
    ),
    (
        "constexpr_sparse_to_dense",
        8,
        "its `shape` input was removed and its data inputs renamed",
    ),
    ("crop_resize", 7, "its `roi` input became `boxes`"),
    (
        "non_maximum_suppression",
        7,
        "its `score_threshold` input was removed",
    ),
];

/// Why an op cannot be moved from `from` to `to`, or `None` when it can.
pub fn incompatibility(op_type: &str, from: u32, to: u32) -> Option<&'static str> {
    CHANGED_OPS
        .iter()
        .find(|(name, changed_at, _)| *name == op_type && from < *changed_at && to >= *changed_at)
        .map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opsets_follow_specification_versions() {
        assert_eq!(opset_for_version(9).as_deref(), Some("CoreML8"));
        assert_eq!(opset_for_version(6).as_deref(), Some("CoreML5"));
        assert_eq!(opset_for_version(5), None);
        assert_eq!(opset_number("CoreML7"), Some(7));
        assert_eq!(opset_number("iOS17"), None);
    }

    #[test]
    fn changed_ops_are_refused_only_across_their_change() {
        assert!(incompatibility("constexpr_lut_to_dense", 7, 8).is_some());
        assert!(incompatibility("constexpr_lut_to_dense", 8, 8).is_none());
        assert!(incompatibility("crop_resize", 5, 8).is_some());
        assert!(incompatibility("crop_resize", 7, 8).is_none());
        assert!(incompatibility("linear", 5, 8).is_none());
    }
}
