#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <spawn.h>
#include <unistd.h>
#include "clinux.h"

int clinux_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}

int clinux_syncfs(int fd) { return syncfs(fd); }

int clinux_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int clinux_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

static void guard_write(int fd, const char *a, const char *b) {
    // async-signal-safe message: write(2) only
    (void)!write(fd, a, strlen(a));
    (void)!write(fd, b, strlen(b));
    (void)!write(fd, "\n", 1);
}

static int guard_status(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 125;
}

pid_t clinux_spawn_guarded(const char *path, char *const argv[], char *const envp[], const char *dir, int out_fd,
                           int grace_ms) {
    pid_t parent = getpid();
    pid_t guard = fork();
    if (guard < 0) return -errno;
    if (guard > 0) return guard;

    // The guard.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(125);  // the launcher died before the line above
    sigset_t waited;
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    sigaddset(&waited, SIGTERM);
    sigaddset(&waited, SIGINT);
    sigaddset(&waited, SIGHUP);
    sigprocmask(SIG_BLOCK, &waited, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, NULL);  // make sure SIGCHLD is generated and queued (not ignored)

    pid_t task = fork();
    if (task < 0) {
        guard_write(out_fd, "balsam-launcher: cannot fork: ", strerror(errno));
        _exit(125);
    }
    if (task == 0) {
        setpgid(0, 0);
        for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0 && in != 0) { dup2(in, 0); close(in); }
        dup2(out_fd, 1);
        dup2(out_fd, 2);
        if (chdir(dir) != 0) {
            guard_write(2, "balsam-launcher: cannot enter the job directory: ", strerror(errno));
            _exit(126);
        }
        for (int fd = 3; fd < 65536; fd++) {
            if (close(fd) != 0 && errno == EBADF && fd > 1024) break;
        }
        execve(path, argv, envp);
        guard_write(2, "balsam-launcher: cannot run the job: ", strerror(errno));
        _exit(127);
    }
    setpgid(task, task);

    int status = 0;
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&waited, &info);
        if (sig < 0) continue;
        if (sig == SIGCHLD) {
            if (waitpid(task, &status, WNOHANG) == task) _exit(guard_status(status));
            continue;
        }
        // Stop the task: SIGTERM to its group, up to grace_ms for it to end, then SIGKILL.
        kill(-task, SIGTERM);
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        sigset_t child;
        sigemptyset(&child);
        sigaddset(&child, SIGCHLD);
        for (;;) {
            if (waitpid(task, &status, WNOHANG) == task) {
                kill(-task, SIGKILL);  // whatever it left behind in its group
                _exit(guard_status(status));
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            long left = grace_ms - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
            if (left <= 0) break;
            struct timespec wait = {left / 1000, (left % 1000) * 1000000};
            sigtimedwait(&child, &info, &wait);
        }
        kill(-task, SIGKILL);
        waitpid(task, &status, 0);
        _exit(guard_status(status));
    }
}
