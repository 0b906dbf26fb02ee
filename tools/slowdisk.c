/*
 * slowdisk.c: an LD_PRELOAD shim that turns the disk under one directory into a slow SD card,
 * a full one or a dead one, for the process it is preloaded into (issue 15: the control loop
 * never waits on the disk). A test tool only: never on a charger.
 *
 *   gcc -O2 -Wall -Wextra -shared -fPIC -o slowdisk.so slowdisk.c -ldl
 *   LD_PRELOAD=./slowdisk.so SLOWDISK_DIR=/var/lib/v2g SLOWDISK_FSYNC_DELAY_MS=1000 prog
 *
 * Environment (read once, at the first intercepted call):
 *
 *   SLOWDISK_FSYNC_DELAY_MS  every fsync, fdatasync and sync_file_range of the process sleeps
 *                            this long (CLOCK_MONOTONIC, to an absolute deadline, so a signal
 *                            neither shortens nor lengthens it) before the real call.
 *   SLOWDISK_DIR             the "card": failures and the count apply to paths under it (the
 *                            directory itself or below it; compared after resolving symlinks).
 *   SLOWDISK_FAIL_FILE       while this file exists, its content (ENOSPC, EROFS or EIO; anything
 *                            else reads as EIO) is the errno with which, under SLOWDISK_DIR:
 *                              - write, pwrite, pwrite64, ftruncate, ftruncate64, fsync,
 *                                fdatasync and sync_file_range on a regular file fail, and
 *                              - open, open64, openat, openat64, creat, creat64 (and glibc's
 *                                fortified __open_2 family) fail for O_WRONLY, O_RDWR or O_CREAT.
 *                            Checked with one stat() per call, so a test flips it at run time.
 *                            Reads, sockets, pipes and files elsewhere are never touched.
 *   SLOWDISK_COUNT_FILE      after every fsync or fdatasync on a file or directory under
 *                            SLOWDISK_DIR (failed ones included), this file (outside
 *                            SLOWDISK_DIR) holds the process's count so far: a decimal number and
 *                            a newline at offset 0. One process per count file.
 *
 * Every intercepted function calls the next definition (dlsym RTLD_NEXT) unless it fails on
 * purpose; errno is left as the real call (or the injected failure) set it. The counter is
 * atomic and the count file is written under a mutex, so it only ever grows.
 */

#undef _FORTIFY_SOURCE /* our open() must not collide with glibc's inline fortified one */
#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* glibc's fortified open family: not declared unless _FORTIFY_SOURCE is on. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

/* -- the real functions ---------------------------------------------------------------------- */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*creat_fn)(const char *, mode_t);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef int (*ftruncate_fn)(int, off_t);
typedef int (*ftruncate64_fn)(int, off64_t);
typedef int (*sync_fn)(int);
typedef int (*sync_range_fn)(int, off64_t, off64_t, unsigned int);

static struct {
    open_fn open, open64;
    openat_fn openat, openat64;
    creat_fn creat, creat64;
    open2_fn open_2, open64_2;
    openat2_fn openat_2, openat64_2;
    write_fn write;
    pwrite_fn pwrite;
    pwrite64_fn pwrite64;
    ftruncate_fn ftruncate;
    ftruncate64_fn ftruncate64;
    sync_fn fsync, fdatasync;
    sync_range_fn sync_file_range;
} real;

/* -- configuration ---------------------------------------------------------------------------- */

static pthread_once_t config_once = PTHREAD_ONCE_INIT;
static long long delay_ns;           /* 0: no delay */
static char card_dir[PATH_MAX];      /* resolved SLOWDISK_DIR, no trailing '/'; "" when unset */
static size_t card_dir_len;
static char fail_file[PATH_MAX];     /* "" when unset */
static char count_file[PATH_MAX];    /* "" when unset */

static atomic_ullong sync_count;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static int count_fd = -1;            /* guarded by count_lock */

static void *next_symbol(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

static void say(const char *message)
{
    /* A configuration mistake, said once on stderr through the real write. */
    if (real.write != NULL) {
        ssize_t ignored = real.write(STDERR_FILENO, message, strlen(message));
        (void)ignored;
    }
}

static void copy_env(const char *name, char *out, size_t size)
{
    const char *value = getenv(name);
    out[0] = '\0';
    if (value == NULL || value[0] == '\0') {
        return;
    }
    if (strlen(value) >= size) {
        say("slowdisk: an environment path is too long; ignored\n");
        return;
    }
    strcpy(out, value);
}

static void configure(void)
{
    /* Resolve every real function first: nothing below may reach an intercepted one
     * unresolved. */
    real.open = (open_fn)next_symbol("open");
    real.open64 = (open_fn)next_symbol("open64");
    real.openat = (openat_fn)next_symbol("openat");
    real.openat64 = (openat_fn)next_symbol("openat64");
    real.creat = (creat_fn)next_symbol("creat");
    real.creat64 = (creat_fn)next_symbol("creat64");
    real.open_2 = (open2_fn)next_symbol("__open_2");
    real.open64_2 = (open2_fn)next_symbol("__open64_2");
    real.openat_2 = (openat2_fn)next_symbol("__openat_2");
    real.openat64_2 = (openat2_fn)next_symbol("__openat64_2");
    real.write = (write_fn)next_symbol("write");
    real.pwrite = (pwrite_fn)next_symbol("pwrite");
    real.pwrite64 = (pwrite64_fn)next_symbol("pwrite64");
    real.ftruncate = (ftruncate_fn)next_symbol("ftruncate");
    real.ftruncate64 = (ftruncate64_fn)next_symbol("ftruncate64");
    real.fsync = (sync_fn)next_symbol("fsync");
    real.fdatasync = (sync_fn)next_symbol("fdatasync");
    real.sync_file_range = (sync_range_fn)next_symbol("sync_file_range");

    const char *delay = getenv("SLOWDISK_FSYNC_DELAY_MS");
    if (delay != NULL && delay[0] != '\0') {
        char *end = NULL;
        errno = 0;
        long long ms = strtoll(delay, &end, 10);
        if (errno != 0 || end == delay || *end != '\0' || ms < 0 || ms > 3600000) {
            say("slowdisk: SLOWDISK_FSYNC_DELAY_MS is not 0..3600000 ms; no delay\n");
        } else {
            delay_ns = ms * 1000000LL;
        }
    }

    char raw_dir[PATH_MAX];
    copy_env("SLOWDISK_DIR", raw_dir, sizeof raw_dir);
    if (raw_dir[0] != '\0') {
        /* Resolved when it exists, so it compares with what /proc/self/fd says. */
        if (realpath(raw_dir, card_dir) == NULL) {
            strcpy(card_dir, raw_dir);
        }
        card_dir_len = strlen(card_dir);
        while (card_dir_len > 1 && card_dir[card_dir_len - 1] == '/') {
            card_dir[--card_dir_len] = '\0';
        }
    }
    copy_env("SLOWDISK_FAIL_FILE", fail_file, sizeof fail_file);
    copy_env("SLOWDISK_COUNT_FILE", count_file, sizeof count_file);
}

static void ensure_configured(void)
{
    pthread_once(&config_once, configure);
}

__attribute__((constructor)) static void slowdisk_load(void)
{
    ensure_configured();
}

/* -- paths ------------------------------------------------------------------------------------ */

static int on_card(const char *path)
{
    if (card_dir_len == 0) {
        return 0;
    }
    if (card_dir_len == 1) { /* SLOWDISK_DIR=/ */
        return path[0] == '/';
    }
    return strncmp(path, card_dir, card_dir_len) == 0
        && (path[card_dir_len] == '\0' || path[card_dir_len] == '/');
}

/* The path an open descriptor names (from /proc/self/fd), or 0. */
static int fd_path(int fd, char *out, size_t size)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0) {
        return 0;
    }
    out[n] = '\0';
    return 1;
}

static int fd_on_card(int fd, int regular_only)
{
    if (card_dir_len == 0) {
        return 0;
    }
    if (regular_only) {
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            return 0;
        }
    }
    char path[PATH_MAX];
    return fd_path(fd, path, sizeof path) && on_card(path);
}

/* ``path`` as opened relative to ``dirfd``, absolute and with its directory resolved. */
static int absolute(int dirfd, const char *path, char *out, size_t size)
{
    char joined[PATH_MAX];
    if (path[0] == '/') {
        if (strlen(path) >= sizeof joined) {
            return 0;
        }
        strcpy(joined, path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (getcwd(base, sizeof base) == NULL) {
                return 0;
            }
        } else if (!fd_path(dirfd, base, sizeof base)) {
            return 0;
        }
        int n = snprintf(joined, sizeof joined, "%s/%s", base, path);
        if (n < 0 || (size_t)n >= sizeof joined) {
            return 0;
        }
    }
    /* The file may not exist yet (O_CREAT): resolve its directory, keep its name. */
    char *slash = strrchr(joined, '/');
    char parent[PATH_MAX];
    char resolved[PATH_MAX];
    size_t parent_len = (size_t)(slash - joined);
    memcpy(parent, joined, parent_len);
    parent[parent_len] = '\0';
    const char *dir = parent_len == 0 ? "/" : parent;
    if (realpath(dir, resolved) == NULL) {
        if (strlen(joined) >= size) {
            return 0;
        }
        strcpy(out, joined);
        return 1;
    }
    int n = snprintf(out, size, "%s%s", strcmp(resolved, "/") == 0 ? "" : resolved, slash);
    return n >= 0 && (size_t)n < size;
}

/* -- failure injection ------------------------------------------------------------------------ */

/* The errno the flag file asks for, or 0 while it does not exist. */
static int injected_errno(void)
{
    struct stat st;
    if (fail_file[0] == '\0' || stat(fail_file, &st) != 0) {
        return 0;
    }
    char text[32] = {0};
    int fd = real.open(fail_file, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof text - 1);
        text[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    size_t len = strcspn(text, " \t\r\n");
    if (len == 6 && strncmp(text, "ENOSPC", 6) == 0) {
        return ENOSPC;
    }
    if (len == 5 && strncmp(text, "EROFS", 5) == 0) {
        return EROFS;
    }
    return EIO;
}

/* The errno a write-like call on ``fd`` fails with, or 0; errno itself is left alone. */
static int refused_fd(int fd)
{
    int saved = errno;
    int err = injected_errno();
    if (err != 0 && !fd_on_card(fd, 1)) {
        err = 0;
    }
    errno = saved;
    return err;
}

static int refused_open(int dirfd, const char *path, int flags)
{
    if (path == NULL || !(flags & (O_WRONLY | O_RDWR | O_CREAT))) {
        return 0;
    }
    int saved = errno;
    int err = injected_errno();
    char full[PATH_MAX];
    if (err != 0 && !(absolute(dirfd, path, full, sizeof full) && on_card(full))) {
        err = 0;
    }
    errno = saved;
    return err;
}

/* -- fsync: delay and count ------------------------------------------------------------------- */

static void slow_down(void)
{
    if (delay_ns <= 0) {
        return;
    }
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = until.tv_nsec + delay_ns;
    until.tv_sec += (time_t)(ns / 1000000000LL);
    until.tv_nsec = (long)(ns % 1000000000LL);
    /* An absolute deadline: after a signal, the sleep resumes for what is left. */
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {
    }
}

static void count_sync(void)
{
    unsigned long long count = atomic_fetch_add(&sync_count, 1) + 1;
    if (count_file[0] == '\0') {
        return;
    }
    pthread_mutex_lock(&count_lock);
    if (count_fd < 0) {
        count_fd = real.open(count_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    }
    if (count_fd >= 0) {
        /* The newest count under the lock: a later writer never writes a smaller number, and
         * the number only grows, so no byte of an older one is left behind. */
        count = atomic_load(&sync_count);
        char text[32];
        int n = snprintf(text, sizeof text, "%llu\n", count);
        if (n > 0) {
            ssize_t ignored = real.pwrite(count_fd, text, (size_t)n, 0);
            (void)ignored;
        }
    }
    pthread_mutex_unlock(&count_lock);
}

/* Delay, count, maybe fail: 0 to go on to the real call, else the errno to fail with. */
static int before_sync(int fd, int counted)
{
    int saved = errno;
    slow_down();
    int err = 0;
    if (card_dir_len != 0 && fd_on_card(fd, 0)) {
        if (counted) {
            count_sync();
        }
        err = injected_errno();
        if (err != 0 && !fd_on_card(fd, 1)) {
            err = 0; /* a directory's fsync is not refused: only regular files are */
        }
    }
    errno = saved;
    return err;
}

/* -- the intercepted functions ---------------------------------------------------------------- */

#define FAIL_WITH(err) \
    do {                \
        errno = (err);  \
        return -1;      \
    } while (0)

static mode_t mode_argument(int flags, va_list args)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(args, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
    ensure_configured();
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    int err = refused_open(AT_FDCWD, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    ensure_configured();
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    int err = refused_open(AT_FDCWD, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    ensure_configured();
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    int err = refused_open(dirfd, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    ensure_configured();
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    int err = refused_open(dirfd, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.openat64(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
    ensure_configured();
    int err = refused_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.creat(path, mode);
}

int creat64(const char *path, mode_t mode)
{
    ensure_configured();
    int err = refused_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.creat64(path, mode);
}

int __open_2(const char *path, int flags)
{
    ensure_configured();
    int err = refused_open(AT_FDCWD, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.open_2(path, flags);
}

int __open64_2(const char *path, int flags)
{
    ensure_configured();
    int err = refused_open(AT_FDCWD, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
    ensure_configured();
    int err = refused_open(dirfd, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    ensure_configured();
    int err = refused_open(dirfd, path, flags);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.openat64_2(dirfd, path, flags);
}

ssize_t write(int fd, const void *buf, size_t count)
{
    ensure_configured();
    int err = refused_fd(fd);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
    ensure_configured();
    int err = refused_fd(fd);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset)
{
    ensure_configured();
    int err = refused_fd(fd);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.pwrite64(fd, buf, count, offset);
}

int ftruncate(int fd, off_t length)
{
    ensure_configured();
    int err = refused_fd(fd);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.ftruncate(fd, length);
}

int ftruncate64(int fd, off64_t length)
{
    ensure_configured();
    int err = refused_fd(fd);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.ftruncate64(fd, length);
}

int fsync(int fd)
{
    ensure_configured();
    int err = before_sync(fd, 1);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.fsync(fd);
}

int fdatasync(int fd)
{
    ensure_configured();
    int err = before_sync(fd, 1);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.fdatasync(fd);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags)
{
    ensure_configured();
    int err = before_sync(fd, 0);
    if (err != 0) {
        FAIL_WITH(err);
    }
    return real.sync_file_range(fd, offset, nbytes, flags);
}
