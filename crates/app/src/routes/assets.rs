//! The page and its script and style under content-hashed URLs: the HTML at
//! `/` is revalidated on every load (`no-cache`), so a deploy's new hashes
//! are seen at once, while `/static/app.<hash>.js` and `.css` never change
//! and are cached by browsers and CDN edges for a year (`immutable`). The
//! page loads them from `media_base_url` (the CDN) and falls back to its
//! own origin, same path, for any of them, or any image, that fails to
//! load from there (the script at the top of `assets/index.html`).

use crate::error::ApiError;
use crate::http_cache::{content_hash, not_modified, strong_etag};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// The `Cache-Control` of a versioned asset.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One static file with its hashed name.
pub struct Asset {
    /// `app.<hash>.js`: the name under `/static/`.
    pub name: String,
    /// The file's bytes.
    pub bytes: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its strong `ETag`, the same hash as in the name.
    pub etag: String,
}

impl Asset {
    /// Names `stem.<hash>.ext` after the first 16 hex digits of the SHA-256
    /// of `bytes`.
    pub fn new(stem: &str, ext: &str, bytes: &'static [u8], content_type: &'static str) -> Self {
        Asset {
            name: format!("{stem}.{}.{ext}", content_hash(bytes)),
            bytes,
            content_type,
            etag: strong_etag(bytes),
        }
    }

    /// The path the page links to.
    pub fn url(&self) -> String {
        format!("/static/{}", self.name)
    }
}

/// The page with its assets, hashed once at startup.
pub struct Site {
    /// The HTML, linking to the hashed paths (`/static/app.<hash>.js`),
    /// with `{{media.base}}` still to fill (see [`Site::page`]).
    pub index: String,
    /// The assets the HTML links to.
    pub assets: Vec<Asset>,
}

impl Site {
    /// Hashes `js` and `css` and fills their paths into the `{{app.js}}` and
    /// `{{app.css}}` placeholders of `html`, each after a `{{media.base}}`
    /// placeholder (`{{media.base}}/static/app.<hash>.js`).
    pub fn build(html: &str, js: &'static [u8], css: &'static [u8]) -> Self {
        let js = Asset::new("app", "js", js, "text/javascript; charset=utf-8");
        let css = Asset::new("app", "css", css, "text/css; charset=utf-8");
        let index = html
            .replace("{{app.js}}", &format!("{BASE_ATTR}{}", js.url()))
            .replace("{{app.css}}", &format!("{BASE_ATTR}{}", css.url()));
        Site {
            index,
            assets: vec![js, css],
        }
    }

    /// The page with its assets under `base` (the CDN's URL without a
    /// trailing `/`; "" for the page's own origin): in the `src` and `href`
    /// of the script and style, and as the JavaScript string that the
    /// page's fallback (`assets/index.html`) compares failed loads with.
    pub fn page(&self, base: &str) -> String {
        self.index
            .replace(BASE_ATTR, &html_attribute(base))
            .replace("{{media.base}}", &js_string(base))
    }
}

/// Where the base goes in an attribute (before it is known).
const BASE_ATTR: &str = "{{media.base.attr}}";

/// `s` escaped for a double-quoted HTML attribute.
fn html_attribute(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `s` as a JavaScript string literal that cannot end the `<script>` it is in.
fn js_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("a string serialises")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// The embedded page, so the binary runs from any directory.
static SITE: LazyLock<Site> = LazyLock::new(|| {
    Site::build(
        include_str!("../../assets/index.html"),
        include_bytes!("../../assets/app.js"),
        include_bytes!("../../assets/app.css"),
    )
});

/// The embedded page with its script and style under `base` (see
/// [`Site::page`]); built once per server.
pub fn page(base: &str) -> String {
    SITE.page(base)
}

/// `GET /`: the page, revalidated on every load (`no-cache`).
pub async fn index(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        state.page.to_string(),
    )
        .into_response()
}

/// `GET /static/{name}`: a versioned asset, cached for a year; `304` to a
/// matching `If-None-Match`; 404 (not cached for long) for a name that no
/// asset of this deploy has, such as an older deploy's hash.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let asset = SITE
        .assets
        .iter()
        .find(|a| a.name == name)
        .ok_or(ApiError::NotFound("no such file"))?;
    let common = [
        (header::CACHE_CONTROL, IMMUTABLE),
        (header::ETAG, asset.etag.as_str()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    if not_modified(&headers, &asset.etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((common, [(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_the_hashed_names() {
        let site = Site::build(
            r#"<link href="{{app.css}}"><script src="{{app.js}}"></script>"#,
            b"go()",
            b"p{}",
        );
        let (js, css) = (&site.assets[0], &site.assets[1]);
        assert_eq!(js.name, format!("app.{}.js", content_hash(b"go()")));
        assert_eq!(css.name, format!("app.{}.css", content_hash(b"p{}")));
        assert_eq!(
            site.page(""),
            format!(
                r#"<link href="{}"><script src="{}"></script>"#,
                css.url(),
                js.url()
            )
        );
        assert_eq!(
            site.page("http://127.0.0.1:8081"),
            format!(
                r#"<link href="http://127.0.0.1:8081{}"><script src="http://127.0.0.1:8081{}"></script>"#,
                css.url(),
                js.url()
            )
        );
        // Other bytes, another name: a deploy never reuses a cached URL.
        let next = Site::build("", b"go(1)", b"p{}");
        assert_ne!(next.assets[0].name, js.name);
        assert_eq!(next.assets[1].name, css.name);
    }

    #[test]
    fn the_base_cannot_break_out_of_its_attribute_or_script() {
        let site = Site::build(
            r#"<a href="{{app.js}}"><script>var b = {{media.base}};</script>"#,
            b"",
            b"",
        );
        let page = site.page(r#"http://x/"&<'>/</script>"#);
        assert!(
            page.starts_with(r#"<a href="http://x/&quot;&amp;&lt;'&gt;/&lt;/script&gt;/static/app."#),
            "{page}"
        );
        assert!(
            page.ends_with(r#"var b = "http://x/\"&\u003c'\u003e/\u003c/script\u003e";</script>"#),
            "{page}"
        );
        assert_eq!(page.matches("</script>").count(), 1);
    }

    #[test]
    fn the_embedded_page_has_no_placeholder_left() {
        for base in ["", "http://127.0.0.1:8081"] {
            let page = page(base);
            assert!(!page.contains("{{"), "{base}");
            for a in &SITE.assets {
                assert!(page.contains(&format!("{base}{}", a.url())), "{}", a.name);
            }
            assert!(page.contains(&format!("var base = \"{base}\";")), "{base}");
        }
    }
}
