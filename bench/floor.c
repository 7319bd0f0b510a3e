/*
 * floor: the minimal spawn-and-wait baseline for the "many tiny jobs" benchmark.
 *
 * Runs N copies of a command with P parallel slots: posix_spawnp to start a
 * child, waitpid(-1) to reap whichever child finishes first, keeping P in
 * flight until N have run. No output capture, no files, no scheduling logic:
 * whatever any real launcher does on top of this is its overhead.
 *
 * With -T, each slot is a thread that starts a child and waits for that one
 * (waitpid(pid)), then starts the next: what a Rust program doing
 * `Command::status()` on P threads does. The kernel wakes a thread waiting for
 * its child on the CPU the child just left, and that thread starts the next
 * child there at once, so no CPU sits idle between two jobs: on 2 cores this
 * is faster than the single waitpid(-1) loop.
 *
 * Usage:   floor [-T] -n 2000 -P 2 -- true
 * Build:   cc -O2 -pthread -o floor floor.c
 * Exit:    0 if every child exited 0, 1 if any failed, 2 on usage or spawn error.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void usage(void)
{
    fprintf(stderr, "usage: floor [-T] -n COUNT -P SLOTS -- COMMAND [ARGS...]\n");
    exit(2);
}

/* -T mode: shared by the slot threads. */
static char **thread_cmd;
static long thread_total, thread_started, thread_failed;
static pthread_mutex_t thread_lock = PTHREAD_MUTEX_INITIALIZER;

static void *slot_thread(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&thread_lock);
        int more = thread_started < thread_total;
        thread_started += more;
        pthread_mutex_unlock(&thread_lock);
        if (!more)
            return NULL;
        pid_t pid;
        int err = posix_spawnp(&pid, thread_cmd[0], NULL, NULL, thread_cmd, environ);
        if (err != 0) {
            fprintf(stderr, "floor: posix_spawnp %s: %s\n", thread_cmd[0], strerror(err));
            exit(2);
        }
        int status;
        while (waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR) {
                perror("floor: waitpid");
                exit(2);
            }
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            pthread_mutex_lock(&thread_lock);
            thread_failed++;
            pthread_mutex_unlock(&thread_lock);
        }
    }
}

static int run_threads(char **cmd, long n, long slots)
{
    thread_cmd = cmd;
    thread_total = n;
    pthread_t *threads = calloc((size_t)slots, sizeof *threads);
    if (threads == NULL) {
        perror("floor: calloc");
        return 2;
    }
    for (long i = 0; i < slots; i++) {
        int err = pthread_create(&threads[i], NULL, slot_thread, NULL);
        if (err != 0) {
            fprintf(stderr, "floor: pthread_create: %s\n", strerror(err));
            return 2;
        }
    }
    for (long i = 0; i < slots; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    if (thread_failed > 0) {
        fprintf(stderr, "floor: %ld of %ld jobs failed\n", thread_failed, n);
        return 1;
    }
    return 0;
}

static long parse_positive(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < 1)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    long n = -1, slots = -1;
    int opt, threads = 0;

    while ((opt = getopt(argc, argv, "Tn:P:")) != -1) {
        switch (opt) {
        case 'T': threads = 1; break;
        case 'n': n = parse_positive(optarg); break;
        case 'P': slots = parse_positive(optarg); break;
        default: usage();
        }
    }
    /* getopt consumes a "--" separator itself; what is left is the command. */
    if (n < 0 || slots < 0 || optind >= argc)
        usage();
    char **cmd = &argv[optind];
    if (threads)
        return run_threads(cmd, n, slots);

    long started = 0, running = 0, failed = 0;
    while (started < n || running > 0) {
        while (running < slots && started < n) {
            pid_t pid;
            int err = posix_spawnp(&pid, cmd[0], NULL, NULL, cmd, environ);
            if (err != 0) {
                fprintf(stderr, "floor: posix_spawnp %s: %s\n", cmd[0], strerror(err));
                return 2;
            }
            started++;
            running++;
        }

        int status;
        pid_t done = waitpid(-1, &status, 0);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            perror("floor: waitpid");
            return 2;
        }
        running--;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
    }

    if (failed > 0) {
        fprintf(stderr, "floor: %ld of %ld jobs failed\n", failed, n);
        return 1;
    }
    return 0;
}
