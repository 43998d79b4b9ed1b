#ifndef CLINUX_H
#define CLINUX_H
// Linux calls that Swift's Glibc module does not import because glibc declares them only under
// _GNU_SOURCE, each a one-line wrapper that exists for that reason alone; and the one thing Swift cannot do at all,
// run code between a fork and an exec (clinux_spawn).

/// renameat2(2) with RENAME_NOREPLACE: publish a directory under a name only if that name is free.
int clinux_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

/// syncfs(2): flush one filesystem once instead of fsyncing every file of a batch.
int clinux_syncfs(int fd);

/// statfs(2)'s f_type (the filesystem's magic number) of the filesystem holding `path`: whether inotify sees every
/// change there. 0 on success, -1 with errno set. (Swift's Glibc does not import <sys/vfs.h>.)
int clinux_filesystem_type(const char *path, unsigned long long *type);

// Structs declared, not included: this header includes nothing of the C library, whose types would then seem
// to belong to this module (`timespec` among them).
struct pollfd;

/// ppoll(2) with a timeout in nanoseconds: poll(2) counts whole milliseconds, too coarse for a launcher waiting
/// between jobs that last about one.
int clinux_ppoll_ns(struct pollfd *fds, unsigned long count, long nanoseconds);

struct tm;

/// strptime(3): parse a time as schedulers print it.
const char *clinux_strptime(const char *text, const char *format, struct tm *parts);

/// timegm(3): a broken-down UTC time as seconds since the epoch.
long long clinux_timegm(struct tm *parts);

/// What `clinux_spawn` starts.
struct clinux_spawn_request {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *directory;
    /// Standard input, or -1 for /dev/null.
    int input_fd;
    int output_fd;
    int error_fd;
    /// Sent to the child when the thread that started it ends (PR_SET_PDEATHSIG), however it ends; 0: none.
    int death_signal;
};

/// vfork(2) and execve(2) with what posix_spawn(3) cannot do: arm PR_SET_PDEATHSIG in the child, so a parent
/// killed with SIGKILL leaves no child behind. Swift can run no code between a fork and an exec; this does, with
/// system calls only. The child gets a process group of its own, default signal handling and an empty signal
/// mask, descriptors 0-2 as given and no other (close_range), and runs in `directory`. Returns 0 and the pid, or
/// the errno of whatever failed (in the parent or in the child before its exec).
int clinux_spawn(const struct clinux_spawn_request *request, int *pid);

/// pidfd_open(2) (a raw syscall: glibc 2.36 has no wrapper Swift can see): a descriptor that polls readable when
/// the child exits, so a wait with a deadline needs neither a busy loop nor a signal handler.
int clinux_pidfd_open(int pid);

/// copy_file_range(2) of a whole range from one file to another in the kernel (reflinks where the filesystem
/// can), for the transfer service's local copies.
long clinux_copy_file_range(int in, int out, unsigned long length);

#endif
