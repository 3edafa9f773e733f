//! The AI responder: the trait that produces a reply (`docs/API.md`, Chat) and its
//! three implementations, chosen by `NARUTALK_AI_BACKEND`: the built-in `template`
//! ([`TemplateResponder`]), the original design's AI service (`http`,
//! [`http::HttpResponder`]) and any OpenAI-compatible chat completions endpoint (`openai`,
//! [`openai::OpenAiResponder`]), whose answer is streamed.
//!
//! The trait is synchronous and object-safe, so that a server can hold an
//! `Arc<dyn Responder>` and run it on a blocking thread while holding no database
//! connection. A responder that streams reports partial text through the `on_delta`
//! callback as it produces it; the deltas of one reply add up to its final content.
//!
//! The network responders use a blocking HTTP client (ureq), so they need no async
//! runtime: an embedder or the CLI gets them as they are. Each bounds its whole call,
//! body included, by `NARUTALK_AI_TIMEOUT_SECONDS`, and each failure becomes an
//! [`AiError`] with one of these short reasons: `timed out`, `AI service unreachable`,
//! `HTTP <status> from the AI service`, `malformed reply from the AI service`,
//! `the AI stream was cut off`, `the AI service reported an error`. Whatever the
//! responder, [`run_responder`] adds `responder failed` and `empty reply`, and a turn the
//! AI pool ([`pool`]) has no room for fails with [`ASSISTANT_BUSY`].

pub mod http;
pub mod openai;
pub mod pool;
mod sse;
mod transport;

#[cfg(test)]
mod fake_service;

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;

use crate::chat::{Category, Sender, SessionId};
use crate::fields::JsonObject;

/// The stored reason of a turn refused because the AI pool was full: every responder
/// place taken and 1,024 turns already waiting.
pub const ASSISTANT_BUSY: &str = "assistant busy";

/// What a responder gets for one turn.
#[derive(Clone, Debug, PartialEq)]
pub struct AiRequest {
    /// The session being answered.
    pub session_id: SessionId,
    /// The session's category.
    pub category: Category,
    /// The last N messages stored before the new one, oldest first, without system
    /// messages.
    pub history: Vec<HistoryTurn>,
    /// The new user message.
    pub message: String,
}

/// One earlier message given to the responder as context. Serializes as an item of the
/// `http` AI service's `history` (`{"sender", "content"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryTurn {
    /// `user` or `ai`.
    pub sender: Sender,
    /// Its content.
    pub content: String,
}

/// A responder's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AiReply {
    /// The reply text, stored as the AI message's content.
    pub content: String,
    /// Stored as the AI message's metadata.
    pub metadata: JsonObject,
}

/// Why a responder produced no reply. The reason is short and safe to store and show:
/// it becomes the system error message's `{"reason": ...}`. The optional detail says more
/// for the log (never stored, never shown to the user); it never holds a key, a URL's
/// credentials or the service's answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AiError {
    reason: String,
    detail: Option<String>,
}

impl AiError {
    /// An error with a short cause such as `timed out` or `HTTP 502 from the AI service`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: None,
        }
    }

    /// The same error with `detail` for the log, such as `network: Connection refused
    /// (os error 111)`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The short cause.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// What the log may add to the reason, if anything.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

/// Produces a reply to one user message. Implementations must be cheap to share across
/// threads and must bound their own run time (`NARUTALK_AI_TIMEOUT_SECONDS`).
pub trait Responder: Send + Sync {
    /// A short name for logs and health (`template`, `http`, `openai`).
    fn name(&self) -> &str;

    /// Answers `request`, calling `on_delta` with each piece of text as it is produced
    /// (never, for a responder that does not stream).
    fn respond(
        &self,
        request: &AiRequest,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError>;

    /// Whether this responder answers from memory at once, waiting on nothing (no network,
    /// no disk, no sleep). The turn engine then answers a fresh post's turn on the posting
    /// thread instead of handing it to the AI pool: the pool bounds responders that wait,
    /// and a thread hop would only add latency to one that does not. The default, `false`,
    /// is right for any responder that calls a model.
    fn answers_at_once(&self) -> bool {
        false
    }
}

/// Runs a responder and turns everything that is not a usable reply into an [`AiError`]:
/// a panic (`responder failed`) or an empty reply (`empty reply`). NUL characters are
/// dropped from the reply (no stored text holds one: the rules refuse them in what users
/// write, and PostgreSQL cannot store them). The server and the convenience turn both
/// call this, never `respond` directly.
pub fn run_responder(
    responder: &dyn Responder,
    request: &AiRequest,
    on_delta: &mut dyn FnMut(&str),
) -> Result<AiReply, AiError> {
    let mut reply = catch_unwind(AssertUnwindSafe(|| responder.respond(request, on_delta)))
        .unwrap_or_else(|_| Err(AiError::new("responder failed")))?;
    if reply.content.contains('\0') {
        reply.content.retain(|c| c != '\0');
    }
    if reply.content.trim().is_empty() {
        return Err(AiError::new("empty reply"));
    }
    Ok(reply)
}

/// The embedded default: a deterministic reply in the original design's spirit, needing
/// nothing. It does not stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct TemplateResponder;

impl TemplateResponder {
    /// The reply for `message`: `AI 응답: {message}에 대한 의료 정보를 제공합니다.`
    pub fn reply_for(message: &str) -> String {
        format!("AI 응답: {message}에 대한 의료 정보를 제공합니다.")
    }
}

impl Responder for TemplateResponder {
    fn name(&self) -> &str {
        "template"
    }

    fn respond(
        &self,
        request: &AiRequest,
        _on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        let mut metadata = JsonObject::new();
        metadata.insert("responder".into(), "template".into());
        Ok(AiReply {
            content: Self::reply_for(&request.message),
            metadata,
        })
    }

    /// A string template: nothing to wait for.
    fn answers_at_once(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(message: &str) -> AiRequest {
        AiRequest {
            session_id: SessionId::new_random(),
            category: Category::Medical,
            history: Vec::new(),
            message: message.into(),
        }
    }

    #[test]
    fn template_replies_with_the_seed_sentence() {
        let reply = run_responder(&TemplateResponder, &request("두통"), &mut |_| {}).unwrap();
        assert_eq!(
            reply.content,
            "AI 응답: 두통에 대한 의료 정보를 제공합니다."
        );
        assert_eq!(reply.metadata.get("responder").unwrap(), "template");
    }

    struct Panicking;
    impl Responder for Panicking {
        fn name(&self) -> &str {
            "panicking"
        }
        fn respond(&self, _: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
            panic!("boom")
        }
    }

    struct Blank;
    impl Responder for Blank {
        fn name(&self) -> &str {
            "blank"
        }
        fn respond(&self, _: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
            Ok(AiReply {
                content: "  \n".into(),
                metadata: JsonObject::new(),
            })
        }
    }

    #[test]
    fn a_panicking_responder_becomes_an_error_not_a_crash() {
        let error = run_responder(&Panicking, &request("x"), &mut |_| {}).unwrap_err();
        assert_eq!(error.reason(), "responder failed");
    }

    #[test]
    fn a_blank_reply_counts_as_nonsense() {
        let error = run_responder(&Blank, &request("x"), &mut |_| {}).unwrap_err();
        assert_eq!(error.reason(), "empty reply");
    }

    struct Nul(&'static str);
    impl Responder for Nul {
        fn name(&self) -> &str {
            "nul"
        }
        fn respond(&self, _: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
            Ok(AiReply {
                content: self.0.into(),
                metadata: JsonObject::new(),
            })
        }
    }

    #[test]
    fn nul_characters_are_dropped_from_a_reply_and_a_reply_of_only_nuls_is_empty() {
        let reply = run_responder(&Nul("a\0b\0"), &request("x"), &mut |_| {}).unwrap();
        assert_eq!(reply.content, "ab");
        let error = run_responder(&Nul("\0\0"), &request("x"), &mut |_| {}).unwrap_err();
        assert_eq!(error.reason(), "empty reply");
    }
}
