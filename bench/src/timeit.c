/* timeit OUT -- CMD ARGS...
 *
 * Runs CMD, waits for it with wait4(2) and appends one line to OUT:
 *   wall_ns user_us sys_us maxrss_kib exit_code
 * user/sys are the command's CPU time including its waited-for descendants
 * (and, for eBPF, the in-kernel program time charged to them). Used by
 * `cargo xtask bench` inside every scenario so that only the workload is
 * timed, not the tracer's start or its end-of-step work. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[2], "--") != 0) {
        fprintf(stderr, "usage: timeit OUT -- CMD [ARGS...]\n");
        return 125;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 125; }
    if (pid == 0) {
        execvp(argv[3], &argv[3]);
        perror(argv[3]);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    if (wait4(pid, &st, 0, &ru) < 0) { perror("wait4"); return 125; }
    clock_gettime(CLOCK_MONOTONIC, &b);
    long long wall = (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    long long us = (long long)ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec;
    long long ss = (long long)ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    FILE *f = fopen(argv[1], "a");
    if (!f) { perror(argv[1]); return 125; }
    fprintf(f, "%lld %lld %lld %ld %d\n", wall, us, ss, ru.ru_maxrss, code);
    fclose(f);
    return code;
}
