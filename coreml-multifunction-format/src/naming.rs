//! Rust names for model, function and feature names.
//!
//! Core ML names are free-form (`input_adapter_1`, `Mixed-Output`, `2nd`),
//! while generated Rust needs identifiers: `UpperCamelCase` types and
//! `snake_case` fields and modules. These conversions are total (any input
//! gives a valid identifier) but not injective, so callers check that the
//! names they generate do not collide.
//!
//! It also holds the checks and quoting of Core ML names that messages and
//! configuration share: [`is_mil_identifier`] and [`quoted_list`].

/// Words of `name`: split on anything that is not alphanumeric, and where
/// lower case or a digit turns to upper case (`fooBar` → `foo`, `Bar`).
fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous: Option<char> = None;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous = None;
            continue;
        }
        if let Some(p) = previous {
            if c.is_uppercase() && (p.is_lowercase() || p.is_ascii_digit()) && !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
        previous = Some(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Keeps the ASCII letters, digits and `_` of `name` only (Rust
/// identifiers may hold other Unicode letters, but generated code stays
/// ASCII so that it reads the same everywhere).
fn ascii_only(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `adapter_1` → `Adapter1`, `input-ids` → `InputIds`. A leading digit
/// gets an `F` prefix (`2nd` → `F2nd`); an empty result becomes `Unnamed`.
pub fn upper_camel(name: &str) -> String {
    let mut out = String::new();
    for word in words(&ascii_only(name)) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(&chars.as_str().to_lowercase());
        }
    }
    if out.is_empty() {
        return "Unnamed".to_string();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'F');
    }
    out
}

/// `Adapter1` → `adapter1`, `inputIds` → `input_ids`, `x.y` → `x_y`. A
/// leading digit gets an `_` prefix; keywords become raw identifiers
/// (`type` → `r#type`), or get a `_` suffix where raw identifiers are not
/// allowed (`self`, `crate`, `super`, `Self`).
pub fn snake(name: &str) -> String {
    let joined = words(&ascii_only(name))
        .iter()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join("_");
    let mut out = if joined.is_empty() {
        "unnamed".to_string()
    } else {
        joined
    };
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    escape_keyword(out)
}

/// Rust keywords (strict and reserved, all editions).
const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// Keywords that cannot be raw identifiers.
const NOT_RAW: &[&str] = &["self", "Self", "crate", "super", "_"];

/// Makes a keyword usable as an identifier.
pub fn escape_keyword(name: String) -> String {
    if NOT_RAW.contains(&name.as_str()) {
        format!("{name}_")
    } else if KEYWORDS.contains(&name.as_str()) {
        format!("r#{name}")
    } else {
        name
    }
}

/// Whether `name` is a MIL identifier, `[A-Za-z_][A-Za-z0-9_@]*`: what
/// Core ML accepts as a function name.
pub fn is_mil_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
}

/// `"a", "b", "c"`: names quoted and comma-separated, for messages.
pub fn quoted_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|name| format!("{name:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mil_identifiers() {
        for good in ["main", "adapter_1", "_x", "a@b", "A9"] {
            assert!(is_mil_identifier(good), "{good}");
        }
        for bad in ["", "1st", "with space", "dash-ed", "ünï", "a.b"] {
            assert!(!is_mil_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn quoted_lists_read_as_rust_strings() {
        assert_eq!(quoted_list(["a", "b\"c"]), r#""a", "b\"c""#);
        assert_eq!(quoted_list([]), "");
    }

    #[test]
    fn upper_camel_case() {
        assert_eq!(upper_camel("adapter_1"), "Adapter1");
        assert_eq!(upper_camel("input-ids"), "InputIds");
        assert_eq!(upper_camel("prefill"), "Prefill");
        assert_eq!(upper_camel("fooBar"), "FooBar");
        assert_eq!(upper_camel("2nd"), "F2nd");
        assert_eq!(upper_camel("__"), "Unnamed");
        assert_eq!(upper_camel("ünï"), "N");
    }

    #[test]
    fn snake_case() {
        assert_eq!(snake("input_adapter_1"), "input_adapter_1");
        assert_eq!(snake("inputIds"), "input_ids");
        assert_eq!(snake("Mixed-Output"), "mixed_output");
        assert_eq!(snake("type"), "r#type");
        assert_eq!(snake("self"), "self_");
        assert_eq!(snake("2x"), "_2x");
        assert_eq!(snake("layer.0.weight"), "layer_0_weight");
        assert_eq!(snake(""), "unnamed");
    }
}
