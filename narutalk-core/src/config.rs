//! Narutalk's settings: every setting of README's Settings, how its layers
//! are combined, and how each value is parsed and validated.
//!
//! Priority, lowest to highest:
//!
//! 1. the built-in defaults ([`Config::default`]);
//! 2. a TOML file, named by the `--config FILE` flag or else by
//!    `NARUTALK_CONFIG`, or else [`DEFAULT_CONFIG_FILE`] when it exists (an
//!    empty `NARUTALK_CONFIG` means no file at all); its top-level keys are
//!    the variable names without the `NARUTALK_` prefix, lower-cased (`bind`,
//!    `database`, ...);
//! 3. `NARUTALK_*` environment variables;
//! 4. the flags `--bind`, `--database` and `--config` ([`Overrides`]).
//!
//! Each layer's values are parsed as they are applied, and the result is
//! validated once ([`Config::validate`]). A bad setting becomes a
//! [`ConfigError`] whose one-line message names the environment variable of
//! the setting (also when the value came from the file or a flag). The values
//! of `NARUTALK_SECRET_KEY` and `NARUTALK_AI_API_KEY` are never echoed.
//!
//! The signing secret is the configured `NARUTALK_SECRET_KEY` or, without
//! one, 64 random bytes, hex-encoded, kept in [`SECRET_FILE`]
//! ([`Config::signing_secret`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The default `openai` system prompt. `{category}` is replaced by the
/// session's category (medical, general, emergency or consultation).
pub const DEFAULT_AI_SYSTEM_PROMPT: &str = "You are Narutalk, a careful medical question-answering assistant for hospital staff and patients. This conversation's category is {category}. Be accurate and cautious: say clearly when you are unsure, and never invent facts, figures, drug doses or references. You do not make diagnoses or treatment decisions; recommend that a qualified clinician make them. If a message describes a possible emergency, tell the person to contact emergency services or go to the nearest emergency department immediately.";

/// Where the generated secret lives, relative to the working directory
/// (`data/secret.key`).
pub const SECRET_FILE: &str = "data/secret.key";

/// The settings file read when neither `--config` nor `NARUTALK_CONFIG` names
/// one, if it exists (the Debian package installs it).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/narutalk/narutalk.toml";

/// The prefix of every environment variable read.
const PREFIX: &str = "NARUTALK_";
/// The variable naming the TOML file.
const CONFIG_VAR: &str = "NARUTALK_CONFIG";
/// The variable of the signing secret, named by every secret error.
const SECRET_VAR: &str = "NARUTALK_SECRET_KEY";
/// The shortest accepted signing secret, in bytes.
const MIN_SECRET_BYTES: usize = 32;
/// How many random bytes a generated secret has (hex-encoded to twice that).
const GENERATED_SECRET_BYTES: usize = 64;

/// Every setting. `Default` gives the built-in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `NARUTALK_BIND`, default `127.0.0.1:8000`: the listen address.
    pub bind: SocketAddr,
    /// `NARUTALK_DATABASE`, default `data/databases/db.sqlite3`: the SQLite file.
    pub database: PathBuf,
    /// `NARUTALK_SQLITE_SYNCHRONOUS`, default `full`: SQLite's `PRAGMA synchronous`.
    pub sqlite_synchronous: Synchronous,
    /// `NARUTALK_SECRET_KEY`, default none (use or generate [`SECRET_FILE`]):
    /// the signing key, at least 32 bytes.
    pub secret_key: Option<Secret>,
    /// `NARUTALK_ACCESS_TOKEN_MINUTES`, default 60: access token lifetime, at least 1.
    pub access_token_minutes: u32,
    /// `NARUTALK_REFRESH_TOKEN_DAYS`, default 7: refresh token lifetime, at least 1.
    pub refresh_token_days: u32,
    /// `NARUTALK_CORS_ORIGINS`, default `http://localhost:3000`: allowed
    /// origins, each `http(s)://host[:port]` without a path.
    pub cors_origins: Vec<String>,
    /// `NARUTALK_TRUSTED_PROXIES`, default empty: peers whose
    /// `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// `NARUTALK_MAX_CONNECTIONS_PER_IP`, default 1000: connections one peer IP
    /// may hold at once (trusted proxies exempt); 0 = no limit.
    pub max_connections_per_ip: u32,
    /// `NARUTALK_AUTH_THROTTLE_PER_MINUTE`, default 10: login/register
    /// attempts per minute; 0 = off.
    pub auth_throttle_per_minute: u32,
    /// `NARUTALK_MESSAGE_THROTTLE_PER_MINUTE`, default 30: messages per user
    /// per minute; 0 = off.
    pub message_throttle_per_minute: u32,
    /// `NARUTALK_BODY_LIMIT_BYTES`, default 1048576: request body limit, at least 1.
    pub body_limit_bytes: u64,
    /// `NARUTALK_CONTENT_MAX_CHARS`, default 10000: message content limit, at least 1.
    pub content_max_chars: usize,
    /// `NARUTALK_AI_BACKEND`, default `template`: the responder.
    pub ai_backend: AiBackend,
    /// `NARUTALK_AI_URL`, default empty: the `http` service URL or the
    /// `openai` base URL (required by both).
    pub ai_url: String,
    /// `NARUTALK_AI_MODEL`, default empty: the `openai` model (required by it).
    pub ai_model: String,
    /// `NARUTALK_AI_API_KEY`, default none: the `openai` key.
    pub ai_api_key: Option<Secret>,
    /// `NARUTALK_AI_SYSTEM_PROMPT`, default [`DEFAULT_AI_SYSTEM_PROMPT`]:
    /// the `openai` system prompt, non-empty.
    pub ai_system_prompt: String,
    /// `NARUTALK_AI_HISTORY_MESSAGES`, default 20: history sent with each turn.
    pub ai_history_messages: u32,
    /// `NARUTALK_AI_TEMPERATURE`, default 0.2: `openai` sampling, 0.0 to 2.0.
    pub ai_temperature: f64,
    /// `NARUTALK_AI_MAX_TOKENS`, default 1024: `openai` answer limit, at least 1.
    pub ai_max_tokens: u32,
    /// `NARUTALK_AI_TIMEOUT_SECONDS`, default 30: the whole AI call, at least 1.
    pub ai_timeout_seconds: u32,
    /// `NARUTALK_AI_CONCURRENCY`, default 64: AI calls running at once (the AI pool), at
    /// least 1; 1,024 more may wait, and a turn beyond them fails as `assistant busy`.
    pub ai_concurrency: u32,
    /// `NARUTALK_SEARCH_URL`, default `http://localhost:8001/api/search/`:
    /// the search service; empty = not configured.
    pub search_url: String,
    /// `NARUTALK_SEARCH_TIMEOUT_SECONDS`, default 30: the search proxy, at least 1.
    pub search_timeout_seconds: u32,
    /// `NARUTALK_WS_PING_SECONDS`, default 30: socket ping interval, at least 1.
    pub ws_ping_seconds: u32,
    /// `NARUTALK_WS_IDLE_SECONDS`, default 60: socket idle limit, greater
    /// than the ping interval.
    pub ws_idle_seconds: u32,
    /// `NARUTALK_LOG`, default `info`: the tracing filter, non-empty.
    pub log: String,
    /// `NARUTALK_LOG_FORMAT`, default `text`: `text` or `json`.
    pub log_format: LogFormat,
    /// `NARUTALK_METRICS_BIND`, default none (off): where the Prometheus metrics are
    /// served (`GET /metrics`), an address other than [`Config::bind`]'s.
    pub metrics_bind: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            database: PathBuf::from("data/databases/db.sqlite3"),
            sqlite_synchronous: Synchronous::Full,
            secret_key: None,
            access_token_minutes: 60,
            refresh_token_days: 7,
            cors_origins: vec!["http://localhost:3000".to_owned()],
            trusted_proxies: Vec::new(),
            max_connections_per_ip: 1000,
            auth_throttle_per_minute: 10,
            message_throttle_per_minute: 30,
            body_limit_bytes: 1_048_576,
            content_max_chars: 10_000,
            ai_backend: AiBackend::Template,
            ai_url: String::new(),
            ai_model: String::new(),
            ai_api_key: None,
            ai_system_prompt: DEFAULT_AI_SYSTEM_PROMPT.to_owned(),
            ai_history_messages: 20,
            ai_temperature: 0.2,
            ai_max_tokens: 1024,
            ai_timeout_seconds: 30,
            ai_concurrency: 64,
            search_url: "http://localhost:8001/api/search/".to_owned(),
            search_timeout_seconds: 30,
            ws_ping_seconds: 30,
            ws_idle_seconds: 60,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            metrics_bind: None,
        }
    }
}

/// `full` or `normal` (SQLite's `PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `full`: sync at every commit (the default).
    #[default]
    Full,
    /// `normal`: sync less often; safe with WAL, may lose the last commits on power loss.
    Normal,
}

impl Synchronous {
    /// The value for `PRAGMA synchronous`: `"FULL"` or `"NORMAL"`.
    pub fn as_pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Which AI responder answers messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AiBackend {
    /// `template`: canned answers, no network (the default).
    #[default]
    Template,
    /// `http`: a service at `NARUTALK_AI_URL`.
    Http,
    /// `openai`: an OpenAI-compatible chat completions API.
    Openai,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `text`: human-readable lines (the default).
    #[default]
    Text,
    /// `json`: one JSON object per line.
    Json,
}

/// A secret whose Debug and Display print `***`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself; use it only where it is needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The command-line flags that override everything else; all optional.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--bind`: replaces `NARUTALK_BIND`.
    pub bind: Option<String>,
    /// `--database`: replaces `NARUTALK_DATABASE`.
    pub database: Option<PathBuf>,
    /// `--config`: replaces `NARUTALK_CONFIG`.
    pub config: Option<PathBuf>,
}

/// Which TOML file a load read. Displays as its path, followed by
/// ` (default)` for the default file, or as `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingsFile {
    /// No file: none was named and the default file does not exist, or
    /// `NARUTALK_CONFIG` is empty.
    None,
    /// The file named by `--config` or `NARUTALK_CONFIG`.
    Named(PathBuf),
    /// The default file ([`DEFAULT_CONFIG_FILE`]), which exists.
    Default(PathBuf),
}

impl SettingsFile {
    /// The path of the file read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SettingsFile::None => None,
            SettingsFile::Named(path) | SettingsFile::Default(path) => Some(path),
        }
    }
}

impl fmt::Display for SettingsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsFile::None => f.write_str("none"),
            SettingsFile::Named(path) => write!(f, "{}", path.display()),
            SettingsFile::Default(path) => write!(f, "{} (default)", path.display()),
        }
    }
}

/// A bad setting. Displays as one line:
/// `invalid setting NARUTALK_BIND: "x" is not an address like 127.0.0.1:8000`.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    /// The environment variable's name, also for values from the TOML file
    /// or a flag (`NARUTALK_CONFIG` for problems with the file itself).
    pub setting: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl ConfigError {
    fn new(setting: &str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        ConfigError {
            setting: setting.to_owned(),
            message: message.replace(['\n', '\r'], " "),
        }
    }
}

/// One setting: its field, its TOML key and its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting {
    Bind,
    Database,
    SqliteSynchronous,
    SecretKey,
    AccessTokenMinutes,
    RefreshTokenDays,
    CorsOrigins,
    TrustedProxies,
    MaxConnectionsPerIp,
    AuthThrottlePerMinute,
    MessageThrottlePerMinute,
    BodyLimitBytes,
    ContentMaxChars,
    AiBackend,
    AiUrl,
    AiModel,
    AiApiKey,
    AiSystemPrompt,
    AiHistoryMessages,
    AiTemperature,
    AiMaxTokens,
    AiTimeoutSeconds,
    AiConcurrency,
    SearchUrl,
    SearchTimeoutSeconds,
    WsPingSeconds,
    WsIdleSeconds,
    Log,
    LogFormat,
    MetricsBind,
}

/// Every setting as (field, TOML key, environment variable).
#[rustfmt::skip]
const SETTINGS: [(Setting, &str, &str); 30] = [
    (Setting::Bind,                     "bind",                        "NARUTALK_BIND"),
    (Setting::Database,                 "database",                    "NARUTALK_DATABASE"),
    (Setting::SqliteSynchronous,        "sqlite_synchronous",          "NARUTALK_SQLITE_SYNCHRONOUS"),
    (Setting::SecretKey,                "secret_key",                  "NARUTALK_SECRET_KEY"),
    (Setting::AccessTokenMinutes,       "access_token_minutes",        "NARUTALK_ACCESS_TOKEN_MINUTES"),
    (Setting::RefreshTokenDays,         "refresh_token_days",          "NARUTALK_REFRESH_TOKEN_DAYS"),
    (Setting::CorsOrigins,              "cors_origins",                "NARUTALK_CORS_ORIGINS"),
    (Setting::TrustedProxies,           "trusted_proxies",             "NARUTALK_TRUSTED_PROXIES"),
    (Setting::MaxConnectionsPerIp,      "max_connections_per_ip",      "NARUTALK_MAX_CONNECTIONS_PER_IP"),
    (Setting::AuthThrottlePerMinute,    "auth_throttle_per_minute",    "NARUTALK_AUTH_THROTTLE_PER_MINUTE"),
    (Setting::MessageThrottlePerMinute, "message_throttle_per_minute", "NARUTALK_MESSAGE_THROTTLE_PER_MINUTE"),
    (Setting::BodyLimitBytes,           "body_limit_bytes",            "NARUTALK_BODY_LIMIT_BYTES"),
    (Setting::ContentMaxChars,          "content_max_chars",           "NARUTALK_CONTENT_MAX_CHARS"),
    (Setting::AiBackend,                "ai_backend",                  "NARUTALK_AI_BACKEND"),
    (Setting::AiUrl,                    "ai_url",                      "NARUTALK_AI_URL"),
    (Setting::AiModel,                  "ai_model",                    "NARUTALK_AI_MODEL"),
    (Setting::AiApiKey,                 "ai_api_key",                  "NARUTALK_AI_API_KEY"),
    (Setting::AiSystemPrompt,           "ai_system_prompt",            "NARUTALK_AI_SYSTEM_PROMPT"),
    (Setting::AiHistoryMessages,        "ai_history_messages",         "NARUTALK_AI_HISTORY_MESSAGES"),
    (Setting::AiTemperature,            "ai_temperature",              "NARUTALK_AI_TEMPERATURE"),
    (Setting::AiMaxTokens,              "ai_max_tokens",               "NARUTALK_AI_MAX_TOKENS"),
    (Setting::AiTimeoutSeconds,         "ai_timeout_seconds",          "NARUTALK_AI_TIMEOUT_SECONDS"),
    (Setting::AiConcurrency,            "ai_concurrency",              "NARUTALK_AI_CONCURRENCY"),
    (Setting::SearchUrl,                "search_url",                  "NARUTALK_SEARCH_URL"),
    (Setting::SearchTimeoutSeconds,     "search_timeout_seconds",      "NARUTALK_SEARCH_TIMEOUT_SECONDS"),
    (Setting::WsPingSeconds,            "ws_ping_seconds",             "NARUTALK_WS_PING_SECONDS"),
    (Setting::WsIdleSeconds,            "ws_idle_seconds",             "NARUTALK_WS_IDLE_SECONDS"),
    (Setting::Log,                      "log",                         "NARUTALK_LOG"),
    (Setting::LogFormat,                "log_format",                  "NARUTALK_LOG_FORMAT"),
    (Setting::MetricsBind,              "metrics_bind",                "NARUTALK_METRICS_BIND"),
];

/// The environment variable of a setting.
fn env_name(key: Setting) -> &'static str {
    SETTINGS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or("NARUTALK_?", |(_, _, env)| env)
}

/// Where a value came from, for the error message.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Env,
    Toml(&'a Path),
    Flag(&'a str),
}

/// One value to apply, as read from its layer.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Text(&'a str),
    Toml(&'a toml::Value),
}

/// The setting being applied and where its value came from.
struct Ctx<'a> {
    toml_key: &'static str,
    env: &'static str,
    origin: Origin<'a>,
}

impl Ctx<'_> {
    fn err(&self, message: impl fmt::Display) -> ConfigError {
        let message = match self.origin {
            Origin::Env => message.to_string(),
            Origin::Toml(path) => format!("{}: {message}", path.display()),
            Origin::Flag(flag) => format!("{flag}: {message}"),
        };
        ConfigError::new(self.env, message)
    }

    fn wrong_type(&self, expected: &str, got: &toml::Value) -> ConfigError {
        self.err(format!(
            "key {:?} must be {expected}, got {}",
            self.toml_key,
            toml_type(got)
        ))
    }

    /// A string value, trimmed or as given.
    fn text(&self, raw: Raw<'_>, trim: bool) -> Result<String, ConfigError> {
        let s = match raw {
            Raw::Text(s) => s,
            Raw::Toml(toml::Value::String(s)) => s.as_str(),
            Raw::Toml(other) => return Err(self.wrong_type("a string", other)),
        };
        Ok(if trim { s.trim() } else { s }.to_owned())
    }

    /// A secret: as given, empty = none; never echoed.
    fn secret(&self, raw: Raw<'_>) -> Result<Option<Secret>, ConfigError> {
        let s = self.text(raw, false)?;
        Ok(if s.is_empty() { None } else { Some(Secret(s)) })
    }

    /// A whole number; `min` only shapes the message (validation enforces it).
    fn whole<T: TryFrom<u64>>(&self, raw: Raw<'_>, min: u64) -> Result<T, ConfigError> {
        let rule = whole_rule(min);
        let value: u64 = match raw {
            Raw::Text(s) => {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.err(format!("must be {rule}, got {s:?}")));
                }
                s.parse()
                    .map_err(|_| self.err(format!("{s:?} is too large")))?
            }
            Raw::Toml(toml::Value::Integer(i)) => {
                u64::try_from(*i).map_err(|_| self.err(format!("must be {rule}, got {i}")))?
            }
            Raw::Toml(other) => return Err(self.wrong_type("an integer", other)),
        };
        T::try_from(value).map_err(|_| self.err(format!("{value} is too large")))
    }

    /// A floating-point number (range checked by validation).
    fn float(&self, raw: Raw<'_>) -> Result<f64, ConfigError> {
        match raw {
            Raw::Text(s) => {
                let s = s.trim();
                s.parse::<f64>()
                    .map_err(|_| self.err(format!("must be a number from 0.0 to 2.0, got {s:?}")))
            }
            Raw::Toml(toml::Value::Float(f)) => Ok(*f),
            // Integers this small convert exactly; larger ones fail validation anyway.
            #[allow(clippy::cast_precision_loss)]
            Raw::Toml(toml::Value::Integer(i)) => Ok(*i as f64),
            Raw::Toml(other) => Err(self.wrong_type("a number", other)),
        }
    }

    /// One of `choices`, case-insensitive.
    fn choice<T: Copy>(&self, raw: Raw<'_>, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let s = self.text(raw, true)?;
        if let Some((_, value)) = choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&s))
        {
            return Ok(*value);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let expected = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        };
        Err(self.err(format!("must be {expected}, got {s:?}")))
    }

    /// A list: a comma-separated string or a TOML array of strings; items
    /// trimmed, empty items dropped.
    fn list(&self, raw: Raw<'_>) -> Result<Vec<String>, ConfigError> {
        fn split(s: &str) -> impl Iterator<Item = String> + '_ {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        }
        match raw {
            Raw::Text(s) => Ok(split(s).collect()),
            Raw::Toml(toml::Value::String(s)) => Ok(split(s).collect()),
            Raw::Toml(toml::Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) if s.trim().is_empty() => {}
                        toml::Value::String(s) => out.push(s.trim().to_owned()),
                        other => {
                            return Err(self.err(format!(
                                "key {:?} must be an array of strings, got an array holding {}",
                                self.toml_key,
                                toml_type(other)
                            )));
                        }
                    }
                }
                Ok(out)
            }
            Raw::Toml(other) => {
                Err(self.wrong_type("an array of strings or a comma-separated string", other))
            }
        }
    }

    /// Sets the field of this setting from `raw`.
    fn apply(&self, cfg: &mut Config, key: Setting, raw: Raw<'_>) -> Result<(), ConfigError> {
        match key {
            Setting::Bind => {
                let s = self.text(raw, true)?;
                cfg.bind = s.parse().map_err(|_| {
                    self.err(format!("{s:?} is not an address like 127.0.0.1:8000"))
                })?;
            }
            Setting::Database => {
                let s = self.text(raw, true)?;
                if s.is_empty() {
                    return Err(self.err("must not be empty"));
                }
                cfg.database = PathBuf::from(s);
            }
            Setting::SqliteSynchronous => {
                cfg.sqlite_synchronous = self.choice(
                    raw,
                    &[("full", Synchronous::Full), ("normal", Synchronous::Normal)],
                )?;
            }
            Setting::SecretKey => cfg.secret_key = self.secret(raw)?,
            Setting::AccessTokenMinutes => cfg.access_token_minutes = self.whole(raw, 1)?,
            Setting::RefreshTokenDays => cfg.refresh_token_days = self.whole(raw, 1)?,
            Setting::CorsOrigins => cfg.cors_origins = self.list(raw)?,
            Setting::TrustedProxies => {
                let mut proxies = Vec::new();
                for item in self.list(raw)? {
                    let ip = item.parse().map_err(|_| {
                        self.err(format!("{item:?} is not an IP address like 10.0.0.1"))
                    })?;
                    proxies.push(ip);
                }
                cfg.trusted_proxies = proxies;
            }
            Setting::MaxConnectionsPerIp => cfg.max_connections_per_ip = self.whole(raw, 0)?,
            Setting::AuthThrottlePerMinute => cfg.auth_throttle_per_minute = self.whole(raw, 0)?,
            Setting::MessageThrottlePerMinute => {
                cfg.message_throttle_per_minute = self.whole(raw, 0)?;
            }
            Setting::BodyLimitBytes => cfg.body_limit_bytes = self.whole(raw, 1)?,
            Setting::ContentMaxChars => cfg.content_max_chars = self.whole(raw, 1)?,
            Setting::AiBackend => {
                cfg.ai_backend = self.choice(
                    raw,
                    &[
                        ("template", AiBackend::Template),
                        ("http", AiBackend::Http),
                        ("openai", AiBackend::Openai),
                    ],
                )?;
            }
            Setting::AiUrl => cfg.ai_url = self.text(raw, true)?,
            Setting::AiModel => cfg.ai_model = self.text(raw, true)?,
            Setting::AiApiKey => cfg.ai_api_key = self.secret(raw)?,
            Setting::AiSystemPrompt => cfg.ai_system_prompt = self.text(raw, true)?,
            Setting::AiHistoryMessages => cfg.ai_history_messages = self.whole(raw, 0)?,
            Setting::AiTemperature => cfg.ai_temperature = self.float(raw)?,
            Setting::AiMaxTokens => cfg.ai_max_tokens = self.whole(raw, 1)?,
            Setting::AiTimeoutSeconds => cfg.ai_timeout_seconds = self.whole(raw, 1)?,
            Setting::AiConcurrency => cfg.ai_concurrency = self.whole(raw, 1)?,
            Setting::SearchUrl => cfg.search_url = self.text(raw, true)?,
            Setting::SearchTimeoutSeconds => cfg.search_timeout_seconds = self.whole(raw, 1)?,
            Setting::WsPingSeconds => cfg.ws_ping_seconds = self.whole(raw, 1)?,
            Setting::WsIdleSeconds => cfg.ws_idle_seconds = self.whole(raw, 1)?,
            Setting::Log => cfg.log = self.text(raw, true)?,
            Setting::LogFormat => {
                cfg.log_format =
                    self.choice(raw, &[("text", LogFormat::Text), ("json", LogFormat::Json)])?;
            }
            Setting::MetricsBind => {
                let s = self.text(raw, true)?;
                cfg.metrics_bind = if s.is_empty() {
                    None
                } else {
                    Some(s.parse().map_err(|_| {
                        self.err(format!(
                            "{s:?} is not an address like 127.0.0.1:9100 (empty = off)"
                        ))
                    })?)
                };
            }
        }
        Ok(())
    }
}

/// "a whole number of at least 1" / "a whole number (0 or more)".
fn whole_rule(min: u64) -> String {
    if min == 0 {
        "a whole number (0 or more)".to_owned()
    } else {
        format!("a whole number of at least {min}")
    }
}

/// A TOML value's type, for messages (never its content).
fn toml_type(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Whether `s` is `http://` or `https://` followed by something without
/// whitespace or control characters.
fn is_http_url(s: &str) -> bool {
    let rest = if let Some(rest) = strip_prefix_ignore_case(s, "http://") {
        rest
    } else if let Some(rest) = strip_prefix_ignore_case(s, "https://") {
        rest
    } else {
        return false;
    };
    !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// Whether `s` is an origin as browsers send it: `http` or `https`, `://`, a
/// lower-case host name, IPv4 address or bracketed IPv6 address, an optional
/// port, and nothing else (no path, not even a trailing slash).
fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => ("v6", None),
            _ => match after.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && !host.starts_with(['.', '-'])
        && !host.ends_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    });
    host_ok && port_ok
}

/// `n` random bytes from the operating system.
fn random_bytes(n: usize) -> Result<Vec<u8>, getrandom::Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Reads the TOML file and applies its keys to `cfg`.
fn apply_toml_file(cfg: &mut Config, path: &Path) -> Result<(), ConfigError> {
    let file_err =
        |message: String| ConfigError::new(CONFIG_VAR, format!("{}: {message}", path.display()));
    let content =
        fs::read_to_string(path).map_err(|e| file_err(format!("cannot read the file: {e}")))?;
    let table: toml::Table = content.parse().map_err(|e: toml::de::Error| {
        let place = e.span().map_or(String::new(), |span| {
            let before = content.get(..span.start).unwrap_or(&content);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        });
        file_err(format!("TOML syntax error{place}: {}", e.message()))
    })?;
    let mut known = Vec::with_capacity(table.len());
    for (name, value) in &table {
        match SETTINGS.iter().find(|(_, toml_key, _)| toml_key == name) {
            Some(&(key, toml_key, env)) => known.push((key, toml_key, env, value)),
            None => return Err(file_err(format!("unknown key {name:?}"))),
        }
    }
    for (key, toml_key, env, value) in known {
        let ctx = Ctx {
            toml_key,
            env,
            origin: Origin::Toml(path),
        };
        ctx.apply(cfg, key, Raw::Toml(value))?;
    }
    Ok(())
}

/// Whether the default settings file exists; an error (naming
/// `NARUTALK_CONFIG`) when that cannot be told, such as a folder on the way
/// that may not be searched.
fn default_file_exists(path: &Path) -> Result<bool, ConfigError> {
    path.try_exists().map_err(|e| {
        ConfigError::new(
            CONFIG_VAR,
            format!("{}: cannot tell whether it exists: {e}", path.display()),
        )
    })
}

/// Fails, naming `setting`, unless `value >= min`.
fn check_min(setting: Setting, value: u64, min: u64) -> Result<(), ConfigError> {
    if value >= min {
        Ok(())
    } else {
        Err(ConfigError::new(
            env_name(setting),
            format!("must be {}, got \"{value}\"", whole_rule(min)),
        ))
    }
}

fn check_secret_len(secret: &Secret, source: &str) -> Result<(), ConfigError> {
    let len = secret.expose().len();
    if len >= MIN_SECRET_BYTES {
        Ok(())
    } else {
        Err(ConfigError::new(
            SECRET_VAR,
            format!("{source}must be at least {MIN_SECRET_BYTES} bytes, got {len}"),
        ))
    }
}

/// Reads a secret file: `Ok(None)` when it does not exist.
fn read_secret_file(path: &Path) -> Result<Option<Secret>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(content) => {
            let secret = Secret(content.trim_end_matches(['\n', '\r']).to_owned());
            check_secret_len(&secret, &format!("the secret in {}: ", path.display()))?;
            Ok(Some(secret))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::new(
            SECRET_VAR,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Creates the secret file with a fresh secret, or reads the one another
/// process created first.
fn create_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let fail = |what: &str, e: &dyn fmt::Display| {
        ConfigError::new(SECRET_VAR, format!("{what} {}: {e}", path.display()))
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail("cannot create", &"not a file name"))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    if !dir.as_os_str().is_empty() {
        fs::create_dir_all(dir).map_err(|e| fail("cannot create the folder of", &e))?;
    }
    let random = random_bytes(GENERATED_SECRET_BYTES + 8)
        .map_err(|e| fail("cannot generate random bytes for", &e))?;
    let (secret_bytes, tag) = random.split_at(GENERATED_SECRET_BYTES);
    let secret = Secret(hex(secret_bytes));
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{}.tmp", std::process::id(), hex(tag)));
    let tmp = dir.join(tmp_name);

    let written = write_private(&tmp, secret.expose().as_bytes());
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    // Best effort: the temporary name must not outlive this call.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir);
            Ok(secret)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read_secret_file(path)? {
            Some(existing) => Ok(existing),
            None => Err(fail(
                "cannot create",
                &"it vanished right after being created",
            )),
        },
        Err(e) => Err(fail("cannot create", &e)),
    }
}

/// Writes `bytes` to a new file readable only by its owner, and syncs it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a new directory entry durable, where the platform allows it.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

impl Config {
    /// Layers defaults < TOML file < `NARUTALK_*` from the process
    /// environment < flags, then validates once. The file is the one
    /// `--config` or `NARUTALK_CONFIG` names, or else [`DEFAULT_CONFIG_FILE`]
    /// when it exists.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_reporting(overrides).map(|(config, _)| config)
    }

    /// [`Config::load`], also telling which settings file was read.
    pub fn load_reporting(overrides: &Overrides) -> Result<(Config, SettingsFile), ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else {
                continue;
            };
            if !name.starts_with(PREFIX) {
                continue;
            }
            match value.into_string() {
                Ok(value) => env.push((name, value)),
                Err(_) if name == CONFIG_VAR || SETTINGS.iter().any(|(_, _, e)| *e == name) => {
                    return Err(ConfigError::new(&name, "is not valid UTF-8"));
                }
                Err(_) => {}
            }
        }
        Self::load_from_with_default(env, overrides, Some(Path::new(DEFAULT_CONFIG_FILE)))
    }

    /// The same with an explicit environment (testable): only variables
    /// starting with `NARUTALK_` are read; unknown `NARUTALK_*` names are
    /// ignored (other tools may share the prefix). No default file is read:
    /// the file is the one `overrides.config` or `NARUTALK_CONFIG` names.
    pub fn load_from<I: IntoIterator<Item = (String, String)>>(
        env: I,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Self::load_from_with_default(env, overrides, None).map(|(config, _)| config)
    }

    /// [`Config::load_from`] with a default settings file, also telling which
    /// file was read: `default_file` is read when it exists and neither
    /// `overrides.config` nor `NARUTALK_CONFIG` names a file; an empty
    /// `NARUTALK_CONFIG` means no file at all. A default file that exists but
    /// cannot be read is an error naming `NARUTALK_CONFIG`, never skipped.
    /// [`Config::load`] passes [`DEFAULT_CONFIG_FILE`].
    pub fn load_from_with_default<I: IntoIterator<Item = (String, String)>>(
        env: I,
        overrides: &Overrides,
        default_file: Option<&Path>,
    ) -> Result<(Config, SettingsFile), ConfigError> {
        let vars: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(PREFIX))
            .collect();
        let mut cfg = Config::default();

        let file = match (&overrides.config, vars.get(CONFIG_VAR).map(|v| v.trim())) {
            (Some(path), _) => SettingsFile::Named(path.clone()),
            (None, Some("")) => SettingsFile::None,
            (None, Some(named)) => SettingsFile::Named(PathBuf::from(named)),
            (None, None) => match default_file {
                Some(path) if default_file_exists(path)? => SettingsFile::Default(path.to_owned()),
                _ => SettingsFile::None,
            },
        };
        if let Some(path) = file.path() {
            apply_toml_file(&mut cfg, path)?;
        }

        for &(key, toml_key, env) in &SETTINGS {
            if let Some(value) = vars.get(env) {
                let ctx = Ctx {
                    toml_key,
                    env,
                    origin: Origin::Env,
                };
                ctx.apply(&mut cfg, key, Raw::Text(value))?;
            }
        }

        if let Some(bind) = &overrides.bind {
            let ctx = Ctx {
                toml_key: "bind",
                env: env_name(Setting::Bind),
                origin: Origin::Flag("--bind"),
            };
            ctx.apply(&mut cfg, Setting::Bind, Raw::Text(bind))?;
        }
        if let Some(database) = &overrides.database {
            cfg.database = database.clone();
        }

        cfg.validate()?;
        Ok((cfg, file))
    }

    /// Checks every cross-field and range rule (also used after `load`);
    /// the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: Setting, message: String| Err(ConfigError::new(env_name(key), message));

        if self.database.as_os_str().is_empty() {
            return err(Setting::Database, "must not be empty".to_owned());
        }
        if let Some(secret) = &self.secret_key {
            check_secret_len(secret, "")?;
        }
        check_min(
            Setting::AccessTokenMinutes,
            self.access_token_minutes.into(),
            1,
        )?;
        check_min(Setting::RefreshTokenDays, self.refresh_token_days.into(), 1)?;
        for origin in &self.cors_origins {
            if !is_origin(origin) {
                return err(
                    Setting::CorsOrigins,
                    format!(
                        "{origin:?} is not an origin like http://localhost:3000 \
                         (http or https, lower-case host, optional port, no path or trailing slash)"
                    ),
                );
            }
        }
        check_min(Setting::BodyLimitBytes, self.body_limit_bytes, 1)?;
        check_min(
            Setting::ContentMaxChars,
            u64::try_from(self.content_max_chars).unwrap_or(u64::MAX),
            1,
        )?;

        let backend = match self.ai_backend {
            AiBackend::Template => None,
            AiBackend::Http => Some("http"),
            AiBackend::Openai => Some("openai"),
        };
        if let Some(backend) = backend {
            if self.ai_url.is_empty() {
                return err(
                    Setting::AiUrl,
                    format!("required when NARUTALK_AI_BACKEND is {backend}"),
                );
            }
            if !is_http_url(&self.ai_url) {
                return err(
                    Setting::AiUrl,
                    format!("must start with http:// or https://, got {:?}", self.ai_url),
                );
            }
        }
        if self.ai_backend == AiBackend::Openai && self.ai_model.trim().is_empty() {
            return err(
                Setting::AiModel,
                "required when NARUTALK_AI_BACKEND is openai".to_owned(),
            );
        }
        if self.ai_system_prompt.trim().is_empty() {
            return err(Setting::AiSystemPrompt, "must not be empty".to_owned());
        }
        if !(self.ai_temperature.is_finite() && (0.0..=2.0).contains(&self.ai_temperature)) {
            return err(
                Setting::AiTemperature,
                format!(
                    "must be a number from 0.0 to 2.0, got \"{}\"",
                    self.ai_temperature
                ),
            );
        }
        check_min(Setting::AiMaxTokens, self.ai_max_tokens.into(), 1)?;
        check_min(Setting::AiTimeoutSeconds, self.ai_timeout_seconds.into(), 1)?;
        check_min(Setting::AiConcurrency, self.ai_concurrency.into(), 1)?;
        if !self.search_url.is_empty() && !is_http_url(&self.search_url) {
            return err(
                Setting::SearchUrl,
                format!(
                    "must be empty or start with http:// or https://, got {:?}",
                    self.search_url
                ),
            );
        }
        check_min(
            Setting::SearchTimeoutSeconds,
            self.search_timeout_seconds.into(),
            1,
        )?;
        check_min(Setting::WsPingSeconds, self.ws_ping_seconds.into(), 1)?;
        check_min(Setting::WsIdleSeconds, self.ws_idle_seconds.into(), 1)?;
        if self.ws_idle_seconds <= self.ws_ping_seconds {
            return err(
                Setting::WsIdleSeconds,
                format!(
                    "must be greater than NARUTALK_WS_PING_SECONDS ({}), got \"{}\"",
                    self.ws_ping_seconds, self.ws_idle_seconds
                ),
            );
        }
        if self.log.trim().is_empty() {
            return err(Setting::Log, "must not be empty".to_owned());
        }
        if let Some(metrics) = self.metrics_bind
            && metrics.port() != 0
            && metrics == self.bind
        {
            return err(
                Setting::MetricsBind,
                format!(
                    "must differ from NARUTALK_BIND ({metrics}): the metrics are never served on the API's port"
                ),
            );
        }
        Ok(())
    }

    /// A config for tests and benches: database `dir/db.sqlite3`, a random
    /// 64-hex-char secret, both throttles 0 (off), search_url empty,
    /// everything else default.
    pub fn for_tests(dir: &Path) -> Config {
        let secret = random_bytes(32).map_or_else(|_| fallback_random_hex(), |b| hex(&b));
        Config {
            database: dir.join("db.sqlite3"),
            secret_key: Some(Secret(secret)),
            auth_throttle_per_minute: 0,
            message_throttle_per_minute: 0,
            search_url: String::new(),
            ..Config::default()
        }
    }

    /// The signing secret: `secret_key` when set; otherwise the contents
    /// (trimmed of trailing newline) of `secret_file` when it exists;
    /// otherwise, when `create` is true, 64 random bytes, hex-encoded (128
    /// chars), written to `secret_file` with mode 0600 (atomically: a
    /// temporary file hard-linked into place, so that of two processes
    /// starting at once one wins and the other reads its secret); when
    /// `create` is false an error naming `NARUTALK_SECRET_KEY`. A secret
    /// shorter than 32 bytes is an error naming `NARUTALK_SECRET_KEY`.
    pub fn signing_secret(&self, secret_file: &Path, create: bool) -> Result<Secret, ConfigError> {
        if let Some(secret) = &self.secret_key {
            check_secret_len(secret, "")?;
            return Ok(secret.clone());
        }
        if let Some(secret) = read_secret_file(secret_file)? {
            return Ok(secret);
        }
        if !create {
            return Err(ConfigError::new(
                SECRET_VAR,
                format!(
                    "not set and {} does not exist (start the server once to generate it)",
                    secret_file.display()
                ),
            ));
        }
        create_secret_file(secret_file)
    }
}

/// 64 hex characters from the standard library's randomly seeded hasher,
/// for [`Config::for_tests`] when the operating system's source fails.
fn fallback_random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(64);
    for i in 0u8..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(env(pairs), &Overrides::default())
    }

    fn load_err(pairs: &[(&str, &str)]) -> ConfigError {
        load_env(pairs).unwrap_err()
    }

    fn write_toml(dir: &Path, content: &str) -> PathBuf {
        let path = dir.join("narutalk.toml");
        fs::write(&path, content).unwrap();
        path
    }

    fn load_toml(content: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(dir.path(), content);
        let overrides = Overrides {
            config: Some(path),
            ..Overrides::default()
        };
        let result = Config::load_from(Vec::new(), &overrides);
        (dir, result)
    }

    const SECRET_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-secret-A";
    const SECRET_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-secret-B";

    #[test]
    fn defaults_equal_the_table_of_contract_section_8() {
        let c = Config::default();
        assert_eq!(c.bind, "127.0.0.1:8000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.database, PathBuf::from("data/databases/db.sqlite3"));
        assert_eq!(c.sqlite_synchronous, Synchronous::Full);
        assert_eq!(c.secret_key, None);
        assert_eq!(c.access_token_minutes, 60);
        assert_eq!(c.refresh_token_days, 7);
        assert_eq!(c.cors_origins, vec!["http://localhost:3000".to_owned()]);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.max_connections_per_ip, 1000);
        assert_eq!(c.auth_throttle_per_minute, 10);
        assert_eq!(c.message_throttle_per_minute, 30);
        assert_eq!(c.body_limit_bytes, 1_048_576);
        assert_eq!(c.content_max_chars, 10_000);
        assert_eq!(c.ai_backend, AiBackend::Template);
        assert_eq!(c.ai_url, "");
        assert_eq!(c.ai_model, "");
        assert_eq!(c.ai_api_key, None);
        assert_eq!(c.ai_system_prompt, DEFAULT_AI_SYSTEM_PROMPT);
        assert_eq!(c.ai_history_messages, 20);
        assert_eq!(c.ai_temperature, 0.2);
        assert_eq!(c.ai_max_tokens, 1024);
        assert_eq!(c.ai_timeout_seconds, 30);
        assert_eq!(c.ai_concurrency, 64);
        assert_eq!(c.search_url, "http://localhost:8001/api/search/");
        assert_eq!(c.search_timeout_seconds, 30);
        assert_eq!(c.ws_ping_seconds, 30);
        assert_eq!(c.ws_idle_seconds, 60);
        assert_eq!(c.log, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.metrics_bind, None);
        assert_eq!(c.validate().unwrap(), ());
    }

    #[test]
    fn an_empty_environment_and_no_flags_give_the_defaults() {
        assert_eq!(load_env(&[]).unwrap(), Config::default());
    }

    #[test]
    fn the_default_system_prompt_has_the_category_placeholder() {
        assert!(DEFAULT_AI_SYSTEM_PROMPT.contains("{category}"));
        assert_eq!(SECRET_FILE, "data/secret.key");
    }

    #[test]
    fn every_toml_key_is_its_variable_name_lower_cased_without_the_prefix() {
        for (_, toml_key, env) in SETTINGS {
            assert_eq!(format!("NARUTALK_{}", toml_key.to_uppercase()), env);
        }
    }

    #[test]
    fn synchronous_gives_the_pragma_value() {
        assert_eq!(Synchronous::Full.as_pragma(), "FULL");
        assert_eq!(Synchronous::Normal.as_pragma(), "NORMAL");
    }

    #[test]
    fn a_toml_file_named_by_narutalk_config_overrides_every_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(
            dir.path(),
            &format!(
                r#"
bind = "0.0.0.0:9000"
database = "/var/lib/narutalk/db.sqlite3"
sqlite_synchronous = "NORMAL"
secret_key = "{SECRET_A}"
access_token_minutes = 15
refresh_token_days = 30
cors_origins = ["https://a.example", " http://b.example:8080 ", ""]
trusted_proxies = "10.0.0.1, ::1"
max_connections_per_ip = 0
auth_throttle_per_minute = 0
message_throttle_per_minute = 5
body_limit_bytes = 2048
content_max_chars = 500
ai_backend = "openai"
ai_url = "http://127.0.0.1:11434/v1"
ai_model = "llama3"
ai_api_key = "sk-test"
ai_system_prompt = "Be brief about {{category}}."
ai_history_messages = 0
ai_temperature = 1
ai_max_tokens = 256
ai_timeout_seconds = 90
ai_concurrency = 8
search_url = ""
search_timeout_seconds = 5
ws_ping_seconds = 10
ws_idle_seconds = 25
log = "debug,hyper=warn"
log_format = "json"
metrics_bind = "127.0.0.1:9100"
"#
            ),
        );
        let c = load_env(&[("NARUTALK_CONFIG", path.to_str().unwrap())]).unwrap();
        let expected = Config {
            bind: "0.0.0.0:9000".parse().unwrap(),
            database: PathBuf::from("/var/lib/narutalk/db.sqlite3"),
            sqlite_synchronous: Synchronous::Normal,
            secret_key: Some(Secret::new(SECRET_A)),
            access_token_minutes: 15,
            refresh_token_days: 30,
            cors_origins: vec![
                "https://a.example".to_owned(),
                "http://b.example:8080".to_owned(),
            ],
            trusted_proxies: vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            max_connections_per_ip: 0,
            auth_throttle_per_minute: 0,
            message_throttle_per_minute: 5,
            body_limit_bytes: 2048,
            content_max_chars: 500,
            ai_backend: AiBackend::Openai,
            ai_url: "http://127.0.0.1:11434/v1".to_owned(),
            ai_model: "llama3".to_owned(),
            ai_api_key: Some(Secret::new("sk-test")),
            ai_system_prompt: "Be brief about {category}.".to_owned(),
            ai_history_messages: 0,
            ai_temperature: 1.0,
            ai_max_tokens: 256,
            ai_timeout_seconds: 90,
            ai_concurrency: 8,
            search_url: String::new(),
            search_timeout_seconds: 5,
            ws_ping_seconds: 10,
            ws_idle_seconds: 25,
            log: "debug,hyper=warn".to_owned(),
            log_format: LogFormat::Json,
            metrics_bind: Some("127.0.0.1:9100".parse().unwrap()),
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn the_config_flag_names_the_file_and_replaces_narutalk_config() {
        let dir = tempfile::tempdir().unwrap();
        let from_flag = dir.path().join("flag.toml");
        fs::write(&from_flag, "access_token_minutes = 5\n").unwrap();
        let overrides = Overrides {
            config: Some(from_flag),
            ..Overrides::default()
        };
        let c = Config::load_from(
            env(&[("NARUTALK_CONFIG", "/nonexistent/narutalk.toml")]),
            &overrides,
        )
        .unwrap();
        assert_eq!(c.access_token_minutes, 5);
    }

    #[test]
    fn an_empty_narutalk_config_means_no_file() {
        assert_eq!(
            load_env(&[("NARUTALK_CONFIG", " ")]).unwrap(),
            Config::default()
        );
    }

    /// `load_from_with_default` with `default` as the default file.
    fn load_with_default(
        pairs: &[(&str, &str)],
        overrides: &Overrides,
        default: &Path,
    ) -> Result<(Config, SettingsFile), ConfigError> {
        Config::load_from_with_default(env(pairs), overrides, Some(default))
    }

    #[test]
    fn the_default_file_is_read_when_it_exists_and_nothing_names_another() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_toml(dir.path(), "access_token_minutes = 5\n");
        let (c, file) = load_with_default(&[], &Overrides::default(), &default).unwrap();
        assert_eq!(c.access_token_minutes, 5);
        assert_eq!(file, SettingsFile::Default(default.clone()));
        assert_eq!(file.to_string(), format!("{} (default)", default.display()));
    }

    #[test]
    fn a_missing_default_file_gives_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("narutalk.toml");
        let (c, file) = load_with_default(&[], &Overrides::default(), &default).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(file, SettingsFile::None);
        assert_eq!(file.to_string(), "none");
        assert!(!default.exists());
    }

    #[test]
    fn narutalk_config_and_the_config_flag_win_over_the_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_toml(dir.path(), "access_token_minutes = 5\n");
        let named = dir.path().join("named.toml");
        fs::write(&named, "refresh_token_days = 3\n").unwrap();
        let named_text = named.to_str().unwrap();

        let (c, file) = load_with_default(
            &[("NARUTALK_CONFIG", named_text)],
            &Overrides::default(),
            &default,
        )
        .unwrap();
        assert_eq!((c.access_token_minutes, c.refresh_token_days), (60, 3));
        assert_eq!(file, SettingsFile::Named(named.clone()));
        assert_eq!(file.to_string(), named.display().to_string());

        let overrides = Overrides {
            config: Some(named.clone()),
            ..Overrides::default()
        };
        let (c, file) = load_with_default(&[], &overrides, &default).unwrap();
        assert_eq!((c.access_token_minutes, c.refresh_token_days), (60, 3));
        assert_eq!(file, SettingsFile::Named(named));

        // A named file that does not exist is an error, never a fall back to the default.
        let e = load_with_default(
            &[("NARUTALK_CONFIG", "/nonexistent/narutalk.toml")],
            &Overrides::default(),
            &default,
        )
        .unwrap_err();
        assert_eq!(e.setting, "NARUTALK_CONFIG");
        assert!(
            e.message
                .starts_with("/nonexistent/narutalk.toml: cannot read the file"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_narutalk_config_means_no_file_even_when_the_default_exists() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_toml(dir.path(), "access_token_minutes = 5\n");
        for empty in ["", "  "] {
            let (c, file) = load_with_default(
                &[("NARUTALK_CONFIG", empty)],
                &Overrides::default(),
                &default,
            )
            .unwrap();
            assert_eq!(c, Config::default());
            assert_eq!(file, SettingsFile::None);
        }
    }

    #[test]
    fn the_environment_and_flags_override_the_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_toml(dir.path(), "bind = \"0.0.0.0:9000\"\nlog = \"warn\"\n");
        let overrides = Overrides {
            database: Some(PathBuf::from("/srv/flag.sqlite3")),
            ..Overrides::default()
        };
        let (c, _) =
            load_with_default(&[("NARUTALK_BIND", "127.0.0.1:9001")], &overrides, &default)
                .unwrap();
        assert_eq!(c.bind, "127.0.0.1:9001".parse::<SocketAddr>().unwrap());
        assert_eq!(c.log, "warn");
        assert_eq!(c.database, PathBuf::from("/srv/flag.sqlite3"));
    }

    #[test]
    fn a_default_file_that_cannot_be_read_is_an_error_naming_narutalk_config() {
        // A folder where the file should be: it exists, and reading it fails (also for
        // root, whom file modes do not stop).
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("narutalk.toml");
        fs::create_dir(&default).unwrap();
        let e = load_with_default(&[], &Overrides::default(), &default).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_CONFIG");
        assert!(
            e.message
                .starts_with(&format!("{}: cannot read the file", default.display())),
            "{e}"
        );
        // A bad value in the default file names its setting and the file.
        let dir = tempfile::tempdir().unwrap();
        let default = write_toml(dir.path(), "bind = \"nowhere\"\n");
        let e = load_with_default(&[], &Overrides::default(), &default).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid setting NARUTALK_BIND: {}: \"nowhere\" is not an address like 127.0.0.1:8000",
                default.display()
            )
        );
    }

    #[test]
    fn load_from_reads_no_default_file_and_load_uses_the_packaged_path() {
        assert_eq!(DEFAULT_CONFIG_FILE, "/etc/narutalk/narutalk.toml");
        // The Debian package installs its commented file there, as a configuration file.
        let conffiles = include_str!("../../packaging/debian/conffiles");
        assert_eq!(
            conffiles.lines().collect::<Vec<_>>(),
            vec![DEFAULT_CONFIG_FILE]
        );
        let (c, file) =
            Config::load_from_with_default(Vec::new(), &Overrides::default(), None).unwrap();
        assert_eq!((c, file), (Config::default(), SettingsFile::None));
    }

    /// The commented settings file the Debian package installs as `DEFAULT_CONFIG_FILE`.
    const PACKAGED_FILE: &str = include_str!("../../packaging/debian/narutalk.toml");

    /// The packaged file's `key = value` lines whose key is a setting, as
    /// (key, line without the comment mark, commented out).
    fn packaged_settings() -> Vec<(String, String, bool)> {
        PACKAGED_FILE
            .lines()
            .filter_map(|line| {
                let (commented, rest) = match line.strip_prefix("# ") {
                    Some(rest) => (true, rest),
                    None => (false, line),
                };
                let (key, _) = rest.split_once(" = ")?;
                SETTINGS
                    .iter()
                    .any(|(_, toml_key, _)| *toml_key == key)
                    .then(|| (key.to_owned(), rest.to_owned(), commented))
            })
            .collect()
    }

    #[test]
    fn the_packaged_file_lists_every_setting_once() {
        let listed = packaged_settings();
        for (_, toml_key, _) in SETTINGS {
            let count = listed.iter().filter(|(key, _, _)| key == toml_key).count();
            assert_eq!(
                count, 1,
                "{toml_key} is listed {count} times in narutalk.toml"
            );
        }
        assert_eq!(listed.len(), SETTINGS.len());
    }

    #[test]
    fn the_packaged_file_sets_only_the_database_and_comments_out_the_defaults() {
        let listed = packaged_settings();
        let active: Vec<&str> = listed
            .iter()
            .filter(|(_, _, commented)| !commented)
            .map(|(key, _, _)| key.as_str())
            .collect();
        assert_eq!(active, vec!["database"]);

        // As installed: the defaults, with the package's database.
        let dir = tempfile::tempdir().unwrap();
        let installed = write_toml(dir.path(), PACKAGED_FILE);
        let (c, file) = load_with_default(&[], &Overrides::default(), &installed).unwrap();
        assert_eq!(file, SettingsFile::Default(installed));
        assert_eq!(
            c,
            Config {
                database: PathBuf::from("/var/lib/narutalk/data/databases/db.sqlite3"),
                ..Config::default()
            }
        );

        // Every commented value, uncommented, is the built-in default.
        let uncommented: String = listed
            .iter()
            .filter(|(_, _, commented)| *commented)
            .map(|(_, line, _)| format!("{line}\n"))
            .collect();
        let (_dir, r) = load_toml(&uncommented);
        assert_eq!(r.unwrap(), Config::default());
    }

    #[test]
    fn the_environment_overrides_the_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(dir.path(), "bind = \"0.0.0.0:9000\"\nlog = \"warn\"\n");
        let c = load_env(&[
            ("NARUTALK_CONFIG", path.to_str().unwrap()),
            ("NARUTALK_BIND", "127.0.0.1:9001"),
        ])
        .unwrap();
        assert_eq!(c.bind, "127.0.0.1:9001".parse::<SocketAddr>().unwrap());
        assert_eq!(c.log, "warn");
    }

    #[test]
    fn flags_override_the_environment() {
        let overrides = Overrides {
            bind: Some(" [::1]:8080 ".to_owned()),
            database: Some(PathBuf::from("/srv/narutalk/flag.sqlite3")),
            config: None,
        };
        let c = Config::load_from(
            env(&[
                ("NARUTALK_BIND", "127.0.0.1:9001"),
                ("NARUTALK_DATABASE", "/srv/narutalk/env.sqlite3"),
            ]),
            &overrides,
        )
        .unwrap();
        assert_eq!(c.bind, "[::1]:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.database, PathBuf::from("/srv/narutalk/flag.sqlite3"));
    }

    #[test]
    fn a_bad_bind_flag_names_narutalk_bind() {
        let overrides = Overrides {
            bind: Some("nowhere".to_owned()),
            ..Overrides::default()
        };
        let e = Config::load_from(Vec::new(), &overrides).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_BIND");
        assert_eq!(
            e.to_string(),
            "invalid setting NARUTALK_BIND: --bind: \"nowhere\" is not an address like 127.0.0.1:8000"
        );
    }

    #[test]
    fn bind_accepts_ipv4_ipv6_and_port_zero_and_rejects_garbage() {
        assert_eq!(
            load_env(&[("NARUTALK_BIND", "[::1]:8000")]).unwrap().bind,
            "[::1]:8000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            load_env(&[("NARUTALK_BIND", "0.0.0.0:0")])
                .unwrap()
                .bind
                .port(),
            0
        );
        assert_eq!(
            load_err(&[("NARUTALK_BIND", "x")]).to_string(),
            "invalid setting NARUTALK_BIND: \"x\" is not an address like 127.0.0.1:8000"
        );
        for bad in ["", "localhost:8000", "127.0.0.1", "127.0.0.1:70000"] {
            assert_eq!(load_err(&[("NARUTALK_BIND", bad)]).setting, "NARUTALK_BIND");
        }
    }

    #[test]
    fn metrics_bind_is_off_when_empty_an_address_otherwise_and_never_the_api_address() {
        assert_eq!(
            load_env(&[("NARUTALK_METRICS_BIND", "")])
                .unwrap()
                .metrics_bind,
            None
        );
        assert_eq!(
            load_env(&[("NARUTALK_METRICS_BIND", " 127.0.0.1:9100 ")])
                .unwrap()
                .metrics_bind,
            Some("127.0.0.1:9100".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(
            load_err(&[("NARUTALK_METRICS_BIND", "9100")]).to_string(),
            "invalid setting NARUTALK_METRICS_BIND: \"9100\" is not an address like 127.0.0.1:9100 (empty = off)"
        );
        assert_eq!(
            load_err(&[
                ("NARUTALK_BIND", "127.0.0.1:8000"),
                ("NARUTALK_METRICS_BIND", "127.0.0.1:8000")
            ])
            .setting,
            "NARUTALK_METRICS_BIND"
        );
        let both_free = load_env(&[
            ("NARUTALK_BIND", "127.0.0.1:0"),
            ("NARUTALK_METRICS_BIND", "127.0.0.1:0"),
        ])
        .unwrap();
        assert_eq!(both_free.metrics_bind.map(|a| a.port()), Some(0));
        let (_dir, from_file) = load_toml("metrics_bind = \"[::1]:9100\"");
        assert_eq!(
            from_file.unwrap().metrics_bind,
            Some("[::1]:9100".parse::<SocketAddr>().unwrap())
        );
    }

    #[test]
    fn an_unknown_toml_key_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(dir.path(), "bnd = \"127.0.0.1:1\"\n");
        let e = load_env(&[("NARUTALK_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_CONFIG");
        assert_eq!(
            e.to_string(),
            format!(
                "invalid setting NARUTALK_CONFIG: {}: unknown key \"bnd\"",
                path.display()
            )
        );
    }

    #[test]
    fn toml_sections_and_prefixed_names_are_unknown_keys() {
        let (_dir, r) = load_toml("[server]\nbind = \"127.0.0.1:1\"\n");
        assert!(r.unwrap_err().message.ends_with("unknown key \"server\""));
        let (_dir, r) = load_toml("NARUTALK_BIND = \"127.0.0.1:1\"\n");
        assert!(
            r.unwrap_err()
                .message
                .ends_with("unknown key \"NARUTALK_BIND\"")
        );
        let (_dir, r) = load_toml("config = \"other.toml\"\n");
        assert!(r.unwrap_err().message.ends_with("unknown key \"config\""));
    }

    #[test]
    fn a_toml_syntax_error_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(dir.path(), "log = \"info\"\nbind = \n");
        let e = load_env(&[("NARUTALK_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_CONFIG");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "invalid setting NARUTALK_CONFIG: {}: TOML syntax error at line 2",
                path.display()
            )),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let e = load_env(&[("NARUTALK_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_CONFIG");
        assert!(
            e.to_string().starts_with(&format!(
                "invalid setting NARUTALK_CONFIG: {}: cannot read the file: ",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn toml_values_of_the_wrong_type_are_rejected_naming_the_setting() {
        let cases = [
            (
                "bind = 8000",
                "NARUTALK_BIND",
                "must be a string, got an integer",
            ),
            (
                "access_token_minutes = \"60\"",
                "NARUTALK_ACCESS_TOKEN_MINUTES",
                "must be an integer, got a string",
            ),
            (
                "body_limit_bytes = 1.5",
                "NARUTALK_BODY_LIMIT_BYTES",
                "must be an integer, got a float",
            ),
            (
                "ai_temperature = \"0.5\"",
                "NARUTALK_AI_TEMPERATURE",
                "must be a number, got a string",
            ),
            (
                "cors_origins = 3",
                "NARUTALK_CORS_ORIGINS",
                "must be an array of strings or a comma-separated string, got an integer",
            ),
            (
                "trusted_proxies = [1, 2]",
                "NARUTALK_TRUSTED_PROXIES",
                "must be an array of strings, got an array holding an integer",
            ),
            (
                "log_format = true",
                "NARUTALK_LOG_FORMAT",
                "must be a string, got a boolean",
            ),
            (
                "database = { path = \"x\" }",
                "NARUTALK_DATABASE",
                "must be a string, got a table",
            ),
            (
                "secret_key = 12345",
                "NARUTALK_SECRET_KEY",
                "must be a string, got an integer",
            ),
        ];
        for (content, setting, tail) in cases {
            let (dir, r) = load_toml(content);
            let e = r.unwrap_err();
            assert_eq!(e.setting, setting, "{content}");
            let key = content.split(' ').next().unwrap();
            assert_eq!(
                e.message,
                format!(
                    "{}: key \"{key}\" {tail}",
                    dir.path().join("narutalk.toml").display()
                )
            );
        }
    }

    #[test]
    fn toml_numbers_out_of_range_are_rejected() {
        let (_dir, r) = load_toml("ws_ping_seconds = -5");
        let e = r.unwrap_err();
        assert_eq!(e.setting, "NARUTALK_WS_PING_SECONDS");
        assert!(
            e.message
                .ends_with("must be a whole number of at least 1, got -5")
        );
        let (_dir, r) = load_toml("ai_max_tokens = 4294967296");
        assert_eq!(r.unwrap_err().setting, "NARUTALK_AI_MAX_TOKENS");
        let (_dir, r) = load_toml("access_token_minutes = 0");
        assert_eq!(
            r.unwrap_err().to_string(),
            "invalid setting NARUTALK_ACCESS_TOKEN_MINUTES: must be a whole number of at least 1, got \"0\""
        );
    }

    /// (variable, smallest accepted value)
    const NUMBERS: [(&str, u64); 16] = [
        ("NARUTALK_ACCESS_TOKEN_MINUTES", 1),
        ("NARUTALK_REFRESH_TOKEN_DAYS", 1),
        ("NARUTALK_MAX_CONNECTIONS_PER_IP", 0),
        ("NARUTALK_AUTH_THROTTLE_PER_MINUTE", 0),
        ("NARUTALK_MESSAGE_THROTTLE_PER_MINUTE", 0),
        ("NARUTALK_BODY_LIMIT_BYTES", 1),
        ("NARUTALK_CONTENT_MAX_CHARS", 1),
        ("NARUTALK_AI_HISTORY_MESSAGES", 0),
        ("NARUTALK_AI_MAX_TOKENS", 1),
        ("NARUTALK_AI_TIMEOUT_SECONDS", 1),
        ("NARUTALK_AI_CONCURRENCY", 1),
        ("NARUTALK_SEARCH_TIMEOUT_SECONDS", 1),
        ("NARUTALK_WS_PING_SECONDS", 1),
        ("NARUTALK_WS_IDLE_SECONDS", 1),
        ("NARUTALK_AI_TEMPERATURE", 0),
        ("NARUTALK_BODY_LIMIT_BYTES", 1),
    ];

    #[test]
    fn the_access_token_minutes_error_reads_exactly() {
        assert_eq!(
            load_err(&[("NARUTALK_ACCESS_TOKEN_MINUTES", "0")]).to_string(),
            "invalid setting NARUTALK_ACCESS_TOKEN_MINUTES: must be a whole number of at least 1, got \"0\""
        );
        assert_eq!(
            load_err(&[("NARUTALK_ACCESS_TOKEN_MINUTES", "ten")]).to_string(),
            "invalid setting NARUTALK_ACCESS_TOKEN_MINUTES: must be a whole number of at least 1, got \"ten\""
        );
    }

    #[test]
    fn each_numeric_setting_rejects_negative_garbage_and_empty_values() {
        for (var, _) in NUMBERS {
            for bad in ["-1", "abc", "", "  ", "1x", "0x10", "1_000"] {
                let e = load_err(&[(var, bad)]);
                assert_eq!(e.setting, var, "{var}={bad:?}");
            }
        }
        for var in ["NARUTALK_BODY_LIMIT_BYTES", "NARUTALK_ACCESS_TOKEN_MINUTES"] {
            assert_eq!(load_err(&[(var, "99999999999999999999999")]).setting, var);
        }
        assert_eq!(
            load_err(&[("NARUTALK_AI_MAX_TOKENS", "4294967296")]).setting,
            "NARUTALK_AI_MAX_TOKENS"
        );
    }

    #[test]
    fn zero_is_rejected_exactly_where_the_rules_ask_for_at_least_one() {
        for (var, min) in NUMBERS {
            if var == "NARUTALK_AI_TEMPERATURE" {
                continue;
            }
            let r = load_env(&[(var, "0")]);
            if min == 0 {
                assert!(r.is_ok(), "{var}=0 should pass");
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.setting, var);
                assert_eq!(e.message, "must be a whole number of at least 1, got \"0\"");
            }
        }
    }

    #[test]
    fn max_connections_per_ip_is_a_whole_number_and_zero_means_no_limit() {
        let read = |value| {
            load_env(&[("NARUTALK_MAX_CONNECTIONS_PER_IP", value)])
                .map(|c| c.max_connections_per_ip)
        };
        assert_eq!(read(" 25 ").unwrap(), 25);
        assert_eq!(read("0").unwrap(), 0);
        assert_eq!(
            read("-1").unwrap_err().to_string(),
            "invalid setting NARUTALK_MAX_CONNECTIONS_PER_IP: must be a whole number (0 or more), got \"-1\""
        );
        assert_eq!(
            read("4294967296").unwrap_err().to_string(),
            "invalid setting NARUTALK_MAX_CONNECTIONS_PER_IP: 4294967296 is too large"
        );
        let (_dir, r) = load_toml("max_connections_per_ip = 64");
        assert_eq!(r.unwrap().max_connections_per_ip, 64);
    }

    #[test]
    fn numbers_are_trimmed_and_parsed_fully() {
        let c = load_env(&[
            ("NARUTALK_ACCESS_TOKEN_MINUTES", " 15 "),
            ("NARUTALK_BODY_LIMIT_BYTES", "10485760"),
            ("NARUTALK_CONTENT_MAX_CHARS", "20000"),
            ("NARUTALK_AI_TEMPERATURE", "0.7"),
        ])
        .unwrap();
        assert_eq!(c.access_token_minutes, 15);
        assert_eq!(c.body_limit_bytes, 10_485_760);
        assert_eq!(c.content_max_chars, 20_000);
        assert_eq!(c.ai_temperature, 0.7);
    }

    #[test]
    fn temperature_must_be_finite_and_between_zero_and_two() {
        for ok in ["0", "2", "2.0", "0.0", "1e0"] {
            assert!(load_env(&[("NARUTALK_AI_TEMPERATURE", ok)]).is_ok(), "{ok}");
        }
        for bad in ["-0.1", "2.01", "NaN", "inf", "-inf", "", "warm"] {
            let e = load_err(&[("NARUTALK_AI_TEMPERATURE", bad)]);
            assert_eq!(e.setting, "NARUTALK_AI_TEMPERATURE", "{bad}");
            assert!(
                e.message.starts_with("must be a number from 0.0 to 2.0"),
                "{e}"
            );
        }
        let (_dir, r) = load_toml("ai_temperature = 0");
        assert_eq!(r.unwrap().ai_temperature, 0.0);
        let (_dir, r) = load_toml("ai_temperature = nan");
        assert_eq!(r.unwrap_err().setting, "NARUTALK_AI_TEMPERATURE");
    }

    #[test]
    fn enums_are_case_insensitive() {
        let c = load_env(&[
            ("NARUTALK_SQLITE_SYNCHRONOUS", "Normal"),
            ("NARUTALK_AI_BACKEND", " HTTP "),
            ("NARUTALK_AI_URL", "http://127.0.0.1:5000/answer"),
            ("NARUTALK_LOG_FORMAT", "JSON"),
        ])
        .unwrap();
        assert_eq!(c.sqlite_synchronous, Synchronous::Normal);
        assert_eq!(c.ai_backend, AiBackend::Http);
        assert_eq!(c.log_format, LogFormat::Json);
        let c = load_env(&[("NARUTALK_SQLITE_SYNCHRONOUS", "FULL")]).unwrap();
        assert_eq!(c.sqlite_synchronous, Synchronous::Full);
        let (_dir, r) = load_toml("log_format = \"Text\"\nai_backend = \"TEMPLATE\"");
        let c = r.unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.ai_backend, AiBackend::Template);
    }

    #[test]
    fn unknown_or_empty_enum_values_are_rejected() {
        assert_eq!(
            load_err(&[("NARUTALK_SQLITE_SYNCHRONOUS", "off")]).to_string(),
            "invalid setting NARUTALK_SQLITE_SYNCHRONOUS: must be \"full\" or \"normal\", got \"off\""
        );
        assert_eq!(
            load_err(&[("NARUTALK_AI_BACKEND", "claude")]).to_string(),
            "invalid setting NARUTALK_AI_BACKEND: must be \"template\", \"http\" or \"openai\", got \"claude\""
        );
        for var in [
            "NARUTALK_SQLITE_SYNCHRONOUS",
            "NARUTALK_AI_BACKEND",
            "NARUTALK_LOG_FORMAT",
        ] {
            assert_eq!(load_err(&[(var, "")]).setting, var);
        }
    }

    #[test]
    fn lists_are_split_on_commas_and_trimmed() {
        let c = load_env(&[
            (
                "NARUTALK_CORS_ORIGINS",
                " http://localhost:3000 ,, https://chat.example.org ,",
            ),
            ("NARUTALK_TRUSTED_PROXIES", "10.0.0.1, ::1 ,"),
        ])
        .unwrap();
        assert_eq!(
            c.cors_origins,
            vec![
                "http://localhost:3000".to_owned(),
                "https://chat.example.org".to_owned()
            ]
        );
        assert_eq!(
            c.trusted_proxies,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        let c = load_env(&[
            ("NARUTALK_CORS_ORIGINS", ""),
            ("NARUTALK_TRUSTED_PROXIES", " "),
        ])
        .unwrap();
        assert!(c.cors_origins.is_empty());
        assert!(c.trusted_proxies.is_empty());
        let (_dir, r) = load_toml("cors_origins = \"http://a.example, http://b.example\"");
        assert_eq!(
            r.unwrap().cors_origins,
            vec!["http://a.example".to_owned(), "http://b.example".to_owned()]
        );
    }

    #[test]
    fn trusted_proxy_garbage_is_rejected() {
        assert_eq!(
            load_err(&[("NARUTALK_TRUSTED_PROXIES", "10.0.0.1, proxy.local")]).to_string(),
            "invalid setting NARUTALK_TRUSTED_PROXIES: \"proxy.local\" is not an IP address like 10.0.0.1"
        );
        for bad in ["10.0.0.0/8", "10.0.0.1:80", "[::1]", "256.0.0.1"] {
            assert_eq!(
                load_err(&[("NARUTALK_TRUSTED_PROXIES", bad)]).setting,
                "NARUTALK_TRUSTED_PROXIES"
            );
        }
    }

    #[test]
    fn cors_origins_must_be_scheme_host_and_optional_port_only() {
        for ok in [
            "http://localhost:3000",
            "https://chat.example.org",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "https://[2001:db8::1]",
        ] {
            assert!(load_env(&[("NARUTALK_CORS_ORIGINS", ok)]).is_ok(), "{ok}");
        }
        for bad in [
            "http://localhost:3000/",
            "https://chat.example.org/app",
            "ftp://example.org",
            "localhost:3000",
            "*",
            "http://",
            "http://host:",
            "http://host:99999",
            "HTTP://localhost",
            "http://Example.org",
            "http://user@host",
            "http://host?x=1",
            "http://[::1",
        ] {
            let e = load_err(&[("NARUTALK_CORS_ORIGINS", bad)]);
            assert_eq!(e.setting, "NARUTALK_CORS_ORIGINS", "{bad}");
            assert!(
                e.message.starts_with(&format!("{bad:?} is not an origin")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_http_backend_without_a_url_is_rejected() {
        assert_eq!(
            load_err(&[("NARUTALK_AI_BACKEND", "http")]).to_string(),
            "invalid setting NARUTALK_AI_URL: required when NARUTALK_AI_BACKEND is http"
        );
        let e = load_err(&[
            ("NARUTALK_AI_BACKEND", "http"),
            ("NARUTALK_AI_URL", "127.0.0.1:5000"),
        ]);
        assert_eq!(e.setting, "NARUTALK_AI_URL");
        assert_eq!(
            e.message,
            "must start with http:// or https://, got \"127.0.0.1:5000\""
        );
    }

    #[test]
    fn the_openai_backend_needs_a_url_and_a_model_but_no_key() {
        assert_eq!(
            load_err(&[
                ("NARUTALK_AI_BACKEND", "openai"),
                ("NARUTALK_AI_MODEL", "m")
            ])
            .to_string(),
            "invalid setting NARUTALK_AI_URL: required when NARUTALK_AI_BACKEND is openai"
        );
        assert_eq!(
            load_err(&[
                ("NARUTALK_AI_BACKEND", "openai"),
                ("NARUTALK_AI_URL", "http://127.0.0.1:11434/v1"),
            ])
            .to_string(),
            "invalid setting NARUTALK_AI_MODEL: required when NARUTALK_AI_BACKEND is openai"
        );
        let c = load_env(&[
            ("NARUTALK_AI_BACKEND", "openai"),
            ("NARUTALK_AI_URL", "https://api.example.com/v1"),
            ("NARUTALK_AI_MODEL", "gpt-x"),
        ])
        .unwrap();
        assert_eq!(c.ai_api_key, None);
    }

    #[test]
    fn the_template_backend_ignores_the_ai_url() {
        let c = load_env(&[("NARUTALK_AI_URL", "whatever")]).unwrap();
        assert_eq!(c.ai_backend, AiBackend::Template);
    }

    #[test]
    fn the_idle_limit_must_exceed_the_ping_interval() {
        assert_eq!(
            load_err(&[("NARUTALK_WS_IDLE_SECONDS", "30")]).to_string(),
            "invalid setting NARUTALK_WS_IDLE_SECONDS: must be greater than NARUTALK_WS_PING_SECONDS (30), got \"30\""
        );
        assert_eq!(
            load_err(&[
                ("NARUTALK_WS_PING_SECONDS", "90"),
                ("NARUTALK_WS_IDLE_SECONDS", "60")
            ])
            .setting,
            "NARUTALK_WS_IDLE_SECONDS"
        );
        assert!(load_env(&[("NARUTALK_WS_IDLE_SECONDS", "31")]).is_ok());
    }

    #[test]
    fn an_empty_search_url_means_not_configured_and_a_bad_one_is_rejected() {
        assert_eq!(
            load_env(&[("NARUTALK_SEARCH_URL", " ")])
                .unwrap()
                .search_url,
            ""
        );
        let e = load_err(&[("NARUTALK_SEARCH_URL", "localhost:8001/api/search/")]);
        assert_eq!(e.setting, "NARUTALK_SEARCH_URL");
    }

    #[test]
    fn empty_strings_that_must_not_be_empty_are_rejected() {
        for var in [
            "NARUTALK_DATABASE",
            "NARUTALK_LOG",
            "NARUTALK_AI_SYSTEM_PROMPT",
        ] {
            let e = load_err(&[(var, "  ")]);
            assert_eq!(e.setting, var);
            assert_eq!(e.message, "must not be empty");
        }
        let overrides = Overrides {
            database: Some(PathBuf::new()),
            ..Overrides::default()
        };
        assert_eq!(
            Config::load_from(Vec::new(), &overrides)
                .unwrap_err()
                .setting,
            "NARUTALK_DATABASE"
        );
    }

    #[test]
    fn empty_secrets_mean_none_and_secrets_are_kept_exactly() {
        let c = load_env(&[("NARUTALK_SECRET_KEY", ""), ("NARUTALK_AI_API_KEY", "")]).unwrap();
        assert_eq!(c.secret_key, None);
        assert_eq!(c.ai_api_key, None);
        let padded = format!(" {SECRET_A} ");
        let c = load_env(&[("NARUTALK_SECRET_KEY", &padded)]).unwrap();
        assert_eq!(c.secret_key.unwrap().expose(), padded);
    }

    #[test]
    fn unknown_narutalk_variables_and_other_variables_are_ignored() {
        let c = load_env(&[
            ("NARUTALK_SOMETHING_ELSE", "garbage"),
            ("BIND", "garbage"),
            ("narutalk_bind", "garbage"),
        ])
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_process_environment_loads_without_panicking() {
        // The test runner sets no NARUTALK_ variables; whatever it sets, no panic.
        let _ = Config::load(&Overrides::default());
    }

    #[test]
    fn debug_of_a_config_shows_neither_secret() {
        let c = load_env(&[
            ("NARUTALK_SECRET_KEY", SECRET_A),
            ("NARUTALK_AI_API_KEY", SECRET_B),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(SECRET_A));
        assert!(!debug.contains(SECRET_B));
        assert!(debug.contains("secret_key: Some(***)"));
        let secret = Secret::new(SECRET_A);
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), SECRET_A);
    }

    #[test]
    fn an_error_about_a_bad_secret_never_contains_it() {
        let short = "short-secret-value";
        let e = load_err(&[("NARUTALK_SECRET_KEY", short)]);
        assert_eq!(e.setting, "NARUTALK_SECRET_KEY");
        assert_eq!(
            e.to_string(),
            "invalid setting NARUTALK_SECRET_KEY: must be at least 32 bytes, got 18"
        );
        assert!(!format!("{e} {e:?}").contains(short));

        let (_dir, r) = load_toml(&format!("secret_key = [\"{SECRET_A}\"]"));
        let e = r.unwrap_err();
        assert_eq!(e.setting, "NARUTALK_SECRET_KEY");
        assert!(!format!("{e} {e:?}").contains(SECRET_A));

        let (_dir, r) = load_toml(&format!("ai_api_key = \"{SECRET_B}\nlog = 1"));
        let e = r.unwrap_err();
        assert!(!format!("{e} {e:?}").contains(SECRET_B), "{e}");
        let (_dir, r) = load_toml(&format!("ai_api_key = {SECRET_B}"));
        let e = r.unwrap_err();
        assert!(!format!("{e} {e:?}").contains(SECRET_B), "{e}");
    }

    #[test]
    fn every_error_is_one_line() {
        let e = load_err(&[("NARUTALK_LOG_FORMAT", "a\nb")]);
        assert!(!e.to_string().contains('\n'));
        let e = load_err(&[("NARUTALK_BIND", "a\r\nb")]);
        assert!(!e.to_string().contains(['\n', '\r']));
    }

    #[test]
    fn validate_checks_a_config_built_by_hand() {
        let bad = |c: Config| c.validate().unwrap_err().setting;
        let d = Config::default;
        let c = Config {
            content_max_chars: 0,
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_CONTENT_MAX_CHARS");
        let c = Config {
            cors_origins: vec![" http://localhost:3000".to_owned()],
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_CORS_ORIGINS");
        let c = Config {
            ai_temperature: f64::INFINITY,
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_AI_TEMPERATURE");
        let c = Config {
            secret_key: Some(Secret::new("x")),
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_SECRET_KEY");
        let c = Config {
            ws_ping_seconds: 0,
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_WS_PING_SECONDS");
    }

    #[test]
    fn for_tests_gives_throttles_zero_and_a_random_secret() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::for_tests(dir.path());
        assert_eq!(c.auth_throttle_per_minute, 0);
        assert_eq!(c.message_throttle_per_minute, 0);
        assert_eq!(c.search_url, "");
        assert_eq!(c.database, dir.path().join("db.sqlite3"));
        let secret = c.secret_key.clone().unwrap();
        assert_eq!(secret.expose().len(), 64);
        assert!(secret.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(Config::for_tests(dir.path()).secret_key, c.secret_key);
        assert_eq!(
            Config {
                database: Config::default().database,
                secret_key: None,
                auth_throttle_per_minute: 10,
                message_throttle_per_minute: 30,
                search_url: Config::default().search_url,
                ..c.clone()
            },
            Config::default()
        );
        c.validate().unwrap();
    }

    #[test]
    fn signing_secret_generates_a_private_128_hex_file_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data").join("secret.key");
        let c = Config::default();
        let first = c.signing_secret(&file, true).unwrap();
        assert_eq!(first.expose().len(), 128);
        assert!(first.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fs::read_to_string(&file).unwrap(), first.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = c.signing_secret(&file, true).unwrap();
        assert_eq!(second, first);
        assert_eq!(c.signing_secret(&file, false).unwrap(), first);
        let names: Vec<_> = fs::read_dir(dir.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret.key")]);
    }

    #[test]
    fn signing_secret_refuses_to_create_when_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.key");
        let e = Config::default().signing_secret(&file, false).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_SECRET_KEY");
        assert!(!file.exists());
    }

    #[test]
    fn signing_secret_prefers_the_configured_secret_and_rejects_a_short_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.key");
        let c = Config {
            secret_key: Some(Secret::new(SECRET_A)),
            ..Config::default()
        };
        assert_eq!(c.signing_secret(&file, true).unwrap().expose(), SECRET_A);
        assert!(!file.exists());
        let c = Config {
            secret_key: Some(Secret::new("0123456789abcdef0123456789abcde")),
            ..Config::default()
        };
        let e = c.signing_secret(&file, true).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_SECRET_KEY");
        assert!(!e.to_string().contains("0123456789abcdef"));
        assert!(!file.exists());
    }

    #[test]
    fn signing_secret_reads_a_file_without_its_trailing_newline_and_rejects_a_short_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.key");
        fs::write(&file, format!("{SECRET_A}\n")).unwrap();
        assert_eq!(
            Config::default()
                .signing_secret(&file, true)
                .unwrap()
                .expose(),
            SECRET_A
        );
        fs::write(&file, "too-short\n").unwrap();
        let e = Config::default().signing_secret(&file, true).unwrap_err();
        assert_eq!(e.setting, "NARUTALK_SECRET_KEY");
        assert!(e.message.contains(&file.display().to_string()), "{e}");
        assert!(!e.to_string().contains("too-short"));
        assert_eq!(fs::read_to_string(&file).unwrap(), "too-short\n");
    }

    #[test]
    fn two_starts_at_once_agree_on_one_generated_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data").join("secret.key");
        let secrets: Vec<Secret> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Config::default().signing_secret(&file, true).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|s| *s == secrets[0]));
        assert_eq!(fs::read_to_string(&file).unwrap(), secrets[0].expose());
        assert_eq!(fs::read_dir(dir.path().join("data")).unwrap().count(), 1);
    }
}
