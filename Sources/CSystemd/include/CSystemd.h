// The few libsystemd calls brokerd makes, loaded at run time (dlopen of libsystemd.so.0) rather than linked.
//
// Why not a `systemLibrary` target linked with pkg-config, as the team's STYLE.md suggests: linking needs the
// libsystemd-dev headers at build time, so `swift run brokerd` would fail on a fresh machine; loading at run
// time needs only the libsystemd0 runtime that every systemd host has, and a process that is not under systemd
// never maps the library at all (the lesson of the 2024 xz backdoor, which reached sshd through a linked
// libsystemd; systemd itself now dlopens its optional dependencies). The calls are libsystemd's own; only the
// binding differs. Every function returns -ENOSYS when the library is not there.
#ifndef CSYSTEMD_H
#define CSYSTEMD_H

#include <stdint.h>
#include <sys/uio.h>

/// 1 if libsystemd.so.0 is loaded (loading it on first call, once, thread-safely), else 0.
int csd_available(void);
/// sd_notify(3).
int csd_notify(int unset_environment, const char *state);
/// sd_watchdog_enabled(3).
int csd_watchdog_enabled(int unset_environment, uint64_t *usec);
/// sd_listen_fds_with_names(3). The names array and its strings are malloc'ed: free with csd_free_names.
int csd_listen_fds_with_names(int unset_environment, char ***names);
/// Frees what csd_listen_fds_with_names returned.
void csd_free_names(char **names);
/// sd_journal_sendv(3).
int csd_journal_sendv(const struct iovec *iov, int n);

#endif
