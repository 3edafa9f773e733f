//! What the `http` and `openai` responders share: the blocking HTTP client, and how its
//! failures become the short reasons stored in the system error message.
//!
//! The client is one `ureq::Agent` per responder: it keeps connections to the service
//! open between turns, and bounds every call, from connecting to the last byte of the
//! body, by one deadline (its global timeout; ureq checks it on every read of the
//! body, so a service that streams forever is cut off at the deadline too).

use std::io;
use std::time::Duration;

use super::AiError;

/// The reason for a call that did not finish within `NARUTALK_AI_TIMEOUT_SECONDS`.
pub const TIMED_OUT: &str = "timed out";
/// The reason for a service that could not be reached (refused, name unknown, no route).
pub const UNREACHABLE: &str = "AI service unreachable";
/// The reason for an answer that is not what the protocol says.
pub const MALFORMED: &str = "malformed reply from the AI service";
/// The reason for a streamed answer that ended before its end.
pub const CUT_OFF: &str = "the AI stream was cut off";
/// The reason for a service that answered with an error object instead of a reply.
pub const SERVICE_ERROR: &str = "the AI service reported an error";

/// The largest answer read from a service, in bytes: far above any real reply, low
/// enough that a broken service cannot exhaust memory.
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// An agent whose every call ends within `timeout`: the status of the answer is read
/// (never turned into an error), redirects are not followed (a redirected POST is a
/// misconfiguration to report, not to guess at), and the standard proxy variables
/// (`HTTPS_PROXY`, `NO_PROXY`, ...) apply.
pub fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("narutalk/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

/// The error of a call that produced no answer (connecting, sending, or reading the
/// status line and headers).
pub fn call_failed(error: ureq::Error) -> AiError {
    match error {
        ureq::Error::Timeout(phase) => timed_out(phase),
        ureq::Error::Io(error) if error.kind() == io::ErrorKind::TimedOut => {
            AiError::new(TIMED_OUT).with_detail(format!("network: {error}"))
        }
        ureq::Error::Protocol(error) => {
            AiError::new(MALFORMED).with_detail(format!("not an HTTP answer: {error}"))
        }
        ureq::Error::LargeResponseHeader(..) => {
            AiError::new(MALFORMED).with_detail("the answer's headers are too large")
        }
        other => AiError::new(UNREACHABLE).with_detail(describe(&other)),
    }
}

/// The error of an answer with a status other than 2xx.
pub fn status_failed(status: u16) -> AiError {
    AiError::new(format!("HTTP {status} from the AI service"))
}

/// The error of a failed read of an answer's body: a timeout is `timed out`, a body
/// larger than [`MAX_BODY_BYTES`] is malformed, and anything else (the connection
/// closed or reset, broken chunked encoding) is `broken`.
pub fn body_failed(error: io::Error, broken: &'static str) -> AiError {
    match ureq::Error::from(error) {
        ureq::Error::Timeout(phase) => timed_out(phase),
        ureq::Error::Io(error) if error.kind() == io::ErrorKind::TimedOut => {
            AiError::new(TIMED_OUT).with_detail(format!("network: {error}"))
        }
        ureq::Error::BodyExceedsLimit(_) => AiError::new(MALFORMED)
            .with_detail(format!("the answer is larger than {MAX_BODY_BYTES} bytes")),
        other => AiError::new(broken).with_detail(describe(&other)),
    }
}

/// A malformed answer, with what was wrong for the log.
pub fn malformed(detail: impl Into<String>) -> AiError {
    AiError::new(MALFORMED).with_detail(detail)
}

fn timed_out(phase: ureq::Timeout) -> AiError {
    AiError::new(TIMED_OUT).with_detail(format!("ureq timeout: {phase}"))
}

/// A description of a client error for the log. Variants that could carry the URL (and
/// so credentials in it) or a proxy's answer are described without their contents.
fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::BadUri(_) => "the URL is not usable".to_owned(),
        ureq::Error::Http(_) => {
            "the request could not be built (a header value is not valid)".to_owned()
        }
        ureq::Error::InvalidProxyUrl => "the proxy URL of the environment is not valid".to_owned(),
        ureq::Error::ConnectProxyFailed(_) => "the proxy refused the connection".to_owned(),
        ureq::Error::Io(error) => format!("network: {error}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn failures_before_an_answer_map_to_their_reasons() {
        let cases = [
            (ureq::Error::HostNotFound, UNREACHABLE),
            (ureq::Error::ConnectionFailed, UNREACHABLE),
            (
                ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
                UNREACHABLE,
            ),
            (ureq::Error::Timeout(ureq::Timeout::Connect), TIMED_OUT),
            (ureq::Error::Timeout(ureq::Timeout::Global), TIMED_OUT),
            (
                ureq::Error::Io(io::Error::from(io::ErrorKind::TimedOut)),
                TIMED_OUT,
            ),
            (ureq::Error::LargeResponseHeader(1, 2), MALFORMED),
        ];
        for (error, reason) in cases {
            let described = format!("{error:?}");
            assert_eq!(call_failed(error).reason(), reason, "{described}");
        }
    }

    #[test]
    fn a_bad_url_is_described_without_the_url() {
        let error = call_failed(ureq::Error::BadUri(
            "http://user:hunter2@ai.example/".to_owned(),
        ));
        assert_eq!(error.reason(), UNREACHABLE);
        assert_eq!(error.detail(), Some("the URL is not usable"));
    }

    #[test]
    fn failures_while_reading_a_body_map_to_their_reasons() {
        let timeout = ureq::Error::Timeout(ureq::Timeout::Global).into_io();
        assert_eq!(body_failed(timeout, CUT_OFF).reason(), TIMED_OUT);
        let too_large = ureq::Error::BodyExceedsLimit(MAX_BODY_BYTES).into_io();
        assert_eq!(body_failed(too_large, CUT_OFF).reason(), MALFORMED);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(body_failed(reset, CUT_OFF).reason(), CUT_OFF);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(body_failed(eof, MALFORMED).reason(), MALFORMED);
    }

    #[test]
    fn a_status_names_itself() {
        assert_eq!(status_failed(502).reason(), "HTTP 502 from the AI service");
    }
}
