/* Performs each suspicious syscall once. argv[1] = daemon pid to signal
 * with kill(pid, 0). Prints "child=<pid>" on stdout. */
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static char secret[64] = "child memory";

int main(int argc, char **argv) {
    int p[2];
    if (pipe(p) != 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        char b;
        close(p[1]);
        read(p[0], &b, 1); /* wait until the parent is done */
        _exit(0);
    }
    printf("child=%d\n", child);
    fflush(stdout);

    int m = memfd_create("cilock-test", MFD_CLOEXEC);
    if (m >= 0) close(m);

    /* Fails with EPERM under the tracer: the attempt is what counts. */
    ptrace(PTRACE_ATTACH, child, 0, 0);

    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    long u = syscall(__NR_io_uring_setup, 4, &params);
    if (u >= 0) close((int)u);

    char buf[16];
    struct iovec local = {buf, sizeof buf};
    struct iovec remote = {secret, sizeof buf};
    process_vm_readv(child, &local, 1, &remote, 1, 0);

    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insn_cnt = 0; /* invalid */
    syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof attr);

    if (argc > 1) kill(atoi(argv[1]), 0);

    close(p[1]);
    waitpid(child, NULL, 0);

    unshare(CLONE_NEWUSER); /* may fail; last, as it changes our userns */
    return 0;
}
