/** "Did you mean …?" for mistyped commands, options and config keys (Levenshtein distance). */

/** Edits (insert, delete, substitute one character) that turn `a` into `b`. */
export function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0] ?? 0
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const above = row[j] ?? 0
      row[j] = Math.min(above + 1, (row[j - 1] ?? 0) + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1))
      diagonal = above
    }
  }
  return row[b.length] ?? Number.POSITIVE_INFINITY
}

/**
 * The nearest candidate (the first one on a tie), if it is within `maxDistance(candidate)` edits:
 * two by default, so a far-off word gets the list of names instead of a misleading hint.
 */
export function closest(
  name: string,
  candidates: readonly string[],
  maxDistance: (candidate: string) => number = () => 2,
): string | undefined {
  let best: { candidate: string; distance: number } | undefined
  for (const candidate of candidates) {
    const d = editDistance(name, candidate)
    if (best === undefined || d < best.distance) best = { candidate, distance: d }
  }
  return best !== undefined && best.distance <= maxDistance(best.candidate) ? best.candidate : undefined
}
