//! The settings of a server process: the server's own (listen address, CORS, trusted
//! proxies, connection caps, throttles, body limit, search service, WebSocket heartbeat,
//! logging, metrics listener) and the core's [`Config`], which it holds.
//!
//! They are loaded by the core's one layered loader: [`Layers`] reads the settings file
//! and the `NARUTALK_*` environment once, [`Config::from_layers`] takes the core's
//! settings from it, and this module's table of [`Setting`]s takes the server's from the
//! same layers, with the same precedence (defaults < file < environment < flags) and the
//! same value readers, so every message reads as the core's do and names the setting's
//! variable. The server's only flag of its own is `--bind` ([`Overrides::bind`]). The
//! core checks the file's keys against its own and against
//! [`narutalk_core::config::SERVER_KEYS`], the names of the settings below, so that the
//! command line accepts them in the shared file; a unit test keeps that list equal to this
//! table.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use narutalk_core::config::{
    self, Config, ConfigError, Layers, Setting, SettingsFile, check_min, is_http_url,
};

/// Everything a server process reads. `Default` gives the built-in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `NARUTALK_BIND`, default `127.0.0.1:8000`: the listen address.
    pub bind: SocketAddr,
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
    /// served (`GET /metrics`), an address other than [`Settings::bind`]'s.
    pub metrics_bind: Option<SocketAddr>,
    /// The core's settings: storage, tokens, the AI, content limits.
    pub core: Config,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            cors_origins: vec!["http://localhost:3000".to_owned()],
            trusted_proxies: Vec::new(),
            max_connections_per_ip: 1000,
            auth_throttle_per_minute: 10,
            message_throttle_per_minute: 30,
            body_limit_bytes: 1_048_576,
            search_url: "http://localhost:8001/api/search/".to_owned(),
            search_timeout_seconds: 30,
            ws_ping_seconds: 30,
            ws_idle_seconds: 60,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            metrics_bind: None,
            core: Config::default(),
        }
    }
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

/// The command-line flags that override everything else; all optional.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--bind`: replaces `NARUTALK_BIND`.
    pub bind: Option<String>,
    /// `--database` and `--config`, the core's flags.
    pub core: config::Overrides,
}

/// The listen address, the one setting a flag (`--bind`) also gives.
const BIND: Setting<Settings> = Setting::new("bind", "NARUTALK_BIND", |settings, value| {
    let s = value.text()?;
    settings.bind = s
        .parse()
        .map_err(|_| value.error(format!("{s:?} is not an address like 127.0.0.1:8000")))?;
    Ok(())
});

/// The server's settings, in the order their variables are applied.
const SETTINGS: [Setting<Settings>; 14] = [
    BIND,
    Setting::new(
        "cors_origins",
        "NARUTALK_CORS_ORIGINS",
        |settings, value| {
            settings.cors_origins = value.list()?;
            Ok(())
        },
    ),
    Setting::new(
        "trusted_proxies",
        "NARUTALK_TRUSTED_PROXIES",
        |settings, value| {
            let mut proxies = Vec::new();
            for item in value.list()? {
                let ip = item.parse().map_err(|_| {
                    value.error(format!("{item:?} is not an IP address like 10.0.0.1"))
                })?;
                proxies.push(ip);
            }
            settings.trusted_proxies = proxies;
            Ok(())
        },
    ),
    Setting::new(
        "max_connections_per_ip",
        "NARUTALK_MAX_CONNECTIONS_PER_IP",
        |settings, value| {
            settings.max_connections_per_ip = value.whole(0)?;
            Ok(())
        },
    ),
    Setting::new(
        "auth_throttle_per_minute",
        "NARUTALK_AUTH_THROTTLE_PER_MINUTE",
        |settings, value| {
            settings.auth_throttle_per_minute = value.whole(0)?;
            Ok(())
        },
    ),
    Setting::new(
        "message_throttle_per_minute",
        "NARUTALK_MESSAGE_THROTTLE_PER_MINUTE",
        |settings, value| {
            settings.message_throttle_per_minute = value.whole(0)?;
            Ok(())
        },
    ),
    Setting::new(
        "body_limit_bytes",
        "NARUTALK_BODY_LIMIT_BYTES",
        |settings, value| {
            settings.body_limit_bytes = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new("search_url", "NARUTALK_SEARCH_URL", |settings, value| {
        settings.search_url = value.text()?;
        Ok(())
    }),
    Setting::new(
        "search_timeout_seconds",
        "NARUTALK_SEARCH_TIMEOUT_SECONDS",
        |settings, value| {
            settings.search_timeout_seconds = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "ws_ping_seconds",
        "NARUTALK_WS_PING_SECONDS",
        |settings, value| {
            settings.ws_ping_seconds = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new(
        "ws_idle_seconds",
        "NARUTALK_WS_IDLE_SECONDS",
        |settings, value| {
            settings.ws_idle_seconds = value.whole(1)?;
            Ok(())
        },
    ),
    Setting::new("log", "NARUTALK_LOG", |settings, value| {
        settings.log = value.text()?;
        Ok(())
    }),
    Setting::new("log_format", "NARUTALK_LOG_FORMAT", |settings, value| {
        settings.log_format =
            value.choice(&[("text", LogFormat::Text), ("json", LogFormat::Json)])?;
        Ok(())
    }),
    Setting::new(
        "metrics_bind",
        "NARUTALK_METRICS_BIND",
        |settings, value| {
            let s = value.text()?;
            settings.metrics_bind = if s.is_empty() {
                None
            } else {
                Some(s.parse().map_err(|_| {
                    value.error(format!(
                        "{s:?} is not an address like 127.0.0.1:9100 (empty = off)"
                    ))
                })?)
            };
            Ok(())
        },
    ),
];

impl Settings {
    /// Layers defaults < TOML file < `NARUTALK_*` from the process environment < flags,
    /// then validates once, and tells which settings file was read. The file is the one
    /// `--config` or `NARUTALK_CONFIG` names, or else
    /// [`narutalk_core::config::DEFAULT_CONFIG_FILE`] when it exists.
    pub fn load(overrides: &Overrides) -> Result<(Settings, SettingsFile), ConfigError> {
        let layers = Layers::read(&overrides.core)?;
        let settings = Settings::from_layers(&layers, overrides)?;
        Ok((settings, layers.file().clone()))
    }

    /// The same with an explicit environment (testable) and no default file (see
    /// [`Config::load_from`]).
    pub fn load_from<I: IntoIterator<Item = (String, String)>>(
        env: I,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        Self::load_from_with_default(env, overrides, None).map(|(settings, _)| settings)
    }

    /// [`Settings::load_from`] with a default settings file, also telling which file was
    /// read (see [`Layers::read_from`]).
    pub fn load_from_with_default<I: IntoIterator<Item = (String, String)>>(
        env: I,
        overrides: &Overrides,
        default_file: Option<&Path>,
    ) -> Result<(Settings, SettingsFile), ConfigError> {
        let layers = Layers::read_from(env, &overrides.core, default_file)?;
        let settings = Settings::from_layers(&layers, overrides)?;
        Ok((settings, layers.file().clone()))
    }

    /// The core's settings, then the server's, from the same `layers`: the defaults, the
    /// file's values and the environment's, then the flags, each part validated once.
    pub fn from_layers(layers: &Layers, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut settings = Settings {
            core: Config::from_layers(layers, &overrides.core)?,
            ..Settings::default()
        };
        layers.apply(&mut settings, &SETTINGS)?;
        if let Some(bind) = &overrides.bind {
            BIND.apply_flag(&mut settings, "--bind", bind)?;
        }
        settings.validate_own()?;
        Ok(settings)
    }

    /// Checks every cross-field and range rule, the core's included; the error names the
    /// setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.core.validate()?;
        self.validate_own()
    }

    /// Settings for tests and benches: the core's [`Config::for_tests`] (a database in
    /// `dir`, a random secret), both throttles 0 (off), `search_url` empty, everything
    /// else default.
    pub fn for_tests(dir: &Path) -> Settings {
        Settings {
            auth_throttle_per_minute: 0,
            message_throttle_per_minute: 0,
            search_url: String::new(),
            core: Config::for_tests(dir),
            ..Settings::default()
        }
    }

    /// The server's own rules.
    fn validate_own(&self) -> Result<(), ConfigError> {
        let err = |setting: &str, message: String| Err(ConfigError::new(setting, message));

        for origin in &self.cors_origins {
            if !is_origin(origin) {
                return err(
                    "NARUTALK_CORS_ORIGINS",
                    format!(
                        "{origin:?} is not an origin like http://localhost:3000 \
                         (http or https, lower-case host, optional port, no path or trailing slash)"
                    ),
                );
            }
        }
        check_min("NARUTALK_BODY_LIMIT_BYTES", self.body_limit_bytes, 1)?;
        if !self.search_url.is_empty() && !is_http_url(&self.search_url) {
            return err(
                "NARUTALK_SEARCH_URL",
                format!(
                    "must be empty or start with http:// or https://, got {:?}",
                    self.search_url
                ),
            );
        }
        check_min(
            "NARUTALK_SEARCH_TIMEOUT_SECONDS",
            self.search_timeout_seconds.into(),
            1,
        )?;
        check_min("NARUTALK_WS_PING_SECONDS", self.ws_ping_seconds.into(), 1)?;
        check_min("NARUTALK_WS_IDLE_SECONDS", self.ws_idle_seconds.into(), 1)?;
        if self.ws_idle_seconds <= self.ws_ping_seconds {
            return err(
                "NARUTALK_WS_IDLE_SECONDS",
                format!(
                    "must be greater than NARUTALK_WS_PING_SECONDS ({}), got \"{}\"",
                    self.ws_ping_seconds, self.ws_idle_seconds
                ),
            );
        }
        if self.log.trim().is_empty() {
            return err("NARUTALK_LOG", "must not be empty".to_owned());
        }
        if let Some(metrics) = self.metrics_bind
            && metrics.port() != 0
            && metrics == self.bind
        {
            return err(
                "NARUTALK_METRICS_BIND",
                format!(
                    "must differ from NARUTALK_BIND ({metrics}): the metrics are never served on the API's port"
                ),
            );
        }
        Ok(())
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use narutalk_core::config::{AiBackend, SERVER_KEYS, Secret, Synchronous};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(env(pairs), &Overrides::default())
    }

    fn load_err(pairs: &[(&str, &str)]) -> ConfigError {
        load_env(pairs).unwrap_err()
    }

    fn write_toml(dir: &Path, content: &str) -> PathBuf {
        let path = dir.join("narutalk.toml");
        fs::write(&path, content).unwrap();
        path
    }

    fn load_toml(content: &str) -> (tempfile::TempDir, Result<Settings, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(dir.path(), content);
        let overrides = Overrides {
            core: config::Overrides {
                config: Some(path),
                ..config::Overrides::default()
            },
            ..Overrides::default()
        };
        let result = Settings::load_from(Vec::new(), &overrides);
        (dir, result)
    }

    /// `load_from_with_default` with `default` as the default file.
    fn load_with_default(
        pairs: &[(&str, &str)],
        overrides: &Overrides,
        default: &Path,
    ) -> Result<(Settings, SettingsFile), ConfigError> {
        Settings::load_from_with_default(env(pairs), overrides, Some(default))
    }

    const SECRET_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-secret-A";

    #[test]
    fn defaults_equal_the_table_of_contract_section_8() {
        let c = Settings::default();
        assert_eq!(c.bind, "127.0.0.1:8000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.cors_origins, vec!["http://localhost:3000".to_owned()]);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.max_connections_per_ip, 1000);
        assert_eq!(c.auth_throttle_per_minute, 10);
        assert_eq!(c.message_throttle_per_minute, 30);
        assert_eq!(c.body_limit_bytes, 1_048_576);
        assert_eq!(c.search_url, "http://localhost:8001/api/search/");
        assert_eq!(c.search_timeout_seconds, 30);
        assert_eq!(c.ws_ping_seconds, 30);
        assert_eq!(c.ws_idle_seconds, 60);
        assert_eq!(c.log, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.metrics_bind, None);
        assert_eq!(c.core, Config::default());
        assert_eq!(c.validate().unwrap(), ());
    }

    #[test]
    fn an_empty_environment_and_no_flags_give_the_defaults() {
        assert_eq!(load_env(&[]).unwrap(), Settings::default());
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
    fn the_core_accepts_exactly_the_keys_the_server_reads() {
        let keys: Vec<&str> = SETTINGS.iter().map(|setting| setting.key).collect();
        assert_eq!(keys, SERVER_KEYS);
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
        let expected = Settings {
            bind: "0.0.0.0:9000".parse().unwrap(),
            cors_origins: vec![
                "https://a.example".to_owned(),
                "http://b.example:8080".to_owned(),
            ],
            trusted_proxies: vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            max_connections_per_ip: 0,
            auth_throttle_per_minute: 0,
            message_throttle_per_minute: 5,
            body_limit_bytes: 2048,
            search_url: String::new(),
            search_timeout_seconds: 5,
            ws_ping_seconds: 10,
            ws_idle_seconds: 25,
            log: "debug,hyper=warn".to_owned(),
            log_format: LogFormat::Json,
            metrics_bind: Some("127.0.0.1:9100".parse().unwrap()),
            core: Config {
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
            },
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn an_unknown_key_is_one_neither_the_core_nor_the_server_knows() {
        let (_dir, r) = load_toml("bind = \"127.0.0.1:1\"\ndatabase = \"x.sqlite3\"\n");
        let c = r.unwrap();
        assert_eq!(c.bind, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
        assert_eq!(c.core.database, PathBuf::from("x.sqlite3"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(
            dir.path(),
            "bind = \"127.0.0.1:1\"\nbnd = \"127.0.0.1:1\"\n",
        );
        let e = load_env(&[("NARUTALK_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid setting NARUTALK_CONFIG: {}: unknown key \"bnd\"",
                path.display()
            )
        );
    }

    #[test]
    fn a_bad_core_setting_stops_the_server_load_too() {
        assert_eq!(
            load_err(&[("NARUTALK_SQLITE_SYNCHRONOUS", "sometimes")]).to_string(),
            "invalid setting NARUTALK_SQLITE_SYNCHRONOUS: must be \"full\" or \"normal\", got \"sometimes\""
        );
        let (_dir, r) = load_toml("access_token_minutes = 0");
        assert_eq!(
            r.unwrap_err().to_string(),
            "invalid setting NARUTALK_ACCESS_TOKEN_MINUTES: must be a whole number of at least 1, got \"0\""
        );
    }

    #[test]
    fn the_environment_and_flags_override_the_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_toml(dir.path(), "bind = \"0.0.0.0:9000\"\nlog = \"warn\"\n");
        let overrides = Overrides {
            core: config::Overrides {
                database: Some(PathBuf::from("/srv/flag.sqlite3")),
                ..config::Overrides::default()
            },
            ..Overrides::default()
        };
        let (c, _) =
            load_with_default(&[("NARUTALK_BIND", "127.0.0.1:9001")], &overrides, &default)
                .unwrap();
        assert_eq!(c.bind, "127.0.0.1:9001".parse::<SocketAddr>().unwrap());
        assert_eq!(c.log, "warn");
        assert_eq!(c.core.database, PathBuf::from("/srv/flag.sqlite3"));
    }

    #[test]
    fn a_bad_value_in_the_default_file_names_its_setting_and_the_file() {
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

    /// The commented settings file the Debian package installs as the default file.
    const PACKAGED_FILE: &str = include_str!("../../packaging/debian/narutalk.toml");

    /// The packaged file's `key = value` lines whose key is a server setting, as (key,
    /// line without the comment mark, commented out).
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
                    .any(|setting| setting.key == key)
                    .then(|| (key.to_owned(), rest.to_owned(), commented))
            })
            .collect()
    }

    #[test]
    fn the_packaged_file_lists_every_setting_once() {
        let listed = packaged_settings();
        for setting in &SETTINGS {
            let count = listed
                .iter()
                .filter(|(key, _, _)| key == setting.key)
                .count();
            assert_eq!(
                count, 1,
                "{} is listed {count} times in narutalk.toml",
                setting.key
            );
        }
        assert_eq!(listed.len(), SETTINGS.len());
    }

    #[test]
    fn the_packaged_file_sets_only_the_database_and_comments_out_the_defaults() {
        assert!(
            packaged_settings()
                .iter()
                .all(|(_, _, commented)| *commented)
        );

        // As installed: the defaults, with the package's database.
        let dir = tempfile::tempdir().unwrap();
        let installed = write_toml(dir.path(), PACKAGED_FILE);
        let (c, file) = load_with_default(&[], &Overrides::default(), &installed).unwrap();
        assert_eq!(file, SettingsFile::Default(installed));
        assert_eq!(
            c,
            Settings {
                core: Config {
                    database: PathBuf::from("/var/lib/narutalk/data/databases/db.sqlite3"),
                    ..Config::default()
                },
                ..Settings::default()
            }
        );

        // Every commented value, uncommented, is the built-in default (the core's
        // settings test checks its own the same way).
        let uncommented: String = packaged_settings()
            .iter()
            .map(|(_, line, _)| format!("{line}\n"))
            .collect();
        let (_dir, r) = load_toml(&uncommented);
        assert_eq!(r.unwrap(), Settings::default());
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
            core: config::Overrides {
                database: Some(PathBuf::from("/srv/narutalk/flag.sqlite3")),
                config: None,
            },
        };
        let c = Settings::load_from(
            env(&[
                ("NARUTALK_BIND", "127.0.0.1:9001"),
                ("NARUTALK_DATABASE", "/srv/narutalk/env.sqlite3"),
            ]),
            &overrides,
        )
        .unwrap();
        assert_eq!(c.bind, "[::1]:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.core.database, PathBuf::from("/srv/narutalk/flag.sqlite3"));
    }

    #[test]
    fn a_bad_bind_flag_names_narutalk_bind() {
        let overrides = Overrides {
            bind: Some("nowhere".to_owned()),
            ..Overrides::default()
        };
        let e = Settings::load_from(Vec::new(), &overrides).unwrap_err();
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
    fn toml_values_of_the_wrong_type_are_rejected_naming_the_setting() {
        let cases = [
            (
                "bind = 8000",
                "NARUTALK_BIND",
                "must be a string, got an integer",
            ),
            (
                "body_limit_bytes = 1.5",
                "NARUTALK_BODY_LIMIT_BYTES",
                "must be an integer, got a float",
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
                "search_url = { path = \"x\" }",
                "NARUTALK_SEARCH_URL",
                "must be a string, got a table",
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
        let (_dir, r) = load_toml("max_connections_per_ip = 4294967296");
        assert_eq!(r.unwrap_err().setting, "NARUTALK_MAX_CONNECTIONS_PER_IP");
        let (_dir, r) = load_toml("body_limit_bytes = 0");
        assert_eq!(
            r.unwrap_err().to_string(),
            "invalid setting NARUTALK_BODY_LIMIT_BYTES: must be a whole number of at least 1, got \"0\""
        );
    }

    /// (variable, smallest accepted value)
    const NUMBERS: [(&str, u64); 8] = [
        ("NARUTALK_MAX_CONNECTIONS_PER_IP", 0),
        ("NARUTALK_AUTH_THROTTLE_PER_MINUTE", 0),
        ("NARUTALK_MESSAGE_THROTTLE_PER_MINUTE", 0),
        ("NARUTALK_BODY_LIMIT_BYTES", 1),
        ("NARUTALK_SEARCH_TIMEOUT_SECONDS", 1),
        ("NARUTALK_WS_PING_SECONDS", 1),
        ("NARUTALK_WS_IDLE_SECONDS", 1),
        ("NARUTALK_BODY_LIMIT_BYTES", 1),
    ];

    #[test]
    fn each_numeric_setting_rejects_negative_garbage_and_empty_values() {
        for (var, _) in NUMBERS {
            for bad in ["-1", "abc", "", "  ", "1x", "0x10", "1_000"] {
                let e = load_err(&[(var, bad)]);
                assert_eq!(e.setting, var, "{var}={bad:?}");
            }
        }
        assert_eq!(
            load_err(&[("NARUTALK_BODY_LIMIT_BYTES", "99999999999999999999999")]).setting,
            "NARUTALK_BODY_LIMIT_BYTES"
        );
    }

    #[test]
    fn zero_is_rejected_exactly_where_the_rules_ask_for_at_least_one() {
        for (var, min) in NUMBERS {
            // A ping of 0 is refused as such; so is an idle limit of 0, before the rule
            // that it must exceed the ping interval.
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
            ("NARUTALK_BODY_LIMIT_BYTES", "10485760"),
            ("NARUTALK_WS_PING_SECONDS", " 15 "),
        ])
        .unwrap();
        assert_eq!(c.body_limit_bytes, 10_485_760);
        assert_eq!(c.ws_ping_seconds, 15);
    }

    #[test]
    fn enums_are_case_insensitive() {
        let c = load_env(&[("NARUTALK_LOG_FORMAT", "JSON")]).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let (_dir, r) = load_toml("log_format = \"Text\"");
        assert_eq!(r.unwrap().log_format, LogFormat::Text);
    }

    #[test]
    fn unknown_or_empty_enum_values_are_rejected() {
        assert_eq!(
            load_err(&[("NARUTALK_LOG_FORMAT", "yaml")]).to_string(),
            "invalid setting NARUTALK_LOG_FORMAT: must be \"text\" or \"json\", got \"yaml\""
        );
        assert_eq!(
            load_err(&[("NARUTALK_LOG_FORMAT", "")]).setting,
            "NARUTALK_LOG_FORMAT"
        );
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
    }

    #[test]
    fn the_process_environment_loads_without_panicking() {
        // The test runner sets no NARUTALK_ variables; whatever it sets, no panic.
        let _ = Settings::load(&Overrides::default());
    }

    #[test]
    fn every_error_is_one_line() {
        let e = load_err(&[("NARUTALK_LOG_FORMAT", "a\nb")]);
        assert!(!e.to_string().contains('\n'));
        let e = load_err(&[("NARUTALK_BIND", "a\r\nb")]);
        assert!(!e.to_string().contains(['\n', '\r']));
    }

    #[test]
    fn validate_checks_settings_built_by_hand() {
        let bad = |c: Settings| c.validate().unwrap_err().setting;
        let d = Settings::default;
        let c = Settings {
            cors_origins: vec![" http://localhost:3000".to_owned()],
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_CORS_ORIGINS");
        let c = Settings {
            ws_ping_seconds: 0,
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_WS_PING_SECONDS");
        let c = Settings {
            core: Config {
                content_max_chars: 0,
                ..Config::default()
            },
            ..d()
        };
        assert_eq!(bad(c), "NARUTALK_CONTENT_MAX_CHARS");
    }

    #[test]
    fn for_tests_gives_throttles_zero_and_the_cores_test_config() {
        let dir = tempfile::tempdir().unwrap();
        let c = Settings::for_tests(dir.path());
        assert_eq!(c.auth_throttle_per_minute, 0);
        assert_eq!(c.message_throttle_per_minute, 0);
        assert_eq!(c.search_url, "");
        assert_eq!(c.core.database, dir.path().join("db.sqlite3"));
        assert_eq!(
            c.core.secret_key.as_ref().map(|s| s.expose().len()),
            Some(64)
        );
        assert_eq!(
            Settings {
                auth_throttle_per_minute: 10,
                message_throttle_per_minute: 30,
                search_url: Settings::default().search_url,
                core: Config::default(),
                ..c.clone()
            },
            Settings::default()
        );
        c.validate().unwrap();
    }
}
