// The contribute page: pick local data, press Contribute, watch this browser train.
// URL parameters preselect the data and can start at once (how the end-to-end test opens pages):
//   /?partition=shards:2&client=3&of=10&seed=0&autostart=1
// `backend=cpu|webgpu` overrides the automatic choice of training engine. `attack=sign-flip:4`
// (or `scale:10`) makes this tab a Byzantine client, for robustness tests: the title says so.

import type { GetJson } from "./api.js";
import { type DataChoice, type WorkerMessage, WebflClient } from "./webfl.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);

const fields = {
  partition: $<HTMLInputElement>("partition"),
  client: $<HTMLInputElement>("client"),
  of: $<HTMLInputElement>("of"),
  csv: $<HTMLInputElement>("csv"),
};
fields.partition.value = params.get("partition") ?? "iid";
fields.of.value = params.get("of") ?? "10";
// Without a choice, a random demo partition, so two casual visitors do not train the same data.
fields.client.value = params.get("client") ?? String(Math.floor(Math.random() * Number(fields.of.value || 10)));

const startButton = $<HTMLButtonElement>("start");
const stopButton = $<HTMLButtonElement>("stop");
const banner = $("error-banner");
const roundsBody = $<HTMLTableElement>("rounds-table").tBodies[0];

/** Every event this page saw, for people in the console and for tests. */
const log: WorkerMessage[] = [];
(window as unknown as { webflLog: WorkerMessage[] }).webflLog = log;

let client: WebflClient | null = null;
let totals = { rounds: 0, bytes_up: 0 };

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

function setState(state: string, detail = ""): void {
  document.body.dataset.state = state;
  $("state").textContent = detail ? `${state} — ${detail}` : state;
}

function showTotals(): void {
  $("sent").textContent = `${bytes(totals.bytes_up)} in ${totals.rounds} round${totals.rounds === 1 ? "" : "s"}`;
  document.body.dataset.rounds = String(totals.rounds);
}

async function chooseData(): Promise<DataChoice> {
  const file = fields.csv.files?.[0];
  if (file) return { kind: "csv", name: file.name, text: await file.text() };
  const client = Number(fields.client.value);
  const of = Number(fields.of.value);
  if (!Number.isInteger(client) || !Number.isInteger(of) || of < 1 || client < 0 || client >= of) {
    throw new Error(`client must be a whole number from 0 to ${of - 1}`);
  }
  return { kind: "demo", partition: fields.partition.value.trim(), client, of, seed: Number(params.get("seed") ?? 0) };
}

function handle(event: WorkerMessage): void {
  log.push(event);
  switch (event.type) {
    case "restored":
      totals = { rounds: event.rounds, bytes_up: event.bytes_up };
      showTotals();
      if (event.client_id) $("client-id").textContent = `${event.client_id} (resumed)`;
      break;
    case "identity":
      $("client-id").textContent = event.client_id;
      break;
    case "data": {
      const counts = event.class_counts.map((n, c) => `${c}: ${n}`).join(", ");
      $("data-source").textContent = `${event.source}: ${event.examples} examples (per class ${counts}).`;
      break;
    }
    case "state":
      setState(event.state, event.detail);
      if (event.round !== null) $("round").textContent = String(event.round);
      if (event.state === "stopped") {
        startButton.disabled = false;
        stopButton.disabled = true;
        client = null;
      }
      break;
    case "progress": {
      const bar = $<HTMLProgressElement>("progress");
      bar.max = event.total_steps;
      bar.value = event.step;
      $("progress-text").textContent =
        `epoch ${event.epoch + 1}/${event.epochs}, step ${event.step}/${event.total_steps}, loss ${event.loss.toFixed(4)}`;
      break;
    }
    case "round": {
      banner.hidden = true;
      totals.rounds += 1;
      totals.bytes_up += event.bytes_up;
      showTotals();
      $("local").textContent = `${event.local_loss.toFixed(4)} / ${(event.local_accuracy * 100).toFixed(1)}%`;
      const privacy = event.noise_std > 0 ? `, local DP noise σ=${event.noise_std.toPrecision(3)}` : "";
      $("last-update").textContent =
        `${bytes(event.bytes_up)} sent (${event.compression}${event.clipped ? ", clipped" : ""}${privacy}), ` +
        `${bytes(event.bytes_down)} received`;
      $("timing").textContent =
        `download ${event.download_ms.toFixed(0)} ms · train ${event.train_ms.toFixed(0)} ms · upload ${event.upload_ms.toFixed(0)} ms`;
      const row = roundsBody.insertRow(0);
      const cells = [
        event.round,
        event.model_version,
        event.examples,
        event.local_loss.toFixed(4),
        `${(event.local_accuracy * 100).toFixed(1)}%`,
        bytes(event.bytes_up),
        event.train_ms.toFixed(0),
      ];
      for (const value of cells) {
        const cell = row.insertCell();
        cell.className = "num";
        cell.textContent = String(value);
      }
      while (roundsBody.rows.length > 50) roundsBody.deleteRow(-1);
      break;
    }
    case "backend": {
      const engine = event.backend === "webgpu" ? "WebGPU" : "CPU (WebAssembly)";
      const speeds =
        event.cpu_samples_per_s !== null && event.gpu_samples_per_s !== null
          ? ` — probe: WebGPU ${event.gpu_samples_per_s.toFixed(0)}, CPU ${event.cpu_samples_per_s.toFixed(0)} samples/s`
          : "";
      $("backend").textContent = engine;
      document.body.dataset.backend = event.backend;
      $("backend-why").textContent = `${event.reason}${speeds}${event.adapter ? ` (adapter: ${event.adapter})` : ""}`;
      break;
    }
    case "error":
      banner.textContent = event.fatal ? `Stopped: ${event.message}` : `${event.message} (retrying)`;
      banner.hidden = false;
      break;
  }
}

async function start(): Promise<void> {
  if (client) return;
  banner.hidden = true;
  let data: DataChoice;
  try {
    data = await chooseData();
  } catch (error) {
    handle({ type: "error", message: (error as Error).message, fatal: true });
    return;
  }
  const backend = params.get("backend");
  if (params.get("attack")) document.title = `Byzantine (${params.get("attack")}) · ${document.title}`;
  client = WebflClient.connect({
    data,
    backend: backend === "cpu" || backend === "webgpu" ? backend : "auto",
    attack: params.get("attack"),
  });
  client.onAny(handle);
  startButton.disabled = true;
  stopButton.disabled = false;
  setState("starting");
  client.start();
}

startButton.addEventListener("click", () => void start());
stopButton.addEventListener("click", () => client?.stop());

fetch("/api/v1/task")
  // The body is taken to be the TaskInfo the OpenAPI document promises (types generated, api.ts).
  .then((r) => (r.ok ? (r.json() as Promise<GetJson<"/api/v1/task">>) : Promise.reject(new Error(`HTTP ${r.status}`))))
  .then((task) => {
    $("task").textContent = task.name;
    if (!task.dataset.demo_data_url) $("data-source").textContent = "This task has no demo data: choose your CSV file.";
  })
  .catch((error: Error) => handle({ type: "error", message: `cannot reach the server: ${error.message}`, fatal: false }));

if (params.get("autostart") === "1") void start();
