/**
 * Server-sent events read from a `fetch` body: browsers' `EventSource` can neither POST nor
 * send `Authorization`, so the execute request's own streamed answer is parsed here.
 */
import { ApiError } from "./errors.js";
/**
 * The longest line the parser holds while waiting for its end. One event is at most one
 * worker frame (16 MiB of UTF-8) with its envelope, so 32 Mi characters leave room; a
 * stream that passes it is refused rather than buffered without end.
 */
export const MAX_SSE_LINE = 32 * 1024 * 1024;
/** The `data:` payloads of a server-sent-event stream, JSON-decoded, until it ends. */
export async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    let data = [];
    // One line of the stream: a `data:` line adds to the event, an empty one ends it.
    function* line(raw) {
        const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (text.startsWith("data:")) {
            data.push(text.slice(text.startsWith("data: ") ? 6 : 5));
        }
        else if (text === "" && data.length > 0) {
            const payload = data.join("\n");
            data = [];
            yield JSON.parse(payload);
        }
    }
    try {
        for (;;) {
            const { value, done } = await reader.read();
            if (done) {
                break;
            }
            pending += decoder.decode(value, { stream: true });
            const lines = pending.split("\n");
            pending = lines.pop() ?? "";
            if (pending.length > MAX_SSE_LINE) {
                throw new ApiError(0, "event_too_large", `an event stream line passed ${MAX_SSE_LINE} characters`);
            }
            for (const raw of lines) {
                yield* line(raw);
            }
        }
        pending += decoder.decode();
        if (pending !== "") {
            yield* line(pending);
        }
        yield* line("");
    }
    finally {
        // Early exit (the consumer stopped, an error): drop the rest of the stream.
        await reader.cancel().catch(() => undefined);
    }
}
