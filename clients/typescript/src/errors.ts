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
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly retryAfter: number | null;

  constructor(status: number, code: string, message: string, retryAfter: number | null = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  override toString(): string {
    return `ApiError: ${this.status} ${this.code}: ${this.message}`;
  }
}

/** The code of a run raised (or was stopped): thrown by `Run.raiseForError()`. */
export class ExecutionError extends Error {
  readonly exceptionType: string;
  readonly traceback: string;
  readonly event: ExecutionErrorEvent;

  constructor(event: ExecutionErrorEvent) {
    super(`${event.exception_type}: ${event.exception_message}`);
    this.name = "ExecutionError";
    this.exceptionType = event.exception_type;
    this.traceback = event.traceback ?? "";
    this.event = event;
  }
}

/** The `ApiError` of an error answer: its JSON body's `error` and its `Retry-After`. */
export async function apiErrorOf(response: Response): Promise<ApiError> {
  let code = "http_error";
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = JSON.parse(await response.text()) as { error?: { code?: string; message?: string } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch {
    // Not this API's JSON (a proxy's page): the status line says what there is to say.
  }
  const retry = response.headers.get("Retry-After");
  const seconds = retry === null ? NaN : Number(retry);
  return new ApiError(response.status, code, message, Number.isFinite(seconds) ? seconds : null);
}
