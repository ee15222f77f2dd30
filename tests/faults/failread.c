/* An input that fails part-way, as a disk or a network share does: LD_PRELOAD this into the real
 * binary and the FAIL_READ_OPEN-th open (1-based) of the path FAIL_READ_PATH returns EIO once
 * FAIL_READ_AFTER bytes of it have been read. Everything else passes through to the C library.
 * Built by the integration test that uses it (tests/it/exits.rs) with the system's C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static atomic_int opens = 0;
static atomic_int bad_fd = -1;
static atomic_llong served = 0;

static int track(const char *path, int fd) {
    const char *want = getenv("FAIL_READ_PATH");
    const char *nth = getenv("FAIL_READ_OPEN");
    if (fd >= 0 && want && nth && strcmp(path, want) == 0 && ++opens == atoi(nth)) {
        bad_fd = fd;
    }
    return fd;
}

static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open64(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...);
    if (!real) real = dlsym(RTLD_NEXT, "open64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return track(path, real(path, flags, mode));
}

int open(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...);
    if (!real) real = dlsym(RTLD_NEXT, "open");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return track(path, real(path, flags, mode));
}

ssize_t read(int fd, void *buf, size_t n) {
    static ssize_t (*real)(int, void *, size_t);
    if (!real) real = dlsym(RTLD_NEXT, "read");
    if (fd >= 0 && fd == bad_fd) {
        long long after = atoll(getenv("FAIL_READ_AFTER"));
        long long left = after - served;
        if (left <= 0) {
            errno = EIO;
            return -1;
        }
        if ((long long)n > left) n = (size_t)left;
        ssize_t got = real(fd, buf, n);
        if (got > 0) served += got;
        return got;
    }
    return real(fd, buf, n);
}

int close(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd == bad_fd) bad_fd = -1;
    return real(fd);
}
