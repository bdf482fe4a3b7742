/**
 * The client's errors: `ApiError` for every error answer of the server (and for a stream
 * that ended before its execution did), `ExecutionError` for code that raised, thrown by
 * `Run.raiseForError()`.
 */
import type { ExecutionErrorEvent } from "./events.js";
/**
 * An error answer of the server: `status` (HTTP; 0 when the server did not answer one, e.g.
 * an event stream cut before its end), `code` (stable: `not_found`, `rate_limited`, ...),
 * `message` (for people), and `retryAfter` in seconds when the server sent `Retry-After`.
 */
export declare class ApiError extends Error {
    readonly status: number;
    readonly code: string;
    readonly retryAfter: number | null;
    constructor(status: number, code: string, message: string, retryAfter?: number | null);
    toString(): string;
}
/** The code of a run raised (or was stopped): thrown by `Run.raiseForError()`. */
export declare class ExecutionError extends Error {
    readonly exceptionType: string;
    readonly traceback: string;
    readonly event: ExecutionErrorEvent;
    constructor(event: ExecutionErrorEvent);
}
/** The `ApiError` of an error answer: its JSON body's `error` and its `Retry-After`. */
export declare function apiErrorOf(response: Response): Promise<ApiError>;
