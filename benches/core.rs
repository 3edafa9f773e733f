//! Criterion benches of the core operations, each through `narutalk-core`'s public API: the
//! work one request costs before any HTTP. Run with `cargo bench --bench core`
//! (`-- --test` runs each once, as a check).
//!
//! Each group opens its own database, seeded through the core, in a temporary directory
//! under Cargo's target directory (`CARGO_TARGET_TMPDIR`): a real file on the disk the
//! build uses, never a RAM-backed `/tmp`, so that `synchronous=FULL` costs what it costs.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main,
};
use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::accounts::password::{self, PasswordHashing};
use narutalk_core::chat::{Category, PageRequest, SessionFilter, SessionId};
use narutalk_core::config::{Config, Synchronous};
use narutalk_core::fields::JsonObject;
use narutalk_core::store::OpenMode;
use serde_json::json;
use tempfile::TempDir;

/// The password of every account here: it passes the contract's password rules.
const PASSWORD: &str = "violet-harbour-42";

/// Sessions of the user whose session list is read.
const LISTED_SESSIONS: usize = 50;
/// Questions asked in each listed session (each adds a question and its reply).
const QUESTIONS_PER_SESSION: usize = 3;
/// Questions asked in the one session whose messages are paged: 60 messages, three pages.
const QUESTIONS_IN_LONG_SESSION: usize = 30;

/// argon2id at the core's parameters, alone: what every registration, login and password
/// change spends on hashing, on a hashing thread as the handle runs it (its working
/// memory reused from one hash to the next).
fn password_hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("password");
    slow_operations(&mut group);
    let hashing = PasswordHashing::new(1, password::HASH_QUEUE);
    let stored = hashing.hash(PASSWORD).expect("hashing a password");
    // Hashing a password with a fresh salt into a PHC string (registration, password change).
    group.bench_function("hash", |b| b.iter(|| hashing.hash(black_box(PASSWORD))));
    // Verifying the right password against a stored hash (login).
    group.bench_function("verify", |b| {
        b.iter(|| {
            assert!(
                hashing
                    .verify(black_box(PASSWORD), black_box(&stored))
                    .expect("a hashing thread")
            )
        })
    });
    group.finish();
}

/// Registration and login: argon2 plus the account's reads and writes.
fn accounts(c: &mut Criterion) {
    let bench = BenchDatabase::open();
    let narutalk = &bench.narutalk;
    register(narutalk, "login");
    let mut group = c.benchmark_group("accounts");
    slow_operations(&mut group);
    let mut registered = 0_u64;
    // A whole registration: field and password rules, argon2 hash, the insert (a new
    // username and email every time).
    group.bench_function("register", |b| {
        b.iter_batched(
            || {
                registered += 1;
                registration(&format!("member{registered}"))
            },
            |body| {
                narutalk
                    .accounts()
                    .register_fields(&body)
                    .expect("registering")
            },
            BatchSize::SmallInput,
        )
    });
    // A whole login with the right password: the lookup, argon2 verify, then the write of
    // `last_login` and a new refresh-token family, and signing both tokens.
    group.bench_function("login", |b| {
        b.iter(|| {
            narutalk
                .accounts()
                .login(black_box("login@example.com"), black_box(PASSWORD))
                .expect("logging in")
        })
    });
    group.finish();
}

/// The check every authenticated request starts with.
fn tokens(c: &mut Criterion) {
    let bench = BenchDatabase::open();
    let narutalk = &bench.narutalk;
    register(narutalk, "holder");
    let access = narutalk
        .accounts()
        .login("holder@example.com", PASSWORD)
        .expect("logging in")
        .tokens
        .access;
    let mut group = c.benchmark_group("tokens");
    fast_operations(&mut group);
    // Validating an access token: HS256 signature and claims, then the user's row (active,
    // revocation stamp) read from the database.
    group.bench_function("authenticate", |b| {
        b.iter(|| {
            narutalk
                .tokens()
                .authenticate(black_box(&access))
                .expect("authenticating")
        })
    });
    group.finish();
}

/// The chat's writes, each committed with `synchronous=FULL` (a sync per commit).
fn chat_writes(c: &mut Criterion) {
    let bench = BenchDatabase::open();
    let narutalk = &bench.narutalk;
    let owner = register(narutalk, "writer");
    let asked = create_session(narutalk, owner);
    let mut group = c.benchmark_group("chat_writes");
    group
        .sample_size(30)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    // Creating a session: the field checks and one insert, committed.
    group.bench_function("create_session", |b| {
        b.iter(|| {
            narutalk
                .chat()
                .create_session(owner, black_box("Headache"), Category::Medical)
                .expect("creating a session")
        })
    });
    // A whole turn with the template reply: the user message committed, the history read
    // for the responder, the reply committed (two commits, two syncs).
    group.bench_function("send_message", |b| {
        b.iter(|| {
            narutalk
                .send_message(owner, asked, black_box("두통"))
                .expect("sending a message")
        })
    });
    group.finish();
}

/// The chat's reads, on a user with 50 sessions.
fn chat_reads(c: &mut Criterion) {
    let bench = BenchDatabase::open();
    let narutalk = &bench.narutalk;
    let owner = register(narutalk, "reader");
    let long_session = create_session(narutalk, owner);
    ask(narutalk, owner, long_session, QUESTIONS_IN_LONG_SESSION);
    for _ in 1..LISTED_SESSIONS {
        let session = create_session(narutalk, owner);
        ask(narutalk, owner, session, QUESTIONS_PER_SESSION);
    }
    let first_page = narutalk
        .chat()
        .list_sessions(owner, SessionFilter::default(), PageRequest::Number(1))
        .expect("listing sessions");
    assert_eq!(first_page.count, LISTED_SESSIONS as u64);
    assert_eq!(first_page.results.len(), 20);
    let mut group = c.benchmark_group("chat_reads");
    fast_operations(&mut group);
    // The first page of the session list as the API serves it: the count, then 20 sessions
    // with their message counts and last messages.
    group.bench_function("sessions_page", |b| {
        b.iter(|| {
            narutalk
                .chat()
                .list_sessions(
                    owner,
                    SessionFilter::default(),
                    black_box(PageRequest::Number(1)),
                )
                .expect("listing sessions")
        })
    });
    // The first page (20) of the messages of a session holding 60.
    group.bench_function("messages_page", |b| {
        b.iter(|| {
            narutalk
                .chat()
                .messages(owner, long_session, None, black_box(PageRequest::Number(1)))
                .expect("reading messages")
        })
    });
    // The dashboard: the user and the counts over their 50 sessions.
    group.bench_function("dashboard", |b| {
        b.iter(|| {
            narutalk
                .accounts()
                .dashboard(black_box(owner))
                .expect("reading the dashboard")
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    password_hashing,
    accounts,
    tokens,
    chat_writes,
    chat_reads
);
criterion_main!(benches);

/// A fresh database and the handle on it; the directory goes when the group ends.
struct BenchDatabase {
    narutalk: Narutalk,
    _dir: TempDir,
}

impl BenchDatabase {
    fn open() -> BenchDatabase {
        let dir = tempfile::Builder::new()
            .prefix("core-bench-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating the database directory");
        let mut config = Config::for_tests(dir.path());
        // The production default, set here so that the write benches measure it whatever
        // the test configuration's default becomes.
        config.sqlite_synchronous = Synchronous::Full;
        let narutalk =
            Narutalk::open(&config, OpenMode::CreateIfMissing).expect("opening the database");
        BenchDatabase {
            narutalk,
            _dir: dir,
        }
    }
}

/// Settings for operations of tens of milliseconds (argon2): ten samples, each the same
/// number of iterations.
fn slow_operations(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// Settings for operations of microseconds: criterion's 100 samples in 3 seconds.
fn fast_operations(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// The registration body of `name`, with `name@example.com` and [`PASSWORD`].
fn registration(name: &str) -> JsonObject {
    let body = json!({
        "username": name,
        "email": format!("{name}@example.com"),
        "password": PASSWORD,
        "password_confirm": PASSWORD,
    });
    body.as_object().cloned().expect("a JSON object")
}

/// Registers `name` and answers its id.
fn register(narutalk: &Narutalk, name: &str) -> UserId {
    narutalk
        .accounts()
        .register_fields(&registration(name))
        .expect("registering")
        .id
}

/// Creates a medical session of `owner` and answers its id.
fn create_session(narutalk: &Narutalk, owner: UserId) -> SessionId {
    narutalk
        .chat()
        .create_session(owner, "Headache", Category::Medical)
        .expect("creating a session")
        .session
        .id
}

/// Asks `questions` questions in the session; each gets its template reply.
fn ask(narutalk: &Narutalk, owner: UserId, session: SessionId, questions: usize) {
    for question in 0..questions {
        narutalk
            .send_message(owner, session, &format!("질문 {question}"))
            .expect("asking a question");
    }
}
