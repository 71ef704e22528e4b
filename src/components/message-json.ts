/** The JSON object a broker message holds, shared by the broker sources. */
import { SluiceError } from "../core/errors.js";
import type { JsonObject } from "../core/record.js";

/**
 * Parses a message's text as a JSON object, or says why it is not one: `ERR_RECORD_MALFORMED`
 * located at `where` (the topic, queue or stream sequence), for the message's dead letter.
 */
export function parseMessageObject(text: string, where: string): JsonObject | SluiceError {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return new SluiceError("ERR_RECORD_MALFORMED", `message is not valid JSON: ${(err as Error).message}`, { location: where });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return new SluiceError("ERR_RECORD_MALFORMED", "message is not a JSON object", { location: where });
  }
  return value as JsonObject;
}
