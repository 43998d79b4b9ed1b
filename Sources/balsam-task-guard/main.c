// balsam-task-guard PARENT GRACE_MS PROGRAM [ARGS...]
//
// Runs one job for balsam-launcher and makes sure it never outlives the launcher. The launcher starts this small
// program with posix_spawn (cheap, whatever the launcher's size) in the job's directory, in a process group of its
// own, output on job.out. The guard sets PR_SET_PDEATHSIG = SIGTERM (and exits if PARENT is already gone), then
// forks PROGRAM in a process group of its own and waits. SIGTERM, SIGINT or SIGHUP to the guard (a kill request,
// the end of the wall time, or its launcher's death) sends SIGTERM to the job's group, waits GRACE_MS, then
// SIGKILLs the group. The guard exits with the job's exit status, or 128 + the signal that ended it; 127 if
// PROGRAM cannot be run, 125 if the guard itself cannot work.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int exit_status(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 125;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: balsam-task-guard PARENT GRACE_MS PROGRAM [ARGS...]\n");
        return 125;
    }
    pid_t parent = (pid_t)atol(argv[1]);
    long grace_ms = atol(argv[2]);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) return 125;  // the launcher died before the line above

    sigset_t waited;
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    sigaddset(&waited, SIGTERM);
    sigaddset(&waited, SIGINT);
    sigaddset(&waited, SIGHUP);
    sigprocmask(SIG_BLOCK, &waited, NULL);

    pid_t task = fork();
    if (task < 0) {
        fprintf(stderr, "balsam-task-guard: cannot fork: %s\n", strerror(errno));
        return 125;
    }
    if (task == 0) {
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[3], argv + 3);
        fprintf(stderr, "balsam-launcher: cannot run %s: %s\n", argv[3], strerror(errno));
        _exit(127);
    }
    setpgid(task, task);

    int status = 0;
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&waited, &info);
        if (sig < 0) continue;
        if (sig == SIGCHLD) {
            if (waitpid(task, &status, WNOHANG) == task) return exit_status(status);
            continue;
        }
        // Stop the job: SIGTERM to its group, up to grace_ms for it to end, then SIGKILL.
        kill(-task, SIGTERM);
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        sigset_t child;
        sigemptyset(&child);
        sigaddset(&child, SIGCHLD);
        for (;;) {
            if (waitpid(task, &status, WNOHANG) == task) {
                kill(-task, SIGKILL);  // whatever it left behind in its group
                return exit_status(status);
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            long left = grace_ms - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
            if (left <= 0) break;
            struct timespec wait = {left / 1000, (left % 1000) * 1000000};
            sigtimedwait(&child, &info, &wait);
        }
        kill(-task, SIGKILL);
        waitpid(task, &status, 0);
        return exit_status(status);
    }
}
