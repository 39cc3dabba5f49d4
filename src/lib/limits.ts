/**
 * Every limit the project enforces, in one place, with the reason for its value.
 * Change a number here, not at the call site.
 */
export const LIMITS = Object.freeze({
  /** cargo's credential protocol: one JSON line per message. Real requests are < 4 KiB even with
   * the 401 response headers cargo forwards; anything far larger is an attack or a bug. */
  cargoLineMaxBytes: 64 * 1024,
  /** Agent socket frames. A local agent exchanges small JSON messages; `ws` would accept 100 MiB. */
  socketFrameMaxBytes: 64 * 1024,
  /** Socket directory and socket file modes: only the owning user may connect. */
  socketDirMode: 0o700,
  socketFileMode: 0o600,
  /** Simultaneous client connections the agent serves; more are refused with AGENT_BUSY. */
  maxConnections: 64,
  /** A client must send its request this soon after connecting (slowloris guard). */
  requestReadTimeoutMs: 5_000,
  /** Upper bound for one request inside the agent, including a touch or a human confirmation. */
  requestTimeoutMs: 120_000,
  /** Device signs that may wait at once (each holds a libuv worker thread; see UV_THREADPOOL_SIZE). */
  maxPendingSigns: 16,
  /** libuv pool size the agent sets at start: pending signs + headroom for fs/dns/crypto work. */
  uvThreadpoolSize: 24,
  /** Sessions opened per token for concurrent signing (one operation per PKCS#11 session). */
  sessionsPerToken: 16,
  /** How long the shim waits for an agent it started to begin listening. */
  agentStartWaitMs: 5_000,
  /** Graceful shutdown: how long in-flight requests may still finish after SIGTERM. */
  shutdownGraceMs: 10_000,
  /** RFC 3231 recommends registries accept tokens up to 15 minutes old; cargo's test registry 60 s. */
  defaultTokenMaxAgeSeconds: 60,
  maxTokenMaxAgeSeconds: 15 * 60,
  /** Accepted clock difference between the signer's and the registry's clocks (iat in the future). */
  defaultClockSkewSeconds: 30,
  /** cargo stops reusing a cached token this long before its `expiration` (auth/mod.rs). */
  cargoCacheReuseMarginSeconds: 60,
  /** We end read-token cache validity this much earlier still, for clock drift and request latency. */
  readTokenCacheSafetySeconds: 10,
  /** Longest crate name / version / command line / URL shown in a prompt: a hostile program could
   * pass a huge argv to push the real request text off the pinentry dialog. */
  intentFieldMaxChars: 200,
})
