// Mermaid's own parser over diagrams, for the factory's `mermaid` check (verify/checks/mermaid.py).
//
// stdin:  one JSON object {name: [diagram source, ...]} (at most MAX_INPUT_BYTES)
// stdout: one JSON object {name: [{ok: true, type} | {ok: false, error, line}, ...]}, same order
//         (`line`: 1-based in the diagram's own text, or null; "on line N" in `error` is rewritten
//         to the same numbering; `unchecked: true` when the diagram was not parsed at all: the
//         parser could not start, was restarted too often, or the time for all diagrams ran out)
// exit:   0 when results were printed (whatever they say), 2 on bad input (the reason on stderr)
//
// It parses text and runs nothing of it: no rendering, jsdom runs no scripts and loads no resources,
// fetch is refused. It never hangs on its own: the parser runs in a worker thread that is terminated
// when one diagram takes longer than DIAGRAM_TIMEOUT_MS (that diagram is reported, a fresh worker
// parses the rest, MAX_WORKERS at most) or when everything together passes TOTAL_TIMEOUT_MS.

import { Worker, isMainThread, parentPort } from "node:worker_threads";

const MAX_INPUT_BYTES = 4 * 1024 * 1024;
const MAX_DIAGRAMS = 500;
const MAX_DIAGRAM_CHARS = 50_000; // Mermaid's own default maxTextSize: larger diagrams never render
const ERROR_CHARS = 1_500;
const START_TIMEOUT_MS = 20_000; // a worker importing jsdom and Mermaid (under a second here)
const DIAGRAM_TIMEOUT_MS = 5_000;
const TOTAL_TIMEOUT_MS = 40_000; // everything, starts included (the Python side waits 50 s)
const MAX_WORKERS = 4; // started in all: after that the remaining diagrams are reported unchecked
const WORKER_MEMORY_MB = 512;

// Mermaid's preprocessing (src/preprocess.ts, src/diagram-api/comments.ts of the pinned version)
// drops front matter, directives and comment lines before the parser numbers lines; the same
// expressions map the parser's line back to the diagram's.
const FRONT_MATTER = /^([^\S\n\r]*)-{3}\s*[\n\r](.*?)[\n\r]\1-{3}\s*[\n\r]+/s;
const DIRECTIVE = /%{2}{\s*(?:(\w+)\s*:|(\w+))\s*(?:(\w+)|((?:(?!}%{2}).|\r?\n)*))?\s*(?:}%{2})?/gi;
const COMMENT = /^\s*%%(?!{)[^\n]+\n?/gm;
const LEADING_SPACE = /^\s+/;

/** The text with every match of `regex` cut out, and the original line of each remaining character. */
function cut(state, regex) {
  let text = "";
  const lines = [];
  let kept = 0;
  const keep = (end) => {
    text += state.text.slice(kept, end);
    for (let i = kept; i < end; i++) lines.push(state.lines[i]);
  };
  const matches = regex.global ? state.text.matchAll(regex) : [regex.exec(state.text)].filter(Boolean);
  for (const match of matches) {
    keep(match.index);
    kept = match.index + match[0].length;
  }
  keep(state.text.length);
  lines.push(state.lines[state.text.length]);
  return { text, lines };
}

/** The text Mermaid's parser sees, with the diagram's own line of each of its characters. */
function preprocess(source) {
  const lines = [];
  let line = 1;
  for (let i = 0; i <= source.length; i++) {
    lines.push(line);
    if (source[i] === "\n") line += 1;
  }
  let state = { text: source, lines };
  for (const regex of [FRONT_MATTER, DIRECTIVE, COMMENT, LEADING_SPACE]) state = cut(state, regex);
  return state;
}

/** A function from the parser's line numbers to the diagram's own (past its end: its last line). */
function lineMapper(source, state) {
  const starts = [0];
  for (let i = 0; i < state.text.length; i++) if (state.text[i] === "\n") starts.push(i + 1);
  const all = source.split("\n");
  let last = all.length;
  while (last > 1 && !all[last - 1].trim()) last -= 1;
  return (parserLine) => {
    const at = starts[parserLine - 1];
    if (at === undefined || at >= state.text.length) return last; // the parser's end of input
    return Math.min(state.lines[at], last);
  };
}

function clip(text) {
  return text.length > ERROR_CHARS ? `${text.slice(0, ERROR_CHARS - 1)}…` : text;
}

/** One result for a diagram that did not parse: Mermaid's message with its lines renumbered. */
function failure(source, error) {
  const state = preprocess(source);
  const toLine = lineMapper(source, state);
  if (error?.name === "UnknownDiagramError") {
    const word = state.text.trim().split(/\s/, 1)[0];
    const what = word ? `unknown diagram type ${JSON.stringify(clip(word.slice(0, 60)))}` : "an empty diagram";
    return { ok: false, error: `${what}: start it with flowchart, sequenceDiagram, classDiagram, stateDiagram-v2, erDiagram, …`, line: toLine(1) };
  }
  let line = null;
  const message = String(error?.message ?? error).replace(/on line (\d+)/g, (_, n) => {
    const mapped = toLine(Number(n));
    line ??= mapped;
    return `on line ${mapped}`;
  });
  return { ok: false, error: clip(message.trim() || "Mermaid could not parse the diagram"), line };
}

async function parserThread() {
  const quiet = (...args) => process.stderr.write(`${args.map(String).join(" ").slice(0, 500)}\n`);
  for (const level of ["log", "info", "debug", "trace", "warn", "error"]) console[level] = quiet; // stdout is the result's
  globalThis.fetch = () => Promise.reject(new Error("the Mermaid check does not use the network"));
  const { JSDOM } = await import("jsdom");
  const { window } = new JSDOM("<!doctype html><html><body></body></html>");
  globalThis.window = window;
  globalThis.document = window.document;
  const { default: mermaid } = await import("mermaid");
  mermaid.initialize({ startOnLoad: false, securityLevel: "strict", logLevel: "fatal" });
  parentPort.on("message", async ({ id, source }) => {
    let result;
    try {
      const parsed = await mermaid.parse(source);
      result = { ok: true, type: parsed.diagramType };
    } catch (error) {
      result = failure(source, error);
    }
    parentPort.postMessage({ id, result });
  });
  parentPort.postMessage({ ready: true });
}

/** A parser worker: `start()` waits until Mermaid is loaded, `parse()` answers one diagram or rejects. */
class Parser {
  constructor() {
    this.worker = new Worker(new URL(import.meta.url), {
      resourceLimits: { maxOldGenerationSizeMb: WORKER_MEMORY_MB },
      stdout: true, // a stray write of Mermaid's never reaches our stdout
    });
    this.worker.stdout.resume();
    this.waiting = null;
    this.next = 0;
    const settle = (outcome) => {
      const waiting = this.waiting;
      this.waiting = null;
      waiting?.(outcome);
    };
    this.worker.on("message", (message) => settle({ message }));
    this.worker.on("error", (error) => settle({ error: `the parser crashed: ${error?.message ?? error}` }));
    this.worker.on("exit", (code) => settle({ error: `the parser stopped (exit ${code})` }));
  }

  wait(timeoutMs, what) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        resolve({ error: what });
      }, timeoutMs);
      this.waiting = (outcome) => {
        clearTimeout(timer);
        resolve(outcome);
      };
    });
  }

  async start(timeoutMs) {
    const seconds = Number((Math.max(timeoutMs, 0) / 1000).toFixed(1));
    const outcome = await this.wait(timeoutMs, `Mermaid did not load in ${seconds} s`);
    if (outcome.error) throw new Error(outcome.error);
  }

  async parse(source, timeoutMs) {
    const id = ++this.next;
    const seconds = Number((Math.max(timeoutMs, 0) / 1000).toFixed(1));
    const answered = this.wait(timeoutMs, `Mermaid's parser did not finish this diagram in ${seconds} s`);
    this.worker.postMessage({ id, source });
    const outcome = await answered;
    if (outcome.error) throw new Error(outcome.error);
    if (outcome.message?.id !== id) throw new Error("the parser answered out of turn");
    return outcome.message.result;
  }

  async stop() {
    await this.worker.terminate();
  }
}

async function readInput() {
  const chunks = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += chunk.length;
    if (size > MAX_INPUT_BYTES) throw new Error(`the input is larger than ${MAX_INPUT_BYTES} bytes; send fewer diagrams`);
    chunks.push(chunk);
  }
  const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw new Error("the input must be a JSON object {name: [diagram source, ...]}");
  }
  let count = 0;
  for (const [name, sources] of Object.entries(input)) {
    if (!Array.isArray(sources) || !sources.every((s) => typeof s === "string")) {
      throw new Error(`the input's ${JSON.stringify(name)} must be a list of diagram sources (strings)`);
    }
    count += sources.length;
  }
  if (count > MAX_DIAGRAMS) throw new Error(`${count} diagrams is more than the ${MAX_DIAGRAMS} one call checks`);
  return input;
}

async function main() {
  let input;
  try {
    input = await readInput();
  } catch (error) {
    process.stderr.write(`mermaid check: ${error.message}\n`);
    process.exitCode = 2;
    return;
  }
  const deadline = Date.now() + TOTAL_TIMEOUT_MS;
  const results = Object.create(null); // names are data, "__proto__" too
  let parser = null;
  let workers = 0;
  let stopped = ""; // why the remaining diagrams are not checked
  for (const [name, sources] of Object.entries(input)) {
    results[name] = [];
    for (const raw of sources) {
      const source = raw.replace(/\r\n?/g, "\n");
      if (source.length > MAX_DIAGRAM_CHARS) {
        const error = `the diagram has ${source.length} characters, more than Mermaid's ${MAX_DIAGRAM_CHARS}: split it`;
        results[name].push({ ok: false, error, line: 1 });
        continue;
      }
      if (!stopped && Date.now() >= deadline) stopped = `not checked: all diagrams together took longer than ${TOTAL_TIMEOUT_MS / 1000} s`;
      if (!stopped && parser === null) {
        if (workers >= MAX_WORKERS) {
          stopped = `not checked: Mermaid's parser stopped on ${MAX_WORKERS} earlier diagrams`;
        } else {
          workers += 1;
          parser = new Parser();
          try {
            await parser.start(Math.min(START_TIMEOUT_MS, deadline - Date.now()));
          } catch (error) {
            await parser.stop();
            parser = null;
            stopped = `not checked: ${error.message}`;
          }
        }
      }
      if (stopped) {
        results[name].push({ ok: false, error: stopped, line: null, unchecked: true });
        continue;
      }
      try {
        results[name].push(await parser.parse(source, Math.min(DIAGRAM_TIMEOUT_MS, deadline - Date.now())));
      } catch (error) {
        results[name].push({ ok: false, error: error.message, line: null });
        await parser.stop();
        parser = null;
      }
    }
  }
  await parser?.stop();
  process.stdout.write(`${JSON.stringify(results)}\n`);
}

if (isMainThread) {
  await main();
} else {
  await parserThread();
}
