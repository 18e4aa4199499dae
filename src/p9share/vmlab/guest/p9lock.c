/*
 * p9lock - byte-range (fcntl) and whole-file (flock) lock tester for the p9share
 * test guest. Opens FILE (O_RDWR|O_CREAT) once and runs the commands in order on
 * that one descriptor, printing one line per command:  "TAG CMD ARGS: RESULT".
 *
 *   p9lock [-t TAG] FILE CMD [ARGS]... [CMD [ARGS]...]...
 *
 * Commands (START and LEN are numbers; LEN 0 = to end of file):
 *   rd START LEN | wr START LEN | un START LEN   fcntl F_SETLK  -> ok | EAGAIN | EACCES | ...
 *   rdw START LEN | wrw START LEN               fcntl F_SETLKW (blocks) -> ok | EINTR | ...
 *   get rd|wr START LEN                         fcntl F_GETLK  -> unlocked |
 *                                               locked TYPE start=S len=L pid=P
 *   flock sh|ex|un                              flock()        -> ok | ...
 *   flocknb sh|ex                               flock(LOCK_NB) -> ok | EAGAIN
 *   close | open                                close / reopen FILE (drops fcntl locks)
 *   touch PATH                                  create a marker file (for synchronisation)
 *   wait PATH [MS]                              wait until PATH exists (default 30000 ms);
 *                                               prints "timeout" and exits 3 if it does not
 *   sleep MS                                    sleep
 *   echo WORD                                   print WORD
 *
 * Errors are printed as errno names from strerrorname_np(); EWOULDBLOCK has the
 * same value as EAGAIN on Linux and is printed as EAGAIN.
 * TAG defaults to the process id. Exit status: 0 when every command was carried out
 * (a refused lock is a result, not an error), 1 when FILE cannot be opened,
 * 2 on a usage error, 3 on a wait timeout. Built with gcc -static by p9share.vmlab.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *tag;
static char tagbuf[32];

static const char *ename(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

static void msleep(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int usage(const char *why) {
    fprintf(stderr, "p9lock: %s\nusage: p9lock [-t TAG] FILE CMD [ARGS]... (see source)\n", why);
    return 2;
}

static int need(int i, int n, int argc) { return i + n < argc; }

static int do_setlk(int fd, int cmd, short type, const char *s, const char *l) {
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = atoll(s);
    fl.l_len = atoll(l);
    return fcntl(fd, cmd, &fl);
}

int main(int argc, char **argv) {
    int i = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    if (i + 1 < argc && strcmp(argv[i], "-t") == 0) {
        tag = argv[i + 1];
        i += 2;
    } else {
        snprintf(tagbuf, sizeof tagbuf, "%d", (int)getpid());
        tag = tagbuf;
    }
    if (i >= argc)
        return usage("missing FILE");
    const char *file = argv[i++];
    int fd = open(file, O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
        printf("%s open %s: %s\n", tag, file, ename(errno));
        return 1;
    }
    while (i < argc) {
        const char *c = argv[i];
        if (!strcmp(c, "rd") || !strcmp(c, "wr") || !strcmp(c, "un") || !strcmp(c, "rdw") ||
            !strcmp(c, "wrw")) {
            if (!need(i, 2, argc))
                return usage("lock command needs START LEN");
            short type = c[0] == 'r' ? F_RDLCK : c[0] == 'w' ? F_WRLCK : F_UNLCK;
            int cmd = c[2] == 'w' ? F_SETLKW : F_SETLK;
            int r = do_setlk(fd, cmd, type, argv[i + 1], argv[i + 2]);
            printf("%s %s %s %s: %s\n", tag, c, argv[i + 1], argv[i + 2], r < 0 ? ename(errno) : "ok");
            i += 3;
        } else if (!strcmp(c, "get")) {
            if (!need(i, 3, argc))
                return usage("get needs rd|wr START LEN");
            struct flock fl = {0};
            fl.l_type = argv[i + 1][0] == 'r' ? F_RDLCK : F_WRLCK;
            fl.l_whence = SEEK_SET;
            fl.l_start = atoll(argv[i + 2]);
            fl.l_len = atoll(argv[i + 3]);
            int r = fcntl(fd, F_GETLK, &fl);
            printf("%s get %s %s %s: ", tag, argv[i + 1], argv[i + 2], argv[i + 3]);
            if (r < 0)
                printf("%s\n", ename(errno));
            else if (fl.l_type == F_UNLCK)
                printf("unlocked\n");
            else
                printf("locked %s start=%lld len=%lld pid=%d\n", fl.l_type == F_RDLCK ? "rd" : "wr",
                       (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
            i += 4;
        } else if (!strcmp(c, "flock") || !strcmp(c, "flocknb")) {
            if (!need(i, 1, argc))
                return usage("flock needs sh|ex|un");
            const char *m = argv[i + 1];
            int op = !strcmp(m, "sh") ? LOCK_SH : !strcmp(m, "ex") ? LOCK_EX : !strcmp(m, "un") ? LOCK_UN : -1;
            if (op < 0)
                return usage("flock mode must be sh, ex or un");
            if (c[5] == 'n')
                op |= LOCK_NB;
            int r = flock(fd, op);
            printf("%s %s %s: %s\n", tag, c, m, r < 0 ? ename(errno) : "ok");
            i += 2;
        } else if (!strcmp(c, "close")) {
            int r = close(fd);
            fd = -1;
            printf("%s close: %s\n", tag, r < 0 ? ename(errno) : "ok");
            i += 1;
        } else if (!strcmp(c, "open")) {
            if (fd >= 0)
                close(fd);
            fd = open(file, O_RDWR | O_CREAT, 0644);
            printf("%s open: %s\n", tag, fd < 0 ? ename(errno) : "ok");
            i += 1;
        } else if (!strcmp(c, "touch")) {
            if (!need(i, 1, argc))
                return usage("touch needs PATH");
            int t = open(argv[i + 1], O_WRONLY | O_CREAT, 0644);
            printf("%s touch %s: %s\n", tag, argv[i + 1], t < 0 ? ename(errno) : "ok");
            if (t >= 0)
                close(t);
            i += 2;
        } else if (!strcmp(c, "wait")) {
            if (!need(i, 1, argc))
                return usage("wait needs PATH [MS]");
            const char *p = argv[i + 1];
            long ms = 30000;
            i += 2;
            if (i < argc && argv[i][0] >= '0' && argv[i][0] <= '9')
                ms = atol(argv[i++]);
            struct stat st;
            long waited = 0;
            while (stat(p, &st) < 0 && waited < ms) {
                msleep(10);
                waited += 10;
            }
            if (stat(p, &st) < 0) {
                printf("%s wait %s: timeout\n", tag, p);
                return 3;
            }
            printf("%s wait %s: ok\n", tag, p);
        } else if (!strcmp(c, "sleep")) {
            if (!need(i, 1, argc))
                return usage("sleep needs MS");
            msleep(atol(argv[i + 1]));
            i += 2;
        } else if (!strcmp(c, "echo")) {
            if (!need(i, 1, argc))
                return usage("echo needs WORD");
            printf("%s %s\n", tag, argv[i + 1]);
            i += 2;
        } else {
            fprintf(stderr, "p9lock: unknown command %s\n", c);
            return 2;
        }
    }
    return 0;
}
