//! Driving real headless Chromium over WebDriver, for end-to-end tests of the web pages.
//!
//! Each test starts its own `chromedriver` ([`ChromeDriver`]) on a free loopback port, so tests run
//! in parallel; the guard shuts it down (and every browser it started) when it drops, even when
//! the test panics. Sessions are `fantoccini` clients ([`ChromeDriver::new_session`]) with separate
//! profiles, hence separate cookie jars and local storage: one can be the PC, another the phone.
//! Tests close their sessions with [`Client::close`].
//!
//! The two chromedriver extensions fantoccini has no method for (running a DevTools command, and
//! reading the browser console) go through [`Client::issue_cmd`].
//!
//! Chromium and chromedriver come from `scripts/install-chromium`; when they are missing the tests
//! fail and say so rather than skip.

use super::common::free_port;
use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Where `name` is on PATH, if anywhere.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn missing(what: &str) -> ! {
    panic!(
        "{what} not found on PATH: the browser tests need Chromium and chromedriver; \
         run scripts/install-chromium (as root or with sudo)"
    )
}

/// A private chromedriver; dropped = shut down, with every browser it started.
pub struct ChromeDriver {
    child: Option<Child>,
    port: u16,
    chromium: PathBuf,
    log: tempfile::NamedTempFile,
    /// The sessions' browser profiles: removed after the browsers are gone, even after a panic.
    profiles: Mutex<Vec<tempfile::TempDir>>,
}

impl ChromeDriver {
    /// Starts chromedriver on a free port and waits (at most 15 s) until it is ready.
    pub async fn start() -> Self {
        let chromium = std::env::var_os("CHROMIUM_BIN")
            .map(PathBuf::from)
            .or_else(|| on_path("chromium"))
            .unwrap_or_else(|| missing("chromium"));
        let driver = on_path("chromedriver").unwrap_or_else(|| missing("chromedriver"));
        let mut last_error = String::new();
        // The port is free when asked for but could be taken before chromedriver binds it: retry.
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::Builder::new()
                .prefix("latch-chromedriver-")
                .suffix(".log")
                .tempfile()
                .expect("chromedriver log file");
            let child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .arg("--log-level=WARNING")
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("log file"))
                .stderr(log.reopen().expect("log file"))
                // Its own process group, so Drop can take the browsers down with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {}: {e}", driver.display()));
            let mut this = Self {
                child: Some(child),
                port,
                chromium: chromium.clone(),
                log,
                profiles: Mutex::new(Vec::new()),
            };
            match this.wait_ready(Duration::from_secs(15)).await {
                Ok(()) => return this,
                Err(e) => {
                    last_error = format!("{e}; chromedriver log:\n{}", this.log_text());
                    this.kill();
                }
            }
        }
        panic!("chromedriver did not become ready: {last_error}")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Ready = it says it started on our port, still runs, and the port takes connections.
    async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let started = format!("started successfully on port {}", self.port);
        let outcome = tokio::time::timeout(limit, async {
            loop {
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(exit)) = child.try_wait() {
                        return Err(format!("chromedriver exited: {exit}"));
                    }
                }
                if self.log_text().contains(&started)
                    && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                        .await
                        .is_ok()
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(format!("not ready on port {} within {limit:?}", self.port)),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// A new headless Chromium session with a profile of its own (at most 30 s).
    pub async fn new_session(&self) -> Client {
        self.new_session_speaking("en-US,en").await
    }

    /// A new session whose browser asks for pages in `accept_languages` (`Accept-Language`).
    pub async fn new_session_speaking(&self, accept_languages: &str) -> Client {
        let profile = tempfile::Builder::new()
            .prefix("latch-chromium-")
            .tempdir()
            .expect("a browser profile directory");
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "unhandledPromptBehavior": "dismiss",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": self.chromium.to_string_lossy(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {"intl.accept_languages": accept_languages},
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("capabilities are a JSON object")
        };
        self.profiles.lock().unwrap().push(profile);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let url = self.url();
        tokio::time::timeout(Duration::from_secs(30), builder.connect(&url))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no new browser session within 30 s; chromedriver log:\n{}",
                    self.log_text()
                )
            })
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver would not start Chromium ({}): {e}\nchromedriver log:\n{}",
                    self.chromium.display(),
                    self.log_text()
                )
            })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Everything in its process group: chromedriver and the browsers it started.
            unsafe {
                libc::killpg(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.kill();
        // The profiles go when `profiles` drops, after the browsers that used them.
    }
}

/// A chromedriver extension command: `POST /session/{id}/{path}` with a JSON body.
#[derive(Debug)]
struct ChromeCommand {
    path: &'static str,
    body: Value,
}

// `reqwest` re-exports the `url` and `http` types the trait is written in.
impl WebDriverCompatibleCommand for ChromeCommand {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or("(no session)"),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &reqwest::Url) -> (reqwest::Method, Option<String>) {
        (reqwest::Method::POST, Some(self.body.to_string()))
    }
}

/// A command's error, short: the WebDriver error code and the first line of its message.
fn brief(e: &CmdError) -> String {
    match e {
        CmdError::Standard(e) => {
            format!("{} ({})", e.error(), e.message.lines().next().unwrap_or(""))
        }
        other => other.to_string(),
    }
}

/// Clicks the element as a user would: WebDriver refuses when something covers it.
pub async fn click(client: &Client, css: &str) {
    let element = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("finding {css}: {}", brief(&e)));
    element
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {}", brief(&e)));
}

/// Runs `source` in every document this session loads from now on, before the page's own
/// scripts (a DevTools command, through chromedriver).
pub async fn before_every_page(client: &Client, source: &str) {
    let cmd = ChromeCommand {
        path: "goog/cdp/execute",
        body: json!({
            "cmd": "Page.addScriptToEvaluateOnNewDocument",
            "params": { "source": source },
        }),
    };
    client
        .issue_cmd(cmd)
        .await
        .unwrap_or_else(|e| panic!("Page.addScriptToEvaluateOnNewDocument: {}", brief(&e)));
}

/// The page's console messages since last asked (for failure messages and checks).
pub async fn console_log(client: &Client) -> String {
    let cmd = ChromeCommand {
        path: "se/log",
        body: json!({ "type": "browser" }),
    };
    match client.issue_cmd(cmd).await {
        Ok(Value::Array(entries)) => entries
            .iter()
            .map(|e| {
                format!(
                    "  {} {}",
                    e["level"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Ok(other) => other.to_string(),
        Err(e) => format!("(no console log: {})", brief(&e)),
    }
}

/// What a failure message should show of the page: address, visible text, console.
pub async fn describe(client: &Client) -> String {
    let url = client
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_else(|e| brief(&e));
    let text = client
        .execute(
            "return document.body ? document.body.innerText : '';",
            vec![],
        )
        .await
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|e| brief(&e));
    format!(
        "page {url}\n--- text ---\n{}\n--- console ---\n{}",
        text.trim(),
        console_log(client).await
    )
}

/// Evaluates `script` (a function body) until it returns something other than null, false or "";
/// returns that. Fails after `limit`, naming `what`, the last value or error, and the page.
pub async fn wait_for_js(client: &Client, what: &str, limit: Duration, script: &str) -> Value {
    let mut last = String::from("(not evaluated yet)");
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match client.execute(script, vec![]).await {
                Ok(Value::Null) | Ok(Value::Bool(false)) => last = "null/false".into(),
                Ok(Value::String(s)) if s.is_empty() => last = "\"\"".into(),
                Ok(value) => return value,
                // e.g. in the middle of a navigation
                Err(e) => last = format!("error: {}", brief(&e)),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match outcome {
        Ok(value) => value,
        Err(_) => panic!(
            "timed out after {limit:?} waiting for {what}; last seen: {last}\n{}",
            describe(client).await
        ),
    }
}

/// Waits until the first element matching `css` has `attr` equal to `expected`.
pub async fn wait_for_attr(
    client: &Client,
    css: &str,
    attr: &str,
    expected: &str,
    limit: Duration,
) {
    wait_for_value(
        client,
        &format!("{css}[{attr}={expected:?}]"),
        limit,
        "const e = document.querySelector(arguments[0]); \
         return e ? e.getAttribute(arguments[1]) : '(no such element)';",
        vec![json!(css), json!(attr)],
        expected,
    )
    .await
}

/// Waits until the first element matching `css` has the text `expected` (trimmed).
pub async fn wait_for_text(client: &Client, css: &str, expected: &str, limit: Duration) {
    wait_for_value(
        client,
        &format!("{css} to read {expected:?}"),
        limit,
        "const e = document.querySelector(arguments[0]); \
         return e ? e.textContent.trim() : '(no such element)';",
        vec![json!(css)],
        expected,
    )
    .await
}

async fn wait_for_value(
    client: &Client,
    what: &str,
    limit: Duration,
    script: &str,
    args: Vec<Value>,
    expected: &str,
) {
    let mut seen = String::from("(not evaluated yet)");
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match client.execute(script, args.clone()).await {
                Ok(Value::String(s)) if s == expected => return,
                Ok(value) => seen = value.to_string(),
                Err(e) => seen = format!("error: {}", brief(&e)),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if outcome.is_err() {
        panic!(
            "timed out after {limit:?} waiting for {what}; last seen: {seen}\n{}",
            describe(client).await
        );
    }
}
