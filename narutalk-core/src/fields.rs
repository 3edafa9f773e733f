//! Reading a JSON object field by field, with DRF's checks and messages and no type
//! coercion (`docs/API.md`, Errors).
//!
//! Each operation that takes a request body reads it through a `FieldReader`, which
//! collects every field's first failing check, so one answer lists every bad field as DRF
//! does. Cross-field rules run only when every field passed.
//!
//! Every string field refuses the NUL character (`Null characters are not allowed.`, after
//! the length check), as DRF's `CharField` does: passwords and tokens too, and the keys and
//! string values of an object field at any depth ([`object_contains_nul`]).

use serde_json::Value;

use crate::error::{Error, FieldErrors};

/// A request body: a JSON object. An empty body counts as an empty object.
pub type JsonObject = serde_json::Map<String, Value>;

/// `This field is required.`
pub const REQUIRED: &str = "This field is required.";
/// `This field may not be null.`
pub const NOT_NULL: &str = "This field may not be null.";
/// `Not a valid string.`
pub const NOT_A_STRING: &str = "Not a valid string.";
/// `Must be a valid boolean.`
pub const NOT_A_BOOLEAN: &str = "Must be a valid boolean.";
/// `This field may not be blank.`
pub const BLANK: &str = "This field may not be blank.";
/// `Null characters are not allowed.`
pub const NUL_NOT_ALLOWED: &str = "Null characters are not allowed.";

/// `Ensure this field has no more than N characters.`
pub fn too_long(max_chars: usize) -> String {
    format!("Ensure this field has no more than {max_chars} characters.")
}

/// `"x" is not a valid choice.`
pub fn invalid_choice(value: &str) -> String {
    format!("\"{value}\" is not a valid choice.")
}

/// `Expected a dictionary of items but got type "list".`
pub fn not_a_dictionary(value: &Value) -> String {
    format!(
        "Expected a dictionary of items but got type \"{}\".",
        python_type_name(value)
    )
}

/// The name Python gives the type of a parsed JSON value, which DRF's messages quote:
/// `dict`, `list`, `str`, `int`, `float`, `bool` or `NoneType`.
pub fn python_type_name(value: &Value) -> &'static str {
    match value {
        Value::Object(_) => "dict",
        Value::Array(_) => "list",
        Value::String(_) => "str",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "float",
        Value::Bool(_) => "bool",
        Value::Null => "NoneType",
    }
}

/// How one string field is checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Text {
    /// Absent is `This field is required.` rather than "use the default".
    pub required: bool,
    /// Leading and trailing whitespace is removed before the other checks and storage
    /// (DRF's `trim_whitespace`); off for passwords and message content, which are kept
    /// exactly as sent.
    pub trim: bool,
    /// An empty (or whitespace-only) value is accepted.
    pub allow_blank: bool,
    /// The most characters (Unicode scalar values) accepted.
    pub max_chars: Option<usize>,
}

impl Text {
    /// A required, trimmed, non-blank string with no length limit.
    pub const REQUIRED: Text = Text {
        required: true,
        trim: true,
        allow_blank: false,
        max_chars: None,
    };

    /// A required string kept exactly as sent (passwords).
    pub const REQUIRED_VERBATIM: Text = Text {
        required: true,
        trim: false,
        allow_blank: false,
        max_chars: None,
    };

    /// The same check with a maximum length.
    pub const fn max(self, max_chars: usize) -> Text {
        Text {
            max_chars: Some(max_chars),
            ..self
        }
    }

    /// The same check for a field that may be left out.
    pub const fn optional(self) -> Text {
        Text {
            required: false,
            ..self
        }
    }

    /// The same check accepting an empty value.
    pub const fn blank_allowed(self) -> Text {
        Text {
            allow_blank: true,
            ..self
        }
    }
}

/// Reads fields out of a [`JsonObject`], recording the first failing check of each field.
pub(crate) struct FieldReader<'a> {
    body: &'a JsonObject,
    errors: FieldErrors,
}

impl<'a> FieldReader<'a> {
    /// Starts reading `body`.
    pub fn new(body: &'a JsonObject) -> Self {
        Self {
            body,
            errors: FieldErrors::new(),
        }
    }

    /// The value of a present, non-null field; records `required`/`null` otherwise.
    fn present(&mut self, name: &str, required: bool) -> Option<&'a Value> {
        match self.body.get(name) {
            None => {
                if required {
                    self.errors.add(name, REQUIRED);
                }
                None
            }
            Some(Value::Null) => {
                self.errors.add(name, NOT_NULL);
                None
            }
            Some(value) => Some(value),
        }
    }

    /// A string field; `None` when absent (and not required) or when it failed a check.
    pub fn text(&mut self, name: &str, rule: Text) -> Option<String> {
        let value = self.present(name, rule.required)?;
        let Value::String(raw) = value else {
            self.errors.add(name, NOT_A_STRING);
            return None;
        };
        let value = if rule.trim { raw.trim() } else { raw.as_str() };
        if !rule.allow_blank && value.trim().is_empty() {
            self.errors.add(name, BLANK);
            return None;
        }
        if let Some(max_chars) = rule.max_chars
            && value.chars().count() > max_chars
        {
            self.errors.add(name, too_long(max_chars));
            return None;
        }
        if value.contains('\0') {
            self.errors.add(name, NUL_NOT_ALLOWED);
            return None;
        }
        Some(value.to_owned())
    }

    /// A choice among string values parsed by `T::from_str`; `None` when absent or invalid.
    pub fn choice<T: std::str::FromStr>(&mut self, name: &str, required: bool) -> Option<T> {
        let value = self.present(name, required)?;
        let Value::String(raw) = value else {
            self.errors.add(name, NOT_A_STRING);
            return None;
        };
        match raw.parse() {
            Ok(choice) => Some(choice),
            Err(_) => {
                self.errors.add(name, invalid_choice(raw));
                None
            }
        }
    }

    /// A boolean field; only JSON `true`/`false` are booleans.
    pub fn boolean(&mut self, name: &str, required: bool) -> Option<bool> {
        match self.present(name, required)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.errors.add(name, NOT_A_BOOLEAN);
                None
            }
        }
    }

    /// An object field (`metadata`).
    pub fn object(&mut self, name: &str, required: bool) -> Option<JsonObject> {
        match self.present(name, required)? {
            Value::Object(map) => Some(map.clone()),
            other => {
                self.errors.add(name, not_a_dictionary(other));
                None
            }
        }
    }

    /// Records `Null characters are not allowed.` under `name` when a key or a string
    /// value of `object`, at any depth, holds a NUL, unless `name` failed already. Called
    /// after the object's size check, as the length check comes first for strings.
    pub fn refuse_nul_within(&mut self, name: &str, object: &JsonObject) {
        if !self.failed(name) && object_contains_nul(object) {
            self.errors.add(name, NUL_NOT_ALLOWED);
        }
    }

    /// Records a rule that failed after the type checks (uniqueness, syntax, policy).
    pub fn fail(&mut self, name: &str, message: impl Into<String>) {
        self.errors.add(name, message);
    }

    /// True when `name` already has an error, so later checks of it are skipped.
    pub fn failed(&self, name: &str) -> bool {
        self.errors.contains(name)
    }

    /// `Ok(())` when every field passed, otherwise the collected errors.
    pub fn finish(self) -> Result<(), Error> {
        self.errors.into_result()
    }
}

/// True when a key or a string value of `object`, at any depth, contains a NUL. Walks
/// with its own stack, so an object nested deeper than the parser's limit (an embedder's
/// own) cannot overflow the thread's.
pub fn object_contains_nul(object: &JsonObject) -> bool {
    let mut pending: Vec<&Value> = Vec::new();
    let mut objects = vec![object];
    loop {
        if let Some(object) = objects.pop() {
            for (key, value) in object {
                if key.contains('\0') {
                    return true;
                }
                pending.push(value);
            }
            continue;
        }
        let Some(value) = pending.pop() else {
            return false;
        };
        match value {
            Value::String(text) if text.contains('\0') => return true,
            Value::Object(inner) => objects.push(inner),
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(map) => map,
            _ => JsonObject::new(),
        }
    }

    fn errors_of(reader: FieldReader<'_>) -> FieldErrors {
        match reader.finish() {
            Err(Error::Invalid(errors)) => errors,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn missing_required_field_says_required_and_optional_is_silent() {
        let body = object(json!({}));
        let mut reader = FieldReader::new(&body);
        assert_eq!(reader.text("a", Text::REQUIRED), None);
        assert_eq!(reader.text("b", Text::REQUIRED.optional()), None);
        let errors = errors_of(reader);
        assert_eq!(errors.get("a"), [REQUIRED]);
        assert!(!errors.contains("b"));
    }

    #[test]
    fn null_wrong_type_blank_and_too_long_each_have_their_message() {
        let body =
            object(json!({"n": null, "t": 5, "b": "   ", "l": "ééé", "o": [1], "f": "true"}));
        let mut reader = FieldReader::new(&body);
        reader.text("n", Text::REQUIRED);
        reader.text("t", Text::REQUIRED);
        reader.text("b", Text::REQUIRED);
        reader.text("l", Text::REQUIRED.max(2));
        reader.object("o", false);
        reader.boolean("f", false);
        let errors = errors_of(reader);
        assert_eq!(errors.get("n"), [NOT_NULL]);
        assert_eq!(errors.get("t"), [NOT_A_STRING]);
        assert_eq!(errors.get("b"), [BLANK]);
        assert_eq!(
            errors.get("l"),
            ["Ensure this field has no more than 2 characters."]
        );
        assert_eq!(
            errors.get("o"),
            ["Expected a dictionary of items but got type \"list\"."]
        );
        assert_eq!(errors.get("f"), [NOT_A_BOOLEAN]);
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let body = object(json!({"u": "김철수"}));
        let mut reader = FieldReader::new(&body);
        assert_eq!(
            reader.text("u", Text::REQUIRED.max(3)),
            Some("김철수".into())
        );
        assert!(reader.finish().is_ok());
    }

    #[test]
    fn trimming_applies_only_when_asked() {
        let body = object(json!({"a": "  x  "}));
        let mut reader = FieldReader::new(&body);
        assert_eq!(reader.text("a", Text::REQUIRED), Some("x".into()));
        assert_eq!(
            reader.text("a", Text::REQUIRED_VERBATIM),
            Some("  x  ".into())
        );
    }

    #[test]
    fn a_nul_is_refused_after_the_blank_and_length_checks() {
        let body = object(json!({
            "nul": "a\u{0}b", "long": "\u{0}\u{0}\u{0}", "blank": "  ", "kept": " \u{0} ",
            "password": "\u{0}pass",
        }));
        let mut reader = FieldReader::new(&body);
        assert_eq!(reader.text("nul", Text::REQUIRED), None);
        assert_eq!(reader.text("long", Text::REQUIRED.max(2)), None);
        assert_eq!(reader.text("blank", Text::REQUIRED), None);
        assert_eq!(reader.text("kept", Text::REQUIRED_VERBATIM), None);
        assert_eq!(reader.text("password", Text::REQUIRED_VERBATIM), None);
        let errors = errors_of(reader);
        assert_eq!(errors.get("nul"), [NUL_NOT_ALLOWED]);
        assert_eq!(
            errors.get("long"),
            ["Ensure this field has no more than 2 characters."]
        );
        assert_eq!(errors.get("blank"), [BLANK]);
        assert_eq!(errors.get("kept"), [NUL_NOT_ALLOWED]);
        assert_eq!(errors.get("password"), [NUL_NOT_ALLOWED]);
    }

    #[test]
    fn a_nul_anywhere_in_an_object_is_found_in_keys_and_values_at_any_depth() {
        let clean = object(json!({"a": [1, "b", {"c": ["d", null, true]}], "e": {"f": "g"}}));
        assert!(!object_contains_nul(&clean));
        for nul in [
            json!({"a\u{0}": 1}),
            json!({"a": "\u{0}"}),
            json!({"a": [1, "b", {"c": ["d", "e\u{0}"]}]}),
            json!({"a": {"b": {"c\u{0}d": null}}}),
            json!({"a": [[[["\u{0}"]]]]}),
        ] {
            assert!(object_contains_nul(&object(nul.clone())), "{nul}");
        }
        let mut deep = json!("\u{0}");
        for _ in 0..200 {
            deep = json!({ "k": [deep] });
        }
        assert!(object_contains_nul(&object(deep)));
    }

    #[test]
    fn refuse_nul_within_reports_once_and_only_for_a_field_not_failed_yet() {
        let nul = object(json!({"k": "\u{0}"}));
        let body = object(json!({}));
        let mut reader = FieldReader::new(&body);
        reader.refuse_nul_within("metadata", &nul);
        reader.refuse_nul_within("metadata", &nul);
        reader.fail("other", "first problem");
        reader.refuse_nul_within("other", &nul);
        reader.refuse_nul_within("clean", &object(json!({"k": "v"})));
        let errors = errors_of(reader);
        assert_eq!(errors.get("metadata"), [NUL_NOT_ALLOWED]);
        assert_eq!(errors.get("other"), ["first problem"]);
        assert!(!errors.contains("clean"));
    }

    #[test]
    fn python_type_names_match_drf_messages() {
        assert_eq!(python_type_name(&json!([])), "list");
        assert_eq!(python_type_name(&json!("s")), "str");
        assert_eq!(python_type_name(&json!(1)), "int");
        assert_eq!(python_type_name(&json!(1.5)), "float");
        assert_eq!(python_type_name(&json!(true)), "bool");
        assert_eq!(python_type_name(&json!(null)), "NoneType");
        assert_eq!(python_type_name(&json!({})), "dict");
    }

    #[test]
    fn choice_reports_the_value_given() {
        #[derive(Debug)]
        struct Yes;
        impl std::str::FromStr for Yes {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                if s == "yes" { Ok(Yes) } else { Err(()) }
            }
        }
        let body = object(json!({"a": "admin", "b": 3}));
        let mut reader = FieldReader::new(&body);
        assert!(reader.choice::<Yes>("a", true).is_none());
        assert!(reader.choice::<Yes>("b", true).is_none());
        let errors = errors_of(reader);
        assert_eq!(errors.get("a"), ["\"admin\" is not a valid choice."]);
        assert_eq!(errors.get("b"), [NOT_A_STRING]);
    }
}
