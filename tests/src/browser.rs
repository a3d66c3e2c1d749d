//! A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the
//! web page tests: open a URL, run JavaScript in it, wait for what it shows, take screenshots.
//!
//! The protocol runs over `--remote-debugging-pipe` (JSON messages ended by a NUL byte on
//! descriptors 3 and 4 of the child): no port, no WebSocket client, nothing to build but this
//! file. Each browser has its own temp profile and process group, killed on drop.

use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long one protocol command may take (a navigation or screenshot on a loaded machine).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll step of [`Browser::wait_for`].
const STEP: Duration = Duration::from_millis(100);

/// Where the browser is: `CHROMIUM` when set, else Debian's.
pub fn chromium_bin() -> PathBuf {
    let bin = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.exists(),
        "{} not found: the web page tests need a real browser (`apt-get install chromium`, \
         or set CHROMIUM to its path)",
        bin.display()
    );
    bin
}

/// Where tests keep screenshots: `target/test-artifacts/` of this workspace (created).
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// One headless Chromium with one page open, attached.
pub struct Browser {
    child: Child,
    /// Commands go here (the child's descriptor 3).
    commands: File,
    /// Everything the browser sends, one parsed message each (read by a thread).
    messages: Receiver<Value>,
    next_id: u64,
    /// The page's session: commands for the page carry it.
    session: String,
    /// The profile directory, removed on drop.
    _profile: tempfile::TempDir,
    /// Console messages and uncaught exceptions of the page, for failure messages.
    pub console: Vec<String>,
}

/// A pipe whose two ends are above the descriptors the child will be given (3 and 4), so
/// `dup2` onto them never meets one of its own sources; both ends close on exec.
fn pipe_high() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `pipe2` writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    let high = |fd: RawFd| {
        // SAFETY: duplicating a descriptor we own; the original is closed right after.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(new >= 10, "fcntl: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is ours and not used again.
        unsafe { libc::close(fd) };
        new
    };
    (high(fds[0]), high(fds[1]))
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and opens `about:blank`.
    pub fn launch() -> Browser {
        let bin = chromium_bin();
        let profile = tempfile::tempdir().expect("browser profile dir");
        let (cmd_read, cmd_write) = pipe_high();
        let (msg_read, msg_write) = pipe_high();
        let mut command = Command::new(&bin);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(cmd_read, 3) < 0 || libc::dup2(msg_write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // SAFETY: the parent's ends are ours alone; the child's ends were duplicated into it.
        let (commands, replies) = unsafe {
            libc::close(cmd_read);
            libc::close(msg_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(msg_read))
        };
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            messages,
            next_id: 0,
            session: String::new(),
            _profile: profile,
            console: Vec::new(),
        };
        let target = browser.call_browser("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"]
            .as_str()
            .expect("createTarget gives a targetId")
            .to_string();
        let attached = browser.call_browser(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("attachToTarget gives a sessionId")
            .to_string();
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    /// Sends one command (to the page when `session` is set) and waits for its answer.
    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("encode a command");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: the browser is gone: {e}"));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) if m["id"] == json!(id) => {
                    if let Some(err) = m.get("error") {
                        panic!("{method} failed: {err}");
                    }
                    return m["result"].clone();
                }
                Ok(m) => self.note_event(&m),
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no answer in {CALL_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: the browser exited"),
            }
        }
    }

    /// Keeps what the page logged, so a failing test can say it.
    fn note_event(&mut self, m: &Value) {
        match m["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = m["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["value"].to_string())
                    .collect();
                self.console.push(format!(
                    "console.{}: {}",
                    m["params"]["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => self.console.push(format!(
                "exception: {}",
                m["params"]["exceptionDetails"]["exception"]["description"]
            )),
            _ => {}
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session))
    }

    /// Sets the viewport: `mobile` gives a phone's layout rules (viewport meta, touch).
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// Opens `url` (the page loads; wait for what it draws with [`Browser::wait_for`]).
    pub fn goto(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        if let Some(e) = r["errorText"].as_str() {
            panic!("cannot open {url}: {e}");
        }
    }

    /// Runs `expression` in the page (awaiting a promise) and returns its value as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("JavaScript failed: {expression}\n{e}");
        }
        r["result"]["value"].clone()
    }

    /// The page's text as a person reads it.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The whole DOM as HTML.
    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (bounded) until `condition` (JavaScript) is true in the page; panics with `what`,
    /// the page's text and its console otherwise.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, condition: &str) {
        let deadline = Instant::now() + timeout;
        let expr = format!(
            "(() => {{ try {{ return !!({condition}); }} catch (_) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&expr) == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let text = self.text();
                panic!(
                    "page: {what} not seen within {timeout:?}\n--- page text ---\n{text}\n--- console ---\n{}",
                    self.console.join("\n")
                );
            }
            std::thread::sleep(STEP);
        }
    }

    /// Waits until the page's text contains `needle`.
    pub fn wait_text(&mut self, timeout: Duration, needle: &str) {
        let cond = format!("document.body.innerText.includes({})", json!(needle));
        self.wait_for(timeout, &format!("text {needle:?}"), &cond);
    }

    /// Saves a PNG of the whole page (not only the viewport) to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let data = r["data"].as_str().expect("captureScreenshot gives data");
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Whether the page is wider than the viewport (a horizontal scroll bar on a phone).
    pub fn overflows_horizontally(&mut self) -> bool {
        self.eval("document.documentElement.scrollWidth > window.innerWidth") == json!(true)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its renderer, GPU and zygote processes.
        // SAFETY: signalling the process group this struct created (its leader's pid).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
