/** Numbers as the CLI prints them. */

/**
 * A whole number with thousands separators (`1,234,567`), as `toLocaleString("en-US")` writes it,
 * without Intl: its first call loads ICU's locale data, about 10 ms of a one-record run.
 */
export function formatCount(n: number): string {
  return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}
