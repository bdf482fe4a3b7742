/**
 * The session's WebSocket (docs/api.md, "The WebSocket"): executions sent as `execute`
 * frames, their events routed by execution id to whoever follows them, `input()` answered
 * and executions cancelled on the same connection. Works with the browsers' `WebSocket` and
 * with any class of the same shape (the `ws` package's, on Node 20).
 */
import { type ExecutionEvent, type Run, type RunCallbacks } from "./events.js";
/**
 * What this client needs of a WebSocket: a part of the browsers' API, which the `ws`
 * package's class also has. (Methods, so that both classes' own listener types fit.)
 */
export interface WebSocketLike {
    readonly readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    addEventListener(type: "open" | "error", listener: (event: unknown) => void): void;
    addEventListener(type: "message", listener: (event: {
        data: unknown;
    }) => void): void;
    addEventListener(type: "close", listener: (event: {
        code: number;
        reason: string;
    }) => void): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
export interface SocketRunOptions extends RunCallbacks {
    timeout?: number;
    executionId?: string;
    transactionPolicy?: "commit_always" | "rollback_on_failure" | "rollback_always";
    /**
     * Aborting it cancels the execution (a `cancel` message); the run then resolves with the
     * execution's error event, as with `Session.run`.
     */
    signal?: AbortSignal;
}
/**
 * The most events of one execution the socket holds unread. A browser's WebSocket cannot
 * stop reading, so a reader that falls this far behind (a `stream()` nobody iterates) would
 * make the queue grow without end: instead the socket is closed, which loses nothing (the
 * events already queued are still read, then `ApiError` `events_overflow`; the server keeps the
 * execution's events, to be read again with `GET .../executions/{id}?since=`).
 */
export declare const MAX_QUEUED_EVENTS = 1024;
/** An open WebSocket to one session. */
export declare class SessionSocket {
    #private;
    private constructor();
    /** Waits for `ws` to open (or fail) and wraps it. */
    static open(ws: WebSocketLike): Promise<SessionSocket>;
    /** Runs `code` on the session and resolves with the `Run`, like `Session.run`. */
    run(code: string, options?: SocketRunOptions): Promise<Run>;
    /** The events of `code`'s execution as they come; answer `input` with `answerInput`. */
    stream(code: string, options?: Omit<SocketRunOptions, keyof RunCallbacks | "signal">): AsyncGenerator<ExecutionEvent>;
    answerInput(inputId: string, text: string | null): void;
    /**
     * Cancels an execution; resolves with the outcome (`cancelled`, `killed`, ...), or rejects
     * with an `ApiError` when the server refuses the cancel (`rate_limited`, `bad_request`).
     */
    cancel(executionId: string, graceTimeoutMs?: number): Promise<string>;
    close(): void;
}
