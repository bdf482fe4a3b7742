/**
 * What an execution gives: its events as the server sends them (docs/api.md, "Execution
 * events"), and the `Run` they add up to, with `Display` and `Result`. `followRun` turns a
 * stream of events into a `Run`, answering `input()` and calling the callbacks on the way;
 * both transports (server-sent events, the WebSocket) use it.
 */

import { ApiError, ExecutionError } from "./errors.js";

/** MIME type → content: text types are strings, binary ones base64, JSON types JSON. */
export type MimeBundle = Record<string, unknown>;

interface EventBase {
  id: string;
  execution_id: string;
  seq: number;
}

export interface OutputEvent extends EventBase {
  type: "output";
  stream: "stdout" | "stderr";
  data: string;
}

/** `input()` (or `getpass`) waits for an answer: its `id` is the input id to answer. */
export interface InputEvent extends EventBase {
  type: "input";
  prompt: string;
  password: boolean;
  timeout: number | null;
}

export interface DisplayEvent extends EventBase {
  type: "display";
  data: MimeBundle;
  metadata: Record<string, unknown>;
  display_id: string | null;
  update: boolean;
}

export interface ResultEvent extends EventBase {
  type: "result";
  value: unknown;
  /** Null when the code ends with a statement, not an expression. */
  repr: string | null;
  execution_time: number;
  data?: MimeBundle;
  metadata?: Record<string, unknown>;
  transaction?: { outcome: string; note?: string };
}

/** The code raised, or was stopped (`KeyboardInterrupt`, `ExecutionTimeout`, ...). */
export interface ExecutionErrorEvent extends Omit<EventBase, "execution_id" | "seq"> {
  type: "error";
  execution_id: string | null;
  seq?: number;
  exception_type: string;
  exception_message: string;
  traceback: string;
  transaction?: { outcome: string; note?: string };
  exit_code?: number;
  in_reply_to?: string;
}

export type ExecutionEvent =
  | OutputEvent
  | InputEvent
  | DisplayEvent
  | ResultEvent
  | ExecutionErrorEvent;

/** A rich output: `data` maps MIME types to content (`text/plain` always). */
export class Display {
  readonly data: MimeBundle;
  readonly metadata: Record<string, unknown>;
  readonly displayId: string | null;
  /** True: replaces the earlier display with the same `displayId`. */
  readonly update: boolean;

  constructor(event: DisplayEvent) {
    this.data = event.data ?? {};
    this.metadata = event.metadata ?? {};
    this.displayId = event.display_id ?? null;
    this.update = Boolean(event.update);
  }

  get text(): string {
    const text = this.data["text/plain"];
    return typeof text === "string" ? text : "";
  }

  /** The decoded bytes of a binary type (base64 on the wire), or null when it is absent. */
  image(mime = "image/png"): Uint8Array | null {
    const content = this.data[mime];
    return typeof content === "string" ? decodeBase64(content) : null;
  }
}

/** The value of the code's trailing expression. */
export class Result {
  /** Null when the code ends with a statement, not an expression. */
  readonly repr: string | null;
  /** The value itself when it is JSON (else null). */
  readonly value: unknown;
  /** Its MIME bundle when it has representations beyond its repr. */
  readonly data: MimeBundle | null;
  readonly metadata: Record<string, unknown> | null;
  readonly executionTime: number;

  constructor(event: ResultEvent) {
    this.repr = event.repr ?? null;
    this.value = event.value ?? null;
    this.data = event.data ?? null;
    this.metadata = event.metadata ?? null;
    this.executionTime = event.execution_time ?? 0;
  }
}

export interface Output {
  stream: "stdout" | "stderr";
  text: string;
}

/** One execution as it ended: its output in order, displays, and `result` or `error`. */
export class Run {
  executionId: string;
  readonly outputs: Output[] = [];
  readonly displays: Display[] = [];
  readonly events: ExecutionEvent[] = [];
  result: Result | null = null;
  error: ExecutionErrorEvent | null = null;

  constructor(executionId: string) {
    this.executionId = executionId;
  }

  get stdout(): string {
    return this.outputs.filter((o) => o.stream === "stdout").map((o) => o.text).join("");
  }

  get stderr(): string {
    return this.outputs.filter((o) => o.stream === "stderr").map((o) => o.text).join("");
  }

  get ok(): boolean {
    return this.error === null;
  }

  /** Throws `ExecutionError` when the code raised; else returns the run. */
  raiseForError(): this {
    if (this.error !== null) {
      throw new ExecutionError(this.error);
    }
    return this;
  }
}

/**
 * Answers an `input()`: the text without its newline, or null for end of file. `signal` is
 * aborted when nobody waits for the answer any more: the execution ended (cancelled, timed
 * out, stopped) or the run's own signal aborted. A handler that waits for a person should
 * stop asking then; what it returns (or throws) after that is ignored.
 */
export type InputHandler = (
  prompt: string,
  password: boolean,
  signal: AbortSignal,
) => string | null | Promise<string | null>;

/** The callbacks of a run, called as its events come. */
export interface RunCallbacks {
  /** Every event, before the more specific callbacks. */
  onEvent?: (event: ExecutionEvent) => void;
  onOutput?: (stream: "stdout" | "stderr", text: string, event: OutputEvent) => void;
  onDisplay?: (display: Display, event: DisplayEvent) => void;
  /** Answers `input()`; without it, an `input()` gets end of file (`EOFError`). */
  onInput?: InputHandler;
}

/** How `followRun` follows an execution, beyond its callbacks. */
export interface FollowOptions {
  /**
   * How many `input()` calls the server answers itself, from the execute request's `stdin`.
   * Their `input` events still come, as a record of the prompts: answering them again would
   * be refused (`404 unknown_input`), so the first this many are not answered.
   */
  answeredByServer?: number;
  /** The run's own signal: its abort tells the input handlers still waiting. */
  signal?: AbortSignal;
}

/**
 * Follows `events` to the terminal event and returns the `Run`. `answer` sends the reply to
 * an `input` event. A stream that ends without a terminal event is an `ApiError`
 * `stream_ended`.
 *
 * An input handler is not awaited before the next event is read: the execution can end
 * while it waits (a cancel, a timeout), and the handler is told so through its signal. An
 * input handler that throws, or an answer the server refuses, fails the run at once.
 */
export async function followRun(
  executionId: string,
  events: AsyncIterable<ExecutionEvent>,
  callbacks: RunCallbacks,
  answer: (inputId: string, text: string | null) => Promise<void>,
  options: FollowOptions = {},
): Promise<Run> {
  const run = new Run(executionId);
  let answeredByServer = options.answeredByServer ?? 0;
  // Aborted when the execution ends or the run's signal aborts: the input handlers' signal.
  const ended = new AbortController();
  const runAborted = () => ended.abort(options.signal?.reason);
  options.signal?.addEventListener("abort", runAborted, { once: true });
  if (options.signal?.aborted) {
    runAborted();
  }
  const iterator = events[Symbol.asyncIterator]();
  // An input answered in the background that failed, which fails the run: the stream is
  // dropped at once, which ends the read the loop waits in (the transports' streams end a
  // pending read on `return`), and the loop then throws this.
  let failure: { error: unknown } | null = null;
  const fail = (error: unknown) => {
    if (failure === null) {
      failure = { error };
      iterator.return?.().catch(() => undefined);
    }
  };
  const answerInput = async (event: InputEvent): Promise<void> => {
    const signal = ended.signal;
    if (signal.aborted) {
      return; // the run's signal aborted before this input came: the execution is cancelled
    }
    let text: string | null = null;
    if (callbacks.onInput) {
      try {
        text = await callbacks.onInput(event.prompt ?? "", Boolean(event.password), signal);
      } catch (error) {
        if (signal.aborted) {
          return; // a handler that gave up when told to
        }
        throw error;
      }
    }
    if (signal.aborted) {
      return; // the execution ended or is being cancelled: nobody waits for this answer
    }
    try {
      await answer(event.id, text ?? null);
    } catch (error) {
      if (signal.aborted || isNoLongerPending(error)) {
        return; // the execution ended while the answer was on its way
      }
      throw error;
    }
  };
  try {
    for (;;) {
      let next: IteratorResult<ExecutionEvent>;
      try {
        next = await iterator.next();
      } catch (error) {
        if (failure !== null) {
          break; // the read that `fail` ended
        }
        throw error;
      }
      if (next.done || failure !== null) {
        break;
      }
      const event = next.value;
      run.events.push(event);
      callbacks.onEvent?.(event);
      switch (event.type) {
        case "output":
          run.outputs.push({ stream: event.stream, text: event.data });
          callbacks.onOutput?.(event.stream, event.data, event);
          break;
        case "display": {
          const display = new Display(event);
          run.displays.push(display);
          callbacks.onDisplay?.(display, event);
          break;
        }
        case "input":
          if (answeredByServer > 0) {
            answeredByServer -= 1; // answered from `stdin` already: only a record
            break;
          }
          answerInput(event).catch(fail);
          break;
        case "result":
          run.result = new Result(event);
          break;
        case "error":
          run.error = event;
          break;
      }
      if (isTerminal(event)) {
        ended.abort(); // the stream ends next: the input handlers still waiting are told now
      }
    }
  } finally {
    ended.abort();
    options.signal?.removeEventListener("abort", runAborted);
    // Drops the rest of the stream when the loop left early; not awaited, as a read may be
    // pending on it (the transports' streams end that read at once).
    iterator.return?.().catch(() => undefined);
  }
  if (failure !== null) {
    // (Set by `fail`, in a closure: TypeScript's narrowing takes it for null still.)
    throw (failure as { error: unknown }).error;
  }
  if (run.result === null && run.error === null) {
    throw new ApiError(
      0,
      "stream_ended",
      `the event stream of execution ${executionId} ended before its result (a connection cut on the way?)`,
    );
  }
  return run;
}

/**
 * `followRun` for a run that can be stopped, shared by both transports: the abort of
 * `options.signal`, or the run failing early (a callback threw, the stream was cut), cancels
 * the execution with `cancel`. The cancel's outcome is told by the execution's error event;
 * a refused cancel (rate limited, the connection gone) fails the run with why, dropping the
 * stream, rather than leave it waiting on code that goes on. A `404` (the execution is gone)
 * is no refusal: its stream ends by itself.
 */
export async function followCancellable(
  executionId: string,
  events: AsyncGenerator<ExecutionEvent>,
  callbacks: RunCallbacks,
  answer: (inputId: string, text: string | null) => Promise<void>,
  cancel: (executionId: string) => Promise<unknown>,
  options: FollowOptions = {},
): Promise<Run> {
  let cancelRefused: { error: unknown } | null = null;
  const cancelNow = () => {
    cancel(executionId).catch((error: unknown) => {
      if (error instanceof ApiError && error.status === 404) {
        return;
      }
      cancelRefused ??= { error };
      events.return(undefined).catch(() => undefined);
    });
  };
  options.signal?.addEventListener("abort", cancelNow, { once: true });
  try {
    if (options.signal?.aborted) {
      cancelNow();
    }
    return await followRun(executionId, events, callbacks, answer, options);
  } catch (error) {
    if (cancelRefused !== null) {
      // (Set in a callback: TypeScript's narrowing takes it for null still.)
      throw (cancelRefused as { error: unknown }).error;
    }
    // Left early: the code is stopped now rather than left running until the server's
    // reconnect grace runs out (an execution that already ended answers not_running).
    cancelNow();
    throw error;
  } finally {
    options.signal?.removeEventListener("abort", cancelNow);
  }
}

/**
 * An answer refused because its input is no longer pending: the execution ended (`404
 * unknown_input`), or its worker is going away (`409`, `503`) and the execution with it.
 */
function isNoLongerPending(error: unknown): boolean {
  return (
    error instanceof ApiError &&
    ((error.status === 404 && error.code === "unknown_input") || error.status === 409 || error.status === 503)
  );
}

export function isTerminal(event: ExecutionEvent): boolean {
  return event.type === "result" || event.type === "error";
}

function decodeBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  return bytes;
}

/**
 * A random UUID (v4). `crypto.randomUUID` exists only in secure contexts (https, localhost),
 * and a playground may be served over plain http from another host: `getRandomValues` works
 * everywhere.
 */
export function newId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
