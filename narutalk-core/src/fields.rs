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

    /// The same check accepting an empty value.
    pub const fn blank_allowed(self) -> Text {
        Text {
            allow_blank: true,
            ..self
        }
    }
}

/// Proof that a field failed a check: only a [`FieldReader`] makes one, and only as it
/// records the field's message. A [`Checked`] value is therefore either the field's value
/// or a failure already reported, and [`FieldReader::finish_with`] turns a typed input
/// whose every field passed into that input, with no "passed its checks without a value"
/// case left to handle.
#[derive(Debug)]
pub(crate) struct Failed(());

/// A field's checked value, or [`Failed`].
pub(crate) type Checked<T> = Result<T, Failed>;

/// Checks one string against `rule` (all but `required`), in DRF's order: trimming, blank,
/// length, then the NUL character. The error is the field's message.
pub(crate) fn check_text(raw: &str, rule: Text) -> Result<String, String> {
    let value = if rule.trim { raw.trim() } else { raw };
    if !rule.allow_blank && value.trim().is_empty() {
        return Err(BLANK.to_owned());
    }
    if let Some(max_chars) = rule.max_chars
        && value.chars().count() > max_chars
    {
        return Err(too_long(max_chars));
    }
    if value.contains('\0') {
        return Err(NUL_NOT_ALLOWED.to_owned());
    }
    Ok(value.to_owned())
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

    /// The value of a present, non-null field (`None` when absent and not `required`);
    /// records `required`/`null` otherwise.
    fn present(&mut self, name: &str, required: bool) -> Checked<Option<&'a Value>> {
        match self.body.get(name) {
            None if required => Err(self.fail(name, REQUIRED)),
            None => Ok(None),
            Some(Value::Null) => Err(self.fail(name, NOT_NULL)),
            Some(value) => Ok(Some(value)),
        }
    }

    /// A required string field ([`Text::required`] is not consulted).
    pub fn required_text(&mut self, name: &str, rule: Text) -> Checked<String> {
        match self.present(name, true)? {
            Some(value) => self.text_value(name, value, rule),
            None => Err(self.fail(name, REQUIRED)),
        }
    }

    /// A string field that may be left out (`Ok(None)`; [`Text::required`] is not
    /// consulted).
    pub fn optional_text(&mut self, name: &str, rule: Text) -> Checked<Option<String>> {
        match self.present(name, false)? {
            Some(value) => self.text_value(name, value, rule).map(Some),
            None => Ok(None),
        }
    }

    /// A string field; `None` when absent (and not required) or when it failed a check.
    pub fn text(&mut self, name: &str, rule: Text) -> Option<String> {
        if rule.required {
            self.required_text(name, rule).ok()
        } else {
            self.optional_text(name, rule).ok().flatten()
        }
    }

    fn text_value(&mut self, name: &str, value: &Value, rule: Text) -> Checked<String> {
        let Value::String(raw) = value else {
            return Err(self.fail(name, NOT_A_STRING));
        };
        check_text(raw, rule).map_err(|message| self.fail(name, message))
    }

    /// A choice among string values parsed by `T::from_str`, `Ok(None)` when absent.
    pub fn optional_choice<T: std::str::FromStr>(&mut self, name: &str) -> Checked<Option<T>> {
        match self.present(name, false)? {
            Some(value) => self.choice_value(name, value).map(Some),
            None => Ok(None),
        }
    }

    /// A choice among string values parsed by `T::from_str`; `None` when absent or invalid.
    pub fn choice<T: std::str::FromStr>(&mut self, name: &str, required: bool) -> Option<T> {
        match self.present(name, required) {
            Ok(Some(value)) => self.choice_value(name, value).ok(),
            Ok(None) | Err(Failed(())) => None,
        }
    }

    fn choice_value<T: std::str::FromStr>(&mut self, name: &str, value: &Value) -> Checked<T> {
        let Value::String(raw) = value else {
            return Err(self.fail(name, NOT_A_STRING));
        };
        raw.parse()
            .map_err(|_| self.fail(name, invalid_choice(raw)))
    }

    /// A boolean field, `Ok(None)` when absent; only JSON `true`/`false` are booleans.
    pub fn optional_boolean(&mut self, name: &str) -> Checked<Option<bool>> {
        match self.present(name, false)? {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.fail(name, NOT_A_BOOLEAN)),
            None => Ok(None),
        }
    }

    /// An object field (`metadata`).
    pub fn object(&mut self, name: &str, required: bool) -> Option<JsonObject> {
        match self.present(name, required) {
            Ok(Some(Value::Object(map))) => Some(map.clone()),
            Ok(Some(other)) => {
                self.fail(name, not_a_dictionary(other));
                None
            }
            Ok(None) | Err(Failed(())) => None,
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

    /// Records a rule that failed after the type checks (uniqueness, syntax, policy), and
    /// answers the proof that it did.
    pub fn fail(&mut self, name: &str, message: impl Into<String>) -> Failed {
        self.errors.add(name, message);
        Failed(())
    }

    /// True when `name` already has an error, so later checks of it are skipped.
    pub fn failed(&self, name: &str) -> bool {
        self.errors.contains(name)
    }

    /// `Ok(())` when every field passed, otherwise the collected errors.
    pub fn finish(self) -> Result<(), Error> {
        self.errors.into_result()
    }

    /// The typed input `checked` when every field passed, otherwise the collected errors.
    /// A [`Failed`] field has always recorded its message, so the errors are never empty
    /// when `checked` failed.
    pub fn finish_with<T>(self, checked: Checked<T>) -> Result<T, Error> {
        match checked {
            Ok(value) if self.errors.is_empty() => Ok(value),
            Ok(_) | Err(Failed(())) => Err(Error::Invalid(self.errors)),
        }
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
        assert!(matches!(
            reader.optional_text("b", Text::REQUIRED),
            Ok(None)
        ));
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
        assert!(reader.optional_boolean("f").is_err());
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
    fn finish_with_gives_the_typed_value_only_when_every_field_passed() {
        let body = object(json!({"a": " x ", "b": "yes", "c": 5}));
        let mut reader = FieldReader::new(&body);
        let a = reader.required_text("a", Text::REQUIRED);
        let b = reader.optional_boolean("missing");
        assert_eq!(
            reader.finish_with(a.and_then(|a| b.map(|b| (a, b)))).ok(),
            Some(("x".to_owned(), None))
        );

        // A field that failed reports its message; so does a value that passed its own
        // checks when a later rule failed another field.
        let mut reader = FieldReader::new(&body);
        let c = reader.required_text("c", Text::REQUIRED);
        assert!(c.is_err());
        match reader.finish_with(c) {
            Err(Error::Invalid(errors)) => assert_eq!(errors.get("c"), [NOT_A_STRING]),
            other => panic!("expected field errors, got {other:?}"),
        }
        let mut reader = FieldReader::new(&body);
        let a = reader.required_text("a", Text::REQUIRED);
        let _ = reader.fail("b", "taken");
        match reader.finish_with(a) {
            Err(Error::Invalid(errors)) => assert_eq!(errors.get("b"), ["taken"]),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn check_text_gives_the_messages_the_reader_records() {
        let rule = Text::REQUIRED.max(3);
        assert_eq!(check_text("  abc ", rule), Ok("abc".to_owned()));
        assert_eq!(check_text(" ", rule), Err(BLANK.to_owned()));
        assert_eq!(check_text("abcd", rule), Err(too_long(3)));
        assert_eq!(check_text("a\u{0}", rule), Err(NUL_NOT_ALLOWED.to_owned()));
        assert_eq!(
            check_text(" a ", Text::REQUIRED_VERBATIM),
            Ok(" a ".to_owned())
        );
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
