/**
 * The client proper: `Client` (one server, one tenant's token) and `Session` (one session:
 * runs code, answers input, moves files, takes checkpoints) over `fetch`. An execution is
 * followed as server-sent events read from the execute request's streamed answer, so output
 * arrives as it is produced and `input()` can be answered while the code waits.
 */
import { type ExecutionEvent, type Run, type RunCallbacks } from "./events.js";
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
export declare class Client {
    #private;
    readonly baseUrl: string;
    readonly timeoutMs: number;
    /** @internal */
    readonly webSocket: WebSocketConstructor | undefined;
    constructor(baseUrl: string, token: string, options?: ClientOptions);
    /** Sends a request with the token; an error answer throws `ApiError`. */
    request(method: string, path: string, options?: RequestOptions): Promise<Response>;
    /** A request whose answer is JSON (null for an empty answer, e.g. `204`). */
    json<T = unknown>(method: string, path: string, options?: RequestOptions): Promise<T>;
    createSession(options?: CreateSessionOptions): Promise<Session>;
    /** A handle to an existing session of this tenant (no request is made). */
    session(id: string): Session;
    listSessions(): Promise<unknown>;
    health(): Promise<Record<string, unknown>>;
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
    skipped: {
        name: string;
        reason: string;
    }[];
    packages?: string[];
}
/** One session of the tenant. */
export declare class Session {
    #private;
    readonly client: Client;
    readonly id: string;
    /** The session's summary when this handle created it. */
    readonly infoAtCreation: SessionInfo | null;
    constructor(client: Client, id: string, info?: SessionInfo | null);
    /** @internal */
    path(tail?: string): string;
    info(): Promise<SessionInfo>;
    /** Deletes the session: its worker and its files. */
    close(): Promise<void>;
    /** A fresh worker with an empty namespace. */
    restart(): Promise<SessionInfo>;
    namespace(): Promise<{
        entries: NamespaceEntry[];
        truncated: boolean;
    }>;
    /**
     * Runs `code` to its end and resolves with the `Run`. Output, displays and input
     * requests go to the callbacks as they come.
     */
    run(code: string, options?: RunOptions): Promise<Run>;
    /**
     * The execution's events as they come (server-sent events). An `input` event waits for
     * `answerInput`. Stopping the iteration early drops the stream; the execution then goes
     * on for the server's reconnect grace, and is cancelled if nobody follows it again.
     */
    stream(code: string, options?: ExecuteOptions): AsyncGenerator<ExecutionEvent>;
    /** Answers a pending `input()`: `text` without its newline, or null for end of file. */
    answerInput(inputId: string, text: string | null): Promise<void>;
    /**
     * Stops an execution and resolves when the outcome is known: KeyboardInterrupt first,
     * the worker killed after `graceTimeoutMs` (default 500) if the code did not stop.
     */
    cancel(executionId: string, graceTimeoutMs?: number): Promise<CancelOutcome>;
    /** Interrupts an execution without waiting; `forceRestart` kills the worker at once. */
    interrupt(executionId: string, forceRestart?: boolean): Promise<string>;
    /** A single-use ticket that opens this session's WebSocket within 30 s. */
    wsTicket(): Promise<string>;
    /**
     * Opens the session's WebSocket. The token never goes in the URL: a single-use ticket
     * does (browsers cannot send `Authorization` on a WebSocket).
     */
    connect(): Promise<SessionSocket>;
    /** Uploads `data` to `path` (relative to the session's directory; parents are made). */
    writeFile(path: string, data: string | Uint8Array | ArrayBuffer | Blob): Promise<{
        path: string;
        size: number;
    }>;
    /** The bytes of the file at `path`. */
    readFile(path: string): Promise<Uint8Array>;
    listFiles(path?: string): Promise<{
        path: string;
        entries: FileEntry[];
        truncated: boolean;
    }>;
    /** Removes a file, a symlink or an empty directory; `recursive`: a whole tree. */
    deleteFile(path: string, options?: {
        recursive?: boolean;
    }): Promise<void>;
    /** Saves the namespace in the server's store; the record's `id` restores it. */
    checkpoint(): Promise<CheckpointRecord>;
    checkpoints(): Promise<CheckpointRecord[]>;
    /** Restores a checkpoint of the tenant into this session (merged, unless `clearExisting`). */
    restore(checkpointId: string, options?: {
        clearExisting?: boolean;
    }): Promise<{
        restored: string[];
        failed: {
            name: string;
            reason: string;
        }[];
        [key: string]: unknown;
    }>;
}
export {};
