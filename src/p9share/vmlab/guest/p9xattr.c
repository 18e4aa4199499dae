/*
 * p9xattr - extended attribute tool for the p9share test guest (busybox has none).
 *
 *   p9xattr [-h] set    FILE NAME VALUE [create|replace]
 *   p9xattr [-h] get    FILE NAME          prints the value, then a newline
 *   p9xattr [-h] getx   FILE NAME          prints the value as hex
 *   p9xattr [-h] size   FILE NAME          prints the value's size (getxattr with size 0)
 *   p9xattr [-h] list   FILE               prints one name per line
 *   p9xattr [-h] remove FILE NAME
 *
 * -h: do not follow a final symlink (l*xattr variants).
 * On failure prints "p9xattr: OP: ERRNAME (strerror)" on stderr and exits 1;
 * usage errors exit 2. Built with gcc -static by p9share.vmlab.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

static int nofollow;

static int fail(const char *op) {
    int e = errno;
    const char *name = strerrorname_np(e);
    fprintf(stderr, "p9xattr: %s: %s (%s)\n", op, name ? name : "E?", strerror(e));
    return 1;
}

static int usage(void) {
    fputs("usage: p9xattr [-h] set FILE NAME VALUE [create|replace] | get FILE NAME |\n"
          "       getx FILE NAME | size FILE NAME | list FILE | remove FILE NAME\n",
          stderr);
    return 2;
}

static ssize_t do_get(const char *f, const char *n, void *buf, size_t sz) {
    return nofollow ? lgetxattr(f, n, buf, sz) : getxattr(f, n, buf, sz);
}

static char *get_value(const char *f, const char *n, ssize_t *len) {
    ssize_t sz = do_get(f, n, NULL, 0);
    if (sz < 0)
        return NULL;
    char *buf = malloc((size_t)sz + 1);
    if (!buf)
        return NULL;
    *len = do_get(f, n, buf, (size_t)sz);
    if (*len < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

int main(int argc, char **argv) {
    int i = 1;
    if (i < argc && strcmp(argv[i], "-h") == 0) {
        nofollow = 1;
        i++;
    }
    if (argc - i < 2)
        return usage();
    const char *op = argv[i], *file = argv[i + 1];
    int nargs = argc - i - 2;
    char **a = argv + i + 2;

    if (strcmp(op, "set") == 0) {
        if (nargs < 2 || nargs > 3)
            return usage();
        int flags = 0;
        if (nargs == 3) {
            if (strcmp(a[2], "create") == 0)
                flags = XATTR_CREATE;
            else if (strcmp(a[2], "replace") == 0)
                flags = XATTR_REPLACE;
            else
                return usage();
        }
        size_t len = strlen(a[1]);
        int r = nofollow ? lsetxattr(file, a[0], a[1], len, flags)
                         : setxattr(file, a[0], a[1], len, flags);
        return r < 0 ? fail("setxattr") : 0;
    }
    if (strcmp(op, "get") == 0 || strcmp(op, "getx") == 0) {
        if (nargs != 1)
            return usage();
        ssize_t len = 0;
        char *v = get_value(file, a[0], &len);
        if (!v)
            return fail("getxattr");
        if (op[3] == 'x') {
            for (ssize_t k = 0; k < len; k++)
                printf("%02x", (unsigned char)v[k]);
        } else {
            fwrite(v, 1, (size_t)len, stdout);
        }
        putchar('\n');
        free(v);
        return 0;
    }
    if (strcmp(op, "size") == 0) {
        if (nargs != 1)
            return usage();
        ssize_t sz = do_get(file, a[0], NULL, 0);
        if (sz < 0)
            return fail("getxattr");
        printf("%zd\n", sz);
        return 0;
    }
    if (strcmp(op, "list") == 0) {
        if (nargs != 0)
            return usage();
        ssize_t sz = nofollow ? llistxattr(file, NULL, 0) : listxattr(file, NULL, 0);
        if (sz < 0)
            return fail("listxattr");
        char *buf = malloc((size_t)sz + 1);
        if (!buf)
            return fail("malloc");
        sz = nofollow ? llistxattr(file, buf, (size_t)sz) : listxattr(file, buf, (size_t)sz);
        if (sz < 0)
            return fail("listxattr");
        for (ssize_t k = 0; k < sz; k += (ssize_t)strlen(buf + k) + 1)
            puts(buf + k);
        free(buf);
        return 0;
    }
    if (strcmp(op, "remove") == 0) {
        if (nargs != 1)
            return usage();
        int r = nofollow ? lremovexattr(file, a[0]) : removexattr(file, a[0]);
        return r < 0 ? fail("removexattr") : 0;
    }
    return usage();
}
