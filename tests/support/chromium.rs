//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ended by a NUL, commands on its fd 3, replies on its fd 4), so a test can let a
//! page run in real time — its polls meet a real server — then read the DOM and take a
//! screenshot. `--dump-dom --virtual-time-budget` would not do: virtual time runs the page's
//! timers back to back, a second of them in a millisecond of the server's time.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// How long one protocol command may take before the test gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The browsers tried, lightest first (Debian packages of the same names).
const BROWSERS: [&str; 2] = ["chromium-headless-shell", "chromium"];

/// The headless browser's path if one is installed. Without one the test skips, loudly, except
/// under CI, where a skip is a failure (scripts/setup.sh installs `chromium-headless-shell`).
pub fn find(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = BROWSERS
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs a headless Chromium and CI is set: run scripts/setup.sh (Debian package `chromium-headless-shell`)"
        );
        eprintln!("SKIPPED {test}: no chromium-headless-shell or chromium (Debian package `chromium-headless-shell`)");
    }
    found
}

/// A running browser with one page open; killed on drop.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    replies: Receiver<Value>,
    next_id: u64,
    /// The page's protocol session.
    session: Option<String>,
    /// Where its stderr goes (quoted when it fails).
    log: PathBuf,
}

impl Browser {
    /// Starts `browser` through `wrap` (say, `ip netns exec NS`; empty for none) with its
    /// profile in `profile` and its log in `log`.
    pub fn start(wrap: &[&str], browser: &Path, profile: &Path, log: &Path) -> Browser {
        // The shell puts the protocol pipe on the fds the browser expects: stdin as 3, stdout
        // as 4; its own stdin and stdout then go nowhere and to the log.
        let script = "exec \"$0\" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
            --remote-debugging-pipe --user-data-dir=\"$1\" 3<&0 4>&1 0</dev/null 1>&2";
        let (program, before) = wrap.split_first().map_or(("sh", &[][..]), |(p, rest)| (*p, rest));
        let mut cmd = Command::new(program);
        cmd.args(before);
        if !wrap.is_empty() {
            cmd.arg("sh");
        }
        cmd.arg("-c").arg(script).arg(browser).arg(profile);
        let log_file = std::fs::File::create(log).expect("browser log file");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", browser.display()));
        let commands = child.stdin.take().expect("stdin piped");
        let mut out = child.stdout.take().expect("stdout piped");
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            let (mut pending, mut buf) = (Vec::new(), [0u8; 64 * 1024]);
            while let Ok(n @ 1..) = out.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice(&message[..end]) else { continue };
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        Browser { child, commands, replies, next_id: 1, session: None, log: log.to_owned() }
    }

    /// The end of the browser's log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.char_indices().rev().nth(3000).map_or(0, |(i, _)| i);
        format!("browser log ({}):\n{}", self.log.display(), &text[start..])
    }

    /// Sends `method` (to the page, once one is open) and returns its result; panics on an
    /// error reply, or when none comes within [`COMMAND_TIMEOUT`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            panic!("{method}: the browser's pipe: {e}\n{}", self.log_tail());
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.replies.recv_timeout(left) {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{method}: no reply from the browser in {COMMAND_TIMEOUT:?}\n{}", self.log_tail())
                }
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: the browser exited\n{}", self.log_tail()),
            };
            // Events (no id) and replies to earlier commands are not this one's.
            if reply["id"] != json!(id) {
                continue;
            }
            assert!(reply.get("error").is_none(), "{method}: {}", reply["error"]);
            return reply["result"].clone();
        }
    }

    /// Opens `url` in a new page of `width` × `height` pixels; later calls go to that page.
    pub fn open(&mut self, url: &str, width: u32, height: u32) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached =
            self.call("Target.attachToTarget", json!({ "targetId": target["targetId"].clone(), "flatten": true }));
        self.session = Some(attached["sessionId"].as_str().expect("a session id").to_owned());
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// The value of `expression` in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {}", result["exceptionDetails"]);
        result["result"]["value"].clone()
    }

    /// The page's DOM as it is now.
    pub fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().expect("outerHTML is a string").to_owned()
    }

    /// Writes a PNG of the whole page (not just the window) to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, the browser takes its renderers with it; killed, they see the pipe
        // close and follow.
        let _ = self.commands.write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the protocol's binary data); panics on anything else.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", char::from(c)),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | value(c) << (18 - 6 * i));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips_the_padding_cases() {
        assert_eq!(super::base64_decode("aGk="), b"hi");
        assert_eq!(super::base64_decode("aGV5"), b"hey");
        assert_eq!(super::base64_decode("aGV5YQ=="), b"heya");
    }
}
