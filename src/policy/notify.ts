/**
 * Desktop notifications for a pending touch: notify-send on Linux when a session bus or display is
 * there, osascript on macOS. Best effort by design: a missing tool, a failing D-Bus or a hang never
 * fails a request (the terminal notice through the shim is the primary channel).
 */
import { spawn } from 'node:child_process'
import { LIMITS } from '../lib/limits.js'
import { displaySafe } from './intent.js'

export interface DesktopNotifier {
  /** Fire and forget; resolves when the helper has exited or was killed, never rejects. */
  notify(title: string, body: string): Promise<void>
}

export const silentNotifier: DesktopNotifier = { notify: async () => undefined }

export interface SpawnNotifierOptions {
  readonly platform?: NodeJS.Platform
  /** Environment for the helper (already stripped of PIN variables). */
  readonly env: NodeJS.ProcessEnv
  readonly timeoutMs?: number
  /** Called with a short reason when a notification could not be shown (debug log). */
  readonly onFailure?: (reason: string) => void
}

/** AppleScript string literal: backslash and double quote must be escaped. */
function appleScriptString(text: string): string {
  return `"${text.replace(/[\\"]/g, (c) => `\\${c}`).replace(/[\r\n]+/g, ' ')}"`
}

/**
 * Picks the helper for this platform and session. Returns `silentNotifier` when nothing could show a
 * notification (no session bus or display on Linux: a server or CI runner).
 */
export function desktopNotifier(options: SpawnNotifierOptions): DesktopNotifier {
  const platform = options.platform ?? process.platform
  const env = options.env
  const timeoutMs = options.timeoutMs ?? LIMITS.desktopNotifyTimeoutMs
  let command: ((title: string, body: string) => [string, string[]]) | undefined
  if (platform === 'darwin') {
    command = (title, body) => [
      'osascript',
      ['-e', `display notification ${appleScriptString(body)} with title ${appleScriptString(title)}`],
    ]
  } else if (platform !== 'win32') {
    const hasSession = [env['DISPLAY'], env['WAYLAND_DISPLAY'], env['DBUS_SESSION_BUS_ADDRESS']].some(
      (v) => v !== undefined && v !== '',
    )
    // `--` ends notify-send's options: a crate name starting with '-' stays text.
    if (hasSession)
      command = (title, body) => [
        'notify-send',
        ['--app-name=cargo-pkcs11-agent', '--urgency=critical', '--', title, body],
      ]
  }
  if (command === undefined) return silentNotifier
  const build = command
  return {
    notify: (title, body) =>
      new Promise<void>((resolve) => {
        // Notification texts come from other processes' data: terminal-safe, short and on one line.
        const [program, args] = build(displaySafe(title, 120), displaySafe(body, 600))
        let done = false
        const finish = (reason?: string): void => {
          if (done) return
          done = true
          clearTimeout(timer)
          if (reason !== undefined) options.onFailure?.(reason)
          resolve()
        }
        const child = spawn(program, args, { stdio: 'ignore', env, detached: false })
        const timer = setTimeout(() => {
          child.kill('SIGKILL')
          finish(`${program} did not exit within ${timeoutMs} ms`)
        }, timeoutMs)
        child.on('error', (error) => finish(`${program}: ${error.message}`))
        child.on('exit', (code, signal) =>
          finish(code === 0 ? undefined : `${program} exited with ${signal ?? `status ${String(code)}`}`),
        )
      }),
  }
}
