/*
 * floor: the minimal spawn-and-wait baseline for the "many tiny jobs" benchmark.
 *
 * Runs N copies of a command with P parallel slots: posix_spawnp to start a
 * child, waitpid(-1) to reap whichever child finishes first, keeping P in
 * flight until N have run. No output capture, no files, no scheduling logic:
 * whatever any real launcher does on top of this is its overhead.
 *
 * Usage:   floor -n 2000 -P 2 -- true
 * Build:   cc -O2 -o floor floor.c
 * Exit:    0 if every child exited 0, 1 if any failed, 2 on usage or spawn error.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
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
    fprintf(stderr, "usage: floor -n COUNT -P SLOTS -- COMMAND [ARGS...]\n");
    exit(2);
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
    int opt;

    while ((opt = getopt(argc, argv, "n:P:")) != -1) {
        switch (opt) {
        case 'n': n = parse_positive(optarg); break;
        case 'P': slots = parse_positive(optarg); break;
        default: usage();
        }
    }
    /* getopt consumes a "--" separator itself; what is left is the command. */
    if (n < 0 || slots < 0 || optind >= argc)
        usage();
    char **cmd = &argv[optind];

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
