/**
 * What an execution gives: its events as the server sends them (docs/api.md, "Execution
 * events"), and the `Run` they add up to, with `Display` and `Result`. `followRun` turns a
 * stream of events into a `Run`, answering `input()` and calling the callbacks on the way;
 * both transports (server-sent events, the WebSocket) use it.
 */
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
    transaction?: {
        outcome: string;
        note?: string;
    };
}
/** The code raised, or was stopped (`KeyboardInterrupt`, `ExecutionTimeout`, ...). */
export interface ExecutionErrorEvent extends Omit<EventBase, "execution_id" | "seq"> {
    type: "error";
    execution_id: string | null;
    seq?: number;
    exception_type: string;
    exception_message: string;
    traceback: string;
    transaction?: {
        outcome: string;
        note?: string;
    };
    exit_code?: number;
    in_reply_to?: string;
}
export type ExecutionEvent = OutputEvent | InputEvent | DisplayEvent | ResultEvent | ExecutionErrorEvent;
/** A rich output: `data` maps MIME types to content (`text/plain` always). */
export declare class Display {
    readonly data: MimeBundle;
    readonly metadata: Record<string, unknown>;
    readonly displayId: string | null;
    /** True: replaces the earlier display with the same `displayId`. */
    readonly update: boolean;
    constructor(event: DisplayEvent);
    get text(): string;
    /** The decoded bytes of a binary type (base64 on the wire), or null when it is absent. */
    image(mime?: string): Uint8Array | null;
}
/** The value of the code's trailing expression. */
export declare class Result {
    /** Null when the code ends with a statement, not an expression. */
    readonly repr: string | null;
    /** The value itself when it is JSON (else null). */
    readonly value: unknown;
    /** Its MIME bundle when it has representations beyond its repr. */
    readonly data: MimeBundle | null;
    readonly metadata: Record<string, unknown> | null;
    readonly executionTime: number;
    constructor(event: ResultEvent);
}
export interface Output {
    stream: "stdout" | "stderr";
    text: string;
}
/** One execution as it ended: its output in order, displays, and `result` or `error`. */
export declare class Run {
    executionId: string;
    readonly outputs: Output[];
    readonly displays: Display[];
    readonly events: ExecutionEvent[];
    result: Result | null;
    error: ExecutionErrorEvent | null;
    constructor(executionId: string);
    get stdout(): string;
    get stderr(): string;
    get ok(): boolean;
    /** Throws `ExecutionError` when the code raised; else returns the run. */
    raiseForError(): this;
}
/**
 * Answers an `input()`: the text without its newline, or null for end of file. `signal` is
 * aborted when nobody waits for the answer any more: the execution ended (cancelled, timed
 * out, stopped) or the run's own signal aborted. A handler that waits for a person should
 * stop asking then; what it returns (or throws) after that is ignored.
 */
export type InputHandler = (prompt: string, password: boolean, signal: AbortSignal) => string | null | Promise<string | null>;
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
export declare function followRun(executionId: string, events: AsyncIterable<ExecutionEvent>, callbacks: RunCallbacks, answer: (inputId: string, text: string | null) => Promise<void>, options?: FollowOptions): Promise<Run>;
/**
 * `followRun` for a run that can be stopped, shared by both transports: the abort of
 * `options.signal`, or the run failing early (a callback threw, the stream was cut), cancels
 * the execution with `cancel`. The cancel's outcome is told by the execution's error event;
 * a refused cancel (rate limited, the connection gone) fails the run with why, dropping the
 * stream, rather than leave it waiting on code that goes on. A `404` (the execution is gone)
 * is no refusal: its stream ends by itself.
 */
export declare function followCancellable(executionId: string, events: AsyncGenerator<ExecutionEvent>, callbacks: RunCallbacks, answer: (inputId: string, text: string | null) => Promise<void>, cancel: (executionId: string) => Promise<unknown>, options?: FollowOptions): Promise<Run>;
export declare function isTerminal(event: ExecutionEvent): boolean;
/**
 * A random UUID (v4). `crypto.randomUUID` exists only in secure contexts (https, localhost),
 * and a playground may be served over plain http from another host: `getRandomValues` works
 * everywhere.
 */
export declare function newId(): string;
export {};
