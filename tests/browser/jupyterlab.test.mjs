// End-to-end test of the Safe Data kernel in JupyterLab, in a real browser.
//
// Starts `jupyter lab` on loopback (random port, token, temporary root and
// Jupyter dirs), drives Debian's Chromium through playwright-core (no browser
// download) and checks, step by step: the launcher card and logo, a notebook
// on the kernel, SQL highlighting, Tab completion of a column name, the HTML
// table of a query, a Vega-Lite chart, a histogram with a withheld bin, and
// the error of a refused query. With KERNEL_MODE, it also checks that the
// kernelspec and the running kernel are of that mode (embedded: --config;
// service: --service SOCKET), and with AUDIT_LOG that the notebook's
// statements reached that audit log (the service's, in service mode).
// Screenshots and logs go to $ARTIFACTS (tests/browser/artifacts by default).
//
// Run through scripts/browser-test.sh, which installs Chromium, the node
// packages and the kernelspec. Environment:
//   JUPYTER         jupyter executable (default: `jupyter` on PATH)
//   CHROMIUM        browser executable (default: /usr/bin/chromium)
//   KERNEL_NAME     kernelspec name (default: safe-data-test)
//   DISPLAY_NAME    its display name (default: "Safe Data (test)")
//   KERNELSPEC_DIR  the kernelspec's folder, to compare the logo (optional)
//   KERNEL_MODE     "embedded" or "service": the mode to check (optional)
//   SERVICE_SOCKET  in service mode, the socket the kernel must name (optional)
//   AUDIT_LOG       the audit log the statements must reach (optional)
//   ARTIFACTS       output folder for screenshots and logs
//   STEP_TIMEOUT_MS bound of each step (default: 60000)
// Exit code 0 on success, 1 on failure (with the failing step named).

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const JUPYTER = env.JUPYTER || 'jupyter';
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const KERNEL_NAME = env.KERNEL_NAME || 'safe-data-test';
const DISPLAY_NAME = env.DISPLAY_NAME || 'Safe Data (test)';
const KERNELSPEC_DIR = env.KERNELSPEC_DIR || '';
const KERNEL_MODE = env.KERNEL_MODE || '';
const SERVICE_SOCKET = env.SERVICE_SOCKET || '';
const AUDIT_LOG = env.AUDIT_LOG || '';
const ARTIFACTS = path.resolve(env.ARTIFACTS || path.join(HERE, 'artifacts'));
const STEP_MS = Number(env.STEP_TIMEOUT_MS || 60_000);
// Bound of the whole run, whatever happens (set-up, steps and tear-down).
const TOTAL_MS = Number(env.TOTAL_TIMEOUT_MS || 15 * 60_000);

// The queries of the notebook.
const TABLE_SQL = 'SELECT region, COUNT(*) AS patients FROM patients GROUP BY region ORDER BY region';
const CHART_SQL = 'CHART BAR SELECT region, COUNT(*) AS patients FROM patients GROUP BY region';
// Nobody in the demo is 105 or older: the last of its 22 bins is withheld (empty).
const HISTOGRAM_SQL = 'CHART HISTOGRAM (bins = 22) SELECT age FROM patients WHERE died = 1';
const WITHHELD_NOTE = /\d+ bins? withheld \(empty or fewer than 10 people\), drawn as grey bands: .*\[105, 110\)/;
const REFUSED_SQL = 'SELECT * FROM patients';
const REFUSAL_TEXT = 'individual rows of a protected table';
const REGIONS = ['Central', 'East', 'North', 'South', 'West'];

// The browser flags: without the background-networking ones, Chromium's own
// connections are refused many at a time on a closed network.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

const t0 = Date.now();
const secs = (ms) => (ms / 1000).toFixed(1);
const log = (msg) => console.log(`[${secs(Date.now() - t0).padStart(5)} s] ${msg}`);

// ---------------------------------------------------------------- helpers

class StepError extends Error {}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new StepError(`${what}: did not finish within ${secs(ms)} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function check(cond, message) {
  if (!cond) throw new StepError(message);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `fn` until it returns a truthy value or `ms` pass.
async function until(fn, ms, what) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e instanceof StepError) throw e; // a verdict, not a transient error
      last = e;
    }
    if (Date.now() > end) {
      throw new StepError(`${what}: not reached within ${secs(ms)} s${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(250);
  }
}

// Waits for a locator's state, failing with `what` rather than a selector.
async function appear(locator, what, state = 'visible') {
  try {
    await locator.waitFor({ state, timeout: STEP_MS });
  } catch (e) {
    if (e.name !== 'TimeoutError') throw e;
    throw new StepError(`${what}: not ${state} within ${secs(STEP_MS)} s`);
  }
}

// ---------------------------------------------------------- the server

const state = {
  tmp: null, // temporary folder: root dir, Jupyter config/data/runtime dirs
  server: null, // the jupyter lab child process
  serverExited: null, // promise of its exit
  base: null, // http://127.0.0.1:PORT
  token: crypto.randomBytes(24).toString('hex'),
  browser: null,
  page: null,
  consoleLines: [],
};

function writeJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value, null, 2));
}

async function startServer() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'safe-data-browser-'));
  state.tmp = tmp;
  const dirs = {
    root: path.join(tmp, 'notebooks'),
    config: path.join(tmp, 'config'),
    data: path.join(tmp, 'data'),
    runtime: path.join(tmp, 'runtime'),
    settings: path.join(tmp, 'lab-settings'),
    workspaces: path.join(tmp, 'lab-workspaces'),
  };
  for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
  // User settings of this run only: no news or update checks (network, toasts);
  // completions from the kernel only (not words of the notebook) and a timeout
  // that a slow CI machine keeps.
  writeJson(path.join(dirs.settings, '@jupyterlab/apputils-extension/notification.jupyterlab-settings'), {
    fetchNews: 'false',
    checkForUpdates: false,
    doNotDisturbMode: true,
  });
  writeJson(path.join(dirs.settings, '@jupyterlab/completer-extension/manager.jupyterlab-settings'), {
    availableProviders: { 'CompletionProvider:kernel': 550, 'CompletionProvider:context': -1 },
    providerTimeout: 20000,
  });

  const port = await freePort();
  state.base = `http://127.0.0.1:${port}`;
  const serverEnv = {
    ...env,
    JUPYTER_CONFIG_DIR: dirs.config,
    JUPYTER_DATA_DIR: dirs.data,
    JUPYTER_RUNTIME_DIR: dirs.runtime,
    JUPYTERLAB_SETTINGS_DIR: dirs.settings,
    JUPYTERLAB_WORKSPACES_DIR: dirs.workspaces,
    IPYTHONDIR: path.join(tmp, 'ipython'),
    // The kernel's logs (never data values) go to the server's log, an artifact.
    SAFE_DATA_LOG: env.SAFE_DATA_LOG || 'info',
    NO_COLOR: '1',
  };
  if (KERNELSPEC_DIR) {
    // The environment holding the kernelspec first, so a stale kernelspec of
    // the same name elsewhere cannot win.
    const share = path.dirname(path.dirname(path.resolve(KERNELSPEC_DIR)));
    serverEnv.JUPYTER_PATH = [share, env.JUPYTER_PATH].filter(Boolean).join(path.delimiter);
  }
  const args = [
    'lab',
    '--no-browser',
    '--ServerApp.ip=127.0.0.1',
    `--ServerApp.port=${port}`,
    '--ServerApp.port_retries=0',
    `--IdentityProvider.token=${state.token}`,
    `--ServerApp.root_dir=${dirs.root}`,
    // Only the kernel under test: one card to find, whatever else is installed.
    `--KernelSpecManager.allowed_kernelspecs=${KERNEL_NAME}`,
    `--MappingKernelManager.default_kernel_name=${KERNEL_NAME}`,
    '--ServerApp.terminals_enabled=False',
    '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
    '--LabApp.extension_manager=readonly',
  ];
  // CI runs as root; the server refuses to unless told.
  if (process.getuid && process.getuid() === 0) args.push('--allow-root');
  const logFile = path.join(ARTIFACTS, 'jupyterlab.log');
  const out = fs.openSync(logFile, 'w');
  log(`starting ${JUPYTER} lab on ${state.base} (log: ${path.relative(process.cwd(), logFile)})`);
  // Own process group, so the tear-down can end it with everything it started.
  const server = spawn(JUPYTER, args, { env: serverEnv, stdio: ['ignore', out, out], detached: true });
  fs.closeSync(out);
  state.server = server;
  state.serverExited = new Promise((resolve) => {
    server.on('exit', (code, signal) => resolve({ code, signal }));
    server.on('error', (e) => resolve({ code: null, signal: null, error: e }));
  });
  const exited = state.serverExited.then((r) => {
    throw new StepError(
      `jupyter lab exited before answering (${r.error ? r.error.message : `code ${r.code}, signal ${r.signal}`}); see ${logFile}`,
    );
  });
  const ready = until(
    async () => {
      const r = await fetch(`${state.base}/api/status`, {
        headers: { Authorization: `token ${state.token}` },
        signal: AbortSignal.timeout(5000),
      });
      return r.ok;
    },
    STEP_MS * 2,
    'jupyter lab answering on /api/status',
  );
  await Promise.race([ready, exited]);
  exited.catch(() => {}); // from now on, its exit is the tear-down's business
}

function api(pathname, init = {}) {
  return fetch(`${state.base}${pathname}`, {
    ...init,
    headers: { Authorization: `token ${state.token}`, ...(init.headers || {}) },
    signal: AbortSignal.timeout(10_000),
  });
}

// Processes started by this run that may have left the server's process
// group (jupyter_client starts kernels in their own session): their command
// line names our temporary folder (the kernel's connection file is in it).
function straysOf(tmp) {
  const pids = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmd.includes(tmp)) pids.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

async function stopServer() {
  const { server, tmp } = state;
  if (server && server.exitCode === null && server.signalCode === null) {
    // A clean shutdown first: the server shuts its kernels down.
    try {
      await api('/api/shutdown', { method: 'POST' });
    } catch {
      // not answering: killed below
    }
    const done = await Promise.race([state.serverExited, sleep(15_000).then(() => null)]);
    if (!done) {
      log('jupyter lab did not stop within 15 s: SIGTERM, then SIGKILL');
      try { process.kill(-server.pid, 'SIGTERM'); } catch {}
      if (!(await Promise.race([state.serverExited, sleep(5_000).then(() => null)]))) {
        try { process.kill(-server.pid, 'SIGKILL'); } catch {}
        await Promise.race([state.serverExited, sleep(5_000)]);
      }
    }
  }
  if (server) {
    // Whatever remains of its process group (nothing, normally).
    try { process.kill(-server.pid, 'SIGKILL'); } catch {}
  }
  if (tmp) {
    for (const pid of straysOf(tmp)) {
      log(`killing leftover process ${pid}`);
      try { process.kill(pid, 'SIGKILL'); } catch {}
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

let tearingDown = null;
function tearDown() {
  tearingDown ??= (async () => {
    if (state.browser) {
      await withTimeout(state.browser.close(), 15_000, 'closing the browser').catch((e) => log(e.message));
    }
    await stopServer().catch((e) => log(`stopping jupyter lab: ${e.message}`));
    if (state.consoleLines.length) {
      fs.writeFileSync(path.join(ARTIFACTS, 'browser-console.log'), state.consoleLines.join('\n') + '\n');
    }
  })();
  return tearingDown;
}

// ------------------------------------------------------------ the mode

// Whether an argv (the kernelspec's, or a running kernel's) is of KERNEL_MODE:
// a message naming what is wrong, or '' when it is.
function modeProblem(argv, what) {
  const has = (flag) => argv.includes(flag) || argv.some((a) => a.startsWith(`${flag}=`));
  const after = (flag) => argv[argv.indexOf(flag) + 1];
  if (argv[1] !== 'kernel') return `${what} does not run \`safe-data kernel\`: ${JSON.stringify(argv)}`;
  if (KERNEL_MODE === 'embedded') {
    if (!has('--config') || has('--service')) return `${what} is not in embedded mode (--config, no --service): ${JSON.stringify(argv)}`;
  } else if (KERNEL_MODE === 'service') {
    if (!has('--service') || has('--config')) return `${what} is not in service mode (--service, no --config): ${JSON.stringify(argv)}`;
    if (SERVICE_SOCKET && after('--service') !== SERVICE_SOCKET) {
      return `${what} forwards to ${after('--service')}, not to the service under test (${SERVICE_SOCKET})`;
    }
  } else {
    return `KERNEL_MODE is "${KERNEL_MODE}": expected "embedded" or "service"`;
  }
  return '';
}

// The safe-data kernels started by this run's server (their command line
// names its temporary folder, where the connection file is).
function runningKernels() {
  const found = [];
  for (const pid of straysOf(state.tmp)) {
    try {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
      if (argv[1] === 'kernel') found.push({ pid, argv });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

// The audit log's size when the run starts: only later records count.
let auditStart = 0;
function auditRecords() {
  let buf;
  try {
    buf = fs.readFileSync(AUDIT_LOG);
  } catch (e) {
    if (e.code === 'ENOENT') return [];
    throw e;
  }
  return buf
    .subarray(auditStart)
    .toString('utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

// ------------------------------------------------------------ the steps

let shot = 0;
async function screenshot(name) {
  shot += 1;
  const file = path.join(ARTIFACTS, `${String(shot).padStart(2, '0')}-${name}.png`);
  await state.page.screenshot({ path: file, timeout: STEP_MS });
  log(`   screenshot ${path.relative(process.cwd(), file)}`);
}

const steps = [];
// `independent`: the later steps still make sense when this one fails.
const step = (name, fn, { independent = false } = {}) => steps.push({ name, fn, independent });

// Locators of the notebook, filled in by the steps.
let nb; // the notebook panel
const cell = (i) => nb.locator('.jp-Notebook .jp-Cell').nth(i);

async function typeInCell(i, text) {
  const editor = cell(i).locator('.cm-content');
  await editor.click();
  await state.page.keyboard.type(text);
}

async function cellText(i) {
  // CodeMirror 6 keeps each line in a .cm-line.
  const lines = await cell(i).locator('.cm-content .cm-line').allInnerTexts();
  return lines.join('\n');
}

// The kernel is connected and idle: the notebook's toolbar indicator and the
// status bar say so (both read "unknown" until the kernel_info reply, even if
// the server already calls the kernel idle), the server agrees, and all of it
// holds on two polls in a row.
async function waitKernelIdle(what) {
  let seen = '';
  let before = false;
  await until(
    async () => {
      const indicator = await nb.locator('.jp-Notebook-ExecutionIndicator').first().getAttribute('data-status');
      const bar = (await state.page.locator('.jp-StatusBar-TextItem', { hasText: DISPLAY_NAME }).first().innerText()).trim();
      const sessions = await (await api('/api/sessions')).json();
      const s = sessions.find((x) => x.kernel && x.kernel.name === KERNEL_NAME);
      const server = s ? s.kernel.execution_state : 'no session';
      seen = `toolbar "${indicator}", status bar "${bar}", server "${server}"`;
      const now = indicator === 'idle' && /\|\s*Idle$/.test(bar) && server === 'idle';
      const done = now && before;
      before = now;
      return done;
    },
    STEP_MS,
    what,
  ).catch((e) => {
    throw new StepError(`${e.message}; last seen: ${seen}`);
  });
}

if (KERNEL_MODE && KERNELSPEC_DIR) {
  step(`the kernelspec is in ${KERNEL_MODE} mode`, async () => {
    const spec = JSON.parse(fs.readFileSync(path.join(KERNELSPEC_DIR, 'kernel.json'), 'utf8'));
    const problem = modeProblem(spec.argv || [], `the kernelspec ${KERNEL_NAME}`);
    check(!problem, problem);
    const meta = (spec.metadata && spec.metadata.safe_data) || {};
    if (KERNEL_MODE === 'service') {
      check(meta.service === spec.argv[spec.argv.indexOf('--service') + 1] && !meta.config,
        `the kernelspec's metadata.safe_data is ${JSON.stringify(meta)}, not the service it forwards to`);
    } else {
      check(meta.config && !meta.service, `the kernelspec's metadata.safe_data is ${JSON.stringify(meta)}, not a configuration`);
    }
    log(`   argv: ${spec.argv.slice(1).join(' ')}`);
  });
}

step('launcher shows the kernel with its logo', async () => {
  const { page } = state;
  await page.goto(`${state.base}/lab?token=${state.token}`, { waitUntil: 'domcontentloaded' });
  const launcher = page.locator('.jp-Launcher');
  await appear(launcher, 'the launcher');
  const card = launcher.locator(`.jp-LauncherCard[data-category="Notebook"][title="${DISPLAY_NAME}"]`);
  try {
    await card.first().waitFor({ state: 'visible', timeout: STEP_MS });
  } catch (e) {
    const titles = await launcher.locator('.jp-LauncherCard').evaluateAll((els) => els.map((el) => el.title));
    throw new StepError(`no launcher card "${DISPLAY_NAME}" among ${JSON.stringify(titles)}`);
  }
  check((await card.count()) === 1, `${await card.count()} launcher cards are titled "${DISPLAY_NAME}"`);
  const label = (await card.locator('.jp-LauncherCard-label').innerText()).trim();
  check(label === DISPLAY_NAME, `the card's label is "${label}", expected "${DISPLAY_NAME}"`);
  const img = card.locator('.jp-LauncherCard-icon img');
  check((await img.count()) === 1, 'the card has no logo image (JupyterLab shows a letter when the kernelspec has no logo)');
  const src = await img.getAttribute('src');
  check(
    new RegExp(`/kernelspecs/${KERNEL_NAME}/logo-(svg\\.svg|64x64\\.png)`).test(src || ''),
    `the card's image is ${src}, not the kernelspec's logo`,
  );
  await until(() => img.evaluate((el) => el.complete && el.naturalWidth > 0), STEP_MS, 'the logo image loading');
  if (KERNELSPEC_DIR) {
    // The image served is the kernelspec's own file.
    const file = path.join(KERNELSPEC_DIR, path.basename(new URL(src, state.base).pathname));
    const served = Buffer.from(await (await page.request.get(new URL(src, state.base).href)).body());
    check(served.equals(fs.readFileSync(file)), `the logo served at ${src} differs from ${file}`);
  }
  log(`   card "${label}", logo ${src}`);
  await screenshot('launcher');
});

step('a notebook on the kernel, kernel idle', async () => {
  const { page } = state;
  await page.locator(`.jp-Launcher .jp-LauncherCard[data-category="Notebook"][title="${DISPLAY_NAME}"]`).click();
  nb = page.locator('.jp-NotebookPanel').last();
  await appear(nb, 'the notebook');
  await waitKernelIdle('the kernel idle');
  const kernelName = (await nb.locator('.jp-Toolbar-kernelName').innerText()).trim();
  check(kernelName === DISPLAY_NAME, `the notebook's kernel is "${kernelName}", expected "${DISPLAY_NAME}"`);
  if (KERNEL_MODE) {
    // The process Jupyter started, not only the kernelspec: one kernel, of the mode.
    const kernels = runningKernels();
    check(kernels.length === 1, `${kernels.length} safe-data kernels run for this server: ${JSON.stringify(kernels)}`);
    const problem = modeProblem(kernels[0].argv, `the running kernel (pid ${kernels[0].pid})`);
    check(!problem, problem);
    log(`   kernel pid ${kernels[0].pid}: ${kernels[0].argv.slice(1).filter((x) => !x.includes(state.tmp)).join(' ')}`);
  }
  await appear(cell(0).locator('.cm-content'), "the first cell's editor");
  await screenshot('notebook');
});

step('Tab completion offers a column name', async () => {
  const { page } = state;
  // "region" is nowhere in the cell yet, and the context provider is off:
  // only the kernel (the catalog's columns of `patients`) can offer it.
  await typeInCell(0, 'SELECT COUNT(*) AS patients FROM patients GROUP BY reg');
  await page.keyboard.press('Tab');
  const completer = page.locator('.jp-Completer');
  await appear(completer, 'the completer popup (.jp-Completer) after Tab');
  const items = await completer.locator('.jp-Completer-item').evaluateAll((els) =>
    els.map((el) => (el.getAttribute('data-value') || el.textContent || '').trim()),
  );
  log(`   completer offers: ${items.join(', ')}`);
  check(items.includes('region'), `the completer offers ${JSON.stringify(items)}, not "region"`);
  await screenshot('completion');
  // Accept "region", then complete the query around it.
  await completer.locator('.jp-Completer-item[data-value="region"]').click();
  await appear(completer, 'the completer popup after accepting', 'hidden');
  const text = await cellText(0);
  check(
    text === 'SELECT COUNT(*) AS patients FROM patients GROUP BY region',
    `after accepting the completion the cell reads ${JSON.stringify(text)}`,
  );
});

step('SQL is highlighted', async () => {
  const { page } = state;
  await page.keyboard.press('End');
  await page.keyboard.type(' ORDER BY region');
  // Insert the first column after "SELECT ".
  await page.keyboard.press('Control+Home');
  for (let i = 0; i < 'SELECT '.length; i++) await page.keyboard.press('ArrowRight');
  await page.keyboard.type('region, ');
  const text = await cellText(0);
  check(text === TABLE_SQL, `the cell reads ${JSON.stringify(text)}, expected ${JSON.stringify(TABLE_SQL)}`);
  // CodeMirror 6 wraps tokens in spans styled by the highlighter (JupyterLab
  // 4 uses generated classes, e.g. "ͼs", coloured by its theme): a keyword
  // has its own colour, an identifier is plain text of the line.
  const tokens = await cell(0)
    .locator('.cm-content .cm-line')
    .first()
    .evaluate((line) => {
      const base = getComputedStyle(line).color;
      const walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT);
      const out = [];
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        for (const word of n.textContent.split(/[^A-Za-z_]+/).filter(Boolean)) {
          out.push({ word, cls: n.parentElement.className, color: getComputedStyle(n.parentElement).color });
        }
      }
      return { base, words: out };
    });
  const all = (word) => tokens.words.filter((w) => w.word === word);
  const dump = JSON.stringify(tokens.words.map((w) => `${w.word}:${w.color}`));
  for (const kw of ['SELECT', 'AS', 'FROM', 'GROUP', 'BY', 'ORDER']) {
    check(all(kw).length > 0 && all(kw).every((w) => w.color !== tokens.base),
      `the keyword ${kw} is not highlighted (text colour ${tokens.base}; words ${dump})`);
  }
  const keyword = all('SELECT')[0].color;
  for (const ident of ['region', 'patients']) {
    check(all(ident).length > 0 && all(ident).every((w) => w.color !== keyword),
      `the identifier "${ident}" has the keyword colour ${keyword} (words ${dump})`);
  }
  log(`   keywords: class "${all('SELECT')[0].cls}", ${keyword}; identifiers ${all('region')[0].color}`);
  await screenshot('highlighted');
});

step('the query runs and renders an HTML table', async () => {
  const { page } = state;
  await page.keyboard.press('Shift+Enter');
  const html = cell(0).locator('.jp-OutputArea-output[data-mime-type="text/html"] table');
  await appear(html, 'an HTML table (text/html output) under the query');
  // A header cell shows the column's name, then (smaller, on its own line) its type.
  const headers = (await html.locator('thead th').allInnerTexts()).map((t) => t.trim().split('\n')[0].trim());
  check(headers.includes('region') && headers.includes('patients'), `the table's headers are ${JSON.stringify(headers)}`);
  const rows = await html.locator('tbody tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.querySelectorAll('td, th')].map((c) => c.textContent.trim())),
  );
  const regions = rows.map((r) => r[0]);
  check(
    JSON.stringify(regions) === JSON.stringify(REGIONS),
    `the table's rows are ${JSON.stringify(rows)}, expected the regions ${JSON.stringify(REGIONS)} in order`,
  );
  check(rows.every((r) => /^\d[\d,]*$/.test(r[1] || '')), `the counts are not integers: ${JSON.stringify(rows)}`);
  log(`   ${rows.length} rows: ${rows.map((r) => r.join('=')).join(', ')}`);
  await waitKernelIdle('the kernel idle after the query');
  await screenshot('table');
});

step('a CHART statement renders a Vega-Lite chart', async () => {
  const { page } = state;
  await appear(cell(1), 'a second cell after Shift+Enter');
  await typeInCell(1, CHART_SQL);
  await page.keyboard.press('Shift+Enter');
  const out = cell(1).locator('.jp-OutputArea-output');
  // Either the chart or an error: an error fails at once, with its text.
  await appear(out.first(), 'an output under the CHART statement');
  const vega = cell(1).locator('.jp-RenderedVegaLite');
  await until(
    async () => {
      if (await vega.count()) return true;
      const err = cell(1).locator('[data-mime-type="application/vnd.jupyter.stderr"]');
      if (await err.count()) {
        throw new StepError(`the chart cell answered an error: ${(await err.first().innerText()).trim()}`);
      }
      return false;
    },
    STEP_MS,
    'a Vega-Lite output',
  ).catch(async (e) => {
    const outs = await out.evaluateAll((els) => els.map((el) => `${el.getAttribute('data-mime-type')}: ${el.textContent.slice(0, 300)}`));
    throw new StepError(`${e.message}; outputs: ${JSON.stringify(outs)}`);
  });
  const drawn = vega.locator('.vega-embed canvas, .vega-embed svg.marks');
  await appear(drawn.first(), 'a canvas or svg drawn by vega-embed');
  const box = await drawn.first().boundingBox();
  check(box && box.width > 50 && box.height > 50, `the chart is ${JSON.stringify(box)} in size`);
  log(`   chart drawn: ${Math.round(box.width)}x${Math.round(box.height)}`);
  await waitKernelIdle('the kernel idle after the chart');
  await screenshot('chart');
}, { independent: true });

step('a histogram draws its withheld bins as withheld and names them', async () => {
  const { page } = state;
  // Earlier steps may have failed before running their cells: this goes in the last cell.
  const index = (await nb.locator('.jp-Notebook .jp-Cell').count()) - 1;
  const here = cell(index);
  check((await cellText(index)).trim() === '', `the last cell is not empty: ${JSON.stringify(await cellText(index))}`);
  await typeInCell(index, HISTOGRAM_SQL);
  await page.keyboard.press('Shift+Enter');
  const vega = here.locator('.jp-RenderedVegaLite');
  await until(
    async () => {
      if (await vega.count()) return true;
      const err = here.locator('[data-mime-type="application/vnd.jupyter.stderr"]');
      if (await err.count()) {
        throw new StepError(`the histogram cell answered an error: ${(await err.first().innerText()).trim()}`);
      }
      return false;
    },
    STEP_MS,
    'a Vega-Lite output under the histogram',
  );
  const drawn = vega.locator('.vega-embed canvas, .vega-embed svg.marks');
  await appear(drawn.first(), 'the histogram drawn by vega-embed');
  // The note under the chart lists the withheld bins, in words a reader can check against the chart.
  const notes = here.locator('.jp-OutputArea-output[data-mime-type="text/html"] .sd-notice');
  await appear(notes.first(), 'the notes under the histogram');
  const texts = (await notes.allInnerTexts()).map((t) => t.trim());
  check(texts.some((t) => WITHHELD_NOTE.test(t)), `the notes under the histogram read ${JSON.stringify(texts)}`);
  // Drawn as SVG, the labels of the withheld bands can be read (on a canvas they are pixels: the
  // spec's layers are then checked by the kernel's unit tests only).
  const svg = vega.locator('.vega-embed svg.marks');
  if (await svg.count()) {
    const labels = await svg.first().locator('text').allTextContents();
    check(labels.includes('withheld'), `the histogram has no "withheld" label among ${JSON.stringify(labels)}`);
  }
  log(`   ${texts.find((t) => WITHHELD_NOTE.test(t))}${(await svg.count()) ? ' (label drawn)' : ''}`);
  await waitKernelIdle('the kernel idle after the histogram');
  await here.scrollIntoViewIfNeeded();
  await screenshot('histogram');
}, { independent: true });

step('a refused query shows the refusal', async () => {
  const { page } = state;
  // The chart step may have failed before running its cell: the refused query
  // goes in the notebook's last cell, whichever it is.
  const index = (await nb.locator('.jp-Notebook .jp-Cell').count()) - 1;
  const last = cell(index); // stays this cell after Shift+Enter adds one below
  check((await cellText(index)).trim() === '', `the last cell is not empty: ${JSON.stringify(await cellText(index))}`);
  await typeInCell(index, REFUSED_SQL);
  await page.keyboard.press('Shift+Enter');
  const err = last.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
  await appear(err.first(), 'an error output (stderr) under the refused query');
  const text = (await err.first().innerText()).trim();
  check(text.includes(REFUSAL_TEXT), `the error output reads ${JSON.stringify(text)}, expected "${REFUSAL_TEXT}"`);
  check(
    (await last.locator('.jp-OutputArea-output[data-mime-type="text/html"]').count()) === 0,
    'the refused query also shows an HTML result',
  );
  log(`   error: ${text.split('\n')[0]}`);
  await waitKernelIdle('the kernel idle after the refusal');
  await screenshot('refused');
}, { independent: true });

if (AUDIT_LOG) {
  step(`the statements reached the ${KERNEL_MODE ? `${KERNEL_MODE} mode's ` : ''}audit log`, async () => {
    // Each statement of the notebook, with the verdicts it may have.
    const expected = [
      [TABLE_SQL, ['released']],
      [CHART_SQL, ['released', 'partly_suppressed']],
      [HISTOGRAM_SQL, ['released', 'partly_suppressed']],
      [REFUSED_SQL, ['refused']],
    ];
    let missing = [];
    let records = [];
    await until(
      () => {
        records = auditRecords();
        missing = expected.filter(([sql, verdicts]) => !records.some((r) => r.statement === sql && verdicts.includes(r.verdict)));
        return missing.length === 0;
      },
      10_000,
      'the audit records',
    ).catch(() => {
      const seen = records.map((r) => `${r.verdict}: ${r.statement}`);
      throw new StepError(
        `${AUDIT_LOG} has no record of ${missing.map(([sql, v]) => `${JSON.stringify(sql)} (${v.join(' or ')})`).join(', ')}; ` +
          `records since the start: ${JSON.stringify(seen)}`,
      );
    });
    const users = [...new Set(records.map((r) => r.user))];
    if (KERNEL_MODE === 'service') {
      // The service names the account from the socket (SO_PEERCRED).
      const me = os.userInfo().username;
      check(users.length === 1 && users[0] === me, `the service audited the statements as ${JSON.stringify(users)}, not as "${me}"`);
    }
    log(`   ${records.length} records since the start, as ${JSON.stringify(users)}`);
  }, { independent: true });
}

// --------------------------------------------------------------- main

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS)) {
    if (/\.(png|log|html)$/.test(f)) fs.rmSync(path.join(ARTIFACTS, f));
  }
  check(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM} (scripts/browser-test.sh installs Debian's chromium)`);
  if (AUDIT_LOG) auditStart = fs.existsSync(AUDIT_LOG) ? fs.statSync(AUDIT_LOG).size : 0;

  await withTimeout(startServer(), STEP_MS * 3, 'starting jupyter lab');
  log('jupyter lab is up');
  state.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: STEP_MS,
  });
  const context = await state.browser.newContext({ viewport: { width: 1400, height: 900 } });
  state.page = await context.newPage();
  state.page.setDefaultTimeout(STEP_MS);
  state.page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') state.consoleLines.push(`${m.type()}: ${m.text()}`);
  });
  state.page.on('pageerror', (e) => state.consoleLines.push(`pageerror: ${e.message}`));
  log(`browser: ${CHROMIUM} ${state.browser.version()}`);

  const failures = [];
  for (const { name, fn, independent } of steps) {
    if (interrupted) break;
    log(`-- ${name}`);
    const start = Date.now();
    try {
      await withTimeout(fn(), STEP_MS * 2, `step "${name}"`);
      log(`   ok (${secs(Date.now() - start)} s)`);
    } catch (e) {
      failures.push(name);
      if (interrupted) break;
      const [first, ...rest] = e.message.split('\n');
      log(`   FAILED: step "${name}": ${first}`);
      if (!(e instanceof StepError)) {
        // Playwright's call log, or where an unexpected error came from.
        console.log(rest.length ? rest.join('\n') : e.stack);
      }
      const n = failures.length;
      try {
        await state.page.screenshot({ path: path.join(ARTIFACTS, `failed-${n}.png`), timeout: 15_000 });
        fs.writeFileSync(path.join(ARTIFACTS, `failed-${n}.html`), await state.page.content());
        log(`   saved failed-${n}.png and failed-${n}.html`);
      } catch {
        // the page is gone: the step's message says enough
      }
      await state.page.keyboard.press('Escape').catch(() => {});
      // The steps build on each other up to the table: a failure there ends the run.
      if (!independent) break;
    }
  }
  return failures;
}

const deadline = setTimeout(async () => {
  log(`the browser test did not finish within ${secs(TOTAL_MS)} s`);
  await Promise.race([tearDown(), sleep(30_000)]);
  process.exit(1);
}, TOTAL_MS);

let interrupted = null;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, async () => {
    interrupted = sig;
    log(`${sig}: stopping`);
    await Promise.race([tearDown(), sleep(30_000)]);
    process.exit(130);
  });
}

let failures;
try {
  failures = await main();
} catch (e) {
  log(`FAILED: ${e instanceof StepError ? e.message : e.stack}`);
  failures = ['set-up'];
}
await tearDown();
clearTimeout(deadline);
if (interrupted) process.exit(130);
if (failures.length) {
  log(`browser test FAILED: ${failures.map((f) => `"${f}"`).join(', ')}; artifacts in ${ARTIFACTS}`);
  process.exit(1);
}
log(`browser test passed; screenshots in ${ARTIFACTS}`);
// Now, without waiting for the tear-down's bounding timers.
process.exit(0);
