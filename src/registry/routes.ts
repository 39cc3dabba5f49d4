/**
 * Which RFC 3231 operation each cargo registry request needs a token for: the sparse index
 * (cargo `src/cargo/sources/registry/http_remote.rs`: `config.json`, then one file per crate at the
 * path `sparseIndexPath` gives), downloads (the `dl` of config.json with `/{crate}/{version}/download`
 * appended when it has no markers) and the Web API (cargo `crates/crates-io/lib.rs`: publish, yank,
 * unyank, owners). docs/registry-kit.md shows the table; docs/verifying-tokens.md what each operation checks.
 */
import type { CrateRef, Operation } from '../cargo/operation.js'

/** Where a registry serves each part, as path prefixes on its own origin. */
export interface RouteLayout {
  /** The sparse index: `config.json` and the crate files below it. Default `/index/`. */
  readonly indexPath?: string
  /** Downloads: `<downloadPath>{crate}/{version}[/download]`. Default `/dl/`. */
  readonly downloadPath?: string
  /** The Web API root that `api` in config.json names; cargo adds `/api/v1/crates…`. Default `/`. */
  readonly apiPath?: string
}

export type RouteKind =
  | 'config'
  | 'index'
  | 'download'
  | 'publish'
  | 'yank'
  | 'unyank'
  | 'owners-list'
  | 'owners-add'
  | 'owners-remove'

export interface RouteMatch {
  readonly kind: RouteKind
  readonly operation: Operation
  /** What the URL names: a download's or yank's name and version, an owners request's name. The
   * verifier binds mutation tokens to them; publish takes name, vers and cksum from the body. */
  readonly crate: CrateRef
  /** The path after the index prefix (`index` and `config` only), e.g. `se/rd/serde`. */
  readonly indexFile?: string
}

/** One row of the route table, for documentation and for callers that build their own router. */
export interface RouteSpec {
  readonly method: 'GET' | 'PUT' | 'DELETE'
  /** Relative to the layout: `{index}`, `{dl}`, `{api}` stand for the three prefixes. */
  readonly path: string
  readonly kind: RouteKind
  readonly operation: Operation
}

/** THE ROUTE TABLE. `matchRoute` implements exactly these rows. */
export const ROUTES: readonly RouteSpec[] = Object.freeze([
  { method: 'GET', path: '{index}config.json', kind: 'config', operation: 'read' },
  { method: 'GET', path: '{index}{sparse path of the crate}', kind: 'index', operation: 'read' },
  { method: 'GET', path: '{dl}{crate}/{version}/download', kind: 'download', operation: 'read' },
  { method: 'PUT', path: '{api}api/v1/crates/new', kind: 'publish', operation: 'publish' },
  { method: 'DELETE', path: '{api}api/v1/crates/{crate}/{version}/yank', kind: 'yank', operation: 'yank' },
  { method: 'PUT', path: '{api}api/v1/crates/{crate}/{version}/unyank', kind: 'unyank', operation: 'unyank' },
  { method: 'GET', path: '{api}api/v1/crates/{crate}/owners', kind: 'owners-list', operation: 'owners' },
  { method: 'PUT', path: '{api}api/v1/crates/{crate}/owners', kind: 'owners-add', operation: 'owners' },
  { method: 'DELETE', path: '{api}api/v1/crates/{crate}/owners', kind: 'owners-remove', operation: 'owners' },
] satisfies RouteSpec[])

/** The sparse index file of a crate (cargo `src/cargo/sources/registry/mod.rs` `make_dep_path`). */
export function sparseIndexPath(name: string): string {
  const lower = name.toLowerCase()
  if (lower.length === 1) return `1/${lower}`
  if (lower.length === 2) return `2/${lower}`
  if (lower.length === 3) return `3/${lower.slice(0, 1)}/${lower}`
  return `${lower.slice(0, 2)}/${lower.slice(2, 4)}/${lower}`
}

const prefix = (value: string | undefined, fallback: string): string => {
  const p = value ?? fallback
  return p.endsWith('/') ? p : `${p}/`
}

/** The layout with defaults filled in, every prefix starting and ending with `/`. */
export function resolveLayout(layout: RouteLayout = {}): Required<RouteLayout> {
  return {
    indexPath: prefix(layout.indexPath, '/index/'),
    downloadPath: prefix(layout.downloadPath, '/dl/'),
    apiPath: prefix(layout.apiPath, '/'),
  }
}

/**
 * Decoded path segments, or undefined when one is empty, a dot segment, not valid percent-encoding,
 * or holds a character that a server behind may read as structure (`/ \ ? #`, a `;` path parameter
 * that Java servers strip, a `%` left by double encoding, controls); no crate name or version has
 * one. A route is matched on these, and the gateway forwards the raw target: a `%2e%2e` that an
 * upstream normalises (RFC 3986 §5.2.4) would turn an authorised path into any other, with the
 * gateway's own token.
 */
function segments(rest: string): string[] | undefined {
  const parts = rest.split('/')
  try {
    const decoded = parts.map((part) => decodeURIComponent(part))
    const plain = (part: string): boolean =>
      part !== '.' && part !== '..' && !/^$|[/\\?#;%\x00-\x1f\x7f]/.test(part)
    return decoded.every(plain) ? decoded : undefined
  } catch {
    return undefined
  }
}

/**
 * The route of a request, or undefined when it is not a cargo registry request (the caller decides:
 * a framework passes it on, the gateway refuses it). `path` is the request target without the query.
 *
 * @example
 * ```ts
 * matchRoute('DELETE', '/api/v1/crates/foo/1.0.0/yank')
 * // { kind: 'yank', operation: 'yank', crate: { name: 'foo', vers: '1.0.0' } }
 * ```
 */
export function matchRoute(method: string, path: string, layout?: RouteLayout): RouteMatch | undefined {
  const { indexPath, downloadPath, apiPath } = resolveLayout(layout)
  if (method === 'GET' || method === 'HEAD') {
    if (path.startsWith(indexPath)) {
      const file = path.slice(indexPath.length)
      if (file === 'config.json') return { kind: 'config', operation: 'read', crate: {}, indexFile: file }
      const parts = segments(file)
      const name = parts?.at(-1)
      // Only real sparse paths: anything else (`../`, other files) is not an index request.
      if (parts === undefined || name === undefined || sparseIndexPath(name) !== parts.join('/'))
        return undefined
      return { kind: 'index', operation: 'read', crate: { name }, indexFile: parts.join('/') }
    }
    if (path.startsWith(downloadPath)) {
      const parts = segments(path.slice(downloadPath.length))
      if (parts === undefined) return undefined
      const [name, vers, last] = parts
      if (name === undefined || vers === undefined) return undefined
      if (parts.length === 2 || (parts.length === 3 && last === 'download'))
        return { kind: 'download', operation: 'read', crate: { name, vers } }
      return undefined
    }
  }
  const api = `${apiPath}api/v1/crates/`
  if (!path.startsWith(api)) return undefined
  const parts = segments(path.slice(api.length))
  if (parts === undefined) return undefined
  if (method === 'PUT' && parts.length === 1 && parts[0] === 'new')
    return { kind: 'publish', operation: 'publish', crate: {} }
  const [name, second, third] = parts
  if (name === undefined) return undefined
  if (parts.length === 2 && second === 'owners') {
    const kind =
      method === 'GET'
        ? 'owners-list'
        : method === 'PUT'
          ? 'owners-add'
          : method === 'DELETE'
            ? 'owners-remove'
            : undefined
    return kind === undefined ? undefined : { kind, operation: 'owners', crate: { name } }
  }
  if (parts.length === 3 && second !== undefined) {
    if (method === 'DELETE' && third === 'yank')
      return { kind: 'yank', operation: 'yank', crate: { name, vers: second } }
    if (method === 'PUT' && third === 'unyank')
      return { kind: 'unyank', operation: 'unyank', crate: { name, vers: second } }
  }
  return undefined
}
