/* Execs argv[1] from a non-leader thread (exercises the thread-group-leader
 * tid swap at PTRACE_EVENT_EXEC). */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static char **g_argv;

static void *worker(void *arg) {
    (void)arg;
    execv(g_argv[1], &g_argv[1]);
    perror("execv");
    _exit(127);
}

static void *sleeper(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t t1, t2;
    if (argc < 2) return 2;
    g_argv = argv;
    pthread_create(&t2, NULL, sleeper, NULL);
    pthread_create(&t1, NULL, worker, NULL);
    pthread_join(t1, NULL);
    return 1;
}
