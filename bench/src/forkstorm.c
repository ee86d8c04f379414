/* forkstorm N P PROG [ARGS...]: runs PROG N times, at most P at a time
 * (fork + execv + wait). Fails if any run fails. The fork/exec storm
 * workload of `cargo xtask bench`. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: forkstorm N P PROG [ARGS...]\n"); return 2; }
    long n = strtol(argv[1], NULL, 10);
    long p = strtol(argv[2], NULL, 10);
    if (p < 1) p = 1;
    long started = 0, running = 0, failed = 0;
    while (started < n || running > 0) {
        while (started < n && running < p) {
            pid_t pid = fork();
            if (pid < 0) { perror("fork"); return 1; }
            if (pid == 0) { execv(argv[3], &argv[3]); _exit(127); }
            started++;
            running++;
        }
        int st;
        if (wait(&st) < 0) { perror("wait"); return 1; }
        running--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
    }
    if (failed) { fprintf(stderr, "forkstorm: %ld runs failed\n", failed); return 1; }
    return 0;
}
