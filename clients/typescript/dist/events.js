/**
 * What an execution gives: its events as the server sends them (docs/api.md, "Execution
 * events"), and the `Run` they add up to, with `Display` and `Result`. `followRun` turns a
 * stream of events into a `Run`, answering `input()` and calling the callbacks on the way;
 * both transports (server-sent events, the WebSocket) use it.
 */
import { ApiError, ExecutionError } from "./errors.js";
/** A rich output: `data` maps MIME types to content (`text/plain` always). */
export class Display {
    data;
    metadata;
    displayId;
    /** True: replaces the earlier display with the same `displayId`. */
    update;
    constructor(event) {
        this.data = event.data ?? {};
        this.metadata = event.metadata ?? {};
        this.displayId = event.display_id ?? null;
        this.update = Boolean(event.update);
    }
    get text() {
        const text = this.data["text/plain"];
        return typeof text === "string" ? text : "";
    }
    /** The decoded bytes of a binary type (base64 on the wire), or null when it is absent. */
    image(mime = "image/png") {
        const content = this.data[mime];
        return typeof content === "string" ? decodeBase64(content) : null;
    }
}
/** The value of the code's trailing expression. */
export class Result {
    /** Null when the code ends with a statement, not an expression. */
    repr;
    /** The value itself when it is JSON (else null). */
    value;
    /** Its MIME bundle when it has representations beyond its repr. */
    data;
    metadata;
    executionTime;
    constructor(event) {
        this.repr = event.repr ?? null;
        this.value = event.value ?? null;
        this.data = event.data ?? null;
        this.metadata = event.metadata ?? null;
        this.executionTime = event.execution_time ?? 0;
    }
}
/** One execution as it ended: its output in order, displays, and `result` or `error`. */
export class Run {
    executionId;
    outputs = [];
    displays = [];
    events = [];
    result = null;
    error = null;
    constructor(executionId) {
        this.executionId = executionId;
    }
    get stdout() {
        return this.outputs.filter((o) => o.stream === "stdout").map((o) => o.text).join("");
    }
    get stderr() {
        return this.outputs.filter((o) => o.stream === "stderr").map((o) => o.text).join("");
    }
    get ok() {
        return this.error === null;
    }
    /** Throws `ExecutionError` when the code raised; else returns the run. */
    raiseForError() {
        if (this.error !== null) {
            throw new ExecutionError(this.error);
        }
        return this;
    }
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
export async function followRun(executionId, events, callbacks, answer, options = {}) {
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
    let failure = null;
    const fail = (error) => {
        if (failure === null) {
            failure = { error };
            iterator.return?.().catch(() => undefined);
        }
    };
    const answerInput = async (event) => {
        const signal = ended.signal;
        if (signal.aborted) {
            return; // the run's signal aborted before this input came: the execution is cancelled
        }
        let text = null;
        if (callbacks.onInput) {
            try {
                text = await callbacks.onInput(event.prompt ?? "", Boolean(event.password), signal);
            }
            catch (error) {
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
        }
        catch (error) {
            if (signal.aborted || isNoLongerPending(error)) {
                return; // the execution ended while the answer was on its way
            }
            throw error;
        }
    };
    try {
        for (;;) {
            let next;
            try {
                next = await iterator.next();
            }
            catch (error) {
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
    }
    finally {
        ended.abort();
        options.signal?.removeEventListener("abort", runAborted);
        // Drops the rest of the stream when the loop left early; not awaited, as a read may be
        // pending on it (the transports' streams end that read at once).
        iterator.return?.().catch(() => undefined);
    }
    if (failure !== null) {
        // (Set by `fail`, in a closure: TypeScript's narrowing takes it for null still.)
        throw failure.error;
    }
    if (run.result === null && run.error === null) {
        throw new ApiError(0, "stream_ended", `the event stream of execution ${executionId} ended before its result (a connection cut on the way?)`);
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
export async function followCancellable(executionId, events, callbacks, answer, cancel, options = {}) {
    let cancelRefused = null;
    const cancelNow = () => {
        cancel(executionId).catch((error) => {
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
    }
    catch (error) {
        if (cancelRefused !== null) {
            // (Set in a callback: TypeScript's narrowing takes it for null still.)
            throw cancelRefused.error;
        }
        // Left early: the code is stopped now rather than left running until the server's
        // reconnect grace runs out (an execution that already ended answers not_running).
        cancelNow();
        throw error;
    }
    finally {
        options.signal?.removeEventListener("abort", cancelNow);
    }
}
/**
 * An answer refused because its input is no longer pending: the execution ended (`404
 * unknown_input`), or its worker is going away (`409`, `503`) and the execution with it.
 */
function isNoLongerPending(error) {
    return (error instanceof ApiError &&
        ((error.status === 404 && error.code === "unknown_input") || error.status === 409 || error.status === 503));
}
export function isTerminal(event) {
    return event.type === "result" || event.type === "error";
}
function decodeBase64(text) {
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
export function newId() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
