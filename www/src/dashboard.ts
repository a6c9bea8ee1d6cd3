// Operator dashboard: polls the server's operator endpoints every 2 s and draws the run's progress.
// Charts are created once and updated in place, so a long session does not leak canvases.

import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from 'chart.js';
import type { GetJson, Schemas } from './api.js';

// Only what the four charts use, so esbuild leaves the rest of Chart.js out of the bundle.
Chart.register(LineController, LineElement, PointElement, BarController, BarElement, CategoryScale, LinearScale, Legend, Tooltip);

const POLL_MS = 2000;
// A hung request must not stall the loop: each fetch gives up after this long.
const FETCH_TIMEOUT_MS = 5000;
// Same window the server uses for `clients_connected`.
const CONNECTED_WINDOW_MS = 60_000;

// ---- The server's JSON (docs/protocol.md, "Operator endpoints"; types generated, see api.ts) ----

type Status = Schemas['Status'];
type RoundRecord = Schemas['RoundRecord'];
type ClientRecord = Schemas['ClientRecord'];
type Outcome = Schemas['RoundOutcome'];
type OperatorPath = '/api/status' | '/api/rounds' | '/api/clients';

function mib(bytes: number): string {
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

interface Fetched<T> {
  body: T;
  // The server's clock (HTTP Date header), to judge "last seen" against the server's time.
  serverDateMs: number | null;
}

// The operator token, for client health when the server has one: open the dashboard as
// `/dashboard#token=…` once; it is kept for this tab only (never sent anywhere else).
const TOKEN_KEY = 'webfl-operator-token';
const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromHash !== null) {
  sessionStorage.setItem(TOKEN_KEY, fromHash);
  history.replaceState(null, '', location.pathname + location.search);
}
const operatorToken = sessionStorage.getItem(TOKEN_KEY);

async function getJson<P extends OperatorPath>(path: P): Promise<Fetched<GetJson<P>>> {
  let res: Response;
  const headers: HeadersInit = operatorToken === null ? {} : { Authorization: `Bearer ${operatorToken}` };
  try {
    res = await fetch(path, { cache: 'no-store', headers, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  } catch (e) {
    const why = e instanceof DOMException && e.name === 'TimeoutError' ? 'timed out' : 'server unreachable';
    throw new Error(`GET ${path}: ${why}`);
  }
  if (!res.ok) {
    // Refusals are ErrorBody ({"error", "message"}); show the message when there is one.
    let detail = res.statusText;
    try {
      const err: unknown = await res.json();
      if (typeof err === 'object' && err !== null && 'message' in err && typeof err.message === 'string') detail = err.message;
    } catch {
      // Not JSON (a proxy's error page): the status line will do.
    }
    const hint =
      res.status === 401 || res.status === 403 ? ' — open this page as /dashboard#token=<operator token>' : '';
    throw new Error(`GET ${path}: HTTP ${res.status}${detail ? ` (${detail})` : ''}${hint}`);
  }
  // The one cast: a 2xx body is taken to be what the OpenAPI document says `path` answers. The
  // types are generated from that document, and the server's tests hold it to the handlers.
  let body: GetJson<P>;
  try {
    body = (await res.json()) as GetJson<P>;
  } catch {
    throw new Error(`GET ${path}: the answer is not JSON`);
  }
  const date = res.headers.get('Date');
  const parsed = date === null ? NaN : Date.parse(date);
  return { body, serverDateMs: Number.isFinite(parsed) ? parsed : null };
}

// ---- DOM helpers ----

function byId<T extends HTMLElement>(id: string, type: new () => T): T {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`dashboard.html lacks #${id}`);
  return el;
}

function setText(id: string, text: string): void {
  byId(id, HTMLElement).textContent = text;
}

function cell(text: string, className?: string): HTMLTableCellElement {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function placeholderRow(columns: number, text: string): HTMLTableRowElement {
  const tr = document.createElement('tr');
  const td = cell(text, 'muted');
  td.colSpan = columns;
  tr.append(td);
  return tr;
}

const pct = (a: number | null): string => (a === null ? '–' : `${(a * 100).toFixed(2)}%`);
const fixed = (x: number | null, digits: number): string => (x === null ? '–' : x.toFixed(digits));

function formatTime(ms: number): string {
  const d = new Date(ms);
  // Today's versions need only the time; older ones need the date too.
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

// ---- Charts ----

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

// Every outcome the server names, or the type check fails.
const OUTCOME_STYLE: Record<Outcome, { label: string; color: string }> = {
  closed: { label: 'Closed', color: '#16a34a' },
  closed_by_deadline: { label: 'Closed by deadline', color: '#d97706' },
  abandoned: { label: 'Abandoned', color: '#9ca3af' },
  store_failed: { label: 'Store failed', color: '#dc2626' },
};
const OUTCOMES = Object.keys(OUTCOME_STYLE) as Outcome[];

type XY = { x: number; y: number };

interface Charts {
  accuracy: Chart<'line', XY[]>;
  loss: Chart<'line', XY[]>;
  participants: Chart<'bar', number[], string>;
  timeline: Chart<'bar', (number | null)[], string>;
}

function canvas(id: string): HTMLCanvasElement {
  return byId(id, HTMLCanvasElement);
}

function createCharts(): Charts {
  // Follow the stylesheet's (light or dark) palette instead of Chart.js's fixed greys.
  Chart.defaults.color = cssVar('--muted', '#5f6b7a');
  Chart.defaults.borderColor = cssVar('--border', '#dde1e7');
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  const accent = cssVar('--accent', '#2563eb');

  // No animation: an update every 2 s would otherwise be forever mid-tween (and screenshots blur).
  const common = { animation: false, responsive: true, maintainAspectRatio: false } as const;
  const roundAxis = { type: 'linear', title: { display: true, text: 'round' }, ticks: { precision: 0 } } as const;

  // Monotone interpolation cannot overshoot, so the curve never shows accuracy above 100 %.
  const accuracy = new Chart<'line', XY[]>(canvas('accuracy-chart'), {
    type: 'line',
    data: { datasets: [{ label: 'Test accuracy', data: [], borderColor: accent, backgroundColor: accent, cubicInterpolationMode: 'monotone' }] },
    options: {
      ...common,
      scales: {
        x: roundAxis,
        y: { max: 100, title: { display: true, text: 'accuracy (%)' }, ticks: { callback: (v) => `${v}%` } },
      },
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { title: (items) => `Round ${items[0]?.parsed.x ?? ''}`, label: (i) => `${(i.parsed.y ?? 0).toFixed(2)}%` } },
      },
    },
  });

  const lossColor = '#7c3aed';
  const loss = new Chart<'line', XY[]>(canvas('loss-chart'), {
    type: 'line',
    data: { datasets: [{ label: 'Test loss', data: [], borderColor: lossColor, backgroundColor: lossColor, cubicInterpolationMode: 'monotone' }] },
    options: {
      ...common,
      scales: { x: roundAxis, y: { title: { display: true, text: 'loss' } } },
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { title: (items) => `Round ${items[0]?.parsed.x ?? ''}`, label: (i) => (i.parsed.y ?? 0).toFixed(4) } },
      },
    },
  });

  const participants = new Chart<'bar', number[], string>(canvas('participants-chart'), {
    type: 'bar',
    data: {
      labels: [],
      datasets: [
        { label: 'Selected', data: [], backgroundColor: '#93c5fd' },
        { label: 'Reports', data: [], backgroundColor: accent },
      ],
    },
    options: {
      ...common,
      scales: {
        x: { title: { display: true, text: 'round' } },
        y: { beginAtZero: true, title: { display: true, text: 'clients' }, ticks: { precision: 0 } },
      },
      plugins: { legend: { position: 'bottom' } },
    },
  });

  // One dataset per outcome, stacked, with nulls elsewhere: each round gets one full-width bar in
  // its outcome's colour, and Chart.js's own legend explains the colours. Below it, hatched grey,
  // the idle gap since the previous round settled: rounds waiting for nobody show none.
  const timeline = new Chart<'bar', (number | null)[], string>(canvas('timeline-chart'), {
    type: 'bar',
    data: {
      labels: [],
      datasets: [
        { label: 'Idle before the round', data: [], backgroundColor: '#e5e7eb' },
        ...OUTCOMES.map((o) => ({ label: OUTCOME_STYLE[o].label, data: [], backgroundColor: OUTCOME_STYLE[o].color })),
      ],
    },
    options: {
      ...common,
      scales: {
        x: { stacked: true, title: { display: true, text: 'round' } },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: 'duration (s)' } },
      },
      plugins: {
        legend: { position: 'bottom' },
        tooltip: { callbacks: { label: (i) => `${i.dataset.label ?? ''}: ${(i.parsed.y ?? 0).toFixed(1)} s` } },
      },
    },
  });

  return { accuracy, loss, participants, timeline };
}

function setPoints(chart: Chart<'line', XY[]>, points: XY[]): void {
  const ds = chart.data.datasets[0];
  if (!ds) return;
  ds.data = points;
  // Dots help with a few rounds and clutter with hundreds.
  ds.pointRadius = points.length > 60 ? 0 : 3;
}

function updateCharts(charts: Charts, rounds: RoundRecord[]): void {
  const versioned = rounds.filter((r) => r.version !== null);
  const acc = versioned.flatMap((r) => (r.test_accuracy === null ? [] : [{ x: r.round, y: r.test_accuracy * 100 }]));
  const loss = versioned.flatMap((r) => (r.test_loss === null ? [] : [{ x: r.round, y: r.test_loss }]));
  setPoints(charts.accuracy, acc);
  setPoints(charts.loss, loss);

  const labels = rounds.map((r) => String(r.round));
  charts.participants.data.labels = labels;
  const [selected, reports] = charts.participants.data.datasets;
  if (selected) selected.data = rounds.map((r) => r.selected);
  if (reports) reports.data = rounds.map((r) => r.reports);

  charts.timeline.data.labels = labels;
  const idle = charts.timeline.data.datasets[0];
  const gaps = rounds.map((r, i) => {
    const before = rounds[i - 1];
    return before ? Math.max(0, r.opened_at_ms - before.closed_at_ms) / 1000 : 0;
  });
  if (idle) idle.data = gaps;
  OUTCOMES.forEach((o, i) => {
    const ds = charts.timeline.data.datasets[i + 1];
    if (ds) ds.data = rounds.map((r) => (r.outcome === o ? Math.max(0, r.closed_at_ms - r.opened_at_ms) / 1000 : null));
  });
  // The largest idle gap, for tests and people: 0 when rounds follow each other at once.
  canvas('timeline-chart').dataset['maxIdleS'] = Math.max(0, ...gaps).toFixed(3);

  // 'none': redraw at once, no transition.
  for (const c of [charts.accuracy, charts.loss, charts.participants, charts.timeline]) c.update('none');

  // Point counts, for tests that want to know what a chart holds without reading pixels.
  canvas('accuracy-chart').dataset['points'] = String(acc.length);
  canvas('loss-chart').dataset['points'] = String(loss.length);
  canvas('participants-chart').dataset['points'] = String(rounds.length);
  canvas('timeline-chart').dataset['points'] = String(rounds.length);
}

// ---- Panels ----

function renderStatus(s: Status): void {
  setText('task', s.task);
  setText('model-version', `v${s.model_version}`);
  setText('rounds-completed', String(s.rounds_completed));
  setText('test-accuracy', pct(s.test_accuracy));
  setText('clients-connected', String(s.clients_connected));
  setText('open-round', s.open_round === null ? 'none' : `#${s.open_round}`);
  setText('updates-accepted', String(s.updates_accepted));
  setText(
    'bytes-up',
    `↑ ${mib(s.bytes_up_total)} (${s.compression}) · ↓ ${mib(s.bytes_down_total)} · store ${mib(s.store_bytes)}`,
  );
  const p = s.privacy;
  setText(
    'privacy',
    p === null
      ? 'off'
      : `ε ${p.epsilon === null ? '–' : p.epsilon.toPrecision(4)}${p.target_epsilon === null ? '' : ` / ${p.target_epsilon}`} (${p.mode}, δ ${p.delta})${p.budget_left ? '' : ' · budget spent'}`,
  );
  document.body.dataset['epsilon'] = p?.epsilon === null || p === null ? '' : String(p.epsilon);
  document.title = `webfl · ${s.task} · v${s.model_version}`;
}

function versionLink(version: number): HTMLAnchorElement {
  const a = document.createElement('a');
  a.href = `/api/v1/models/${version}`;
  a.download = `model-v${version}.safetensors`;
  a.textContent = `v${version}`;
  a.title = 'Download this version (safetensors)';
  return a;
}

/** A secure round's participation stage by stage ("8 → 8 → 8 → 7 → 5"); a dash for plain rounds. */
function secureStages(r: RoundRecord): string {
  const s = r.secagg;
  return s ? [s.cohort, s.advertised, s.shared, s.masked, s.unmasked].join(' → ') : '–';
}

function renderVersions(rounds: RoundRecord[]): void {
  const tbody = byId('versions-table', HTMLTableElement).tBodies[0];
  if (!tbody) return;
  const rows: HTMLTableRowElement[] = [];
  for (let i = rounds.length - 1; i >= 0; i--) {
    const r = rounds[i];
    if (!r || r.version === null) continue;
    const tr = document.createElement('tr');
    const v = cell('', 'num');
    v.append(versionLink(r.version));
    tr.append(
      v,
      cell(String(r.round), 'num'),
      cell(pct(r.test_accuracy), 'num'),
      cell(fixed(r.test_loss, 4), 'num'),
      cell(`${r.reports}/${r.selected}`, 'num'),
      cell(fixed(r.update_norm, 3), 'num'),
      cell(String(r.clipped), 'num'),
      cell(mib(r.bytes_up), 'num'),
      cell(secureStages(r), 'num'),
      cell(formatTime(r.closed_at_ms)),
    );
    rows.push(tr);
  }
  // Version 0 (the initial model) is stored too but has no round record.
  const tr = document.createElement('tr');
  const v = cell('', 'num');
  v.append(versionLink(0));
  const dash = () => cell('–', 'num');
  tr.append(v, dash(), dash(), dash(), dash(), dash(), dash(), dash(), dash(), cell('initial', 'muted'));
  rows.push(tr);
  tbody.replaceChildren(...rows);
}

function renderClients(clients: ClientRecord[], serverNowMs: number): void {
  const tbody = byId('clients-table', HTMLTableElement).tBodies[0];
  if (!tbody) return;
  if (clients.length === 0) {
    tbody.replaceChildren(placeholderRow(6, 'No clients yet.'));
    return;
  }
  tbody.replaceChildren(
    ...clients.map((c) => {
      const tr = document.createElement('tr');
      const ago = Math.max(0, serverNowMs - c.last_seen_ms);
      const idCell = document.createElement('td');
      const dot = document.createElement('span');
      dot.className = ago <= CONNECTED_WINDOW_MS ? 'dash-dot dash-online' : 'dash-dot';
      dot.title = ago <= CONNECTED_WINDOW_MS ? 'connected' : 'not seen in the last minute';
      const id = document.createElement('span');
      id.className = 'dash-client-id';
      id.textContent = c.client_id;
      id.title = `${c.client_id}\nfirst seen ${new Date(c.first_seen_ms).toLocaleString()}`;
      idCell.append(dot, id);
      const seen = cell(`${Math.round(ago / 1000)}s ago`, 'num');
      seen.title = new Date(c.last_seen_ms).toLocaleString();
      tr.append(
        idCell,
        seen,
        cell(String(c.rounds_completed), 'num'),
        cell(String(c.failures), 'num'),
        cell(c.last_round_trip_ms === null ? '–' : `${c.last_round_trip_ms} ms`, 'num'),
        cell(mib(c.bytes_up), 'num'),
      );
      return tr;
    }),
  );
}

function showErrors(errors: string[]): void {
  const banner = byId('error-banner', HTMLElement);
  if (errors.length === 0) {
    banner.hidden = true;
    banner.textContent = '';
    return;
  }
  banner.textContent = `Update failed: ${errors.join('; ')}. Showing the last data received; retrying every ${POLL_MS / 1000} s.`;
  banner.hidden = false;
}

function setPollState(state: 'ok' | 'error' | 'paused', text: string): void {
  document.body.dataset['pollState'] = state;
  setText('poll-state', text);
}

// ---- Polling ----

const charts = createCharts();
// Skips redrawing charts and the versions table when no round settled since the last poll.
let roundsKey = '';
let timer: number | undefined;
let inFlight = false;

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function pollOnce(): Promise<void> {
  const errors: string[] = [];

  // Status first, then the lists: the lists are then at least as new as the status, so once
  // <body data-rounds-completed="N"> is set the charts already hold those N rounds.
  let status: Status | null = null;
  try {
    status = (await getJson('/api/status')).body;
    renderStatus(status);
  } catch (e) {
    errors.push(errorText(e));
  }

  const [rounds, clients] = await Promise.allSettled([getJson('/api/rounds'), getJson('/api/clients')]);
  try {
    if (rounds.status === 'rejected') throw rounds.reason;
    const list = rounds.value.body;
    const last = list[list.length - 1];
    const key = `${list.length}:${last?.round ?? ''}:${last?.closed_at_ms ?? ''}`;
    if (key !== roundsKey) {
      updateCharts(charts, list);
      renderVersions(list);
      roundsKey = key;
    }
  } catch (e) {
    errors.push(errorText(e));
  }
  try {
    if (clients.status === 'rejected') throw clients.reason;
    const list = clients.value.body.clients;
    // Judge "last seen" by the server's clock when the two clocks clearly disagree; the Date
    // header has 1 s resolution, so small differences are noise.
    const local = Date.now();
    const server = clients.value.serverDateMs;
    const skew = server === null ? 0 : server + 500 - local;
    renderClients(list, Math.abs(skew) > 5000 ? local + skew : local);
  } catch (e) {
    errors.push(errorText(e));
  }

  if (status) {
    document.body.dataset['roundsCompleted'] = String(status.rounds_completed);
    document.body.dataset['testAccuracy'] = status.test_accuracy === null ? '' : String(status.test_accuracy);
  }
  showErrors(errors);
  if (errors.length > 0) setPollState('error', 'connection problem');
  else setPollState('ok', `live · updated ${new Date().toLocaleTimeString()}`);
}

async function tick(): Promise<void> {
  timer = undefined;
  if (document.hidden) return;
  inFlight = true;
  try {
    await pollOnce();
  } catch (e) {
    // A rendering bug must not end the polling loop; say so where the operator looks.
    showErrors([`dashboard error: ${errorText(e)}`]);
  } finally {
    inFlight = false;
  }
  if (document.hidden) setPollState('paused', 'paused while the tab is hidden');
  else timer = window.setTimeout(() => void tick(), POLL_MS);
}

// A hidden tab stops polling (no load on the server for nobody); showing it polls at once.
document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    if (timer !== undefined) window.clearTimeout(timer);
    timer = undefined;
    setPollState('paused', 'paused while the tab is hidden');
  } else if (!inFlight && timer === undefined) {
    void tick();
  }
});

void tick();
