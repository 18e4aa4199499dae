/*
 * p9posix - the POSIX semantics cases of tests/posix/cases.py, for targets
 * that cannot run Python (the test guest's kernel v9fs mount). Same case
 * names, same checks.
 *
 *   p9posix DIR [CASE]...     run the cases (default: all), each in a fresh
 *                             directory DIR/CASE, printing "CASE: ok" or
 *                             "CASE: FAIL reason" (one line each)
 *   p9posix --list            print the case names, one a line
 *
 * Exit status: 0 when every case ran (a FAIL is a result), 2 on a usage
 * error. Built with gcc -static by p9share.vmlab.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static char why[512];

static const char *ename(int e) {
    const char *n = e ? strerrorname_np(e) : "success";
    return n ? n : "E?";
}

#define FAILF(...) do { snprintf(why, sizeof why, __VA_ARGS__); return -1; } while (0)
#define CHECK(c) do { if (!(c)) FAILF("line %d: %s", __LINE__, #c); } while (0)
#define OK(call) do { if ((long)(call) == -1) FAILF("line %d: %s: %s", __LINE__, #call, ename(errno)); } while (0)
#define ERR(e, call) do { errno = 0; long r_ = (long)(call); int e_ = errno; \
    if (r_ != -1 || e_ != (e)) FAILF("line %d: %s: expected %s, got %s", __LINE__, #call, ename(e), r_ == -1 ? ename(e_) : "success"); } while (0)

static int put(const char *path, const void *data, size_t n, int flags) {
    int fd = open(path, flags, 0644);
    if (fd < 0) return -1;
    ssize_t w = n ? write(fd, data, n) : 0;
    close(fd);
    return w == (ssize_t)n ? 0 : -1;
}
#define PUT(p, s) OK(put(p, s, strlen(s), O_WRONLY | O_CREAT | O_TRUNC))

static ssize_t get(const char *path, char *buf, size_t n) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t r = read(fd, buf, n);
    close(fd);
    if (r >= 0 && (size_t)r < n) buf[r] = 0;
    return r;
}
#define CONTENT(p, s) do { char b_[256]; ssize_t r_ = get(p, b_, sizeof b_ - 1); \
    if (r_ < 0) FAILF("line %d: read %s: %s", __LINE__, p, ename(errno)); \
    if ((size_t)r_ != sizeof(s) - 1 || memcmp(b_, s, r_)) FAILF("line %d: %s holds the wrong data", __LINE__, p); } while (0)

static int touch(const char *p) { return put(p, "", 0, O_WRONLY | O_CREAT); }
static int exists(const char *p) { struct stat st; return lstat(p, &st) == 0; }
static unsigned mode_of(const char *p) { struct stat st; return stat(p, &st) ? 0xffffffffu : st.st_mode & 07777; }

static int c_create_read_write(void) {
    char b[64];
    PUT("f", "hello world");
    CONTENT("f", "hello world");
    int fd = open("f", O_RDWR);
    OK(fd);
    OK(pwrite(fd, "WORLD", 5, 6));
    CHECK(pread(fd, b, sizeof b, 0) == 11 && !memcmp(b, "hello WORLD", 11));
    struct stat st;
    OK(fstat(fd, &st));
    CHECK(st.st_size == 11 && S_ISREG(st.st_mode));
    close(fd);
    return 0;
}

static int c_truncate(void) {
    PUT("f", "0123456789");
    OK(truncate("f", 4));
    CONTENT("f", "0123");
    OK(truncate("f", 8));
    CONTENT("f", "0123\0\0\0\0");
    int fd = open("f", O_RDWR);
    OK(fd);
    OK(ftruncate(fd, 2));
    struct stat st;
    OK(fstat(fd, &st));
    close(fd);
    CHECK(st.st_size == 2);
    OK(put("f", "x", 1, O_WRONLY | O_TRUNC));
    CONTENT("f", "x");
    return 0;
}

static int c_sparse_hole(void) {
    char b[16], z[16] = {0};
    int fd = open("f", O_RDWR | O_CREAT, 0644);
    OK(fd);
    OK(lseek(fd, 1 << 20, SEEK_SET));
    OK(write(fd, "end", 3));
    struct stat st;
    OK(fstat(fd, &st));
    CHECK(st.st_size == (1 << 20) + 3);
    CHECK(pread(fd, b, 16, 4096) == 16 && !memcmp(b, z, 16));
    CHECK(pread(fd, b, 3, 1 << 20) == 3 && !memcmp(b, "end", 3));
    CHECK(pread(fd, b, 10, (1 << 20) + 3) == 0);
    close(fd);
    return 0;
}

static int c_o_excl(void) {
    int fd = open("f", O_WRONLY | O_CREAT | O_EXCL, 0600);
    OK(fd);
    close(fd);
    ERR(EEXIST, open("f", O_WRONLY | O_CREAT | O_EXCL, 0600));
    CHECK(mode_of("f") == 0600);
    return 0;
}

static int c_o_append(void) {
    PUT("f", "abc");
    int a = open("f", O_WRONLY | O_APPEND), b = open("f", O_WRONLY | O_APPEND);
    OK(a);
    OK(b);
    OK(write(a, "1", 1));
    OK(write(b, "2", 1));
    OK(lseek(a, 0, SEEK_SET));
    OK(write(a, "3", 1));
    close(a);
    close(b);
    CONTENT("f", "abc123");
    return 0;
}

static int c_rename_over_file(void) {
    char b[8];
    PUT("a", "A");
    PUT("b", "B");
    int fd = open("b", O_RDONLY);
    OK(fd);
    OK(rename("a", "b"));
    CONTENT("b", "A");
    CHECK(!exists("a"));
    CHECK(pread(fd, b, 8, 0) == 1 && b[0] == 'B');
    close(fd);
    return 0;
}

static int c_rename_dir(void) {
    OK(mkdir("x", 0755));
    OK(mkdir("x/sub", 0755));
    PUT("x/sub/f", "deep");
    OK(mkdir("empty", 0755));
    OK(rename("x", "y"));
    CONTENT("y/sub/f", "deep");
    OK(rename("y", "empty"));
    CONTENT("empty/sub/f", "deep");
    CHECK(!exists("y"));
    return 0;
}

static int c_rename_into_itself(void) {
    OK(mkdir("a", 0755));
    OK(mkdir("a/b", 0755));
    ERR(EINVAL, rename("a", "a/b/c"));
    return 0;
}

static int c_rename_dir_nonempty_target(void) {
    OK(mkdir("a", 0755));
    OK(mkdir("b", 0755));
    OK(touch("b/f"));
    ERR(ENOTEMPTY, rename("a", "b"));
    OK(touch("file"));
    ERR(ENOTDIR, rename("a", "file"));
    ERR(EISDIR, rename("file", "a"));
    return 0;
}

static int c_unlink_open_file(void) {
    char b[32];
    PUT("f", "still here");
    int fd = open("f", O_RDWR);
    OK(fd);
    OK(unlink("f"));
    CHECK(!exists("f"));
    CHECK(pread(fd, b, 32, 0) == 10 && !memcmp(b, "still here", 10));
    OK(pwrite(fd, "S", 1, 0));
    CHECK(pread(fd, b, 32, 0) == 10 && !memcmp(b, "Still here", 10));
    struct stat st;
    OK(fstat(fd, &st));
    CHECK(st.st_nlink == 0);
    close(fd);
    return 0;
}

static int c_hardlink_nlink(void) {
    struct stat sa, sb;
    PUT("a", "data");
    OK(link("a", "b"));
    OK(stat("a", &sa));
    OK(stat("b", &sb));
    CHECK(sa.st_ino == sb.st_ino && sa.st_nlink == 2);
    OK(put("b", "more", 4, O_WRONLY | O_APPEND));
    CONTENT("a", "datamore");
    OK(unlink("a"));
    OK(stat("b", &sb));
    CHECK(sb.st_nlink == 1);
    ERR(EEXIST, link("b", "b"));
    return 0;
}

static int c_symlink_relative(void) {
    char b[64];
    struct stat st;
    OK(mkdir("dir", 0755));
    PUT("dir/t", "target");
    OK(symlink("dir/t", "l"));
    CHECK(readlink("l", b, sizeof b) == 5 && !memcmp(b, "dir/t", 5));
    CONTENT("l", "target");
    OK(lstat("l", &st));
    CHECK(S_ISLNK(st.st_mode) && st.st_size == 5);
    OK(symlink("nowhere", "dangling"));
    ERR(ENOENT, stat("dangling", &st));
    OK(lstat("dangling", &st));
    return 0;
}

static int c_symlink_absolute(void) {
    char cwd[PATH_MAX], t[PATH_MAX + 8], b[PATH_MAX + 8];
    struct stat st;
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    snprintf(t, sizeof t, "%s/t", cwd);
    PUT("t", "abs");
    OK(symlink(t, "l"));
    ssize_t n = readlink("l", b, sizeof b);
    CHECK(n == (ssize_t)strlen(t) && !memcmp(b, t, n));
    CONTENT("l", "abs");
    OK(symlink("loop", "loop"));
    ERR(ELOOP, stat("loop", &st));
    return 0;
}

static int c_chmod(void) {
    static const unsigned modes[] = {0600, 0755, 01777, 0000};
    OK(touch("f"));
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        OK(chmod("f", modes[i]));
        if (mode_of("f") != modes[i]) FAILF("chmod %o gave %o", modes[i], mode_of("f"));
    }
    OK(mkdir("dir", 0755));
    OK(chmod("dir", 0750));
    CHECK(mode_of("dir") == 0750);
    return 0;
}

static int c_chmod_setid(void) {
    static const unsigned modes[] = {04755, 02755};
    OK(touch("f"));
    for (size_t i = 0; i < 2; i++) {
        OK(chmod("f", modes[i]));
        if (mode_of("f") != modes[i]) FAILF("chmod %o gave %o", modes[i], mode_of("f"));
    }
    OK(mkdir("dir", 0755));
    OK(chmod("dir", 02750));
    CHECK(mode_of("dir") == 02750);
    return 0;
}

static int c_chown(void) {
    struct stat st, sl;
    if (geteuid() != 0) return 0;
    OK(touch("f"));
    OK(chown("f", 1234, 5678));
    OK(stat("f", &st));
    CHECK(st.st_uid == 1234 && st.st_gid == 5678);
    OK(symlink("f", "l"));
    OK(lchown("l", 42, 43));
    OK(lstat("l", &sl));
    OK(stat("l", &st));
    CHECK(sl.st_uid == 42 && st.st_uid == 1234);
    return 0;
}

static int64_t ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int c_utimes_ns(void) {
    struct timespec ts[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
    struct stat st;
    OK(touch("f"));
    OK(utimensat(AT_FDCWD, "f", ts, 0));
    OK(stat("f", &st));
    if (ns(st.st_atim) != 1000000000123456789LL || ns(st.st_mtim) != 1100000000987654321LL)
        FAILF("set atime/mtime 1000000000.123456789/1100000000.987654321, got %lld.%09ld/%lld.%09ld",
              (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec,
              st.st_mtim.tv_nsec);
    OK(symlink("f", "l"));
    struct timespec lt[2] = {{5, 0}, {6, 0}};
    OK(utimensat(AT_FDCWD, "l", lt, AT_SYMLINK_NOFOLLOW));
    OK(lstat("l", &st));
    CHECK(ns(st.st_mtim) == 6000000000LL);
    OK(stat("f", &st));
    CHECK(ns(st.st_mtim) == 1100000000987654321LL);
    return 0;
}

static int c_utime_now(void) {
    struct timespec old[2] = {{1, 0}, {1, 0}}, now;
    struct stat st;
    OK(touch("f"));
    OK(utimensat(AT_FDCWD, "f", old, 0));
    clock_gettime(CLOCK_REALTIME, &now);
    OK(utimensat(AT_FDCWD, "f", NULL, 0));
    OK(stat("f", &st));
    CHECK(ns(st.st_mtim) >= ns(now) - 1000000000LL && ns(st.st_atim) >= ns(now) - 1000000000LL);
    return 0;
}

static int c_mkdir_errors(void) {
    struct stat st;
    mode_t um = umask(022);
    umask(um);
    OK(mkdir("a", 0750));
    CHECK(mode_of("a") == (0750 & ~um));
    ERR(EEXIST, mkdir("a", 0755));
    OK(touch("f"));
    ERR(EEXIST, mkdir("f", 0755));
    ERR(ENOENT, mkdir("no/x", 0755));
    ERR(ENOTDIR, mkdir("f/x", 0755));
    OK(stat("a", &st));
    CHECK(st.st_nlink == 2);
    return 0;
}

static int c_rmdir_errors(void) {
    OK(mkdir("a", 0755));
    OK(touch("a/f"));
    ERR(ENOTEMPTY, rmdir("a"));
    ERR(ENOTDIR, rmdir("a/f"));
    ERR(ENOENT, rmdir("none"));
    ERR(EISDIR, unlink("a"));
    OK(unlink("a/f"));
    OK(rmdir("a"));
    CHECK(!exists("a"));
    return 0;
}

static int count_entries(const char *dir, const char *prefix, int *dirs) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (prefix && strncmp(e->d_name, prefix, strlen(prefix))) continue;
        n++;
        if (dirs && e->d_type == DT_DIR) (*dirs)++;
    }
    closedir(d);
    return n;
}

static int c_readdir_1000(void) {
    char name[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "entry-%04d-%.*s", i, i % 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        OK(touch(name));
    }
    OK(mkdir("sub", 0755));
    int dirs = 0;
    int n = count_entries(".", NULL, &dirs);
    if (n != 1001) FAILF("listed %d entries, not 1001", n);
    CHECK(dirs == 1);
    return 0;
}

static int c_readdir_while_modifying(void) {
    char name[64];
    static char seen[300];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "keep-%03d", i);
        OK(touch(name));
    }
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "gone-%03d", i);
        OK(touch(name));
    }
    memset(seen, 0, sizeof seen);
    DIR *d = opendir(".");
    CHECK(d != NULL);
    struct dirent *e;
    int i = 0;
    while ((e = readdir(d))) {
        int k;
        if (sscanf(e->d_name, "keep-%d", &k) == 1 && k >= 0 && k < 300) {
            if (seen[k]++) { closedir(d); FAILF("%s listed twice", e->d_name); }
        }
        if (i++ == 10) {
            for (int j = 0; j < 100; j++) {
                snprintf(name, sizeof name, "gone-%03d", j);
                unlink(name);
                snprintf(name, sizeof name, "new-%03d", j);
                touch(name);
            }
        }
    }
    closedir(d);
    for (int k = 0; k < 300; k++)
        if (!seen[k]) FAILF("keep-%03d skipped", k);
    return 0;
}

/* A child takes the lock and holds it until the parent closes its pipe. */
static int lock_contention(int use_flock) {
    int ready[2], hold[2];
    char c;
    OK(put("f", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 100, O_WRONLY | O_CREAT | O_TRUNC));
    OK(pipe(ready));
    OK(pipe(hold));
    pid_t pid = fork();
    OK(pid);
    if (pid == 0) {
        int fd = open("f", O_RDWR);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
        int r = use_flock ? flock(fd, LOCK_EX | LOCK_NB) : fcntl(fd, F_SETLK, &fl);
        c = r == 0 ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1) _exit(1);
        close(hold[1]);
        while (read(hold[0], &c, 1) > 0) {
        }
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    int fd = open("f", O_RDWR);
    int res = 0;
    if (read(ready[0], &c, 1) != 1 || c != 'y') {
        snprintf(why, sizeof why, "the child could not take the lock");
        res = -1;
    }
    struct flock busy = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 2, .l_len = 5};
    struct flock free_ = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10};
    if (res == 0) {
        errno = 0;
        int r = use_flock ? flock(fd, LOCK_EX | LOCK_NB) : fcntl(fd, F_SETLK, &busy);
        if (r == 0 || (errno != EAGAIN && errno != EACCES)) {
            snprintf(why, sizeof why, "a held lock was granted again (%s)", r ? ename(errno) : "success");
            res = -1;
        } else if (!use_flock && fcntl(fd, F_SETLK, &free_) != 0) {
            snprintf(why, sizeof why, "a free range was refused: %s", ename(errno));
            res = -1;
        }
    }
    close(hold[1]);
    waitpid(pid, NULL, 0);
    if (res == 0) {
        int r = use_flock ? flock(fd, LOCK_EX | LOCK_NB) : fcntl(fd, F_SETLK, &busy);
        if (r != 0) {
            snprintf(why, sizeof why, "the lock stayed held after its owner exited: %s", ename(errno));
            res = -1;
        }
    }
    close(fd);
    close(ready[0]);
    return res;
}

static int c_fcntl_lock(void) { return lock_contention(0); }
static int c_flock(void) { return lock_contention(1); }

static int c_xattr_user(void) {
    char b[1024], list[1024], big[512];
    OK(touch("f"));
    OK(setxattr("f", "user.color", "blue", 4, 0));
    CHECK(getxattr("f", "user.color", b, sizeof b) == 4 && !memcmp(b, "blue", 4));
    OK(setxattr("f", "user.shape", "round", 5, 0));
    ssize_t n = listxattr("f", list, sizeof list);
    OK(n);
    int color = 0, shape = 0;
    for (char *p = list; p < list + n; p += strlen(p) + 1) {
        color |= !strcmp(p, "user.color");
        shape |= !strcmp(p, "user.shape");
    }
    CHECK(color && shape);
    ERR(EEXIST, setxattr("f", "user.color", "x", 1, XATTR_CREATE));
    ERR(ENODATA, setxattr("f", "user.none", "x", 1, XATTR_REPLACE));
    OK(removexattr("f", "user.color"));
    ERR(ENODATA, getxattr("f", "user.color", b, sizeof b));
    for (int i = 0; i < 512; i++) big[i] = (char)i;
    OK(setxattr("f", "user.big", big, 512, 0));
    CHECK(getxattr("f", "user.big", b, sizeof b) == 512 && !memcmp(b, big, 512));
    return 0;
}

static int c_xattr_empty_value(void) {
    char b[16], list[256];
    OK(touch("f"));
    OK(setxattr("f", "user.empty", "", 0, 0));
    CHECK(getxattr("f", "user.empty", b, sizeof b) == 0);
    ssize_t n = listxattr("f", list, sizeof list);
    OK(n);
    int found = 0;
    for (char *p = list; p < list + n; p += strlen(p) + 1) found |= !strcmp(p, "user.empty");
    CHECK(found);
    return 0;
}

static int c_statvfs(void) {
    struct statvfs s;
    OK(statvfs(".", &s));
    CHECK(s.f_bsize > 0 && s.f_frsize > 0);
    CHECK(s.f_blocks > 0 && s.f_bavail <= s.f_bfree && s.f_bfree <= s.f_blocks);
    CHECK(s.f_namemax >= 255);
    return 0;
}

static int c_large_file(void) {
    enum { MIB = 1 << 20 };
    char *buf = malloc(MIB), *back = malloc(MIB);
    CHECK(buf && back);
    for (int i = 0; i < MIB; i++) buf[i] = (char)(i * 7 + i / 4096);
    int fd = open("big", O_WRONLY | O_CREAT | O_TRUNC, 0644), res = 0;
    OK(fd);
    for (int i = 0; i < 64 && res == 0; i++) {
        buf[0] = (char)i;
        if (write(fd, buf, MIB) != MIB) res = -1;
    }
    close(fd);
    if (res) { free(buf); free(back); FAILF("write: %s", ename(errno)); }
    struct stat st;
    OK(stat("big", &st));
    CHECK(st.st_size == 64LL * MIB);
    fd = open("big", O_RDONLY);
    OK(fd);
    for (int i = 0; i < 64 && res == 0; i++) {
        buf[0] = (char)i;
        size_t got = 0;
        while (got < MIB) {
            ssize_t r = read(fd, back + got, MIB - got);
            if (r <= 0) break;
            got += r;
        }
        if (got != MIB || memcmp(buf, back, MIB)) res = -1;
    }
    close(fd);
    free(buf);
    free(back);
    if (res) FAILF("the data read back differs");
    return 0;
}

static int c_mmap_shared(void) {
    char a[8192], b[16];
    memset(a, 'a', sizeof a);
    OK(put("f", a, sizeof a, O_WRONLY | O_CREAT | O_TRUNC));
    int fd = open("f", O_RDWR);
    OK(fd);
    char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(m != MAP_FAILED);
    CHECK(!memcmp(m, "aaaa", 4));
    memcpy(m + 4096, "MMAP", 4);
    OK(msync(m, 8192, MS_SYNC));
    munmap(m, 8192);
    CHECK(pread(fd, b, 4, 4096) == 4 && !memcmp(b, "MMAP", 4));
    close(fd);
    OK(put("f", "zzzzzzzzzz", 10, O_WRONLY));
    fd = open("f", O_RDONLY);
    OK(fd);
    m = mmap(NULL, 8192, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(m != MAP_FAILED);
    int same = !memcmp(m, "zzzzzzzzzza", 11) && !memcmp(m + 4096, "MMAP", 4);
    munmap(m, 8192);
    close(fd);
    CHECK(same);
    return 0;
}

static int c_fsync(void) {
    int fd = open("f", O_RDWR | O_CREAT, 0644);
    OK(fd);
    OK(write(fd, "durable", 7));
    OK(fsync(fd));
    OK(fdatasync(fd));
    close(fd);
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    OK(dfd);
    OK(fsync(dfd));
    close(dfd);
    CONTENT("f", "durable");
    return 0;
}

static int c_errno_enoent(void) {
    struct stat st;
    char b[8];
    ERR(ENOENT, stat("none", &st));
    ERR(ENOENT, open("none", O_RDONLY));
    ERR(ENOENT, unlink("none"));
    ERR(ENOENT, rename("none", "other"));
    ERR(ENOENT, readlink("none", b, sizeof b));
    return 0;
}

static int c_errno_eisdir(void) {
    char b[8];
    OK(mkdir("dir", 0755));
    ERR(EISDIR, open("dir", O_WRONLY));
    ERR(EISDIR, open("dir", O_RDWR));
    int fd = open("dir", O_RDONLY);
    OK(fd);
    errno = 0;
    ssize_t r = read(fd, b, sizeof b);
    int e = errno;
    close(fd);
    if (r != -1 || e != EISDIR) FAILF("read of a directory: expected EISDIR, got %s", r == -1 ? ename(e) : "success");
    return 0;
}

static int c_errno_enotdir(void) {
    struct stat st;
    OK(touch("f"));
    ERR(ENOTDIR, stat("f/x", &st));
    errno = 0;
    DIR *d = opendir("f");
    if (d) { closedir(d); FAILF("opendir of a file succeeded"); }
    if (errno != ENOTDIR) FAILF("opendir of a file: %s", ename(errno));
    ERR(ENOTDIR, open("f", O_RDONLY | O_DIRECTORY));
    return 0;
}

static int c_errno_enametoolong(void) {
    char name[300];
    struct stat st;
    memset(name, 'n', 256);
    name[256] = 0;
    ERR(ENAMETOOLONG, open(name, O_WRONLY | O_CREAT, 0644));
    ERR(ENAMETOOLONG, stat(name, &st));
    ERR(ENAMETOOLONG, mkdir(name, 0755));
    name[255] = 0;
    OK(touch(name));
    int dirs = 0;
    CHECK(count_entries(".", NULL, &dirs) == 1);
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(void);
} CASES[] = {
    {"create_read_write", c_create_read_write},
    {"truncate", c_truncate},
    {"sparse_hole", c_sparse_hole},
    {"o_excl", c_o_excl},
    {"o_append", c_o_append},
    {"rename_over_file", c_rename_over_file},
    {"rename_dir", c_rename_dir},
    {"rename_into_itself", c_rename_into_itself},
    {"rename_dir_nonempty_target", c_rename_dir_nonempty_target},
    {"unlink_open_file", c_unlink_open_file},
    {"hardlink_nlink", c_hardlink_nlink},
    {"symlink_relative", c_symlink_relative},
    {"symlink_absolute", c_symlink_absolute},
    {"chmod", c_chmod},
    {"chmod_setid", c_chmod_setid},
    {"chown", c_chown},
    {"utimes_ns", c_utimes_ns},
    {"utime_now", c_utime_now},
    {"mkdir_errors", c_mkdir_errors},
    {"rmdir_errors", c_rmdir_errors},
    {"readdir_1000", c_readdir_1000},
    {"readdir_while_modifying", c_readdir_while_modifying},
    {"fcntl_lock", c_fcntl_lock},
    {"flock", c_flock},
    {"xattr_user", c_xattr_user},
    {"xattr_empty_value", c_xattr_empty_value},
    {"statvfs", c_statvfs},
    {"large_file", c_large_file},
    {"mmap_shared", c_mmap_shared},
    {"fsync", c_fsync},
    {"errno_enoent", c_errno_enoent},
    {"errno_eisdir", c_errno_eisdir},
    {"errno_enotdir", c_errno_enotdir},
    {"errno_enametoolong", c_errno_enametoolong},
};
enum { NCASES = sizeof CASES / sizeof *CASES };

static int run_case(int dirfd, int i) {
    why[0] = 0;
    if (mkdirat(dirfd, CASES[i].name, 0755) < 0 && errno != EEXIST) {
        printf("%s: FAIL mkdir: %s\n", CASES[i].name, ename(errno));
        return 0;
    }
    if (fchdir(dirfd) < 0 || chdir(CASES[i].name) < 0) {
        printf("%s: FAIL chdir: %s\n", CASES[i].name, ename(errno));
        return 0;
    }
    int r = CASES[i].fn();
    if (r == 0)
        printf("%s: ok\n", CASES[i].name);
    else
        printf("%s: FAIL %s\n", CASES[i].name, why);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--list")) {
        for (int i = 0; i < NCASES; i++) puts(CASES[i].name);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: p9posix DIR [CASE]... | p9posix --list\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int dirfd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (dirfd < 0) {
        fprintf(stderr, "p9posix: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    if (argc == 2) {
        for (int i = 0; i < NCASES; i++) run_case(dirfd, i);
        return 0;
    }
    for (int a = 2; a < argc; a++) {
        int found = 0;
        for (int i = 0; i < NCASES; i++)
            if (!strcmp(argv[a], CASES[i].name)) {
                run_case(dirfd, i);
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "p9posix: unknown case %s\n", argv[a]);
            return 2;
        }
    }
    return 0;
}
