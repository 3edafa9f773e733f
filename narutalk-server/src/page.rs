//! The web chat page (contract section 11): `GET /` and its assets under `/app/`, all
//! embedded in the binary.
//!
//! The sources live in `narutalk-server/assets/` and are compiled in with
//! `include_bytes!`. The first request for the page or an asset builds the [`Site`] once:
//! each asset is served under a name carrying the start of the SHA-256 of its content
//! (`app.js` as `/app/app.0123456789abcdef.js`), and every reference to an asset in the
//! files that name it is rewritten to that name before they are hashed in turn, so a
//! change to any file changes the names of every file that leads to it. Hashed assets are
//! cached for a year (`immutable`); the page itself is revalidated every time (`no-cache`)
//! with its `ETag`. A server that never serves the page never builds the site.
//!
//! The files are hashed leaves first (the icon, the stylesheet, `text.js`, `api.js`,
//! `socket.js`, `app.js`, then `index.html`), so a change to `text.js` renames `text.js`,
//! `app.js`, which imports it, and the page's link to `app.js`; the unit tests below
//! check that no reference is left unhashed. The page and its assets are answered before
//! the route table, and are the only answers with a `Content-Security-Policy`.
//!
//! The page is plain HTML, CSS and JavaScript modules, served as written: no framework,
//! no bundler, nothing to build. `app.js` owns the DOM and writes what a user or the
//! server wrote only as text; `api.js` holds the tokens and the REST calls (its header
//! says where the tokens are kept, and why); `socket.js` one session's WebSocket;
//! `text.js` every visible text.

use std::collections::HashMap;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use warp::http::{HeaderValue, Method, StatusCode, header};

use crate::error::ApiError;
use crate::http::Request;
use crate::response::Response;

/// The `Content-Security-Policy` of the page and its assets (contract section 11).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self' ws: wss:; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How hashed assets are cached: their name changes with their content.
const CACHE_HASHED: &str = "public, max-age=31536000, immutable";

/// How the page is cached: kept, but asked about again every time (its `ETag` makes that
/// cheap), so a new version of the server is picked up at once.
const CACHE_PAGE: &str = "no-cache";

/// The prefix every asset is served under.
const ASSET_PREFIX: &str = "/app/";

/// The methods the page and its assets answer.
const ALLOW: &str = "GET, HEAD";

/// How many hex digits of the SHA-256 go into a name: 64 bits, plenty to tell versions
/// of one file apart.
const HASH_DIGITS: usize = 16;

/// One embedded file.
struct Source {
    /// Its name in `assets/`, as the other files refer to it.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! source {
    ($name:literal, $content_type:literal) => {
        Source {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../assets/", $name)),
        }
    };
}

/// Every file of the page. A file may refer only to files above it (the order in which
/// names are hashed); `index.html` comes last and is the page itself.
const SOURCES: &[Source] = &[
    source!("icon.svg", "image/svg+xml"),
    source!("style.css", "text/css; charset=utf-8"),
    source!("text.js", "text/javascript; charset=utf-8"),
    source!("api.js", "text/javascript; charset=utf-8"),
    source!("socket.js", "text/javascript; charset=utf-8"),
    source!("app.js", "text/javascript; charset=utf-8"),
    source!("index.html", "text/html; charset=utf-8"),
];

/// The page's own file.
const INDEX: &str = "index.html";

/// One file ready to serve.
struct Asset {
    content_type: &'static str,
    body: bytes::Bytes,
    /// The quoted strong validator: the content's hash.
    etag: String,
    cache_control: &'static str,
}

/// The page and its assets, by the name they are served under.
struct Site {
    page: Asset,
    assets: HashMap<String, Asset>,
}

static SITE: LazyLock<Site> = LazyLock::new(build);

fn build() -> Site {
    // (name in the sources, name served)
    let mut renamed: Vec<(&'static str, String)> = Vec::new();
    let mut assets = HashMap::new();
    let mut page = None;
    for source in SOURCES {
        let mut body = source.bytes.to_vec();
        for (name, served) in &renamed {
            body = rewrite(&body, name, served);
        }
        let hash = hex_prefix(&Sha256::digest(&body));
        let asset = Asset {
            content_type: source.content_type,
            body: body.into(),
            etag: format!("\"{hash}\""),
            cache_control: CACHE_HASHED,
        };
        if source.name == INDEX {
            page = Some(Asset {
                cache_control: CACHE_PAGE,
                ..asset
            });
            continue;
        }
        let served = hashed_name(source.name, &hash);
        assets.insert(served.clone(), asset);
        renamed.push((source.name, served));
    }
    Site {
        page: page.unwrap_or_else(|| Asset {
            content_type: "text/html; charset=utf-8",
            body: bytes::Bytes::new(),
            etag: "\"\"".to_owned(),
            cache_control: CACHE_PAGE,
        }),
        assets,
    }
}

/// `app.js` with hash `h` is `app.h.js`.
fn hashed_name(name: &str, hash: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, extension)) => format!("{stem}.{hash}.{extension}"),
        None => format!("{name}.{hash}"),
    }
}

/// The content with every reference to `name` turned into one to `served`: the page's
/// `"/app/name"` and the modules' `"./name"` (in double or single quotes).
fn rewrite(body: &[u8], name: &str, served: &str) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(body) else {
        return body.to_vec();
    };
    let mut text = text.to_owned();
    for quote in ['"', '\''] {
        for prefix in [ASSET_PREFIX, "./"] {
            text = text.replace(
                &format!("{quote}{prefix}{name}{quote}"),
                &format!("{quote}{prefix}{served}{quote}"),
            );
        }
    }
    text.into_bytes()
}

fn hex_prefix(digest: &[u8]) -> String {
    digest
        .iter()
        .flat_map(|byte| [byte >> 4, byte & 0x0f])
        .take(HASH_DIGITS)
        .map(|nibble| char::from_digit(u32::from(nibble), 16).unwrap_or('0'))
        .collect()
}

/// True for the paths this module answers: `/` and everything under `/app/`.
pub fn owns(path: &str) -> bool {
    path == "/" || path.starts_with(ASSET_PREFIX)
}

/// Answers a request for `/` or `/app/...`: the file with its headers, `304` when the
/// client's copy is current, `404` for an unknown asset, `405` for a method other than
/// GET and HEAD.
pub fn answer(request: &Request) -> Response {
    let asset = if request.path == "/" {
        Some(&SITE.page)
    } else {
        request
            .path
            .strip_prefix(ASSET_PREFIX)
            .and_then(|name| SITE.assets.get(name))
    };
    let Some(asset) = asset else {
        return ApiError::NotFound.into_response();
    };
    if request.method != Method::GET && request.method != Method::HEAD {
        return ApiError::MethodNotAllowed {
            method: request.method.to_string(),
            allow: ALLOW,
        }
        .into_response();
    }
    let current = request
        .header(header::IF_NONE_MATCH)
        .is_some_and(|tags| matches_etag(tags, &asset.etag));
    let mut response = if current {
        let mut response = Response::new(bytes::Bytes::new().into());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(asset.body.clone().into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether an `If-None-Match` list names `etag` (weakly, as RFC 9110 compares for GET),
/// or is `*`.
fn matches_etag(tags: &str, etag: &str) -> bool {
    tags.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_to_an_asset_is_rewritten_to_its_hashed_name() {
        let site = build();
        let page = std::str::from_utf8(&site.page.body).unwrap_or_default();
        for source in SOURCES.iter().filter(|source| source.name != INDEX) {
            let served: Vec<&String> = site
                .assets
                .keys()
                .filter(|served| {
                    let stem = source.name.split('.').next().unwrap_or_default();
                    served.starts_with(&format!("{stem}."))
                })
                .collect();
            assert_eq!(served.len(), 1, "{} is served once", source.name);
            for asset in site
                .assets
                .values()
                .map(|asset| &asset.body)
                .chain([&site.page.body])
            {
                let text = String::from_utf8_lossy(asset);
                for unhashed in [
                    format!("\"./{}\"", source.name),
                    format!("\"/app/{}\"", source.name),
                ] {
                    assert!(!text.contains(&unhashed), "{unhashed} is left as it was");
                }
            }
        }
        assert!(page.contains("/app/app."), "the page names its module");
    }

    #[test]
    fn a_change_to_a_module_changes_the_names_that_lead_to_it() {
        let name = "text.js";
        let one = rewrite(b"import x from \"./text.js\";", name, "text.aaaa.js");
        let two = rewrite(b"import x from \"./text.js\";", name, "text.bbbb.js");
        assert_eq!(one, b"import x from \"./text.aaaa.js\";");
        assert_ne!(
            hex_prefix(&Sha256::digest(&one)),
            hex_prefix(&Sha256::digest(&two))
        );
        assert_eq!(
            rewrite(b"<link href='/app/text.js'>", name, "t.1.js"),
            b"<link href='/app/t.1.js'>"
        );
        assert_eq!(
            rewrite(b"\"./context.js\"", name, "x"),
            b"\"./context.js\"",
            "only whole names are rewritten"
        );
    }

    #[test]
    fn hashed_names_keep_the_extension() {
        assert_eq!(hashed_name("app.js", "0123"), "app.0123.js");
        assert_eq!(hashed_name("LICENSE", "0123"), "LICENSE.0123");
        assert_eq!(hex_prefix(&[0xab, 0x01, 0xff]), "ab01ff");
    }

    #[test]
    fn if_none_match_lists_are_read_as_rfc_9110_says() {
        assert!(matches_etag("\"abc\"", "\"abc\""));
        assert!(matches_etag("\"x\", W/\"abc\"", "\"abc\""));
        assert!(matches_etag("*", "\"abc\""));
        assert!(!matches_etag("\"abcd\"", "\"abc\""));
        assert!(!matches_etag("", "\"abc\""));
    }
}
