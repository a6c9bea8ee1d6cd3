//! `webfl serve` as a real process on an ephemeral port with a temporary data folder: a round
//! runs over real sockets, the server is killed with SIGKILL, and a restarted server resumes the
//! committed version with nothing lost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use webfl_shared::params::Params;

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts `webfl serve --port 0` on `data` and waits for the address it prints.
    fn start(data: &std::path::Path) -> Server {
        assert!(
            std::path::Path::new(DATA_DIR).join("mnist.wfds").exists(),
            "data/mnist.wfds is missing: run scripts/setup first"
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_webfl"))
            .args(["serve", "--port", "0", "--data"])
            .arg(data)
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
    fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("reading the response");
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let mut body = raw[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }

    fn json(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        let (status, body) = self.request(method, path, headers, body);
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, json)
    }

    fn kill(mut self) {
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

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
}

#[test]
fn sigkill_after_a_committed_round_loses_nothing_and_training_continues() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());

    // The default task closes a round at 4 updates.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (status, json) = server.json("POST", "/api/v1/checkin", &[], b"{}");
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["status"], "assigned", "{json}");
        assert_eq!((json["round"].as_u64(), json["model_version"].as_u64()), (Some(1), Some(0)));
        clients.push((json["client_id"].as_str().unwrap().to_string(), json["token"].as_str().unwrap().to_string()));
    }
    let (status, model0) = server.request("GET", "/api/v1/models/0", &[], b"");
    assert_eq!(status, 200);
    let global = Params::from_safetensors_any(&model0).unwrap();
    for (i, (id, token)) in clients.iter().enumerate() {
        let mut local = global.clone();
        local.as_mut_slice().iter_mut().for_each(|v| *v += 0.001 * (i as f32 + 1.0));
        let delta = local.delta_from(&global).unwrap().to_safetensors().unwrap();
        let headers = [
            ("Authorization", format!("Bearer {token}")),
            ("X-Webfl-Client", id.clone()),
            ("X-Webfl-Model-Version", "0".to_string()),
            ("X-Webfl-Examples", "100".to_string()),
            ("Content-Type", "application/octet-stream".to_string()),
        ];
        let (status, json) = server.json("POST", "/api/v1/rounds/1/update", &headers, &delta);
        assert_eq!(status, 202, "{json}");
    }
    let (_, before) = server.json("GET", "/api/status", &[], b"");
    assert_eq!(before["model_version"], 1, "{before}");
    let (_, model1) = server.request("GET", "/api/v1/models/1", &[], b"");
    server.kill();

    let server = Server::start(data.path());
    let (status, after) = server.json("GET", "/api/status", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(after["model_version"], 1, "{after}");
    assert_eq!(after["rounds_completed"], 1, "{after}");
    assert_eq!(after["test_accuracy"], before["test_accuracy"]);
    let (status, again) = server.request("GET", "/api/v1/models/1", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(again, model1, "the committed version must survive byte for byte");
    let (_, json) = server.json("POST", "/api/v1/checkin", &[], b"{}");
    assert_eq!((json["round"].as_u64(), json["model_version"].as_u64()), (Some(2), Some(1)), "{json}");
}

/// A task file with a mistake stops `webfl serve` before it binds, naming the problem.
#[test]
fn a_bad_task_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task.toml");
    std::fs::write(&task, "name = \"t\"\n[rounds]\ntarget_reports = 2\nmin_reports = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webfl"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&task)
        .arg("--data")
        .arg(dir.path().join("store"))
        .env("WEBFL_DATA_DIR", DATA_DIR)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("task.toml") && stderr.contains("minimum reports"), "{stderr}");
    assert!(!dir.path().join("store").exists(), "nothing may be created for a refused task");
}

/// `webfl export` writes exactly the stored bytes of a version (safetensors with PyTorch names),
/// and names the problem when the version or the store does not exist.
#[test]
fn export_writes_the_stored_version() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let (_, model0) = server.request("GET", "/api/v1/models/0", &[], b"");
    server.kill();
    let out = data.path().join("model.safetensors");
    let webfl = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_webfl")).args(args).output().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let ok = webfl(&["export", "--data", data_arg, "--out", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes, model0);
    let names: Vec<String> =
        Params::from_safetensors_any(&bytes).unwrap().layout().tensors().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["1.bias", "1.weight", "3.bias", "3.weight", "5.bias", "5.weight"]);
    let missing = webfl(&["export", "--data", data_arg, "--version", "7", "--out", out.to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no version 7"));
    let no_store = webfl(&["export", "--data", "/nonexistent", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&no_store.stderr).contains("no webfl store"));
}
