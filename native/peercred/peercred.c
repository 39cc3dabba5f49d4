/*
 * Kernel facts and process hardening Node has no API for: the credentials of the process at the
 * other end of a Unix socket, turning off ptrace / core dumps / same-user /proc access for this
 * process, and keeping a buffer out of swap. The TypeScript side is src/lib/peercred.ts.
 *
 * Upstream references:
 *   man 7 unix, SO_PEERCRED: the peer's pid/uid/gid as they were at connect(2) time.
 *   man 2 prctl, PR_SET_DUMPABLE / PR_GET_DUMPABLE; man 5 proc (/proc/<pid>/ files of a
 *     non-dumpable process are owned by root); man 2 mlock.
 *   OpenSSH portable: platform-tracing.c `platform_disable_tracing` (prctl on Linux, PT_DENY_ATTACH
 *     on macOS), called from ssh-agent.c main; openbsd-compat/bsd-getpeereid.c `getpeereid` (Linux
 *     SO_PEERCRED, native getpeereid on the BSDs and macOS); ssh-agent.c checks the peer's uid with it.
 *   macOS: getpeereid(3), LOCAL_PEERPID in <sys/un.h>, PT_DENY_ATTACH in <sys/ptrace.h>.
 *
 * Failures throw an Error whose `code` is the errno name (EBADF, ENOTSOCK, ...), with `errno` and
 * `syscall` properties, the shape Node gives its own system errors.
 */
#if defined(__linux__)
#define _GNU_SOURCE /* glibc declares struct ucred only with it (man 7 unix) */
#endif

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/prctl.h>
#elif defined(__APPLE__)
#include <sys/ptrace.h>
#endif

#include <node_api.h>

static const char *errno_name(int err) {
  switch (err) {
#define NAME(e) \
  case e:       \
    return #e;
    NAME(EBADF)
    NAME(ENOTSOCK)
    NAME(ENOTCONN)
    NAME(EAFNOSUPPORT)
    NAME(ENOPROTOOPT)
    NAME(EINVAL)
    NAME(EFAULT)
    NAME(EPERM)
    NAME(EACCES)
    NAME(ENOMEM)
    NAME(EAGAIN)
    NAME(ENOSYS)
    NAME(EBUSY)
#undef NAME
    default:
      return "EUNKNOWN";
  }
}

/* Throws Error(code = errno name, errno, syscall) and returns NULL for the caller to return. */
static napi_value throw_errno(napi_env env, const char *syscall, int err, const char *detail) {
  char text[256];
  snprintf(text, sizeof text, "%s failed: %s (%s)", syscall, detail != NULL ? detail : strerror(err),
           errno_name(err));
  napi_value code, message, error, number, call;
  if (napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, code, message, &error) != napi_ok ||
      napi_create_int32(env, err, &number) != napi_ok ||
      napi_set_named_property(env, error, "errno", number) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &call) != napi_ok ||
      napi_set_named_property(env, error, "syscall", call) != napi_ok) {
    napi_throw_error(env, NULL, text);
    return NULL;
  }
  napi_throw(env, error);
  return NULL;
}

static napi_value set_number(napi_env env, napi_value object, const char *name, double value) {
  napi_value number;
  if (napi_create_double(env, value, &number) != napi_ok) return NULL;
  if (napi_set_named_property(env, object, name, number) != napi_ok) return NULL;
  return object;
}

/* peerCredentials(fd: number): { uid, gid, pid } of the process that connected to `fd`. */
static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "peerCredentials(fd): fd must be a non-negative integer");
    return NULL;
  }

  /* On a TCP socket Linux answers SO_PEERCRED with uid -1 / pid 0 instead of failing: make sure we
   * are asking about a Unix-domain socket, the only kind where the kernel knows the peer. */
  struct sockaddr_storage address;
  socklen_t address_len = sizeof address;
  if (getsockname(fd, (struct sockaddr *)&address, &address_len) != 0)
    return throw_errno(env, "getsockname", errno, NULL);
  if (address.ss_family != AF_UNIX)
    return throw_errno(env, "getsockname", EAFNOSUPPORT, "not a Unix-domain socket");

  double uid, gid, pid;
#if defined(__linux__)
  struct ucred cred;
  socklen_t cred_len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0)
    return throw_errno(env, "getsockopt(SO_PEERCRED)", errno, NULL);
  /* An unconnected socket has no peer credentials: the kernel reports uid/gid -1 (overflow ids are
   * only used for ids unmapped in our user namespace, which are real peers). */
  if (cred.uid == (uid_t)-1) return throw_errno(env, "getsockopt(SO_PEERCRED)", ENOTCONN, "no peer credentials");
  uid = cred.uid;
  gid = cred.gid;
  /* 0 when the peer lives in a PID namespace ours cannot see (man 7 unix). */
  pid = cred.pid;
#elif defined(__APPLE__)
  uid_t peer_uid;
  gid_t peer_gid;
  if (getpeereid(fd, &peer_uid, &peer_gid) != 0) return throw_errno(env, "getpeereid", errno, NULL);
  uid = peer_uid;
  gid = peer_gid;
#if defined(LOCAL_PEERPID)
  pid_t peer_pid = 0;
  socklen_t pid_len = sizeof peer_pid;
  if (getsockopt(fd, SOL_LOCAL, LOCAL_PEERPID, &peer_pid, &pid_len) != 0)
    return throw_errno(env, "getsockopt(LOCAL_PEERPID)", errno, NULL);
  pid = peer_pid;
#else
  pid = 0;
#endif
#else
  (void)uid, (void)gid, (void)pid;
  return throw_errno(env, "peerCredentials", ENOSYS, "no peer-credential call on this platform");
#endif

  napi_value result;
  if (napi_create_object(env, &result) != napi_ok) return NULL;
  if (set_number(env, result, "uid", uid) == NULL || set_number(env, result, "gid", gid) == NULL ||
      set_number(env, result, "pid", pid) == NULL)
    return NULL;
  return result;
}

/* setNonDumpable(): no core dumps, no ptrace attach and no /proc/<pid>/{mem,environ,...} for other
 * processes of the same user. Inherited by fork, reset by execve (man 2 prctl). */
static napi_value set_non_dumpable(napi_env env, napi_callback_info info) {
  (void)info;
#if defined(__linux__)
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return throw_errno(env, "prctl(PR_SET_DUMPABLE)", errno, NULL);
#elif defined(__APPLE__)
  if (ptrace(PT_DENY_ATTACH, 0, 0, 0) != 0) return throw_errno(env, "ptrace(PT_DENY_ATTACH)", errno, NULL);
#else
  return throw_errno(env, "setNonDumpable", ENOSYS, "no anti-tracing call on this platform");
#endif
  return NULL; /* undefined */
}

/* isDumpable(): true when another process of our user may trace us / read our memory. PR_GET_DUMPABLE
 * answers 0 (set by us), 1 (the default) or 2 (suid_dumpable: root-only, counts as not dumpable). */
static napi_value is_dumpable(napi_env env, napi_callback_info info) {
  (void)info;
#if defined(__linux__)
  int state = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (state < 0) return throw_errno(env, "prctl(PR_GET_DUMPABLE)", errno, NULL);
  napi_value result;
  if (napi_get_boolean(env, state == 1, &result) != napi_ok) return NULL;
  return result;
#else
  /* macOS has no query for PT_DENY_ATTACH. */
  return throw_errno(env, "isDumpable", ENOSYS, "the kernel offers no dumpability query on this platform");
#endif
}

/* lockMemory(buf): mlock the pages under `buf` so they are never written to swap. Best effort: false
 * when the kernel refuses (RLIMIT_MEMLOCK exhausted, no CAP_IPC_LOCK above it). The pages stay locked
 * until the process exits; locks do not stack, so locking a page twice costs nothing (man 2 mlock). */
static napi_value lock_memory(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_buffer = false;
  void *data = NULL;
  size_t length = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "lockMemory(buf): buf must be a Buffer");
    return NULL;
  }
  if (napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok) return NULL;
  bool locked = length == 0 || mlock(data, length) == 0;
  napi_value result;
  if (napi_get_boolean(env, locked, &result) != napi_ok) return NULL;
  return result;
}

NAPI_MODULE_INIT() {
  const napi_property_descriptor functions[] = {
      {"peerCredentials", NULL, peer_credentials, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setNonDumpable", NULL, set_non_dumpable, NULL, NULL, NULL, napi_enumerable, NULL},
      {"isDumpable", NULL, is_dumpable, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lockMemory", NULL, lock_memory, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions) != napi_ok)
    return NULL;
  return exports;
}
