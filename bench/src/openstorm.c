/* openstorm N PATH: N x (openat(PATH, O_RDONLY) + close). Fails on the
 * first error. The open storm workload of `cargo xtask bench`. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: openstorm N PATH\n"); return 2; }
    long n = strtol(argv[1], NULL, 10);
    for (long i = 0; i < n; i++) {
        int fd = openat(AT_FDCWD, argv[2], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror(argv[2]); return 1; }
        close(fd);
    }
    return 0;
}
