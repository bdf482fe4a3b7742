/**
 * The client proper: `Client` (one server, one tenant's token) and `Session` (one session:
 * runs code, answers input, moves files, takes checkpoints) over `fetch`. An execution is
 * followed as server-sent events read from the execute request's streamed answer, so output
 * arrives as it is produced and `input()` can be answered while the code waits.
 */

import { ApiError, apiErrorOf } from "./errors.js";
import { followCancellable, newId, type ExecutionEvent, type Run, type RunCallbacks } from "./events.js";
import { sseData } from "./sse.js";
import { SessionSocket, type WebSocketConstructor } from "./socket.js";

export interface ClientOptions {
  /**
   * Milliseconds a request may take (default 60 000). Following an execution is not held to
   * it: that waits as long as the code runs, silent or not (its own `timeout` bounds it).
   */
  timeoutMs?: number;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /**
   * The WebSocket class for `Session.connect()` (default: the global one, in browsers and
   * Node 22+). On Node 20, pass `WebSocket` from the `ws` package.
   */
  WebSocket?: WebSocketConstructor;
}

export interface CreateSessionOptions {
  /** Environment variables of the session's worker. */
  env?: Record<string, string>;
  /** Working directory, inside the session's own directory. */
  cwd?: string;
  /** A checkpoint id to restore into the new session. */
  fromCheckpoint?: string;
}

export interface ExecuteOptions {
  /** Seconds the code may run; then `ExecutionTimeout`. */
  timeout?: number;
  /** Answers to the first `input()` calls, in order (server-sent events only). */
  stdin?: string[];
  /** Your own execution id (default: a fresh UUID). */
  executionId?: string;
  transactionPolicy?: "commit_always" | "rollback_on_failure" | "rollback_always";
}

export interface RunOptions extends ExecuteOptions, RunCallbacks {
  /**
   * Aborting it cancels the execution on the server (`POST .../cancel`); the run then
   * resolves with the execution's error event (`KeyboardInterrupt`, or `ExecutionKilled`
   * when the code did not stop within the grace).
   */
  signal?: AbortSignal;
}

export type CancelOutcome = "cancelled" | "killed" | "rolled_back" | "not_running";

interface RequestOptions {
  json?: unknown;
  body?: BodyInit;
  headers?: Record<string, string>;
  /** Follows an execution: no client timeout. */
  follow?: boolean;
  signal?: AbortSignal;
}

/** A connection to one server with one tenant's token. */
export class Client {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  /** @internal */
  readonly webSocket: WebSocketConstructor | undefined;
  readonly #token: string;
  readonly #fetch: typeof fetch;

  constructor(baseUrl: string, token: string, options: ClientOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.#token = token;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.webSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  /** Sends a request with the token; an error answer throws `ApiError`. */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { ...options.headers, Authorization: `Bearer ${this.#token}` };
    let body = options.body;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["Content-Type"] = "application/json";
    }
    const signals = options.signal ? [options.signal] : [];
    if (!options.follow) {
      signals.push(AbortSignal.timeout(this.timeoutMs));
    }
    const response = await this.#fetch(this.baseUrl + path, {
      method,
      headers,
      body,
      signal: signals.length > 0 ? anySignal(signals) : undefined,
    });
    if (!response.ok) {
      throw await apiErrorOf(response);
    }
    return response;
  }

  /** A request whose answer is JSON (null for an empty answer, e.g. `204`). */
  async json<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.request(method, path, options);
    const text = await response.text();
    return (text === "" ? null : JSON.parse(text)) as T;
  }

  async createSession(options: CreateSessionOptions = {}): Promise<Session> {
    const body: Record<string, unknown> = {};
    if (options.env !== undefined) body.env = options.env;
    if (options.cwd !== undefined) body.cwd = options.cwd;
    if (options.fromCheckpoint !== undefined) body.from_checkpoint = options.fromCheckpoint;
    const info = await this.json<SessionInfo>("POST", "/v1/sessions", { json: body });
    return new Session(this, info.id, info);
  }

  /** A handle to an existing session of this tenant (no request is made). */
  session(id: string): Session {
    return new Session(this, id);
  }

  async listSessions(): Promise<unknown> {
    return this.json("GET", "/v1/sessions");
  }

  async health(): Promise<Record<string, unknown>> {
    return this.json("GET", "/healthz");
  }
}

export interface SessionInfo {
  id: string;
  state?: string;
  created_at?: number;
  [key: string]: unknown;
}

export interface NamespaceEntry {
  name: string;
  type: string;
  repr: string;
  size: number | null;
  source?: string;
  module?: string;
}

export interface FileEntry {
  name: string;
  type: "file" | "directory" | "symlink" | "other";
  size: number;
  mtime: number;
}

export interface CheckpointRecord {
  id: string;
  tenant: string;
  session_id: string | null;
  created_at: number;
  size: number;
  saved: string[];
  skipped: { name: string; reason: string }[];
  packages?: string[];
}

/** One session of the tenant. */
export class Session {
  readonly client: Client;
  readonly id: string;
  /** The session's summary when this handle created it. */
  readonly infoAtCreation: SessionInfo | null;

  constructor(client: Client, id: string, info: SessionInfo | null = null) {
    this.client = client;
    this.id = id;
    this.infoAtCreation = info;
  }

  /** @internal */
  path(tail = ""): string {
    return `/v1/sessions/${encodeURIComponent(this.id)}${tail}`;
  }

  async info(): Promise<SessionInfo> {
    return this.client.json("GET", this.path());
  }

  /** Deletes the session: its worker and its files. */
  async close(): Promise<void> {
    await this.client.json("DELETE", this.path());
  }

  /** A fresh worker with an empty namespace. */
  async restart(): Promise<SessionInfo> {
    return this.client.json("POST", this.path("/restart"), { json: {} });
  }

  async namespace(): Promise<{ entries: NamespaceEntry[]; truncated: boolean }> {
    return this.client.json("GET", this.path("/namespace"));
  }

  // ---- running code ------------------------------------------------------------------

  /**
   * Runs `code` to its end and resolves with the `Run`. Output, displays and input
   * requests go to the callbacks as they come.
   */
  async run(code: string, options: RunOptions = {}): Promise<Run> {
    const executionId = options.executionId ?? newId();
    const events = await this.#openStream(code, { ...options, executionId });
    // The execution is on the server now (its stream has begun), so a cancel finds it.
    return followCancellable(
      executionId,
      events,
      options,
      (inputId, text) => this.answerInput(inputId, text),
      (id) => this.cancel(id),
      { answeredByServer: options.stdin?.length ?? 0, signal: options.signal },
    );
  }

  /**
   * The execution's events as they come (server-sent events). An `input` event waits for
   * `answerInput`. Stopping the iteration early drops the stream; the execution then goes
   * on for the server's reconnect grace, and is cancelled if nobody follows it again.
   */
  async *stream(code: string, options: ExecuteOptions = {}): AsyncGenerator<ExecutionEvent> {
    yield* await this.#openStream(code, options);
  }

  /** Submits the execution; resolves once the server has it, with its event stream. */
  async #openStream(code: string, options: ExecuteOptions): Promise<AsyncGenerator<ExecutionEvent>> {
    const body: Record<string, unknown> = { code };
    if (options.timeout !== undefined) body.timeout = options.timeout;
    if (options.stdin !== undefined) body.stdin = options.stdin;
    if (options.executionId !== undefined) body.execution_id = options.executionId;
    if (options.transactionPolicy !== undefined) body.transaction_policy = options.transactionPolicy;
    const drop = new AbortController();
    const response = await this.client.request("POST", this.path("/execute"), {
      json: body,
      headers: { Accept: "text/event-stream" },
      follow: true,
      signal: drop.signal,
    });
    const stream = response.body;
    if (stream === null) {
      throw new ApiError(0, "stream_ended", "the execute answer has no body");
    }
    const events = sseData(stream) as AsyncGenerator<ExecutionEvent>;
    // An async generator's `return` waits for a `next` still pending, which on a quiet stream
    // (the code waits in input()) may be forever: dropping the request first ends that read.
    return {
      next: () => events.next(),
      return: (value?: unknown) => {
        drop.abort();
        return events.return(value);
      },
      throw: (error?: unknown) => {
        drop.abort();
        return events.throw(error);
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    } as AsyncGenerator<ExecutionEvent>;
  }

  /** Answers a pending `input()`: `text` without its newline, or null for end of file. */
  async answerInput(inputId: string, text: string | null): Promise<void> {
    await this.client.json("POST", this.path("/input"), { json: { input_id: inputId, data: text } });
  }

  /**
   * Stops an execution and resolves when the outcome is known: KeyboardInterrupt first,
   * the worker killed after `graceTimeoutMs` (default 500) if the code did not stop.
   */
  async cancel(executionId: string, graceTimeoutMs?: number): Promise<CancelOutcome> {
    const body: Record<string, unknown> = { execution_id: executionId };
    if (graceTimeoutMs !== undefined) body.grace_timeout_ms = graceTimeoutMs;
    const answer = await this.client.json<{ outcome: CancelOutcome }>("POST", this.path("/cancel"), { json: body });
    return answer.outcome;
  }

  /** Interrupts an execution without waiting; `forceRestart` kills the worker at once. */
  async interrupt(executionId: string, forceRestart = false): Promise<string> {
    const answer = await this.client.json<{ outcome: string }>("POST", this.path("/interrupt"), {
      json: { execution_id: executionId, force_restart: forceRestart },
    });
    return answer.outcome;
  }

  // ---- the WebSocket -----------------------------------------------------------------

  /** A single-use ticket that opens this session's WebSocket within 30 s. */
  async wsTicket(): Promise<string> {
    const answer = await this.client.json<{ ticket: string }>("POST", this.path("/ws-ticket"));
    return answer.ticket;
  }

  /**
   * Opens the session's WebSocket. The token never goes in the URL: a single-use ticket
   * does (browsers cannot send `Authorization` on a WebSocket).
   */
  async connect(): Promise<SessionSocket> {
    const WebSocketClass = this.client.webSocket;
    if (WebSocketClass === undefined) {
      throw new TypeError("no WebSocket class: pass ClientOptions.WebSocket (on Node 20, from the `ws` package)");
    }
    const ticket = await this.wsTicket();
    const url = `${this.client.baseUrl.replace(/^http/, "ws")}${this.path("/ws")}?ticket=${encodeURIComponent(ticket)}`;
    return SessionSocket.open(new WebSocketClass(url));
  }

  // ---- files -------------------------------------------------------------------------

  /** Uploads `data` to `path` (relative to the session's directory; parents are made). */
  async writeFile(path: string, data: string | Uint8Array | ArrayBuffer | Blob): Promise<{ path: string; size: number }> {
    const body = typeof data === "string" ? new TextEncoder().encode(data) : data;
    return this.client.json("PUT", this.path(`/files/${quotePath(path)}`), {
      body: body as BodyInit,
      headers: { "Content-Type": "application/octet-stream" },
    });
  }

  /** The bytes of the file at `path`. */
  async readFile(path: string): Promise<Uint8Array> {
    const response = await this.client.request("GET", this.path(`/files/${quotePath(path)}`));
    return new Uint8Array(await response.arrayBuffer());
  }

  async listFiles(path = ""): Promise<{ path: string; entries: FileEntry[]; truncated: boolean }> {
    const query = path === "" ? "" : `?path=${encodeURIComponent(path)}`;
    return this.client.json("GET", this.path(`/files${query}`));
  }

  /** Removes a file, a symlink or an empty directory; `recursive`: a whole tree. */
  async deleteFile(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    const query = options.recursive ? "?recursive=true" : "";
    await this.client.json("DELETE", this.path(`/files/${quotePath(path)}${query}`));
  }

  // ---- checkpoints -------------------------------------------------------------------

  /** Saves the namespace in the server's store; the record's `id` restores it. */
  async checkpoint(): Promise<CheckpointRecord> {
    return this.client.json("POST", this.path("/checkpoints"));
  }

  async checkpoints(): Promise<CheckpointRecord[]> {
    const answer = await this.client.json<{ checkpoints: CheckpointRecord[] }>("GET", this.path("/checkpoints"));
    return answer.checkpoints;
  }

  /** Restores a checkpoint of the tenant into this session (merged, unless `clearExisting`). */
  async restore(
    checkpointId: string,
    options: { clearExisting?: boolean } = {},
  ): Promise<{ restored: string[]; failed: { name: string; reason: string }[]; [key: string]: unknown }> {
    return this.client.json("POST", this.path("/restore"), {
      json: { checkpoint_id: checkpointId, clear_existing: options.clearExisting ?? false },
    });
  }
}

function quotePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

/** `AbortSignal.any` (Node 20.3+, recent browsers), else a small equivalent. */
function anySignal(signals: AbortSignal[]): AbortSignal {
  if (signals.length === 1) {
    return signals[0];
  }
  const any = (AbortSignal as { any?: (s: AbortSignal[]) => AbortSignal }).any;
  if (any) {
    return any(signals);
  }
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}
