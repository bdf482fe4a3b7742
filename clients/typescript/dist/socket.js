/**
 * The session's WebSocket (docs/api.md, "The WebSocket"): executions sent as `execute`
 * frames, their events routed by execution id to whoever follows them, `input()` answered
 * and executions cancelled on the same connection. Works with the browsers' `WebSocket` and
 * with any class of the same shape (the `ws` package's, on Node 20).
 */
import { ApiError } from "./errors.js";
import { followCancellable, isTerminal, newId, } from "./events.js";
/**
 * The most events of one execution the socket holds unread. A browser's WebSocket cannot
 * stop reading, so a reader that falls this far behind (a `stream()` nobody iterates) would
 * make the queue grow without end: instead the socket is closed, which loses nothing (the
 * events already queued are still read, then `ApiError` `events_overflow`; the server keeps the
 * execution's events, to be read again with `GET .../executions/{id}?since=`).
 */
export const MAX_QUEUED_EVENTS = 1024;
/** The events of one execution followed on the socket, queued until they are read. */
class EventQueue {
    #events = [];
    #wake = null;
    #failure = null;
    #stopped = false;
    /** Queues `event`; false when the queue is full (the event is not queued). */
    push(event) {
        if (this.#events.length >= MAX_QUEUED_EVENTS) {
            return false;
        }
        this.#events.push(event);
        this.#wake?.();
        return true;
    }
    fail(error) {
        this.#failure = error;
        this.#wake?.();
    }
    /** Ends `drain` at once, even while it waits for an event: its reader has gone. */
    stop() {
        this.#stopped = true;
        this.#wake?.();
    }
    async *drain() {
        for (;;) {
            if (this.#stopped) {
                return;
            }
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
            await new Promise((resolve) => {
                this.#wake = resolve;
            });
            this.#wake = null;
        }
    }
}
const OPEN = 1;
/** An open WebSocket to one session. */
export class SessionSocket {
    #ws;
    #executions = new Map();
    /** The cancels waiting for their reply, by the request's `id`. */
    #cancels = new Map();
    #closed = null;
    constructor(ws) {
        this.#ws = ws;
        ws.addEventListener("message", (event) => this.#receive(event.data));
        ws.addEventListener("close", (event) => {
            const reason = event.reason ? ` ${event.reason}` : "";
            this.#fail(new ApiError(0, "connection_closed", `the WebSocket closed (${event.code}${reason})`));
        });
    }
    /** Waits for `ws` to open (or fail) and wraps it. */
    static open(ws) {
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
    async run(code, options = {}) {
        const executionId = options.executionId ?? newId();
        const events = this.stream(code, { ...options, executionId });
        // The execute message is sent: a cancel sent after it finds the execution.
        return followCancellable(executionId, events, options, async (inputId, text) => this.answerInput(inputId, text), (id) => this.cancel(id), { signal: options.signal });
    }
    /** The events of `code`'s execution as they come; answer `input` with `answerInput`. */
    stream(code, options = {}) {
        if (options.stdin !== undefined) {
            // Said rather than ignored (a caller without types would never know): the WebSocket's
            // execute takes no lines; answer input() with `onInput` or `answerInput`.
            throw new TypeError("the WebSocket takes no `stdin`: answer input() with onInput (or use Session.run)");
        }
        const executionId = options.executionId ?? newId();
        if (this.#executions.has(executionId)) {
            throw new ApiError(0, "duplicate_execution_id", `execution ${executionId} is already followed on this socket`);
        }
        const queue = new EventQueue();
        this.#executions.set(executionId, queue);
        const message = { type: "execute", id: executionId, code };
        if (options.timeout !== undefined)
            message.timeout = options.timeout;
        if (options.transactionPolicy !== undefined)
            message.transaction_policy = options.transactionPolicy;
        this.#send(message);
        const executions = this.#executions;
        const events = (async function* () {
            try {
                yield* queue.drain();
            }
            finally {
                executions.delete(executionId);
            }
        })();
        // An async generator's `return` waits for a `next` still pending, which may be forever
        // (the code waits in input()): stopping the queue first ends that wait.
        return {
            next: () => events.next(),
            return: () => {
                queue.stop();
                return events.return(undefined);
            },
            throw: (error) => {
                queue.stop();
                return events.throw(error);
            },
            [Symbol.asyncIterator]() {
                return this;
            },
        };
    }
    answerInput(inputId, text) {
        this.#send({ type: "input_response", input_id: inputId, data: text });
    }
    /**
     * Cancels an execution; resolves with the outcome (`cancelled`, `killed`, ...), or rejects
     * with an `ApiError` when the server refuses the cancel (`rate_limited`, `bad_request`).
     */
    cancel(executionId, graceTimeoutMs) {
        return new Promise((resolve, reject) => {
            if (this.#closed !== null) {
                reject(this.#closed);
                return;
            }
            // The request's own id: an error about it names it in `in_reply_to`.
            const requestId = newId();
            const message = { type: "cancel", id: requestId, execution_id: executionId };
            if (graceTimeoutMs !== undefined)
                message.grace_timeout_ms = graceTimeoutMs;
            this.#send(message);
            this.#cancels.set(requestId, { executionId, resolve, reject });
        });
    }
    close() {
        this.#ws.close(1000);
    }
    #send(message) {
        if (this.#closed !== null || this.#ws.readyState !== OPEN) {
            throw this.#closed ?? new ApiError(0, "connection_closed", "the WebSocket is not open");
        }
        this.#ws.send(JSON.stringify(message));
    }
    #receive(data) {
        if (typeof data !== "string") {
            return; // the server sends text frames only
        }
        let message;
        try {
            message = JSON.parse(data);
        }
        catch {
            return; // the server sends JSON only; nothing to route
        }
        if (this.#closed !== null) {
            return; // closed by this client (a full queue): nobody to give it to
        }
        if (message.type === "cancel_reply") {
            this.#settleCancel(message, (pending) => pending.resolve(String(message.outcome)));
            return;
        }
        // A refused cancel: an error about the request, `in_reply_to` its id.
        if (message.type === "error" && typeof message.in_reply_to === "string" && this.#cancels.has(message.in_reply_to)) {
            const retryAfter = typeof message.retry_after === "number" ? message.retry_after : null;
            const code = message.exception_type === "RateLimited" ? "rate_limited" : "bad_request";
            const error = new ApiError(0, code, `cancel refused: ${String(message.exception_message)}`, retryAfter);
            this.#settleCancel(message, (pending) => pending.reject(error));
            return;
        }
        // A refused `execute` is an error about the message: `in_reply_to` names the execution.
        const executionId = (message.execution_id ?? message.in_reply_to);
        const queue = executionId === undefined ? undefined : this.#executions.get(executionId);
        if (queue !== undefined && !queue.push(message)) {
            this.#fail(new ApiError(0, "events_overflow", `${MAX_QUEUED_EVENTS} events of execution ${executionId} were not read: the WebSocket was closed ` +
                `(the server keeps the execution's events: GET .../executions/${executionId}?since=<last seq read>)`));
            this.#ws.close(4000, "event queue full");
        }
    }
    /** Settles the cancel a reply (or a refusal) answers: the one its `in_reply_to` names. */
    #settleCancel(message, settle) {
        const requestId = typeof message.in_reply_to === "string" ? message.in_reply_to : undefined;
        const pending = requestId === undefined ? undefined : this.#cancels.get(requestId);
        if (requestId !== undefined && pending !== undefined) {
            this.#cancels.delete(requestId);
            settle(pending);
        }
    }
    /** Fails every run and cancel under way; the first failure is the one they all see. */
    #fail(error) {
        if (this.#closed !== null) {
            return;
        }
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
