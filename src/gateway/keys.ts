/**
 * The gateway's registered keys: the keys file (src/registry/keys-file.ts), reloaded when it changes
 * or on `reload()` (the CLI calls it on SIGHUP). A file that no longer parses keeps the keys already
 * loaded and reports why, so an editing mistake does not lock every user out.
 */
import { readFileSync, watch, type FSWatcher } from 'node:fs'
import { basename, dirname } from 'node:path'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { parseKeysFile, type KeyRing, type RegisteredKey } from '../registry/index.js'

export function readKeysFile(path: string): KeyRing {
  let text: string
  try {
    const bytes = readFileSync(path)
    if (bytes.length > LIMITS.keysFileMaxBytes)
      throw new AgentError('CONFIG_INVALID', `${path} is larger than ${LIMITS.keysFileMaxBytes} bytes`, {
        remedy: 'Point the keys file setting at the list of k3.public keys',
      })
    text = bytes.toString('utf8')
  } catch (error) {
    if (error instanceof AgentError) throw error
    throw new AgentError('CONFIG_MISSING', `cannot read the keys file ${path}: ${(error as Error).message}`, {
      remedy: 'Create it with one `k3.public.… user` line per registered key',
    })
  }
  return parseKeysFile(text, path)
}

export class ReloadableKeys {
  #keys: KeyRing
  #watcher: FSWatcher | undefined
  #timer: NodeJS.Timeout | undefined

  constructor(
    readonly path: string,
    private readonly onReload: (result: { keys: number } | { error: AgentError }) => void = () => {},
  ) {
    this.#keys = readKeysFile(path)
  }

  get(kip: string): RegisteredKey | undefined {
    return this.#keys.get(kip)
  }

  get size(): number {
    return this.#keys.size
  }

  /** Reads the file again; on failure the previous keys stay. Returns whether the new file was taken. */
  reload(): boolean {
    try {
      this.#keys = readKeysFile(this.path)
      this.onReload({ keys: this.#keys.size })
      return true
    } catch (error) {
      this.onReload({ error: toAgentError(error) })
      return false
    }
  }

  /** Watches the file's directory (editors replace files by rename, which a file watch would miss). */
  watch(): void {
    const name = basename(this.path)
    this.#watcher = watch(dirname(this.path), (_event, changed) => {
      if (changed !== null && changed !== name) return
      clearTimeout(this.#timer)
      this.#timer = setTimeout(() => this.reload(), LIMITS.keysFileReloadDebounceMs)
    })
    this.#watcher.unref()
  }

  close(): void {
    clearTimeout(this.#timer)
    this.#watcher?.close()
  }
}
