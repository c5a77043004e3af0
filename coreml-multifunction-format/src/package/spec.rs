//! Decoding the root model specification (`model.mlmodel`) strictly.
//!
//! prost silently drops fields and oneof arms it does not know. That would
//! turn a neural network into an empty model, or lose a field a newer Core
//! ML added, and the loss would only show on a user's device. So decoding
//! first names the model type from the raw wire format, then checks that
//! re-encoding gives back as many bytes as were read: maps may be reordered,
//! but the length only changes if something was lost.

use prost::Message;

use crate::error::Problem;
use crate::proto::Model;

/// Field number of the `mlProgram` arm of `Model.Type`.
pub const ML_PROGRAM_FIELD: u32 = 502;

/// The model types of `Model.Type`, by field number, with the names Core ML
/// gives them.
const MODEL_TYPES: &[(u32, &str)] = &[
    (200, "pipelineClassifier"),
    (201, "pipelineRegressor"),
    (202, "pipeline"),
    (300, "glmRegressor"),
    (301, "supportVectorRegressor"),
    (302, "treeEnsembleRegressor"),
    (303, "neuralNetworkRegressor"),
    (304, "bayesianProbitRegressor"),
    (400, "glmClassifier"),
    (401, "supportVectorClassifier"),
    (402, "treeEnsembleClassifier"),
    (403, "neuralNetworkClassifier"),
    (404, "kNearestNeighborsClassifier"),
    (500, "neuralNetwork"),
    (501, "itemSimilarityRecommender"),
    (ML_PROGRAM_FIELD, "mlProgram"),
    (555, "customModel"),
    (556, "linkedModel"),
    (560, "classConfidenceThresholding"),
    (600, "oneHotEncoder"),
    (601, "imputer"),
    (602, "featureVectorizer"),
    (603, "dictVectorizer"),
    (604, "scaler"),
    (606, "categoricalMapping"),
    (607, "normalizer"),
    (609, "arrayFeatureExtractor"),
    (610, "nonMaximumSuppression"),
    (900, "identity"),
    (2000, "textClassifier"),
    (2001, "wordTagger"),
    (2002, "visionFeaturePrint"),
    (2003, "soundAnalysisPreprocessing"),
    (2004, "gazetteer"),
    (2005, "wordEmbedding"),
    (2006, "audioFeaturePrint"),
    (3000, "serializedModel"),
];

/// The name of the model type a serialized `Model` holds, read from the
/// wire format without decoding it ("neuralNetwork", "mlProgram", ...).
/// `Ok(None)` when the model has no type at all.
pub fn model_type_name(bytes: &[u8]) -> Result<Option<&'static str>, String> {
    let mut found = None;
    for field in top_level_fields(bytes)? {
        // As protobuf does for a oneof, the last arm on the wire wins.
        if let Some((_, name)) = MODEL_TYPES.iter().find(|(number, _)| *number == field) {
            found = Some(*name);
        }
    }
    Ok(found)
}

/// Decodes a serialized ML Program model, refusing other model types and
/// any model that carries fields the decoder would drop.
pub fn decode_ml_program(bytes: &[u8]) -> Result<Model, Problem> {
    let malformed = |detail: String| Problem::MalformedSpec { detail };
    match model_type_name(bytes).map_err(malformed)? {
        Some("mlProgram") => {}
        Some(other) => {
            return Err(Problem::NotMlProgram {
                model_type: other.to_string(),
            })
        }
        None if bytes.is_empty() => return Err(malformed("the file is empty".to_string())),
        None => {
            return Err(Problem::NotMlProgram {
                model_type: "untyped (no model type field)".to_string(),
            })
        }
    }
    let model = Model::decode(bytes).map_err(|e| malformed(e.to_string()))?;
    let decoded_len = model.encoded_len() as u64;
    if decoded_len != bytes.len() as u64 {
        return Err(Problem::UnknownFields {
            original_len: bytes.len() as u64,
            decoded_len,
        });
    }
    Ok(model)
}

/// The field numbers of a message's top-level fields, in wire order.
fn top_level_fields(mut bytes: &[u8]) -> Result<Vec<u32>, String> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes)?;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number is out of range")?;
        if number == 0 {
            return Err("a field has number 0".to_string());
        }
        let skip = match key & 7 {
            0 => {
                read_varint(&mut bytes)?;
                0
            }
            1 => 8,
            2 => read_varint(&mut bytes)?,
            5 => 4,
            other => return Err(format!("field {number} has unsupported wire type {other}")),
        };
        let skip = usize::try_from(skip)
            .ok()
            .filter(|skip| *skip <= bytes.len())
            .ok_or_else(|| format!("field {number} runs past the end of the data"))?;
        bytes = &bytes[skip..];
        fields.push(number);
    }
    Ok(fields)
}

fn read_varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| "the data ends inside a varint".to_string())?;
        *bytes = rest;
        if shift == 63 && byte > 1 {
            return Err("a varint overflows 64 bits".to_string());
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint is longer than 10 bytes".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mil_spec::Program;
    use crate::proto::{model, ModelDescription};

    fn ml_program() -> Model {
        Model {
            specification_version: 9,
            description: Some(ModelDescription::default()),
            is_updatable: false,
            r#type: Some(model::Type::MlProgram(Program {
                version: 1,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn an_ml_program_decodes_to_what_was_encoded() {
        let model = ml_program();
        assert_eq!(decode_ml_program(&model.encode_to_vec()).unwrap(), model);
    }

    #[test]
    fn other_model_types_are_named() {
        // specificationVersion 4, then an empty neuralNetwork (field 500).
        let bytes = [0x08, 0x04, 0xa2, 0x1f, 0x00];
        assert_eq!(model_type_name(&bytes), Ok(Some("neuralNetwork")));
        assert_eq!(
            decode_ml_program(&bytes),
            Err(Problem::NotMlProgram {
                model_type: "neuralNetwork".into()
            })
        );
    }

    #[test]
    fn an_unknown_field_is_refused_rather_than_dropped() {
        let mut bytes = ml_program().encode_to_vec();
        // Field 7777, varint 1: a field this crate's schema does not have.
        bytes.extend_from_slice(&[0x88, 0xe7, 0x03, 0x01]);
        assert!(matches!(
            decode_ml_program(&bytes),
            Err(Problem::UnknownFields { original_len, decoded_len }) if original_len == decoded_len + 4
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for garbage in [&b"\xff\xff\xff"[..], b"\x0a\x10abc", b"\x0b", b""] {
            assert!(
                matches!(
                    decode_ml_program(garbage),
                    Err(Problem::MalformedSpec { .. })
                ),
                "{garbage:?}"
            );
        }
    }
}
