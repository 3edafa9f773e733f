//! Narutalk's settings: the layered loader every binary shares, and the core's own
//! settings ([`Config`]: storage, tokens, the AI, content limits).
//!
//! Priority, lowest to highest:
//!
//! 1. the built-in defaults ([`Config::default`]);
//! 2. a TOML file, named by the `--config FILE` flag or else by
//!    `NARUTALK_CONFIG`, or else [`DEFAULT_CONFIG_FILE`] when it exists (an
//!    empty `NARUTALK_CONFIG` means no file at all); its top-level keys are
//!    the variable names without the `NARUTALK_` prefix, lower-cased
//!    (`database`, `ai_backend`, ...);
//! 3. `NARUTALK_*` environment variables;
//! 4. the flags `--database` and `--config` ([`Overrides`]), and the front
//!    end's own (the server's `--bind`).
//!
//! Each layer's values are parsed as they are applied, and the result is
//! validated once ([`Config::validate`]). A bad setting becomes a
//! [`ConfigError`] whose one-line message names the environment variable of
//! the setting (also when the value came from the file or a flag). The values
//! of `NARUTALK_SECRET_KEY` and `NARUTALK_AI_API_KEY` are never echoed.
//!
//! # Settings by owner
//!
//! Each setting belongs to the crate that reads it. The core's are the rows of
//! a table of [`Setting`]s over [`Config`]; `narutalk-server` declares its own
//! (listen address, CORS, proxies, throttles, body limit, search, sockets,
//! logging, connection caps, metrics) the same way over its own settings type,
//! which holds a [`Config`] too. Both read one [`Layers`]: the settings file
//! and the environment, read and checked once, then applied to each owner's
//! table in the same order (the file's values, then the environment's, then
//! the flags), with the same value readers ([`Value`]), so the precedence and
//! every message are one code whoever owns the setting.
//!
//! One settings file serves both binaries, so an unknown key is judged against
//! both: a key is known when the core reads it or when it is one of
//! [`SERVER_KEYS`], the names (only the names) of the server's settings. The
//! core keeps that list, rather than taking the server's table as a
//! parameter, because the command line and embedders load the shared file
//! without depending on the server: they accept the server's keys and never
//! read them. The server's unit tests keep the list equal to the keys it reads.
//!
//! The signing secret is the configured `NARUTALK_SECRET_KEY` or, without
//! one, 64 random bytes, hex-encoded, kept in [`SECRET_FILE`]
//! ([`Config::signing_secret`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::files::{sync_dir, write_private};

/// The default `openai` system prompt. `{category}` is replaced by the
/// session's category (medical, general, emergency or consultation).
pub const DEFAULT_AI_SYSTEM_PROMPT: &str = "You are Narutalk, a careful medical question-answering assistant for hospital staff and patients. This conversation's category is {category}. Be accurate and cautious: say clearly when you are unsure, and never invent facts, figures, drug doses or references. You do not make diagnoses or treatment decisions; recommend that a qualified clinician make them. If a message describes a possible emergency, tell the person to contact emergency services or go to the nearest emergency department immediately.";

/// Where the generated secret lives, relative to the working directory
/// (`data/secret.key`).
pub const SECRET_FILE: &str = "data/secret.key";

/// The settings file read when neither `--config` nor `NARUTALK_CONFIG` names
/// one, if it exists (the Debian package installs it).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/narutalk/narutalk.toml";

/// The TOML keys of the settings only `narutalk-server` reads. The shared
/// settings file may hold them; [`Config::load`] accepts them there without
/// reading them (see the module's documentation).
pub const SERVER_KEYS: [&str; 14] = [
    "bind",
    "cors_origins",
    "trusted_proxies",
    "max_connections_per_ip",
    "auth_throttle_per_minute",
    "message_throttle_per_minute",
    "body_limit_bytes",
    "search_url",
    "search_timeout_seconds",
    "ws_ping_seconds",
    "ws_idle_seconds",
    "log",
    "log_format",
    "metrics_bind",
];

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

/// The core's settings: storage, tokens, the AI and content limits. `Default`
/// gives the built-in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `NARUTALK_DATABASE`, default `data/databases/db.sqlite3`: the SQLite file, or a
    /// PostgreSQL URL (`postgres://user:password@host:port/dbname`, also `postgresql://`)
    /// for several servers on one database ([`Config::is_postgres`]).
    pub database: PathBuf,
    /// `NARUTALK_DATABASE_POOL`, default 16: the most pooled connections to PostgreSQL
    /// one process opens, at least 1 (not used with SQLite).
    pub database_pool: u32,
    /// `NARUTALK_SQLITE_SYNCHRONOUS`, default `full`: SQLite's `PRAGMA synchronous`.
    pub sqlite_synchronous: Synchronous,
    /// `NARUTALK_SECRET_KEY`, default none (use or generate [`SECRET_FILE`]):
    /// the signing key, at least 32 bytes.
    pub secret_key: Option<Secret>,
    /// `NARUTALK_ACCESS_TOKEN_MINUTES`, default 60: access token lifetime, at least 1.
    pub access_token_minutes: u32,
    /// `NARUTALK_REFRESH_TOKEN_DAYS`, default 7: refresh token lifetime, at least 1.
    pub refresh_token_days: u32,
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
    /// `NARUTALK_OUTBOX_RETENTION_DAYS`, default [`DEFAULT_OUTBOX_RETENTION_DAYS`] (7): how
    /// long the outbox keeps its record of each change, at least 1.
    pub outbox_retention_days: u32,
}

/// Days the outbox keeps its rows by default (`NARUTALK_OUTBOX_RETENTION_DAYS`).
pub const DEFAULT_OUTBOX_RETENTION_DAYS: u32 = 7;

impl Default for Config {
    fn default() -> Self {
        Config {
            database: PathBuf::from("data/databases/db.sqlite3"),
            database_pool: crate::store::postgres::DEFAULT_POOL,
            sqlite_synchronous: Synchronous::Full,
            secret_key: None,
            access_token_minutes: 60,
            refresh_token_days: 7,
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
            outbox_retention_days: DEFAULT_OUTBOX_RETENTION_DAYS,
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

/// The command-line flags of the core's settings that override everything
/// else; all optional. A front end adds its own (the server's `--bind`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
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
    /// An error about `setting` (its environment variable's name); line breaks
    /// in `message` become spaces, so that the error stays one line.
    pub fn new(setting: &str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        ConfigError {
            setting: setting.to_owned(),
            message: message.replace(['\n', '\r'], " "),
        }
    }
}

/// One setting of the settings `T` that own it: its TOML key, its
/// environment variable, and how a value is read into `T`. Each owner keeps
/// a table of them (the core's over [`Config`]) and hands it to
/// [`Layers::apply`].
pub struct Setting<T> {
    /// The TOML key: the variable's name without `NARUTALK_`, lower-cased.
    pub key: &'static str,
    /// The environment variable, which every error about the setting names.
    pub env: &'static str,
    /// Reads `value` and stores it in its field of `T`; an error names the
    /// setting (the [`Value`] readers word it).
    pub apply: fn(&mut T, Value<'_>) -> Result<(), ConfigError>,
}

impl<T> fmt::Debug for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setting")
            .field("key", &self.key)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl<T> Setting<T> {
    /// A row of a settings table.
    pub const fn new(
        key: &'static str,
        env: &'static str,
        apply: fn(&mut T, Value<'_>) -> Result<(), ConfigError>,
    ) -> Self {
        Setting { key, env, apply }
    }

    /// Applies a command-line flag's value, such as `--bind`'s, to `target`;
    /// an error names the setting and the flag.
    pub fn apply_flag(&self, target: &mut T, flag: &str, text: &str) -> Result<(), ConfigError> {
        (self.apply)(target, self.value(Origin::Flag(flag), Raw::Text(text)))
    }

    fn value<'a>(&self, origin: Origin<'a>, raw: Raw<'a>) -> Value<'a> {
        Value {
            key: self.key,
            env: self.env,
            origin,
            raw,
        }
    }
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

/// One setting's value as one layer gave it (a file's TOML value, or the
/// text of a variable or a flag). Its readers parse it with the rules every
/// setting shares and word the error: it names the setting's variable and,
/// for a value from the file or a flag, the file or the flag. Its `Debug`
/// names the setting only, never the value.
#[derive(Clone, Copy)]
pub struct Value<'a> {
    key: &'static str,
    env: &'static str,
    origin: Origin<'a>,
    raw: Raw<'a>,
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Value<'_> {
    /// An error about this value: `message`, after the file's path or the
    /// flag it came from.
    pub fn error(&self, message: impl fmt::Display) -> ConfigError {
        let message = match self.origin {
            Origin::Env => message.to_string(),
            Origin::Toml(path) => format!("{}: {message}", path.display()),
            Origin::Flag(flag) => format!("{flag}: {message}"),
        };
        ConfigError::new(self.env, message)
    }

    /// A string, trimmed. The file must give a TOML string.
    pub fn text(&self) -> Result<String, ConfigError> {
        self.string(true)
    }

    /// A whole number: digits only (trimmed) in text, a TOML integer in the
    /// file, and one that fits in `T`. `min` only shapes the message: the
    /// owner's validation enforces it ([`check_min`]), whatever layer gave
    /// the value.
    pub fn whole<T: TryFrom<u64>>(&self, min: u64) -> Result<T, ConfigError> {
        let rule = whole_rule(min);
        let value: u64 = match self.raw {
            Raw::Text(s) => {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.error(format!("must be {rule}, got {s:?}")));
                }
                s.parse()
                    .map_err(|_| self.error(format!("{s:?} is too large")))?
            }
            Raw::Toml(toml::Value::Integer(i)) => {
                u64::try_from(*i).map_err(|_| self.error(format!("must be {rule}, got {i}")))?
            }
            Raw::Toml(other) => return Err(self.wrong_type("an integer", other)),
        };
        T::try_from(value).map_err(|_| self.error(format!("{value} is too large")))
    }

    /// One of `choices` (name, value), its name matched case-insensitively.
    pub fn choice<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let s = self.text()?;
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
        Err(self.error(format!("must be {expected}, got {s:?}")))
    }

    /// A list: a comma-separated string or a TOML array of strings; items
    /// trimmed, empty items dropped.
    pub fn list(&self) -> Result<Vec<String>, ConfigError> {
        fn split(s: &str) -> impl Iterator<Item = String> + '_ {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        }
        match self.raw {
            Raw::Text(s) => Ok(split(s).collect()),
            Raw::Toml(toml::Value::String(s)) => Ok(split(s).collect()),
            Raw::Toml(toml::Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) if s.trim().is_empty() => {}
                        toml::Value::String(s) => out.push(s.trim().to_owned()),
                        other => {
                            return Err(self.error(format!(
                                "key {:?} must be an array of strings, got an array holding {}",
                                self.key,
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

    fn wrong_type(&self, expected: &str, got: &toml::Value) -> ConfigError {
        self.error(format!(
            "key {:?} must be {expected}, got {}",
            self.key,
            toml_type(got)
        ))
    }

    /// A string, trimmed or as given.
    fn string(&self, trim: bool) -> Result<String, ConfigError> {
        let s = match self.raw {
            Raw::Text(s) => s,
            Raw::Toml(toml::Value::String(s)) => s.as_str(),
            Raw::Toml(other) => return Err(self.wrong_type("a string", other)),
        };
        Ok(if trim { s.trim() } else { s }.to_owned())
    }

    /// A string that must not be empty once trimmed.
    fn non_empty_text(&self) -> Result<String, ConfigError> {
        let s = self.text()?;
        if s.is_empty() {
            return Err(self.error("must not be empty"));
        }
        Ok(s)
    }

    /// A secret: as given, empty = none; never echoed.
    fn secret(&self) -> Result<Option<Secret>, ConfigError> {
        let s = self.string(false)?;
        Ok(if s.is_empty() { None } else { Some(Secret(s)) })
    }

    /// A floating-point number (range checked by validation).
    fn float(&self) -> Result<f64, ConfigError> {
        match self.raw {
            Raw::Text(s) => {
                let s = s.trim();
                s.parse::<f64>()
                    .map_err(|_| self.error(format!("must be a number from 0.0 to 2.0, got {s:?}")))
            }
            Raw::Toml(toml::Value::Float(f)) => Ok(*f),
            // Integers this small convert exactly; larger ones fail validation anyway.
            #[allow(clippy::cast_precision_loss)]
            Raw::Toml(toml::Value::Integer(i)) => Ok(*i as f64),
            Raw::Toml(other) => Err(self.wrong_type("a number", other)),
        }
    }
}

/// The core's settings, in the order their variables are applied.
const SETTINGS: [Setting<Config>; 18] = [
    Setting::new("database", "NARUTALK_DATABASE", |config, value| {
        config.database = PathBuf::from(value.non_empty_text()?);
        Ok(())
    }),
    Setting::new(
        "database_pool",
        "NARUTALK_DATABASE_POOL",
        |config, value| {
            config.database_pool = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "sqlite_synchronous",
        "NARUTALK_SQLITE_SYNCHRONOUS",
        |config, value| {
            config.sqlite_synchronous =
                value.choice(&[("full", Synchronous::Full), ("normal", Synchronous::Normal)])?;
            Ok(())
        },
    ),
    Setting::new("secret_key", SECRET_VAR, |config, value| {
        config.secret_key = value.secret()?;
        Ok(())
    }),
    Setting::new(
        "access_token_minutes",
        "NARUTALK_ACCESS_TOKEN_MINUTES",
        |config, value| {
            config.access_token_minutes = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "refresh_token_days",
        "NARUTALK_REFRESH_TOKEN_DAYS",
        |config, value| {
            config.refresh_token_days = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "content_max_chars",
        "NARUTALK_CONTENT_MAX_CHARS",
        |config, value| {
            config.content_max_chars = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new("ai_backend", "NARUTALK_AI_BACKEND", |config, value| {
        config.ai_backend = value.choice(&[
            ("template", AiBackend::Template),
            ("http", AiBackend::Http),
            ("openai", AiBackend::Openai),
        ])?;
        Ok(())
    }),
    Setting::new("ai_url", "NARUTALK_AI_URL", |config, value| {
        config.ai_url = value.text()?;
        Ok(())
    }),
    Setting::new("ai_model", "NARUTALK_AI_MODEL", |config, value| {
        config.ai_model = value.text()?;
        Ok(())
    }),
    Setting::new("ai_api_key", "NARUTALK_AI_API_KEY", |config, value| {
        config.ai_api_key = value.secret()?;
        Ok(())
    }),
    Setting::new(
        "ai_system_prompt",
        "NARUTALK_AI_SYSTEM_PROMPT",
        |config, value| {
            config.ai_system_prompt = value.text()?;
            Ok(())
        },
    ),
    Setting::new(
        "ai_history_messages",
        "NARUTALK_AI_HISTORY_MESSAGES",
        |config, value| {
            config.ai_history_messages = value.whole(0)?;
            Ok(())
        },
    ),
    Setting::new(
        "ai_temperature",
        "NARUTALK_AI_TEMPERATURE",
        |config, value| {
            config.ai_temperature = value.float()?;
            Ok(())
        },
    ),
    Setting::new(
        "ai_max_tokens",
        "NARUTALK_AI_MAX_TOKENS",
        |config, value| {
            config.ai_max_tokens = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "ai_timeout_seconds",
        "NARUTALK_AI_TIMEOUT_SECONDS",
        |config, value| {
            config.ai_timeout_seconds = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "ai_concurrency",
        "NARUTALK_AI_CONCURRENCY",
        |config, value| {
            config.ai_concurrency = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "outbox_retention_days",
        "NARUTALK_OUTBOX_RETENTION_DAYS",
        |config, value| {
            config.outbox_retention_days = value.whole(1)?;
            Ok(())
        },
    ),
];

/// The layers a load reads, read once and shared by every owner of settings:
/// the TOML file's top-level table (each key checked to be a known setting)
/// and the `NARUTALK_*` environment variables. [`Config::from_layers`] reads
/// the core's settings from it, `narutalk-server` its own. Its `Debug` shows
/// the file and the names it holds, never a value (secrets are among them).
#[derive(Clone)]
pub struct Layers {
    file: SettingsFile,
    table: toml::Table,
    env: BTreeMap<String, String>,
}

impl fmt::Debug for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layers")
            .field("file", &self.file)
            .field("keys", &self.table.keys().collect::<Vec<_>>())
            .field("variables", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Layers {
    /// Reads the process environment and the settings file: the one
    /// `overrides.config` or `NARUTALK_CONFIG` names, or else
    /// [`DEFAULT_CONFIG_FILE`] when it exists. A setting's variable (or
    /// `NARUTALK_CONFIG`) that is not valid UTF-8 is an error.
    pub fn read(overrides: &Overrides) -> Result<Layers, ConfigError> {
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
                Err(_) if name == CONFIG_VAR || is_setting_variable(&name) => {
                    return Err(ConfigError::new(&name, "is not valid UTF-8"));
                }
                Err(_) => {}
            }
        }
        Self::read_from(env, overrides, Some(Path::new(DEFAULT_CONFIG_FILE)))
    }

    /// The same with an explicit environment (testable): only variables
    /// starting with `NARUTALK_` are kept; unknown `NARUTALK_*` names are
    /// ignored (other tools may share the prefix). `default_file` is read
    /// when it exists and neither `overrides.config` nor `NARUTALK_CONFIG`
    /// names a file; an empty `NARUTALK_CONFIG` means no file at all. A
    /// default file that exists but cannot be read is an error naming
    /// `NARUTALK_CONFIG`, never skipped; so is a key of the file that neither
    /// the core nor the server knows.
    pub fn read_from<I: IntoIterator<Item = (String, String)>>(
        env: I,
        overrides: &Overrides,
        default_file: Option<&Path>,
    ) -> Result<Layers, ConfigError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(PREFIX))
            .collect();
        let file = match (&overrides.config, env.get(CONFIG_VAR).map(|v| v.trim())) {
            (Some(path), _) => SettingsFile::Named(path.clone()),
            (None, Some("")) => SettingsFile::None,
            (None, Some(named)) => SettingsFile::Named(PathBuf::from(named)),
            (None, None) => match default_file {
                Some(path) if default_file_exists(path)? => SettingsFile::Default(path.to_owned()),
                _ => SettingsFile::None,
            },
        };
        let table = match file.path() {
            Some(path) => read_toml_file(path)?,
            None => toml::Table::new(),
        };
        Ok(Layers { file, table, env })
    }

    /// The settings file these layers read.
    pub fn file(&self) -> &SettingsFile {
        &self.file
    }

    /// Applies to `target` the values these layers hold for `settings`: the
    /// file's first (in the file's order), then the environment's (in the
    /// order of `settings`), so that a variable overrides the file. The
    /// first bad value is the error. Flags come after, from their owner
    /// ([`Setting::apply_flag`]), and validation after them.
    pub fn apply<T>(&self, target: &mut T, settings: &[Setting<T>]) -> Result<(), ConfigError> {
        if let Some(path) = self.file.path() {
            for (name, value) in &self.table {
                if let Some(setting) = settings.iter().find(|setting| setting.key == name) {
                    (setting.apply)(target, setting.value(Origin::Toml(path), Raw::Toml(value)))?;
                }
            }
        }
        for setting in settings {
            if let Some(text) = self.env.get(setting.env) {
                (setting.apply)(target, setting.value(Origin::Env, Raw::Text(text)))?;
            }
        }
        Ok(())
    }
}

/// Fails, naming `setting` (its variable), unless `value >= min`, with the
/// words of [`Value::whole`]: `must be a whole number of at least 1, got "0"`.
pub fn check_min(setting: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value >= min {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("must be {}, got \"{value}\"", whole_rule(min)),
        ))
    }
}

/// Whether `s` is `http://` or `https://` (in any case) followed by a host
/// and no whitespace or control character: the rule of the URLs of the AI
/// and search services.
pub fn is_http_url(s: &str) -> bool {
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

/// Whether `name` is the variable of a setting the core or the server reads.
fn is_setting_variable(name: &str) -> bool {
    SETTINGS.iter().any(|setting| setting.env == name)
        || SERVER_KEYS
            .iter()
            .any(|key| name == format!("{PREFIX}{}", key.to_ascii_uppercase()))
}

/// Whether `name` is a key the settings file may hold.
fn is_known_key(name: &str) -> bool {
    SETTINGS.iter().any(|setting| setting.key == name) || SERVER_KEYS.contains(&name)
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

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
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

/// Reads the TOML file's top-level table; every key must be a known setting.
fn read_toml_file(path: &Path) -> Result<toml::Table, ConfigError> {
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
    if let Some(unknown) = table.keys().find(|name| !is_known_key(name)) {
        return Err(file_err(format!("unknown key {unknown:?}")));
    }
    Ok(table)
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

impl Config {
    /// Layers defaults < TOML file < `NARUTALK_*` from the process
    /// environment < flags, then validates once. The file is the one
    /// `--config` or `NARUTALK_CONFIG` names, or else [`DEFAULT_CONFIG_FILE`]
    /// when it exists; it may hold the server's settings too
    /// ([`SERVER_KEYS`]), which are accepted and not read.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_reporting(overrides).map(|(config, _)| config)
    }

    /// [`Config::load`], also telling which settings file was read.
    pub fn load_reporting(overrides: &Overrides) -> Result<(Config, SettingsFile), ConfigError> {
        let layers = Layers::read(overrides)?;
        let config = Config::from_layers(&layers, overrides)?;
        Ok((config, layers.file))
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
    /// file was read (see [`Layers::read_from`]). [`Config::load`] passes
    /// [`DEFAULT_CONFIG_FILE`].
    pub fn load_from_with_default<I: IntoIterator<Item = (String, String)>>(
        env: I,
        overrides: &Overrides,
        default_file: Option<&Path>,
    ) -> Result<(Config, SettingsFile), ConfigError> {
        let layers = Layers::read_from(env, overrides, default_file)?;
        let config = Config::from_layers(&layers, overrides)?;
        Ok((config, layers.file))
    }

    /// The core's settings from `layers`: the defaults, the file's values and
    /// the environment's, then `overrides.database`, validated once. (The
    /// layers have already taken `overrides.config`.)
    pub fn from_layers(layers: &Layers, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        layers.apply(&mut config, &SETTINGS)?;
        if let Some(database) = &overrides.database {
            config.database = database.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every cross-field and range rule (also used after `load`);
    /// the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |setting: &str, message: String| Err(ConfigError::new(setting, message));

        if self.database.as_os_str().is_empty() {
            return err("NARUTALK_DATABASE", "must not be empty".to_owned());
        }
        if let Some(secret) = &self.secret_key {
            check_secret_len(secret, "")?;
        }
        check_min("NARUTALK_DATABASE_POOL", self.database_pool.into(), 1)?;
        if self.is_postgres() && self.secret_key.is_none() {
            return err(
                SECRET_VAR,
                "required with a PostgreSQL database: every server must sign with the same key"
                    .to_owned(),
            );
        }
        check_min(
            "NARUTALK_ACCESS_TOKEN_MINUTES",
            self.access_token_minutes.into(),
            1,
        )?;
        check_min(
            "NARUTALK_REFRESH_TOKEN_DAYS",
            self.refresh_token_days.into(),
            1,
        )?;
        check_min(
            "NARUTALK_CONTENT_MAX_CHARS",
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
                    "NARUTALK_AI_URL",
                    format!("required when NARUTALK_AI_BACKEND is {backend}"),
                );
            }
            if !is_http_url(&self.ai_url) {
                return err(
                    "NARUTALK_AI_URL",
                    format!("must start with http:// or https://, got {:?}", self.ai_url),
                );
            }
        }
        if self.ai_backend == AiBackend::Openai && self.ai_model.trim().is_empty() {
            return err(
                "NARUTALK_AI_MODEL",
                "required when NARUTALK_AI_BACKEND is openai".to_owned(),
            );
        }
        if self.ai_system_prompt.trim().is_empty() {
            return err("NARUTALK_AI_SYSTEM_PROMPT", "must not be empty".to_owned());
        }
        if !(self.ai_temperature.is_finite() && (0.0..=2.0).contains(&self.ai_temperature)) {
            return err(
                "NARUTALK_AI_TEMPERATURE",
                format!(
                    "must be a number from 0.0 to 2.0, got \"{}\"",
                    self.ai_temperature
                ),
            );
        }
        check_min("NARUTALK_AI_MAX_TOKENS", self.ai_max_tokens.into(), 1)?;
        check_min(
            "NARUTALK_AI_TIMEOUT_SECONDS",
            self.ai_timeout_seconds.into(),
            1,
        )?;
        check_min("NARUTALK_AI_CONCURRENCY", self.ai_concurrency.into(), 1)?;
        check_min(
            "NARUTALK_OUTBOX_RETENTION_DAYS",
            self.outbox_retention_days.into(),
            1,
        )?;
        Ok(())
    }

    /// Whether `database` is a PostgreSQL URL rather than a SQLite file.
    pub fn is_postgres(&self) -> bool {
        self.database
            .to_str()
            .is_some_and(crate::store::postgres::is_postgres_url)
    }

    /// `database` as it may be shown in a log line or a tool's output: the SQLite path, or
    /// the PostgreSQL URL without its password.
    pub fn database_shown(&self) -> String {
        if self.is_postgres() {
            crate::store::postgres::redacted(&self.database.to_string_lossy())
        } else {
            self.database.display().to_string()
        }
    }

    /// A config for tests and benches: database `dir/db.sqlite3`, a random
    /// 64-hex-char secret, everything else default.
    pub fn for_tests(dir: &Path) -> Config {
        let secret = random_bytes(32).map_or_else(|_| fallback_random_hex(), |b| hex(&b));
        Config {
            database: dir.join("db.sqlite3"),
            secret_key: Some(Secret(secret)),
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
        assert_eq!(c.database, PathBuf::from("data/databases/db.sqlite3"));
        assert_eq!(c.sqlite_synchronous, Synchronous::Full);
        assert_eq!(c.secret_key, None);
        assert_eq!(c.access_token_minutes, 60);
        assert_eq!(c.refresh_token_days, 7);
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
        for setting in &SETTINGS {
            assert_eq!(
                format!("NARUTALK_{}", setting.key.to_uppercase()),
                setting.env
            );
        }
    }

    #[test]
    fn the_core_and_the_server_never_claim_the_same_key() {
        for key in SERVER_KEYS {
            assert!(
                SETTINGS.iter().all(|setting| setting.key != key),
                "{key} is the core's"
            );
            assert!(is_known_key(key));
            assert!(is_setting_variable(&format!(
                "NARUTALK_{}",
                key.to_uppercase()
            )));
        }
        assert_eq!(SETTINGS.len() + SERVER_KEYS.len(), 32);
        assert!(!is_known_key("config"));
        assert!(!is_setting_variable("NARUTALK_CONFIG"));
        assert!(!is_setting_variable("NARUTALK_bind"));
    }

    #[test]
    fn synchronous_gives_the_pragma_value() {
        assert_eq!(Synchronous::Full.as_pragma(), "FULL");
        assert_eq!(Synchronous::Normal.as_pragma(), "NORMAL");
    }

    #[test]
    fn a_toml_file_named_by_narutalk_config_overrides_every_default() {
        // The shared file as the server reads it: the core takes its own keys and
        // accepts the server's without reading them.
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(
            dir.path(),
            &format!(
                r#"
bind = "0.0.0.0:9000"
database = "/var/lib/narutalk/db.sqlite3"
database_pool = 4
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
outbox_retention_days = 30
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
            database: PathBuf::from("/var/lib/narutalk/db.sqlite3"),
            database_pool: 4,
            sqlite_synchronous: Synchronous::Normal,
            secret_key: Some(Secret::new(SECRET_A)),
            access_token_minutes: 15,
            refresh_token_days: 30,
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
            outbox_retention_days: 30,
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn the_server_settings_are_accepted_and_never_read_nor_checked() {
        // The command line shares the server's file and environment: a server value,
        // even one the server refuses, is none of its business.
        let (_dir, r) = load_toml("bind = \"nowhere\"\nlog_format = 3\ncors_origins = \"*\"\n");
        assert_eq!(r.unwrap(), Config::default());
        let c = load_env(&[
            ("NARUTALK_BIND", "nowhere"),
            ("NARUTALK_WS_IDLE_SECONDS", "0"),
        ])
        .unwrap();
        assert_eq!(c, Config::default());
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
        let default = write_toml(
            dir.path(),
            "access_token_minutes = 5\nrefresh_token_days = 3\ndatabase = \"/srv/file.sqlite3\"\n",
        );
        let overrides = Overrides {
            database: Some(PathBuf::from("/srv/flag.sqlite3")),
            ..Overrides::default()
        };
        let (c, _) = load_with_default(
            &[
                ("NARUTALK_ACCESS_TOKEN_MINUTES", "9"),
                ("NARUTALK_DATABASE", "/srv/env.sqlite3"),
            ],
            &overrides,
            &default,
        )
        .unwrap();
        assert_eq!(c.access_token_minutes, 9);
        assert_eq!(c.refresh_token_days, 3);
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
        let default = write_toml(dir.path(), "sqlite_synchronous = \"sometimes\"\n");
        let e = load_with_default(&[], &Overrides::default(), &default).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid setting NARUTALK_SQLITE_SYNCHRONOUS: {}: must be \"full\" or \"normal\", got \"sometimes\"",
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

    /// The packaged file's `key = value` lines whose key is a setting of the core or the
    /// server, as (key, line without the comment mark, commented out).
    fn packaged_settings() -> Vec<(String, String, bool)> {
        PACKAGED_FILE
            .lines()
            .filter_map(|line| {
                let (commented, rest) = match line.strip_prefix("# ") {
                    Some(rest) => (true, rest),
                    None => (false, line),
                };
                let (key, _) = rest.split_once(" = ")?;
                is_known_key(key).then(|| (key.to_owned(), rest.to_owned(), commented))
            })
            .collect()
    }

    #[test]
    fn the_packaged_file_lists_every_setting_once() {
        let listed = packaged_settings();
        let keys = SETTINGS
            .iter()
            .map(|setting| setting.key)
            .chain(SERVER_KEYS);
        for key in keys {
            let count = listed.iter().filter(|(listed, _, _)| listed == key).count();
            assert_eq!(count, 1, "{key} is listed {count} times in narutalk.toml");
        }
        assert_eq!(listed.len(), SETTINGS.len() + SERVER_KEYS.len());
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

        // Every commented value, uncommented, is the built-in default (the server's
        // settings test checks its own the same way).
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
        let path = write_toml(
            dir.path(),
            "access_token_minutes = 5\nai_model = \"from-file\"\n",
        );
        let c = load_env(&[
            ("NARUTALK_CONFIG", path.to_str().unwrap()),
            ("NARUTALK_ACCESS_TOKEN_MINUTES", "9"),
        ])
        .unwrap();
        assert_eq!(c.access_token_minutes, 9);
        assert_eq!(c.ai_model, "from-file");
    }

    #[test]
    fn the_database_flag_overrides_the_environment() {
        let overrides = Overrides {
            database: Some(PathBuf::from("/srv/narutalk/flag.sqlite3")),
            config: None,
        };
        let c = Config::load_from(
            env(&[("NARUTALK_DATABASE", "/srv/narutalk/env.sqlite3")]),
            &overrides,
        )
        .unwrap();
        assert_eq!(c.database, PathBuf::from("/srv/narutalk/flag.sqlite3"));
    }

    #[test]
    fn a_postgresql_url_needs_the_shared_signing_key_and_is_shown_without_its_password() {
        let url = "postgres://app:s3cret@db.example:5432/narutalk";
        let error = Config::load_from(env(&[("NARUTALK_DATABASE", url)]), &Overrides::default())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting NARUTALK_SECRET_KEY: required with a PostgreSQL database: \
             every server must sign with the same key"
        );
        let c = Config::load_from(
            env(&[
                ("NARUTALK_DATABASE", url),
                ("NARUTALK_SECRET_KEY", SECRET_A),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.is_postgres());
        assert_eq!(
            c.database_shown(),
            "postgres://app@db.example:5432/narutalk"
        );
        assert!(!Config::default().is_postgres());
    }

    #[test]
    fn a_value_read_from_a_flag_names_the_flag() {
        let setting = &SETTINGS[2];
        let mut c = Config::default();
        assert_eq!(
            setting
                .apply_flag(&mut c, "--synchronous", "sometimes")
                .unwrap_err()
                .to_string(),
            "invalid setting NARUTALK_SQLITE_SYNCHRONOUS: --synchronous: must be \"full\" or \"normal\", got \"sometimes\""
        );
        setting
            .apply_flag(&mut c, "--synchronous", "normal")
            .unwrap();
        assert_eq!(c.sqlite_synchronous, Synchronous::Normal);
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
                "access_token_minutes = \"60\"",
                "NARUTALK_ACCESS_TOKEN_MINUTES",
                "must be an integer, got a string",
            ),
            (
                "content_max_chars = 1.5",
                "NARUTALK_CONTENT_MAX_CHARS",
                "must be an integer, got a float",
            ),
            (
                "ai_temperature = \"0.5\"",
                "NARUTALK_AI_TEMPERATURE",
                "must be a number, got a string",
            ),
            (
                "ai_backend = true",
                "NARUTALK_AI_BACKEND",
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
        let (_dir, r) = load_toml("ai_timeout_seconds = -5");
        let e = r.unwrap_err();
        assert_eq!(e.setting, "NARUTALK_AI_TIMEOUT_SECONDS");
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
    const NUMBERS: [(&str, u64); 10] = [
        ("NARUTALK_ACCESS_TOKEN_MINUTES", 1),
        ("NARUTALK_REFRESH_TOKEN_DAYS", 1),
        ("NARUTALK_CONTENT_MAX_CHARS", 1),
        ("NARUTALK_AI_HISTORY_MESSAGES", 0),
        ("NARUTALK_AI_MAX_TOKENS", 1),
        ("NARUTALK_AI_TIMEOUT_SECONDS", 1),
        ("NARUTALK_AI_CONCURRENCY", 1),
        ("NARUTALK_OUTBOX_RETENTION_DAYS", 1),
        ("NARUTALK_AI_TEMPERATURE", 0),
        ("NARUTALK_CONTENT_MAX_CHARS", 1),
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
        for var in [
            "NARUTALK_CONTENT_MAX_CHARS",
            "NARUTALK_ACCESS_TOKEN_MINUTES",
        ] {
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
    fn numbers_are_trimmed_and_parsed_fully() {
        let c = load_env(&[
            ("NARUTALK_ACCESS_TOKEN_MINUTES", " 15 "),
            ("NARUTALK_CONTENT_MAX_CHARS", "20000"),
            ("NARUTALK_AI_TEMPERATURE", "0.7"),
        ])
        .unwrap();
        assert_eq!(c.access_token_minutes, 15);
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
        ])
        .unwrap();
        assert_eq!(c.sqlite_synchronous, Synchronous::Normal);
        assert_eq!(c.ai_backend, AiBackend::Http);
        let c = load_env(&[("NARUTALK_SQLITE_SYNCHRONOUS", "FULL")]).unwrap();
        assert_eq!(c.sqlite_synchronous, Synchronous::Full);
        let (_dir, r) = load_toml("ai_backend = \"TEMPLATE\"");
        let c = r.unwrap();
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
        for var in ["NARUTALK_SQLITE_SYNCHRONOUS", "NARUTALK_AI_BACKEND"] {
            assert_eq!(load_err(&[(var, "")]).setting, var);
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
    fn ai_url_must_be_an_http_url() {
        for ok in [
            "http://127.0.0.1:5000/answer",
            "HTTPS://api.example.com/v1",
            "http://[::1]:11434/v1",
        ] {
            assert!(is_http_url(ok), "{ok}");
        }
        for bad in [
            "",
            "http://",
            "https:///v1",
            "ftp://x",
            "http://a b",
            "127.0.0.1:5000",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn empty_strings_that_must_not_be_empty_are_rejected() {
        for var in ["NARUTALK_DATABASE", "NARUTALK_AI_SYSTEM_PROMPT"] {
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
    fn debug_of_the_layers_shows_no_value() {
        let layers = Layers::read_from(
            env(&[("NARUTALK_SECRET_KEY", SECRET_A)]),
            &Overrides::default(),
            None,
        )
        .unwrap();
        let debug = format!("{layers:?}");
        assert!(debug.contains("NARUTALK_SECRET_KEY"), "{debug}");
        assert!(!debug.contains(SECRET_A), "{debug}");
        let value = SETTINGS[2].value(Origin::Env, Raw::Text(SECRET_A));
        assert!(!format!("{value:?} {:?}", SETTINGS[2]).contains(SECRET_A));
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
        let e = load_err(&[("NARUTALK_AI_BACKEND", "a\nb")]);
        assert!(!e.to_string().contains('\n'));
        let e = load_err(&[("NARUTALK_SQLITE_SYNCHRONOUS", "a\r\nb")]);
        assert!(!e.to_string().contains(['\n', '\r']));
        let e = ConfigError::new("NARUTALK_X", "one\ntwo\r");
        assert_eq!(e.to_string(), "invalid setting NARUTALK_X: one two ");
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
            ai_timeout_seconds: 0,
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_AI_TIMEOUT_SECONDS");
        assert_eq!(
            check_min("NARUTALK_X", 0, 1).unwrap_err().to_string(),
            "invalid setting NARUTALK_X: must be a whole number of at least 1, got \"0\""
        );
        assert!(check_min("NARUTALK_X", 0, 0).is_ok());
    }

    #[test]
    fn for_tests_gives_a_random_secret_and_a_database_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::for_tests(dir.path());
        assert_eq!(c.database, dir.path().join("db.sqlite3"));
        let secret = c.secret_key.clone().unwrap();
        assert_eq!(secret.expose().len(), 64);
        assert!(secret.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(Config::for_tests(dir.path()).secret_key, c.secret_key);
        assert_eq!(
            Config {
                database: Config::default().database,
                secret_key: None,
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
