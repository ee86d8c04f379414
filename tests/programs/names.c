/* Names that are not text (issue #12 item 7), run in the current directory:
 * - a fileless program: a copy of `true` in a memfd, run by a child with
 *   execveat(fd, "", AT_EMPTY_PATH); prints "fileless=PID";
 * - a chain of DEPTH directories of 40-character names, created and opened
 *   dirfd-relatively (the deepest ones are longer than PATH_MAX), with
 *   "leaf.txt" in the last two and "other.txt" in the last, each written
 *   then read;
 * - files whose names are not UTF-8: bad-\xff\xfe.bin, coll-\xff.bin and
 *   the decoy coll-\xef\xbf\xbd.bin (U+FFFD), written then read.
 * Prints "self=PID". Exits non-zero on any failure. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEPTH 120

extern char **environ;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void put(int dir, const char *name, const char *content) {
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die(name);
    if (write(fd, content, strlen(content)) != (ssize_t)strlen(content)) die("write");
    close(fd);
    fd = openat(dir, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(name);
    char buf[64];
    if (read(fd, buf, sizeof buf) < 0) die("read");
    close(fd);
}

static void fileless(void) {
    int mfd = memfd_create("fid-fileless", 0);
    if (mfd < 0) die("memfd_create");
    int src = open("/bin/true", O_RDONLY | O_CLOEXEC);
    if (src < 0) die("/bin/true");
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
        if (write(mfd, buf, n) != n) die("copy");
    close(src);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        char *argv[] = {"fileless", NULL};
        syscall(SYS_execveat, mfd, "", argv, environ, AT_EMPTY_PATH);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "fileless child failed\n");
        exit(1);
    }
    close(mfd);
    printf("fileless=%d\n", pid);
}

static void long_chain(void) {
    int dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) die(".");
    for (int i = 0; i < DEPTH; i++) {
        char name[41];
        snprintf(name, sizeof name, "%03d%037d", i, 0);
        memset(name + 3, 'p', 37);
        if (mkdirat(dir, name, 0755) < 0) die("mkdirat");
        int next = openat(dir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (next < 0) die("openat dir");
        close(dir);
        dir = next;
        if (i == DEPTH - 2) put(dir, "leaf.txt", "leaf-118\n");
    }
    put(dir, "leaf.txt", "leaf-119\n");
    put(dir, "other.txt", "other-119\n");
    close(dir);
}

int main(void) {
    printf("self=%d\n", getpid());
    fileless();
    long_chain();
    put(AT_FDCWD, "bad-\xff\xfe.bin", "bad\n");
    put(AT_FDCWD, "coll-\xff.bin", "real\n");
    put(AT_FDCWD, "coll-\xef\xbf\xbd.bin", "decoy\n");
    return 0;
}
