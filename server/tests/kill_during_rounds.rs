//! `webfl serve` killed with SIGKILL at random moments while clients run rounds against it, and
//! restarted on the same data folder each time. After every restart: each model version that
//! was announced before the kill (in `/api/status` or in an assignment) is served, and byte for
//! byte as before wherever a client had downloaded it; the round history has no version gaps;
//! the server answers again within seconds. After the last restart training goes on.
//!
//! `WEBFL_KILL_TRIALS` (default 3) sets the number of kills and `WEBFL_KILL_SEED` the random
//! moments; `scripts/soak-kill` runs many trials and prints the summary line.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use webfl_shared::params::Params;

/// Three clients for two reports a round: the third is selected too (over-selection) and finds
/// the round closed when it reports, as a straggler does. Rounds close by target within a few
/// hundred milliseconds, so a kill lands while clients train, in an open round, or in a commit.
const TASK: &str = r#"
name = "kill-during-rounds"
model = "2nn"
dataset = "mnist"

[rounds]
target_reports = 2
over_selection = 1.5
min_reports = 2
deadline_secs = 30
retry_after_secs = 0.2

# Every version is kept, so every announced one can be compared after a kill (retention itself
# is tested in guards.rs).
[server]
keep_last_versions = 1000000
"#;

const CLIENTS: usize = 3;
/// Clients run this long (uniformly drawn) before the kill.
const KILL_AFTER_MS: std::ops::Range<u64> = 100..2_500;
/// The restarted server must answer `/api/status` within this.
const RESTART_WITHIN: Duration = Duration::from_secs(10);
/// Every trial (run, kill, restart, checks) ends within this.
const TRIAL_WITHIN: Duration = Duration::from_secs(90);
/// How long a client "trains" between download and upload, drawn per round.
const TRAIN_MS: std::ops::Range<u64> = 20..150;
/// Client requests give up after this; a killed server resets their connections at once anyway.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What clients saw before the kills, kept across trials.
#[derive(Default)]
struct Seen {
    /// SHA-256 of each version's bytes, as first downloaded.
    digests: BTreeMap<u64, [u8; 32]>,
    /// The highest version announced in a status or an assignment.
    announced: u64,
    /// Versions downloaded twice with different bytes (must stay empty).
    changed: Vec<u64>,
    /// Accepted uploads.
    accepted: u64,
}

impl Seen {
    fn announce(&mut self, version: u64) {
        self.announced = self.announced.max(version);
    }

    fn downloaded(&mut self, version: u64, bytes: &[u8]) {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if *self.digests.entry(version).or_insert(digest) != digest {
            self.changed.push(version);
        }
    }
}

type Shared = Arc<Mutex<Seen>>;

/// xorshift64*: the kill moments, reproducible from the printed seed.
struct Moments(u64);

impl Moments {
    fn next_in(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        range.start + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % (range.end - range.start)
    }
}

fn json_u64(json: &Value, key: &str) -> std::io::Result<u64> {
    json[key].as_u64().ok_or_else(|| std::io::Error::other(format!("no {key} in {json}")))
}

/// A client as a page runs it, minus the training: check in (long-polling), download the
/// assigned version, upload `global + step − global`, again until `stop` or until the server is
/// gone (the first failed request ends it).
fn contribute(addr: &str, step: f32, stop: &AtomicBool, seen: &Shared) -> std::io::Result<()> {
    let (_, mut reply) = try_json(
        addr,
        "POST",
        "/api/v1/checkin",
        &[("Content-Type", "application/json".into())],
        b"{}",
        CLIENT_TIMEOUT,
    )?;
    let who = Identity {
        id: reply["client_id"].as_str().unwrap_or_default().into(),
        token: reply["token"].as_str().unwrap_or_default().into(),
    };
    while !stop.load(Ordering::Relaxed) {
        match reply["status"].as_str() {
            Some("assigned") => {
                let (round, version) = (json_u64(&reply, "round")?, json_u64(&reply, "model_version")?);
                seen.lock().unwrap().announce(version);
                let (status, model) =
                    try_request(addr, "GET", &format!("/api/v1/models/{version}"), &[], b"", CLIENT_TIMEOUT)?;
                assert_eq!(status, 200, "the assigned version {version} is not served");
                seen.lock().unwrap().downloaded(version, &model);
                // Training takes a while: the kill lands mid-round as often as mid-commit.
                std::thread::sleep(Duration::from_millis(TRAIN_MS.start) + jitter(TRAIN_MS.end - TRAIN_MS.start));
                let global = Params::from_safetensors_any(&model).expect("a served model parses");
                let mut delta = Params::zeros(global.layout().clone());
                delta.as_mut_slice().fill(step);
                let body = delta.to_safetensors().unwrap();
                let path = format!("/api/v1/rounds/{round}/update");
                let (status, _) = try_json(addr, "POST", &path, &upload_headers(&who, version), &body, CLIENT_TIMEOUT)?;
                // 409: the round closed without this client (it was over-selected); check in again.
                if status == 202 {
                    seen.lock().unwrap().accepted += 1;
                }
            }
            Some("done") => return Ok(()),
            _ => {} // retry: the long poll below waits
        }
        let body = serde_json::json!({ "client_id": who.id, "wait_ms": 1_000 }).to_string();
        let headers = [("Authorization", format!("Bearer {}", who.token)), ("Content-Type", "application/json".into())];
        (_, reply) = try_json(addr, "POST", "/api/v1/checkin", &headers, body.as_bytes(), CLIENT_TIMEOUT)?;
    }
    Ok(())
}

/// What an operator's dashboard does: polls `/api/status` and fetches every version it announces.
fn watch(addr: &str, stop: &AtomicBool, seen: &Shared) -> std::io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let (_, status) = try_json(addr, "GET", "/api/status", &[], b"", CLIENT_TIMEOUT)?;
        let version = json_u64(&status, "model_version")?;
        seen.lock().unwrap().announce(version);
        if !seen.lock().unwrap().digests.contains_key(&version) {
            let (code, model) =
                try_request(addr, "GET", &format!("/api/v1/models/{version}"), &[], b"", CLIENT_TIMEOUT)?;
            assert_eq!(code, 200, "the announced version {version} is not served");
            seen.lock().unwrap().downloaded(version, &model);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The clients and the watcher, running against `server` until it dies or `stop` is set.
fn start_traffic(server: &Server, stop: &Arc<AtomicBool>, seen: &Shared) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for i in 0..CLIENTS {
        let (addr, stop, seen) = (server.addr.clone(), stop.clone(), seen.clone());
        let step = if i % 2 == 0 { 0.001 } else { -0.0005 };
        threads.push(std::thread::spawn(move || {
            let _ = contribute(&addr, step, &stop, &seen);
        }));
    }
    let (addr, stop, seen) = (server.addr.clone(), stop.clone(), seen.clone());
    threads.push(std::thread::spawn(move || {
        let _ = watch(&addr, &stop, &seen);
    }));
    threads
}

fn stop_traffic(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a client thread panicked: see its message above");
    }
}

/// Starts `webfl serve` on `store`; returns it and how long until it answered `/api/status`.
fn start(store: &std::path::Path, task: &std::path::Path) -> (Server, Duration) {
    let started = Instant::now();
    let server = Server::start_with(store, &["--config".as_ref(), task.as_os_str()]);
    let (status, json) = server.json("GET", "/api/status", &[], b"");
    assert_eq!(status, 200, "{json}");
    (server, started.elapsed())
}

/// Older versions re-compared after each restart besides the new ones (a sample, so that a soak
/// of many trials stays linear in the number of versions).
const RECHECK_OLD: usize = 8;

/// What one restart's checks covered.
struct Checked {
    /// The restarted server's version; every version up to it has now been fetched once.
    version: u64,
    /// Versions compared byte for byte with what a client had downloaded before.
    compared: usize,
    /// Round numbers that no record has (rounds open at a kill are not recorded).
    skipped_rounds: usize,
}

/// The checks after a restart. Versions above `verified` (the highest one an earlier restart
/// checked) are all fetched; of the older ones `RECHECK_OLD` drawn by `moments`.
fn check_after_restart(
    server: &Server,
    seen: &mut Seen,
    verified: u64,
    moments: &mut Moments,
    trial: usize,
) -> Checked {
    let status = server.status();
    let version = status["model_version"].as_u64().expect("model_version");
    assert!(
        version >= seen.announced,
        "trial {trial}: version {} was announced before the kill, the restarted server is at {version}",
        seen.announced
    );
    // Every version is served; those a client had are unchanged.
    let old: Vec<u64> = (0..RECHECK_OLD).map(|_| moments.next_in(0..verified + 1)).collect();
    let mut compared = 0;
    for v in (0..=version).filter(|v| *v > verified || old.contains(v)) {
        let (code, model) = server.request("GET", &format!("/api/v1/models/{v}"), &[], b"");
        assert_eq!(code, 200, "trial {trial}: version {v} (of {version}) is not served after the restart");
        let digest: [u8; 32] = Sha256::digest(&model).into();
        match seen.digests.get(&v) {
            Some(before) => {
                assert_eq!(*before, digest, "trial {trial}: version {v} changed across the restart");
                compared += 1;
            }
            None => {
                seen.digests.insert(v, digest);
            }
        }
    }
    // The history: rounds in order, versions 1..=version each from exactly one round, no gaps.
    let (code, rounds) = server.json("GET", "/api/rounds", &[], b"");
    assert_eq!(code, 200, "{rounds}");
    let mut rounds: Vec<&Value> = rounds.as_array().expect("a list of rounds").iter().collect();
    rounds.sort_by_key(|r| r["round"].as_u64());
    let numbers: Vec<u64> = rounds.iter().map(|r| r["round"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "trial {trial}: round numbers repeat: {numbers:?}");
    let versions: Vec<u64> = rounds.iter().filter_map(|r| r["version"].as_u64()).collect();
    assert_eq!(versions, (1..=version).collect::<Vec<_>>(), "trial {trial}: version history has gaps: {rounds:?}");
    for r in &rounds {
        let produced = matches!(r["outcome"].as_str(), Some("closed" | "closed_by_deadline"));
        assert_eq!(produced, r["version"].is_u64(), "trial {trial}: {r}");
    }
    assert_eq!(status["rounds_completed"].as_u64(), Some(version), "trial {trial}: {status}");
    let skipped_rounds = numbers.last().map_or(0, |&last| last as usize - numbers.len());
    Checked { version, compared, skipped_rounds }
}

#[test]
fn sigkill_at_random_moments_during_rounds_loses_no_announced_version() {
    let trials: usize = std::env::var("WEBFL_KILL_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("WEBFL_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("kill -9: {trials} trials, WEBFL_KILL_SEED={seed}");
    let mut moments = Moments(seed);

    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task.toml");
    std::fs::write(&task, TASK).unwrap();
    let store = dir.path().join("store");
    let seen: Shared = Arc::default();
    let (mut server, first_start) = start(&store, &task);
    eprintln!("first start: {} ms", first_start.as_millis());

    let (mut restarts, mut compared_total, mut verified, mut skipped_rounds) = (Vec::new(), 0, 0, 0);
    let mut kills_in_open_round = 0;
    for trial in 1..=trials {
        let trial_started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = start_traffic(&server, &stop, &seen);
        let kill_after = moments.next_in(KILL_AFTER_MS);
        std::thread::sleep(Duration::from_millis(kill_after));
        let before = server.status();
        server.kill();
        stop_traffic(&stop, threads);
        seen.lock().unwrap().announce(before["model_version"].as_u64().unwrap());
        kills_in_open_round += u32::from(before["open_round"].is_u64());

        let (restarted, took) = start(&store, &task);
        server = restarted;
        let mut seen = seen.lock().unwrap();
        assert!(seen.changed.is_empty(), "versions served with different bytes: {:?}", seen.changed);
        let checked = check_after_restart(&server, &mut seen, verified, &mut moments, trial);
        verified = checked.version;
        compared_total += checked.compared;
        skipped_rounds = checked.skipped_rounds;
        restarts.push(took);
        eprintln!(
            "trial {trial}: killed after {kill_after} ms (last status: open round {}, version {}; announced {}); \
             restart {} ms; {} versions byte-identical; {} uploads accepted so far",
            before["open_round"],
            before["model_version"],
            seen.announced,
            took.as_millis(),
            checked.compared,
            seen.accepted,
        );
        assert!(took < RESTART_WITHIN, "trial {trial}: the restart took {took:?}");
        assert!(trial_started.elapsed() < TRIAL_WITHIN, "trial {trial} took {:?}", trial_started.elapsed());
    }

    // Training goes on after the last restart: the next version commits.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = start_traffic(&server, &stop, &seen);
    let at = server.status()["model_version"].as_u64().unwrap();
    server.committed(at + 1);
    stop_traffic(&stop, threads);

    let seen = seen.lock().unwrap();
    let max = restarts.iter().max().copied().unwrap_or_default();
    let mean = restarts.iter().sum::<Duration>().checked_div(restarts.len() as u32).unwrap_or_default();
    println!(
        "kill -9 summary: trials={trials} versions_checked={compared_total} versions_total={} \
         kills_in_open_round={kills_in_open_round} round_numbers_unrecorded={skipped_rounds} uploads_accepted={} \
         restart_max_ms={} restart_mean_ms={} seed={seed}",
        seen.digests.len(),
        seen.accepted,
        max.as_millis(),
        mean.as_millis(),
    );
}
