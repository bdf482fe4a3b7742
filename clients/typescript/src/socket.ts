/**
 * The session's WebSocket (docs/api.md, "The WebSocket"): executions sent as `execute`
 * frames, their events routed by execution id to whoever follows them, `input()` answered
 * and executions cancelled on the same connection. Works with the browsers' `WebSocket` and
 * with any class of the same shape (the `ws` package's, on Node 20).
 */

import { ApiError } from "./errors.js";
import {
  followRun,
  isTerminal,
  newId,
  type ExecutionErrorEvent,
  type ExecutionEvent,
  type Run,
  type RunCallbacks,
} from "./events.js";

/**
 * What this client needs of a WebSocket: a part of the browsers' API, which the `ws`
 * package's class also has. (Methods, so that both classes' own listener types fit.)
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "error", listener: (event: unknown) => void): void;
  addEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
  addEventListener(type: "close", listener: (event: { code: number; reason: string }) => void): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface SocketRunOptions extends RunCallbacks {
  timeout?: number;
  executionId?: string;
  transactionPolicy?: "commit_always" | "rollback_on_failure" | "rollback_always";
}

/** The events of one execution followed on the socket, queued until they are read. */
class EventQueue {
  readonly #events: ExecutionEvent[] = [];
  #wake: (() => void) | null = null;
  #failure: Error | null = null;

  push(event: ExecutionEvent): void {
    this.#events.push(event);
    this.#wake?.();
  }

  fail(error: Error): void {
    this.#failure = error;
    this.#wake?.();
  }

  async *drain(): AsyncGenerator<ExecutionEvent> {
    for (;;) {
      const event = this.#events.shift();
      if (event !== undefined) {
        yield event;
        if (isTerminal(event)) {
          return;
        }
        continue;
      }
      if (this.#failure !== null) {
        throw this.#failure;
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = null;
    }
  }
}

const OPEN = 1;

/** An open WebSocket to one session. */
export class SessionSocket {
  readonly #ws: WebSocketLike;
  readonly #executions = new Map<string, EventQueue>();
  readonly #cancels = new Map<string, { resolve: (outcome: string) => void; reject: (error: Error) => void }>();
  #closed: ApiError | null = null;

  private constructor(ws: WebSocketLike) {
    this.#ws = ws;
    ws.addEventListener("message", (event) => this.#receive(event.data));
    ws.addEventListener("close", (event) => {
      const reason = event.reason ? ` ${event.reason}` : "";
      this.#fail(new ApiError(0, "connection_closed", `the WebSocket closed (${event.code}${reason})`));
    });
  }

  /** Waits for `ws` to open (or fail) and wraps it. */
  static open(ws: WebSocketLike): Promise<SessionSocket> {
    return new Promise((resolve, reject) => {
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
        resolve(new SessionSocket(ws));
      });
      ws.addEventListener("close", (event) => {
        if (!opened) {
          reject(new ApiError(0, "connection_failed", `the WebSocket could not be opened (${event.code})`));
        }
      });
    });
  }

  /** Runs `code` on the session and resolves with the `Run`, like `Session.run`. */
  async run(code: string, options: SocketRunOptions = {}): Promise<Run> {
    const executionId = options.executionId ?? newId();
    return followRun(executionId, this.stream(code, { ...options, executionId }), options, async (inputId, text) => {
      this.#send({ type: "input_response", input_id: inputId, data: text });
    });
  }

  /** The events of `code`'s execution as they come; answer `input` with `answerInput`. */
  stream(code: string, options: Omit<SocketRunOptions, keyof RunCallbacks> = {}): AsyncGenerator<ExecutionEvent> {
    const executionId = options.executionId ?? newId();
    if (this.#executions.has(executionId)) {
      throw new ApiError(0, "duplicate_execution_id", `execution ${executionId} is already followed on this socket`);
    }
    const queue = new EventQueue();
    this.#executions.set(executionId, queue);
    const message: Record<string, unknown> = { type: "execute", id: executionId, code };
    if (options.timeout !== undefined) message.timeout = options.timeout;
    if (options.transactionPolicy !== undefined) message.transaction_policy = options.transactionPolicy;
    this.#send(message);
    const executions = this.#executions;
    return (async function* () {
      try {
        yield* queue.drain();
      } finally {
        executions.delete(executionId);
      }
    })();
  }

  answerInput(inputId: string, text: string | null): void {
    this.#send({ type: "input_response", input_id: inputId, data: text });
  }

  /** Cancels an execution; resolves with the outcome (`cancelled`, `killed`, ...). */
  cancel(executionId: string, graceTimeoutMs?: number): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.#closed !== null) {
        reject(this.#closed);
        return;
      }
      this.#cancels.set(executionId, { resolve, reject });
      const message: Record<string, unknown> = { type: "cancel", execution_id: executionId };
      if (graceTimeoutMs !== undefined) message.grace_timeout_ms = graceTimeoutMs;
      this.#send(message);
    });
  }

  close(): void {
    this.#ws.close(1000);
  }

  #send(message: Record<string, unknown>): void {
    if (this.#closed !== null || this.#ws.readyState !== OPEN) {
      throw this.#closed ?? new ApiError(0, "connection_closed", "the WebSocket is not open");
    }
    this.#ws.send(JSON.stringify(message));
  }

  #receive(data: unknown): void {
    if (typeof data !== "string") {
      return; // the server sends text frames only
    }
    let message: Record<string, unknown> & { type: string };
    try {
      message = JSON.parse(data);
    } catch {
      return; // the server sends JSON only; nothing to route
    }
    if (message.type === "cancel_reply") {
      const executionId = String(message.execution_id);
      this.#cancels.get(executionId)?.resolve(String(message.outcome));
      this.#cancels.delete(executionId);
      return;
    }
    // A refused `execute` is an error about the message: `in_reply_to` names the execution.
    const executionId = (message.execution_id ?? message.in_reply_to) as string | undefined;
    const queue = executionId === undefined ? undefined : this.#executions.get(executionId);
    if (queue !== undefined) {
      queue.push(message as unknown as ExecutionEvent | ExecutionErrorEvent);
    }
  }

  #fail(error: ApiError): void {
    this.#closed = error;
    for (const queue of this.#executions.values()) {
      queue.fail(error);
    }
    for (const pending of this.#cancels.values()) {
      pending.reject(error);
    }
    this.#cancels.clear();
  }
}
