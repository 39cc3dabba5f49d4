/**
 * `iat` as cargo writes it and as registries must read it.
 *
 * cargo 1.95 formats with the `time` crate's Rfc3339: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the
 * fraction being nanoseconds with trailing zeros trimmed and omitted when zero
 * (observed `…59.108930757Z`, `…59.39532027Z`). A JS Date has millisecond precision, so we write
 * at most three digits, trimmed the same way. RFC 3231's examples use `+00:00`; readers accept any
 * RFC 3339 offset.
 */
import { AgentError } from '../lib/errors.js'

export function formatIat(date: Date): string {
  if (Number.isNaN(date.valueOf())) {
    throw new AgentError('INTERNAL', 'cannot write an iat for an invalid date', {
      remedy: 'Check the system clock (`date -u`)',
    })
  }
  const iso = date.toISOString() // always UTC with exactly three fraction digits
  const fraction = iso.slice(20, 23).replace(/0+$/, '')
  return `${iso.slice(0, 19)}${fraction === '' ? '' : `.${fraction}`}Z`
}

type Six = [number, number, number, number, number, number]

// RFC 3339 §5.6 date-time; `T`/`Z` may be lower case (§5.6 NOTE).
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/

/**
 * Parses an RFC 3339 timestamp to a Date (millisecond precision; finer digits are truncated).
 * Returns undefined for anything that is not a valid RFC 3339 date-time. A leap second (`:60`) is
 * accepted and read as the last millisecond of the minute.
 */
export function parseIat(text: string): Date | undefined {
  const m = RFC3339.exec(text)
  if (m === null) return undefined
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as Six
  const offsetSign = m[9] === '-' ? -1 : 1
  const offsetHour = m[10] === undefined ? 0 : Number(m[10])
  const offsetMinute = m[11] === undefined ? 0 : Number(m[11])
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate()
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth) return undefined
  if (hour > 23 || minute > 59 || second > 60 || offsetHour > 23 || offsetMinute > 59) return undefined
  const millis = Number((m[7] ?? '').padEnd(3, '0').slice(0, 3))
  const utc = Date.UTC(year, month - 1, day, hour, minute, Math.min(second, 59), second === 60 ? 999 : millis)
  const date = new Date(utc - offsetSign * (offsetHour * 60 + offsetMinute) * 60_000)
  // Date.UTC maps years 0-99 to 1900-1999; such timestamps are not plausible token times.
  return year < 1970 || Number.isNaN(date.valueOf()) ? undefined : date
}
