//! The live dashboard (`/`) and the browser client (`/rowcast.js`, its types at
//! `/rowcast.d.ts`), embedded in the binary.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppContext;

/// The dashboard page.
pub(crate) const INDEX_HTML: &str = include_str!("../../web/index.html");
/// The zero-dependency browser client.
pub(crate) const CLIENT_JS: &str = include_str!("../../web/rowcast.js");
/// The client's TypeScript declarations.
pub(crate) const CLIENT_DTS: &str = include_str!("../../web/rowcast.d.ts");

/// Routes of this module.
pub(crate) fn router() -> Router<AppContext> {
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    INDEX_HTML,
                )
            }),
        )
        .route("/rowcast.js", get(client_js))
        .route(
            "/rowcast.d.ts",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/typescript; charset=utf-8",
                    )],
                    CLIENT_DTS,
                )
            }),
        )
}

async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
}
