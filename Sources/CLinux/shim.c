#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <stdio.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/syscall.h>
#include "clinux.h"

int clinux_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}

int clinux_syncfs(int fd) { return syncfs(fd); }

const char *clinux_strptime(const char *text, const char *format, struct tm *parts) {
    return strptime(text, format, parts);
}

long long clinux_timegm(struct tm *parts) { return timegm(parts); }

int clinux_ppoll_ns(struct pollfd *fds, unsigned long count, long nanoseconds) {
    struct timespec timeout = {nanoseconds / 1000000000L, nanoseconds % 1000000000L};
    return ppoll(fds, count, &timeout, NULL);
}

int clinux_spawn_addchdir(void *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int clinux_spawn_addclosefrom(void *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}


int clinux_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

long clinux_copy_file_range(int in, int out, unsigned long length) {
    return (long)copy_file_range(in, NULL, out, NULL, length, 0);
}
