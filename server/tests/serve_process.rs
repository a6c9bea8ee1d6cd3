//! `webfl serve` as a real process on an ephemeral port with a temporary data folder: a round
//! runs over real sockets, the server is killed with SIGKILL, and a restarted server resumes the
//! committed version with nothing lost; a client that hangs up right after (or in the middle of)
//! sending its upload cannot stop the next round.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use webfl_shared::params::Params;

#[test]
fn sigkill_after_a_committed_round_loses_nothing_and_training_continues() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());

    // The default task closes a round at 4 updates.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (status, json) =
            server.json("POST", "/api/v1/checkin", &[("Content-Type", "application/json".into())], b"{}");
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
    // The fourth upload closed the round; its version is stored and announced in the background.
    server.committed(1);
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
    let (_, json) = server.json("POST", "/api/v1/checkin", &[("Content-Type", "application/json".into())], b"{}");
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

/// A task file changed under the same task name is not resumed under the new settings: the
/// restart is refused with the differences named, and the stored versions stay as they were.
#[test]
fn a_task_changed_under_the_same_name_is_refused_naming_the_differences() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task.toml");
    let store = dir.path().join("store");
    let serve = |text: &str| {
        std::fs::write(&task, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_webfl"))
            .args(["serve", "--port", "0", "--config"])
            .arg(&task)
            .arg("--data")
            .arg(&store)
            .env("WEBFL_DATA_DIR", DATA_DIR)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (line, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (banner, _) = serve("name = \"t\"\n[plan]\nepochs = 1\nbatch_size = 10\nlr = 0.1\n");
    assert!(banner.starts_with("webfl serving at"), "{banner}");
    // Same settings: resumes.
    let (banner, _) = serve("name = \"t\"\n[plan]\nepochs = 1\nbatch_size = 10\nlr = 0.1\n");
    assert!(banner.starts_with("webfl serving at"), "{banner}");
    // Another learning rate under the same name: refused before it serves, saying what changed.
    let (banner, stderr) = serve("name = \"t\"\n[plan]\nepochs = 1\nbatch_size = 10\nlr = 0.5\n");
    assert!(banner.is_empty(), "{banner}");
    assert!(stderr.contains("plan.lr: 0.1 → 0.5") && stderr.contains("other settings"), "{stderr}");
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

/// A client that hangs up right after sending its whole upload (or after `shutdown(Write)`, or
/// halfway through the body) cannot stop the server: the round still closes by its target and
/// commits, the next round opens at once, and both clients are assigned to it and close it. On
/// the old server an upload whose connection dropped mid-commit wedged it (9 of 10 trials).
#[test]
fn a_client_hanging_up_mid_upload_cannot_stop_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task.toml");
    std::fs::write(&task, TWO_CLIENT_TASK).unwrap();
    let server = Server::start_with(&dir.path().join("store"), &["--config".as_ref(), task.as_os_str()]);

    let hang_ups = [
        HangUp::AfterAll,
        HangUp::ShutdownWrite,
        HangUp::Midway,
        HangUp::AfterAll,
        HangUp::ShutdownWrite,
        HangUp::Midway,
    ];
    let (mut round, mut version) = (1, 0);
    let a = server.join(round, version);
    let b = server.join(round, version);
    let mut taken_despite_hang_up = 0;
    let started = Instant::now();
    for (trial, how) in hang_ups.into_iter().enumerate() {
        // A reports normally; the round waits for B.
        let (status, json) = server.upload(&a, round, version, &server.update(version, 0.001));
        assert_eq!((status, json["round_closed"].as_bool()), (202, Some(false)), "trial {trial}: {json}");
        std::thread::sleep(jitter(30));
        let path = format!("/api/v1/rounds/{round}/update");
        let body_b = server.update(version, -0.001);
        if let HangUp::Midway = how {
            // Half a body is no update: nothing changes, and B still owes its report.
            server.post_and_hang_up(&path, &upload_headers(&b, version), &body_b, how);
            std::thread::sleep(Duration::from_millis(100) + jitter(100));
            let status = server.status();
            assert_eq!((status["model_version"].as_u64(), status["open_round"].as_u64()), (Some(version), Some(round)));
            let json = server.check_in(&b, 0);
            assert_eq!((json["status"].as_str(), json["round"].as_u64()), (Some("assigned"), Some(round)), "{json}");
            let (status, json) = server.upload(&b, round, version, &body_b);
            assert_eq!((status, json["round_closed"].as_bool()), (202, Some(true)), "trial {trial}: {json}");
        } else {
            server.post_and_hang_up(&path, &upload_headers(&b, version), &body_b, how);
            std::thread::sleep(Duration::from_millis(100) + jitter(100));
            // The server either took the whole update (B has reported) or dropped the request
            // when the connection ended, before the update reached the round (B is still
            // assigned and uploads again, as a page does); never anything in between.
            let json = server.check_in(&b, 0);
            if json["status"] == "assigned" && json["round"] == round {
                let (status, json) = server.upload(&b, round, version, &body_b);
                let raced = status == 409 && json["error"] == "already_reported";
                assert!(status == 202 && json["round_closed"] == true || raced, "trial {trial}: {status} {json}");
                taken_despite_hang_up += raced as u32;
            } else {
                taken_despite_hang_up += 1;
            }
        }
        version += 1;
        server.committed(version);

        // The next round runs with both clients: assigned (the long poll ends as soon as it
        // opens), both report, and it commits.
        round += 1;
        server.assigned(&a, round, version);
        server.assigned(&b, round, version);
        let (status, json) = server.upload(&b, round, version, &server.update(version, 0.001));
        assert_eq!((status, json["round_closed"].as_bool()), (202, Some(false)), "trial {trial}: {json}");
        let (status, json) = server.upload(&a, round, version, &server.update(version, -0.001));
        assert_eq!((status, json["round_closed"].as_bool()), (202, Some(true)), "trial {trial}: {json}");
        version += 1;
        server.committed(version);
        round += 1;
        server.assigned(&a, round, version);
        server.assigned(&b, round, version);
        std::thread::sleep(jitter(50));
    }
    eprintln!(
        "{} hang-up trials in {:?}; {taken_despite_hang_up} of {} full uploads were taken although the client hung up",
        hang_ups.len(),
        started.elapsed(),
        hang_ups.iter().filter(|h| !matches!(h, HangUp::Midway)).count()
    );

    // Every round closed by its target (none by the deadline, none abandoned) with both reports.
    let (_, rounds) = server.json("GET", "/api/rounds", &[], b"");
    let rounds = rounds.as_array().unwrap();
    assert_eq!(rounds.len() as u64, version, "{rounds:?}");
    for r in rounds {
        assert_eq!((r["outcome"].as_str(), r["reports"].as_u64()), (Some("closed"), Some(2)), "{r}");
        let took = r["closed_at_ms"].as_u64().unwrap() - r["opened_at_ms"].as_u64().unwrap();
        assert!(took < SETTLE_WITHIN.as_millis() as u64, "round {} took {took} ms: {r}", r["round"]);
    }
}
