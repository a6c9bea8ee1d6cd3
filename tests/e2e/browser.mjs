// End-to-end: a real `webfl serve` process and real headless Chromium pages.
//
// The main phase is the README's scenario exactly as a user gets it: `webfl serve` with no
// --config (the default task: MNIST 2NN, 4 updates per round, over-selection 1.3, 60 s deadline)
// and four pages, each with its own non-overlapping quarter of the MNIST training split. The
// server's test accuracy must reach 90% in ≥ 10 rounds, and no round after the first may last
// more than 3× the slowest client's download + train + upload time: a round that waits for
// anything but its clients' work (a deadline, a retry) fails the run. On the way: a reloaded tab
// resumes its identity, SIGKILL + restart of the server loses no committed version and training
// continues, and a page closed mid-round (a fifth page having joined) does not stall the round.
// Then a private task and a WebGPU phase, each on its own task file. The dashboard is
// screenshotted. Writes out/e2e/{report.json,dashboard.png,server-*.log}; exits non-zero on any
// failure.
//
// Needs: the release `webfl` binary (WEBFL_BIN, else $CARGO_TARGET_DIR or target/release/webfl),
// www/dist (scripts/build-web), data/mnist.wfds, /usr/bin/chromium (or CHROMIUM).

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, createWriteStream } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const ROOT = new URL("../..", import.meta.url).pathname;
const OUT = join(ROOT, "out/e2e");
const BIN = process.env.WEBFL_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), "release/webfl");
const PAGES = 4;
const TARGET_ACCURACY = 0.9;
const MIN_ROUNDS = 10;
/** No round after the first may last longer than this many times the slowest client's work. */
const MAX_ROUND_TO_CLIENT = 3;
/** The default task's round deadline: a page closed mid-round must not make the round wait for it. */
const DEFAULT_DEADLINE_S = 60;

const STARTED = Date.now();
let failures = 0;
const checks = [];
function check(name, ok, detail = "") {
  checks.push({ name, ok, detail });
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? ` — ${detail}` : ""}`);
  if (!ok) failures++;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, fn, timeoutMs, everyMs = 250) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch((e) => {
      if (e.message.includes("stopped:")) throw e;
      return undefined;
    });
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(everyMs);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/** Starts `webfl serve` (the default task unless `task` names a task file); resolves once it prints its address. */
function startServer(port, dataDir, logName, task = null) {
  const log = createWriteStream(join(OUT, logName));
  const config = task ? ["--config", resolve(ROOT, task)] : [];
  const child = spawn(
    BIN,
    ["serve", "--port", String(port), "--data", dataDir, "--www", join(ROOT, "www/dist"), ...config],
    { cwd: ROOT, env: { ...process.env, RUST_LOG: "info,webfl_server::service=debug", NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stderr.pipe(log);
  child.serverLog = [];
  child.stderr.on("data", (d) => child.serverLog.push(...d.toString().split("\n")));
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("webfl serving at")) resolve(child);
    });
    child.on("exit", (code) => reject(new Error(`webfl serve exited with ${code} before serving (see ${logName})`)));
  });
}

/** Peak resident memory of a live process (VmHWM), in MiB. */
function peakMemoryMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");
function serverTimings(lines) {
  const field = (line, name) => Number(new RegExp(`${name}=(\\d+)`).exec(stripAnsi(line))?.[1]);
  const agg = lines.filter((l) => l.includes("update aggregated")).map((l) => field(l, "aggregate_us") / 1000);
  const commits = lines.filter((l) => l.includes("new model version"));
  return {
    aggregate_ms_per_update: agg,
    evaluate_ms: commits.map((l) => field(l, "eval_ms")),
    store_ms: commits.map((l) => field(l, "store_ms")),
  };
}

const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

/**
 * Each committed round's wall time (closed_at_ms − opened_at_ms) against the clients' own work
 * (a `round` event's download_ms + train_ms + upload_ms), and the idle gap between one round's
 * close and the next round's open. Rounds are marked with what the test did to the pages or the
 * server while they ran (a reload, a kill and restart, a page closed or added); the timing check
 * is on the undisturbed rounds — the README's steady scenario — and the others are reported.
 */
function roundPace(rounds, events, disturbances) {
  const work = (e) => e.download_ms + e.train_ms + e.upload_ms;
  const slowest = Math.max(...events.map(work));
  const byRound = [...rounds].sort((a, b) => a.opened_at_ms - b.opened_at_ms);
  const roundAt = (ms) => byRound.find((r) => r.closed_at_ms >= ms);
  const perRound = byRound
    .filter((r) => r.version !== null)
    .map((r) => {
      const mine = events.filter((e) => e.round === r.round).map(work);
      const duration_ms = r.closed_at_ms - r.opened_at_ms;
      const own = mine.length ? Math.max(...mine) : NaN;
      return {
        round: r.round,
        outcome: r.outcome,
        reports: `${r.reports}/${r.selected}`,
        duration_ms,
        slowest_client_ms: Math.round(own),
        ratio_to_own_slowest_client: +(duration_ms / own).toFixed(2),
        ratio_to_run_slowest_client: +(duration_ms / slowest).toFixed(2),
        // What the test did while this round was open (or, between rounds, just before it opened).
        during: disturbances.filter((d) => roundAt(d.at_ms)?.round === r.round).map((d) => d.what),
      };
    });
  const later = perRound.slice(1);
  const longest = (rs) => rs.reduce((a, b) => (b.duration_ms > a.duration_ms ? b : a), rs[0] ?? { duration_ms: NaN });
  const steady = later.filter((r) => r.during.length === 0);
  const worst = longest(steady);
  const worstDisturbed = longest(later.filter((r) => r.during.length > 0));
  const idle_gaps_ms = byRound.slice(1).map((r, i) => r.opened_at_ms - byRound[i].closed_at_ms);
  return {
    committed: perRound.length,
    slowest_client_ms: Math.round(slowest),
    client_work_ms_median: Math.round(median(events.map(work))),
    durations_s: perRound.map((r) => r.duration_ms / 1000),
    steady_rounds: steady.length,
    ratio_max: worst.duration_ms / slowest,
    ratio_max_round: worst.round,
    ratio_max_disturbed: worstDisturbed.duration_ms / slowest,
    ratio_max_disturbed_round: worstDisturbed.round,
    idle_gaps_ms,
    idle_gap_ms_median: median(idle_gaps_ms),
    per_round: perRound,
  };
}

async function main() {
  for (const [path, hint] of [
    [BIN, "cargo build --release -p webfl-server (or set WEBFL_BIN)"],
    [join(ROOT, "www/dist/index.html"), "scripts/build-web"],
    [join(ROOT, "data/mnist.wfds"), "scripts/setup"],
  ]) {
    try {
      statSync(path);
    } catch {
      throw new Error(`${path} is missing: run ${hint}`);
    }
  }
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), "webfl-e2e-"));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const api = async (path) => {
    const r = await fetch(base + path);
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  };

  const t0 = Date.now();
  let server = await startServer(port, dataDir, "server-1.log");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"],
  });
  const pageErrors = [];
  const context = await browser.newContext();
  const pages = [];
  // The pages' `round` events (download, train and upload times) from pages reloaded or closed
  // on the way; the open pages' are collected at the end.
  const roundEvents = [];
  const roundsOf = (page) => page.evaluate(() => window.webflLog.filter((e) => e.type === "round"));
  const openPage = async (name, client) => {
    const page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(`page ${name}: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && pageErrors.push(`page ${name} console: ${m.text()}`));
    await page.goto(`${base}/?partition=iid&client=${client}&of=${PAGES}&autostart=1`);
    return page;
  };
  try {
    for (let i = 0; i < PAGES; i++) pages.push(await openPage(i, i));
    // A page that gave up fails the run at once instead of timing out later.
    const status = async () => {
      for (const [i, page] of pages.entries()) {
        const fatal = await page.evaluate(() => window.webflLog?.find((e) => e.type === "error" && e.fatal)).catch(() => undefined);
        if (fatal) throw new Error(`page ${i} stopped: ${fatal.message}`);
      }
      return api("/api/status");
    };

    // 1. The first round with four browsers.
    await waitFor("the first completed round", async () => (await status()).rounds_completed >= 1, 120_000);
    const firstRoundSeconds = (Date.now() - t0) / 1000;
    check("a first round completes with 4 pages", true, `${firstRoundSeconds.toFixed(1)} s after starting webfl serve`);
    // This browser has no WebGPU (no --enable-unsafe-webgpu): every page says it fell back.
    const shown = await pages[0].evaluate(() => [document.body.dataset.backend, document.getElementById("backend-why").textContent]);
    check(
      "without WebGPU the page trains on the CPU and says why",
      shown[0] === "cpu" && shown[1].startsWith("WebGPU unavailable"),
      `${shown[0]}: ${shown[1]}`,
    );

    // 2. A reloaded tab resumes as the same client.
    const idOf = (page) =>
      page.evaluate(() => window.webflLog.find((e) => e.type === "identity" || (e.type === "restored" && e.client_id))?.client_id);
    const before = await waitFor("page 0's identity", () => idOf(pages[0]), 30_000);
    roundEvents.push(...(await roundsOf(pages[0])));
    const disturbances = [{ what: "page 0 reloaded", at_ms: Date.now() }];
    await pages[0].reload();
    const restored = await waitFor("page 0 restored", () =>
      pages[0].evaluate(() => window.webflLog.find((e) => e.type === "restored")),
    30_000);
    check("a reloaded tab resumes its identity from IndexedDB", restored.client_id === before, `${restored.client_id} vs ${before}`);

    // 3. SIGKILL the server mid-run, restart it on the same port and data folder.
    await waitFor("3 rounds", async () => (await status()).rounds_completed >= 3, 120_000);
    await waitFor("a round in progress", async () => (await status()).open_round !== null, 30_000, 50);
    const committed = (await api("/api/rounds")).filter((r) => r.version !== null);
    const peak1 = peakMemoryMiB(server.pid);
    const killedTimings = serverTimings(server.serverLog);
    disturbances.push({ what: "server killed and restarted", at_ms: Date.now() });
    server.kill("SIGKILL");
    await new Promise((r) => server.once("exit", r));
    server = await startServer(port, dataDir, "server-2.log");
    const after = await api("/api/rounds");
    const lost = committed.filter((c) => !after.some((r) => r.version === c.version && r.round === c.round));
    const resumed = await status();
    check(
      "SIGKILL + restart loses no committed version",
      lost.length === 0 && resumed.model_version >= committed.at(-1).version,
      `${committed.length} versions before the kill, model_version ${resumed.model_version} after restart`,
    );
    await waitFor("training to continue after the restart", async () => (await status()).model_version > resumed.model_version, 120_000);
    check("training continues after the restart", true, `model_version ${(await status()).model_version}`);

    // 4. A fifth page joins (on the same quarter of the data), then one page closes mid-round.
    // The round selects ceil(4 × 1.3) = 6, so the four pages left still bring it to its target
    // of 4 reports: it must close by target, long before the 60 s deadline.
    disturbances.push({ what: "a fifth page opened", at_ms: Date.now() });
    const joined = await openPage(PAGES, PAGES - 1);
    pages.push(joined);
    await waitFor("the fifth page's first round", async () => (await roundsOf(joined)).length > 0, 90_000);
    // The page closes while it works on the open round, before its upload: with five pages a
    // page may be finishing a round that already closed without it, which would test nothing.
    const victim = pages[PAGES - 1];
    const openRound = await waitFor("the closing page to be training for the open round", async () => {
      const round = await victim.evaluate(() => {
        const last = window.webflLog.filter((e) => e.type === "state").at(-1);
        return ["downloading", "training"].includes(last?.state) ? last.round : undefined;
      });
      return round != null && round === (await api("/api/status")).open_round ? round : undefined;
    }, 60_000, 20);
    roundEvents.push(...(await roundsOf(victim)));
    await victim.close();
    pages.splice(PAGES - 1, 1);
    const closedAt = Date.now();
    disturbances.push({ what: "a page closed mid-round", at_ms: closedAt });
    const settled = await waitFor("the round the page left to settle", async () => {
      const rounds = await api("/api/rounds");
      return rounds.find((r) => r.round === openRound);
    }, (DEFAULT_DEADLINE_S + 30) * 1000);
    const settledAfterS = (Date.now() - closedAt) / 1000;
    check(
      "closing a page mid-round does not stall the round",
      settled.outcome === "closed" && settled.version !== null && settledAfterS < DEFAULT_DEADLINE_S / 2,
      `round ${settled.round} ${settled.outcome} with ${settled.reports}/${settled.selected} reports, ${settledAfterS.toFixed(1)} s after the close (deadline ${DEFAULT_DEADLINE_S} s)`,
    );

    // 5. Accuracy.
    const final = await waitFor(
      `${MIN_ROUNDS} rounds and test accuracy ≥ ${TARGET_ACCURACY}`,
      async () => {
        const s = await status();
        return s.rounds_completed >= MIN_ROUNDS && s.test_accuracy >= TARGET_ACCURACY ? s : undefined;
      },
      240_000,
    );
    check(
      `global test accuracy reaches ${TARGET_ACCURACY * 100}% in ≥ ${MIN_ROUNDS} rounds`,
      true,
      `${(final.test_accuracy * 100).toFixed(2)}% after ${final.rounds_completed} rounds`,
    );

    // The contribute page fits a phone.
    await pages[0].setViewportSize({ width: 375, height: 800 });
    const overflow = await pages[0].evaluate(() => document.documentElement.scrollWidth);
    await pages[0].screenshot({ path: join(OUT, "contribute-phone.png"), fullPage: true });
    check("the contribute page fits a 375 px wide screen", overflow <= 375, `page width ${overflow} px; out/e2e/contribute-phone.png`);

    // 6. The dashboard shows the curve.
    const dash = await context.newPage();
    dash.on("pageerror", (e) => pageErrors.push(`dashboard: ${e.message}`));
    await dash.setViewportSize({ width: 1280, height: 1400 });
    await dash.goto(`${base}/dashboard`);
    await waitFor("the dashboard to load the rounds", () =>
      dash.evaluate((n) => Number(document.body.dataset.roundsCompleted) >= n, final.rounds_completed),
    30_000);
    const points = Number(await dash.getAttribute("#accuracy-chart", "data-points"));
    await dash.screenshot({ path: join(OUT, "dashboard.png"), fullPage: true });
    check("the dashboard plots the accuracy curve", points >= MIN_ROUNDS, `${points} points; screenshot out/e2e/dashboard.png`);

    // Update codecs in this browser (wasm): encode/decode MB/s on a CNN-sized update.
    const codecs = await dash.evaluate(async () => {
      const wasm = await import("/pkg/webfl_client.js");
      await wasm.default();
      const names = ["none", "q8", "topk:0.1", "topk:0.01", "topk:0.01+q8", "randk:0.1", "qsgd:16"];
      return names.map((name) => wasm.benchCodec(name, 1663370, 250));
    });
    check("every codec runs in the browser", codecs.length === 7 && codecs.every((c) => c.encode_mb_s > 0 && c.decode_mb_s > 0));

    // Measurements (the main run's pages are closed after this).
    const events = [...roundEvents];
    for (const page of pages) events.push(...(await roundsOf(page)));
    const rounds = await api("/api/rounds");
    const pace = roundPace(rounds, events, disturbances);
    check(
      `${MIN_ROUNDS} undisturbed rounds complete and none lasts over ${MAX_ROUND_TO_CLIENT}× the slowest client's train + transfer time`,
      pace.steady_rounds >= MIN_ROUNDS && pace.ratio_max <= MAX_ROUND_TO_CLIENT,
      `${pace.committed} rounds (${pace.steady_rounds} undisturbed); slowest client ${(pace.slowest_client_ms / 1000).toFixed(1)} s; ` +
        `rounds after the first ${pace.durations_s.slice(1).map((d) => d.toFixed(1)).join(", ")} s; longest undisturbed ` +
        `${pace.ratio_max.toFixed(2)}× (round ${pace.ratio_max_round}), longest while the test reloaded, killed or closed ` +
        `pages ${pace.ratio_max_disturbed.toFixed(2)}× (round ${pace.ratio_max_disturbed_round}); idle gaps ` +
        `${pace.idle_gaps_ms.map(String).join(", ")} ms`,
    );
    const timings = serverTimings([...killedTimings.aggregate_ms_per_update.map(() => ""), ...server.serverLog]);
    const killedAndNow = {
      aggregate_ms_per_update: [...killedTimings.aggregate_ms_per_update, ...timings.aggregate_ms_per_update],
      evaluate_ms: [...killedTimings.evaluate_ms, ...timings.evaluate_ms],
      store_ms: [...killedTimings.store_ms, ...timings.store_ms],
    };
    const wasm = readFileSync(join(ROOT, "www/dist/pkg/webfl_client_bg.wasm"));
    const closed = rounds.filter((r) => r.version !== null);
    const report = {
      first_round_seconds_after_serve_start: firstRoundSeconds,
      rounds_completed: final.rounds_completed,
      final_test_accuracy: final.test_accuracy,
      round_pace: pace,
      round_wall_ms_median: median(closed.map((r) => r.closed_at_ms - r.opened_at_ms)),
      client_ms_median: {
        download: median(events.filter((e) => e.bytes_down > 0).map((e) => e.download_ms)),
        train: median(events.map((e) => e.train_ms)),
        upload: median(events.map((e) => e.upload_ms)),
      },
      server_ms_median: {
        aggregate_per_update: median(killedAndNow.aggregate_ms_per_update),
        evaluate: median(killedAndNow.evaluate_ms),
        store: median(killedAndNow.store_ms),
      },
      bytes_up_per_update: median(events.map((e) => e.bytes_up)),
      wasm_bytes: wasm.length,
      wasm_gzip_bytes: gzipSync(wasm, { level: 9 }).length,
      server_peak_rss_mib: { before_kill: peak1, after_restart: peakMemoryMiB(server.pid) },
      browser_codecs_cnn_update: codecs,
      rounds: rounds.map(({ round, outcome, version, selected, reports, test_accuracy, opened_at_ms, closed_at_ms }) => ({
        round, outcome, version, selected, reports, test_accuracy, duration_ms: closed_at_ms - opened_at_ms,
      })),
      checks,
    };
    // 7. A private, compressed task (tests/e2e/private-task.toml): local DP + top-10% with error
    // feedback; the bytes per upload and ε must show on the client and on the dashboard.
    for (const page of pages.splice(0)) await page.close();
    const privatePort = await freePort();
    const privateDir = mkdtempSync(join(tmpdir(), "webfl-e2e-private-"));
    const privateServer = await startServer(privatePort, privateDir, "server-private.log", "tests/e2e/private-task.toml");
    try {
      const pbase = `http://127.0.0.1:${privatePort}`;
      for (let i = 0; i < PAGES; i++) {
        const page = await context.newPage();
        page.on("pageerror", (e) => pageErrors.push(`private page ${i}: ${e.message}`));
        await page.goto(`${pbase}/?partition=iid&client=${i}&of=${PAGES}&autostart=1`);
        pages.push(page);
      }
      const pstatus = async () => (await fetch(`${pbase}/api/status`)).json();
      await waitFor("2 private rounds", async () => (await pstatus()).rounds_completed >= 2, 120_000);
      const privateEvents = await pages[0].evaluate(() => window.webflLog.filter((e) => e.type === "round"));
      const first = privateEvents[0];
      const dense = 199210 * 4;
      check(
        "the browser clips, noises and top-k compresses its update",
        first.compression === "topk:0.1" && first.clipped && first.noise_std > 0 && first.bytes_up < 0.15 * dense,
        `${first.bytes_up} bytes per upload (dense f32: ${dense}), update norm ${first.update_norm.toFixed(2)} clipped to 1, noise σ ${first.noise_std}`,
      );
      // Rounds take about a second and the dashboard polls every 2 s: stop the pages, so ε
      // stops moving, then the dashboard must show what /api/status says.
      for (const page of pages.splice(0)) await page.close();
      const pdash = await context.newPage();
      await pdash.goto(`${pbase}/dashboard`);
      let ps;
      const eps = await waitFor("the dashboard to show the ε /api/status reports", async () => {
        ps = await pstatus();
        const shown = await pdash.evaluate(() => Number(document.body.dataset.epsilon) || undefined);
        return shown === ps.privacy.epsilon ? shown : undefined;
      }, 30_000);
      await pdash.screenshot({ path: join(OUT, "dashboard-private.png"), fullPage: true });
      check(
        "ε spent and bytes uploaded are reported",
        eps > 0 && ps.privacy.epsilon === eps && ps.bytes_up_total > 0,
        `ε ${eps.toFixed(1)} at δ ${ps.privacy.delta} after ${ps.rounds_completed} rounds; ${ps.bytes_up_total} bytes up; out/e2e/dashboard-private.png`,
      );
      report.private_task = { bytes_up_per_update: first.bytes_up, epsilon: eps, rounds: ps.rounds_completed };
    } finally {
      privateServer.kill("SIGKILL");
      rmSync(privateDir, { recursive: true, force: true });
    }

    // 8. Byzantine browsers: one tab of five uploads −4·Δ every round.
    report.byzantine = await byzantinePhase(context, pageErrors);

    // 9. Secure aggregation: eight tabs form a SecAgg+ cohort; three close mid-round.
    report.secure = await securePhase(browser, pageErrors, report.byzantine);

    // 10. WebGPU (here Chromium's software adapter, SwiftShader): one page forced onto WebGPU and
    // one choosing by a probe; both contribute accepted updates and say which engine runs and why.
    report.webgpu = await webgpuPhase(pageErrors);

    report.e2e_runtime_s = (Date.now() - STARTED) / 1000;
    writeFileSync(join(OUT, "report.json"), JSON.stringify(report, null, 2));
    const summary = { ...report, rounds: undefined, checks: undefined, round_pace: { ...pace, per_round: undefined } };
    console.log(JSON.stringify(summary, null, 2));
  } finally {
    check("no page errors", pageErrors.length === 0, pageErrors.slice(0, 5).join(" | "));
    await browser.close().catch(() => {});
    server.kill("SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/**
 * Five pages on tests/e2e/byzantine-task.toml (all five in every round), clean and with the fifth
 * tab Byzantine (`?attack=sign-flip:4`: 20 % of each round's updates), under trimmed mean and
 * under FedAvg. The robust run must end within 2 pp of its clean run; FedAvg's loss is reported.
 */
async function byzantinePhase(context, pageErrors) {
  const ROUNDS = 6;
  const runs = [];
  for (const [strategy, attack] of [["trimmed-mean", null], ["trimmed-mean", "sign-flip:4"], ["fedavg", null], ["fedavg", "sign-flip:4"]]) {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "webfl-e2e-byzantine-"));
    const name = `${strategy}${attack ? "-attacked" : ""}`;
    // The same task file with the strategy under test (`webfl serve` takes task settings from files).
    const task = join(dir, "task.toml");
    const text = readFileSync(join(ROOT, "tests/e2e/byzantine-task.toml"), "utf8");
    writeFileSync(task, text.replace(/^kind = "trimmed-mean"$/m, `kind = "${strategy}"`));
    const server = await startServer(port, join(dir, "data"), `server-byzantine-${name}.log`, task);
    const pages = [];
    try {
      const base = `http://127.0.0.1:${port}`;
      for (let i = 0; i < 5; i++) {
        const page = await context.newPage();
        page.on("pageerror", (e) => pageErrors.push(`byzantine ${name} page ${i}: ${e.message}`));
        const lie = attack && i === 4 ? `&attack=${attack}` : "";
        await page.goto(`${base}/?partition=iid&client=${i}&of=5&autostart=1${lie}`);
        pages.push(page);
      }
      const rounds = await waitFor(`${ROUNDS} rounds (${name})`, async () => {
        const all = await (await fetch(`${base}/api/rounds`)).json();
        const committed = all.filter((r) => r.version !== null).sort((a, b) => a.round - b.round);
        return committed.length >= ROUNDS ? committed.slice(0, ROUNDS) : undefined;
      }, 300_000);
      const lied = attack ? (await pages[4].evaluate(() => window.webflLog.filter((e) => e.type === "round"))).length : 0;
      runs.push({
        strategy, attack, byzantine_uploads: lied,
        accuracy: rounds.map((r) => r.test_accuracy),
        final_accuracy: rounds[ROUNDS - 1].test_accuracy,
        reports: rounds.map((r) => r.reports),
      });
    } finally {
      for (const page of pages) await page.close().catch(() => {});
      server.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const run = (strategy, attacked) => runs.find((r) => r.strategy === strategy && !!r.attack === attacked);
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const [robustClean, robustAttacked] = [run("trimmed-mean", false), run("trimmed-mean", true)];
  const [fedavgClean, fedavgAttacked] = [run("fedavg", false), run("fedavg", true)];
  check(
    "every round of the attacked runs takes the Byzantine tab's update",
    [robustAttacked, fedavgAttacked].every((r) => r.reports.every((n) => n === 5) && r.byzantine_uploads >= ROUNDS),
    `${robustAttacked.byzantine_uploads} and ${fedavgAttacked.byzantine_uploads} sign-flipped uploads`,
  );
  check(
    "with 20 % Byzantine browsers trimmed mean ends within 2 pp of its clean run",
    robustAttacked.final_accuracy >= robustClean.final_accuracy - 0.02,
    `after ${ROUNDS} rounds: trimmed mean ${pct(robustClean.final_accuracy)} clean, ${pct(robustAttacked.final_accuracy)} attacked; ` +
      `FedAvg ${pct(fedavgClean.final_accuracy)} clean, ${pct(fedavgAttacked.final_accuracy)} attacked`,
  );
  return { rounds: ROUNDS, runs };
}

/**
 * Eight pages on tests/e2e/secure-task.toml (SecAgg+: the server sees only each round's sum).
 * In round 1 the eighth tab (all of MNIST, so it trains longest) is closed once it has shared its
 * keys and before it uploads; two tabs are closed once the server has their masked updates and
 * before unmasking. The round must still commit the sum of the seven masked updates; three more
 * rounds run with the five tabs left. Accuracy is stated beside the byzantine phase's FedAvg run
 * without secure aggregation (same model and plan; five tabs with a fifth of MNIST each), and must
 * rise and end within 5 pp of it.
 */
async function securePhase(browser, pageErrors, byzantine) {
  const ROUNDS = 4;
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "webfl-e2e-secure-"));
  const server = await startServer(port, join(dir, "data"), "server-secure.log", "tests/e2e/secure-task.toml");
  const base = `http://127.0.0.1:${port}`;
  const pages = [];
  const taken = (client, stage) =>
    server.serverLog.some((l) => l.includes("secure-aggregation message taken") && l.includes(`client=${client}`) && l.includes(`stage=${stage}`));
  try {
    for (let i = 0; i < 8; i++) {
      // A context per tab, as separate people's browsers: one browser allows six connections to
      // a host, so eight long-polling tabs in one would queue behind each other.
      const page = await (await browser.newContext()).newPage();
      page.on("pageerror", (e) => pageErrors.push(`secure page ${i}: ${e.message}`));
      const part = i === 7 ? "client=0&of=1" : `client=${i}&of=7`;
      await page.goto(`${base}/?partition=iid&${part}&autostart=1`);
      pages.push(page);
    }
    const ids = [];
    for (const [i, page] of pages.entries()) {
      ids.push(await waitFor(`tab ${i}'s identity`, async () =>
        (await page.evaluate(() => window.webflLog.find((e) => e.type === "identity")?.client_id)) ?? undefined, 60_000));
    }
    await waitFor("the eighth tab's shared keys", async () => taken(ids[7], "ShareKeys") || undefined, 60_000, 50);
    const beforeUpload = !taken(ids[7], "MaskedInput");
    await pages[7].close();
    await waitFor("two tabs' masked updates", async () => (taken(ids[5], "MaskedInput") && taken(ids[6], "MaskedInput")) || undefined, 60_000, 100);
    const beforeUnmask = !taken(ids[5], "Unmask") && !taken(ids[6], "Unmask");
    await pages[5].close();
    await pages[6].close();
    check("a tab closed before uploading and two after uploading, before unmasking", beforeUpload && beforeUnmask,
      `closed before upload: ${beforeUpload}; before unmasking: ${beforeUnmask}`);
    const rounds = await waitFor(`${ROUNDS} secure rounds`, async () => {
      const all = await (await fetch(`${base}/api/rounds`)).json();
      const committed = all.filter((r) => r.version !== null).sort((a, b) => a.round - b.round);
      return committed.length >= ROUNDS ? committed.slice(0, ROUNDS) : undefined;
    }, 300_000);
    const stages = server.serverLog.map(stripAnsi).filter((l) => l.includes("secure round unmasked"));
    // The round's stages are stored with its record and shown on the dashboard.
    const dash = await (await browser.newContext()).newPage();
    await dash.goto(`${base}/dashboard`);
    const shown = await waitFor("the dashboard's secure stages", async () => {
      const cells = await dash.$$eval("#versions-table tbody tr td:nth-child(9)", (tds) => tds.map((td) => td.textContent));
      return cells.includes("8 → 8 → 8 → 7 → 5") ? cells : undefined;
    }, 30_000).catch(() => []);
    await dash.screenshot({ path: join(OUT, "dashboard-secure.png"), fullPage: true });
    await dash.context().close();
    check("the dashboard shows each secure round's stages", shown.includes("8 → 8 → 8 → 7 → 5"),
      `${shown.join(" | ")}; out/e2e/dashboard-secure.png`);
    const first = stages.find((l) => / round=1 /.test(l)) ?? "";
    check("round 1 commits the sum of the seven masked updates after three tabs closed",
      rounds[0].round === 1 && first.includes("cohort 8 → keys 8 → shares 8 → masked 7 → unmasked 5"),
      first.replace(/^.*secure_aggregation=/, ""));
    const plain = byzantine.runs.find((r) => r.strategy === "fedavg" && !r.attack);
    const accuracy = rounds.map((r) => r.test_accuracy);
    const without = plain.accuracy.slice(0, ROUNDS);
    const pct = (x) => `${(100 * x).toFixed(1)}%`;
    // The secure tabs hold a seventh of MNIST each, the FedAvg run's a fifth: some gap is data.
    check(`with secure aggregation the accuracy rises as without it (within 5 pp after ${ROUNDS} rounds)`,
      accuracy[ROUNDS - 1] >= accuracy[0] + 0.05 && accuracy[ROUNDS - 1] >= without[ROUNDS - 1] - 0.05,
      `secure ${accuracy.map(pct).join(" → ")}; without (FedAvg, 5 tabs) ${without.map(pct).join(" → ")}`);
    return { rounds: ROUNDS, accuracy, without_secure_aggregation: without, stages };
  } finally {
    for (const page of pages) await page.context().close().catch(() => {});
    server.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

async function webgpuPhase(pageErrors) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "webfl-e2e-webgpu-"));
  const server = await startServer(port, dir, "server-webgpu.log", "tests/e2e/webgpu-task.toml");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"],
  });
  try {
    const base = `http://127.0.0.1:${port}`;
    const pages = [];
    // 1/64 of the data each (125 examples): the software adapter is slow.
    for (const [i, backend] of [[0, "webgpu"], [1, "auto"]]) {
      const page = await browser.newPage();
      page.on("pageerror", (e) => pageErrors.push(`webgpu page ${i}: ${e.message}`));
      page.on("console", (m) => m.type() === "error" && pageErrors.push(`webgpu page ${i} console: ${m.text()}`));
      await page.goto(`${base}/?partition=iid&client=${i}&of=64&backend=${backend}&autostart=1`);
      pages.push(page);
    }
    const roundsOf = (page) => page.evaluate(() => window.webflLog.filter((e) => e.type === "round"));
    const [forced] = await waitFor("a round trained on WebGPU", async () => {
      const fatal = await pages[0].evaluate(() => window.webflLog.find((e) => e.type === "error" && e.fatal));
      if (fatal) throw new Error(`the WebGPU page stopped: ${fatal.message}`);
      const rounds = await roundsOf(pages[0]);
      return rounds.length > 0 ? rounds : undefined;
    }, 180_000);
    const forcedShown = await pages[0].evaluate(() => [document.body.dataset.backend, document.getElementById("backend-why").textContent]);
    check(
      "a page on WebGPU contributes an accepted update",
      forced.backend === "webgpu" && forcedShown[0] === "webgpu" && forcedShown[1].includes("backend=webgpu"),
      `round ${forced.round}: ${forced.examples} examples trained in ${forced.train_ms.toFixed(0)} ms on ${forcedShown[1]}`,
    );
    const choice = await waitFor("the probe's choice", () =>
      pages[1].evaluate(() => window.webflLog.find((e) => e.type === "backend")), 120_000);
    await waitFor("a round on the probed engine", async () => (await roundsOf(pages[1])).length > 0 || undefined, 180_000);
    check(
      "with WebGPU and the CPU both present the page times both and takes the faster",
      choice.cpu_samples_per_s > 0 && choice.gpu_samples_per_s > 0 &&
        choice.backend === (choice.gpu_samples_per_s > choice.cpu_samples_per_s ? "webgpu" : "cpu"),
      `${choice.backend}: ${choice.reason} (WebGPU ${choice.gpu_samples_per_s.toFixed(0)}, CPU ${choice.cpu_samples_per_s.toFixed(0)} samples/s on ${choice.adapter})`,
    );
    await pages[1].screenshot({ path: join(OUT, "contribute-webgpu-probe.png"), fullPage: true });
    return {
      forced_webgpu_round: { examples: forced.examples, train_ms: forced.train_ms },
      probe: choice,
    };
  } finally {
    await browser.close().catch(() => {});
    server.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

main()
  .catch((e) => {
    check("end-to-end run", false, e.message);
  })
  .finally(() => {
    console.log(`\ne2e: ${checks.length - failures} passed, ${failures} failed in ${((Date.now() - STARTED) / 1000).toFixed(0)} s`);
    process.exit(failures ? 1 : 0);
  });
