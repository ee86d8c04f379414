/* clone_into CGROUP_DIR FILE: creates a child directly in the cgroup
 * CGROUP_DIR with clone3(CLONE_INTO_CGROUP); the child reads FILE and
 * exits. Prints "cloner=PID" and "clone=CHILD" (step_moves test). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: clone_into CGROUP_DIR FILE\n");
        return 2;
    }
    int cg = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) {
        perror("open cgroup");
        return 1;
    }
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cg;
    fflush(stdout);
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) {
        perror("clone3");
        return 1;
    }
    if (pid == 0) {
        char buf[64];
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0) {
            (void)read(fd, buf, sizeof buf);
            close(fd);
        }
        _exit(fd >= 0 ? 0 : 3);
    }
    int st;
    if (waitpid((pid_t)pid, &st, 0) < 0) {
        perror("waitpid");
        return 1;
    }
    printf("cloner=%d\nclone=%ld\n", (int)getpid(), pid);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
