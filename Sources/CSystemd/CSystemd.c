#define _GNU_SOURCE
#include "CSystemd.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

static void *library;
static int (*notify_fn)(int, const char *);
static int (*watchdog_enabled_fn)(int, uint64_t *);
static int (*listen_fds_with_names_fn)(int, char ***);
static int (*journal_sendv_fn)(const struct iovec *, int);
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load(void) {
    library = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) return;
    notify_fn = (int (*)(int, const char *))dlsym(library, "sd_notify");
    watchdog_enabled_fn = (int (*)(int, uint64_t *))dlsym(library, "sd_watchdog_enabled");
    listen_fds_with_names_fn = (int (*)(int, char ***))dlsym(library, "sd_listen_fds_with_names");
    journal_sendv_fn = (int (*)(const struct iovec *, int))dlsym(library, "sd_journal_sendv");
}

int csd_available(void) {
    pthread_once(&load_once, load);
    return library != NULL;
}

int csd_notify(int unset_environment, const char *state) {
    if (!csd_available() || notify_fn == NULL) return -ENOSYS;
    return notify_fn(unset_environment, state);
}

int csd_watchdog_enabled(int unset_environment, uint64_t *usec) {
    if (!csd_available() || watchdog_enabled_fn == NULL) return -ENOSYS;
    return watchdog_enabled_fn(unset_environment, usec);
}

int csd_listen_fds_with_names(int unset_environment, char ***names) {
    if (!csd_available() || listen_fds_with_names_fn == NULL) return -ENOSYS;
    return listen_fds_with_names_fn(unset_environment, names);
}

void csd_free_names(char **names) {
    if (names == NULL) return;
    for (char **name = names; *name != NULL; name++) free(*name);
    free(names);
}

int csd_journal_sendv(const struct iovec *iov, int n) {
    if (!csd_available() || journal_sendv_fn == NULL) return -ENOSYS;
    return journal_sendv_fn(iov, n);
}
