//! `GET /console`: a page for operators over the ops API (plain HTML, CSS and a little
//! JavaScript shipped in the crate): each processor with its position and a lag bar, each
//! relay with its breaker, the dead letters with their reason and a retry button that asks
//! for the token.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("console/console.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console's three routes.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let page = || async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) };
    let script = || async {
        let kind = "text/javascript; charset=utf-8";
        ([(header::CONTENT_TYPE, kind)], SCRIPT).into_response()
    };
    let style = || async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) };
    Router::new()
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
}
