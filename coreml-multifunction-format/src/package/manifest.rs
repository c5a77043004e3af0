//! `Manifest.json`: the index of a `.mlpackage` directory.
//!
//! ```json
//! {
//!     "fileFormatVersion": "1.0.0",
//!     "itemInfoEntries": {
//!         "<identifier>": {
//!             "author": "com.apple.CoreML",
//!             "description": "CoreML Model Specification",
//!             "name": "model.mlmodel",
//!             "path": "com.apple.CoreML/model.mlmodel"
//!         }
//!     },
//!     "rootModelIdentifier": "<identifier>"
//! }
//! ```
//!
//! Item paths are relative to the package's `Data/` directory. coremltools
//! uses random UUIDs as identifiers; this crate derives them from content
//! ([`derived_identifier`]) so that writing the same model twice gives the
//! same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The only package format version Core ML defines.
pub const FILE_FORMAT_VERSION: &str = "1.0.0";
/// The author of the items Core ML itself reads.
pub const CORE_ML_AUTHOR: &str = "com.apple.CoreML";
/// Name of the root model specification item.
pub const SPEC_ITEM_NAME: &str = "model.mlmodel";
/// Description coremltools gives the root model specification item.
pub const SPEC_ITEM_DESCRIPTION: &str = "CoreML Model Specification";
/// Name of the weights directory item.
pub const WEIGHTS_ITEM_NAME: &str = "weights";
/// Description coremltools gives the weights directory item.
pub const WEIGHTS_ITEM_DESCRIPTION: &str = "CoreML Model Weights";

/// A parsed `Manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The package format version, `"1.0.0"`.
    pub file_format_version: String,
    /// The items of the package, by identifier.
    pub item_info_entries: BTreeMap<String, ManifestItem>,
    /// The identifier of the root model specification.
    pub root_model_identifier: String,
}

/// One item of a package: a file or directory under `Data/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestItem {
    /// Who wrote it; Core ML's own items say `com.apple.CoreML`.
    pub author: String,
    /// A human-readable description.
    pub description: String,
    /// The item's name.
    pub name: String,
    /// Its path, relative to `Data/`.
    pub path: String,
}

impl Manifest {
    /// Parses manifest JSON. Only version 1.0.0 is accepted, as in Core ML.
    pub fn parse(json: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(json).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if manifest.file_format_version != FILE_FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(
                manifest.file_format_version,
            ));
        }
        if !manifest
            .item_info_entries
            .contains_key(&manifest.root_model_identifier)
        {
            return Err(ManifestError::UnknownRoot(manifest.root_model_identifier));
        }
        Ok(manifest)
    }

    /// The root model specification item.
    pub fn root_item(&self) -> &ManifestItem {
        &self.item_info_entries[&self.root_model_identifier]
    }

    /// The weights directory item, found the way coremltools finds it: by
    /// name `weights` and author `com.apple.CoreML`.
    pub fn weights_item(&self) -> Option<(&str, &ManifestItem)> {
        self.item_info_entries
            .iter()
            .find(|(_, item)| item.name == WEIGHTS_ITEM_NAME && item.author == CORE_ML_AUTHOR)
            .map(|(id, item)| (id.as_str(), item))
    }

    /// Serialises the manifest as Core ML writes it: keys sorted, four
    /// spaces of indentation, a final newline.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        self.serialize(&mut serializer)
            .expect("a manifest of strings always serialises");
        let mut text = String::from_utf8(out).expect("serde_json writes UTF-8");
        text.push('\n');
        text
    }
}

impl ManifestItem {
    /// A Core ML item named `name`, at `com.apple.CoreML/<name>`.
    pub fn core_ml(name: &str, description: &str) -> ManifestItem {
        ManifestItem {
            author: CORE_ML_AUTHOR.to_string(),
            description: description.to_string(),
            name: name.to_string(),
            path: format!("{CORE_ML_AUTHOR}/{name}"),
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// Not JSON, or a required key is missing or of the wrong type.
    Malformed(String),
    /// A `fileFormatVersion` other than 1.0.0.
    UnsupportedVersion(String),
    /// `rootModelIdentifier` names no item.
    UnknownRoot(String),
}

/// A UUID-shaped identifier derived from `seed` and an item's path, so that
/// the same content always gets the same identifier and distinct items of
/// one package get distinct ones. Upper-case, like those Xcode writes; the
/// version nibble says 8 ("custom"), since these are not random UUIDs.
pub fn derived_identifier(seed: &[u8], item_path: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"coreml-multifunction manifest item\0");
    hasher.update((seed.len() as u64).to_le_bytes());
    hasher.update(seed);
    hasher.update(item_path.as_bytes());
    let digest = hasher.finalize();
    let mut bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const COREMLTOOLS_MANIFEST: &str = r#"{
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {
        "2a5e4d47-b05c-4a59-8d0e-cf2bb2a9d4c5": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        },
        "9d1e3c5b-1bb1-47c5-9a2c-6c07e6d5a1a7": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel"
        }
    },
    "rootModelIdentifier": "9d1e3c5b-1bb1-47c5-9a2c-6c07e6d5a1a7"
}
"#;

    #[test]
    fn parses_and_reprints_core_mls_format_exactly() {
        let manifest = Manifest::parse(COREMLTOOLS_MANIFEST.as_bytes()).unwrap();
        assert_eq!(manifest.root_item().name, "model.mlmodel");
        assert_eq!(
            manifest.weights_item().unwrap().1.path,
            "com.apple.CoreML/weights"
        );
        assert_eq!(manifest.to_json(), COREMLTOOLS_MANIFEST);
    }

    #[test]
    fn refuses_other_versions_unknown_roots_and_missing_keys() {
        let newer = COREMLTOOLS_MANIFEST.replace("\"1.0.0\"", "\"2.0.0\"");
        assert_eq!(
            Manifest::parse(newer.as_bytes()),
            Err(ManifestError::UnsupportedVersion("2.0.0".into()))
        );
        let unknown_root = COREMLTOOLS_MANIFEST.replace(
            "\"rootModelIdentifier\": \"9d1e",
            "\"rootModelIdentifier\": \"0000",
        );
        assert!(matches!(
            Manifest::parse(unknown_root.as_bytes()),
            Err(ManifestError::UnknownRoot(_))
        ));
        let no_path =
            COREMLTOOLS_MANIFEST.replace("\"path\": \"com.apple.CoreML/weights\"", "\"x\": \"\"");
        assert!(matches!(
            Manifest::parse(no_path.as_bytes()),
            Err(ManifestError::Malformed(message)) if message.contains("path")
        ));
    }

    #[test]
    fn derived_identifiers_are_stable_distinct_and_uuid_shaped() {
        let a = derived_identifier(b"spec", "com.apple.CoreML/model.mlmodel");
        assert_eq!(
            a,
            derived_identifier(b"spec", "com.apple.CoreML/model.mlmodel")
        );
        assert_ne!(a, derived_identifier(b"spec", "com.apple.CoreML/weights"));
        assert_ne!(
            a,
            derived_identifier(b"other", "com.apple.CoreML/model.mlmodel")
        );
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'8');
        assert!(a
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
    }
}
