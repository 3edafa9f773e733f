//! The core's one error type and the field-error map it carries.
//!
//! Every public operation returns [`Error`]. Each variant says what the caller can do about
//! it, and carries exactly what a server needs to pick the API's status and body; the
//! core itself knows nothing of HTTP.

use std::collections::BTreeMap;

/// What went wrong in a core operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input broke one or more rules: field name to messages, in the API's exact
    /// words (a server answers 400 with this map as the body). Taken emails and usernames
    /// are reported here too, never as a separate conflict.
    #[error("invalid input: {0}")]
    Invalid(FieldErrors),
    /// The addressed object does not exist, or belongs to another user (404 `Not found.`).
    #[error("not found")]
    NotFound,
    /// A page number out of range or not a number (404 `Invalid page.`).
    #[error("invalid page")]
    InvalidPage,
    /// Wrong email or password, or an inactive account: one variant for every cause so
    /// that login never reveals which accounts exist (401).
    #[error("no active account found with the given credentials")]
    BadCredentials,
    /// A JWT that must not be honoured (401); see [`TokenProblem`] for simplejwt's wording.
    #[error("token rejected: {0}")]
    InvalidToken(TokenProblem),
    /// The acting user is known but may not do this (403 `You do not have permission to
    /// perform this action.`). No v1 rule returns it: roles and verification are recorded
    /// and shown but gate nothing (`docs/API.md`, Accounts). It is part of the type now so
    /// that a rule gating on role later is not a breaking change for embedders who match
    /// on [`Error`].
    #[error("permission denied")]
    PermissionDenied,
    /// Storage is busy, locked, full or unreachable, or a write could not commit
    /// within [`crate::store::WRITE_DEADLINE`]; the request may succeed later (503 with
    /// `Retry-After`). A write that answers it was not applied and never will be; the one
    /// exception is a reply the turn engine keeps to store again later ([`crate::turns`]),
    /// whose waiters hear this meanwhile.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or a damaged database (500). Its text is only `internal error`; the cause
    /// it carries is for the log, never for a client.
    #[error("internal error")]
    Internal(#[source] InternalError),
}

impl Error {
    /// An [`Error::Internal`] whose cause is `message` (for the log only).
    pub fn internal(message: impl Into<String>) -> Error {
        Error::Internal(InternalError::new(message))
    }

    /// The error with its cause, for a log line or an administrator (never for a
    /// client): the text of [`Error::Internal`] followed by what caused it, every other
    /// variant as its text.
    pub fn detail(&self) -> String {
        match self {
            Error::Internal(cause) => format!("{self}: {cause}"),
            other => other.to_string(),
        }
    }
}

/// What caused an [`Error::Internal`]: a message, and the error behind it when there is
/// one, kept for the log and never shown to a client. Its text is the message; the
/// alternate form (`{:#}`) adds every cause behind it, `message: cause: cause`.
#[derive(Debug)]
pub struct InternalError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl InternalError {
    /// A cause told by its message alone.
    pub fn new(message: impl Into<String>) -> InternalError {
        InternalError {
            message: message.into(),
            source: None,
        }
    }

    /// A cause that is another error: its text is that error's text, and the errors
    /// behind that error are its sources.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> InternalError {
        InternalError {
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// What went wrong, in one line.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for InternalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(error) = cause {
                write!(f, ": {error}")?;
                cause = error.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for InternalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // A wrapped error's own text is this cause's message: its sources come next.
        self.source.as_deref().and_then(|error| error.source())
    }
}

/// Why a token was refused. The texts are simplejwt 5.5's, which the API keeps for
/// the refresh and logout endpoints; access tokens answer one generic text for all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    /// Malformed, badly signed, of the wrong type or algorithm, or naming an unknown user.
    Invalid,
    /// Past its `exp` (no leeway).
    Expired,
    /// Rotated, reused, logged out, or issued before the user's revocation time.
    Blacklisted,
}

impl TokenProblem {
    /// simplejwt's `detail` text for a refresh token with this problem.
    pub fn detail(self) -> &'static str {
        match self {
            TokenProblem::Invalid => "Token is invalid",
            TokenProblem::Expired => "Token is expired",
            TokenProblem::Blacklisted => "Token is blacklisted",
        }
    }
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl From<FieldErrors> for Error {
    fn from(errors: FieldErrors) -> Self {
        Error::Invalid(errors)
    }
}

/// Field name to messages, as DRF reports validation errors. Cross-field errors live under
/// [`FieldErrors::NON_FIELD`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    /// The key of cross-field errors (`"Passwords do not match."`).
    pub const NON_FIELD: &'static str = "non_field_errors";

    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map holding one message under one field.
    pub fn single(field: &str, message: impl Into<String>) -> Self {
        let mut errors = Self::new();
        errors.add(field, message);
        errors
    }

    /// Appends `message` to the messages of `field`.
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// True when no field has a message.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `field` has at least one message.
    pub fn contains(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// The messages of `field`, empty when it has none.
    pub fn get(&self, field: &str) -> &[String] {
        self.0.get(field).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every field and its messages, in field-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// `Ok(())` when empty, otherwise `Err(Error::Invalid(self))`.
    pub fn into_result(self) -> Result<(), Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(self))
        }
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (field, messages) in &self.0 {
            for message in messages {
                if !first {
                    f.write_str("; ")?;
                }
                first = false;
                write!(f, "{field}: {message}")?;
            }
        }
        Ok(())
    }
}
