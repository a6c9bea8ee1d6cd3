// The dedicated worker: loads the wasm client, persists identity and totals in IndexedDB, and
// relays the client's events to the page.

/// <reference lib="webworker" />
import init, { Contributor, type ClientEvent } from "./pkg/webfl_client.js";
import type { SavedProgress, WorkerCommand, WorkerMessage } from "./webfl.js";

declare const self: DedicatedWorkerGlobalScope;

interface Saved extends SavedProgress {
  client_id: string | null;
  token: string | null;
  server: string;
  /** Top-k error-feedback residual: what earlier rounds did not send yet. */
  error_feedback?: Uint8Array;
}

const DB_NAME = "webfl";
const STORE = "clients";

function openDb(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function idb<T>(db: IDBDatabase, mode: IDBTransactionMode, op: (store: IDBObjectStore) => IDBRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    const request = op(db.transaction(STORE, mode).objectStore(STORE));
    request.onsuccess = () => resolve(request.result as T);
    request.onerror = () => reject(request.error);
  });
}

const post = (message: WorkerMessage) => self.postMessage(message);
let contributor: Contributor | null = null;

async function start(command: Extract<WorkerCommand, { cmd: "start" }>): Promise<void> {
  await init();
  const db = await openDb();
  const key = `${command.server}|${command.identityKey}`;
  const stored = await idb<Saved | undefined>(db, "readonly", (s) => s.get(key));
  // A different server's identity means nothing here.
  const saved: Saved =
    stored && stored.server === command.server
      ? stored
      : { client_id: null, token: null, server: command.server, rounds: 0, bytes_up: 0 };
  post({ type: "restored", client_id: saved.client_id, rounds: saved.rounds, bytes_up: saved.bytes_up });
  const persist = () => idb(db, "readwrite", (s) => s.put(saved, key)).catch(() => undefined);

  const client = new Contributor(command.server, (event: ClientEvent) => {
    if (event.type === "identity") {
      saved.client_id = event.client_id;
      saved.token = event.token;
      void persist();
    } else if (event.type === "round") {
      saved.rounds += 1;
      saved.bytes_up += event.bytes_up;
      saved.error_feedback = client.errorFeedback();
      void persist();
    }
    // The token stays in the worker: the page has no use for it.
    post(event.type === "identity" ? { ...event, token: "" } : event);
  });
  contributor = client;
  if (saved.client_id && saved.token) client.resume(saved.client_id, saved.token);
  if (saved.error_feedback) client.restoreErrorFeedback(saved.error_feedback);
  client.setBackend(command.backend);
  if (command.attack) client.setAttack(command.attack);
  const data = command.data;
  if (data.kind === "demo") {
    await client.useDemoPartition(data.partition, data.client, data.of, data.seed ?? 0);
  } else {
    await client.loadTask();
    client.useCsv(data.text, data.name);
  }
  await client.run();
}

self.onmessage = (message: MessageEvent<WorkerCommand>) => {
  const command = message.data;
  if (command.cmd === "start") {
    start(command).catch((error: unknown) => {
      post({ type: "error", message: error instanceof Error ? error.message : String(error), fatal: true });
      post({ type: "state", state: "stopped", round: null, detail: "failed" });
    });
  } else {
    contributor?.stop();
  }
};
