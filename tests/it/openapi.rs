//! Route coverage of `/openapi.json`: every route the API's routers serve is documented, with its
//! request body (for operations that read one) and a response schema.
//!
//! The routes are found by reading the routers' source (`api/src/**/*.rs`, every `.route(...)`
//! call), not from a hand-kept list, so a route added without docs fails here. The running app
//! then confirms the scan matches what it serves: each found route answers something other than
//! "no such route" (404 `no_such_route`) or 405. Browser pages (HTML, scripts, styles) are not part
//! of the JSON API; they are named below one by one, so nothing else can hide among them.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Pages and assets for browsers: HTML/JS/CSS, or a redirect a browser follows. Not JSON API.
const BROWSER_PAGES: &[&str] = &[
    "/login",
    "/app/qr",
    "/console",
    "/web/login.js",
    "/web/app.js",
    "/web/console.js",
    "/web/latch.css",
    "/lockers/app",
    "/web/lockers.js",
    "/lockers/kiosk/{site}",
    "/web/kiosk.js",
    "/m/c/{device_id}",
    "/m/auth/callback",
    "/m/cabinet/{device_id}",
    "/m/orders/{session_id}",
    "/web/shop.js",
    "/ops",
    "/web/ops.js",
];

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

/// (method, path) of every `.route("path", ...)` call in `dir`, read from source.
fn scan_routes(dir: &Path, out: &mut BTreeSet<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read api/src") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan_routes(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&path).unwrap();
            scan_file(&src, out);
        }
    }
}

fn scan_file(src: &str, out: &mut BTreeSet<(String, String)>) {
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let args = rest.trim_start();
        let Some(args) = args.strip_prefix('"') else {
            continue;
        };
        let end = args.find('"').expect("closing quote");
        let route = &args[..end];
        // The method router: up to the parenthesis closing `.route(`.
        let mut depth = 1;
        let mut close = 0;
        for (i, c) in args[end..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = end + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let methods = &args[end + 1..close];
        let mut found = false;
        for m in METHODS {
            let needle = format!("{m}(");
            let mut from = 0;
            while let Some(i) = methods[from..].find(&needle) {
                let pos = from + i;
                let before = methods[..pos].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    out.insert((m.to_string(), route.to_string()));
                    found = true;
                }
                from = pos + needle.len();
            }
        }
        assert!(found, "no method found for route {route}: {methods}");
    }
}

/// A concrete URL for a templated path: any value will do, the router matches on shape.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "00000000-0000-7000-8000-000000000000"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_is_in_openapi_with_schemas() {
    let mut routes = BTreeSet::new();
    scan_routes(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("api/src"),
        &mut routes,
    );
    assert!(routes.len() > 50, "scan found too few routes: {routes:?}");
    for page in BROWSER_PAGES {
        assert!(
            routes.iter().any(|(_, p)| p == page),
            "{page} is listed as a browser page but no longer served; remove it from the list"
        );
    }

    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut missing = Vec::new();
    for (method, path) in &routes {
        // The scan matches what is served.
        let url = format!("{}{}", app.address, concrete(path));
        let req = app
            .http
            .request(method.to_uppercase().parse().unwrap(), &url)
            .bearer_auth(&app.operator);
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}: scanned but not served");
        assert!(
            !(status == 404 && body.contains("no_such_route")),
            "{method} {path}: scanned but not served"
        );

        if BROWSER_PAGES.contains(&path.as_str()) || path == "/openapi.json" {
            continue;
        }
        let Some(op) = doc["paths"][path.as_str()].get(method.as_str()) else {
            missing.push(format!("{} {path}: not documented", method.to_uppercase()));
            continue;
        };
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        if responses.is_empty() {
            missing.push(format!("{} {path}: no responses", method.to_uppercase()));
        }
        let any_schema = responses
            .values()
            .any(|r| r["content"].as_object().is_some_and(|c| !c.is_empty()));
        if !any_schema {
            missing.push(format!(
                "{} {path}: no response body schema",
                method.to_uppercase()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json:\n{}",
        missing.join("\n")
    );

    // Nothing documented that is not served.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                assert!(
                    routes.contains(&(method.clone(), path.clone())),
                    "{method} {path} documented but not served"
                );
            }
        }
    }
}
