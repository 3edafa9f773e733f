//! The `openai` responder: any OpenAI-compatible chat completions endpoint (Ollama, vLLM,
//! llama.cpp server, hosted APIs), streamed (README, Answering with a language model).
//!
//! One POST per turn to `{NARUTALK_AI_URL}/chat/completions` with the model, the
//! messages (the system prompt with the session's category, the history as `user` and
//! `assistant` turns, the new message), `"stream": true`, the temperature and the token
//! limit. The answer is a server-sent event stream of completion chunks: each chunk's
//! `choices[0].delta.content` is passed to `on_delta` as it arrives, and `data: [DONE]`
//! ends the stream. A service that ignores `stream` and answers one JSON completion is
//! accepted too.

use std::io::Read;
use std::time::Duration;

use serde_json::{Value, json};

use super::sse::{SseEvent, SseParser};
use super::transport::{self, MAX_BODY_BYTES};
use super::{AiError, AiReply, AiRequest, Responder};
use crate::chat::Sender;
use crate::config::{Config, Secret};
use crate::fields::JsonObject;

/// Answers through an OpenAI-compatible chat completions API, streaming. Cheap to share
/// between threads: it holds one connection pool.
#[derive(Debug)]
pub struct OpenAiResponder {
    agent: ureq::Agent,
    /// `{base URL}/chat/completions`.
    endpoint: String,
    model: String,
    api_key: Option<Secret>,
    system_prompt: String,
    temperature: f64,
    max_tokens: u32,
}

impl OpenAiResponder {
    /// The responder the `NARUTALK_AI_*` settings describe: base URL (a trailing `/` is
    /// ignored), model, key (sent as `Authorization: Bearer` only when set), system prompt
    /// (`{category}` becomes the session's category), temperature, token limit and the
    /// timeout of each whole call, stream included.
    pub fn from_config(config: &Config) -> Self {
        OpenAiResponder {
            agent: transport::agent(Duration::from_secs(config.ai_timeout_seconds.into())),
            endpoint: format!(
                "{}/chat/completions",
                config.ai_url.strip_suffix('/').unwrap_or(&config.ai_url)
            ),
            model: config.ai_model.clone(),
            api_key: config.ai_api_key.clone(),
            system_prompt: config.ai_system_prompt.clone(),
            temperature: config.ai_temperature,
            max_tokens: config.ai_max_tokens,
        }
    }

    /// The request body for `request`.
    fn body(&self, request: &AiRequest) -> Value {
        let system = self
            .system_prompt
            .replace("{category}", request.category.as_str());
        let mut messages = vec![json!({"role": "system", "content": system})];
        for turn in &request.history {
            let role = match turn.sender {
                Sender::User => "user",
                Sender::Ai => "assistant",
                // The contract gives no system message as history; an embedder's would
                // be the server's own notices, not part of the conversation.
                Sender::System => continue,
            };
            messages.push(json!({"role": role, "content": turn.content}));
        }
        messages.push(json!({"role": "user", "content": request.message}));
        json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        })
    }
}

impl Responder for OpenAiResponder {
    fn name(&self) -> &str {
        "openai"
    }

    fn respond(
        &self,
        request: &AiRequest,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        let mut call = self
            .agent
            .post(&self.endpoint)
            .header("Accept", "text/event-stream")
            .content_type("application/json");
        if let Some(key) = &self.api_key {
            call = call.header("Authorization", format!("Bearer {}", key.expose()));
        }
        let response = call
            .send(self.body(request).to_string())
            .map_err(transport::call_failed)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(transport::status_failed(status));
        }
        let body = response.into_body();
        let mime_type = body.mime_type().map(|m| m.trim().to_ascii_lowercase());
        let mut reader = body.into_with_config().limit(MAX_BODY_BYTES).reader();
        let mut reply = Reply::new(&self.model);
        match mime_type.as_deref() {
            Some("application/json") => {
                let mut answer = Vec::new();
                reader
                    .read_to_end(&mut answer)
                    .map_err(|error| transport::body_failed(error, transport::MALFORMED))?;
                reply.take_completion(&answer)?;
            }
            None | Some("text/event-stream") => read_stream(&mut reader, &mut reply, on_delta)?,
            Some(_) => {
                return Err(transport::malformed(
                    "the answer is neither an event stream nor JSON",
                ));
            }
        }
        Ok(reply.finish())
    }
}

/// Reads an event stream into `reply`, passing each piece of text to `on_delta`, until
/// `[DONE]`. A stream that ends before `[DONE]` counts as complete only when a chunk said
/// why it finished (`finish_reason`); otherwise it was cut off, even if text arrived.
fn read_stream(
    reader: &mut impl Read,
    reply: &mut Reply,
    on_delta: &mut dyn FnMut(&str),
) -> Result<(), AiError> {
    let mut parser = SseParser::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(transport::body_failed(error, transport::CUT_OFF)),
        };
        let events = parser
            .feed(&buffer[..read])
            .map_err(|error| transport::malformed(error.to_string()))?;
        for event in events {
            if reply.take_event(event, on_delta)? == Flow::Done {
                return Ok(());
            }
        }
    }
    if let Some(event) = parser.finish()
        && reply.take_event(event, on_delta)? == Flow::Done
    {
        return Ok(());
    }
    if reply.finish_reason.is_some() {
        return Ok(());
    }
    Err(AiError::new(transport::CUT_OFF).with_detail(format!(
        "the stream ended before [DONE] after {} bytes of text",
        reply.content.len()
    )))
}

/// Whether the stream goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

/// A reply being gathered from the service's chunks.
#[derive(Debug)]
struct Reply {
    content: String,
    /// The model the service reported, else the configured one.
    model: String,
    finish_reason: Option<String>,
    usage: Option<Value>,
}

impl Reply {
    fn new(configured_model: &str) -> Self {
        Reply {
            content: String::new(),
            model: configured_model.to_owned(),
            finish_reason: None,
            usage: None,
        }
    }

    /// Takes one event of the stream.
    fn take_event(
        &mut self,
        event: SseEvent,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Flow, AiError> {
        if event.event.as_deref() == Some("error") {
            return Err(service_error("an error event in the stream"));
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Flow::Done);
        }
        if data.is_empty() {
            return Ok(Flow::More);
        }
        let chunk = completion_object(data.as_bytes(), "a stream chunk")?;
        self.take_common(&chunk);
        if let Some(choice) = first_choice(&chunk)? {
            let piece = match choice.get("delta") {
                None | Some(Value::Null) => None,
                Some(Value::Object(delta)) => text_field(delta, "content", "delta")?,
                Some(_) => return Err(transport::malformed("a chunk's `delta` is not an object")),
            };
            if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                self.content.push_str(piece);
                on_delta(piece);
            }
            self.take_finish_reason(choice)?;
        }
        Ok(Flow::More)
    }

    /// Takes a whole chat completion (a service that does not stream).
    fn take_completion(&mut self, answer: &[u8]) -> Result<(), AiError> {
        let completion = completion_object(answer, "the completion")?;
        self.take_common(&completion);
        let choice = first_choice(&completion)?
            .ok_or_else(|| transport::malformed("the completion has no choices"))?;
        let content = match choice.get("message") {
            Some(Value::Object(message)) => text_field(message, "content", "message")?,
            _ => {
                return Err(transport::malformed(
                    "the completion has no `message` object",
                ));
            }
        };
        let content =
            content.ok_or_else(|| transport::malformed("the completion's message has no text"))?;
        self.content = content.to_owned();
        self.take_finish_reason(choice)
    }

    /// The model and the usage, wherever the service sends them.
    fn take_common(&mut self, object: &JsonObject) {
        if let Some(Value::String(model)) = object.get("model")
            && !model.is_empty()
        {
            self.model.clone_from(model);
        }
        if let Some(usage @ Value::Object(_)) = object.get("usage") {
            self.usage = Some(usage.clone());
        }
    }

    fn take_finish_reason(&mut self, choice: &JsonObject) -> Result<(), AiError> {
        match choice.get("finish_reason") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(reason)) => {
                self.finish_reason = Some(reason.clone());
                Ok(())
            }
            Some(_) => Err(transport::malformed("`finish_reason` is not a string")),
        }
    }

    fn finish(self) -> AiReply {
        let mut metadata = JsonObject::new();
        metadata.insert("responder".into(), "openai".into());
        metadata.insert("model".into(), self.model.into());
        metadata.insert(
            "finish_reason".into(),
            self.finish_reason.map_or(Value::Null, Value::String),
        );
        if let Some(usage) = self.usage {
            metadata.insert("usage".into(), usage);
        }
        AiReply {
            content: self.content,
            metadata,
        }
    }
}

/// Parses `bytes` as a JSON object that is not an error report.
fn completion_object(bytes: &[u8], what: &str) -> Result<JsonObject, AiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| transport::malformed(format!("{what} is not JSON: {error}")))?;
    let Value::Object(object) = value else {
        return Err(transport::malformed(format!("{what} is not a JSON object")));
    };
    // OpenAI, Ollama and llama.cpp send `{"error": {...}}`; older vLLM sends
    // `{"object": "error", ...}`.
    if object.contains_key("error") || object.get("object").and_then(Value::as_str) == Some("error")
    {
        return Err(service_error(&format!("an error object as {what}")));
    }
    Ok(object)
}

/// `choices[0]` as an object; `None` for a chunk without choices (such as a usage chunk).
fn first_choice(object: &JsonObject) -> Result<Option<&JsonObject>, AiError> {
    match object.get("choices") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(choices)) => match choices.first() {
            None => Ok(None),
            Some(Value::Object(choice)) => Ok(Some(choice)),
            Some(_) => Err(transport::malformed("`choices[0]` is not an object")),
        },
        Some(_) => Err(transport::malformed("`choices` is not a list")),
    }
}

/// `object[field]` as text: a string, or `None` when missing or null.
fn text_field<'a>(
    object: &'a JsonObject,
    field: &str,
    owner: &str,
) -> Result<Option<&'a str>, AiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(transport::malformed(format!(
            "the {owner}'s `{field}` is not a string"
        ))),
    }
}

fn service_error(detail: &str) -> AiError {
    AiError::new(transport::SERVICE_ERROR).with_detail(detail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::ai::fake_service::{
        Answer, FakeService, Gate, OPENAI_DONE, Received, Step, openai_delta, openai_finish,
        openai_stream, refused_url,
    };
    use crate::ai::{HistoryTurn, run_responder};
    use crate::chat::{Category, SessionId};
    use crate::config::AiBackend;

    const SYSTEM_PROMPT: &str = "Be careful with {category} questions ({category}).";

    fn config(url: &str) -> Config {
        Config {
            ai_backend: AiBackend::Openai,
            ai_url: url.to_owned(),
            ai_model: "configured-model".to_owned(),
            ai_system_prompt: SYSTEM_PROMPT.to_owned(),
            ai_temperature: 0.7,
            ai_max_tokens: 300,
            // Only a hang reaches it, not a busy machine; the timeout tests set their own.
            ai_timeout_seconds: 30,
            ..Config::default()
        }
    }

    fn request() -> AiRequest {
        AiRequest {
            session_id: SessionId::new_random(),
            category: Category::Consultation,
            history: vec![
                HistoryTurn {
                    sender: Sender::User,
                    content: "I sleep badly.".into(),
                },
                HistoryTurn {
                    sender: Sender::Ai,
                    content: "Since when?".into(),
                },
                HistoryTurn {
                    sender: Sender::User,
                    content: "A month.".into(),
                },
            ],
            message: "What can I do?".into(),
        }
    }

    /// Runs a responder configured by `configure` against a fake that answers every
    /// request with `answer`; answers the outcome, the deltas and the requests received.
    fn run_with(
        answer: Answer,
        configure: impl FnOnce(&mut Config),
    ) -> (Result<AiReply, AiError>, Vec<String>, Vec<Received>) {
        let service = FakeService::start(move |_| answer.clone());
        let mut config = config(&service.url("/v1"));
        configure(&mut config);
        let responder = OpenAiResponder::from_config(&config);
        let mut deltas = Vec::new();
        let outcome = run_responder(&responder, &request(), &mut |delta| {
            deltas.push(delta.to_owned());
        });
        (outcome, deltas, service.requests())
    }

    fn run(answer: Answer) -> (Result<AiReply, AiError>, Vec<String>) {
        let (outcome, deltas, _) = run_with(answer, |_| {});
        (outcome, deltas)
    }

    fn reason_of(answer: Answer) -> String {
        run(answer).0.unwrap_err().reason().to_owned()
    }

    #[test]
    fn it_streams_each_piece_and_answers_their_sum_with_the_reported_model() {
        let (outcome, deltas, received) =
            run_with(openai_stream(&["Try ", "a fixed ", "bedtime."]), |_| {});

        let reply = outcome.unwrap();
        assert_eq!(deltas, ["Try ", "a fixed ", "bedtime."]);
        assert_eq!(reply.content, "Try a fixed bedtime.");
        assert_eq!(
            Value::Object(reply.metadata),
            json!({
                "responder": "openai",
                "model": "fake-model",
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            })
        );
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "POST");
        assert_eq!(received[0].path, "/v1/chat/completions");
    }

    #[test]
    fn it_posts_the_model_the_prompt_with_the_category_the_history_and_the_sampling() {
        let (_, _, received) = run_with(openai_stream(&["ok"]), |_| {});

        assert_eq!(received[0].header("content-type"), Some("application/json"));
        assert_eq!(received[0].header("accept"), Some("text/event-stream"));
        assert_eq!(received[0].header("authorization"), None);
        assert_eq!(
            received[0].json(),
            json!({
                "model": "configured-model",
                "messages": [
                    {"role": "system", "content": "Be careful with consultation questions (consultation)."},
                    {"role": "user", "content": "I sleep badly."},
                    {"role": "assistant", "content": "Since when?"},
                    {"role": "user", "content": "A month."},
                    {"role": "user", "content": "What can I do?"},
                ],
                "stream": true,
                "temperature": 0.7,
                "max_tokens": 300,
            })
        );
    }

    #[test]
    fn the_key_is_sent_as_a_bearer_token_and_a_trailing_slash_is_dropped() {
        let (outcome, _, received) = run_with(openai_stream(&["ok"]), |c| {
            c.ai_url.push('/');
            c.ai_api_key = Some(Secret::new("sk-local-123"));
        });

        outcome.unwrap();
        assert_eq!(received[0].path, "/v1/chat/completions");
        assert_eq!(
            received[0].header("authorization"),
            Some("Bearer sk-local-123")
        );
    }

    #[test]
    fn a_refusal_never_shows_the_key() {
        let (outcome, _, _) = run_with(
            Answer::json(401, &json!({"error": {"message": "bad key sk-local-123"}})),
            |c| c.ai_api_key = Some(Secret::new("sk-local-123")),
        );

        let error = outcome.unwrap_err();
        assert_eq!(error.reason(), "HTTP 401 from the AI service");
        assert!(!format!("{error:?}").contains("sk-local"));
    }

    #[test]
    fn the_same_stream_split_anywhere_gives_the_same_reply() {
        let events = format!(
            ": ping\r\n\r\n{}{}{}{}{}",
            openai_delta("두통에는 "),
            openai_delta("휴식이 "),
            openai_delta("좋아요."),
            openai_finish("stop"),
            OPENAI_DONE
        )
        .replace("\n\n", "\r\n\r\n");
        let bytes = events.as_bytes();
        for size in [1, 2, 3, 7, 64, bytes.len()] {
            let mut stream = Answer::stream();
            for piece in bytes.chunks(size) {
                // Each HTTP chunk may end inside a line or a multi-byte character.
                stream = stream.chunk_bytes(piece);
            }
            let (outcome, deltas) = run(stream.end());
            assert_eq!(
                outcome.unwrap().content,
                "두통에는 휴식이 좋아요.",
                "{size}"
            );
            assert_eq!(deltas, ["두통에는 ", "휴식이 ", "좋아요."], "{size}");
        }
    }

    #[test]
    fn deltas_arrive_while_the_stream_is_still_open() {
        let gate = Gate::new();
        let answer = Answer::stream()
            .chunk(&openai_delta("first"))
            .wait(&gate)
            .chunk(&openai_delta(" second"))
            .chunk(&openai_finish("stop"))
            .chunk(OPENAI_DONE)
            .end();
        let service = FakeService::start(move |_| answer.clone());
        let responder = OpenAiResponder::from_config(&config(&service.url("/v1")));

        let reply = run_responder(&responder, &request(), &mut |delta| {
            // The second piece is behind the gate: the first reached us before it.
            if delta == "first" {
                gate.open();
            }
        })
        .unwrap();

        assert_eq!(reply.content, "first second");
    }

    #[test]
    fn empty_and_missing_pieces_are_not_deltas() {
        let role_only = "data: {\"model\": \"m\", \"choices\": [{\"index\": 0, \"delta\": {\"role\": \"assistant\", \"content\": \"\"}}]}\n\n";
        let no_delta =
            "data: {\"model\": \"m\", \"choices\": [{\"index\": 0, \"finish_reason\": null}]}\n\n";
        let usage_only =
            "data: {\"model\": \"m\", \"choices\": [], \"usage\": {\"total_tokens\": 5}}\n\n";
        let (outcome, deltas) = run(Answer::sse(&[
            role_only,
            &openai_delta("Sleep."),
            no_delta,
            &openai_finish("length"),
            usage_only,
            OPENAI_DONE,
        ]));

        let reply = outcome.unwrap();
        assert_eq!(deltas, ["Sleep."]);
        assert_eq!(reply.metadata["finish_reason"], "length");
        assert_eq!(reply.metadata["model"], "m");
        assert_eq!(reply.metadata["usage"], json!({"total_tokens": 5}));
    }

    #[test]
    fn without_a_reported_model_or_finish_reason_the_metadata_says_so() {
        let chunk = "data: {\"choices\": [{\"delta\": {\"content\": \"Hi\"}}]}\n\n";
        let (outcome, _) = run(Answer::sse(&[chunk, OPENAI_DONE]));

        assert_eq!(
            Value::Object(outcome.unwrap().metadata),
            json!({"responder": "openai", "model": "configured-model", "finish_reason": null})
        );
    }

    #[test]
    fn a_stream_with_a_finish_reason_but_no_done_is_complete() {
        let (outcome, _) = run(Answer::sse(&[&openai_delta("Hi"), &openai_finish("stop")]));
        assert_eq!(outcome.unwrap().content, "Hi");
    }

    #[test]
    fn content_types_with_parameters_are_understood() {
        // As vLLM and FastAPI send them.
        let stream = Answer::stream_of_type("text/event-stream; charset=utf-8")
            .chunk(&openai_delta("Hi"))
            .chunk(OPENAI_DONE)
            .end();
        assert_eq!(run(stream).0.unwrap().content, "Hi");
        let completion =
            json!({"choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}]});
        let json = Answer::body(
            200,
            "Application/JSON ; charset=utf-8",
            &completion.to_string(),
        );
        assert_eq!(run(json).0.unwrap().content, "Hello");
    }

    #[test]
    fn done_without_its_blank_line_at_the_very_end_still_ends_the_stream() {
        let (outcome, _) = run(Answer::sse(&[&openai_delta("Hi"), "data: [DONE]\n"]));
        assert_eq!(outcome.unwrap().content, "Hi");
    }

    #[test]
    fn done_ends_the_reply_even_if_the_service_keeps_the_stream_open() {
        // After [DONE] the body never ends: were the responder to wait for its end, it
        // would time out.
        let gate = Gate::new();
        let answer = Answer::stream()
            .chunk(&openai_delta("Hi"))
            .chunk(OPENAI_DONE)
            .wait(&gate)
            .end();
        let (outcome, _) = run(answer);
        gate.open();
        assert_eq!(outcome.unwrap().content, "Hi");
    }

    #[test]
    fn a_whole_json_completion_is_accepted_from_a_service_that_does_not_stream() {
        let completion = json!({
            "id": "chatcmpl-9", "object": "chat.completion", "model": "served-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Drink water."}, "finish_reason": "stop"}],
            "usage": {"total_tokens": 9},
        });
        let (outcome, deltas) = run(Answer::json(200, &completion));

        let reply = outcome.unwrap();
        assert_eq!(reply.content, "Drink water.");
        assert!(deltas.is_empty());
        assert_eq!(
            Value::Object(reply.metadata),
            json!({"responder": "openai", "model": "served-model", "finish_reason": "stop", "usage": {"total_tokens": 9}})
        );
    }

    #[test]
    fn a_stream_that_ends_before_done_was_cut_off_even_with_text() {
        let cut = "the AI stream was cut off";
        // The connection closes between two chunks, without the last chunk of the body.
        let between_chunks = Answer::stream()
            .chunk(&openai_delta("Half "))
            .chunk(&openai_delta("an answer"))
            .cut();
        assert_eq!(reason_of(between_chunks), cut);
        // The connection closes inside a chunk.
        let inside_a_chunk = Answer::raw(&format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}",
            openai_delta("Half").len() + 100,
            openai_delta("Half")
        ));
        assert_eq!(reason_of(inside_a_chunk), cut);
        // The body ends properly, but the stream has no [DONE] and no finish reason.
        let ended_early = Answer::sse(&[&openai_delta("Half "), &openai_delta("an answer")]);
        let (outcome, deltas) = run(ended_early);
        assert_eq!(outcome.unwrap_err().reason(), cut);
        assert_eq!(deltas, ["Half ", "an answer"]);
        // A body delimited by the end of the connection, ending inside an event.
        let close_delimited = Answer::raw(&format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n{}data: {{\"choi",
            openai_delta("Half")
        ));
        assert_eq!(reason_of(close_delimited), cut);
    }

    #[test]
    fn an_error_event_is_the_service_reporting_an_error() {
        let reported = "the AI service reported an error";
        let error_object =
            "data: {\"error\": {\"message\": \"model overloaded\", \"code\": 503}}\n\n";
        assert_eq!(
            reason_of(Answer::sse(&[&openai_delta("Hal"), error_object])),
            reported
        );
        let vllm_style = "data: {\"object\": \"error\", \"message\": \"too long\"}\n\n";
        assert_eq!(reason_of(Answer::sse(&[vllm_style])), reported);
        let typed = "event: error\ndata: {\"message\": \"stopped\"}\n\n";
        assert_eq!(reason_of(Answer::sse(&[typed])), reported);
        let whole = json!({"error": {"message": "no such model"}});
        assert_eq!(reason_of(Answer::json(200, &whole)), reported);
    }

    #[test]
    fn chunks_that_break_the_protocol_are_malformed() {
        let malformed = "malformed reply from the AI service";
        for chunk in [
            "data: {\"choices\": [{\"delta\": {\"content\": \"cut\"\n\n",
            "data: not json\n\n",
            "data: [1, 2]\n\n",
            "data: {\"choices\": {}}\n\n",
            "data: {\"choices\": [\"text\"]}\n\n",
            "data: {\"choices\": [{\"delta\": \"text\"}]}\n\n",
            "data: {\"choices\": [{\"delta\": {\"content\": 7}}]}\n\n",
            "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": 1}]}\n\n",
        ] {
            assert_eq!(
                reason_of(Answer::sse(&[&openai_delta("a"), chunk, OPENAI_DONE])),
                malformed,
                "{chunk}"
            );
        }
        let mut not_utf8 = Answer::stream().chunk_bytes(b"data: \xff\n\n");
        not_utf8 = not_utf8.chunk(OPENAI_DONE);
        assert_eq!(reason_of(not_utf8.end()), malformed);
        for completion in [
            json!({"choices": []}),
            json!({"choices": [{"message": {"content": null}}]}),
            json!({"choices": [{"text": "legacy"}]}),
            json!("text"),
        ] {
            assert_eq!(
                reason_of(Answer::json(200, &completion)),
                malformed,
                "{completion}"
            );
        }
        assert_eq!(
            reason_of(Answer::body(200, "text/html", "<html>hello</html>")),
            malformed
        );
    }

    #[test]
    fn a_stream_of_no_text_is_an_empty_reply() {
        assert_eq!(
            reason_of(Answer::sse(&[&openai_finish("stop"), OPENAI_DONE])),
            "empty reply"
        );
    }

    #[test]
    fn an_error_status_is_http_status_from_the_ai_service() {
        for status in [400, 404, 429, 500, 503] {
            let answer = Answer::json(status, &json!({"error": {"message": "x"}}));
            assert_eq!(
                reason_of(answer),
                format!("HTTP {status} from the AI service")
            );
        }
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        let responder = OpenAiResponder::from_config(&config(&refused_url("/v1")));
        let error = run_responder(&responder, &request(), &mut |_| {}).unwrap_err();
        assert_eq!(error.reason(), "AI service unreachable");
    }

    #[test]
    fn a_service_that_answers_later_than_the_timeout_timed_out() {
        let gate = Gate::new();
        // Nothing at all, or the headers and then nothing, until the gate opens.
        let silent =
            Answer::steps(vec![Step::Wait(gate.clone())]).then_answer(openai_stream(&["late"]));
        let headers_only = Answer::stream()
            .wait(&gate)
            .chunk(&openai_delta("late"))
            .chunk(OPENAI_DONE)
            .end();
        for answer in [silent, headers_only] {
            let (outcome, deltas, _) = run_with(answer, |c| c.ai_timeout_seconds = 1);
            assert_eq!(outcome.unwrap_err().reason(), "timed out");
            assert!(deltas.is_empty());
        }
        gate.open();
    }

    #[test]
    fn a_stream_that_never_ends_timed_out_at_the_deadline_with_its_text_so_far() {
        // A piece every 50 ms, forever: every read makes progress, so only a deadline over
        // the whole call, body included, ends it.
        let mut stream = Answer::stream();
        for _ in 0..10_000 {
            stream = stream
                .chunk(&openai_delta("and "))
                .pause(Duration::from_millis(50));
        }
        // Long enough for the first piece, sent at once, to arrive on a busy machine.
        let (outcome, deltas, _) = run_with(stream.end(), |c| c.ai_timeout_seconds = 5);

        assert_eq!(outcome.unwrap_err().reason(), "timed out");
        assert!(!deltas.is_empty(), "pieces arrived before the deadline");
    }
}
