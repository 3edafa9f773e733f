//! Protects administration across users (`narutalk_core::admin`): listing every owner's
//! sessions, the export format, the import's checks, idempotence and batching, the
//! statistics, and the database check of the session counters.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use chrono::{Days, NaiveDate, Utc};
use narutalk_core::Narutalk;
use narutalk_core::accounts::{NewUser, Role, User};
use narutalk_core::admin::{
    CreatedOwner, IMPORT_BATCH_ROWS, ImportError, ImportFile, ImportOptions, ImportProgress,
    ImportReport, Location, RoleCount, SessionQuery, UserActivity,
};
use narutalk_core::chat::{Category, MessageId, MessageType, NewMessage, Sender, SessionId};
use narutalk_core::config::Config;
use narutalk_core::error::Error;
use narutalk_core::events::{Actor, Origin};
use narutalk_core::store::{Audit, OpenError, OpenMode, Posted, UserPost};
use narutalk_core::{StartError, admin};
use serde_json::{Value, json};
use support::{Fixture, PASSWORD, open};

const S1: &str = "11111111-1111-4111-8111-111111111111";
const S2: &str = "22222222-2222-4222-8222-222222222222";
const M1: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa1";
const M2: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa2";
const M3: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa3";

fn create(narutalk: &Narutalk, username: &str, role: Role) -> User {
    narutalk
        .accounts()
        .create(&NewUser {
            email: format!("{username}@example.com"),
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            role,
            department: String::new(),
            is_verified: false,
        })
        .unwrap()
}

/// One exported session of `owner` with the messages `(id, seq, sender, reply_to)`.
fn record(id: &str, owner: &str, messages: &[(&str, i64, &str, Option<&str>)]) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(id, seq, sender, reply_to)| {
            json!({
                "id": id, "seq": seq, "sender": sender, "message_type": "text",
                "content": format!("message {seq}"), "metadata": {"n": seq},
                "timestamp": "2026-11-20T08:00:00.000001Z", "reply_to": reply_to,
            })
        })
        .collect();
    json!({
        "id": id, "owner_email": owner, "title": "Imported", "category": "medical",
        "is_active": true, "created_at": "2026-11-20T08:00:00.000000Z",
        "updated_at": "2026-11-20T09:00:00.000000Z",
        "message_count": messages.len(), "messages": messages,
    })
}

/// A session of `user` with one question and its reply.
fn asked(narutalk: &Narutalk, user: &User, title: &str, category: Category) -> SessionId {
    let session = narutalk
        .chat()
        .create_session(user.id, title, category)
        .unwrap();
    narutalk
        .send_message(user.id, session.session.id, "What helps?")
        .unwrap();
    session.session.id
}

fn user_count(narutalk: &Narutalk) -> usize {
    narutalk.accounts().list(&Default::default()).unwrap().len()
}

fn jsonl(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        out.extend(serde_json::to_vec(record).unwrap());
        out.push(b'\n');
    }
    out
}

fn parse_error(bytes: &[u8]) -> String {
    match ImportFile::parse(bytes) {
        Err(error @ ImportError::Invalid { .. }) => error.to_string(),
        other => panic!("expected an invalid file, got {other:?}"),
    }
}

fn import(narutalk: &Narutalk, bytes: &[u8]) -> Result<ImportReport, ImportError> {
    narutalk.admin().import(&ImportFile::parse(bytes).unwrap())
}

fn exported_lines(narutalk: &Narutalk, query: &SessionQuery) -> Vec<u8> {
    let mut out = Vec::new();
    narutalk
        .admin()
        .export(query, |_, session| {
            serde_json::to_writer(&mut out, session).unwrap();
            out.push(b'\n');
            Ok::<_, Error>(())
        })
        .unwrap();
    out
}

#[test]
fn sessions_lists_every_owner_and_filters_by_owner_category_activity_and_date() {
    // Arrange
    let fixture = open();
    let narutalk = &fixture.narutalk;
    let kim = create(narutalk, "kim", Role::Doctor);
    let lee = create(narutalk, "lee", Role::Nurse);
    let chat = narutalk.chat();
    let first = chat
        .create_session(kim.id, "First", Category::Medical)
        .unwrap();
    let second = chat
        .create_session(lee.id, "Second", Category::General)
        .unwrap();
    let archived = chat
        .create_session(lee.id, "Archived", Category::Medical)
        .unwrap();
    chat.update_session_fields(
        lee.id,
        archived.session.id,
        json!({"is_active": false}).as_object().unwrap(),
    )
    .unwrap();
    let ids = |query: SessionQuery| -> Vec<(SessionId, String)> {
        narutalk
            .admin()
            .sessions(&query)
            .unwrap()
            .into_iter()
            .map(|s| (s.session.id, s.owner_email))
            .collect()
    };
    let kim_email = "kim@example.com".to_owned();
    let lee_email = "lee@example.com".to_owned();

    // Act and assert
    assert_eq!(
        ids(SessionQuery::default()),
        [
            (archived.session.id, lee_email.clone()),
            (second.session.id, lee_email.clone()),
            (first.session.id, kim_email.clone()),
        ]
    );
    assert_eq!(
        ids(SessionQuery {
            owner: Some(kim.id),
            ..SessionQuery::default()
        }),
        [(first.session.id, kim_email.clone())]
    );
    assert_eq!(
        ids(SessionQuery {
            category: Some(Category::Medical),
            is_active: Some(true),
            ..SessionQuery::default()
        }),
        [(first.session.id, kim_email)]
    );
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        ids(SessionQuery {
            updated_since: Some(tomorrow),
            ..SessionQuery::default()
        }),
        []
    );
}

#[test]
fn an_export_imported_into_another_database_recreates_the_sessions_with_their_ids() {
    // Arrange: a source with two users, sessions and AI replies; a target with the same
    // emails under other ids.
    let source = open();
    let kim = create(&source.narutalk, "kim", Role::Doctor);
    let lee = create(&source.narutalk, "lee", Role::User);
    for (user, title) in [(&kim, "Headache"), (&lee, "Fever"), (&kim, "Cough")] {
        asked(&source.narutalk, user, title, Category::Medical);
    }
    let lines = exported_lines(&source.narutalk, &SessionQuery::default());
    let target = open();
    create(&target.narutalk, "somebody", Role::User);
    create(&target.narutalk, "lee", Role::User);
    create(&target.narutalk, "kim", Role::Doctor);

    // Act
    let first = import(&target.narutalk, &lines).unwrap();
    let second = import(&target.narutalk, &lines).unwrap();

    // Assert
    assert_eq!(
        first,
        ImportReport {
            sessions_created: 3,
            messages_added: 6,
            ..ImportReport::default()
        }
    );
    assert_eq!(
        second,
        ImportReport {
            sessions_unchanged: 3,
            messages_present: 6,
            ..ImportReport::default()
        }
    );
    assert_eq!(
        exported_lines(&target.narutalk, &SessionQuery::default()),
        lines
    );
    assert!(target.narutalk.admin().check().unwrap().is_sound());
}

#[test]
fn an_export_line_has_the_owner_email_the_session_and_every_message_field() {
    let fixture = open();
    let kim = create(&fixture.narutalk, "kim", Role::Doctor);
    let session = fixture
        .narutalk
        .chat()
        .create_session(kim.id, "Headache", Category::Emergency)
        .unwrap();
    let exchange = fixture
        .narutalk
        .send_message(kim.id, session.session.id, "두통")
        .unwrap();

    let lines = exported_lines(&fixture.narutalk, &SessionQuery::default());

    let line: Value = serde_json::from_slice(&lines).unwrap();
    let stored = fixture
        .narutalk
        .chat()
        .session(kim.id, session.session.id)
        .unwrap();
    let time = |m: &narutalk_core::chat::Message| narutalk_core::time::format_rfc3339(&m.timestamp);
    assert_eq!(
        line,
        json!({
            "id": session.session.id, "owner_email": "kim@example.com", "title": "Headache",
            "category": "emergency", "is_active": true,
            "created_at": narutalk_core::time::format_rfc3339(&stored.session.created_at),
            "updated_at": narutalk_core::time::format_rfc3339(&stored.session.updated_at),
            "message_count": 2,
            "messages": [
                {"id": exchange.message.id, "seq": 1, "sender": "user", "message_type": "text",
                 "content": "두통", "metadata": {}, "timestamp": time(&exchange.message),
                 "reply_to": null},
                {"id": exchange.reply.id, "seq": 2, "sender": "ai", "message_type": "text",
                 "content": "AI 응답: 두통에 대한 의료 정보를 제공합니다.",
                 "metadata": {"responder": "template"}, "timestamp": time(&exchange.reply),
                 "reply_to": exchange.message.id},
            ],
        })
    );
}

#[test]
fn an_import_appends_only_the_messages_a_session_lacks() {
    // Arrange: the session was imported with one message; the file now has three.
    let fixture = open();
    create(&fixture.narutalk, "kim", Role::Doctor);
    let owner = "kim@example.com";
    import(
        &fixture.narutalk,
        &jsonl(&[record(S1, owner, &[(M1, 1, "user", None)])]),
    )
    .unwrap();

    // Act
    let report = import(
        &fixture.narutalk,
        &jsonl(&[record(
            S1,
            owner,
            &[
                (M1, 1, "user", None),
                (M2, 2, "ai", Some(M1)),
                (M3, 3, "user", None),
            ],
        )]),
    )
    .unwrap();

    // Assert
    assert_eq!(
        report,
        ImportReport {
            sessions_extended: 1,
            messages_added: 2,
            messages_present: 1,
            ..ImportReport::default()
        }
    );
    let session = fixture
        .narutalk
        .admin()
        .session(S1.parse().unwrap())
        .unwrap();
    let seqs: Vec<(String, i64)> = session
        .messages
        .iter()
        .map(|m| (m.id.to_string(), m.seq))
        .collect();
    assert_eq!(seqs, [(M1.into(), 1), (M2.into(), 2), (M3.into(), 3)]);
    assert_eq!(session.message_count, 3);
    assert!(fixture.narutalk.admin().check().unwrap().is_sound());
}

/// A session's pending turns are its user messages after the last one answered: an
/// import that appended messages behind one would have them taken for turns.
#[test]
fn an_import_adds_nothing_to_a_session_whose_posted_message_waits_for_its_reply() {
    // Arrange: S1 holds a user message whose turn is pending (posted, never answered).
    let fixture = open();
    let kim = create(&fixture.narutalk, "kim", Role::Doctor);
    let owner = "kim@example.com";
    import(
        &fixture.narutalk,
        &jsonl(&[record(S1, owner, &[(M1, 1, "user", None)])]),
    )
    .unwrap();
    let session: SessionId = S1.parse().unwrap();
    let pending = NewMessage {
        id: MessageId::new_random(),
        sender: Sender::User,
        message_type: MessageType::Text,
        content: "left pending".into(),
        metadata: Default::default(),
        reply_to: None,
    };
    let audit = Audit::now(&Origin::default(), Actor::Cli);
    let posted = fixture
        .narutalk
        .store()
        .post_message(
            &UserPost {
                owner: kim.id,
                session,
                message: &pending,
                idempotency_key: None,
                now: Utc::now(),
                audit: &audit,
                lease: None,
            },
            Instant::now(),
        )
        .unwrap();
    assert!(matches!(posted, Posted::Stored { .. }));

    // Act: a file that adds a message to S1.
    let error = import(
        &fixture.narutalk,
        &jsonl(&[record(
            S1,
            owner,
            &[(M1, 1, "user", None), (M2, 2, "user", None)],
        )]),
    )
    .unwrap_err();

    // Assert: refused, naming the session and why; nothing added.
    assert!(matches!(error, ImportError::Invalid { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "line 1: session 11111111-1111-4111-8111-111111111111 has 1 posted message(s) waiting for the assistant's reply: import into it once they are answered"
    );
    assert_eq!(
        fixture
            .narutalk
            .admin()
            .session(session)
            .unwrap()
            .message_count,
        2
    );
    // A file that adds nothing to S1 is no problem.
    let report = import(
        &fixture.narutalk,
        &jsonl(&[record(S1, owner, &[(M1, 1, "user", None)])]),
    )
    .unwrap();
    assert_eq!(report.messages_present, 1);
}

#[test]
fn a_session_larger_than_a_batch_is_imported_across_batches_with_consistent_counters() {
    let fixture = open();
    create(&fixture.narutalk, "kim", Role::Doctor);
    let ids: Vec<String> = (0..IMPORT_BATCH_ROWS * 2 + 7)
        .map(|n| format!("bbbbbbbb-bbbb-4bbb-8bbb-{n:012x}"))
        .collect();
    let messages: Vec<(&str, i64, &str, Option<&str>)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), i64::try_from(n).unwrap() + 1, "user", None))
        .collect();
    let file = jsonl(&[
        record(S1, "kim@example.com", &messages),
        record(S2, "kim@example.com", &[]),
    ]);

    let report = import(&fixture.narutalk, &file).unwrap();

    assert_eq!(
        report,
        ImportReport {
            sessions_created: 2,
            messages_added: u64::try_from(ids.len()).unwrap(),
            ..ImportReport::default()
        }
    );
    let session = fixture
        .narutalk
        .admin()
        .session(S1.parse().unwrap())
        .unwrap();
    assert_eq!(session.message_count, u64::try_from(ids.len()).unwrap());
    assert!(fixture.narutalk.admin().check().unwrap().is_sound());
}

#[test]
fn an_import_stopped_by_a_failing_batch_keeps_what_came_before_and_resumes() {
    // Arrange: a trigger refuses one message of the third session, after a full batch.
    let fixture = open();
    create(&fixture.narutalk, "kim", Role::Doctor);
    let big: Vec<String> = (0..IMPORT_BATCH_ROWS)
        .map(|n| format!("cccccccc-cccc-4ccc-8ccc-{n:012x}"))
        .collect();
    let big_messages: Vec<(&str, i64, &str, Option<&str>)> = big
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), i64::try_from(n).unwrap() + 1, "user", None))
        .collect();
    let file = jsonl(&[
        record(S1, "kim@example.com", &big_messages),
        record(S2, "kim@example.com", &[(M1, 1, "user", None)]),
    ]);
    let conn = rusqlite_connection(&fixture);
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON chat_messages WHEN NEW.id = '{M1}' \
         BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END;"
    ))
    .unwrap();

    // Act
    let stopped = import(&fixture.narutalk, &file).unwrap_err();
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
    let resumed = import(&fixture.narutalk, &file).unwrap();

    // Assert
    let ImportError::Stopped { at, report, .. } = &stopped else {
        panic!("expected a stopped import, got {stopped:?}");
    };
    assert_eq!(*at, Location::Line(1));
    assert_eq!(
        report.messages_added,
        u64::try_from(IMPORT_BATCH_ROWS).unwrap() - 1
    );
    assert!(
        stopped
            .to_string()
            .starts_with("line 1: internal error: refused by a test trigger (the import stopped there: 499 message(s) in 1 session(s) before it are imported;"),
        "{stopped}"
    );
    assert_eq!(resumed.messages_added, 2);
    assert_eq!(resumed.sessions_extended + resumed.sessions_created, 2);
    assert!(fixture.narutalk.admin().check().unwrap().is_sound());
}

fn rusqlite_connection(fixture: &Fixture) -> rusqlite::Connection {
    rusqlite::Connection::open(&fixture.config.database).unwrap()
}

#[test]
fn a_conflicting_id_imports_nothing() {
    let fixture = open();
    create(&fixture.narutalk, "kim", Role::Doctor);
    create(&fixture.narutalk, "lee", Role::Doctor);
    import(
        &fixture.narutalk,
        &jsonl(&[record(S1, "kim@example.com", &[(M1, 1, "user", None)])]),
    )
    .unwrap();
    let cases = [
        (
            jsonl(&[record(S1, "lee@example.com", &[])]),
            "line 1: session 11111111-1111-4111-8111-111111111111 exists already and belongs to user 1, not to lee@example.com",
        ),
        (
            jsonl(&[record(S2, "lee@example.com", &[(M1, 1, "user", None)])]),
            "line 1: message aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa1 exists already in another session (11111111-1111-4111-8111-111111111111)",
        ),
        (
            jsonl(&[record(S1, "ghost@example.com", &[])]),
            "line 1: session 11111111-1111-4111-8111-111111111111 exists already and belongs to user 1, not to ghost@example.com",
        ),
    ];
    for (file, expected) in cases {
        let error = import(&fixture.narutalk, &file).unwrap_err();
        assert!(matches!(error, ImportError::Invalid { .. }), "{error:?}");
        assert_eq!(error.to_string(), expected);
        assert_eq!(
            fixture
                .narutalk
                .admin()
                .sessions(&SessionQuery::default())
                .unwrap()
                .len(),
            1
        );
    }
}

#[test]
fn a_malformed_or_truncated_file_is_refused_naming_the_line() {
    let good = record(S1, "kim@example.com", &[(M1, 1, "user", None)]);
    let line = serde_json::to_string(&good).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut value = good.clone();
        edit(&mut value);
        let mut bytes = jsonl(&[record(S2, "kim@example.com", &[])]);
        bytes.extend(jsonl(&[value]));
        bytes
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            format!("{line}\n{}", &line[..line.len() / 2]).into_bytes(),
            "line 2: the JSON ends early (is the file truncated?)",
        ),
        (
            b"\n{\"id\": }\n".to_vec(),
            "line 2: not valid JSON: expected value at column 8",
        ),
        (
            b"[1, 2]\n".to_vec(),
            "line 1: invalid type: integer `1`, expected a session object",
        ),
        (
            b"\n\n\"hello\"\n".to_vec(),
            "line 3: invalid type: string \"hello\", expected a session object",
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("owner_email");
            }),
            "line 2: missing field `owner_email`",
        ),
        (
            with(&|v| v["colour"] = json!("blue")),
            "line 2: unknown field `colour`, expected one of `id`, `owner_email`, `title`, `category`, `is_active`, `created_at`, `updated_at`, `message_count`, `messages`",
        ),
        (
            with(&|v| v["id"] = json!("11111111-1111-4111-8111-11111111111G")),
            "line 2: session id \"11111111-1111-4111-8111-11111111111G\" is not a lower-case hyphenated UUID",
        ),
        (
            with(&|v| v["category"] = json!("surgery")),
            "line 2: category \"surgery\" is not one of medical, general, emergency, consultation",
        ),
        (
            with(&|v| v["message_count"] = json!(2)),
            "line 2: message_count is 2 but 1 message(s) follow",
        ),
        (
            with(&|v| v["messages"][0]["seq"] = json!(0)),
            "line 2: message 1: seq 0 does not come after 0 (seq must increase from 1)",
        ),
        (
            with(&|v| v["messages"][0]["reply_to"] = json!(M2)),
            "line 2: message 1: reply_to aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa2 is not an earlier message of this session",
        ),
        (
            with(&|v| v["messages"][0]["timestamp"] = json!("yesterday")),
            "line 2: message 1: timestamp \"yesterday\" is not an RFC 3339 timestamp",
        ),
        (
            with(&|v| v["id"] = json!(S2)),
            "line 2: session 22222222-2222-4222-8222-222222222222 appears already on line 1",
        ),
        (
            format!("[{line},\n{line}]").into_bytes(),
            "array item 2: session 11111111-1111-4111-8111-111111111111 appears already on array item 1",
        ),
        (
            format!("[{line},\n{line}").into_bytes(),
            "line 2: the JSON ends early (is the file truncated?)",
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(parse_error(&bytes), expected);
    }
}

#[test]
fn a_json_array_and_an_empty_file_are_valid_import_files() {
    let session = record(S1, "kim@example.com", &[(M1, 1, "user", None)]);
    let array = serde_json::to_vec_pretty(&json!([session])).unwrap();
    let file = ImportFile::parse(&array).unwrap();
    assert_eq!(file.sessions().count(), 1);
    assert_eq!(file.message_count(), 1);
    assert_eq!(ImportFile::parse(b"").unwrap().sessions().count(), 0);
    assert_eq!(ImportFile::parse(b"\n\n").unwrap().sessions().count(), 0);
}

#[test]
fn stats_count_users_sessions_and_the_messages_of_each_of_the_last_14_days() {
    // Arrange: messages imported on the 20th, one posted now.
    let fixture = open();
    let narutalk = &fixture.narutalk;
    let kim = create(narutalk, "kim", Role::Doctor);
    narutalk.accounts().set_verified(kim.id, true).unwrap();
    let lee = create(narutalk, "lee", Role::Doctor);
    narutalk.accounts().set_active(lee.id, false).unwrap();
    create(narutalk, "root", Role::Admin);
    import(
        narutalk,
        &jsonl(&[record(
            S1,
            "kim@example.com",
            &[(M1, 1, "user", None), (M2, 2, "ai", Some(M1))],
        )]),
    )
    .unwrap();
    asked(narutalk, &kim, "Now", Category::General);
    let today = Utc::now().date_naive();

    // Act
    let stats = narutalk.admin().stats(today).unwrap();
    let on_the_20th = narutalk
        .admin()
        .stats(NaiveDate::from_ymd_opt(2026, 11, 25).unwrap())
        .unwrap();

    // Assert
    let roles = |row: &RoleCount| {
        (
            row.role.as_str(),
            [
                row.total,
                row.verified,
                row.unverified,
                row.active,
                row.inactive,
            ],
        )
    };
    assert_eq!(stats.users.total, 3);
    assert_eq!(
        stats.users.by_role.iter().map(roles).collect::<Vec<_>>(),
        [
            ("admin", [1, 0, 1, 1, 0]),
            ("doctor", [2, 1, 1, 1, 1]),
            ("nurse", [0, 0, 0, 0, 0]),
            ("user", [0, 0, 0, 0, 0]),
        ]
    );
    assert_eq!(stats.sessions.total, 2);
    assert_eq!(
        stats
            .sessions
            .by_category
            .iter()
            .map(|row| (row.category.as_str(), row.sessions, row.messages))
            .collect::<Vec<_>>(),
        [
            ("medical", 1, 2),
            ("general", 1, 2),
            ("emergency", 0, 0),
            ("consultation", 0, 0),
        ]
    );
    assert_eq!(stats.messages.total, 4);
    assert_eq!(stats.messages.per_day.len(), 14);
    assert_eq!(
        stats.messages.per_day[0].date,
        today.checked_sub_days(Days::new(13)).unwrap()
    );
    assert_eq!(stats.messages.per_day[13].date, today);
    assert_eq!(stats.messages.per_day[13].messages, 2);
    let per_day: Vec<(String, u64)> = on_the_20th
        .messages
        .per_day
        .iter()
        .filter(|d| d.messages > 0)
        .map(|d| (d.date.to_string(), d.messages))
        .collect();
    assert_eq!(per_day, [("2026-11-20".to_owned(), 2)]);
}

#[test]
fn check_reports_a_session_whose_counters_disagree_with_its_messages() {
    let fixture = open();
    let kim = create(&fixture.narutalk, "kim", Role::Doctor);
    let session = asked(&fixture.narutalk, &kim, "Headache", Category::Medical);
    rusqlite_connection(&fixture)
        .execute("UPDATE chat_sessions SET message_count = 5", [])
        .unwrap();

    let report = fixture.narutalk.admin().check().unwrap();

    assert_eq!(
        report.counters,
        [format!(
            "session {}: message_count 5 and last_seq 2, but it has 2 message(s) and its last seq is 2",
            session
        )]
    );
    assert_eq!(report.problem_count(), 1);
}

#[test]
fn an_administrator_deletes_and_reads_any_owners_session() {
    let fixture = open();
    let kim = create(&fixture.narutalk, "kim", Role::Doctor);
    let session = fixture
        .narutalk
        .chat()
        .create_session(kim.id, "Headache", Category::Medical)
        .unwrap();
    let admin = fixture.narutalk.admin();
    assert_eq!(admin.session(session.session.id).unwrap().title, "Headache");
    assert_eq!(
        admin.user_activity(kim.id).unwrap(),
        UserActivity {
            sessions: 1,
            messages: 0
        }
    );

    admin.delete_session(session.session.id).unwrap();

    assert!(matches!(
        admin.session(session.session.id),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        admin.delete_session(session.session.id),
        Err(Error::NotFound)
    ));
}

#[test]
fn the_administration_handle_needs_an_existing_database_and_no_signing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        secret_key: None,
        ..Config::for_tests(dir.path())
    };

    let missing = Narutalk::open_for_administration(&config).unwrap_err();
    drop(
        narutalk_core::store::sqlite::SqliteStore::open(
            &config.database,
            config.sqlite_synchronous,
            OpenMode::CreateIfMissing,
        )
        .unwrap(),
    );
    let opened = Narutalk::open_for_administration(&config).unwrap();

    assert!(
        matches!(&missing, StartError::Open(OpenError::Missing(p)) if *p == config.database),
        "{missing}"
    );
    create(&opened, "kim", Role::Admin);
    assert!(!std::path::Path::new(narutalk_core::config::SECRET_FILE).exists());
    assert_eq!(admin::STATS_DAYS, 14);
}

#[test]
fn missing_owners_are_named_each_once_and_nothing_is_imported_or_created() {
    let fixture = open();
    create(&fixture.narutalk, "lee", Role::Doctor);
    let file = jsonl(&[
        record(S1, "ghost@example.com", &[]),
        record(S2, "lee@example.com", &[]),
        record(
            "33333333-3333-4333-8333-333333333333",
            "ghost@example.com",
            &[],
        ),
        record(
            "44444444-4444-4444-8444-444444444444",
            "shade@example.com",
            &[],
        ),
    ]);

    let error = import(&fixture.narutalk, &file).unwrap_err();

    assert!(
        matches!(&error, ImportError::MissingOwners { emails } if emails == &["ghost@example.com", "shade@example.com"]),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "2 owner(s) of the file's sessions are not users of this database: ghost@example.com, shade@example.com"
    );
    let admin = fixture.narutalk.admin();
    assert!(admin.sessions(&SessionQuery::default()).unwrap().is_empty());
    assert_eq!(user_count(&fixture.narutalk), 1);
}

#[test]
fn create_owners_makes_unique_usernames_and_accounts_no_password_opens() {
    // Arrange: `kim` and `kim2` are taken; `o'neil` holds a character a username may not;
    // `'`'s local part keeps none.
    let fixture = open();
    let narutalk = &fixture.narutalk;
    create(narutalk, "kim", Role::Nurse);
    create(narutalk, "kim2", Role::Nurse);
    let file = jsonl(&[
        record(S1, "kim@hospital.example", &[(M1, 1, "user", None)]),
        record(S2, "o'neil@hospital.example", &[]),
        record(
            "33333333-3333-4333-8333-333333333333",
            "'@hospital.example",
            &[],
        ),
        record(
            "44444444-4444-4444-8444-444444444444",
            "kim@hospital.example",
            &[],
        ),
    ]);
    let mut seen = Vec::new();

    // Act
    let report = narutalk
        .admin()
        .import_with(
            &ImportFile::parse(&file).unwrap(),
            ImportOptions {
                create_owners: true,
            },
            |at| seen.push(at),
        )
        .unwrap();

    // Assert
    let owner = |id: i64, username: &str, email: &str| CreatedOwner {
        id: narutalk_core::accounts::UserId(id),
        username: username.to_owned(),
        email: email.to_owned(),
    };
    assert_eq!(
        report.owners_created,
        [
            owner(3, "kim3", "kim@hospital.example"),
            owner(4, "oneil", "o'neil@hospital.example"),
            owner(5, "user", "'@hospital.example"),
        ]
    );
    assert_eq!((report.sessions_created, report.messages_added), (4, 1));
    assert_eq!(
        seen,
        [ImportProgress {
            messages_done: 1,
            messages_total: 1
        }]
    );
    for created in &report.owners_created {
        let user = narutalk.accounts().get(created.id).unwrap();
        assert_eq!(
            (
                user.role,
                user.is_verified,
                user.is_active,
                user.department.as_str()
            ),
            (Role::User, false, true, "")
        );
        for password in [
            PASSWORD,
            "",
            created.username.as_str(),
            created.email.as_str(),
        ] {
            assert!(matches!(
                narutalk.accounts().login(&created.email, password),
                Err(Error::BadCredentials)
            ));
        }
    }
    assert_eq!(
        narutalk
            .admin()
            .sessions(&SessionQuery {
                owner: Some(report.owners_created[0].id),
                ..SessionQuery::default()
            })
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn create_owners_creates_nobody_when_the_file_conflicts_with_the_database() {
    let fixture = open();
    let kim = create(&fixture.narutalk, "kim", Role::Doctor);
    asked(&fixture.narutalk, &kim, "Mine", Category::General);
    let taken = fixture
        .narutalk
        .admin()
        .sessions(&SessionQuery::default())
        .unwrap()[0]
        .session
        .id
        .to_string();
    let file = jsonl(&[
        record(S1, "new@example.com", &[]),
        record(&taken, "other@example.com", &[]),
    ]);

    let error = fixture
        .narutalk
        .admin()
        .import_with(
            &ImportFile::parse(&file).unwrap(),
            ImportOptions {
                create_owners: true,
            },
            |_| {},
        )
        .unwrap_err();

    assert!(matches!(error, ImportError::Invalid { .. }), "{error:?}");
    assert_eq!(user_count(&fixture.narutalk), 1);
}
