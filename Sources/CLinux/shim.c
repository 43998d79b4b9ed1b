#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <stdio.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include "clinux.h"

int clinux_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}

int clinux_syncfs(int fd) { return syncfs(fd); }

int clinux_filesystem_type(const char *path, unsigned long long *type) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return -1;
    *type = (unsigned long long)(unsigned long)fs.f_type;
    return 0;
}

const char *clinux_strptime(const char *text, const char *format, struct tm *parts) {
    return strptime(text, format, parts);
}

long long clinux_timegm(struct tm *parts) { return timegm(parts); }

int clinux_ppoll_ns(struct pollfd *fds, unsigned long count, long nanoseconds) {
    struct timespec timeout = {nanoseconds / 1000000000L, nanoseconds % 1000000000L};
    return ppoll(fds, count, &timeout, NULL);
}

// Runs in the vfork(2) child, on the parent's memory, with every signal blocked: only system calls, no allocation.
// Returns only on failure, with the errno.
static int spawn_child(const struct clinux_spawn_request *s, pid_t parent) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) (void)sigaction(sig, &dfl, NULL);  // EINVAL for KILL, STOP, glibc's own
    if (setpgid(0, 0) < 0) return errno;
    if (s->death_signal > 0) {
        if (prctl(PR_SET_PDEATHSIG, s->death_signal) < 0) return errno;
        if (getppid() != parent) return ESRCH;  // the parent died before the signal was armed
    }
    int in = s->input_fd >= 0 ? s->input_fd : open("/dev/null", O_RDONLY);
    if (in < 0) return errno;
    int fds[3] = {in, s->output_fd, s->error_fd};
    for (int target = 0; target < 3; target++) {
        if (fds[target] == target) {
            if (fcntl(target, F_SETFD, 0) < 0) return errno;  // keep it across exec
        } else if (dup2(fds[target], target) < 0) {
            return errno;
        }
    }
    if (chdir(s->directory) < 0) return errno;
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) return errno;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(s->path, s->argv, s->envp);
    return errno;
}

int clinux_spawn(const struct clinux_spawn_request *s, int *pid) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    volatile int failure = 0;
    pid_t child = vfork();
    if (child == 0) {
        failure = spawn_child(s, parent);
        _exit(127);
    }
    int error = child < 0 ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (error) return error;
    if (failure) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        return failure;
    }
    *pid = child;
    return 0;
}

int clinux_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

long clinux_copy_file_range(int in, int out, unsigned long length) {
    return (long)copy_file_range(in, NULL, out, NULL, length, 0);
}
