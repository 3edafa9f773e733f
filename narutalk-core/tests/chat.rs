//! Protects the contract's chat rules (sections 1, 3, 3.1) and the storage side of the AI turn.
#![allow(clippy::unwrap_used)]

mod support;

use std::fmt::Debug;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use narutalk_core::Narutalk;
use narutalk_core::accounts::{NewUser, Role, UserId};
use narutalk_core::ai::{AiError, AiReply, AiRequest, HistoryTurn, Responder};
use narutalk_core::chat::{
    Category, Chat, ChatSession, IDEMPOTENCY_WINDOW, Message, MessageId, MessageType, NewMessage,
    Page, PageRequest, PostInput, Posting, Sender, SessionFilter, SessionId, SessionSummary,
};
use narutalk_core::config::Config;
use narutalk_core::error::Error;
use narutalk_core::events::{Actor, Origin};
use narutalk_core::fields::JsonObject;
use narutalk_core::store::{Audit, IdempotencyKey, OpenMode, Posted, UserPost};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use support::field_errors_only;
use tempfile::TempDir;

const UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";
const IDEMPOTENCY_KEY_MESSAGE: &str = "Must be 1 to 64 visible ASCII characters.";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh file database in a temporary folder, with `tweak` applied to the test config.
fn open_with(tweak: impl FnOnce(&mut Config)) -> (TempDir, Narutalk) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    tweak(&mut config);
    let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing).unwrap();
    (dir, narutalk)
}

/// Creates a user (one argon2 hash: keep these few).
fn add_user(narutalk: &Narutalk, name: &str) -> UserId {
    narutalk
        .accounts()
        .create(&NewUser {
            email: format!("{name}@example.com"),
            username: name.to_owned(),
            password: "violet-harbour-42".to_owned(),
            role: Role::User,
            department: String::new(),
            is_verified: true,
        })
        .unwrap()
        .id
}

/// A database with the default test config and one user, alice.
fn fixture() -> (TempDir, Narutalk, UserId) {
    fixture_with(|_| {})
}

fn fixture_with(tweak: impl FnOnce(&mut Config)) -> (TempDir, Narutalk, UserId) {
    let (dir, narutalk) = open_with(tweak);
    let alice = add_user(&narutalk, "alice");
    (dir, narutalk, alice)
}

fn obj(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The field errors of a refused operation, as the contract's 400 body.
fn field_errors<T: Debug>(result: Result<T, Error>) -> Value {
    match result {
        Err(Error::Invalid(errors)) => Value::Object(
            errors
                .iter()
                .map(|(field, messages)| (field.to_owned(), json!(messages)))
                .collect(),
        ),
        other => panic!("expected field errors, got {other:?}"),
    }
}

fn assert_not_found<T: Debug>(result: Result<T, Error>) {
    assert!(
        matches!(result, Err(Error::NotFound)),
        "expected NotFound, got {result:?}"
    );
}

fn assert_invalid_page<T: Debug>(result: Result<T, Error>) {
    assert!(
        matches!(result, Err(Error::InvalidPage)),
        "expected InvalidPage, got {result:?}"
    );
}

fn new_session(narutalk: &Narutalk, owner: UserId, title: &str) -> ChatSession {
    narutalk
        .chat()
        .create_session(owner, title, Category::General)
        .unwrap()
        .session
}

/// Stores a user message whose turn stays pending (as a crash leaves it), through the
/// store port, after `Chat::post`'s checks: [`answer_pending`] answers it later.
fn post(
    narutalk: &Narutalk,
    owner: UserId,
    session: SessionId,
    body: Value,
) -> Result<Message, Error> {
    match store_pending(narutalk, owner, session, &obj(body), None)? {
        (message, true) => Ok(message),
        (message, false) => panic!("expected a stored message, got a replay of {message:?}"),
    }
}

/// [`post`] with an idempotency key: the message, and whether it was stored (false: the
/// key replayed the first one).
fn store_pending(
    narutalk: &Narutalk,
    owner: UserId,
    session: SessionId,
    body: &JsonObject,
    key: Option<&str>,
) -> Result<(Message, bool), Error> {
    let chat = narutalk.chat();
    let input = match PostInput::from_fields(body, key, chat.content_max_chars()) {
        Ok(input) => input,
        Err(error) if chat.exists(owner, session)? => return Err(error),
        Err(_) => return Err(Error::NotFound),
    };
    let now = narutalk_core::time::now();
    let message = NewMessage {
        id: MessageId::new_random(),
        sender: Sender::User,
        message_type: input.message_type(),
        content: input.content().to_owned(),
        metadata: input.metadata().clone(),
        reply_to: None,
    };
    let audit = Audit::now(&Origin::default(), Actor::User(owner));
    let post = UserPost {
        owner,
        session,
        message: &message,
        idempotency_key: key.map(|key| IdempotencyKey {
            key,
            since: now - IDEMPOTENCY_WINDOW,
        }),
        now,
        audit: &audit,
        lease: None,
    };
    Ok(
        match narutalk
            .store()
            .post_message(&post, std::time::Instant::now())?
        {
            Posted::Stored { message, .. } => (message, true),
            Posted::Replayed { message, .. } => (message, false),
        },
    )
}

/// Posts `body` (checked as a REST body, with `key`) through `Chat::post`: with no turn
/// engine started, the post answers the session's pending turns before it returns.
fn post_fields(
    chat: &Chat<'_>,
    owner: UserId,
    session: SessionId,
    body: &JsonObject,
    key: Option<&str>,
) -> Result<Posting, Error> {
    chat.post(
        owner,
        session,
        PostInput::from_fields(body, key, chat.content_max_chars()),
    )
}

/// Answers every pending turn as a restarted server does: starts the turn engine, waits
/// until it has nothing left to do, and stops it again.
fn answer_pending(narutalk: &Narutalk) {
    narutalk.start_turns().unwrap();
    assert!(
        narutalk
            .turns_drained()
            .wait_timeout(std::time::Duration::from_secs(60)),
        "the pending turns were not answered"
    );
    narutalk.stop_turns();
}

/// Another handle on the database of `dir` (another process), with `responder`.
fn reopen_with(dir: &TempDir, responder: Arc<dyn Responder>) -> Narutalk {
    Narutalk::open(&Config::for_tests(dir.path()), OpenMode::MustExist)
        .unwrap()
        .with_responder(responder)
}

fn post_text(narutalk: &Narutalk, owner: UserId, session: SessionId, content: &str) -> Message {
    post(narutalk, owner, session, json!({ "content": content })).unwrap()
}

fn list(
    narutalk: &Narutalk,
    owner: UserId,
    filter: SessionFilter,
    page: PageRequest,
) -> Page<SessionSummary> {
    narutalk.chat().list_sessions(owner, filter, page).unwrap()
}

fn list_ids(page: &Page<SessionSummary>) -> Vec<SessionId> {
    page.results.iter().map(|s| s.session.id).collect()
}

fn contents(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.content.as_str()).collect()
}

/// Rows in the database file, read on a separate read-only connection: the only way to
/// show that nothing is left behind where the API can no longer look.
fn stored_rows(narutalk: &Narutalk, sql: &str, param: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        narutalk.sqlite().unwrap().path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(sql, [param], |row| row.get(0)).unwrap()
}

/// A responder driven by a closure.
struct Scripted<F>(F);

impl<F> Responder for Scripted<F>
where
    F: Fn(&AiRequest) -> Result<AiReply, AiError> + Send + Sync,
{
    fn name(&self) -> &str {
        "scripted"
    }

    fn respond(
        &self,
        request: &AiRequest,
        _on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        (self.0)(request)
    }
}

/// A responder that counts its calls and answers `reply N`.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
}

impl Responder for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    fn respond(
        &self,
        _request: &AiRequest,
        _on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(AiReply {
            content: format!("reply {n}"),
            metadata: JsonObject::new(),
        })
    }
}

fn reply(content: &str) -> Result<AiReply, AiError> {
    Ok(AiReply {
        content: content.to_owned(),
        metadata: JsonObject::new(),
    })
}

// ---------------------------------------------------------------------------------------
// Sessions: create and get
// ---------------------------------------------------------------------------------------

/// `title` is trimmed before it is checked and stored; `category` defaults to `general`.
#[test]
fn creating_a_session_stores_the_trimmed_title_and_the_general_category_by_default() {
    let (_dir, narutalk, alice) = fixture();
    let created = narutalk
        .chat()
        .create_session_fields(alice, &obj(json!({"title": "  \tHeadache at night \n"})))
        .unwrap();
    assert_eq!(created.session.title, "Headache at night");
    assert_eq!(created.session.category, Category::General);
    assert!(created.session.is_active);
    assert_eq!(created.session.message_count, 0);
    assert_eq!(created.session.user_id, alice);
    assert_eq!(created.session.created_at, created.session.updated_at);
    assert!(created.messages.is_empty());
    assert_eq!(
        created.session.id.0.get_version_num(),
        4,
        "session ids are UUID v4"
    );

    let stored = narutalk.chat().session(alice, created.session.id).unwrap();
    assert_eq!(stored, created);
    let listed = list(
        &narutalk,
        alice,
        SessionFilter::default(),
        PageRequest::default(),
    );
    assert_eq!(listed.results[0].session.title, "Headache at night");
}

/// Every category of the contract is accepted and stored.
#[test]
fn every_contract_category_is_accepted_and_stored() {
    let (_dir, narutalk, alice) = fixture();
    for name in ["medical", "general", "emergency", "consultation"] {
        let created = narutalk
            .chat()
            .create_session_fields(alice, &obj(json!({"title": "t", "category": name})))
            .unwrap();
        assert_eq!(created.session.category.as_str(), name);
        let stored = narutalk.chat().session(alice, created.session.id).unwrap();
        assert_eq!(stored.session.category.as_str(), name);
    }
}

/// 1-200 characters after trimming (characters, not bytes): 200 accepted, 201 refused.
#[test]
fn a_title_of_200_characters_is_accepted_and_201_is_refused() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let longest = "가".repeat(200);
    let created = chat
        .create_session_fields(alice, &obj(json!({ "title": format!("  {longest}  ") })))
        .unwrap();
    assert_eq!(created.session.title, longest);
    assert_eq!(created.session.title.chars().count(), 200);
    let one = chat
        .create_session_fields(alice, &obj(json!({"title": "x"})))
        .unwrap();
    assert_eq!(one.session.title, "x");

    let too_long = "가".repeat(201);
    assert_eq!(
        field_errors(chat.create_session_fields(alice, &obj(json!({ "title": too_long })))),
        json!({"title": ["Ensure this field has no more than 200 characters."]})
    );
    let list = list(
        &narutalk,
        alice,
        SessionFilter::default(),
        PageRequest::default(),
    );
    assert_eq!(list.count, 2, "the refused title stored nothing");
}

/// Missing, null, blank, whitespace-only and non-string titles and bad categories are
/// refused with the exact messages, every bad field at once, and nothing is stored.
#[test]
fn bad_session_fields_are_refused_with_the_exact_messages_and_store_nothing() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let cases = [
        (json!({}), json!({"title": ["This field is required."]})),
        (
            json!({"title": null}),
            json!({"title": ["This field may not be null."]}),
        ),
        (
            json!({"title": ""}),
            json!({"title": ["This field may not be blank."]}),
        ),
        (
            json!({"title": "  \t\n "}),
            json!({"title": ["This field may not be blank."]}),
        ),
        (
            json!({"title": 5}),
            json!({"title": ["Not a valid string."]}),
        ),
        (
            json!({"title": ["a"]}),
            json!({"title": ["Not a valid string."]}),
        ),
        (
            json!({"title": true}),
            json!({"title": ["Not a valid string."]}),
        ),
        (
            json!({"title": "ok", "category": "x"}),
            json!({"category": ["\"x\" is not a valid choice."]}),
        ),
        (
            json!({"title": "ok", "category": "Medical"}),
            json!({"category": ["\"Medical\" is not a valid choice."]}),
        ),
        (
            json!({"title": "ok", "category": ""}),
            json!({"category": ["\"\" is not a valid choice."]}),
        ),
        (
            json!({"title": "ok", "category": null}),
            json!({"category": ["This field may not be null."]}),
        ),
        (
            json!({"title": "ok", "category": 1}),
            json!({"category": ["Not a valid string."]}),
        ),
        (
            json!({"title": " ", "category": "x"}),
            json!({"title": ["This field may not be blank."], "category": ["\"x\" is not a valid choice."]}),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            field_errors(chat.create_session_fields(alice, &obj(body.clone()))),
            expected,
            "{body}"
        );
    }
    let page = list(
        &narutalk,
        alice,
        SessionFilter::default(),
        PageRequest::default(),
    );
    assert_eq!(page.count, 0);
    assert!(page.results.is_empty());
}

/// The session detail lists its messages in storage order, oldest first, with the count.
#[test]
fn a_session_shows_its_messages_oldest_first_with_their_count() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s");
    let first = post_text(&narutalk, alice, session.id, "first");
    let exchange = narutalk.send_message(alice, session.id, "second").unwrap();
    let third = post_text(&narutalk, alice, session.id, "third");

    let detail = narutalk.chat().session(alice, session.id).unwrap();
    // The pending turn of "first" is answered before the one of "second", in order.
    assert_eq!(detail.session.message_count, 5);
    assert_eq!(
        contents(&detail.messages),
        [
            "first",
            "second",
            "AI 응답: first에 대한 의료 정보를 제공합니다.",
            "AI 응답: second에 대한 의료 정보를 제공합니다.",
            "third"
        ]
    );
    assert_eq!(detail.messages[0], first);
    assert_eq!(detail.messages[1], exchange.message);
    assert_eq!(detail.messages[2].reply_to, Some(first.id));
    assert_eq!(detail.messages[3], exchange.reply);
    assert_eq!(detail.messages[4], third);
}

// ---------------------------------------------------------------------------------------
// Ownership and ids
// ---------------------------------------------------------------------------------------

/// Another user's session answers exactly `NotFound` for every operation, even with a bad
/// body (the session check comes before the fields), and is left untouched.
#[test]
fn another_users_session_answers_not_found_for_every_operation_and_is_left_untouched() {
    let (_dir, narutalk, alice) = fixture();
    let mallory = add_user(&narutalk, "mallory");
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "private");
    let message = post_text(&narutalk, alice, session.id, "secret");
    let before = chat.session(alice, session.id).unwrap();

    assert_not_found(chat.session(mallory, session.id));
    assert_not_found(chat.update_session_fields(
        mallory,
        session.id,
        &obj(json!({"title": "mine"})),
    ));
    assert_not_found(chat.update_session_fields(mallory, session.id, &obj(json!({}))));
    assert_not_found(chat.update_session_fields(
        mallory,
        session.id,
        &obj(json!({"is_active": "yes"})),
    ));
    assert_not_found(chat.messages(mallory, session.id, None, PageRequest::default()));
    assert_not_found(chat.messages(
        mallory,
        session.id,
        Some("not-an-id"),
        PageRequest::Number(99),
    ));
    assert_not_found(chat.messages_after(mallory, session.id, Some(&message.id.to_string())));
    assert_not_found(post_fields(
        &chat,
        mallory,
        session.id,
        &obj(json!({"content": "hi"})),
        None,
    ));
    assert_not_found(post_fields(
        &chat,
        mallory,
        session.id,
        &obj(json!({"content": ""})),
        Some(""),
    ));
    assert_not_found(narutalk.send_message(mallory, session.id, "hi"));
    assert_not_found(chat.delete_session(mallory, session.id));

    assert_eq!(
        list(
            &narutalk,
            mallory,
            SessionFilter::default(),
            PageRequest::default()
        )
        .count,
        0
    );
    assert_eq!(chat.session(alice, session.id).unwrap(), before);
}

/// A well-formed id that names no session answers `NotFound` everywhere, before the fields.
#[test]
fn an_unknown_session_id_answers_not_found_before_any_field_check() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let unknown = SessionId::new_random();
    assert_not_found(chat.session(alice, unknown));
    assert_not_found(chat.update_session_fields(
        alice,
        unknown,
        &obj(json!({"title": 5, "is_active": "yes"})),
    ));
    assert_not_found(chat.delete_session(alice, unknown));
    assert_not_found(chat.messages(alice, unknown, Some("x"), PageRequest::default()));
    assert_not_found(chat.messages_after(alice, unknown, None));
    assert_not_found(post_fields(
        &chat,
        alice,
        unknown,
        &obj(json!({"content": 5})),
        Some("bad key"),
    ));
}

/// Session ids parse only in the canonical form (36 characters, lower-case, hyphenated);
/// anything else, SQL included, is `NotFound`.
#[test]
fn session_ids_parse_only_in_canonical_lower_case_hyphenated_form() {
    let canonical = "0b3c5a9e-7f1d-4c2b-9a8e-1d2c3b4a5f60";
    let id = SessionId::from_str(canonical).unwrap();
    assert_eq!(id.to_string(), canonical);
    assert_eq!(
        MessageId::from_str(canonical).unwrap().to_string(),
        canonical
    );
    let random = SessionId::new_random();
    assert_eq!(SessionId::from_str(&random.to_string()).unwrap(), random);

    let refused = [
        "0B3C5A9E-7F1D-4C2B-9A8E-1D2C3B4A5F60".to_owned(),
        "0b3c5a9e-7f1d-4c2b-9a8e-1d2c3b4a5F60".to_owned(),
        format!("{{{canonical}}}"),
        format!("urn:uuid:{canonical}"),
        canonical.replace('-', ""),
        canonical[..35].to_owned(),
        format!("{canonical}0"),
        format!(" {canonical}"),
        format!("{canonical}\n"),
        "0b3c5a9e07f1d-4c2b-9a8e-1d2c3b4a5f60".to_owned(),
        "0b3c5a9e-7f1d-4c2b-9a8e-1d2c3b4a5f6g".to_owned(),
        "' OR 1=1--".to_owned(),
        String::new(),
    ];
    for text in &refused {
        assert!(
            matches!(SessionId::from_str(text), Err(Error::NotFound)),
            "{text:?}"
        );
        assert!(
            matches!(MessageId::from_str(text), Err(Error::NotFound)),
            "{text:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Session list: pagination, order, filters, summaries
// ---------------------------------------------------------------------------------------

/// 20 a page, most recently updated first, with `count`, `num_pages`, `has_next` and
/// `has_previous`; `last` is the last page; a message or an update moves a session to the top.
#[test]
fn the_session_list_pages_by_20_most_recently_updated_first() {
    let (_dir, narutalk, alice) = fixture();
    let mut created: Vec<SessionId> = (1..=45)
        .map(|i| new_session(&narutalk, alice, &format!("s{i}")).id)
        .collect();
    created.reverse(); // newest first

    let all = SessionFilter::default();
    let page1 = list(&narutalk, alice, all, PageRequest::Number(1));
    let page2 = list(&narutalk, alice, all, PageRequest::Number(2));
    let page3 = list(&narutalk, alice, all, PageRequest::Number(3));
    for (page, number, len) in [(&page1, 1, 20), (&page2, 2, 20), (&page3, 3, 5)] {
        assert_eq!(page.count, 45);
        assert_eq!(page.num_pages, 3);
        assert_eq!(page.number, number);
        assert_eq!(page.results.len(), len);
    }
    assert!(page1.has_next() && !page1.has_previous());
    assert!(page2.has_next() && page2.has_previous());
    assert!(!page3.has_next() && page3.has_previous());
    let listed: Vec<SessionId> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| list_ids(p))
        .collect();
    assert_eq!(listed, created);
    assert_eq!(list(&narutalk, alice, all, PageRequest::Last), page3);
    assert_invalid_page(
        narutalk
            .chat()
            .list_sessions(alice, all, PageRequest::Number(4)),
    );

    // A message moves the oldest session to the top; an empty update moves another above it.
    let oldest = created[44];
    post_text(&narutalk, alice, oldest, "bump");
    let top = list(&narutalk, alice, all, PageRequest::Number(1));
    assert_eq!(top.results[0].session.id, oldest);
    assert_eq!(top.results[1].session.id, created[0]);
    let second_oldest = created[43];
    narutalk
        .chat()
        .update_session_fields(alice, second_oldest, &obj(json!({})))
        .unwrap();
    let top = list(&narutalk, alice, all, PageRequest::Number(1));
    assert_eq!(list_ids(&top)[..3], [second_oldest, oldest, created[0]]);
    assert_eq!(top.count, 45);
}

/// Page 1 of an empty list is fine (no results, one page); page 2 and `last` behave.
#[test]
fn page_one_of_an_empty_list_has_no_results_and_one_page() {
    let (_dir, narutalk, alice) = fixture();
    let all = SessionFilter::default();
    let page = list(&narutalk, alice, all, PageRequest::Number(1));
    assert_eq!(page.count, 0);
    assert_eq!(page.num_pages, 1);
    assert_eq!(page.number, 1);
    assert!(page.results.is_empty());
    assert!(!page.has_next() && !page.has_previous());
    assert_eq!(list(&narutalk, alice, all, PageRequest::Last), page);
    assert_invalid_page(
        narutalk
            .chat()
            .list_sessions(alice, all, PageRequest::Number(2)),
    );

    for _ in 0..20 {
        new_session(&narutalk, alice, "t");
    }
    let full = list(&narutalk, alice, all, PageRequest::Number(1));
    assert_eq!(
        (full.count, full.num_pages, full.results.len()),
        (20, 1, 20)
    );
    assert!(!full.has_next());
    assert_invalid_page(
        narutalk
            .chat()
            .list_sessions(alice, all, PageRequest::Number(2)),
    );
    new_session(&narutalk, alice, "t");
    let two = list(&narutalk, alice, all, PageRequest::Number(2));
    assert_eq!((two.count, two.num_pages, two.results.len()), (21, 2, 1));
}

/// `?page`: missing or empty is page 1, `last` the last page, a positive integer that page;
/// 0, negatives, fractions, words, blanks and overflowing numbers are `InvalidPage`.
#[test]
fn page_request_parse_accepts_only_positive_integers_last_or_nothing() {
    assert_eq!(PageRequest::parse(None).unwrap(), PageRequest::Number(1));
    assert_eq!(
        PageRequest::parse(Some("")).unwrap(),
        PageRequest::Number(1)
    );
    assert_eq!(PageRequest::parse(Some("last")).unwrap(), PageRequest::Last);
    assert_eq!(
        PageRequest::parse(Some("1")).unwrap(),
        PageRequest::Number(1)
    );
    assert_eq!(
        PageRequest::parse(Some("2")).unwrap(),
        PageRequest::Number(2)
    );
    assert_eq!(
        PageRequest::parse(Some("0003")).unwrap(),
        PageRequest::Number(3)
    );
    // Python's int(), which DRF calls, allows surrounding spaces and a leading plus.
    assert_eq!(
        PageRequest::parse(Some(" 3 ")).unwrap(),
        PageRequest::Number(3)
    );
    assert_eq!(
        PageRequest::parse(Some("+2")).unwrap(),
        PageRequest::Number(2)
    );
    assert_eq!(
        PageRequest::parse(Some("4294967295")).unwrap(),
        PageRequest::Number(u32::MAX)
    );
    assert_eq!(PageRequest::default(), PageRequest::Number(1));

    for bad in [
        "0",
        "-1",
        "-0",
        "+0",
        "1.5",
        "1.0",
        "abc",
        "LAST",
        "Last",
        " last",
        "last ",
        "1e3",
        "0x10",
        "+",
        "-",
        "++1",
        " ",
        "  \t",
        "4294967296",
        "99999999999999999999",
        "1 2",
        "١",
    ] {
        assert!(
            matches!(PageRequest::parse(Some(bad)), Err(Error::InvalidPage)),
            "{bad:?}"
        );
    }
}

/// `?category=` and `?is_active=`: the contract's values, the exact messages, both fields at
/// once; an empty value means no filter.
#[test]
fn session_filter_parse_accepts_the_contract_values_and_words_its_errors_exactly() {
    assert_eq!(
        SessionFilter::parse(None, None).unwrap(),
        SessionFilter::default()
    );
    assert_eq!(
        SessionFilter::parse(Some(""), Some("")).unwrap(),
        SessionFilter::default()
    );
    for category in Category::ALL {
        let filter = SessionFilter::parse(Some(category.as_str()), None).unwrap();
        assert_eq!(filter.category, Some(*category));
        assert_eq!(filter.is_active, None);
    }
    for (raw, value) in [("true", true), ("false", false), ("1", true), ("0", false)] {
        let filter = SessionFilter::parse(None, Some(raw)).unwrap();
        assert_eq!(
            filter,
            SessionFilter {
                category: None,
                is_active: Some(value)
            },
            "{raw}"
        );
    }
    assert_eq!(
        field_errors(SessionFilter::parse(Some("x"), None)),
        json!({"category": ["Select a valid choice. x is not one of the available choices."]})
    );
    assert_eq!(
        field_errors(SessionFilter::parse(Some("Medical"), Some("true"))),
        json!({"category": ["Select a valid choice. Medical is not one of the available choices."]})
    );
    for bad in ["yes", "no", "2", "-1", "on", "t", " true", "true ", "null"] {
        assert_eq!(
            field_errors(SessionFilter::parse(None, Some(bad))),
            json!({"is_active": ["Must be a valid boolean."]}),
            "{bad:?}"
        );
    }
    assert_eq!(
        field_errors(SessionFilter::parse(Some("x"), Some("yes"))),
        json!({
            "category": ["Select a valid choice. x is not one of the available choices."],
            "is_active": ["Must be a valid boolean."],
        })
    );
}

/// Category and `is_active` filters select exactly the matching sessions, with their own
/// count, alone and together.
#[test]
fn filters_select_exactly_the_matching_sessions() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let medical_active = chat
        .create_session(alice, "m1", Category::Medical)
        .unwrap()
        .session
        .id;
    let medical_archived = chat
        .create_session(alice, "m2", Category::Medical)
        .unwrap()
        .session
        .id;
    let emergency_archived = chat
        .create_session(alice, "e1", Category::Emergency)
        .unwrap()
        .session
        .id;
    let general_active = chat
        .create_session(alice, "g1", Category::General)
        .unwrap()
        .session
        .id;
    for id in [medical_archived, emergency_archived] {
        chat.update_session_fields(alice, id, &obj(json!({"is_active": false})))
            .unwrap();
    }
    // Newest update first: the two archived ones were updated last, emergency last of all.
    let check = |category: Option<&str>, is_active: Option<&str>, expected: &[SessionId]| {
        let filter = SessionFilter::parse(category, is_active).unwrap();
        let page = list(&narutalk, alice, filter, PageRequest::default());
        assert_eq!(
            page.count,
            expected.len() as u64,
            "{category:?} {is_active:?}"
        );
        assert_eq!(list_ids(&page), expected, "{category:?} {is_active:?}");
    };
    check(
        None,
        None,
        &[
            emergency_archived,
            medical_archived,
            general_active,
            medical_active,
        ],
    );
    check(Some("medical"), None, &[medical_archived, medical_active]);
    check(Some("consultation"), None, &[]);
    check(None, Some("false"), &[emergency_archived, medical_archived]);
    check(None, Some("1"), &[general_active, medical_active]);
    check(Some("medical"), Some("true"), &[medical_active]);
    check(Some("medical"), Some("0"), &[medical_archived]);
    check(Some("general"), Some("false"), &[]);
    check(
        Some(""),
        Some(""),
        &[
            emergency_archived,
            medical_archived,
            general_active,
            medical_active,
        ],
    );

    // A filter with no match still has a page 1.
    let filter = SessionFilter::parse(Some("consultation"), None).unwrap();
    let page = list(&narutalk, alice, filter, PageRequest::Last);
    assert_eq!((page.count, page.number, page.num_pages), (0, 1, 1));
}

/// Each list item carries `message_count` and `last_message`: none for an empty session,
/// otherwise the newest message in storage order (an AI reply or a system error included).
#[test]
fn list_items_carry_their_message_count_and_newest_message() {
    let (dir, narutalk, alice) = fixture();
    let empty = new_session(&narutalk, alice, "empty").id;
    let answered = new_session(&narutalk, alice, "answered").id;
    let exchange = narutalk.send_message(alice, answered, "question").unwrap();
    let pending = new_session(&narutalk, alice, "pending").id;
    post_text(&narutalk, alice, pending, "one");
    let two = post_text(&narutalk, alice, pending, "two");
    let failed = new_session(&narutalk, alice, "failed").id;
    let failing = reopen_with(
        &dir,
        Arc::new(Scripted(|_: &AiRequest| -> Result<AiReply, AiError> {
            Err(AiError::new("timed out"))
        })),
    );
    let error_reply = failing.send_message(alice, failed, "q").unwrap().reply;
    assert_eq!(error_reply.sender, Sender::System);

    let page = list(
        &narutalk,
        alice,
        SessionFilter::default(),
        PageRequest::default(),
    );
    assert_eq!(list_ids(&page), [failed, pending, answered, empty]);
    let summary = |id: SessionId| page.results.iter().find(|s| s.session.id == id).unwrap();
    assert_eq!(summary(empty).session.message_count, 0);
    assert_eq!(summary(empty).last_message, None);
    assert_eq!(summary(answered).session.message_count, 2);
    assert_eq!(
        summary(answered).last_message.as_ref(),
        Some(&exchange.reply)
    );
    assert_eq!(summary(pending).session.message_count, 2);
    assert_eq!(summary(pending).last_message.as_ref(), Some(&two));
    assert_eq!(summary(failed).session.message_count, 2);
    assert_eq!(summary(failed).last_message.as_ref(), Some(&error_reply));
}

// ---------------------------------------------------------------------------------------
// Session update and delete
// ---------------------------------------------------------------------------------------

/// `title` (trimmed), `category` and `is_active` each change only themselves; every update
/// moves `updated_at` strictly forward and never `created_at`.
#[test]
fn updating_title_category_or_is_active_changes_only_that_field_and_moves_updated_at() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let original = chat
        .create_session(alice, "Before", Category::Medical)
        .unwrap()
        .session;
    post_text(&narutalk, alice, original.id, "kept");

    let renamed = chat
        .update_session_fields(alice, original.id, &obj(json!({"title": "  After  "})))
        .unwrap();
    assert_eq!(renamed.session.title, "After");
    assert_eq!(renamed.session.category, Category::Medical);
    assert!(renamed.session.is_active);
    assert_eq!(contents(&renamed.messages), ["kept"]);
    assert_eq!(renamed.session.message_count, 1);

    let recategorized = chat
        .update_session_fields(
            alice,
            original.id,
            &obj(json!({"category": "consultation"})),
        )
        .unwrap();
    assert_eq!(recategorized.session.title, "After");
    assert_eq!(recategorized.session.category, Category::Consultation);
    assert!(recategorized.session.is_active);

    let archived = chat
        .update_session_fields(alice, original.id, &obj(json!({"is_active": false})))
        .unwrap();
    assert_eq!(archived.session.title, "After");
    assert_eq!(archived.session.category, Category::Consultation);
    assert!(!archived.session.is_active);

    // An inactive session still works.
    post_text(&narutalk, alice, original.id, "still works");

    let all = chat
        .update_session_fields(
            alice,
            original.id,
            &obj(json!({"title": "Both", "category": "emergency", "is_active": true, "sender": "ai", "id": "x"})),
        )
        .unwrap();
    assert_eq!(
        (
            all.session.title.as_str(),
            all.session.category,
            all.session.is_active
        ),
        ("Both", Category::Emergency, true)
    );
    assert_eq!(all.session.id, original.id);

    let stamps = [
        original.updated_at,
        renamed.session.updated_at,
        recategorized.session.updated_at,
        archived.session.updated_at,
        all.session.updated_at,
    ];
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    for detail in [&renamed, &recategorized, &archived, &all] {
        assert_eq!(detail.session.created_at, original.created_at);
    }
    assert_eq!(all.session.message_count, 2);
    assert_eq!(contents(&all.messages), ["kept", "still works"]);
    assert_eq!(chat.session(alice, original.id).unwrap(), all);
}

/// Bad update fields answer the exact messages, every bad field at once, and change nothing
/// (not even `updated_at`).
#[test]
fn bad_update_fields_are_refused_with_exact_messages_and_change_nothing() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "same");
    let cases = [
        (
            json!({"title": ""}),
            json!({"title": ["This field may not be blank."]}),
        ),
        (
            json!({"title": "   "}),
            json!({"title": ["This field may not be blank."]}),
        ),
        (
            json!({"title": "a".repeat(201)}),
            json!({"title": ["Ensure this field has no more than 200 characters."]}),
        ),
        (
            json!({"title": 5}),
            json!({"title": ["Not a valid string."]}),
        ),
        (
            json!({"title": null}),
            json!({"title": ["This field may not be null."]}),
        ),
        (
            json!({"category": "x"}),
            json!({"category": ["\"x\" is not a valid choice."]}),
        ),
        (
            json!({"category": null}),
            json!({"category": ["This field may not be null."]}),
        ),
        (
            json!({"category": ["medical"]}),
            json!({"category": ["Not a valid string."]}),
        ),
        (
            json!({"is_active": "yes"}),
            json!({"is_active": ["Must be a valid boolean."]}),
        ),
        (
            json!({"is_active": "true"}),
            json!({"is_active": ["Must be a valid boolean."]}),
        ),
        (
            json!({"is_active": 1}),
            json!({"is_active": ["Must be a valid boolean."]}),
        ),
        (
            json!({"is_active": null}),
            json!({"is_active": ["This field may not be null."]}),
        ),
        (
            json!({"title": "", "category": "x", "is_active": "yes"}),
            json!({
                "title": ["This field may not be blank."],
                "category": ["\"x\" is not a valid choice."],
                "is_active": ["Must be a valid boolean."],
            }),
        ),
        // One good field does not go through when another is bad.
        (
            json!({"title": "new", "is_active": 0}),
            json!({"is_active": ["Must be a valid boolean."]}),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            field_errors(chat.update_session_fields(alice, session.id, &obj(body.clone()))),
            expected,
            "{body}"
        );
    }
    let stored = chat.session(alice, session.id).unwrap().session;
    assert_eq!(stored, session);
}

/// Every update, even `{}`, moves `updated_at` strictly forward, however quickly repeated.
#[test]
fn an_empty_update_still_moves_updated_at_strictly_forward() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s");
    let mut previous = session.updated_at;
    for _ in 0..5 {
        let updated = chat
            .update_session_fields(alice, session.id, &obj(json!({})))
            .unwrap()
            .session;
        assert!(
            updated.updated_at > previous,
            "{} !> {previous}",
            updated.updated_at
        );
        assert_eq!(updated.created_at, session.created_at);
        assert_eq!(updated.title, "s");
        previous = updated.updated_at;
    }
    assert_eq!(
        chat.session(alice, session.id).unwrap().session.updated_at,
        previous
    );
}

/// Deleting a session removes it and every message and idempotency key of it; a second
/// delete is `NotFound`; other sessions are untouched.
#[test]
fn deleting_a_session_removes_its_messages_and_a_second_delete_is_not_found() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let doomed = new_session(&narutalk, alice, "doomed").id;
    let kept = new_session(&narutalk, alice, "kept").id;
    narutalk.send_message(alice, doomed, "one").unwrap();
    store_pending(
        &narutalk,
        alice,
        doomed,
        &obj(json!({"content": "two"})),
        Some("key-1"),
    )
    .unwrap();
    narutalk.send_message(alice, kept, "other").unwrap();
    let doomed_text = doomed.to_string();
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_messages WHERE session_id = ?1",
            &doomed_text
        ),
        3
    );
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM idempotency_keys WHERE session_id = ?1",
            &doomed_text
        ),
        1
    );

    chat.delete_session(alice, doomed).unwrap();
    assert_not_found(chat.session(alice, doomed));
    assert_not_found(chat.messages(alice, doomed, None, PageRequest::default()));
    assert_not_found(chat.delete_session(alice, doomed));
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_messages WHERE session_id = ?1",
            &doomed_text
        ),
        0
    );
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM idempotency_keys WHERE session_id = ?1",
            &doomed_text
        ),
        0
    );
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_sessions WHERE id = ?1",
            &doomed_text
        ),
        0
    );

    let page = list(
        &narutalk,
        alice,
        SessionFilter::default(),
        PageRequest::default(),
    );
    assert_eq!(list_ids(&page), [kept]);
    assert_eq!(chat.session(alice, kept).unwrap().messages.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Messages: fields
// ---------------------------------------------------------------------------------------

/// Content is stored exactly as sent: leading and trailing whitespace and newlines kept.
#[test]
fn message_content_is_stored_verbatim_with_its_whitespace() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let verbatim = "  \n\tline one\r\n\n  line two  \t\n\n";
    let stored = post_text(&narutalk, alice, session, verbatim);
    assert_eq!(stored.content, verbatim);
    assert_eq!(stored.sender, Sender::User);
    assert_eq!(stored.message_type, MessageType::Text);
    assert_eq!(stored.metadata, JsonObject::new());
    assert_eq!(stored.session_id, session);
    assert_eq!(stored.reply_to, None);
    assert_eq!(
        narutalk.chat().session(alice, session).unwrap().messages,
        std::slice::from_ref(&stored)
    );
    let page = narutalk
        .chat()
        .messages(alice, session, None, PageRequest::default())
        .unwrap();
    assert_eq!(page.results, [stored]);
}

/// Missing, null, empty, whitespace-only and non-string content is refused with the exact
/// message; nothing is stored and `updated_at` does not move.
#[test]
fn blank_or_missing_content_is_refused_and_nothing_is_stored() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s");
    let cases = [
        (json!({}), json!({"content": ["This field is required."]})),
        (
            json!({"content": null}),
            json!({"content": ["This field may not be null."]}),
        ),
        (
            json!({"content": ""}),
            json!({"content": ["This field may not be blank."]}),
        ),
        (
            json!({"content": " \n\t\r\n "}),
            json!({"content": ["This field may not be blank."]}),
        ),
        (
            json!({"content": "\u{3000}\u{a0}"}),
            json!({"content": ["This field may not be blank."]}),
        ),
        (
            json!({"content": 5}),
            json!({"content": ["Not a valid string."]}),
        ),
        (
            json!({"content": {"text": "hi"}}),
            json!({"content": ["Not a valid string."]}),
        ),
        (
            json!({"content": "", "message_type": "error", "metadata": []}),
            json!({
                "content": ["This field may not be blank."],
                "message_type": ["\"error\" is not a valid choice."],
                "metadata": ["Expected a dictionary of items but got type \"list\"."],
            }),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            field_errors(post(&narutalk, alice, session.id, body.clone())),
            expected,
            "{body}"
        );
    }
    assert_eq!(chat.session(alice, session.id).unwrap().session, session);
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_messages WHERE session_id = ?1",
            &session.id.to_string()
        ),
        0
    );
}

/// Content counts characters, not bytes: 10,000 accepted, 10,001 refused exactly.
#[test]
fn content_of_10000_characters_is_accepted_and_10001_refused() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let longest = "가".repeat(10_000);
    assert_eq!(
        post_text(&narutalk, alice, session, &longest).content,
        longest
    );
    let surrounded = format!(" {} ", "a".repeat(9_998));
    assert_eq!(
        post_text(&narutalk, alice, session, &surrounded).content,
        surrounded
    );
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({ "content": "가".repeat(10_001) })
        )),
        json!({"content": ["Ensure this field has no more than 10000 characters."]})
    );
    // Whitespace counts too: it is stored.
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({ "content": format!("{} ", "a".repeat(10_000)) })
        )),
        json!({"content": ["Ensure this field has no more than 10000 characters."]})
    );
    assert_eq!(
        narutalk
            .chat()
            .session(alice, session)
            .unwrap()
            .session
            .message_count,
        2
    );
}

/// `content_max_chars` from the configuration replaces the default limit.
#[test]
fn a_configured_content_limit_is_honoured() {
    let (_dir, narutalk, alice) = fixture_with(|config| config.content_max_chars = 5);
    let session = new_session(&narutalk, alice, "s").id;
    assert_eq!(
        post_text(&narutalk, alice, session, "12345").content,
        "12345"
    );
    assert_eq!(
        post_text(&narutalk, alice, session, "가나다라마").content,
        "가나다라마"
    );
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({"content": "123456"})
        )),
        json!({"content": ["Ensure this field has no more than 5 characters."]})
    );
}

/// `message_type` from a client is `text` (default), `image` or `file`; `error` is reserved.
#[test]
fn clients_may_send_text_image_or_file_but_never_error() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    for (kind, expected) in [
        ("text", MessageType::Text),
        ("image", MessageType::Image),
        ("file", MessageType::File),
    ] {
        let stored = post(
            &narutalk,
            alice,
            session,
            json!({"content": "c", "message_type": kind}),
        )
        .unwrap();
        assert_eq!(stored.message_type, expected);
    }
    let cases = [
        (
            json!("error"),
            json!({"message_type": ["\"error\" is not a valid choice."]}),
        ),
        (
            json!("TEXT"),
            json!({"message_type": ["\"TEXT\" is not a valid choice."]}),
        ),
        (
            json!(""),
            json!({"message_type": ["\"\" is not a valid choice."]}),
        ),
        (json!(3), json!({"message_type": ["Not a valid string."]})),
        (
            json!(null),
            json!({"message_type": ["This field may not be null."]}),
        ),
    ];
    for (kind, expected) in cases {
        assert_eq!(
            field_errors(post(
                &narutalk,
                alice,
                session,
                json!({"content": "c", "message_type": kind.clone()})
            )),
            expected,
            "{kind}"
        );
    }
    let types: Vec<MessageType> = narutalk
        .chat()
        .session(alice, session)
        .unwrap()
        .messages
        .iter()
        .map(|m| m.message_type)
        .collect();
    assert_eq!(
        types,
        [MessageType::Text, MessageType::Image, MessageType::File]
    );
}

/// `metadata` must be an object, kept as sent; any other JSON type is refused naming its
/// Python type.
#[test]
fn metadata_must_be_an_object_and_is_kept_as_sent() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let metadata = json!({"nested": {"list": [1, 2.5, "three", null, true]}, "한글": "값", "": ""});
    let stored = post(
        &narutalk,
        alice,
        session,
        json!({"content": "c", "metadata": metadata}),
    )
    .unwrap();
    assert_eq!(Value::Object(stored.metadata.clone()), metadata);
    let reread = narutalk.chat().session(alice, session).unwrap().messages;
    assert_eq!(Value::Object(reread[0].metadata.clone()), metadata);

    let cases = [
        (
            json!([]),
            "Expected a dictionary of items but got type \"list\".",
        ),
        (
            json!([{"a": 1}]),
            "Expected a dictionary of items but got type \"list\".",
        ),
        (
            json!("{}"),
            "Expected a dictionary of items but got type \"str\".",
        ),
        (
            json!(1),
            "Expected a dictionary of items but got type \"int\".",
        ),
        (
            json!(1.5),
            "Expected a dictionary of items but got type \"float\".",
        ),
        (
            json!(false),
            "Expected a dictionary of items but got type \"bool\".",
        ),
        (json!(null), "This field may not be null."),
    ];
    for (metadata, message) in cases {
        assert_eq!(
            field_errors(post(
                &narutalk,
                alice,
                session,
                json!({"content": "c", "metadata": metadata.clone()})
            )),
            json!({ "metadata": [message] }),
            "{metadata}"
        );
    }
    assert_eq!(
        narutalk
            .chat()
            .session(alice, session)
            .unwrap()
            .session
            .message_count,
        1
    );
}

/// NUL is refused in every stored string of a session or a message (contract section 9),
/// with `Null characters are not allowed.` under the field: titles at creation and update,
/// contents, and metadata keys and string values at any depth; the length checks come
/// first. Nothing is stored.
#[test]
fn nul_characters_are_refused_in_titles_contents_and_metadata() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let nul = |field: &str| json!({ field: ["Null characters are not allowed."] });

    assert_eq!(
        field_errors(chat.create_session_fields(alice, &obj(json!({"title": "a\u{0}b"})))),
        nul("title")
    );
    assert_eq!(
        field_errors(
            chat.create_session_fields(alice, &obj(json!({"title": "\u{0}".repeat(201)})))
        ),
        json!({"title": ["Ensure this field has no more than 200 characters."]})
    );
    assert_eq!(
        field_errors(chat.update_session_fields(alice, session, &obj(json!({"title": "\u{0}"})))),
        nul("title")
    );
    for body in [json!({"content": "a\u{0}b"}), json!({"content": "\u{0}"})] {
        assert_eq!(
            field_errors(post(&narutalk, alice, session, body)),
            nul("content")
        );
    }
    for metadata in [
        json!({"k\u{0}": 1}),
        json!({"k": "\u{0}"}),
        json!({"k": [1, {"deeper": ["x", "y\u{0}"]}]}),
        json!({"a": {"b": {"c\u{0}": null}}}),
    ] {
        assert_eq!(
            field_errors(post(
                &narutalk,
                alice,
                session,
                json!({"content": "c", "metadata": metadata})
            )),
            nul("metadata"),
            "{metadata}"
        );
    }
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({"content": "\u{0}", "metadata": {"k": "\u{0}".repeat(20_000)}})
        )),
        json!({
            "content": ["Null characters are not allowed."],
            "metadata": ["Ensure this value has at most 16384 bytes."],
        })
    );
    let detail = chat.session(alice, session).unwrap();
    assert_eq!(detail.session.title, "s");
    assert!(detail.messages.is_empty());
}

/// The metadata limit is 16,384 bytes of compact UTF-8 JSON: exactly that is accepted, one
/// byte more refused; multi-byte characters and escapes count in bytes.
#[test]
fn metadata_of_exactly_16384_bytes_is_accepted_and_16385_refused() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let too_large = json!({"metadata": ["Ensure this value has at most 16384 bytes."]});
    // {"k":"…"} is 8 bytes around the value.
    let two_byte = "é".repeat(8_188); // 16,376 bytes, 8,188 characters
    let exact = json!({"k": two_byte});
    assert_eq!(serde_json::to_string(&exact).unwrap().len(), 16_384);
    let stored = post(
        &narutalk,
        alice,
        session,
        json!({"content": "c", "metadata": exact}),
    )
    .unwrap();
    assert_eq!(Value::Object(stored.metadata), exact);

    let one_more = json!({"k": format!("{two_byte}a")});
    assert_eq!(serde_json::to_string(&one_more).unwrap().len(), 16_385);
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({"content": "c", "metadata": one_more})
        )),
        too_large
    );
    // Far fewer than 16,384 characters, but more bytes.
    let many_bytes = json!({"k": "é".repeat(8_189)});
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({"content": "c", "metadata": many_bytes})
        )),
        too_large
    );

    // A quote is escaped as two bytes in compact JSON.
    let escaped = json!({"k": "\"".repeat(8_188)});
    assert_eq!(serde_json::to_string(&escaped).unwrap().len(), 16_384);
    post(
        &narutalk,
        alice,
        session,
        json!({"content": "c", "metadata": escaped}),
    )
    .unwrap();
    let escaped_more = json!({"k": "\"".repeat(8_189)});
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({"content": "c", "metadata": escaped_more})
        )),
        too_large
    );

    // The size error and a content error are reported together.
    let big = json!({"k": "x".repeat(20_000)});
    assert_eq!(
        field_errors(post(
            &narutalk,
            alice,
            session,
            json!({"content": " ", "metadata": big})
        )),
        json!({
            "content": ["This field may not be blank."],
            "metadata": ["Ensure this value has at most 16384 bytes."],
        })
    );
    assert_eq!(
        narutalk
            .chat()
            .session(alice, session)
            .unwrap()
            .session
            .message_count,
        2
    );
}

/// A posted message is always from the user: a `sender` (or `id`, or `timestamp`) in the
/// body is ignored.
#[test]
fn a_sender_in_the_body_is_ignored_and_the_message_is_stored_as_the_users() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let forged_id = "0b3c5a9e-7f1d-4c2b-9a8e-1d2c3b4a5f60";
    for sender in [json!("ai"), json!("system"), json!(5), json!(null)] {
        let stored = post(
            &narutalk,
            alice,
            session,
            json!({"content": "c", "sender": sender, "id": forged_id, "timestamp": "2000-01-01T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!(stored.sender, Sender::User);
        assert_ne!(stored.id.to_string(), forged_id);
    }
    let senders: Vec<Sender> = narutalk
        .chat()
        .session(alice, session)
        .unwrap()
        .messages
        .iter()
        .map(|m| m.sender)
        .collect();
    assert_eq!(senders, [Sender::User; 4]);
}

/// Adding a message (user, AI or system) moves the session's `updated_at` forward.
#[test]
fn posting_a_message_moves_the_session_updated_at_forward() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s");
    let message = post_text(&narutalk, alice, session.id, "q");
    let after_post = chat.session(alice, session.id).unwrap().session;
    assert!(after_post.updated_at > session.updated_at);
    assert!(after_post.updated_at >= message.timestamp);
    assert_eq!(after_post.created_at, session.created_at);

    answer_pending(&narutalk);
    let after_reply = chat.session(alice, session.id).unwrap().session;
    assert!(after_reply.updated_at > after_post.updated_at);

    post_text(&narutalk, alice, session.id, "q2");
    answer_pending(&narutalk);
    let after_second = chat.session(alice, session.id).unwrap().session;
    assert!(after_second.updated_at > after_reply.updated_at);
}

/// Every message gets the next per-session sequence number, 1, 2, 3, …, independently in
/// each session, and every list follows it.
#[test]
fn messages_are_numbered_1_2_3_per_session_in_storage_order() {
    let (_dir, narutalk, alice) = fixture();
    let a = new_session(&narutalk, alice, "a").id;
    let b = new_session(&narutalk, alice, "b").id;
    let first = narutalk.send_message(alice, a, "a1").unwrap();
    let in_b = post_text(&narutalk, alice, b, "b1");
    let second = narutalk.send_message(alice, a, "a2").unwrap();
    let third = post_text(&narutalk, alice, a, "a3");
    assert_eq!(
        [
            first.message.seq,
            first.reply.seq,
            second.message.seq,
            second.reply.seq,
            third.seq
        ],
        [1, 2, 3, 4, 5]
    );
    assert_eq!(in_b.seq, 1);
    let stored: Vec<i64> = narutalk
        .chat()
        .session(alice, a)
        .unwrap()
        .messages
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, [1, 2, 3, 4, 5]);
    let listed: Vec<i64> = narutalk
        .chat()
        .messages(alice, a, None, PageRequest::default())
        .unwrap()
        .results
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(listed, [1, 2, 3, 4, 5]);
}

/// Posts from many threads at once into one session get distinct, gap-free sequence
/// numbers and an exact count.
#[test]
fn concurrent_posts_to_one_session_get_gap_free_sequence_numbers() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "busy").id;
    let (threads, per_thread) = (8, 10);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let narutalk = &narutalk;
            scope.spawn(move || {
                for i in 0..per_thread {
                    post_text(narutalk, alice, session, &format!("t{t}-{i}"));
                }
            });
        }
    });
    let detail = narutalk.chat().session(alice, session).unwrap();
    let total = threads * per_thread;
    assert_eq!(detail.session.message_count, total as u64);
    let seqs: Vec<i64> = detail.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>());
    // Each thread's own messages keep their order.
    for t in 0..threads {
        let own: Vec<String> = detail
            .messages
            .iter()
            .filter(|m| m.content.starts_with(&format!("t{t}-")))
            .map(|m| m.content.clone())
            .collect();
        assert_eq!(
            own,
            (0..per_thread)
                .map(|i| format!("t{t}-{i}"))
                .collect::<Vec<_>>()
        );
    }
}

/// The same key sent from many threads at once stores exactly one message; every other
/// post replays it and gets its one reply.
#[test]
fn one_idempotency_key_used_concurrently_stores_exactly_one_message() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "race").id;
    let outcomes: Vec<(Message, bool, Message)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let narutalk = &narutalk;
                scope.spawn(move || {
                    let body = obj(json!({ "content": format!("attempt {t}") }));
                    let posting =
                        post_fields(&narutalk.chat(), alice, session, &body, Some("same-key"))
                            .unwrap();
                    (
                        posting.message,
                        posting.repeated,
                        posting.reply.wait().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored: Vec<&(Message, bool, Message)> = outcomes
        .iter()
        .filter(|(_, repeated, _)| !repeated)
        .collect();
    assert_eq!(stored.len(), 1);
    let (first, _, first_reply) = stored[0];
    for (message, _, reply) in &outcomes {
        assert_eq!(message, first);
        assert_eq!(reply, first_reply);
    }
    assert_eq!(
        narutalk.chat().session(alice, session).unwrap().messages,
        [first.clone(), first_reply.clone()]
    );
}

// ---------------------------------------------------------------------------------------
// Messages: listing, `after`, replay
// ---------------------------------------------------------------------------------------

fn fill(narutalk: &Narutalk, owner: UserId, session: SessionId, n: usize) -> Vec<Message> {
    (1..=n)
        .map(|i| post_text(narutalk, owner, session, &format!("m{i}")))
        .collect()
}

fn numbered(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// The message list pages by 20, oldest first, with `count`, `num_pages` and `last`.
#[test]
fn the_message_list_pages_by_20_oldest_first() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let empty = chat
        .messages(alice, session, None, PageRequest::Number(1))
        .unwrap();
    assert_eq!(
        (
            empty.count,
            empty.number,
            empty.num_pages,
            empty.results.len()
        ),
        (0, 1, 1, 0)
    );
    assert_invalid_page(chat.messages(alice, session, None, PageRequest::Number(2)));

    let all = fill(&narutalk, alice, session, 45);
    let pages: Vec<Page<Message>> = (1..=3)
        .map(|n| {
            chat.messages(alice, session, None, PageRequest::Number(n))
                .unwrap()
        })
        .collect();
    for (page, (number, range)) in pages.iter().zip([(1, 1..=20), (2, 21..=40), (3, 41..=45)]) {
        assert_eq!((page.count, page.number, page.num_pages), (45, number, 3));
        assert_eq!(contents(&page.results), numbered(range));
    }
    assert!(pages[0].has_next() && !pages[0].has_previous());
    assert!(!pages[2].has_next() && pages[2].has_previous());
    assert_eq!(pages[0].results, all[..20]);
    assert_eq!(
        chat.messages(alice, session, None, PageRequest::Last)
            .unwrap(),
        pages[2]
    );
    assert_invalid_page(chat.messages(alice, session, None, PageRequest::Number(4)));
}

/// With `after`, only messages stored after that one, with their own count; pages apply
/// within that set.
#[test]
fn after_lists_only_later_messages_with_pages_inside_that_set() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let all = fill(&narutalk, alice, session, 45);
    let after = all[9].id.to_string(); // m10

    let page1 = chat
        .messages(alice, session, Some(&after), PageRequest::Number(1))
        .unwrap();
    assert_eq!((page1.count, page1.number, page1.num_pages), (35, 1, 2));
    assert_eq!(contents(&page1.results), numbered(11..=30));
    assert!(page1.has_next());
    let page2 = chat
        .messages(alice, session, Some(&after), PageRequest::Number(2))
        .unwrap();
    assert_eq!((page2.count, page2.number, page2.num_pages), (35, 2, 2));
    assert_eq!(contents(&page2.results), numbered(31..=45));
    assert!(!page2.has_next());
    assert_eq!(
        chat.messages(alice, session, Some(&after), PageRequest::Last)
            .unwrap(),
        page2
    );
    assert_invalid_page(chat.messages(alice, session, Some(&after), PageRequest::Number(3)));

    let last = all[44].id.to_string();
    let nothing = chat
        .messages(alice, session, Some(&last), PageRequest::Number(1))
        .unwrap();
    assert_eq!(
        (nothing.count, nothing.num_pages, nothing.results.len()),
        (0, 1, 0)
    );
    assert_invalid_page(chat.messages(alice, session, Some(&last), PageRequest::Number(2)));

    let first = all[0].id.to_string();
    let from_second = chat
        .messages(alice, session, Some(&first), PageRequest::Number(1))
        .unwrap();
    assert_eq!(from_second.count, 44);
    assert_eq!(contents(&from_second.results), numbered(2..=21));
}

/// `after` naming a message of another session, a malformed id or an unknown id is
/// `{"after": ["Unknown message id."]}`.
#[test]
fn after_must_name_a_message_of_this_session() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let other = new_session(&narutalk, alice, "other").id;
    let mine = post_text(&narutalk, alice, session, "mine");
    let elsewhere = post_text(&narutalk, alice, other, "elsewhere");
    let unknown = json!({"after": ["Unknown message id."]});

    let bad = [
        elsewhere.id.to_string(),
        MessageId::new_random().to_string(),
        mine.id.to_string().to_uppercase(),
        format!("{{{}}}", mine.id),
        mine.id.to_string().replace('-', ""),
        session.to_string(),
        "' OR 1=1--".to_owned(),
        "not-a-uuid".to_owned(),
        String::new(),
    ];
    for after in &bad {
        assert_eq!(
            field_errors(chat.messages(alice, session, Some(after), PageRequest::default())),
            unknown,
            "{after:?}"
        );
        assert_eq!(
            field_errors(chat.messages_after(alice, session, Some(after))),
            unknown,
            "{after:?}"
        );
    }
    assert_eq!(
        field_errors(chat.messages_after(alice, session, Some(&elsewhere.id.to_string()))),
        unknown
    );
    assert_eq!(
        field_errors(chat.messages_after(
            alice,
            session,
            Some(&MessageId::new_random().to_string())
        )),
        unknown
    );
    // The page is not looked at before `after`, and the message still lists.
    assert_eq!(
        field_errors(chat.messages(alice, session, Some(&bad[1]), PageRequest::Number(7))),
        unknown
    );
    assert_eq!(
        chat.messages(
            alice,
            session,
            Some(&mine.id.to_string()),
            PageRequest::default()
        )
        .unwrap()
        .count,
        0
    );
}

/// `messages_after` replays every message stored after the given one, in storage order.
#[test]
fn messages_after_replays_every_later_message_in_storage_order() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let empty = new_session(&narutalk, alice, "empty").id;
    assert!(chat.messages_after(alice, empty, None).unwrap().is_empty());

    let all = fill(&narutalk, alice, session, 26);
    let everything = chat.messages_after(alice, session, None).unwrap();
    assert_eq!(everything.len(), 26, "no paging in a replay");
    assert_eq!(everything[..], all[..]);

    let later = chat
        .messages_after(alice, session, Some(&all[22].id.to_string()))
        .unwrap();
    assert_eq!(contents(&later), ["m24", "m25", "m26"]);
    assert!(
        chat.messages_after(alice, session, Some(&all[25].id.to_string()))
            .unwrap()
            .is_empty()
    );
}

/// A replay read a page at a time gives what `messages_after` gives in one piece, and its
/// start is the named message's sequence number (0 without one); a session of another
/// user is not found and an unknown message is a field error under `after`.
#[test]
fn a_paged_replay_starts_after_the_named_message_and_reads_in_storage_order() {
    let (_dir, narutalk, alice) = fixture();
    let bob = add_user(&narutalk, "bob");
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let all = fill(&narutalk, alice, session, 25);

    assert_eq!(chat.replay_start(alice, session, None).unwrap(), 0);
    let start = chat
        .replay_start(alice, session, Some(&all[4].id.to_string()))
        .unwrap();
    assert_eq!(start, all[4].seq);
    let mut replayed = Vec::new();
    let mut last = start;
    loop {
        let page = chat.messages_after_seq(alice, session, last, 7).unwrap();
        assert!(page.len() <= 7);
        let Some(tail) = page.last() else { break };
        last = tail.seq;
        replayed.extend(page);
    }
    assert_eq!(replayed[..], all[5..]);
    assert_eq!(
        replayed,
        chat.messages_after(alice, session, Some(&all[4].id.to_string()))
            .unwrap()
    );

    assert_not_found(chat.replay_start(bob, session, None));
    assert_not_found(chat.messages_after_seq(bob, session, 0, 10));
    assert_eq!(
        field_errors(chat.replay_start(alice, session, Some(&MessageId::new_random().to_string()))),
        json!({"after": ["Unknown message id."]})
    );
}

/// `sessions_exist` answers, pair by pair, whether the session exists and is that
/// owner's; a deleted session and someone else's session answer false.
#[test]
fn sessions_exist_answers_per_owner_and_notices_deletion() {
    let (_dir, narutalk, alice) = fixture();
    let bob = add_user(&narutalk, "bob");
    let chat = narutalk.chat();
    let kept = new_session(&narutalk, alice, "kept").id;
    let deleted = new_session(&narutalk, alice, "deleted").id;
    let bobs = new_session(&narutalk, bob, "bob's").id;
    let pairs = [(alice, kept), (alice, deleted), (bob, bobs), (alice, bobs)];
    assert_eq!(
        chat.sessions_exist(&pairs).unwrap(),
        [true, true, true, false]
    );
    chat.delete_session(alice, deleted).unwrap();
    assert_eq!(
        chat.sessions_exist(&pairs).unwrap(),
        [true, false, true, false]
    );
    assert_eq!(chat.sessions_exist(&[]).unwrap(), Vec::<bool>::new());
}

/// `last_seqs` answers, pair by pair, the sequence number of the session's last stored
/// message (0 before the first): what a server compares with what its sockets were sent.
/// A deleted session and someone else's session answer `None`.
#[test]
fn last_seqs_answer_each_sessions_last_sequence_number_per_owner() {
    let (_dir, narutalk, alice) = fixture();
    let bob = add_user(&narutalk, "bob");
    let chat = narutalk.chat();
    let empty = new_session(&narutalk, alice, "empty").id;
    let talked = new_session(&narutalk, alice, "talked").id;
    let deleted = new_session(&narutalk, alice, "deleted").id;
    let bobs = new_session(&narutalk, bob, "bob's").id;
    post_text(&narutalk, alice, talked, "one");
    post_text(&narutalk, alice, talked, "two");
    let last = post_text(&narutalk, alice, talked, "three");
    post_text(&narutalk, bob, bobs, "bob's one");
    chat.delete_session(alice, deleted).unwrap();
    let pairs = [
        (alice, empty),
        (alice, talked),
        (alice, deleted),
        (bob, bobs),
        (alice, bobs),
    ];
    assert_eq!(
        chat.last_seqs(&pairs).unwrap(),
        [Some(0), Some(last.seq), None, Some(1), None]
    );
    assert_eq!(last.seq, 3);
    assert_eq!(chat.last_seqs(&[]).unwrap(), Vec::<Option<i64>>::new());
}

/// Hostile strings (SQL, LIKE wildcards, control characters, emoji, RTL marks) round-trip
/// byte for byte in titles, contents and metadata, and the tables survive. (NUL is
/// refused: see `nul_characters_are_refused_in_titles_contents_and_metadata`.)
#[test]
fn hostile_strings_round_trip_byte_identical() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let hostile = [
        "'; DROP TABLE chat_messages;--",
        "\"; DROP TABLE chat_sessions; --",
        "%",
        "_",
        "%_%\\",
        "a\u{1}b\u{1b}[31m",
        "👩‍⚕️🩺 🇰🇷",
        "\u{202E}txt.exe\u{202C} مرحبا שלום",
        "\u{FEFF}\u{200B}zero width",
        "<script>alert(1)</script>",
        "Robert'); DELETE FROM users; --",
    ];
    for text in hostile {
        let created = chat
            .create_session_fields(alice, &obj(json!({ "title": text, "category": "medical" })))
            .unwrap();
        assert_eq!(created.session.title.as_bytes(), text.as_bytes());
        let metadata = json!({ text: text, "k": [text] });
        let message = post(
            &narutalk,
            alice,
            created.session.id,
            json!({ "content": text, "metadata": metadata }),
        )
        .unwrap();
        assert_eq!(message.content.as_bytes(), text.as_bytes());

        let detail = chat.session(alice, created.session.id).unwrap();
        assert_eq!(detail.session.title.as_bytes(), text.as_bytes());
        assert_eq!(detail.messages.len(), 1);
        assert_eq!(detail.messages[0].content.as_bytes(), text.as_bytes());
        assert_eq!(Value::Object(detail.messages[0].metadata.clone()), metadata);
        let listed = chat
            .messages(alice, created.session.id, None, PageRequest::default())
            .unwrap();
        assert_eq!(listed.results[0].content.as_bytes(), text.as_bytes());
    }
    let page = list(
        &narutalk,
        alice,
        SessionFilter::default(),
        PageRequest::default(),
    );
    assert_eq!(page.count, hostile.len() as u64);
    let mut titles: Vec<&str> = page
        .results
        .iter()
        .map(|s| s.session.title.as_str())
        .collect();
    titles.reverse();
    assert_eq!(titles, hostile);
    for summary in &page.results {
        assert_eq!(
            summary.last_message.as_ref().unwrap().content,
            summary.session.title
        );
    }
    // The user survived too.
    assert_eq!(narutalk.accounts().get(alice).unwrap().username, "alice");
}

// ---------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------

/// The same key, user and session answer the first message and its reply again, storing
/// nothing new, whatever the second body says.
#[test]
fn a_repeated_idempotency_key_replays_the_first_message_and_stores_nothing() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let body = obj(json!({"content": "once"}));
    let first = post_fields(&chat, alice, session, &body, Some("key-1")).unwrap();
    assert!(!first.repeated, "the first post must store");
    let first_reply = first.reply.wait().unwrap();
    let first = first.message;
    let after_first = chat.session(alice, session).unwrap().session;

    let replay = post_fields(
        &chat,
        alice,
        session,
        &obj(json!({"content": "different"})),
        Some("key-1"),
    )
    .unwrap();
    assert!(replay.repeated);
    assert_eq!(replay.message, first);
    assert!(replay.reply.is_ready(), "the stored reply is ready at once");
    assert_eq!(replay.reply.wait().unwrap(), first_reply);
    assert_eq!(
        chat.session(alice, session).unwrap().session,
        after_first,
        "nothing stored, nothing moved"
    );
    assert_eq!(
        chat.session(alice, session).unwrap().session.message_count,
        2
    );

    // Without a key, or with another key, the same body is a new message. Keys are
    // case-sensitive.
    for key in [None, Some("key-2"), Some("KEY-1")] {
        let posted = post_fields(&chat, alice, session, &body, key).unwrap();
        assert!(!posted.repeated, "{key:?}");
        posted.reply.wait().unwrap();
    }
    assert_eq!(
        chat.session(alice, session).unwrap().session.message_count,
        8
    );
}

/// A key is remembered per session: the same key on another session stores a new message.
#[test]
fn the_same_idempotency_key_on_another_session_stores_a_new_message() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let a = new_session(&narutalk, alice, "a").id;
    let b = new_session(&narutalk, alice, "b").id;
    let body = obj(json!({"content": "hello"}));
    let (in_a, stored) = store_pending(&narutalk, alice, a, &body, Some("shared")).unwrap();
    assert!(stored, "stored in a");
    let (in_b, stored) = store_pending(&narutalk, alice, b, &body, Some("shared")).unwrap();
    assert!(stored, "stored in b");
    assert_ne!(in_a.id, in_b.id);
    assert_eq!(in_b.session_id, b);
    assert_eq!(
        store_pending(&narutalk, alice, a, &body, Some("shared")).unwrap(),
        (in_a, false)
    );
    assert_eq!(
        store_pending(&narutalk, alice, b, &body, Some("shared")).unwrap(),
        (in_b, false)
    );
    assert_eq!(chat.session(alice, a).unwrap().session.message_count, 1);
    assert_eq!(chat.session(alice, b).unwrap().session.message_count, 1);
}

/// A key must be 1-64 visible ASCII characters; anything else is a field error and stores
/// nothing.
#[test]
fn a_malformed_idempotency_key_is_a_field_error() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "s").id;
    let body = obj(json!({"content": "c"}));
    let too_long = "k".repeat(65);
    for key in [
        "",
        too_long.as_str(),
        "a b",
        " key",
        "key\n",
        "tab\t",
        "é",
        "키",
        "\u{0}",
        "\u{7f}",
    ] {
        assert_eq!(
            field_errors(post_fields(&chat, alice, session, &body, Some(key))),
            json!({ "Idempotency-Key": [IDEMPOTENCY_KEY_MESSAGE] }),
            "{key:?}"
        );
    }
    // Reported alongside the body's own errors.
    assert_eq!(
        field_errors(post_fields(
            &chat,
            alice,
            session,
            &obj(json!({"content": ""})),
            Some("")
        )),
        json!({"Idempotency-Key": [IDEMPOTENCY_KEY_MESSAGE], "content": ["This field may not be blank."]})
    );
    assert_eq!(
        chat.session(alice, session).unwrap().session.message_count,
        0
    );

    let longest = "k".repeat(64);
    for key in [
        "!",
        "~",
        longest.as_str(),
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    ] {
        let (_, stored) = store_pending(&narutalk, alice, session, &body, Some(key)).unwrap();
        assert!(stored, "{key:?}");
    }
    assert_eq!(
        chat.session(alice, session).unwrap().session.message_count,
        4
    );
}

/// The whole turn with a repeated key answers the first exchange and never calls the
/// responder again; a first post whose reply is missing gets it on the repeat.
#[test]
fn send_message_fields_with_a_repeated_key_answers_the_first_exchange_without_a_new_ai_call() {
    let (_dir, narutalk, alice) = fixture();
    let counting = Arc::new(Counting::default());
    let narutalk = narutalk.with_responder(counting.clone());
    let session = new_session(&narutalk, alice, "s").id;
    let body = obj(json!({"content": "question"}));

    let first = narutalk
        .send_message_fields(alice, session, &body, Some("turn-1"))
        .unwrap();
    assert_eq!(first.reply.content, "reply 1");
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    let again = narutalk
        .send_message_fields(
            alice,
            session,
            &obj(json!({"content": "changed"})),
            Some("turn-1"),
        )
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        narutalk
            .chat()
            .session(alice, session)
            .unwrap()
            .session
            .message_count,
        2
    );

    // A post stored with a key but never answered (the process stopped mid-turn) gets its
    // reply on the repeat, once.
    let (orphan, stored) = store_pending(&narutalk, alice, session, &body, Some("turn-2")).unwrap();
    assert!(stored);
    let completed = narutalk
        .send_message_fields(alice, session, &body, Some("turn-2"))
        .unwrap();
    assert_eq!(completed.message, orphan);
    assert_eq!(completed.reply.content, "reply 2");
    assert_eq!(completed.reply.reply_to, Some(orphan.id));
    assert_eq!(counting.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        narutalk
            .send_message_fields(alice, session, &body, Some("turn-2"))
            .unwrap(),
        completed
    );
    assert_eq!(counting.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        narutalk
            .chat()
            .session(alice, session)
            .unwrap()
            .session
            .message_count,
        4
    );
}

// ---------------------------------------------------------------------------------------
// The AI turn
// ---------------------------------------------------------------------------------------

/// `send_message` stores the user message, then the template reply (`ai`, `text`), linked
/// to it; the count moves by two.
#[test]
fn send_message_stores_the_user_message_then_the_template_reply() {
    let (_dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let exchange = narutalk.send_message(alice, session, "두통").unwrap();
    assert_eq!(exchange.message.content, "두통");
    assert_eq!(exchange.message.sender, Sender::User);
    assert_eq!(exchange.message.message_type, MessageType::Text);
    assert_eq!(exchange.message.seq, 1);
    assert_eq!(
        exchange.reply.content,
        "AI 응답: 두통에 대한 의료 정보를 제공합니다."
    );
    assert_eq!(exchange.reply.sender, Sender::Ai);
    assert_eq!(exchange.reply.message_type, MessageType::Text);
    assert_eq!(
        Value::Object(exchange.reply.metadata.clone()),
        json!({"responder": "template"})
    );
    assert_eq!(exchange.reply.seq, 2);
    assert_eq!(exchange.reply.reply_to, Some(exchange.message.id));
    assert_eq!(
        exchange.message.id.0.get_version_num(),
        4,
        "message ids are UUID v4"
    );
    assert_eq!(exchange.reply.id.0.get_version_num(), 4);
    assert_eq!(exchange.reply.session_id, session);
    assert!(exchange.reply.timestamp >= exchange.message.timestamp);

    let detail = narutalk.chat().session(alice, session).unwrap();
    assert_eq!(detail.session.message_count, 2);
    assert_eq!(
        detail.messages,
        [exchange.message.clone(), exchange.reply.clone()]
    );
    narutalk.send_message(alice, session, "again").unwrap();
    assert_eq!(
        narutalk
            .chat()
            .session(alice, session)
            .unwrap()
            .session
            .message_count,
        4
    );
}

/// The responder gets the session's category, the last N (configured) messages stored
/// before the new one, oldest first, without system messages, and the new message itself
/// outside the history; turns stored before an earlier one was answered are answered
/// after it, in order.
#[test]
fn the_responder_gets_the_category_and_the_last_n_non_system_messages_oldest_first() {
    let (_dir, narutalk, alice) = fixture_with(|config| config.ai_history_messages = 3);
    let seen: Arc<std::sync::Mutex<Vec<AiRequest>>> = Arc::default();
    let recorder = seen.clone();
    let narutalk = narutalk.with_responder(Arc::new(Scripted(move |request: &AiRequest| {
        recorder.lock().unwrap().push(request.clone());
        match request.message.as_str() {
            "u2" => Err(AiError::new("down")), // a system message
            other => reply(&other.replace('u', "a")),
        }
    })));
    let chat = narutalk.chat();
    let session = chat
        .create_session(alice, "s", Category::Emergency)
        .unwrap()
        .session
        .id;
    for content in ["u1", "u2", "u3"] {
        post_text(&narutalk, alice, session, content);
        answer_pending(&narutalk);
    }
    let u4 = post_text(&narutalk, alice, session, "u4");
    post_text(&narutalk, alice, session, "stored after u4");
    answer_pending(&narutalk);

    let seen = seen.lock().unwrap();
    let messages: Vec<&str> = seen.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["u1", "u2", "u3", "u4", "stored after u4"]);
    assert!(seen[0].history.is_empty());
    let turn = &seen[3];
    assert_eq!(turn.session_id, session);
    assert_eq!(turn.category, Category::Emergency);
    assert_eq!(
        turn.history,
        [
            HistoryTurn {
                sender: Sender::User,
                content: "u2".into()
            },
            HistoryTurn {
                sender: Sender::User,
                content: "u3".into()
            },
            HistoryTurn {
                sender: Sender::Ai,
                content: "a3".into()
            },
        ]
    );
    // A later message's history has the earlier one, stored before it, never itself.
    assert_eq!(
        seen[4].history,
        [
            HistoryTurn {
                sender: Sender::User,
                content: "u3".into()
            },
            HistoryTurn {
                sender: Sender::Ai,
                content: "a3".into()
            },
            HistoryTurn {
                sender: Sender::User,
                content: "u4".into()
            },
        ]
    );
    // Each reply is linked to its message, in the order of the messages.
    let stored = chat.session(alice, session).unwrap().messages;
    let u4_reply = stored.iter().find(|m| m.reply_to == Some(u4.id)).unwrap();
    assert_eq!(u4_reply.content, "a4");
    assert_eq!(
        contents(&stored[6..]),
        ["u4", "stored after u4", "a4", "stored after a4"]
    );
}

/// With the default N (20) and fewer messages, the whole earlier conversation is sent; the
/// responder sees the session's category and every earlier message.
#[test]
fn the_responder_receives_the_whole_short_history_and_the_category() {
    let (_dir, narutalk, alice) = fixture();
    let seen: Arc<std::sync::Mutex<Vec<AiRequest>>> = Arc::default();
    let recorder = seen.clone();
    let narutalk = narutalk.with_responder(Arc::new(Scripted(move |request: &AiRequest| {
        recorder.lock().unwrap().push(request.clone());
        reply(&format!("re: {}", request.message))
    })));
    let session = narutalk
        .chat()
        .create_session(alice, "s", Category::Consultation)
        .unwrap()
        .session
        .id;
    narutalk.send_message(alice, session, "one").unwrap();
    narutalk.send_message(alice, session, "two").unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].category, Category::Consultation);
    assert_eq!(seen[0].message, "one");
    assert!(seen[0].history.is_empty());
    assert_eq!(seen[1].message, "two");
    assert_eq!(
        seen[1].history,
        [
            HistoryTurn {
                sender: Sender::User,
                content: "one".into()
            },
            HistoryTurn {
                sender: Sender::Ai,
                content: "re: one".into()
            },
        ]
    );
}

fn assert_turn_failed_with(responder: Arc<dyn Responder>, reason: &str) {
    let (_dir, narutalk, alice) = fixture();
    let narutalk = narutalk.with_responder(responder);
    let session = new_session(&narutalk, alice, "s").id;
    let exchange = narutalk.send_message(alice, session, "help").unwrap();
    assert_eq!(exchange.message.content, "help");
    assert_eq!(exchange.message.sender, Sender::User);
    assert_eq!(exchange.reply.sender, Sender::System);
    assert_eq!(exchange.reply.message_type, MessageType::Error);
    assert_eq!(exchange.reply.content, UNAVAILABLE);
    assert_eq!(
        Value::Object(exchange.reply.metadata.clone()),
        json!({ "reason": reason })
    );
    assert_eq!(exchange.reply.reply_to, Some(exchange.message.id));
    let detail = narutalk.chat().session(alice, session).unwrap();
    assert_eq!(detail.session.message_count, 2);
    assert_eq!(detail.messages, [exchange.message, exchange.reply]);
}

/// A responder error becomes the system error message with its reason; the user message stays.
#[test]
fn a_failing_responder_stores_the_system_error_message_and_keeps_the_user_message() {
    assert_turn_failed_with(
        Arc::new(Scripted(|_: &AiRequest| -> Result<AiReply, AiError> {
            Err(AiError::new("boom"))
        })),
        "boom",
    );
}

/// A panicking responder is caught and becomes the system error message.
#[test]
fn a_panicking_responder_stores_the_system_error_message_and_keeps_the_user_message() {
    assert_turn_failed_with(
        Arc::new(Scripted(|_: &AiRequest| -> Result<AiReply, AiError> {
            panic!("responder exploded")
        })),
        "responder failed",
    );
}

/// A blank reply counts as nonsense and becomes the system error message.
#[test]
fn a_blank_reply_stores_the_system_error_message_and_keeps_the_user_message() {
    assert_turn_failed_with(
        Arc::new(Scripted(|_: &AiRequest| reply(" \n\t "))),
        "empty reply",
    );
    assert_turn_failed_with(Arc::new(Scripted(|_: &AiRequest| reply(""))), "empty reply");
}

/// A session deleted while the responder worked answers `NotFound` and nothing is stored.
#[test]
fn storing_a_reply_for_a_session_deleted_meanwhile_is_not_found_and_stores_nothing() {
    let (dir, narutalk, alice) = fixture();
    let session = new_session(&narutalk, alice, "s").id;
    let other_process = reopen_with(&dir, Arc::new(narutalk_core::ai::TemplateResponder));
    let narutalk = narutalk.with_responder(Arc::new(Scripted(move |_: &AiRequest| {
        other_process.chat().delete_session(alice, session).unwrap();
        reply("late")
    })));
    assert_not_found(narutalk.send_message(alice, session, "q"));
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_messages WHERE session_id = ?1",
            &session.to_string()
        ),
        0
    );
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_sessions WHERE id = ?1 AND turns_pending > 0",
            &session.to_string()
        ),
        0
    );
}

/// A reply is stored once per user message: another process that answered the same
/// message (storing a reply under its own id) gets the stored reply back and stores
/// nothing, and the pending turn is gone with the first.
#[test]
fn a_turn_stores_exactly_one_reply() {
    let (dir, narutalk, alice) = fixture();
    let other_process = reopen_with(&dir, Arc::new(narutalk_core::ai::TemplateResponder));
    let session = new_session(&narutalk, alice, "s").id;
    let message = post_text(&narutalk, alice, session, "q");
    let answer = |content: &str| NewMessage {
        id: MessageId::new_random(),
        sender: Sender::Ai,
        message_type: MessageType::Text,
        content: content.to_owned(),
        metadata: JsonObject::new(),
        reply_to: Some(message.id),
    };
    let audit = Audit::now(&Origin::default(), Actor::Engine);
    let first = answer("first");
    let stored = narutalk
        .store()
        .store_reply(
            session,
            message.seq,
            &first,
            &audit,
            None,
            std::time::Instant::now(),
        )
        .unwrap();
    assert!(stored.stored_now);
    assert_eq!(stored.reply.id, first.id);
    assert_eq!(stored.reply.reply_to, Some(message.id));
    assert_eq!(stored.reply.seq, 2);
    let again = other_process
        .store()
        .store_reply(
            session,
            message.seq,
            &answer("second"),
            &audit,
            None,
            std::time::Instant::now(),
        )
        .unwrap();
    assert!(!again.stored_now);
    assert_eq!(again.reply, stored.reply);
    let detail = narutalk.chat().session(alice, session).unwrap();
    assert_eq!(detail.session.message_count, 2);
    assert_eq!(detail.messages, [message, stored.reply]);
    assert_eq!(
        stored_rows(
            &narutalk,
            "SELECT count(*) FROM chat_sessions WHERE id = ?1 AND turns_pending > 0",
            &session.to_string()
        ),
        0
    );
}

/// The reply metadata the responder gives is stored with the AI message.
#[test]
fn the_responders_metadata_is_stored_with_the_ai_reply() {
    let (_dir, narutalk, alice) = fixture();
    let narutalk = narutalk.with_responder(Arc::new(Scripted(
        |_: &AiRequest| -> Result<AiReply, AiError> {
            Ok(AiReply {
                content: "answer".into(),
                metadata: obj(json!({"sources": ["a", "b"], "confidence": 0.5})),
            })
        },
    )));
    let session = new_session(&narutalk, alice, "s").id;
    let exchange = narutalk.send_message(alice, session, "q").unwrap();
    assert_eq!(
        Value::Object(exchange.reply.metadata.clone()),
        json!({"sources": ["a", "b"], "confidence": 0.5})
    );
    let stored = narutalk.chat().session(alice, session).unwrap().messages;
    assert_eq!(stored[1], exchange.reply);
}

// ---------------------------------------------------------------------------------------
// Property tests: no input panics
// ---------------------------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let interesting = prop::sample::select(vec![
        "",
        " ",
        "\n",
        "text",
        "image",
        "file",
        "error",
        "medical",
        "general",
        "emergency",
        "consultation",
        "true",
        "false",
        "1",
        "0",
        "x",
        "ai",
        "system",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        interesting.prop_map(|s| Value::String(s.to_owned())),
        (195usize..205, any::<char>()).prop_map(|(n, c)| Value::String(c.to_string().repeat(n))),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn json_body() -> impl Strategy<Value = JsonObject> {
    let known = prop::sample::select(vec![
        "title",
        "category",
        "is_active",
        "content",
        "message_type",
        "metadata",
        "sender",
        "id",
    ])
    .prop_map(str::to_owned);
    let key = prop_oneof![3 => known, 1 => any::<String>()];
    prop::collection::vec((key, json_value()), 0..6).prop_map(|pairs| pairs.into_iter().collect())
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Arbitrary JSON bodies never panic the session and message operations: each either
/// succeeds (with the rules applied) or answers field errors on known fields only.
#[test]
fn arbitrary_bodies_either_succeed_or_answer_field_errors() {
    let (_dir, narutalk, alice) = fixture();
    let chat = narutalk.chat();
    let session = new_session(&narutalk, alice, "target").id;

    runner()
        .run(&json_body(), |body| {
            let result = chat.create_session_fields(alice, &body);
            field_errors_only(&result, &["title", "category"])?;
            if let Ok(created) = result {
                let Some(Value::String(title)) = body.get("title") else {
                    return Err(TestCaseError::fail("created without a string title"));
                };
                prop_assert_eq!(created.session.title, title.trim());
            }
            Ok(())
        })
        .unwrap();

    runner()
        .run(&json_body(), |body| {
            let result = chat.update_session_fields(alice, session, &body);
            field_errors_only(&result, &["title", "category", "is_active"])?;
            if let (Ok(updated), Some(Value::String(title))) = (&result, body.get("title")) {
                prop_assert_eq!(updated.session.title.as_str(), title.trim());
            }
            Ok(())
        })
        .unwrap();

    let key = prop::option::of(prop_oneof![any::<String>(), "[!-~]{1,64}"]);
    runner()
        .run(&(json_body(), key), |(body, key)| {
            let result = store_pending(&narutalk, alice, session, &body, key.as_deref());
            field_errors_only(
                &result,
                &["content", "message_type", "metadata", "Idempotency-Key"],
            )?;
            if let Ok((message, true)) = &result {
                prop_assert_eq!(message.sender, Sender::User);
                prop_assert_ne!(message.message_type, MessageType::Error);
                prop_assert_eq!(
                    Some(&Value::String(message.content.clone())),
                    body.get("content")
                );
            }
            Ok(())
        })
        .unwrap();

    // The stored count kept with each session matches the rows actually stored.
    let detail = chat.session(alice, session).unwrap();
    assert_eq!(detail.session.message_count, detail.messages.len() as u64);
    let rows = stored_rows(
        &narutalk,
        "SELECT count(*) FROM chat_messages WHERE session_id = ?1",
        &session.to_string(),
    );
    assert_eq!(detail.messages.len() as i64, rows);
    let seqs: Vec<i64> = detail.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=rows).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any `?page` value parses to a page of at least 1, `last`, or `InvalidPage`.
    #[test]
    fn any_page_parameter_parses_or_is_an_invalid_page(raw in prop::option::of(any::<String>())) {
        match PageRequest::parse(raw.as_deref()) {
            Ok(PageRequest::Number(n)) => prop_assert!(n >= 1),
            Ok(PageRequest::Last) => prop_assert_eq!(raw.as_deref(), Some("last")),
            Err(Error::InvalidPage) => {}
            Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }

    /// Any numeric `?page` text within range parses to that number.
    #[test]
    fn any_positive_page_number_parses_to_itself(n in 1u32..) {
        prop_assert_eq!(PageRequest::parse(Some(&n.to_string())).unwrap(), PageRequest::Number(n));
    }

    /// Any filter values parse or answer field errors under `category` / `is_active` only.
    #[test]
    fn any_filter_parameters_parse_or_answer_field_errors(
        category in prop::option::of(any::<String>()),
        is_active in prop::option::of(any::<String>()),
    ) {
        let result = SessionFilter::parse(category.as_deref(), is_active.as_deref());
        field_errors_only(&result, &["category", "is_active"])?;
        if let Ok(filter) = result {
            prop_assert_eq!(filter.category.is_some(), category.as_deref().is_some_and(|c| !c.is_empty()));
            prop_assert_eq!(filter.is_active.is_some(), is_active.as_deref().is_some_and(|a| !a.is_empty()));
        }
    }

    /// Any text either is a canonical id (and prints back identically) or is `NotFound`.
    #[test]
    fn any_text_is_a_canonical_session_id_or_not_found(raw in prop_oneof![
        any::<String>(),
        "[0-9a-fA-F-]{34,38}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ]) {
        match SessionId::from_str(&raw) {
            Ok(id) => prop_assert_eq!(id.to_string(), raw),
            Err(Error::NotFound) => {}
            Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Turns in flight: a repeated idempotent post never asks the AI twice
// ---------------------------------------------------------------------------------------

/// A responder that takes `delay` and counts its calls.
struct Slow {
    delay: std::time::Duration,
    calls: AtomicUsize,
}

impl Responder for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn respond(
        &self,
        request: &AiRequest,
        _on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        reply(&format!("slow answer to {}", request.message))
    }
}

/// Contract section 3: a repeat "answers the first result again, with no new message and
/// no new AI call", also while the first call's reply is still being produced.
#[test]
fn a_repeat_sent_while_the_first_reply_is_produced_waits_for_it_instead_of_asking_again() {
    // Arrange
    let (_dir, narutalk, alice) = fixture();
    let slow = Arc::new(Slow {
        delay: std::time::Duration::from_millis(400),
        calls: AtomicUsize::new(0),
    });
    let narutalk = narutalk.with_responder(slow.clone());
    let session = new_session(&narutalk, alice, "s").id;
    let body = obj(json!({"content": "hello"}));

    // Act: the second call starts while the first is inside the responder.
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| narutalk.send_message_fields(alice, session, &body, Some("k1")));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let second =
            scope.spawn(|| narutalk.send_message_fields(alice, session, &body, Some("k1")));
        (
            first.join().unwrap().unwrap(),
            second.join().unwrap().unwrap(),
        )
    });

    // Assert
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    assert_eq!(first, second);
    assert_eq!(first.reply.content, "slow answer to hello");
    let stored = narutalk.chat().session(alice, session).unwrap();
    assert_eq!(stored.messages.len(), 2);
}

/// A post whose turn was left pending (its process stopped mid-turn) is answered by the
/// repeat of its key, once, with no engine running.
#[test]
fn a_repeat_of_a_post_left_pending_answers_it_once() {
    let (_dir, narutalk, alice) = fixture();
    let counting = Arc::new(Counting::default());
    let narutalk = narutalk.with_responder(counting.clone());
    let session = new_session(&narutalk, alice, "s").id;
    let body = obj(json!({"content": "hello"}));
    let (message, stored) = store_pending(&narutalk, alice, session, &body, Some("k")).unwrap();
    assert!(stored);

    let repeat = post_fields(&narutalk.chat(), alice, session, &body, Some("k")).unwrap();
    assert!(repeat.repeated);
    assert_eq!(repeat.message, message);
    let reply = repeat.reply.wait().unwrap();
    assert_eq!(reply.reply_to, Some(message.id));
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    let again = post_fields(&narutalk.chat(), alice, session, &body, Some("k")).unwrap();
    assert_eq!(again.reply.wait().unwrap(), reply);
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Small lookups and a deleted acting user
// ---------------------------------------------------------------------------------------

/// `exists` answers for the owner only, and false once the session is deleted.
#[test]
fn exists_is_true_only_for_the_owner_of_a_live_session() {
    let (_dir, narutalk, alice) = fixture();
    let mallory = add_user(&narutalk, "mallory");
    let session = new_session(&narutalk, alice, "s").id;
    assert!(narutalk.chat().exists(alice, session).unwrap());
    assert!(!narutalk.chat().exists(mallory, session).unwrap());
    narutalk.chat().delete_session(alice, session).unwrap();
    assert!(!narutalk.chat().exists(alice, session).unwrap());
}

/// A user deleted after their token was checked cannot create a session: the answer is an
/// invalid token, never an internal error.
#[test]
fn creating_a_session_for_a_deleted_user_is_an_invalid_token_not_a_server_error() {
    let (_dir, narutalk, alice) = fixture();
    narutalk.accounts().delete(alice).unwrap();
    let result = narutalk
        .chat()
        .create_session(alice, "s", Category::General);
    assert!(
        matches!(
            result,
            Err(Error::InvalidToken(
                narutalk_core::error::TokenProblem::Invalid
            ))
        ),
        "{result:?}"
    );
}
