#ifndef CLINUX_H
#define CLINUX_H
// Linux calls that Swift's Glibc module does not import because glibc declares them only under
// _GNU_SOURCE. Each wrapper is one line and exists for that reason alone.

/// renameat2(2) with RENAME_NOREPLACE: publish a directory under a name only if that name is free.
int clinux_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

/// syncfs(2): flush one filesystem once instead of fsyncing every file of a batch.
int clinux_syncfs(int fd);

// Structs declared, not included: see clinux_spawn_addchdir.
struct pollfd;

/// ppoll(2) with a timeout in nanoseconds: poll(2) counts whole milliseconds, too coarse for a launcher waiting
/// between jobs that last about one.
int clinux_ppoll_ns(struct pollfd *fds, unsigned long count, long nanoseconds);

struct tm;

/// strptime(3): parse a time as schedulers print it.
const char *clinux_strptime(const char *text, const char *format, struct tm *parts);

/// timegm(3): a broken-down UTC time as seconds since the epoch.
long long clinux_timegm(struct tm *parts);

/// posix_spawn_file_actions_addchdir_np(3): start a child in a directory without a shell in between.
/// `actions` is a `posix_spawn_file_actions_t *` (declared as void * so that this header includes nothing
/// of the C library: its types would then seem to belong to this module, `timespec` among them).
int clinux_spawn_addchdir(void *actions, const char *path);

/// posix_spawn_file_actions_addclosefrom_np(3): a child inherits no descriptor from `from` upward, whatever
/// the parent forgot to mark close-on-exec (a test harness's pipes, say).
int clinux_spawn_addclosefrom(void *actions, int from);

/// pidfd_open(2) (a raw syscall: glibc 2.36 has no wrapper Swift can see): a descriptor that polls readable when
/// the child exits, so a wait with a deadline needs neither a busy loop nor a signal handler.
int clinux_pidfd_open(int pid);

/// copy_file_range(2) of a whole range from one file to another in the kernel (reflinks where the filesystem
/// can), for the transfer service's local copies.
long clinux_copy_file_range(int in, int out, unsigned long length);

#endif
