// Benchmark page: training and inference throughput of webfl's engines (the wasm client's
// `benchEngine`) and of TensorFlow.js (cpu, wasm, webgl, webgpu backends) on the same models,
// batch sizes and shapes, one after another in this one page so ratios hold on a noisy machine.
//
// Exposes `window.benchResults` (rows of `{engine, model, batch, mode, samples_per_s}`),
// `window.benchNotes` (combinations that are unsupported or failed, with the error),
// `window.benchEnv` (browser, adapter, which tfjs wasm flavour ran) and sets `data-done` on
// <body> when finished; tests/bench/run.mjs drives it headless.

import * as tf from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import '@tensorflow/tfjs-backend-webgpu';
import { BarController, BarElement, CategoryScale, Chart, Legend, LogarithmicScale, Tooltip } from 'chart.js';
import init, { benchEngine, benchSecAgg } from './pkg/webfl_client.js';

Chart.register(BarController, BarElement, CategoryScale, LogarithmicScale, Legend, Tooltip);

const ENGINES = ['webfl-cpu', 'webfl-webgpu', 'tfjs-cpu', 'tfjs-wasm', 'tfjs-webgl', 'tfjs-webgpu'] as const;
type Engine = (typeof ENGINES)[number];
const MODELS = ['2nn', 'cnn'] as const;
type Model = (typeof MODELS)[number];
type Mode = 'train' | 'infer';

const TRAIN_BATCHES = [10, 50];
const INFER_BATCH = 100;
const CLASSES = 10;
const LR = 0.01;
/// Timed steps at least, however short `min` is (unless the cap stops the timing first).
const MIN_STEPS = 3;
/// Timed steps at least once the per-workload cap (`cap`, seconds) has passed.
const CAP_MIN_STEPS = 2;
/// A tfjs measurement with fewer than `CAP_MIN_STEPS` timed steps after this many caps gives up.
const HARD_CAP_FACTOR = 3;

export interface BenchRow {
  engine: Engine;
  model: Model;
  batch: number;
  mode: Mode;
  samples_per_s: number;
  /** tfjs training: the gradient path reported (the faster one), and every path's rate. */
  path?: TfPath;
  paths?: Partial<Record<TfPath, number>>;
  /** tfjs: timed steps (train) or calls (infer) behind the number, and the first step's seconds. */
  steps?: number;
  warmup_s?: number;
}

export interface BenchNote {
  engine: Engine;
  model?: Model;
  batch?: number;
  mode?: Mode;
  /** `unsupported`: the engine cannot run this (e.g. a missing gradient kernel); `failed`: it
   * broke; `capped`: a number was reported, but from fewer steps than `min` asks (the per-workload
   * cap); `info`: how a number came about (e.g. which tfjs gradient path won). */
  kind: 'unsupported' | 'failed' | 'capped' | 'info';
  error: string;
}

declare global {
  interface Window {
    benchResults: BenchRow[];
    benchNotes: BenchNote[];
    benchEnv: Record<string, unknown>;
    /** One SecAgg+ round's per-client stage times in this browser (`benchSecAgg`), or null. */
    benchSecAgg: Record<string, number> | null;
  }
}

window.benchResults = [];
window.benchNotes = [];
window.benchEnv = {};
window.benchSecAgg = null;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

// ---- Query parameters ----

const query = new URLSearchParams(location.search);
function listParam<T extends string>(name: string, all: readonly T[]): T[] {
  const raw = query.get(name);
  if (!raw) return [...all];
  const wanted = raw.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = wanted.filter((w) => !(all as readonly string[]).includes(w));
  if (unknown.length) throw new Error(`unknown ${name}: ${unknown.join(', ')} (known: ${all.join(', ')})`);
  return all.filter((a) => wanted.includes(a));
}
const minParam = Number(query.get('min') ?? '1.5');
/** Seconds per tfjs measurement (warm-up included) after which it stops at `CAP_MIN_STEPS` steps. */
const capParam = Number(query.get('cap') ?? '30');
// Clients in the secure-aggregation round timed after the engines (0: none); inputs are the 2NN's size.
const secAggClients = Number(query.get('secagg') ?? '100');
const SECAGG_DIM = 199_210;

// ---- The models in TensorFlow.js, with raw variables (the leanest training path) ----

/**
 * How a tfjs training step gets its gradients. Each backend is measured with every path and the
 * faster one is reported (the row's `path`; the other's rate is in `paths`), so the comparison
 * never rests on a slow path of tfjs's:
 * - `autodiff`: tfjs's own gradients of fused matMul/conv2d + bias + relu (what tf.layers uses).
 * - `dense-grad`: the same forward, but the dense layers carry a hand-written gradient made of
 *   `tf.transpose` + plain `tf.matMul` (tfjs's matMul gradient uses `transposeA`/`transposeB`,
 *   which tfjs's wasm backend runs outside XNNPACK, several times slower), and the first layer
 *   skips the input gradient nobody uses (autodiff computes it). Convolutions keep autodiff.
 */
const TF_PATHS = ['autodiff', 'dense-grad'] as const;
type TfPath = (typeof TF_PATHS)[number];

/** Glorot-uniform, like both webfl's initialiser and Keras's default; values do not affect speed. */
function glorot(shape: number[], fanIn: number, fanOut: number): tf.Variable {
  const limit = Math.sqrt(6 / (fanIn + fanOut));
  return tf.variable(tf.randomUniform(shape, -limit, limit));
}

type Dense = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** `x·w + b` (then relu), with tfjs's fused op and tfjs's gradient. */
const autodiffDense =
  (relu: boolean): Dense =>
  (x, w, b) =>
    tf.fused.matMul({ a: x as tf.Tensor2D, b: w as tf.Tensor2D, bias: b, activation: relu ? 'relu' : 'linear' });

/** The same forward as `autodiffDense`, with a gradient of explicit transposes and plain matMuls;
 * `inputGrad: false` (a layer fed by the data) returns zeros for the input instead of computing
 * a gradient that nothing reads. */
function handDense(relu: boolean, inputGrad: boolean): Dense {
  // tfjs types customGrad's function as variadic; these are its four arguments.
  const f = (x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D, save: tf.GradSaveFunc) => {
    const z = tf.fused.matMul({ a: x, b: w, bias: b, activation: relu ? 'relu' : 'linear' });
    save([x, w, z]);
    return {
      value: z,
      gradFunc: (dy: tf.Tensor, [sx, sw, sz]: tf.Tensor[]) => {
        const g = relu ? tf.mul(dy, tf.step(sz)) : dy;
        const dx = inputGrad ? tf.matMul(g, tf.transpose(sw)) : tf.zerosLike(sx);
        return [dx, tf.matMul(tf.transpose(sx), g), tf.sum(g, 0)];
      },
    };
  };
  const op = tf.customGrad(f as unknown as Parameters<typeof tf.customGrad<tf.Tensor>>[0]);
  return (x, w, b) => op(x, w, b);
}

interface TfModel {
  vars: tf.Variable[];
  /** Logits `[B, 10]` for `x` (`[B, 784]` for the 2NN, NHWC `[B, 28, 28, 1]` for the CNN). */
  forward(x: tf.Tensor): tf.Tensor;
  inputShape(batch: number): number[];
}

function tfModel(model: Model, path: TfPath = 'autodiff'): TfModel {
  const dense = (relu: boolean, first: boolean) => (path === 'autodiff' ? autodiffDense(relu) : handDense(relu, !first));
  if (model === '2nn') {
    const [w1, b1] = [glorot([784, 200], 784, 200), tf.variable(tf.zeros([200]))];
    const [w2, b2] = [glorot([200, 200], 200, 200), tf.variable(tf.zeros([200]))];
    const [w3, b3] = [glorot([200, CLASSES], 200, CLASSES), tf.variable(tf.zeros([CLASSES]))];
    const [d1, d2, d3] = [dense(true, true), dense(true, false), dense(false, false)];
    return {
      vars: [w1, b1, w2, b2, w3, b3],
      inputShape: (b) => [b, 784],
      forward(x) {
        const h = d2(d1(x, w1, b1), w2, b2);
        return d3(h, w3, b3);
      },
    };
  }
  const [c1, cb1] = [glorot([5, 5, 1, 32], 25, 25 * 32), tf.variable(tf.zeros([32]))];
  const [c2, cb2] = [glorot([5, 5, 32, 64], 25 * 32, 25 * 64), tf.variable(tf.zeros([64]))];
  const [w1, b1] = [glorot([7 * 7 * 64, 512], 7 * 7 * 64, 512), tf.variable(tf.zeros([512]))];
  const [w2, b2] = [glorot([512, CLASSES], 512, CLASSES), tf.variable(tf.zeros([CLASSES]))];
  const [d1, d2] = [dense(true, false), dense(false, false)];
  return {
    vars: [c1, cb1, c2, cb2, w1, b1, w2, b2],
    inputShape: (b) => [b, 28, 28, 1],
    forward(x) {
      let h = tf.fused.conv2d({ x: x as tf.Tensor4D, filter: c1 as tf.Tensor4D, strides: 1, pad: 'same', bias: cb1, activation: 'relu' });
      h = tf.maxPool(h, 2, 2, 'valid');
      h = tf.fused.conv2d({ x: h, filter: c2 as tf.Tensor4D, strides: 1, pad: 'same', bias: cb2, activation: 'relu' });
      h = tf.maxPool(h, 2, 2, 'valid');
      const flat = tf.reshape(h, [h.shape[0], 7 * 7 * 64]) as tf.Tensor2D;
      return d2(d1(flat, w1, b1), w2, b2);
    },
  };
}

/** Synthetic inputs in [0, 1) and one-hot random labels, as webfl's benchmark uses. */
function tfBatch(m: TfModel, batch: number): { x: tf.Tensor; y: tf.Tensor2D } {
  const x = tf.randomUniform(m.inputShape(batch), 0, 1);
  const labels = tf.randomUniform([batch], 0, CLASSES, 'int32') as tf.Tensor1D;
  const y = tf.oneHot(labels, CLASSES).toFloat() as tf.Tensor2D;
  labels.dispose();
  return { x, y };
}

/** One tfjs measurement: the rate over the timed steps, and how it went. */
interface Timed {
  rate: number;
  /** Timed steps (train) or calls (infer). */
  steps: number;
  /** Seconds of the first untimed step (kernel compilation, allocation). */
  warmup_s: number;
  /** Set when the per-workload cap stopped the timing before `min` seconds. */
  capped?: string;
}

/**
 * Times `run(k)` (k steps queued back to back, resolving once the last one's result has been read,
 * so asynchronous backends are timed to completion without a sync per step). One untimed step
 * compiles kernels (its time is `warmup_s`), a second one settles allocations unless the first
 * already took half the cap. Chunks of steps sized to about a sixth of `min` are then timed until
 * `min` seconds and `MIN_STEPS` steps, or, past `cap` seconds in all, as soon as `CAP_MIN_STEPS`
 * steps are timed: a slow backend (the CNN on an emulated GPU) still gets a number from a few
 * steps, in bounded time, and says so. Past `HARD_CAP_FACTOR × cap` with fewer steps it gives up
 * with an error saying how far it got.
 */
async function timeSteps(run: (k: number) => Promise<void>, minSeconds: number, capSeconds: number): Promise<Timed> {
  const t0 = performance.now();
  await run(1);
  const warmup_s = (performance.now() - t0) / 1e3;
  let last = warmup_s;
  if (warmup_s < capSeconds / 2) {
    const t1 = performance.now();
    await run(1);
    last = (performance.now() - t1) / 1e3;
  }
  const chunk = Math.max(1, Math.min(1000, Math.round(minSeconds / 6 / Math.max(last, 1e-6))));
  const start = performance.now();
  let steps = 0;
  for (;;) {
    const now = performance.now();
    const timed = (now - start) / 1e3;
    const total = (now - t0) / 1e3;
    if (steps >= MIN_STEPS && timed >= minSeconds) break;
    if (steps >= CAP_MIN_STEPS && total >= capSeconds) {
      return {
        rate: steps / timed,
        steps,
        warmup_s,
        capped: `cap ${capSeconds} s reached: warm-up ${warmup_s.toFixed(1)} s, then ${steps} steps timed in ${timed.toFixed(1)} s`,
      };
    }
    if (total >= HARD_CAP_FACTOR * capSeconds) {
      throw new Error(
        `gave up after ${total.toFixed(0)} s (cap ${capSeconds} s): warm-up ${warmup_s.toFixed(1)} s, ${steps} of ${CAP_MIN_STEPS} steps timed`,
      );
    }
    const k = steps >= CAP_MIN_STEPS && total + chunk * last > capSeconds ? 1 : chunk;
    await run(k);
    steps += k;
  }
  return { rate: steps / ((performance.now() - start) / 1e3), steps, warmup_s };
}

/** Samples/s of TensorFlow.js SGD on the current backend, with gradients from `path`. */
async function tfTrain(model: Model, batch: number, path: TfPath, minSeconds: number, capSeconds: number): Promise<Timed> {
  const m = tfModel(model, path);
  const { x, y } = tfBatch(m, batch);
  const opt = tf.train.sgd(LR);
  const step = (returnCost: boolean): tf.Scalar | null => {
    let loss: tf.Scalar | null = null;
    tf.tidy(() => {
      loss = opt.minimize(() => tf.losses.softmaxCrossEntropy(y, m.forward(x)) as tf.Scalar, returnCost, m.vars);
      if (loss) tf.keep(loss);
    });
    return loss;
  };
  try {
    const t = await timeSteps(
      async (k) => {
        for (let i = 1; i < k; i++) step(false);
        await finish(step(true));
      },
      minSeconds,
      capSeconds,
    );
    return { ...t, rate: t.rate * batch };
  } finally {
    opt.dispose();
    tf.dispose([x, y, ...m.vars]);
  }
}

async function finish(loss: tf.Scalar | null): Promise<void> {
  if (!loss) throw new Error('optimizer.minimize returned no loss');
  const [value] = await loss.data();
  loss.dispose();
  if (!Number.isFinite(value)) throw new Error(`loss is ${value}`);
}

/** Forward-only samples/s at batch 100, awaiting each prediction. */
async function tfInfer(model: Model, minSeconds: number, capSeconds: number): Promise<Timed> {
  const m = tfModel(model);
  const { x, y } = tfBatch(m, INFER_BATCH);
  const predict = async () => {
    const logits = tf.tidy(() => m.forward(x));
    await logits.data();
    logits.dispose();
  };
  try {
    const t = await timeSteps(
      async (k) => {
        for (let i = 0; i < k; i++) await predict();
      },
      minSeconds,
      capSeconds,
    );
    return { ...t, rate: t.rate * INFER_BATCH };
  } finally {
    tf.dispose([x, y, ...m.vars]);
  }
}

/** Switches TensorFlow.js to `name`; throws with what tfjs said when the backend cannot start. */
async function useTfBackend(name: string): Promise<void> {
  const said: string[] = [];
  const warn = console.warn;
  // tfjs reports a failed backend initialisation with console.warn and `false`, not an exception.
  console.warn = (...args: unknown[]) => {
    said.push(args.map(String).join(' '));
    warn.apply(console, args);
  };
  try {
    const ok = await tf.setBackend(name);
    await tf.ready();
    if (!ok || tf.getBackend() !== name) {
      throw new Error(`tf.setBackend('${name}') failed${said.length ? `: ${said.join('; ')}` : ''}`);
    }
  } finally {
    console.warn = warn;
  }
}

// ---- Running the matrix ----

interface Job {
  engine: Engine;
  model: Model;
  batch: number;
  mode: Mode;
}

function jobs(engines: Engine[], models: Model[]): Job[] {
  const out: Job[] = [];
  for (const engine of engines)
    for (const model of models) {
      for (const batch of TRAIN_BATCHES) out.push({ engine, model, batch, mode: 'train' });
      out.push({ engine, model, batch: INFER_BATCH, mode: 'infer' });
    }
  return out;
}

/** Measures `job`: the row, and notes on how it was measured (capped, which tfjs path won). */
async function measure(job: Job, minSeconds: number, capSeconds: number): Promise<{ row: BenchRow; notes: BenchNote[] }> {
  const check = (v: number) => {
    if (!(Number.isFinite(v) && v > 0)) throw new Error(`measured ${v} samples/s`);
    return v;
  };
  if (job.engine.startsWith('webfl-')) {
    const engine = job.engine.slice('webfl-'.length);
    return { row: { ...job, samples_per_s: check(await benchEngine(engine, job.model, job.batch, job.mode, minSeconds)) }, notes: [] };
  }
  const notes: BenchNote[] = [];
  const capNote = (t: Timed, what: string) => {
    if (t.capped) notes.push({ ...job, kind: 'capped', error: `${what}${t.capped}` });
  };
  if (job.mode === 'infer') {
    const t = await tfInfer(job.model, minSeconds, capSeconds);
    capNote(t, '');
    return { row: { ...job, samples_per_s: check(t.rate), steps: t.steps, warmup_s: t.warmup_s }, notes };
  }
  // Every gradient path, the faster one reported; a path that fails is noted, not fatal, while
  // another one measures. The CNN at B=50 (tens of seconds a step on an emulated GPU or tfjs-cpu)
  // runs only the path that won its B=10 on this backend: the paths differ in the dense layers only.
  const paths: Partial<Record<TfPath, number>> = {};
  let best: { path: TfPath; t: Timed } | null = null;
  const errors: string[] = [];
  const b10 = window.benchResults.find(
    (r) => r.engine === job.engine && r.model === job.model && r.mode === 'train' && r.batch === TRAIN_BATCHES[0],
  )?.path;
  const inherited = job.model === 'cnn' && job.batch !== TRAIN_BATCHES[0] && b10 !== undefined;
  for (const path of inherited ? [b10] : TF_PATHS) {
    try {
      const t = await tfTrain(job.model, job.batch, path, minSeconds, capSeconds);
      paths[path] = check(t.rate);
      capNote(t, `${path}: `);
      if (!best || t.rate > best.t.rate) best = { path, t };
    } catch (e) {
      errors.push(`${path}: ${message(e)}`);
    }
  }
  if (!best) {
    // The same limitation on every path (e.g. a missing conv gradient kernel) is said once.
    const distinct = [...new Set(errors.map((e) => e.replace(/^[a-z-]+: /, '')))];
    throw new Error(distinct.length === 1 ? distinct[0] : errors.join('; '));
  }
  for (const e of errors) notes.push({ ...job, kind: kindOf(e), error: e });
  const others = Object.entries(paths)
    .filter(([p]) => p !== best!.path)
    .map(([p, v]) => `${p} ${fmt(v)} samples/s (${(best!.t.rate / v).toFixed(2)}× slower)`);
  notes.push({
    ...job,
    kind: 'info',
    error: inherited
      ? `path ${best.path} only, the winner at B=${TRAIN_BATCHES[0]}`
      : `reported path ${best.path}${others.length ? `; ${others.join(', ')}` : ''}`,
  });
  return {
    row: { ...job, samples_per_s: best.t.rate, path: best.path, paths, steps: best.t.steps, warmup_s: best.t.warmup_s },
    notes,
  };
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A missing kernel or gradient is a limitation of the engine, not a failure of the run. */
function kindOf(error: string): BenchNote['kind'] {
  return /not yet implemented|not registered|not wired yet|gradient function not found|unsupported/i.test(error)
    ? 'unsupported'
    : 'failed';
}

function fmt(v: number): string {
  return v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toPrecision(3);
}

function addRow(row: BenchRow) {
  window.benchResults.push(row);
  const tr = document.createElement('tr');
  for (const [text, num] of [
    [row.engine, false],
    [row.model, false],
    [String(row.batch), true],
    [row.mode, false],
    [fmt(row.samples_per_s), true],
    [row.path ?? '', false],
  ] as const) {
    const td = document.createElement('td');
    td.textContent = text;
    if (num) td.className = 'num';
    tr.append(td);
  }
  $<HTMLTableSectionElement>('bench-table').querySelector('tbody')!.append(tr);
  updateChart();
}

function addNote(note: BenchNote) {
  window.benchNotes.push(note);
  const list = $<HTMLUListElement>('notes');
  if (window.benchNotes.length === 1) list.replaceChildren();
  const li = document.createElement('li');
  const what = [note.engine, note.model, note.batch !== undefined ? `B=${note.batch}` : undefined, note.mode]
    .filter(Boolean)
    .join(' ');
  li.textContent = `${what}: ${note.kind} — ${note.error}`;
  list.append(li);
}

// ---- Chart: one bar group per workload, one colour per engine, log scale ----

const COLORS: Record<Engine, string> = {
  'webfl-cpu': '#2563eb',
  'webfl-webgpu': '#7c3aed',
  'tfjs-cpu': '#9ca3af',
  'tfjs-wasm': '#f59e0b',
  'tfjs-webgl': '#10b981',
  'tfjs-webgpu': '#ef4444',
};
let chart: Chart<'bar'> | null = null;
const workload = (r: { model: Model; batch: number; mode: Mode }) =>
  `${r.model.toUpperCase()} ${r.mode} B=${r.batch}`;

function updateChart() {
  const rows = window.benchResults;
  const labels = [...new Set(rows.map(workload))];
  const engines = ENGINES.filter((e) => rows.some((r) => r.engine === e));
  const datasets = engines.map((engine) => ({
    label: engine,
    backgroundColor: COLORS[engine],
    data: labels.map((l) => rows.find((r) => r.engine === engine && workload(r) === l)?.samples_per_s ?? null),
  }));
  if (!chart) {
    chart = new Chart($<HTMLCanvasElement>('bench-chart'), {
      type: 'bar',
      data: { labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { y: { type: 'logarithmic', title: { display: true, text: 'samples/s (log)' } } },
      },
    });
  } else {
    chart.data.labels = labels;
    chart.data.datasets = datasets;
    chart.update();
  }
}

// ---- Target ratios (also computed by the runner from the JSON) ----

function rate(engine: Engine, model: Model, batch: number, mode: Mode = 'train'): number | undefined {
  return window.benchResults.find((r) => r.engine === engine && r.model === model && r.batch === batch && r.mode === mode)
    ?.samples_per_s;
}

function ratios(): { target: string; ratio: number | undefined; goal: number }[] {
  const out: { target: string; ratio: number | undefined; goal: number }[] = [];
  const div = (a?: number, b?: number) => (a !== undefined && b !== undefined ? a / b : undefined);
  for (const b of TRAIN_BATCHES)
    out.push({ target: `webfl-cpu / tfjs-wasm, 2NN train B=${b}`, ratio: div(rate('webfl-cpu', '2nn', b), rate('tfjs-wasm', '2nn', b)), goal: 2 });
  for (const b of TRAIN_BATCHES) {
    const tfjs = ENGINES.filter((e) => e.startsWith('tfjs-'))
      .map((e) => ({ e, v: rate(e, 'cnn', b) }))
      .filter((x) => x.v !== undefined)
      .sort((p, q) => q.v! - p.v!)[0];
    out.push({
      target: `webfl-cpu / best tfjs (${tfjs?.e ?? 'none'}), CNN train B=${b}`,
      ratio: div(rate('webfl-cpu', 'cnn', b), tfjs?.v),
      goal: 2,
    });
  }
  for (const model of MODELS)
    for (const b of TRAIN_BATCHES)
      out.push({ target: `webfl-webgpu / tfjs-webgpu, ${model.toUpperCase()} train B=${b}`, ratio: div(rate('webfl-webgpu', model, b), rate('tfjs-webgpu', model, b)), goal: 1 });
  return out;
}

function showRatios() {
  const body = $<HTMLTableElement>('ratio-table').querySelector('tbody')!;
  body.replaceChildren(
    ...ratios().map(({ target, ratio, goal }) => {
      const tr = document.createElement('tr');
      const cells = [target, ratio === undefined ? '–' : `${ratio.toFixed(2)}×`, `≥ ${goal}×`, ratio === undefined ? 'n/a' : ratio >= goal ? 'yes' : 'no'];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        td.textContent = text;
        if (i === 1 || i === 2) td.className = 'num';
        tr.append(td);
      });
      return tr;
    }),
  );
}

// ---- Environment facts worth keeping with the numbers ----

async function describeEnv(): Promise<void> {
  const env: Record<string, unknown> = {
    userAgent: navigator.userAgent,
    hardwareConcurrency: navigator.hardwareConcurrency,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    tfjsVersion: tf.version.tfjs,
    minSeconds: minParam,
    capSeconds: capParam,
  };
  type Adapter = { info?: Record<string, unknown> };
  const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<Adapter | null> } }).gpu;
  try {
    const adapter = gpu ? await gpu.requestAdapter() : null;
    const info = adapter?.info;
    env.webgpuAdapter = info
      ? { vendor: info.vendor, architecture: info.architecture, description: info.description, isFallbackAdapter: info.isFallbackAdapter }
      : gpu ? 'no adapter' : 'navigator.gpu missing';
  } catch (e) {
    env.webgpuAdapter = `error: ${message(e)}`;
  }
  try {
    const gl = document.createElement('canvas').getContext('webgl2');
    // The unmasked name says which implementation runs (e.g. SwiftShader), RENDERER only "WebKit WebGL".
    const debug = gl?.getExtension('WEBGL_debug_renderer_info');
    env.webgl2Renderer = gl ? gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER) : 'no WebGL2 context';
  } catch (e) {
    env.webgl2Renderer = `error: ${message(e)}`;
  }
  Object.assign(window.benchEnv, env);
  renderEnv();
}

function renderEnv() {
  const list = $<HTMLUListElement>('env');
  list.replaceChildren(
    ...Object.entries(window.benchEnv).map(([k, v]) => {
      const li = document.createElement('li');
      li.textContent = `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`;
      return li;
    }),
  );
}

const nextFrame = () => new Promise<void>((r) => requestAnimationFrame(() => setTimeout(r, 0)));

async function main() {
  const engines = listParam('engines', ENGINES);
  const models = listParam('models', MODELS);
  if (!(minParam >= 0)) throw new Error(`min must be a non-negative number of seconds, not ${query.get('min')}`);
  if (!(capParam > 0)) throw new Error(`cap must be a positive number of seconds, not ${query.get('cap')}`);
  $('min-seconds').textContent = String(minParam);
  $('cap-seconds').textContent = String(capParam);
  setWasmPaths(new URL('./tfjs/', location.href).href);
  await describeEnv();
  await init();

  const all = jobs(engines, models);
  let current: Engine | null = null;
  let broken: string | null = null;
  for (const [i, job] of all.entries()) {
    $('bench-state').textContent = `${i + 1}/${all.length}: ${job.engine} ${job.model} ${job.mode} B=${job.batch}`;
    await nextFrame();
    if (job.engine !== current) {
      current = job.engine;
      broken = null;
      if (job.engine.startsWith('tfjs-')) {
        const backend = job.engine.slice('tfjs-'.length);
        try {
          await useTfBackend(backend);
          if (backend === 'wasm') {
            // Which binary tfjs picked: threads need cross-origin isolation, which we do not have.
            const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
            const threads = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
            window.benchEnv.tfjsWasmFlavour = `${simd ? 'simd' : 'plain'}${threads ? ' + threads' : ', single-threaded'}`;
            renderEnv();
          }
        } catch (e) {
          broken = message(e);
          addNote({ engine: job.engine, kind: 'failed', error: broken });
        }
      }
    }
    if (broken !== null) continue;
    try {
      const { row, notes } = await measure(job, minParam, capParam);
      addRow(row);
      notes.forEach(addNote);
    } catch (e) {
      const error = message(e);
      addNote({ ...job, kind: kindOf(error), error });
    }
  }
  showRatios();
  if (secAggClients > 0) {
    $('bench-state').textContent = `secure aggregation: one SecAgg+ round of ${secAggClients} clients, d = ${SECAGG_DIM}`;
    await nextFrame();
    try {
      window.benchSecAgg = JSON.parse(benchSecAgg(secAggClients, SECAGG_DIM, 0.1));
      window.benchEnv.secagg = window.benchSecAgg;
      renderEnv();
    } catch (e) {
      addNote({ engine: 'webfl-cpu', kind: 'failed', error: `secure aggregation: ${message(e)}` });
    }
  }
  $('bench-state').textContent = `done: ${window.benchResults.length} results, ${window.benchNotes.length} notes`;
}

main()
  .catch((e) => {
    const banner = $('error-banner');
    banner.textContent = `benchmark stopped: ${message(e)}`;
    banner.hidden = false;
    window.benchEnv.fatal = message(e);
  })
  .finally(() => {
    document.body.dataset.state = 'done';
    document.body.dataset.done = 'true';
  });
