/**
 * The demo's module transform: stamps each sensor reading with when sluice processed it.
 * Mutating the payload is allowed (it is this record's own copy) and saves a copy per record.
 *
 * @param {Record<string, unknown>} payload a sensor reading
 * @returns {Record<string, unknown>} the same reading with `processed_at` (ISO 8601, UTC)
 */
export default function enrich(payload) {
  payload.processed_at = new Date().toISOString();
  return payload;
}
