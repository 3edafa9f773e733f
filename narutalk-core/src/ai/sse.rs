//! An incremental parser of server-sent events (the `text/event-stream` format of the
//! HTML standard), for the `openai` responder's streamed answers.
//!
//! Bytes go in as the network delivers them, split anywhere; complete events come out.
//! Lines end in `\n`, `\r\n` or `\r`, also when the `\r` and the `\n` arrive in different
//! reads. A line is decoded as UTF-8 only once it is complete, so a character split
//! between two reads is never mangled. Only `data` and `event` fields matter here: `id`,
//! `retry`, comments (`:` lines) and unknown fields are skipped.

/// The longest line accepted, in bytes: a streamed chunk is a few hundred bytes, and a
/// service that never ends its line must not make the buffer grow without bound.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, when one was given (the type of the event).
    pub event: Option<String>,
    /// The `data` lines, joined with `\n`.
    pub data: String,
}

/// Why the stream could not be read as events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseError {
    /// A line is not UTF-8.
    NotUtf8,
    /// A line is longer than [`MAX_LINE_BYTES`].
    LineTooLong,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::NotUtf8 => f.write_str("a line of the event stream is not UTF-8"),
            SseError::LineTooLong => write!(
                f,
                "a line of the event stream is longer than {MAX_LINE_BYTES} bytes"
            ),
        }
    }
}

/// The parser's state between two reads.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The bytes of the line being read.
    line: Vec<u8>,
    /// The last byte read was a `\r`, so a `\n` right after it ends no second line.
    after_cr: bool,
    /// The event being gathered.
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Reads `bytes` and answers the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    let line = String::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
                    if let Some(event) = self.end_line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE_BYTES {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    /// Ends the stream: an event whose lines all ended but that was not followed by its
    /// blank line is dispatched (services that close right after `data: [DONE]\n` are
    /// common); a line cut off in the middle is dropped, as the standard says.
    pub fn finish(self) -> Option<SseEvent> {
        self.has_data.then_some(SseEvent {
            event: self.event,
            data: self.data,
        })
    }

    /// Applies one complete line; a blank line dispatches the event gathered so far.
    fn end_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            return std::mem::take(&mut self.has_data).then_some(SseEvent { event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: text.to_owned(),
        }
    }

    /// Feeds `input` whole, then finishes.
    fn parse_whole(input: &[u8]) -> (Vec<SseEvent>, Option<SseEvent>) {
        let mut parser = SseParser::new();
        let events = parser.feed(input).unwrap();
        (events, parser.finish())
    }

    /// Feeds `input` in pieces cut at `cuts` (sorted byte offsets), then finishes.
    fn parse_cut(input: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Option<SseEvent>) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            events.extend(parser.feed(&input[start..cut]).unwrap());
            start = cut;
        }
        (events, parser.finish())
    }

    /// A stream as OpenAI-compatible services send it, with every feature the parser
    /// knows: comments, CRLF and CR line ends, a field without a space, several data
    /// lines, an event type, id and retry fields, unknown fields and a multi-byte
    /// character.
    const STREAM: &str = ": keep-alive\r\n\r\n\
        data: {\"a\": \"Hel\"}\r\n\r\n\
        data:{\"a\": \"lo\"}\n\n\
        id: 7\rretry: 100\rdata: first\rdata: second\r\r\
        event: error\ndata: {\"error\": {}}\nunknown: x\nnovalue\n\n\
        data: 두통 ✓\n\n\
        data\n\n\
        data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            data("{\"a\": \"Hel\"}"),
            data("{\"a\": \"lo\"}"),
            data("first\nsecond"),
            SseEvent {
                event: Some("error".into()),
                data: "{\"error\": {}}".into(),
            },
            data("두통 ✓"),
            data(""),
            data("[DONE]"),
        ]
    }

    #[test]
    fn a_whole_stream_gives_its_events_in_order() {
        assert_eq!(parse_whole(STREAM.as_bytes()), (expected(), None));
    }

    #[test]
    fn a_stream_cut_at_any_byte_gives_the_same_events() {
        let input = STREAM.as_bytes();
        for cut in 0..=input.len() {
            assert_eq!(parse_cut(input, &[cut]), (expected(), None), "cut at {cut}");
        }
        for first in 0..=input.len() {
            for second in first..=input.len() {
                assert_eq!(
                    parse_cut(input, &[first, second]),
                    (expected(), None),
                    "cuts at {first} and {second}"
                );
            }
        }
    }

    #[test]
    fn a_stream_fed_one_byte_at_a_time_gives_the_same_events() {
        let input = STREAM.as_bytes();
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_cut(input, &cuts), (expected(), None));
    }

    #[test]
    fn a_cr_then_lf_in_separate_reads_ends_one_line_not_two() {
        // Were the `\n` a second line end, it would be a blank line that dispatches
        // `first` alone.
        let (events, _) = parse_cut(b"data: first\r\ndata: second\r\n\r\n", &[12]);
        assert_eq!(events, [data("first\nsecond")]);
    }

    #[test]
    fn finishing_dispatches_an_event_of_complete_lines_without_its_blank_line() {
        assert_eq!(
            parse_whole(b"data: [DONE]\n"),
            (vec![], Some(data("[DONE]")))
        );
        assert_eq!(
            parse_whole(b"data: a\r\ndata: b\r"),
            (vec![], Some(data("a\nb")))
        );
    }

    #[test]
    fn finishing_drops_a_line_cut_off_in_the_middle() {
        assert_eq!(parse_whole(b"data: {\"choi"), (vec![], None));
        assert_eq!(
            parse_whole(b"data: a\n\ndata: b\ndata: {\"ch"),
            (vec![data("a")], Some(data("b")))
        );
        assert_eq!(parse_whole(b""), (vec![], None));
        assert_eq!(parse_whole(b": comment only\n\n"), (vec![], None));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error() {
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"data: \xff\xfe\n\n"), Err(SseError::NotUtf8));
    }

    #[test]
    fn a_character_split_between_reads_is_decoded_whole() {
        let input = "data: 두\n\n".as_bytes();
        for cut in 6..9 {
            assert_eq!(parse_cut(input, &[cut]), (vec![data("두")], None));
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_an_error() {
        let mut parser = SseParser::new();
        let long = vec![b'x'; MAX_LINE_BYTES];
        assert_eq!(parser.feed(&long), Ok(vec![]));
        assert_eq!(parser.feed(b"x"), Err(SseError::LineTooLong));

        let mut parser = SseParser::new();
        assert_eq!(parser.feed(&long), Ok(vec![]));
        assert_eq!(parser.feed(b"\n\n"), Ok(vec![]));
    }
}
