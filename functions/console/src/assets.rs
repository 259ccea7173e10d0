//! The console's files, embedded in the binary: plain HTML, CSS and ES modules, no build
//! step and nothing fetched from elsewhere at run time.

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../assets/", $name)),
        }
    };
}

/// The page every console view is drawn in (by app.js, from the JSON API).
pub const APP_PAGE: Asset = asset!("index.html", "text/html; charset=utf-8");
/// The login form: what a caller without the credential gets.
pub const LOGIN_PAGE: Asset = asset!("login.html", "text/html; charset=utf-8");

/// Files under `/console/assets/`: code and style only, no data, so served to anyone.
const FILES: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("list.js", "text/javascript; charset=utf-8"),
    asset!("run.js", "text/javascript; charset=utf-8"),
    asset!("logview.js", "text/javascript; charset=utf-8"),
    asset!("submit.js", "text/javascript; charset=utf-8"),
    asset!("login.js", "text/javascript; charset=utf-8"),
];

/// The file called `name`, if the console has one.
pub fn file(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|asset| asset.name == name)
}
