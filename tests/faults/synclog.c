/* What is on disk, seen from outside: LD_PRELOAD this into the real binary and every successful
 * fsync(2) / fdatasync(2) of a regular file in the folder SYNCLOG_DIR appends a line
 * "INODE SIZE\n" to the file SYNCLOG_FILE. SIZE is the file's size taken *before* the call:
 * those bytes were written before the sync began, so they are on disk once it returns (bytes
 * appended while it runs may not be). The line is written only after the call succeeded, and
 * before the program sees that it did, so a program waiting for the sync cannot act on it
 * before it is logged. A test then plays a power cut the way LazyFS does: the file keeps what
 * the last logged sync covered, and loses the rest. Inodes, not names: a compaction syncs a
 * temp file and renames it over the results file. With SYNCLOG_FAIL_AFTER=N, the syncs of those
 * files after the first N fail with EIO instead, as a failing disk's do. With SYNCLOG_DELAY_MS=N,
 * each of those syncs first sleeps N ms, as a busy or network disk's do. Built by the tests that
 * use it (tests/it/power_cut.rs, tests/it/run.rs) with the system's C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The inode and size of `fd` if it is a regular file in SYNCLOG_DIR. */
static int watched(int fd, struct stat *st) {
    const char *dir = getenv("SYNCLOG_DIR");
    if (!dir || !getenv("SYNCLOG_FILE") || fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    size_t len = strlen(dir);
    return strncmp(path, dir, len) == 0 && path[len] == '/';
}

static void log_synced(const struct stat *st) {
    char line[64];
    int n = snprintf(line, sizeof line, "%llu %lld\n", (unsigned long long)st->st_ino,
                     (long long)st->st_size);
    /* Raw system calls: nothing here goes back through a wrapped function. */
    int fd = (int)syscall(SYS_openat, AT_FDCWD, getenv("SYNCLOG_FILE"),
                          O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    (void)syscall(SYS_write, fd, line, (size_t)n);
    (void)syscall(SYS_close, fd);
}

static atomic_long syncs = 0;

static int logged(int fd, int (*real)(int)) {
    struct stat st;
    int watch = watched(fd, &st);
    const char *fail_after = getenv("SYNCLOG_FAIL_AFTER");
    if (watch && fail_after && ++syncs > atol(fail_after)) {
        errno = EIO;
        return -1;
    }
    const char *delay = getenv("SYNCLOG_DELAY_MS");
    if (watch && delay) {
        long ms = atol(delay);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        (void)syscall(SYS_nanosleep, &ts, NULL);
    }
    int rc = real(fd);
    if (rc == 0 && watch) log_synced(&st);
    return rc;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fsync");
    return logged(fd, real);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
    return logged(fd, real);
}
