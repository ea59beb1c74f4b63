//! The page: plain HTML, CSS and JavaScript compiled into the binary, so that it works
//! offline and needs no build step and no CDN.

use hyper::StatusCode;

use super::http::{self, Resp};

const INDEX: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/style.css");
const APP: &str = include_str!("assets/app.js");
const FLEET: &str = include_str!("assets/fleet.js");
const LOGIN: &str = include_str!("assets/login.html");

/// The asset at `path`, if there is one.
pub fn get(path: &str) -> Option<Resp> {
    let (ty, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/style.css" => ("text/css; charset=utf-8", STYLE),
        "/app.js" => ("text/javascript; charset=utf-8", APP),
        "/fleet.js" => ("text/javascript; charset=utf-8", FLEET),
        _ => return None,
    };
    Some(http::full(StatusCode::OK, ty, body))
}

/// The login page, saying why it is shown again (`wrong`, `wait`), if it is.
pub fn login(why: &str) -> Resp {
    let message = match why {
        "wrong" => "Wrong password.",
        "wait" => "Too many wrong passwords: wait a minute, then try again.",
        _ => "",
    };
    http::full(
        StatusCode::OK,
        "text/html; charset=utf-8",
        LOGIN.replace("{{message}}", message),
    )
}
