//! `webfl loadtest`: many simulated clients against a server on this machine, each on its own
//! keep-alive connection, doing what browsers do — register, poll with check-ins, upload
//! encoded updates when assigned — for a bounded time. It reports latency percentiles per
//! request kind, accepted uploads per second, every error by status, and the server's peak
//! memory (RSS). Loopback only: it refuses any other address.
//!
//! Without `--url` it starts `webfl serve` itself with a load task (the CNN, `topk:0.01+q8`
//! uploads, every client in each round, no rate limits), so the numbers are the server's
//! capacity rather than its limits.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use serde::Serialize;
use webfl_shared::codec::ErrorFeedback;
use webfl_shared::params::Params;
use webfl_shared::pipeline;
use webfl_shared::protocol::{AssignmentTerms, CheckInResponse, UPDATE_CONTENT_TYPE, header as h};

/// The task a started server runs: uploads as in the issue's target (CNN, top-1 % + 8-bit), one
/// round of every client, nothing rate-limited.
fn load_task(clients: usize) -> String {
    format!(
        "name = \"loadtest\"\nmodel = \"cnn\"\ncompression = \"topk:0.01+q8\"\n\
         [rounds]\ntarget_reports = {clients}\nover_selection = 1.0\nmin_reports = 1\ndeadline_secs = 30\n\
         retry_after_secs = 2\n\
         [server]\nregistrations_per_minute = 0\ncheckins_per_minute = 0\nuploads_per_minute = 0\n\
         requests_per_minute_per_address = 0\n"
    )
}

#[derive(Args)]
pub struct LoadtestArgs {
    /// Simulated clients, each on its own connection.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds of load after the clients have registered.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// A running server on this machine to load (e.g. http://127.0.0.1:8080); without it one is
    /// started with the load task.
    #[arg(long)]
    url: Option<String>,
    /// The running server's process id, to sample its memory.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Task file for the server this starts [default: the load task above].
    #[arg(long, conflicts_with = "url")]
    config: Option<PathBuf>,
    /// Check-ins long-poll for up to this many milliseconds, as browsers do (0: plain polls
    /// every `retry_after`); check-in latencies then include the time the server held them.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Latencies of one kind of request, in microseconds.
#[derive(Default)]
struct Samples(Vec<u32>);

impl Samples {
    fn add(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    fn summary(mut self) -> Latency {
        self.0.sort_unstable();
        let at = |q: f64| {
            let v = &self.0;
            if v.is_empty() { 0.0 } else { f64::from(v[((v.len() - 1) as f64 * q).round() as usize]) / 1000.0 }
        };
        Latency { count: self.0.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

#[derive(Serialize)]
struct Latency {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// What one simulated client saw.
#[derive(Default)]
struct Tally {
    register: Samples,
    check_in: Samples,
    upload: Samples,
    accepted: u64,
    /// `409`: the round moved on without the update (not an error).
    late: u64,
    /// `429`/`503`: told to come back later (load shedding, not an error).
    shed: u64,
    /// Connections the server closed between requests (after a refusal it did not read the body
    /// of), opened again as a browser does.
    reconnects: u64,
    /// Refusals and failures by status (`0`: the connection failed).
    errors: std::collections::BTreeMap<u16, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, status: u16, what: String) {
        *self.errors.entry(status).or_default() += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: Tally) {
        self.register.0.extend(other.register.0);
        self.check_in.0.extend(other.check_in.0);
        self.upload.0.extend(other.upload.0);
        self.accepted += other.accepted;
        self.late += other.late;
        self.shed += other.shed;
        self.reconnects += other.reconnects;
        for (status, n) in other.errors {
            *self.errors.entry(status).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    seconds: f64,
    register: Latency,
    check_in: Latency,
    upload: Latency,
    uploads_accepted: u64,
    uploads_accepted_per_s: f64,
    uploads_late: u64,
    /// Requests answered `429` or `503` (come back later).
    shed: u64,
    /// Keep-alive connections the server closed between requests, opened again.
    reconnects: u64,
    errors: std::collections::BTreeMap<u16, u64>,
    first_error: Option<String>,
    server_peak_rss_mib: Option<f64>,
}

/// One client's connection: requests go out one at a time, as from a browser tab.
struct Connection {
    send: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    host: String,
    reconnects: u64,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await.context("connecting")?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { send, addr, host: addr.to_string(), reconnects: 0 })
    }

    /// Sends one request, first opening the connection again if the server closed it (as it
    /// does after refusing a body it did not read).
    async fn call(&mut self, req: hyper::http::request::Builder, body: Bytes) -> Result<(u16, Bytes)> {
        if self.send.ready().await.is_err() {
            let reconnects = self.reconnects + 1;
            *self = Self::open(self.addr).await?;
            self.reconnects = reconnects;
            self.send.ready().await?;
        }
        let req = req.header(hyper::header::HOST, &self.host).body(Full::new(body))?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// The update body every client uploads: a small random Δ put through the task's pipeline
/// (made once, from the first assignment's terms).
fn update_body(terms: &AssignmentTerms) -> Result<Bytes> {
    let layout = Arc::new(terms.model.layout()?);
    let mut rng = webfl_shared::rng::derive(0, &[7]);
    let values = (0..layout.len()).map(|_| rng.random_range(-0.01f32..0.01)).collect();
    let mut delta = Params::from_vec(layout.clone(), values)?;
    let mut memory = ErrorFeedback::new(layout.len());
    let prepared = pipeline::prepare(&mut delta, &terms.update, Some(&mut memory), &mut rng.clone(), &mut rng)?;
    Ok(Bytes::from(prepared.body))
}

struct Shared {
    addr: SocketAddr,
    until: OnceLock<Instant>,
    body: OnceLock<Bytes>,
    registered: AtomicU64,
    stop: AtomicBool,
    /// The check-ins' long-poll `wait_ms` (0: none).
    wait_ms: u64,
}

async fn client(shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::default();
    let json = |builder: hyper::http::request::Builder| {
        builder.method("POST").uri("/api/v1/checkin").header(hyper::header::CONTENT_TYPE, "application/json")
    };
    let mut conn = match Connection::open(shared.addr).await {
        Ok(c) => c,
        Err(e) => {
            tally.error(0, format!("{e:#}"));
            shared.registered.fetch_add(1, Ordering::SeqCst);
            return tally;
        }
    };
    let started = Instant::now();
    let registered = conn.call(json(hyper::Request::builder()), Bytes::from_static(b"{}")).await;
    shared.registered.fetch_add(1, Ordering::SeqCst);
    let (id, token) = match registered {
        Ok((200, body)) => {
            tally.register.add(started.elapsed());
            match serde_json::from_slice::<CheckInResponse>(&body) {
                Ok(r) => {
                    let (id, token) = r.identity();
                    (id.to_string(), token.to_string())
                }
                Err(e) => {
                    tally.error(200, format!("registration answer: {e}"));
                    return tally;
                }
            }
        }
        Ok((status, body)) => {
            tally.error(status, format!("registration: {status} {}", String::from_utf8_lossy(&body)));
            return tally;
        }
        Err(e) => {
            tally.error(0, format!("registration: {e:#}"));
            return tally;
        }
    };
    // Wait for everyone to register, then spread the first check-ins over two seconds.
    let until = loop {
        if let Some(until) = shared.until.get() {
            break *until;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spread_ms = rand::rng().random_range(0..2000);
    tokio::time::sleep(Duration::from_millis(spread_ms)).await;
    let auth = format!("Bearer {token}");
    let check_in_body = match shared.wait_ms {
        0 => Bytes::from(format!(r#"{{"client_id":"{id}"}}"#)),
        wait_ms => Bytes::from(format!(r#"{{"client_id":"{id}","wait_ms":{wait_ms}}}"#)),
    };
    while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let answer = conn
            .call(json(hyper::Request::builder()).header(hyper::header::AUTHORIZATION, &auth), check_in_body.clone())
            .await;
        let response = match answer {
            Ok((200, body)) => {
                tally.check_in.add(sent.elapsed());
                match serde_json::from_slice::<CheckInResponse>(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        tally.error(200, format!("check-in answer: {e}"));
                        break;
                    }
                }
            }
            Ok((429 | 503, _)) => {
                tally.shed += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Ok((status, body)) => {
                tally.error(status, format!("check-in: {status} {}", String::from_utf8_lossy(&body)));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tally.error(0, format!("check-in: {e:#}"));
                break;
            }
        };
        let wait_ms = match response {
            CheckInResponse::Assigned { round, model_version, terms, .. } => {
                let body = match shared.body.get() {
                    Some(b) => b.clone(),
                    None => match update_body(&terms) {
                        Ok(b) => shared.body.get_or_init(|| b).clone(),
                        Err(e) => {
                            tally.error(0, format!("preparing an update: {e:#}"));
                            break;
                        }
                    },
                };
                let req = hyper::Request::builder()
                    .method("POST")
                    .uri(format!("/api/v1/rounds/{round}/update"))
                    .header(hyper::header::AUTHORIZATION, &auth)
                    .header(hyper::header::CONTENT_TYPE, UPDATE_CONTENT_TYPE)
                    .header(h::CLIENT, &id)
                    .header(h::MODEL_VERSION, model_version.to_string())
                    .header(h::EXAMPLES, "10");
                let sent = Instant::now();
                match conn.call(req, body).await {
                    Ok((202, _)) => {
                        tally.upload.add(sent.elapsed());
                        tally.accepted += 1;
                    }
                    Ok((409, _)) => {
                        tally.upload.add(sent.elapsed());
                        tally.late += 1;
                    }
                    Ok((429 | 503, _)) => {
                        // As a browser does: the update is dropped and the client backs off.
                        tally.shed += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Ok((status, body)) => {
                        tally.error(status, format!("upload: {status} {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => {
                        tally.error(0, format!("upload: {e:#}"));
                        break;
                    }
                }
                0
            }
            CheckInResponse::Retry { retry_after_ms, .. } => retry_after_ms,
            CheckInResponse::Done { .. } => break,
        };
        if wait_ms > 0 {
            // ±20 % jitter, as real clients drift apart.
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::time::sleep(Duration::from_millis((wait_ms as f64 * jitter) as u64)).await;
        }
    }
    tally.reconnects = conn.reconnects;
    tally
}

/// The server's resident memory in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Resolves `url` and refuses anything but this machine.
fn loopback(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("http://").context("only http:// URLs on this machine")?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let addr = host_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} has no address"))?;
    if !addr.ip().is_loopback() {
        bail!("{url} is not this machine ({}): the load test only sends traffic to loopback", addr.ip());
    }
    Ok(addr)
}

/// A `webfl serve` child started for the test; killed when dropped.
struct Started {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &LoadtestArgs) -> Result<(Started, SocketAddr)> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let config = match &args.config {
        Some(path) => path.clone(),
        None => {
            let path = dir.path().join("loadtest.toml");
            std::fs::write(&path, load_task(args.clients))?;
            path
        }
    };
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting webfl serve")?;
    let mut banner = String::new();
    std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut banner)?;
    let started = Started { child, _dir: dir };
    let url =
        banner.trim().strip_prefix("webfl serving at ").with_context(|| format!("unexpected banner {banner:?}"))?;
    Ok((started, loopback(url)?))
}

pub fn run(args: &LoadtestArgs) -> Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= 3600.0, "--seconds must be in (0, 3600]");
    anyhow::ensure!(
        args.wait_ms <= webfl_shared::protocol::MAX_CHECK_IN_WAIT_MS,
        "--wait-ms must be at most {} (the server holds a check-in no longer)",
        webfl_shared::protocol::MAX_CHECK_IN_WAIT_MS
    );
    // One descriptor per client connection.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (started, addr, pid) = match &args.url {
        Some(url) => (None, loopback(url)?, args.pid),
        None => {
            let (started, addr) = start_server(args)?;
            let pid = started.child.id();
            (Some(started), addr, Some(pid))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(load(args, addr, pid))?;
    drop(started);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let errors: u64 = report.errors.values().sum();
    if errors > 0 {
        bail!("{errors} requests failed (first: {})", report.first_error.as_deref().unwrap_or("?"));
    }
    Ok(())
}

async fn load(args: &LoadtestArgs, addr: SocketAddr, pid: Option<u32>) -> Result<Report> {
    let shared = Arc::new(Shared {
        addr,
        until: OnceLock::new(),
        body: OnceLock::new(),
        registered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        wait_ms: args.wait_ms,
    });
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|pid| {
        let (peak, shared) = (peak_rss.clone(), shared.clone());
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(mib) = rss_mib(pid) {
                    peak.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let bar = indicatif::ProgressBar::new(args.clients as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len}")?);
    bar.set_message("registering");
    let tasks: Vec<_> = (0..args.clients).map(|_| tokio::spawn(client(shared.clone()))).collect();
    let ramp = Instant::now();
    while shared.registered.load(Ordering::SeqCst) < args.clients as u64 && ramp.elapsed() < Duration::from_secs(120) {
        bar.set_position(shared.registered.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load_started = Instant::now();
    let until = load_started + Duration::from_secs_f64(args.seconds);
    let _ = shared.until.set(until);
    bar.set_length((args.seconds * 10.0) as u64);
    bar.set_message("load");
    while Instant::now() < until {
        bar.set_position((load_started.elapsed().as_secs_f64() * 10.0) as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let mut total = Tally::default();
    for task in tasks {
        // Bounded: a client still waiting on an answer is given the server's long-poll ceiling.
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => total.error(0, format!("client task: {e}")),
            Err(_) => total.error(0, "a client hung for 30 s after the end".into()),
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let seconds = load_started.elapsed().as_secs_f64();
    let peak = peak_rss.load(Ordering::Relaxed);
    Ok(Report {
        clients: args.clients,
        seconds,
        uploads_accepted: total.accepted,
        uploads_accepted_per_s: total.accepted as f64 / args.seconds,
        uploads_late: total.late,
        shed: total.shed,
        reconnects: total.reconnects,
        register: total.register.summary(),
        check_in: total.check_in.summary(),
        upload: total.upload.summary(),
        errors: total.errors,
        first_error: total.first_error,
        server_peak_rss_mib: (peak > 0).then(|| peak as f64 / 1024.0),
    })
}

fn print_report(r: &Report) {
    println!("{} clients, {:.1} s of load", r.clients, r.seconds);
    for (name, l) in [("register", &r.register), ("check-in", &r.check_in), ("upload", &r.upload)] {
        println!(
            "  {name:<9} {:>8} requests   p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
            l.count, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    println!(
        "  uploads   {} accepted ({:.0}/s), {} after their round moved on (409)",
        r.uploads_accepted, r.uploads_accepted_per_s, r.uploads_late
    );
    println!(
        "  shed      {} requests told to come back later (429/503); {} connections opened again",
        r.shed, r.reconnects
    );
    let errors: u64 = r.errors.values().sum();
    println!("  errors    {errors} {:?}", r.errors);
    if let Some(e) = &r.first_error {
        println!("            first: {e}");
    }
    match r.server_peak_rss_mib {
        Some(mib) => println!("  server    peak RSS {mib:.0} MiB"),
        None => println!("  server    RSS not sampled (give --pid)"),
    }
}
