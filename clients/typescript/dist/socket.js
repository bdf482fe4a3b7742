/**
 * The session's WebSocket (docs/api.md, "The WebSocket"): executions sent as `execute`
 * frames, their events routed by execution id to whoever follows them, `input()` answered
 * and executions cancelled on the same connection. Works with the browsers' `WebSocket` and
 * with any class of the same shape (the `ws` package's, on Node 20).
 */
import { ApiError } from "./errors.js";
import { followRun, isTerminal, newId, } from "./events.js";
/** The events of one execution followed on the socket, queued until they are read. */
class EventQueue {
    #events = [];
    #wake = null;
    #failure = null;
    push(event) {
        this.#events.push(event);
        this.#wake?.();
    }
    fail(error) {
        this.#failure = error;
        this.#wake?.();
    }
    async *drain() {
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
        return followRun(executionId, this.stream(code, { ...options, executionId }), options, async (inputId, text) => {
            this.#send({ type: "input_response", input_id: inputId, data: text });
        });
    }
    /** The events of `code`'s execution as they come; answer `input` with `answerInput`. */
    stream(code, options = {}) {
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
        return (async function* () {
            try {
                yield* queue.drain();
            }
            finally {
                executions.delete(executionId);
            }
        })();
    }
    answerInput(inputId, text) {
        this.#send({ type: "input_response", input_id: inputId, data: text });
    }
    /** Cancels an execution; resolves with the outcome (`cancelled`, `killed`, ...). */
    cancel(executionId, graceTimeoutMs) {
        return new Promise((resolve, reject) => {
            if (this.#closed !== null) {
                reject(this.#closed);
                return;
            }
            this.#cancels.set(executionId, { resolve, reject });
            const message = { type: "cancel", execution_id: executionId };
            if (graceTimeoutMs !== undefined)
                message.grace_timeout_ms = graceTimeoutMs;
            this.#send(message);
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
        if (message.type === "cancel_reply") {
            const executionId = String(message.execution_id);
            this.#cancels.get(executionId)?.resolve(String(message.outcome));
            this.#cancels.delete(executionId);
            return;
        }
        // A refused `execute` is an error about the message: `in_reply_to` names the execution.
        const executionId = (message.execution_id ?? message.in_reply_to);
        const queue = executionId === undefined ? undefined : this.#executions.get(executionId);
        if (queue !== undefined) {
            queue.push(message);
        }
    }
    #fail(error) {
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
