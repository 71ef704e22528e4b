/**
 * The standard transform of the broker section (bench/brokers.ts), run by every contender there:
 * the copying one-liner users write, which builds a new reading with `processed_at` (seconds)
 * instead of changing the one it was given (bench/enrich.mjs, the file section's, changes it in
 * place). As a sluice `module` transform it maps the payload; the baselines call it on each parsed
 * reading.
 *
 * @param {Record<string, unknown>} payload a sensor reading
 * @returns {Record<string, unknown>} a copy of the reading with `processed_at`
 */
export default (payload) => ({ ...payload, processed_at: Date.now() / 1000 });
