//! The generated API of two `ClassifierConfig` classifiers merged as one
//! package (issue 23): `class_label` is a `String` (an `i64` for integer
//! classes) and `class_label_probs` a `runtime::Dictionary`, as the
//! functions' descriptions declare them, predicted on whichever backend
//! the target has.

use coreml_multifunction::half::f16;
use coreml_multifunction::runtime::{Dictionary, Tensor};

use crate::classifier;

/// A fixed input: a smooth pattern over the `[1, 3, 12, 12]` image tensor.
fn pattern(shape: &[usize]) -> Result<Tensor<f16>, Box<dyn std::error::Error>> {
    let count = shape.iter().product();
    Ok(Tensor::new(
        shape,
        (0..count)
            .map(|i| f16::from_f32(((i * 7) % 23) as f32 / 11.0 - 1.0))
            .collect::<Vec<_>>(),
    )?)
}

/// The key of the greatest value, the first in key order among equals.
fn argmax<K: Clone + Ord>(probabilities: &std::collections::BTreeMap<K, f64>) -> Option<K> {
    let mut best: Option<(&K, f64)> = None;
    for (key, &p) in probabilities {
        if best.is_none_or(|(_, b)| p > b) {
            best = Some((key, p));
        }
    }
    best.map(|(k, _)| k.clone())
}

/// Predicts with both classifiers; the label is one of the classes and the
/// class of the greatest probability, which sum to 1 (a softmax).
pub fn classifiers() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(classifier::Function::DEFAULT.name(), "animals");

    let animals = classifier::Animals::load()?;
    let out = animals.predict(&classifier::AnimalsInput {
        x: pattern(&classifier::AnimalsInput::X_SHAPE)?,
    })?;
    let label: String = out.class_label;
    let Dictionary::String(probabilities) = &out.class_label_probs else {
        return Err(format!(
            "animals: {:?} is not keyed by strings",
            out.class_label_probs
        )
        .into());
    };
    let classes: Vec<&str> = probabilities.keys().map(String::as_str).collect();
    assert_eq!(classes, ["bird", "cat", "dog"]);
    assert!(classes.contains(&label.as_str()), "{label}");
    // Exact ties are not expected from this input, so key order does not
    // decide.
    assert_eq!(argmax(probabilities).as_deref(), Some(label.as_str()));
    let total: f64 = probabilities.values().sum();
    assert!((total - 1.0).abs() < 1e-2, "{total}");

    let digits = classifier::Digits::load()?;
    let out = digits.predict(&classifier::DigitsInput {
        x: pattern(&classifier::DigitsInput::X_SHAPE)?,
    })?;
    let digit: i64 = out.class_label;
    let Dictionary::Int64(scores) = &out.class_label_probs else {
        return Err(format!("digits: {:?} is not keyed by int64", out.class_label_probs).into());
    };
    assert_eq!(scores.keys().copied().collect::<Vec<_>>(), [3, 5, 7, 11]);
    assert_eq!(argmax(scores), Some(digit));

    println!(
        "classifiers: animals says {label:?} ({:.3}), digits says {digit} ({:.3})",
        probabilities[&label], scores[&digit]
    );
    Ok(())
}
