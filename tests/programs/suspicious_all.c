/* Performs each suspicious syscall cilock records exactly once, plus calls
 * that must NOT be recorded (a plain fork, kill of a non-daemon pid).
 * argv[1] = the cilock daemon's pid (signalled with signal 0).
 * Prints "child=<pid>" and "self=<pid>" on stdout. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static char secret[64] = "child memory";

int main(int argc, char **argv) {
    pid_t daemon = argc > 1 ? atoi(argv[1]) : 0;
    int p[2];
    if (pipe(p) != 0) return 1;
    pid_t child = fork(); /* plain fork: not recorded */
    if (child == 0) {
        char b;
        close(p[1]);
        read(p[0], &b, 1);
        _exit(0);
    }
    printf("child=%d\nself=%d\n", child, getpid());
    fflush(stdout);

    int m = memfd_create("cilock-test", MFD_CLOEXEC);
    if (m >= 0) close(m);

    ptrace(PTRACE_ATTACH, child, 0, 0);
    waitpid(child, NULL, __WALL | WNOHANG);
    ptrace(PTRACE_DETACH, child, 0, 0); /* second ptrace call: recorded too */

    mount("none", "/nonexistent-cilock-mnt", "tmpfs", MS_NOSUID, NULL);
    int fs = syscall(SYS_fsopen, "tmpfs", 0);
    syscall(SYS_fsmount, fs, 0, 0);
    if (fs >= 0) close(fs);
    syscall(SYS_move_mount, -1, "", AT_FDCWD, "/nonexistent-cilock-mnt", 0);
    int t = syscall(SYS_open_tree, AT_FDCWD, "/tmp", 1 /* OPEN_TREE_CLONE */);
    if (t >= 0) close(t);

    unshare(CLONE_NEWUTS);
    int ns = open("/proc/self/ns/uts", O_RDONLY);
    setns(ns, CLONE_NEWUTS);
    if (ns >= 0) close(ns);

    /* clone with a namespace flag */
    long c = syscall(SYS_clone, CLONE_NEWIPC | SIGCHLD, 0, 0, 0, 0);
    if (c == 0) _exit(0);
    if (c > 0) waitpid(c, NULL, 0);
    /* clone3 with a namespace flag */
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_NEWUTS;
    ca.exit_signal = SIGCHLD;
    long c3 = syscall(SYS_clone3, &ca, sizeof ca);
    if (c3 == 0) _exit(0);
    if (c3 > 0) waitpid(c3, NULL, 0);

    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);

    syscall(SYS_init_module, NULL, 0, "");
    int nul = open("/dev/null", O_RDONLY);
    syscall(SYS_finit_module, nul, "", 0);
    close(nul);

    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    long u = syscall(SYS_io_uring_setup, 4, &params);
    if (u >= 0) close((int)u);

    char buf[16];
    struct iovec local = {buf, sizeof buf};
    struct iovec remote = {secret, sizeof buf};
    process_vm_readv(child, &local, 1, &remote, 1, 0);
    process_vm_writev(child, &local, 1, &remote, 1, 0);

    kill(child, 0); /* not the daemon: not recorded */
    if (daemon > 0) {
        kill(daemon, 0);
        syscall(SYS_tkill, daemon, 0);
        syscall(SYS_tgkill, daemon, daemon, 0);
        int pfd = syscall(SYS_pidfd_open, daemon, 0);
        if (pfd >= 0) {
            syscall(SYS_pidfd_send_signal, pfd, 0, NULL, 0);
            close(pfd);
        }
    }
    int cpfd = syscall(SYS_pidfd_open, child, 0);
    if (cpfd >= 0) { /* not the daemon: not recorded */
        syscall(SYS_pidfd_send_signal, cpfd, 0, NULL, 0);
        close(cpfd);
    }

    /* A connect whose sockaddr cannot be read (EFAULT): the kernel-side
     * aya-log warning path. */
    int bad = socket(AF_INET, SOCK_STREAM, 0);
    connect(bad, (struct sockaddr *)1, 16);
    close(bad);

    close(p[1]);
    waitpid(child, NULL, 0);
    return 0;
}
