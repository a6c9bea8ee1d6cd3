//! Helpers for the tests that run `webfl serve` as a real process (`serve_process.rs`,
//! `kill_during_rounds.rs`, `connections.rs`): start it on an ephemeral port with a data folder, talk HTTP/1.1 to it
//! over fresh loopback connections, drive clients through check-in, download and upload.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use webfl_shared::params::Params;

pub const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");

pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `webfl serve --port 0` on `data` and waits for the address it prints.
    pub fn start(data: &std::path::Path) -> Server {
        Server::start_with(data, &[])
    }

    /// As `start`, with more arguments for `webfl serve` (e.g. `--config FILE`).
    pub fn start_with(data: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Server {
        Server::start_limited(data, extra, None)
    }

    /// As `start_with`, under `ulimit -n descriptors` when given.
    pub fn start_limited(data: &std::path::Path, extra: &[&std::ffi::OsStr], descriptors: Option<u32>) -> Server {
        assert!(
            std::path::Path::new(DATA_DIR).join("mnist.wfds").exists(),
            "data/mnist.wfds is missing: run scripts/setup first"
        );
        let ulimit = descriptors.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{ulimit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_webfl"))
            .args(["serve", "--port", "0", "--data"])
            .arg(data)
            .args(extra)
            .env("WEBFL_DATA_DIR", DATA_DIR)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting webfl serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading the serve banner");
        let addr = line
            .trim()
            .strip_prefix("webfl serving at http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// One HTTP/1.1 request over a fresh connection; returns status and body.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Vec<u8>) {
        try_request(&self.addr, method, path, headers, body, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends a POST on a fresh connection and hangs up without reading a byte of the answer.
    pub fn post_and_hang_up(&self, path: &str, headers: &[(&str, String)], body: &[u8], how: HangUp) {
        let mut stream = TcpStream::connect(&self.addr).expect("connecting");
        stream.write_all(head(&self.addr, "POST", path, headers, body.len()).as_bytes()).unwrap();
        match how {
            HangUp::AfterAll => stream.write_all(body).unwrap(),
            HangUp::ShutdownWrite => {
                stream.write_all(body).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
            }
            HangUp::Midway => stream.write_all(&body[..body.len() / 2]).unwrap(),
        }
        drop(stream);
    }

    pub fn json(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        let (status, body) = self.request(method, path, headers, body);
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, json)
    }

    pub fn kill(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().expect("killing the server");
        self.child.wait().expect("reaping the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
pub enum HangUp {
    /// The whole request, then close.
    AfterAll,
    /// The whole request, `shutdown(Write)` at once, then close.
    ShutdownWrite,
    /// Half the body, then close: the server must not take the update.
    Midway,
}

/// One HTTP/1.1 request to `addr` over a fresh connection: status and body, or the I/O error
/// (also for a response cut short, e.g. by a server killed mid-answer). For client threads that
/// must outlive the server they talk to.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    read_timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let cut_short = |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("response {what}"));
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.write_all(head(addr, method, path, headers, body.len()).as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| cut_short("head cut short"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| cut_short("status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(|| cut_short("body cut short"))?;
    }
    Ok((status, body))
}

/// As `try_request`, parsing the body as JSON.
pub fn try_json(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    read_timeout: Duration,
) -> std::io::Result<(u16, Value)> {
    let (status, body) = try_request(addr, method, path, headers, body, read_timeout)?;
    let json = serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((status, json))
}

fn head(addr: &str, method: &str, path: &str, headers: &[(&str, String)], content_length: usize) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {content_length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The body of a chunked response; `None` if it is cut short or malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).ok()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(end + 2..end + 2 + size)?);
        body = body.get(end + 2 + size + 2..)?;
    }
}

/// Two selected clients close a round by reporting; the 60 s deadline never comes into it, so a
/// round that does not close (or a next round that does not open) within seconds is a wedge.
pub const TWO_CLIENT_TASK: &str = r#"
name = "two-clients"
model = "2nn"
dataset = "mnist"

[rounds]
target_reports = 2
over_selection = 1.0
min_reports = 2
deadline_secs = 60
retry_after_secs = 0.5
"#;

/// Far below the 60 s deadline, far above a round's work (a 2NN evaluation and a store write).
pub const SETTLE_WITHIN: Duration = Duration::from_secs(10);

pub struct Identity {
    pub id: String,
    pub token: String,
}

/// A small pseudo-random delay (0..max_ms) from the clock: the trials' timing varies.
pub fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    Duration::from_millis(nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) % max_ms.max(1))
}

impl Server {
    pub fn status(&self) -> Value {
        let (status, json) = self.json("GET", "/api/status", &[], b"");
        assert_eq!(status, 200, "{json}");
        json
    }

    /// A first check-in: a fresh identity, assigned to `round` (trained from `version`).
    pub fn join(&self, round: u64, version: u64) -> Identity {
        let (status, json) =
            self.json("POST", "/api/v1/checkin", &[("Content-Type", "application/json".into())], b"{}");
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["status"], "assigned", "{json}");
        assert_eq!((json["round"].as_u64(), json["model_version"].as_u64()), (Some(round), Some(version)), "{json}");
        Identity { id: json["client_id"].as_str().unwrap().into(), token: json["token"].as_str().unwrap().into() }
    }

    /// One check-in of a known client, long-polling up to `wait_ms`.
    pub fn check_in(&self, who: &Identity, wait_ms: u64) -> Value {
        let body = serde_json::json!({ "client_id": who.id, "wait_ms": wait_ms }).to_string();
        let headers = [("Authorization", format!("Bearer {}", who.token)), ("Content-Type", "application/json".into())];
        let (status, json) = self.json("POST", "/api/v1/checkin", &headers, body.as_bytes());
        assert_eq!(status, 200, "{json}");
        json
    }

    /// Checks in (long-polling, as the pages do) until assigned; it must be `round` on `version`
    /// within SETTLE_WITHIN: a client told `retry` past that is a wedged server.
    pub fn assigned(&self, who: &Identity, round: u64, version: u64) {
        let started = Instant::now();
        loop {
            let json = self.check_in(who, 2_000);
            if json["status"] == "assigned" {
                assert_eq!(
                    (json["round"].as_u64(), json["model_version"].as_u64()),
                    (Some(round), Some(version)),
                    "{json}"
                );
                return;
            }
            assert_eq!(json["status"], "retry", "{json}");
            assert!(
                started.elapsed() < SETTLE_WITHIN,
                "still told to retry {:?} after round {round} should have opened: {json}; status {}",
                started.elapsed(),
                self.status()
            );
        }
    }

    /// An update trained from `version`: the global model nudged by `step`.
    pub fn update(&self, version: u64, step: f32) -> Vec<u8> {
        let (status, model) = self.request("GET", &format!("/api/v1/models/{version}"), &[], b"");
        assert_eq!(status, 200, "model {version}");
        let global = Params::from_safetensors_any(&model).unwrap();
        let mut local = global.clone();
        local.as_mut_slice().iter_mut().for_each(|v| *v += step);
        local.delta_from(&global).unwrap().to_safetensors().unwrap()
    }

    /// A normal upload; returns the status and the answer.
    pub fn upload(&self, who: &Identity, round: u64, version: u64, body: &[u8]) -> (u16, Value) {
        self.json("POST", &format!("/api/v1/rounds/{round}/update"), &upload_headers(who, version), body)
    }

    /// Polls `/api/status` until `model_version` is `version`, at most SETTLE_WITHIN.
    pub fn committed(&self, version: u64) {
        let started = Instant::now();
        loop {
            let status = self.status();
            if status["model_version"] == version {
                return;
            }
            assert!(
                started.elapsed() < SETTLE_WITHIN,
                "version {version} not committed {:?} after its round closed: {status}",
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn upload_headers(who: &Identity, version: u64) -> [(&'static str, String); 5] {
    [
        ("Authorization", format!("Bearer {}", who.token)),
        ("X-Webfl-Client", who.id.clone()),
        ("X-Webfl-Model-Version", version.to_string()),
        ("X-Webfl-Examples", "100".to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
    ]
}
