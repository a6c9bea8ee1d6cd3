//! `webfl serve` as a real process, attacked at the connection level on loopback: half-sent
//! headers, silent sockets and stalled bodies are cut off; connections beyond the limit are
//! answered `503` with `Retry-After`; under a lowered descriptor limit (`ulimit -n 256`) hundreds
//! of idle sockets neither exhaust descriptors nor wedge the server. Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Timeouts short enough for a test: headers (and idleness) 1 s, bodies 1 s.
const SHORT_TIMEOUTS: &str = "[server]\nheader_timeout_secs = 1.0\nbody_timeout_secs = 1.0\n";
/// Idle connections held long enough that the flood is over before any is cut off (so every
/// connection over the limit meets a full server), short enough for a test.
const HOLD_IDLE: &str = "[server]\nheader_timeout_secs = 4.0\n";

/// A server with its task file and data folder, gone when dropped.
struct Server {
    /// Held for its `Drop`, which stops the process.
    _process: common::Server,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `webfl serve` on port 0 with `task_file`, under `ulimit -n` when given.
    fn start(task_file: &str, descriptors: Option<u32>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("task.toml");
        std::fs::write(&task, task_file).unwrap();
        let process = common::Server::start_limited(
            &dir.path().join("data"),
            &["--config".as_ref(), task.as_os_str()],
            descriptors,
        );
        Server { addr: process.addr.clone(), _process: process, _dir: dir }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    /// `GET /api/status`, retried until it answers 200 or `within` passes; returns how long it took.
    fn answers_within(&self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            let answer = common::try_request(&self.addr, "GET", "/api/status", &[], b"", Duration::from_secs(10));
            if answer.is_ok_and(|(status, _)| status == 200) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// Everything the server sends until it closes (or 10 s pass), as text.
fn read_all(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// How long after `start` the server closed a connection we keep silent on (None: not within
/// 9 s), and what it said.
fn closed_after(start: Instant, stream: &mut TcpStream) -> (Option<Duration>, String) {
    let text = read_all(stream);
    let elapsed = start.elapsed();
    ((elapsed < Duration::from_secs(9)).then_some(elapsed), text)
}

#[test]
fn slow_and_silent_clients_are_cut_off() {
    let server = Server::start(SHORT_TIMEOUTS, None);
    let start = Instant::now();

    // Half-sent headers, then nothing.
    let mut half = server.connect();
    half.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    // A socket that never says anything.
    let mut silent = server.connect();
    // A check-in that declares 100 bytes and sends 2.
    let mut stalled = server.connect();
    stalled
        .write_all(b"POST /api/v1/checkin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{ ")
        .unwrap();
    // An upload that declares 1 GB (from an unknown client): refused before a byte of it is read.
    let mut huge = server.connect();
    huge.write_all(
        b"POST /api/v1/rounds/1/update HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nX-Webfl-Client: c\r\n\
          X-Webfl-Model-Version: 0\r\nX-Webfl-Examples: 1\r\nContent-Length: 1000000000\r\n\r\n",
    )
    .unwrap();

    let (huge_closed, huge_answer) = closed_after(start, &mut huge);
    let (half_closed, _) = closed_after(start, &mut half);
    let (silent_closed, _) = closed_after(start, &mut silent);
    let (stalled_closed, stalled_answer) = closed_after(start, &mut stalled);
    println!(
        "closed after: half-sent headers {half_closed:?}, silent {silent_closed:?}, stalled body {stalled_closed:?}"
    );
    assert!(half_closed.is_some(), "a connection with half-sent headers stays open");
    assert!(silent_closed.is_some(), "a silent connection stays open");
    assert!(stalled_closed.is_some(), "a stalled body keeps its connection");
    assert!(stalled_answer.starts_with("HTTP/1.1 408"), "{stalled_answer}");
    assert!(stalled_answer.contains(r#""error":"body_timeout""#), "{stalled_answer}");
    assert!(huge_answer.starts_with("HTTP/1.1 4"), "{huge_answer}");
    assert!(huge_closed.is_some_and(|t| t < Duration::from_millis(900)), "{huge_closed:?}: it waited for the body");
    assert!(server.answers_within(Duration::from_secs(5)).is_some(), "the server still answers");
}

#[test]
fn idle_sockets_cannot_exhaust_descriptors_under_a_low_ulimit() {
    // 256 descriptors: the server keeps 64 in reserve, so it holds at most 192 connections.
    let server = Server::start(HOLD_IDLE, Some(256));
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..400).map(|_| server.connect()).collect();
    // The connections over the limit are told so at once and closed.
    let mut shed = 0;
    let mut dropped = 0;
    for s in &mut idle[192..] {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 503") && text.contains("retry-after: 2"), "{text}");
                shed += 1;
            }
            Ok(_) => dropped += 1,
            // Still open: one of the held connections (the kernel's accept order is not ours).
            Err(_) => {}
        }
    }
    println!("400 idle sockets: {shed} answered 503 + Retry-After, {dropped} closed unanswered");
    assert!(shed >= 150, "only {shed} of the 208 connections over the limit were told 503");
    // While the idle ones are held, the server is alive; once the header timeout cuts them off
    // (4 s), a real request gets through.
    let took = server.answers_within(Duration::from_secs(10));
    println!("a real request answered {took:?} after the flood ({:?} since it began)", started.elapsed());
    assert!(took.is_some(), "the server is wedged");
    drop(idle);
    assert!(server.answers_within(Duration::from_secs(5)).is_some());
}

/// Reads one response from a keep-alive connection, `pause` after each 16 KiB of its body (a
/// slow reader); returns its status and body length, checked against its `content-length`.
fn read_response(stream: &mut TcpStream, pause: Duration) -> (u16, usize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("reading the head"), 1, "closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; length];
    for chunk in body.chunks_mut(16 * 1024) {
        stream.read_exact(chunk).expect("the whole body");
        std::thread::sleep(pause);
    }
    (status, length)
}

#[test]
fn a_keep_alive_connection_idles_between_requests_without_losing_any() {
    let server = Server::start(HOLD_IDLE, None);
    let mut stream = server.connect();
    let status = b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n";
    // Idle spells between requests: the server lets hyper go and takes the socket back.
    for _ in 0..3 {
        stream.write_all(status).unwrap();
        assert_eq!(read_response(&mut stream, Duration::ZERO).0, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    // A model (~800 KB) read slowly arrives whole: the answer is never cut to go idle.
    stream.write_all(b"GET /api/v1/models/0 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (code, length) = read_response(&mut stream, Duration::from_millis(5));
    assert_eq!(code, 200);
    assert!(length > 700_000, "{length} bytes");
    // A request sent in pieces, with a pause longer than any read, is still one request.
    stream.write_all(b"GET /api/sta").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"tus HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut stream, Duration::ZERO).0, 200);
    // Two requests in one write are both answered, in order.
    stream.write_all(&[&status[..], &status[..]].concat()).unwrap();
    assert_eq!(read_response(&mut stream, Duration::ZERO).0, 200);
    assert_eq!(read_response(&mut stream, Duration::ZERO).0, 200);
    // Then silent: closed after the idle timeout (4 s), not before.
    let start = Instant::now();
    let (closed, rest) = closed_after(start, &mut stream);
    let closed = closed.expect("closed within 9 s");
    assert!(closed >= Duration::from_secs(3), "closed after {closed:?}");
    assert!(rest.is_empty(), "{rest}");
}
