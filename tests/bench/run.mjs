// Headless runner for www/bench.html: starts `webfl serve`, opens the benchmark page in Chromium,
// waits for it to finish, prints the results and the target ratios, and writes
// out/bench/{bench.json,notes.json,bench.png}.
//
//   node tests/bench/run.mjs [--quick] [--engines a,b] [--models 2nn,cnn] [--cnn-engines a,b]
//                            [--min SECONDS] [--cap SECONDS] [--timeout-min M]
//
// bench.json is the page's `benchResults`: [{engine, model, batch, mode, samples_per_s}], tfjs
// rows also with `steps` and `warmup_s`, tfjs training rows with `path` (the gradient path
// reported, the faster) and `paths` (every path's samples/s).
// notes.json is {env, notes}: the browser, WebGPU adapter and tfjs wasm flavour, and every
// engine/workload that is unsupported, failed or capped (a number from fewer steps than --min
// asks, see --cap), with its error, and for tfjs training which gradient path won.
// --quick (CI smoke): a short minimum time; fails if the page throws, or if a requested engine
// has neither a finite positive number nor a note. Speed never decides the exit status. It runs
// the CNN only on the fast engines (see `passes`).
//
// Needs: $CARGO_TARGET_DIR/release/webfl (default target/), www/dist (scripts/build-web),
// data/mnist.wfds (the default task loads it), /usr/bin/chromium.

import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { chromium } from "playwright-core";

const ROOT = new URL("../..", import.meta.url).pathname;
const OUT = join(ROOT, "out/bench");
const TARGET = process.env.CARGO_TARGET_DIR
  ? isAbsolute(process.env.CARGO_TARGET_DIR)
    ? process.env.CARGO_TARGET_DIR
    : join(ROOT, process.env.CARGO_TARGET_DIR)
  : join(ROOT, "target");
const BIN = join(TARGET, "release/webfl");
const ENGINES = ["webfl-cpu", "webfl-webgpu", "tfjs-cpu", "tfjs-wasm", "tfjs-webgl", "tfjs-webgpu"];
const MODELS = ["2nn", "cnn"];

function parseArgs(argv) {
  const opts = { quick: false, engines: null, models: null, cnnEngines: null, min: null, cap: null, timeoutMin: 60 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--quick") opts.quick = true;
    else if (a === "--engines") opts.engines = value();
    else if (a === "--models") opts.models = value();
    else if (a === "--min") opts.min = Number(value());
    else if (a === "--cap") opts.cap = Number(value());
    else if (a === "--timeout-min") opts.timeoutMin = Number(value());
    else if (a === "--cnn-engines") opts.cnnEngines = value();
    else throw new Error(`unknown argument ${a} (--quick, --engines, --models, --cnn-engines, --min, --cap, --timeout-min)`);
  }
  // A quick run still times several steps per workload; it only shortens each measurement.
  opts.min ??= opts.quick ? 0.2 : 1.5;
  if (!(opts.min >= 0)) throw new Error("--min must be a non-negative number of seconds");
  // Per tfjs measurement, warm-up included: past it the page times 2 steps and notes the cap.
  opts.cap ??= opts.quick ? 10 : 30;
  if (!(opts.cap > 0)) throw new Error("--cap must be a positive number of seconds");
  return opts;
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

/** Starts `webfl serve` on the default task; resolves once it prints its address. */
function startServer(port, dataDir) {
  const log = createWriteStream(join(OUT, "server.log"));
  const child = spawn(BIN, ["serve", "--port", String(port), "--data", dataDir, "--www", join(ROOT, "www/dist")], {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: "warn", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stderr.pipe(log);
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("webfl serving at")) resolve(child);
    });
    child.on("error", (e) => reject(new Error(`cannot start ${BIN}: ${e.message}`)));
    child.on("exit", (code) => reject(new Error(`webfl serve exited with ${code} before serving (see out/bench/server.log)`)));
  });
}

function fmtRate(v) {
  return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toPrecision(3);
}

function table(rows, headers, align) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) =>
    cells.map((c, i) => (align[i] === "r" ? String(c).padStart(widths[i]) : String(c).padEnd(widths[i]))).join("  ");
  return [line(headers), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

/** The issue's targets, as ratios of this one run's numbers (undefined where a side is missing). */
function targetRatios(results, notes) {
  const rate = (engine, model, batch, mode = "train") =>
    results.find((r) => r.engine === engine && r.model === model && r.batch === batch && r.mode === mode)?.samples_per_s;
  const out = [];
  for (const b of [10, 50]) {
    const a = rate("webfl-cpu", "2nn", b);
    const t = rate("tfjs-wasm", "2nn", b);
    out.push({ target: `webfl-cpu / tfjs-wasm (SIMD), 2NN train B=${b}`, ratio: a && t ? a / t : undefined, goal: 2 });
  }
  for (const b of [10, 50]) {
    const best = ENGINES.filter((e) => e.startsWith("tfjs-"))
      .map((e) => ({ e, v: rate(e, "cnn", b) }))
      .filter((x) => x.v !== undefined)
      .sort((p, q) => q.v - p.v)[0];
    const a = rate("webfl-cpu", "cnn", b);
    const cannot = notes.filter(
      (n) =>
        n.model === "cnn" &&
        n.batch === b &&
        n.mode === "train" &&
        n.engine.startsWith("tfjs-") &&
        (n.kind === "unsupported" || n.kind === "failed") &&
        !results.some((r) => r.engine === n.engine && r.model === "cnn" && r.batch === b && r.mode === "train"),
    );
    out.push({
      target: `webfl-cpu / best tfjs that trains it (${best?.e ?? "none"}), CNN train B=${b}`,
      ratio: a && best ? a / best.v : undefined,
      goal: 2,
      note: cannot.length ? `cannot train: ${cannot.map((n) => n.engine).join(", ")}` : "",
    });
  }
  for (const m of MODELS)
    for (const b of [10, 50]) {
      const a = rate("webfl-webgpu", m, b);
      const t = rate("tfjs-webgpu", m, b);
      out.push({ target: `webfl-webgpu / tfjs-webgpu, ${m.toUpperCase()} train B=${b}`, ratio: a && t ? a / t : undefined, goal: 1 });
    }
  return out;
}

/**
 * The page loads to run, one after another in one browser page. One load for everything, unless
 * the CNN is limited to some engines (--cnn-engines): then every engine runs the 2NN and those
 * engines the CNN. The CNN on the emulated GPU backends (SwiftShader WebGL and WebGPU here) takes
 * minutes per step, so --quick limits it to webfl's CPU engine and tfjs-wasm (whose missing CNN
 * gradient must still show up as a note) unless --engines, --models or --cnn-engines say otherwise.
 */
function passes(opts) {
  const cnnEngines = opts.cnnEngines ?? (opts.quick && !opts.engines && !opts.models ? "webfl-cpu,tfjs-wasm" : null);
  if (!cnnEngines) return [{ engines: opts.engines, models: opts.models }];
  const out = [];
  if (!opts.models || opts.models.split(",").includes("2nn")) out.push({ engines: opts.engines, models: "2nn" });
  if (!opts.models || opts.models.split(",").includes("cnn")) out.push({ engines: cnnEngines, models: "cnn" });
  return out;
}

/** Polls the page until it sets data-done, echoing its status line whenever it changes and each
 * result and note as it arrives (a full run takes minutes). */
async function waitUntilDone(page, pageErrors, timeoutMin) {
  let last = "";
  let [rows, notes] = [0, 0];
  const started = Date.now();
  const until = started + timeoutMin * 60_000;
  for (;;) {
    const state = await page.evaluate(([r, n]) => ({
      done: document.body.dataset.done === "true",
      status: document.getElementById("bench-state")?.textContent ?? "",
      rows: window.benchResults?.slice(r) ?? [],
      notes: window.benchNotes?.slice(n) ?? [],
    }), [rows, notes]);
    const t = `${((Date.now() - started) / 1e3).toFixed(0).padStart(4)} s`;
    for (const r of state.rows)
      console.log(`${t}    = ${r.engine} ${r.model} ${r.mode} B=${r.batch}: ${fmtRate(r.samples_per_s)} samples/s${r.path ? ` (${r.path})` : ""}`);
    for (const n of state.notes) console.log(`${t}    - ${n.engine} ${n.model ?? ""} B=${n.batch ?? ""} ${n.mode ?? ""}: ${n.kind}: ${n.error}`);
    rows += state.rows.length;
    notes += state.notes.length;
    if (state.status !== last) {
      console.log(`${t}  ${state.status}`);
      last = state.status;
    }
    if (state.done || pageErrors.length) return;
    if (Date.now() > until) throw new Error(`the page did not finish within ${timeoutMin} min`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  mkdirSync(OUT, { recursive: true });
  const started = Date.now();
  const dataDir = mkdtempSync(join(tmpdir(), "webfl-bench-"));
  const port = await freePort();
  const server = await startServer(port, dataDir);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    // SwiftShader behind ANGLE gives headless Chromium both WebGL2 (tfjs-webgl) and, with
    // --enable-unsafe-webgpu, a WebGPU adapter; both are CPU implementations here.
    args: [
      "--no-sandbox",
      "--enable-unsafe-webgpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-dev-shm-usage",
      "--use-angle=swiftshader",
      "--enable-unsafe-swiftshader",
    ],
  });
  const pageErrors = [];
  let failed = false;
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") console.log(`  [page console.error] ${m.text()}`);
    });
    const results = [];
    const notes = [];
    const env = {};
    for (const [i, pass] of passes(opts).entries()) {
      const params = new URLSearchParams({ min: String(opts.min), cap: String(opts.cap) });
      if (pass.engines) params.set("engines", pass.engines);
      if (pass.models) params.set("models", pass.models);
      // One secure-aggregation round (100 clients, the 2NN's size) with the first pass only.
      params.set("secagg", i === 0 ? "100" : "0");
      const url = `http://127.0.0.1:${port}/bench.html?${params}`;
      console.log(`bench: ${url}`);
      await page.goto(url);
      await waitUntilDone(page, pageErrors, opts.timeoutMin);
      const got = await page.evaluate(() => ({
        results: window.benchResults,
        notes: window.benchNotes,
        env: window.benchEnv,
      }));
      results.push(...got.results);
      notes.push(...got.notes);
      Object.assign(env, got.env);
      await page.screenshot({ path: join(OUT, i === 0 ? "bench.png" : `bench-${i + 1}.png`), fullPage: true });
      if (pageErrors.length) break;
    }
    writeFileSync(join(OUT, "bench.json"), JSON.stringify(results, null, 2) + "\n");
    writeFileSync(join(OUT, "notes.json"), JSON.stringify({ env, notes }, null, 2) + "\n");

    console.log();
    console.log(
      table(
        results.map((r) => [
          r.engine,
          r.model,
          r.batch,
          r.mode,
          fmtRate(r.samples_per_s),
          r.path ?? "",
          r.steps ?? "",
          r.warmup_s !== undefined ? r.warmup_s.toFixed(2) : "",
          notes.some((n) => n.kind === "capped" && n.engine === r.engine && n.model === r.model && n.batch === r.batch && n.mode === r.mode)
            ? "capped"
            : "",
        ]),
        ["engine", "model", "batch", "mode", "samples/s", "tfjs path", "steps", "warm-up s", ""],
        ["l", "l", "r", "l", "r", "l", "r", "r", "l"],
      ),
    );
    if (notes.length) {
      console.log("\nnotes (unsupported, failed, capped; info: which tfjs gradient path won):");
      for (const n of notes)
        console.log(`  ${[n.engine, n.model, n.batch !== undefined ? `B=${n.batch}` : "", n.mode].filter(Boolean).join(" ")}: ${n.kind}: ${n.error}`);
    }
    console.log("\nenvironment:");
    for (const [k, v] of Object.entries(env)) console.log(`  ${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
    console.log("\ntarget ratios (this run):");
    const ratios = targetRatios(results, notes);
    console.log(
      table(
        ratios.map((r) => [
          r.target,
          r.ratio === undefined ? "n/a" : `${r.ratio.toFixed(2)}x`,
          `>= ${r.goal}x`,
          r.ratio === undefined ? "n/a" : r.ratio >= r.goal ? "yes" : "no",
          r.note ?? "",
        ]),
        ["target", "ratio", "goal", "met", ""],
        ["l", "r", "r", "l", "l"],
      ),
    );

    if (env.secagg) {
      // Masking against the training it protects: one epoch of a client's 600 examples (MNIST
      // over 100 clients, as McMahan et al.) at webfl's CPU 2NN training rate, batch 10.
      const s = env.secagg;
      const rate = results.find((r) => r.engine === "webfl-cpu" && r.model === "2nn" && r.mode === "train" && r.batch === 10);
      const trainMs = rate ? (600 / rate.samples_per_s) * 1e3 : undefined;
      console.log(`\nsecure aggregation in this browser: one SecAgg+ round, n = ${s.clients}, d = ${s.dim}, k = ${s.neighbours}, t = ${s.threshold}, ${s.survivors} survivors`);
      console.log(table(
        [
          ["client: keys", s.client_keys_ms.toFixed(2)],
          ["client: key agreement + shares + sealing", s.client_share_ms.toFixed(2)],
          ["client: masking", s.client_mask_ms.toFixed(2)],
          ["client: unmasking", s.client_unmask_ms.toFixed(2)],
          ["server: unmasking (wasm)", s.server_unmask_ms.toFixed(1)],
          ["local training it protects (600 examples, 1 epoch)", trainMs === undefined ? "n/a" : trainMs.toFixed(1)],
        ],
        ["stage", "ms"],
        ["l", "r"],
      ));
      if (trainMs !== undefined) console.log(`masking / training: ${(s.client_mask_ms / trainMs).toFixed(3)}`);
    }

    // Smoke checks (every run, but only --quick is meant for CI): no page exception, and each
    // requested engine accounted for by numbers or notes. Never a speed threshold.
    if (pageErrors.length) {
      failed = true;
      for (const e of pageErrors) console.log(`FAIL page error: ${e}`);
    }
    if (!env.secagg) {
      failed = true;
      console.log("FAIL the secure-aggregation round did not run in the page");
    }
    if (env.fatal) {
      failed = true;
      console.log(`FAIL the page stopped: ${env.fatal}`);
    }
    const requested = [...new Set(passes(opts).flatMap((p) => (p.engines ? p.engines.split(",") : ENGINES)))];
    for (const engine of requested) {
      const rows = results.filter((r) => r.engine === engine);
      const bad = rows.filter((r) => !(Number.isFinite(r.samples_per_s) && r.samples_per_s > 0));
      const noted = notes.some((n) => n.engine === engine);
      if (bad.length || (rows.length === 0 && !noted)) {
        failed = true;
        console.log(`FAIL ${engine}: ${bad.length ? `${bad.length} non-positive or non-finite results` : "neither results nor a note"}`);
      }
    }
  } finally {
    await browser.close();
    server.kill("SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  }
  console.log(`\nwrote out/bench/{bench.json,notes.json,bench.png} in ${((Date.now() - started) / 1e3).toFixed(1)} s`);
  if (failed) process.exit(1);
}

main().catch((e) => {
  console.error(`bench: ${e.message}`);
  process.exit(1);
});
