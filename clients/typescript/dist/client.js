/**
 * The client proper: `Client` (one server, one tenant's token) and `Session` (one session:
 * runs code, answers input, moves files, takes checkpoints) over `fetch`. An execution is
 * followed as server-sent events read from the execute request's streamed answer, so output
 * arrives as it is produced and `input()` can be answered while the code waits.
 */
import { ApiError, apiErrorOf } from "./errors.js";
import { followCancellable, newId } from "./events.js";
import { sseData } from "./sse.js";
import { SessionSocket } from "./socket.js";
/** A connection to one server with one tenant's token. */
export class Client {
    baseUrl;
    timeoutMs;
    /** @internal */
    webSocket;
    #token;
    #fetch;
    constructor(baseUrl, token, options = {}) {
        this.baseUrl = baseUrl.replace(/\/+$/, "");
        this.#token = token;
        this.timeoutMs = options.timeoutMs ?? 60_000;
        this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
        this.webSocket = options.WebSocket ?? globalThis.WebSocket;
    }
    /** Sends a request with the token; an error answer throws `ApiError`. */
    async request(method, path, options = {}) {
        const headers = { ...options.headers, Authorization: `Bearer ${this.#token}` };
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
    async json(method, path, options = {}) {
        const response = await this.request(method, path, options);
        const text = await response.text();
        return (text === "" ? null : JSON.parse(text));
    }
    async createSession(options = {}) {
        const body = {};
        if (options.env !== undefined)
            body.env = options.env;
        if (options.cwd !== undefined)
            body.cwd = options.cwd;
        if (options.fromCheckpoint !== undefined)
            body.from_checkpoint = options.fromCheckpoint;
        const info = await this.json("POST", "/v1/sessions", { json: body });
        return new Session(this, info.id, info);
    }
    /** A handle to an existing session of this tenant (no request is made). */
    session(id) {
        return new Session(this, id);
    }
    async listSessions() {
        return this.json("GET", "/v1/sessions");
    }
    async health() {
        return this.json("GET", "/healthz");
    }
}
/** One session of the tenant. */
export class Session {
    client;
    id;
    /** The session's summary when this handle created it. */
    infoAtCreation;
    constructor(client, id, info = null) {
        this.client = client;
        this.id = id;
        this.infoAtCreation = info;
    }
    /** @internal */
    path(tail = "") {
        return `/v1/sessions/${encodeURIComponent(this.id)}${tail}`;
    }
    async info() {
        return this.client.json("GET", this.path());
    }
    /** Deletes the session: its worker and its files. */
    async close() {
        await this.client.json("DELETE", this.path());
    }
    /** A fresh worker with an empty namespace. */
    async restart() {
        return this.client.json("POST", this.path("/restart"), { json: {} });
    }
    async namespace() {
        return this.client.json("GET", this.path("/namespace"));
    }
    // ---- running code ------------------------------------------------------------------
    /**
     * Runs `code` to its end and resolves with the `Run`. Output, displays and input
     * requests go to the callbacks as they come.
     */
    async run(code, options = {}) {
        const executionId = options.executionId ?? newId();
        const events = await this.#openStream(code, { ...options, executionId });
        // The execution is on the server now (its stream has begun), so a cancel finds it.
        return followCancellable(executionId, events, options, (inputId, text) => this.answerInput(inputId, text), (id) => this.cancel(id), { answeredByServer: options.stdin?.length ?? 0, signal: options.signal });
    }
    /**
     * The execution's events as they come (server-sent events). An `input` event waits for
     * `answerInput`. Stopping the iteration early drops the stream; the execution then goes
     * on for the server's reconnect grace, and is cancelled if nobody follows it again.
     */
    async *stream(code, options = {}) {
        yield* await this.#openStream(code, options);
    }
    /** Submits the execution; resolves once the server has it, with its event stream. */
    async #openStream(code, options) {
        const body = { code };
        if (options.timeout !== undefined)
            body.timeout = options.timeout;
        if (options.stdin !== undefined)
            body.stdin = options.stdin;
        if (options.executionId !== undefined)
            body.execution_id = options.executionId;
        if (options.transactionPolicy !== undefined)
            body.transaction_policy = options.transactionPolicy;
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
        const events = sseData(stream);
        // An async generator's `return` waits for a `next` still pending, which on a quiet stream
        // (the code waits in input()) may be forever: dropping the request first ends that read.
        return {
            next: () => events.next(),
            return: (value) => {
                drop.abort();
                return events.return(value);
            },
            throw: (error) => {
                drop.abort();
                return events.throw(error);
            },
            [Symbol.asyncIterator]() {
                return this;
            },
        };
    }
    /** Answers a pending `input()`: `text` without its newline, or null for end of file. */
    async answerInput(inputId, text) {
        await this.client.json("POST", this.path("/input"), { json: { input_id: inputId, data: text } });
    }
    /**
     * Stops an execution and resolves when the outcome is known: KeyboardInterrupt first,
     * the worker killed after `graceTimeoutMs` (default 500) if the code did not stop.
     */
    async cancel(executionId, graceTimeoutMs) {
        const body = { execution_id: executionId };
        if (graceTimeoutMs !== undefined)
            body.grace_timeout_ms = graceTimeoutMs;
        const answer = await this.client.json("POST", this.path("/cancel"), { json: body });
        return answer.outcome;
    }
    /** Interrupts an execution without waiting; `forceRestart` kills the worker at once. */
    async interrupt(executionId, forceRestart = false) {
        const answer = await this.client.json("POST", this.path("/interrupt"), {
            json: { execution_id: executionId, force_restart: forceRestart },
        });
        return answer.outcome;
    }
    // ---- the WebSocket -----------------------------------------------------------------
    /** A single-use ticket that opens this session's WebSocket within 30 s. */
    async wsTicket() {
        const answer = await this.client.json("POST", this.path("/ws-ticket"));
        return answer.ticket;
    }
    /**
     * Opens the session's WebSocket. The token never goes in the URL: a single-use ticket
     * does (browsers cannot send `Authorization` on a WebSocket).
     */
    async connect() {
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
    async writeFile(path, data) {
        const body = typeof data === "string" ? new TextEncoder().encode(data) : data;
        return this.client.json("PUT", this.path(`/files/${quotePath(path)}`), {
            body: body,
            headers: { "Content-Type": "application/octet-stream" },
        });
    }
    /** The bytes of the file at `path`. */
    async readFile(path) {
        const response = await this.client.request("GET", this.path(`/files/${quotePath(path)}`));
        return new Uint8Array(await response.arrayBuffer());
    }
    async listFiles(path = "") {
        const query = path === "" ? "" : `?path=${encodeURIComponent(path)}`;
        return this.client.json("GET", this.path(`/files${query}`));
    }
    /** Removes a file, a symlink or an empty directory; `recursive`: a whole tree. */
    async deleteFile(path, options = {}) {
        const query = options.recursive ? "?recursive=true" : "";
        await this.client.json("DELETE", this.path(`/files/${quotePath(path)}${query}`));
    }
    // ---- checkpoints -------------------------------------------------------------------
    /** Saves the namespace in the server's store; the record's `id` restores it. */
    async checkpoint() {
        return this.client.json("POST", this.path("/checkpoints"));
    }
    async checkpoints() {
        const answer = await this.client.json("GET", this.path("/checkpoints"));
        return answer.checkpoints;
    }
    /** Restores a checkpoint of the tenant into this session (merged, unless `clearExisting`). */
    async restore(checkpointId, options = {}) {
        return this.client.json("POST", this.path("/restore"), {
            json: { checkpoint_id: checkpointId, clear_existing: options.clearExisting ?? false },
        });
    }
}
function quotePath(path) {
    return path.split("/").map(encodeURIComponent).join("/");
}
/** `AbortSignal.any` (Node 20.3+, recent browsers), else a small equivalent. */
function anySignal(signals) {
    if (signals.length === 1) {
        return signals[0];
    }
    const any = AbortSignal.any;
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
