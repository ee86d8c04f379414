/* Opens files relative to a directory fd (openat and openat2) and with
 * creat(2), after chdir: paths must resolve against the tracee's view. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (chdir(argv[1]) != 0) { perror("chdir"); return 1; }
    int d = open("sub", O_RDONLY | O_DIRECTORY);
    if (d < 0) { perror("open sub"); return 1; }
    int f = openat(d, "inner.txt", O_RDONLY);
    if (f < 0) { perror("openat"); return 1; }
    close(f);
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY;
    long g = syscall(SYS_openat2, d, "../top.txt", &how, sizeof how);
    if (g < 0) { perror("openat2"); return 1; }
    close((int)g);
    int c = creat("created.txt", 0644);
    if (c < 0) { perror("creat"); return 1; }
    close(c);
    /* A failing open must not be recorded. */
    if (openat(d, "does-not-exist", O_RDONLY) >= 0) return 1;
    close(d);
    return 0;
}
