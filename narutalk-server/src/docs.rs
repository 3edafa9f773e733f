//! The API documentation: the OpenAPI document's own parts (its description, the shared
//! components, the security scheme) and the JSON it is served as, Swagger UI served from
//! the binary, and the API reference of the repository (`docs/API.md`), served as it is at
//! `/api/docs/reference` and, for its WebSocket part, repeated in the document's
//! description (OpenAPI cannot describe a socket's frames). The paths come from the route
//! table (`api::routes`), whose rows name the handlers whose annotations document them.
//!
//! The schemas of what the server answers are those of the types it answers with
//! (`wire`), so the document cannot describe a shape the server does not send. The
//! schemas below are the rest: the request bodies (which the core reads field by field,
//! with the contract's messages, rather than into a type), the query parameters, and the
//! responses many operations share. They are as strict as the server: every length,
//! format and choice the server checks is a constraint here, request bodies that may be
//! empty are optional, and every operation lists every status it can answer. What a schema
//! cannot say (uniqueness, the password rules, the e-mail syntax in full, rules across
//! fields) is said in words. The black-box tests compare every object the server answers
//! with its schema and probe the documented limits against the server.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};
use warp::http::{HeaderValue, header};

use narutalk_core::accounts::{USERNAME_MAX_CHARS, policy};

use crate::error::ApiError;
use crate::response::Response;
use crate::wire::chat::Category;
use crate::wire::errors::{BadRequest, Detail, FieldErrors, ProxyError, TokenError};

/// The OpenAPI document without its paths: the route table adds one operation for each
/// documented method.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Narutalk API",
        version = "1.1.0",
        description = "The backend of a question-and-answer chatbot for hospitals: accounts with JWT access and refresh tokens, chat sessions whose messages get an AI reply, and a search proxy.\n\nBodies are JSON (`Content-Type: application/json`); an empty body counts as `{}`. Errors have Django REST Framework's shapes: `{\"detail\": \"...\"}`, or for invalid fields an object from field name to messages (rules across fields under `non_field_errors`). Lengths count Unicode characters. Timestamps are RFC 3339 in UTC with microseconds. Every path also answers without its trailing slash. A request whose target has no path (such as `CONNECT host:443`) is answered `400 {\"detail\": \"Bad request.\"}`.",
    ),
    components(
        // Parameters' and headers' schemas: utoipa collects only those of bodies itself.
        schemas(
            Detail, TokenError, FieldErrors, BadRequest, ProxyError, RetryAfterSeconds,
            PageNumber, CategoryFilter, AfterMessage, Username,
        ),
        responses(
            BodyTimeout, BodyTooLarge, UnsupportedMediaType, Unavailable,
            AccessTokenRefused, RefreshTokenRefused,
        ),
    ),
    modifiers(&BearerAuth, &WebSocketDocs),
    tags(
        (name = "auth", description = "Registration, login, tokens and the profile"),
        (name = "chat", description = "Chat sessions and their messages, each answered by the AI"),
        (name = "gateway", description = "Health and the search proxy"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme the authenticated paths name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API reference, REST and WebSocket, as the repository keeps it: `docs/API.md`.
pub const REFERENCE: &str = include_str!("../../docs/API.md");

/// The heading that opens the reference's WebSocket part.
const WEBSOCKET_HEADING: &str = "## WebSocket chat\n";

/// The reference's WebSocket part: from its heading to the next heading of the same level.
fn websocket_part(reference: &str) -> &str {
    let Some(start) = reference.find(WEBSOCKET_HEADING) else {
        return "";
    };
    let part = &reference[start..];
    let end = part[WEBSOCKET_HEADING.len()..]
        .find("\n## ")
        .map_or(part.len(), |at| WEBSOCKET_HEADING.len() + at);
    part[..end].trim_end()
}

/// Adds the WebSocket protocol to the document's description, which Swagger UI shows as
/// Markdown above the operations, and the address of the whole reference.
struct WebSocketDocs;

impl Modify for WebSocketDocs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let intro = openapi.info.description.take().unwrap_or_default();
        openapi.info.description = Some(format!(
            "{intro}\n\nThe whole reference, REST and WebSocket, is served as Markdown at \
             [`/api/docs/reference`](/api/docs/reference).\n\n{}",
            unwrap_lines(websocket_part(REFERENCE))
        ));
    }
}

/// Markdown whose paragraphs and list items each fill one line: Swagger UI renders every
/// line break as a break (Remarkable's `breaks`), while the reference wraps its text at a
/// fixed width. Headings, table rows, blank lines and fenced code stay as they are; a
/// line that continues a paragraph or a list item joins the line before it.
fn unwrap_lines(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut in_code = false;
    let mut joinable = false;
    for line in markdown.lines() {
        let fence = line.trim_start().starts_with("```");
        let starts_block = line.is_empty()
            || fence
            || line.starts_with('#')
            || line.starts_with('|')
            || line.trim_start().starts_with("- ");
        if !in_code && joinable && !starts_block {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(line);
        }
        if fence {
            in_code = !in_code;
        }
        joinable = !in_code
            && !fence
            && !line.is_empty()
            && !line.starts_with('#')
            && !line.starts_with('|');
    }
    out
}

/// `openapi`, the whole document, as a JSON value with two things utoipa's model cannot
/// say:
/// - every response header the document names is one the server always sends with that
///   status, so it is marked `required`;
/// - an optional request body (`request_body = Option<T>`) is one that may be left out,
///   and utoipa writes it as "`T` or `null`"; a `null` body is refused like any body that
///   is not an object, so the `null` is taken out again.
pub fn document(openapi: utoipa::openapi::OpenApi) -> Value {
    let mut document = serde_json::to_value(openapi).unwrap_or_else(|error| {
        tracing::error!(%error, "the OpenAPI document did not serialize");
        Value::Object(serde_json::Map::new())
    });
    if let Some(responses) = document
        .pointer_mut("/components/responses")
        .and_then(Value::as_object_mut)
    {
        responses.values_mut().for_each(require_headers);
    }
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        let operations = paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut());
        for operation in operations {
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                responses.values_mut().for_each(require_headers);
            }
            if let Some(schema) =
                operation.pointer_mut("/requestBody/content/application~1json/schema")
            {
                drop_null_alternative(schema);
            }
        }
    }
    document
}

/// Marks every header of one response object as required.
fn require_headers(response: &mut Value) {
    if let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) {
        for header in headers.values_mut().filter_map(Value::as_object_mut) {
            header.insert("required".into(), Value::Bool(true));
        }
    }
}

/// `{"oneOf": [S, {"type": "null"}]}` becomes `S`; any other schema stays as it is.
fn drop_null_alternative(schema: &mut Value) {
    let null = serde_json::json!({ "type": "null" });
    let single = match schema.get("oneOf").and_then(Value::as_array) {
        Some(alternatives) if alternatives.len() == 2 && alternatives.contains(&null) => {
            alternatives
                .iter()
                .find(|alternative| **alternative != null)
                .cloned()
        }
        _ => None,
    };
    if let Some(single) = single {
        *schema = single;
    }
}

/// Swagger UI's settings: the document above, and no online validator.
static SWAGGER: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> = LazyLock::new(|| {
    Arc::new(utoipa_swagger_ui::Config::from("/api/schema/").validator_url("none"))
});

/// `GET /api/docs/` and its assets, every one served from the binary, and the reference
/// (`GET /api/docs/reference`).
pub fn page(asset: &str) -> Result<Response, ApiError> {
    if asset == "reference" {
        return Ok(reference());
    }
    let file = match utoipa_swagger_ui::serve(asset, SWAGGER.clone()) {
        Ok(Some(file)) => file,
        Ok(None) => return Err(ApiError::NotFound),
        Err(error) => {
            return Err(ApiError::internal(
                "a Swagger UI asset failed",
                error.to_string(),
            ));
        }
    };
    let mut bytes = file.bytes.into_owned();
    if asset.is_empty() || asset == "index.html" {
        bytes = absolute_asset_urls(&String::from_utf8_lossy(&bytes)).into_bytes();
    }
    let mut response = Response::new(bytes.into());
    let headers = response.headers_mut();
    if let Ok(content_type) = HeaderValue::from_str(&file.content_type) {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    if file.gzpipped {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

/// `GET /api/docs/reference`: the API reference, in Markdown.
fn reference() -> Response {
    let mut response = Response::new(REFERENCE.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/markdown; charset=utf-8"),
    );
    response
}

/// The page with every relative `src` and `href` (`./swagger-ui.css`, but also
/// `index.css`) made absolute under `/api/docs/`, so that the page also works as
/// `/api/docs` without the slash, where a browser would resolve them under `/api/`.
fn absolute_asset_urls(page: &str) -> String {
    let mut out = String::with_capacity(page.len() + 256);
    let mut rest = page;
    while let Some(at) = [" src=\"", " href=\""]
        .iter()
        .filter_map(|attribute| rest.find(attribute).map(|at| at + attribute.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let url = rest.split('"').next().unwrap_or_default();
        let relative = !url.starts_with('/') && !url.starts_with('#') && !url.contains(':');
        if relative {
            out.push_str("/api/docs/");
            rest = rest.strip_prefix("./").unwrap_or(rest);
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// The answers many operations share
//
// Patterns name whitespace explicitly where the server trims or refuses blank strings:
// [`WHITE_SPACE`] is what the server trims, while a regex's own `\s` means something else
// in each engine (a unit test below keeps the two equal).
// ---------------------------------------------------------------------------------------

/// A whole number of seconds to wait before trying again.
pub struct RetryAfterSeconds;

impl PartialSchema for RetryAfterSeconds {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .into()
    }
}

impl ToSchema for RetryAfterSeconds {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RetryAfterSeconds")
    }
}

/// The body stopped arriving: after its headers, a request body must keep coming at 500
/// bytes a second on average (after the first 10 s). The connection is closed after this
/// answer (`{"detail": "Request body timed out."}`).
#[derive(ToResponse)]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub struct BodyTimeout(Detail<'static>);

/// The body is larger than the limit (1 MiB unless configured), by `Content-Length` or
/// counted as it arrives (`{"detail": "Request body too large."}`).
#[derive(ToResponse)]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub struct BodyTooLarge(Detail<'static>);

/// A non-empty body with a content type other than JSON, or with none
/// (`{"detail": "Unsupported media type \"text/plain\" in request."}`).
#[derive(ToResponse)]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub struct UnsupportedMediaType(Detail<'static>);

/// The password-hashing queue is full, or the database cannot take the write (or the
/// read) within 5 s: `{"detail": "Service temporarily unavailable, try again later."}`.
/// A write answered 503 was not applied (a posted message aside: it stays stored and gets
/// its reply later).
#[derive(ToResponse)]
#[response(headers(("Retry-After" = RetryAfterSeconds, description = "Always 1")))]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub struct Unavailable(Detail<'static>);

/// No access token (`Authentication credentials were not provided.`), or one that is
/// malformed, expired, revoked, a refresh token, or of a deactivated or deleted user
/// (`Given token not valid for any token type`, with `code`).
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"api\"`")))]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub struct AccessTokenRefused(TokenError<'static>);

/// The refresh token is malformed (`Token is invalid`), expired (`Token is expired`), or
/// already rotated, logged out or revoked (`Token is blacklisted`). Presenting a rotated
/// token again revokes every token of its login.
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"api\"`")))]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub struct RefreshTokenRefused(TokenError<'static>);

// ---------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------

/// A username: 1-150 letters (of any script), digits or `@.+-_`, after leading and
/// trailing whitespace is removed; unique. The pattern lists exactly the characters the
/// server takes: it is built from the server's own rule.
pub struct Username;

impl PartialSchema for Username {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "1-150 letters (of any script), digits or `@.+-_`, after leading and trailing \
                 whitespace is removed; unique.",
            ))
            .min_length(Some(1))
            .max_length(Some(USERNAME_MAX_CHARS))
            .pattern(Some(USERNAME_PATTERN.as_str()))
            .into()
    }
}

impl ToSchema for Username {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Username")
    }
}

/// Optional whitespace, then one or more characters of a valid username, then optional
/// whitespace.
static USERNAME_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let username_character = character_class(|c| {
        let mut buffer = [0; 4];
        policy::is_valid_username(c.encode_utf8(&mut buffer))
    });
    format!("^[{WHITE_SPACE}]*[{username_character}]+[{WHITE_SPACE}]*$")
});

/// The characters `str::trim` removes (Unicode's White_Space), as the inside of a regex
/// character class. The patterns written out in the attributes below use this text.
pub const WHITE_SPACE: &str =
    r"\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000";

/// The inside of a regex character class holding exactly the characters `accepts` takes,
/// as ranges of `\uXXXX` (and `\UXXXXXXXX` above the Basic Multilingual Plane) escapes,
/// which the JSON Schema validators and Python's `re` all read alike.
fn character_class(accepts: impl Fn(char) -> bool) -> String {
    let escape = |c: char| {
        if u32::from(c) < 0x1_0000 {
            format!("\\u{:04x}", u32::from(c))
        } else {
            format!("\\U{:08x}", u32::from(c))
        }
    };
    let mut ranges: Vec<(char, char)> = Vec::new();
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        if !accepts(c) {
            continue;
        }
        match ranges.last_mut() {
            Some((_, last)) if u32::from(*last) + 1 == u32::from(c) => *last = c,
            _ => ranges.push((c, c)),
        }
    }
    ranges
        .into_iter()
        .map(|(first, last)| {
            if first == last {
                escape(first)
            } else {
                format!("{}-{}", escape(first), escape(last))
            }
        })
        .collect()
}

/// A role a registration may ask for.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub enum RegisterRole {
    /// A doctor.
    Doctor,
    /// A nurse.
    Nurse,
    /// The default.
    User,
}

/// `POST /api/auth/register/`. Unknown fields are ignored.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
pub struct RegisterRequest {
    /// 1-150 letters, digits or `@.+-_`, after leading and trailing whitespace is removed;
    /// unique.
    pub username: Username,
    /// A valid address of at most 254 characters, unique whatever its letter case; stored
    /// lower-cased.
    #[schema(format = Email, min_length = 1, max_length = 254)]
    pub email: String,
    /// 8-128 characters, kept exactly as sent; not entirely digits, not one of the common
    /// passwords, not too similar to the username or the email.
    #[schema(format = Password, min_length = 8, max_length = 128, pattern = r"^[^\u0000]*$")]
    pub password: String,
    /// The same password again.
    #[schema(format = Password, min_length = 8, max_length = 128, pattern = r"^[^\u0000]*$")]
    pub password_confirm: String,
    /// `user` when missing; `admin` is refused.
    #[schema(nullable = false)]
    pub role: Option<RegisterRole>,
    /// At most 100 characters after trimming; may be empty.
    #[schema(nullable = false, max_length = 100, pattern = r"^[^\u0000]*$")]
    pub department: Option<String>,
}

/// `POST /api/auth/login/`. Unknown fields are ignored.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
#[schema(example = json!({"email": "kim@example.com", "password": "violet-harbour-42"}))]
pub struct LoginRequest {
    /// The account's email, in any letter case.
    #[schema(
        min_length = 1,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub email: String,
    /// The password, exactly as set.
    #[schema(
        format = Password,
        min_length = 1,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub password: String,
    /// The device token of an earlier successful login of this account. While it is valid
    /// (90 days from its last use), failed logins with it count against its own budget
    /// instead of the account's. An invalid, foreign, expired or non-string value is
    /// ignored.
    #[schema(nullable = false)]
    pub device: Option<String>,
}

/// `POST /api/auth/token/refresh/` and `/api/auth/logout/`.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
pub struct RefreshRequest {
    /// A refresh token.
    #[schema(
        min_length = 1,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub refresh: String,
}

/// `PATCH /api/auth/profile/`: the fields sent change, the others stay. `id`, `role` and
/// `is_verified` are read-only and ignored, as are unknown fields.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
pub struct ProfileUpdate {
    /// 1-150 letters, digits or `@.+-_`, after trimming; unique.
    #[schema(nullable = false)]
    pub username: Option<Username>,
    /// A valid address of at most 254 characters, unique whatever its letter case.
    #[schema(nullable = false, format = Email, min_length = 1, max_length = 254)]
    pub email: Option<String>,
    /// At most 100 characters after trimming; may be empty.
    #[schema(nullable = false, max_length = 100, pattern = r"^[^\u0000]*$")]
    pub department: Option<String>,
}

/// `PUT /api/auth/profile/`: username and email required. `id`, `role` and `is_verified`
/// are read-only and ignored, as are unknown fields.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
pub struct ProfileReplace {
    /// 1-150 letters, digits or `@.+-_`, after trimming; unique.
    pub username: Username,
    /// A valid address of at most 254 characters, unique whatever its letter case.
    #[schema(format = Email, min_length = 1, max_length = 254)]
    pub email: String,
    /// At most 100 characters after trimming; may be empty; unchanged when missing.
    #[schema(nullable = false, max_length = 100, pattern = r"^[^\u0000]*$")]
    pub department: Option<String>,
}

/// `POST /api/auth/password/`.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
pub struct PasswordChange {
    /// The current password.
    #[schema(
        format = Password,
        min_length = 1,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub old_password: String,
    /// The new password, under the rules of registration.
    #[schema(format = Password, min_length = 8, max_length = 128, pattern = r"^[^\u0000]*$")]
    pub new_password: String,
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

/// The `category` filter of the session list: one category, or empty for every one.
pub struct CategoryFilter;

impl PartialSchema for CategoryFilter {
    fn schema() -> RefOr<Schema> {
        choice_of(&["medical", "general", "emergency", "consultation", ""])
    }
}

impl ToSchema for CategoryFilter {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CategoryFilter")
    }
}

/// The `after` of a message list: the id of a message of the session, or empty for no
/// filter.
pub struct AfterMessage;

impl PartialSchema for AfterMessage {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([""])),
            )
            .into()
    }
}

impl ToSchema for AfterMessage {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AfterMessage")
    }
}

/// A string that is one of `values`. (utoipa's derive cannot name an empty value.)
fn choice_of(values: &[&'static str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// The `page` of a list: a page number from 1, `last` for the last page, or empty for
/// the first. A page past the end is answered 404 `Invalid page.`
pub struct PageNumber;

impl PartialSchema for PageNumber {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["last", ""])),
            )
            .into()
    }
}

impl ToSchema for PageNumber {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PageNumber")
    }
}

/// A message type a client may send.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "described in the OpenAPI document, never built")]
pub enum ClientMessageType {
    /// The default.
    Text,
    /// An image.
    Image,
    /// A file.
    File,
}

/// `POST /api/chat/sessions/{id}/messages/`. A `sender` is ignored (a posted message is
/// always the user's), as are unknown fields.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
#[schema(example = json!({"content": "두통이 사흘째 계속돼요.", "message_type": "text", "metadata": {}}))]
pub struct MessageCreate {
    /// 1-10,000 characters, not only whitespace, stored exactly as sent; no NUL character.
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub content: String,
    /// `text` when missing.
    #[schema(nullable = false)]
    pub message_type: Option<ClientMessageType>,
    /// A JSON object of at most 16,384 bytes as compact UTF-8 JSON, with no NUL character
    /// in any key or string; `{}` when missing.
    #[schema(nullable = false)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /api/chat/sessions/`. Unknown fields are ignored.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
#[schema(example = json!({"title": "Headache", "category": "medical"}))]
pub struct SessionCreate {
    /// 1-200 characters after leading and trailing whitespace is removed (stored
    /// trimmed); no NUL character.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub title: String,
    /// `general` when missing.
    #[schema(nullable = false)]
    pub category: Option<Category>,
}

/// `PATCH /api/chat/sessions/{id}/`: the fields sent change, the others stay; every
/// update, even `{}`, moves `updated_at` forward. Unknown fields are ignored.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a request body's schema: the core reads the body field by field"
)]
#[schema(example = json!({"title": "Headache, day 2", "is_active": false}))]
pub struct SessionUpdate {
    /// 1-200 characters after trimming; no NUL character.
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub title: Option<String>,
    /// The category.
    #[schema(nullable = false)]
    pub category: Option<Category>,
    /// Archived (`false`) or not; a label only, an archived session still works.
    #[schema(nullable = false)]
    pub is_active: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_white_space_class_is_what_trim_removes() {
        assert_eq!(WHITE_SPACE, character_class(char::is_whitespace));
    }

    #[test]
    fn the_websocket_part_is_the_references_whole_websocket_chapter() {
        let part = websocket_part(REFERENCE);
        assert!(part.starts_with("## WebSocket chat\n"), "{part}");
        assert!(part.contains("### Heartbeat and closing"), "{part}");
        assert!(!part.contains("\n## "), "the next chapter: {part}");
        let description = ApiDoc::openapi().info.description.unwrap_or_default();
        assert!(description.ends_with(&unwrap_lines(part)), "{description}");
    }

    #[test]
    fn wrapped_paragraphs_and_list_items_become_one_line_each() {
        let wrapped = "## Title\nA paragraph\nwrapped.\n\n- an item\n  continued\n- another\n\n\
                       | a | b |\n|---|---|\n| c | d |\n\n```text\nkept\nas is\n```\nafter";
        assert_eq!(
            unwrap_lines(wrapped),
            "## Title\nA paragraph wrapped.\n\n- an item continued\n- another\n\n\
             | a | b |\n|---|---|\n| c | d |\n\n```text\nkept\nas is\n```\nafter"
        );
    }

    #[test]
    fn the_websocket_part_ends_at_the_next_chapter_or_the_end() {
        assert_eq!(
            websocket_part("# A\n## WebSocket chat\nframes\n### Close\ncodes\n## Next\nno"),
            "## WebSocket chat\nframes\n### Close\ncodes"
        );
        assert_eq!(
            websocket_part("## WebSocket chat\nlast\n"),
            "## WebSocket chat\nlast"
        );
        assert_eq!(websocket_part("## Other\n"), "");
    }

    #[test]
    fn character_classes_are_ranges_of_escapes_across_planes() {
        let class = character_class(|c| matches!(c, 'a'..='c' | 'x' | '\u{20000}'..='\u{20002}'));
        assert_eq!(class, r"\u0061-\u0063\u0078\U00020000-\U00020002");
    }

    #[test]
    fn the_username_pattern_holds_letters_of_every_script_and_only_the_five_signs() {
        let pattern = USERNAME_PATTERN.as_str();
        // Hangul syllables, Latin letters and digits are one range each or inside one.
        assert!(pattern.contains(r"\uac00-\ud7a3"), "Hangul syllables");
        assert!(pattern.contains(r"\u0030-\u0039"), "digits");
        for sign in [r"\u0040", r"\u002e", r"\u002b", r"\u002d", r"\u005f"] {
            assert!(pattern.contains(sign), "{sign}");
        }
    }
}
