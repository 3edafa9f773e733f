//! The suite's HTTP client of the API: every answer read whole, never trusted to succeed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};

/// The password of every account the suite makes (it passes every password rule).
pub const PASSWORD: &str = "violet-harbour-42";

/// Section 1's body of a 503.
pub const UNAVAILABLE: &str = "Service temporarily unavailable, try again later.";

/// The longest any request may take before it counts as unanswered: a generous upper bound
/// for "it must be answered", not a speed requirement.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct Account {
    /// Its access token.
    pub access: String,
    /// Its chat sessions' ids.
    pub sessions: Vec<String>,
}

/// One answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// How long it took, in milliseconds.
    pub millis: f64,
}

impl Answer {
    /// Whether it is section 1's 503: `Retry-After: 1` and the exact body.
    pub fn is_unavailable(&self) -> bool {
        self.status == 503
            && self.retry_after.as_deref() == Some("1")
            && self.body == json!({ "detail": UNAVAILABLE })
    }

    /// `STATUS BODY` (the body cut to 200 characters), for a finding.
    pub fn describe(&self) -> String {
        let body = cut(&self.body);
        match &self.retry_after {
            Some(retry_after) => format!("{} (Retry-After: {retry_after}) {body}", self.status),
            None => format!("{} {body}", self.status),
        }
    }
}

/// A client of one server.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client of the server at `addr`, from `local` (such as 127.0.0.2) when given. A
    /// client from a given address opens a new connection for every request.
    pub fn new(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT);
        if let Some(local) = local {
            builder = builder.local_address(local).pool_max_idle_per_host(0);
        }
        Ok(Api {
            http: builder.build().context("building the HTTP client")?,
            base: format!("http://{addr}"),
        })
    }

    /// Sends `method path` with `token` and `body` and reads the whole answer; an error
    /// when no whole answer came (connection refused, reset or timed out).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let bytes = response.bytes().await?;
        Ok(Answer {
            status,
            retry_after,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            millis: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Registers `username` (email `USERNAME@example.com`, password [`PASSWORD`]) and
    /// logs in.
    pub async fn register_and_login(&self, username: &str) -> anyhow::Result<Account> {
        let email = format!("{username}@example.com");
        let registration = json!({
            "username": username, "email": email,
            "password": PASSWORD, "password_confirm": PASSWORD,
        });
        let registered = self
            .send(
                Method::POST,
                "/api/auth/register/",
                None,
                Some(&registration),
            )
            .await
            .context("registering")?;
        if registered.status != 201 {
            bail!("registering answered {}", registered.describe());
        }
        let login = json!({ "email": email, "password": PASSWORD });
        let logged_in = self
            .send(Method::POST, "/api/auth/login/", None, Some(&login))
            .await
            .context("logging in")?;
        let access = match (&logged_in.status, logged_in.body["access"].as_str()) {
            (200, Some(access)) => access.to_owned(),
            _ => bail!("logging in answered {}", logged_in.describe()),
        };
        Ok(Account {
            access,
            sessions: Vec::new(),
        })
    }

    /// Creates a session titled `title` and answers its id.
    pub async fn create_session(&self, account: &Account, title: &str) -> anyhow::Result<String> {
        let created = self
            .send(
                Method::POST,
                "/api/chat/sessions/",
                Some(&account.access),
                Some(&json!({ "title": title })),
            )
            .await
            .context("creating a session")?;
        match (created.status, created.body["id"].as_str()) {
            (201, Some(id)) => Ok(id.to_owned()),
            _ => bail!("creating a session answered {}", created.describe()),
        }
    }

    /// Posts a message to `session`.
    pub async fn post_message(
        &self,
        account: &Account,
        session: &str,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        self.send(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            Some(&account.access),
            Some(body),
        )
        .await
    }

    /// `GET /api/chat/sessions/{id}/`: the session with every message; an error unless
    /// it answers 200.
    pub async fn session(&self, account: &Account, session: &str) -> anyhow::Result<Value> {
        let answer = self
            .send(
                Method::GET,
                &format!("/api/chat/sessions/{session}/"),
                Some(&account.access),
                None,
            )
            .await
            .context("reading a session")?;
        if answer.status != 200 {
            bail!("reading a session answered {}", answer.describe());
        }
        Ok(answer.body)
    }

    /// `GET /api/health/`.
    pub async fn health(&self) -> anyhow::Result<Answer> {
        self.send(Method::GET, "/api/health/", None, None).await
    }
}

/// An acknowledged post: the user message as the 201 answered it (without `reply`), and
/// its reply.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The stored user message.
    pub message: Value,
    /// The stored reply (AI or system error message).
    pub reply: Value,
}

impl Exchange {
    /// The exchange of a 201 answer to a post; `None` when the answer is not a 201 with a
    /// message and its reply.
    pub fn from_answer(answer: &Answer) -> Option<Exchange> {
        if answer.status != 201 {
            return None;
        }
        let mut message = answer.body.as_object()?.clone();
        let reply = message.remove("reply")?;
        if message.get("id")?.as_str().is_none() || reply.get("id")?.as_str().is_none() {
            return None;
        }
        Some(Exchange {
            message: Value::Object(message),
            reply,
        })
    }
}

/// What a check of acknowledged exchanges against the stored sessions found.
#[derive(Debug, Default)]
pub struct Stored {
    /// Messages stored in the sessions read.
    pub messages: usize,
    /// User messages stored without a reply after them (a post cut by the crash).
    pub unanswered: usize,
    /// One sentence per acknowledged message or reply that is missing or different.
    pub problems: Vec<String>,
}

/// Reads every session of `exchanges` (and `sessions`) and checks that each acknowledged
/// user message and its reply are stored exactly as they were answered (every key,
/// byte for byte), the reply after its message.
pub async fn check_stored(
    api: &Api,
    account: &Account,
    sessions: &[String],
    exchanges: &[Exchange],
) -> anyhow::Result<Stored> {
    let mut stored = Stored::default();
    // Message id -> (position in its session, the stored message).
    let mut by_id: HashMap<String, (usize, Value)> = HashMap::new();
    for session in sessions {
        let detail = api.session(account, session).await?;
        let messages = detail["messages"]
            .as_array()
            .context("a session without `messages`")?;
        stored.messages += messages.len();
        let mut waiting_for_reply = 0usize;
        for (position, message) in messages.iter().enumerate() {
            if message["sender"] == "user" {
                waiting_for_reply += 1;
            } else {
                waiting_for_reply = waiting_for_reply.saturating_sub(1);
            }
            if let Some(id) = message["id"].as_str()
                && by_id
                    .insert(id.to_owned(), (position, message.clone()))
                    .is_some()
            {
                stored
                    .problems
                    .push(format!("message {id} is stored twice"));
            }
        }
        stored.unanswered += waiting_for_reply;
    }
    for exchange in exchanges {
        let found = |value: &Value| {
            let id = value["id"].as_str().unwrap_or_default();
            by_id.get(id).cloned()
        };
        let id = exchange.message["id"].as_str().unwrap_or_default();
        match (found(&exchange.message), found(&exchange.reply)) {
            (None, _) => stored
                .problems
                .push(format!("acknowledged message {id} is missing")),
            (Some(_), None) => stored
                .problems
                .push(format!("the reply of acknowledged message {id} is missing")),
            (Some((at, message)), Some((reply_at, reply))) => {
                if message != exchange.message {
                    stored.problems.push(format!(
                        "acknowledged message {id} differs: answered {}, stored {}",
                        cut(&exchange.message),
                        cut(&message)
                    ));
                }
                if reply != exchange.reply {
                    stored.problems.push(format!(
                        "the reply of acknowledged message {id} differs: answered {}, stored {}",
                        cut(&exchange.reply),
                        cut(&reply)
                    ));
                }
                if reply_at <= at {
                    stored
                        .problems
                        .push(format!("the reply of message {id} is stored before it"));
                }
            }
        }
    }
    Ok(stored)
}

/// `value` as JSON, cut to 200 characters, for a finding.
fn cut(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}
