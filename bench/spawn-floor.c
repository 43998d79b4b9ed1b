// The floor for launcher throughput (issue #4, P1): N tasks, SLOTS at a time, each in a new directory of its
// own with its output appended to job.out there, started with posix_spawn. What any launcher must do per
// task, and nothing else. Usage: spawn-floor DIR N SLOTS PROGRAM [ARGS...]
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: spawn-floor DIR N SLOTS PROGRAM [ARGS...]\n");
        return 64;
    }
    const char *dir = argv[1];
    long n = atol(argv[2]);
    int slots = atoi(argv[3]);
    char **args = argv + 4;
    if (mkdir(dir, 0755) != 0) { perror(dir); return 73; }
    long started = 0, running = 0, failed = 0;
    char path[4096];
    while (started < n || running > 0) {
        while (running < slots && started < n) {
            snprintf(path, sizeof path, "%s/%ld", dir, started);
            if (mkdir(path, 0755) != 0) { perror(path); return 73; }
            char out[4200];
            snprintf(out, sizeof out, "%s/job.out", path);
            int fd = open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0) { perror(out); return 73; }
            posix_spawn_file_actions_t actions;
            posix_spawn_file_actions_init(&actions);
            posix_spawn_file_actions_adddup2(&actions, fd, 1);
            posix_spawn_file_actions_adddup2(&actions, fd, 2);
            posix_spawn_file_actions_addchdir_np(&actions, path);
            pid_t pid;
            if (posix_spawn(&pid, args[0], &actions, NULL, args, environ) != 0) { perror(args[0]); return 69; }
            posix_spawn_file_actions_destroy(&actions);
            close(fd);
            started++;
            running++;
        }
        int status;
        if (wait(&status) > 0) {
            running--;
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
        }
    }
    return failed ? 1 : 0;
}
