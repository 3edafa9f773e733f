//! The `http` responder: the original design's AI service (README, Answering with a
//! language model).
//!
//! One POST per turn to `NARUTALK_AI_URL` with
//! `{"session_id", "category", "message", "history": [{"sender", "content"}]}`; the
//! service answers `{"reply": "...", "metadata"?: {...}}`. It does not stream.

use std::io::Read;
use std::time::Duration;

use serde_json::{Value, json};

use super::transport::{self, MAX_BODY_BYTES};
use super::{AiError, AiReply, AiRequest, Responder};
use crate::config::Config;
use crate::fields::JsonObject;

/// The largest `metadata` object kept from the service, as compact JSON: the API's
/// limit on a message's metadata.
const MAX_METADATA_BYTES: usize = 16_384;

/// Answers through the original design's AI service. Cheap to share between threads: it
/// holds one connection pool.
#[derive(Debug)]
pub struct HttpResponder {
    agent: ureq::Agent,
    url: String,
}

impl HttpResponder {
    /// A responder that POSTs to `url`, each whole call (connecting, sending, waiting and
    /// reading the answer) bounded by `timeout`.
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        HttpResponder {
            agent: transport::agent(timeout),
            url: url.into(),
        }
    }

    /// The responder `NARUTALK_AI_URL` and `NARUTALK_AI_TIMEOUT_SECONDS` describe.
    pub fn from_config(config: &Config) -> Self {
        HttpResponder::new(
            config.ai_url.clone(),
            Duration::from_secs(config.ai_timeout_seconds.into()),
        )
    }
}

impl Responder for HttpResponder {
    fn name(&self) -> &str {
        "http"
    }

    fn respond(
        &self,
        request: &AiRequest,
        _on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        let body = json!({
            "session_id": request.session_id.to_string(),
            "category": request.category.as_str(),
            "message": request.message,
            "history": request.history,
        });
        let response = self
            .agent
            .post(&self.url)
            .header("Accept", "application/json")
            .content_type("application/json")
            .send(body.to_string())
            .map_err(transport::call_failed)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(transport::status_failed(status));
        }
        let mut answer = Vec::new();
        response
            .into_body()
            .into_with_config()
            .limit(MAX_BODY_BYTES)
            .reader()
            .read_to_end(&mut answer)
            .map_err(|error| transport::body_failed(error, transport::MALFORMED))?;
        parse_answer(&answer)
    }
}

/// Reads `{"reply": string, "metadata"?: object|null}`; the stored metadata is the
/// service's plus `"responder": "http"`.
fn parse_answer(answer: &[u8]) -> Result<AiReply, AiError> {
    let answer: Value = serde_json::from_slice(answer)
        .map_err(|error| transport::malformed(format!("the answer is not JSON: {error}")))?;
    let Value::Object(mut answer) = answer else {
        return Err(transport::malformed("the answer is not a JSON object"));
    };
    let Some(Value::String(content)) = answer.remove("reply") else {
        return Err(transport::malformed("`reply` is missing or not a string"));
    };
    let mut metadata = match answer.remove("metadata") {
        None | Some(Value::Null) => JsonObject::new(),
        Some(Value::Object(metadata)) => metadata,
        Some(_) => return Err(transport::malformed("`metadata` is not an object")),
    };
    let metadata_bytes = serde_json::to_string(&metadata).map_or(usize::MAX, |m| m.len());
    if metadata_bytes > MAX_METADATA_BYTES {
        return Err(transport::malformed(format!(
            "`metadata` is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    metadata.insert("responder".into(), "http".into());
    Ok(AiReply { content, metadata })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::ai::fake_service::{Answer, FakeService, Gate, Step, refused_url};
    use crate::ai::{HistoryTurn, run_responder};
    use crate::chat::{Category, Sender, SessionId};

    /// The deadline of a call that should succeed: only a hang reaches it, not a busy
    /// machine.
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn request() -> AiRequest {
        AiRequest {
            session_id: SessionId::new_random(),
            category: Category::Emergency,
            history: vec![
                HistoryTurn {
                    sender: Sender::User,
                    content: "My chest hurts.".into(),
                },
                HistoryTurn {
                    sender: Sender::Ai,
                    content: "Call emergency services now.".into(),
                },
            ],
            message: "Is it serious?".into(),
        }
    }

    fn responder(service: &FakeService) -> HttpResponder {
        HttpResponder::new(service.url("/answer"), TIMEOUT)
    }

    /// Runs the responder against a service that answers every request with `answer`.
    fn outcome_of(answer: Answer) -> Result<AiReply, AiError> {
        let service = FakeService::start(move |_| answer.clone());
        let responder = responder(&service);
        run_responder(&responder, &request(), &mut |_| {})
    }

    fn reason_of(answer: Answer) -> String {
        outcome_of(answer).unwrap_err().reason().to_owned()
    }

    #[test]
    fn it_posts_the_contract_body_and_answers_the_reply_with_the_services_metadata() {
        let service = FakeService::start(|_| {
            Answer::json(
                200,
                &json!({"reply": "Yes: go now.", "metadata": {"source": "triage", "score": 0.9}}),
            )
        });
        let responder = responder(&service);
        let request = request();
        let mut deltas = Vec::new();

        let reply =
            run_responder(&responder, &request, &mut |d| deltas.push(d.to_owned())).unwrap();

        assert_eq!(reply.content, "Yes: go now.");
        assert_eq!(
            Value::Object(reply.metadata),
            json!({"source": "triage", "score": 0.9, "responder": "http"})
        );
        assert!(deltas.is_empty(), "the http responder does not stream");
        let received = service.requests();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "POST");
        assert_eq!(received[0].path, "/answer");
        assert_eq!(received[0].header("content-type"), Some("application/json"));
        assert_eq!(received[0].header("accept"), Some("application/json"));
        assert_eq!(received[0].header("authorization"), None);
        assert_eq!(
            received[0].json(),
            json!({
                "session_id": request.session_id.to_string(),
                "category": "emergency",
                "message": "Is it serious?",
                "history": [
                    {"sender": "user", "content": "My chest hurts."},
                    {"sender": "ai", "content": "Call emergency services now."},
                ],
            })
        );
    }

    #[test]
    fn without_metadata_the_reply_records_only_the_responder() {
        for answer in [
            json!({"reply": "Rest."}),
            json!({"reply": "Rest.", "metadata": null}),
        ] {
            let reply = outcome_of(Answer::json(200, &answer)).unwrap();
            assert_eq!(Value::Object(reply.metadata), json!({"responder": "http"}));
        }
    }

    #[test]
    fn the_responder_key_is_always_http() {
        let answer = json!({"reply": "Rest.", "metadata": {"responder": "gpt"}});
        let reply = outcome_of(Answer::json(200, &answer)).unwrap();
        assert_eq!(Value::Object(reply.metadata), json!({"responder": "http"}));
    }

    #[test]
    fn one_connection_serves_consecutive_turns() {
        let service = FakeService::start(|_| Answer::json(200, &json!({"reply": "ok"})));
        let responder = responder(&service);
        for _ in 0..3 {
            run_responder(&responder, &request(), &mut |_| {}).unwrap();
        }
        assert_eq!(service.requests().len(), 3);
        assert_eq!(service.connections(), 1);
    }

    #[test]
    fn an_error_status_is_http_status_from_the_ai_service() {
        for status in [400, 404, 500, 502, 503] {
            let error = outcome_of(Answer::json(status, &json!({"reply": "no", "secret": "x"})))
                .unwrap_err();
            assert_eq!(error.reason(), format!("HTTP {status} from the AI service"));
            assert_eq!(error.detail(), None);
        }
    }

    #[test]
    fn a_redirect_is_not_followed() {
        let answer =
            Answer::raw("HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(reason_of(answer), "HTTP 302 from the AI service");
    }

    #[test]
    fn answers_that_break_the_protocol_are_malformed() {
        let malformed = "malformed reply from the AI service";
        for body in [
            "{\"reply\": \"cut",
            "not json at all",
            "[\"a list\"]",
            "{}",
            "{\"reply\": 42}",
            "{\"reply\": null}",
            "{\"reply\": \"ok\", \"metadata\": [1]}",
            "{\"reply\": \"ok\", \"metadata\": \"text\"}",
        ] {
            let answer = Answer::body(200, "application/json", body);
            assert_eq!(reason_of(answer), malformed, "{body}");
        }
        let huge = json!({"reply": "ok", "metadata": {"x": "y".repeat(MAX_METADATA_BYTES)}});
        assert_eq!(reason_of(Answer::json(200, &huge)), malformed);
        assert_eq!(reason_of(Answer::raw("garbage\r\n\r\n")), malformed);
    }

    #[test]
    fn a_body_cut_short_is_malformed() {
        let answer = Answer::raw(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"reply\": ",
        );
        let error = outcome_of(answer).unwrap_err();
        assert_eq!(error.reason(), "malformed reply from the AI service");
    }

    #[test]
    fn a_blank_reply_is_an_empty_reply() {
        assert_eq!(
            reason_of(Answer::json(200, &json!({"reply": " \n"}))),
            "empty reply"
        );
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        let responder = HttpResponder::new(refused_url("/answer"), TIMEOUT);
        let error = run_responder(&responder, &request(), &mut |_| {}).unwrap_err();
        assert_eq!(error.reason(), "AI service unreachable");
        assert!(error.detail().unwrap().contains("refused"), "{error:?}");
    }

    #[test]
    fn a_service_slower_than_the_timeout_timed_out() {
        let gate = Gate::new();
        let service = FakeService::start({
            let gate = gate.clone();
            move |_| {
                Answer::steps(vec![Step::Wait(gate.clone())])
                    .then_json(200, &json!({"reply": "late"}))
            }
        });
        let responder = HttpResponder::new(service.url("/"), Duration::from_secs(1));

        let error = run_responder(&responder, &request(), &mut |_| {}).unwrap_err();
        gate.open();

        assert_eq!(error.reason(), "timed out");
    }

    #[test]
    fn a_body_that_never_ends_timed_out_at_the_deadline() {
        // Headers at once, then a byte of body every 50 ms, forever: every read makes
        // progress, so only a deadline over the whole call ends it.
        let service = FakeService::start(|_| {
            let mut steps = vec![Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"reply\": \""
                    .to_vec(),
            )];
            for _ in 0..10_000 {
                steps.push(Step::Pause(Duration::from_millis(50)));
                steps.push(Step::Send(b"x".to_vec()));
            }
            Answer::steps(steps).closing()
        });
        let responder = HttpResponder::new(service.url("/"), Duration::from_secs(1));

        let error = run_responder(&responder, &request(), &mut |_| {}).unwrap_err();

        assert_eq!(error.reason(), "timed out");
    }
}
