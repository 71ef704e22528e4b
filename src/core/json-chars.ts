/**
 * The characters that give JSON text its structure, as char codes (`charCodeAt`; all ASCII, so
 * they are the bytes of UTF-8 text too): for the scanners that find their way through JSON text
 * without parsing it (a worker's payload array, the http source's depth check, a broker entry's
 * body).
 */
export const JSON_CHAR = {
  quote: 0x22,
  backslash: 0x5c,
  comma: 0x2c,
  openObject: 0x7b,
  closeObject: 0x7d,
  openArray: 0x5b,
  closeArray: 0x5d,
} as const;
