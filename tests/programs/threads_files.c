/* D11 regression: 8 threads, each opens N files (tf_<thread>_<n>.txt in the
 * current directory, created by the test) and exits at once. Threads are
 * short-lived on purpose: a thread that starts, works and exits before its
 * creator's PTRACE_EVENT_CLONE is reported must not become a process.
 * Usage: threads_files N */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int n_files;

static void *work(void *arg) {
    long t = (long)arg;
    char name[64], buf[64];
    for (int i = 0; i < n_files; i++) {
        snprintf(name, sizeof name, "tf_%ld_%d.txt", t, i);
        int fd = open(name, O_RDONLY);
        if (fd < 0) {
            perror(name);
            exit(2);
        }
        if (read(fd, buf, sizeof buf) < 0)
            exit(3);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    n_files = argc > 1 ? atoi(argv[1]) : 4;
    pthread_t th[8];
    for (long t = 0; t < 8; t++)
        if (pthread_create(&th[t], NULL, work, (void *)t) != 0)
            return 4;
    for (int t = 0; t < 8; t++)
        pthread_join(th[t], NULL);
    return 0;
}
