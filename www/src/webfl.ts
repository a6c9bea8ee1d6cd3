// The page-side API of the webfl client. Training runs in a dedicated Web Worker (worker.ts), so
// the page never freezes; this class starts it, forwards commands and re-emits its events.
//
//   const client = WebflClient.connect({ data: { kind: "demo", partition: "iid", client: 3, of: 10 } });
//   client.on("round", (e) => console.log(e.round, e.bytes_up));
//   client.start();  …  client.stop();

import type { ClientEvent } from "./pkg/webfl_client.js";

export type {
  BackendEvent,
  ClientEvent,
  ClientPhase,
  DataEvent,
  ErrorEvent,
  IdentityEvent,
  ProgressEvent,
  RoundEvent,
  StateEvent,
} from "./pkg/webfl_client.js";

/** Where the local data comes from. It never leaves the browser. */
export type DataChoice =
  | { kind: "demo"; partition: string; client: number; of: number; seed?: number }
  | { kind: "csv"; name: string; text: string };

export interface ConnectOptions {
  /** Server origin; default: the page's own. */
  server?: string;
  data: DataChoice;
  /** Key under which the identity and progress persist (IndexedDB); default: one per tab. */
  identityKey?: string;
  /**
   * Training engine: "auto" (default: WebGPU when present and faster than the CPU in a short
   * probe), "cpu", or "webgpu" (still falls back to the CPU when WebGPU is missing or fails).
   */
  backend?: "auto" | "cpu" | "webgpu";
  /**
   * Robustness tests only: a Byzantine client that trains honestly and uploads what the attack
   * makes of its update ("sign-flip[:SCALE]": −SCALE·Δ, "scale:FACTOR": FACTOR·Δ).
   */
  attack?: string | null;
}

/** Messages the page sends the worker. */
export type WorkerCommand =
  | { cmd: "start"; server: string; data: DataChoice; identityKey: string; backend: string; attack: string | null }
  | { cmd: "stop" };

/** Totals the worker keeps in IndexedDB, so a reloaded tab resumes its counts. */
export interface SavedProgress {
  rounds: number;
  bytes_up: number;
}

/** Worker → page: the client's events, plus what was restored from storage. */
export type WorkerMessage = ClientEvent | ({ type: "restored"; client_id: string | null } & SavedProgress);

type EventOf<K extends WorkerMessage["type"]> = Extract<WorkerMessage, { type: K }>;
type Listener<K extends WorkerMessage["type"]> = (event: EventOf<K>) => void;

/** A stable id for this tab: survives reloads (sessionStorage), differs between tabs. */
export function tabIdentityKey(): string {
  const name = "webfl-tab-id";
  let id = sessionStorage.getItem(name);
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem(name, id);
  }
  return id;
}

export class WebflClient {
  private worker: Worker | null = null;
  private readonly listeners = new Map<string, Set<(event: WorkerMessage) => void>>();

  private constructor(private readonly options: Required<ConnectOptions>) {}

  static connect(options: ConnectOptions): WebflClient {
    return new WebflClient({
      server: options.server ?? location.origin,
      data: options.data,
      identityKey: options.identityKey ?? tabIdentityKey(),
      backend: options.backend ?? "auto",
      attack: options.attack ?? null,
    });
  }

  /** Subscribes to one kind of event; returns the unsubscribe function. */
  on<K extends WorkerMessage["type"]>(type: K, listener: Listener<K>): () => void {
    const set = this.listeners.get(type) ?? new Set();
    set.add(listener as (event: WorkerMessage) => void);
    this.listeners.set(type, set);
    return () => set.delete(listener as (event: WorkerMessage) => void);
  }

  get running(): boolean {
    return this.worker !== null;
  }

  /** Starts contributing in a new worker (no-op if already running). */
  start(): void {
    if (this.worker) return;
    const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "webfl" });
    worker.onmessage = (message: MessageEvent<WorkerMessage>) => this.dispatch(message.data);
    worker.onerror = (error: ErrorEvent) => {
      this.dispatch({ type: "error", message: `worker failed: ${error.message}`, fatal: true });
      this.stop();
    };
    const { server, data, identityKey, backend, attack } = this.options;
    worker.postMessage({ cmd: "start", server, data, identityKey, backend, attack } satisfies WorkerCommand);
    this.worker = worker;
  }

  /** Stops at once: the worker is terminated mid-round if need be. Identity and totals are
   *  already saved, and the server's round deadline covers the missing update. */
  stop(): void {
    if (!this.worker) return;
    this.worker.terminate();
    this.worker = null;
    this.dispatch({ type: "state", state: "stopped", round: null, detail: "stopped by the user" });
  }

  private dispatch(event: WorkerMessage): void {
    for (const listener of this.listeners.get(event.type) ?? []) listener(event);
    for (const listener of this.listeners.get("*") ?? []) listener(event);
  }

  /** Every event, whatever its type (for logs and tests). */
  onAny(listener: (event: WorkerMessage) => void): () => void {
    const set = this.listeners.get("*") ?? new Set();
    set.add(listener);
    this.listeners.set("*", set);
    return () => set.delete(listener);
  }
}
