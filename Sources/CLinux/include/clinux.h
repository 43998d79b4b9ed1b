#ifndef CLINUX_H
#define CLINUX_H
// Linux calls that Swift's Glibc module does not import because glibc declares them only under
// _GNU_SOURCE. Each wrapper is one line and exists for that reason alone.

/// renameat2(2) with RENAME_NOREPLACE: publish a directory under a name only if that name is free.
int clinux_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

/// syncfs(2): flush one filesystem once instead of fsyncing every file of a batch.
int clinux_syncfs(int fd);

#include <spawn.h>

/// posix_spawn_file_actions_addchdir_np(3): start a child in a directory without a shell in between.
int clinux_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);

/// posix_spawn_file_actions_addclosefrom_np(3): a child inherits no descriptor from `from` upward, whatever
/// the parent forgot to mark close-on-exec (a test harness's pipes, say).
int clinux_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);

#include <sys/types.h>

/// Starts a job under a guard process, for a launcher. Forks the guard G (its own process group), which forks
/// the task T (`execve(path, argv, envp)` in `dir`, stdin /dev/null, stdout and stderr on `out_fd`, its own
/// process group, default signals) and waits for it. SIGTERM, SIGINT or SIGHUP to G (a kill request, the
/// end of the wall time, or the death of the calling thread: G has PR_SET_PDEATHSIG = SIGTERM) makes G send
/// SIGTERM to T's process group, wait up to `grace_ms`, then SIGKILL it. G exits with T's exit status, or 128 +
/// the signal that ended T; 126 if T could not enter `dir`, 127 if it could not be executed (a line saying why
/// goes to `out_fd`). Returns G's pid, or -errno if the first fork failed. Between fork and exec only
/// async-signal-safe calls are made; everything is prepared by the caller.
pid_t clinux_spawn_guarded(const char *path, char *const argv[], char *const envp[], const char *dir, int out_fd,
                           int grace_ms);

#endif
