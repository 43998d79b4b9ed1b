// balsam-task-guard PARENT GRACE_MS [MAX_OUTPUT_BYTES]
//
// The task server of one balsam-launcher rank: it starts that rank's jobs, reports how they end, stops them on
// request, and makes sure none outlives the launcher. One per rank, started once; each job is then one
// posix_spawn of bash from this small process (cheap, whatever the launcher's size), with no program run per
// job in between.
//
// Requests arrive on standard input, each "LENGTH\n" then LENGTH bytes of NUL-terminated fields:
//   start ID DIR OUTPUT SEPARATOR NENV ENV... SCRIPT   run `bash -c SCRIPT` in DIR, in a process group of its
//                                                     own, stdin /dev/null, stdout and stderr appended to
//                                                     OUTPUT (SEPARATOR written first if OUTPUT is not empty)
//   kill ID                                           SIGTERM to the job's group; SIGKILL after GRACE_MS
// Replies go to standard output, one line per job that ended: "ID STATUS" (the exit status, or 128 + the
// signal that ended it), or "ID 126 why" when it could not be started; "ID +PID" when a job starts, and
// "ID !cut BYTES" when its output passed MAX_OUTPUT_BYTES and was cut there (its size is looked at every second
// and at its end; a note marks the cut, and what it writes after is cut again).
//
// When the launcher goes away (standard input closes, or SIGTERM: PR_SET_PDEATHSIG is set to it, and the server
// exits at once if PARENT is already gone), every job still running is stopped the same way and the server
// exits. It runs in its own process group and ignores SIGINT, so a terminal's ^C reaches only the launcher,
// which then stops its jobs in order. When a job ends, what it left running is killed: the rest of its process
// group, and its processes that escaped the group (setsid, a double fork), which are adopted here (this server is
// a child subreaper) and known by the BALSAM_JOB_ID they inherit; a line at the end of its output says so. What
// the server adopted is killed when it leaves. What it cannot contain: an escaped process whose job is still
// running when this server is SIGKILLed (nothing runs here then), or one that cleared its environment and whose
// job is still running.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// The repository's VERSION (a test keeps them equal, with BalsamVersion.string).
#define BALSAM_VERSION "0.9.0"

struct task {
    pid_t pid;
    char *id;
    long long kill_at;  // ms on CLOCK_MONOTONIC when SIGKILL is due; 0: not being stopped
    char *output;       // the job's output file, where what its end left running is recorded
    int outfd;          // that file, kept open to watch its size when output is capped; -1 otherwise
    int cut;            // whether the output was cut at the cap
};

static struct task *tasks;
static size_t ntasks, cap;
static long grace_ms;
static long long max_output;  // bytes of output a job may leave in its file; 0: no limit

static const char cut_note[] = "\n[balsam-task-guard: output cut here: launcher.max_output_mb]\n";

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

// Writes one reply line to the launcher, whole (a line is never torn by a short write).
static void write_line(const char *line, int n) {
    for (int off = 0; off < n;) {
        ssize_t w = write(1, line + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;  // the launcher is gone
        off += w;
    }
}

static void reply(const char *id, int status, const char *why) {
    char line[4096];
    int n = why ? snprintf(line, sizeof line, "%s %d %s\n", id, status, why)
                : snprintf(line, sizeof line, "%s %d\n", id, status);
    if (n > (int)sizeof line - 1) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    write_line(line, n);
}

// "ID +PID": the job's process group, so that the launcher can still stop it should this server die.
static void started(const char *id, pid_t pid) {
    char line[4096];
    int n = snprintf(line, sizeof line, "%s +%d\n", id, (int)pid);
    if (n < (int)sizeof line) write_line(line, n);  // ids are short: always
}

static void stop(struct task *t) {
    if (t->kill_at) return;
    kill(-t->pid, SIGTERM);
    t->kill_at = now_ms() + grace_ms;
    if (t->kill_at == 0) t->kill_at = 1;
}

static void start(char **f, size_t nf) {
    // f: "start" ID DIR OUTPUT SEPARATOR NENV ENV... SCRIPT
    if (nf < 7) return;
    const char *id = f[1], *dir = f[2], *output = f[3], *separator = f[4];
    long nenv = atol(f[5]);
    if (nenv < 0 || (size_t)(6 + nenv + 1) != nf) {
        reply(id, 126, "malformed start request");
        return;
    }
    char **env = f + 6;
    char *script = f[6 + nenv];
    int fd = open(output, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        char why[512];
        snprintf(why, sizeof why, "cannot open %s: %s", output, strerror(errno));
        reply(id, 126, why);
        return;
    }
    struct stat st;
    if (*separator && fstat(fd, &st) == 0 && st.st_size > 0) (void)!write(fd, separator, strlen(separator));

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fd, 1);
    posix_spawn_file_actions_adddup2(&actions, fd, 2);
    posix_spawn_file_actions_addchdir_np(&actions, dir);
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    char *argv[] = {"bash", "-c", script, NULL};
    // posix_spawn wants a NULL-terminated environment: the request's ENV fields are followed by SCRIPT, so
    // copy the pointers.
    char **envp = malloc(sizeof(char *) * (nenv + 1));
    if (!envp) {
        reply(id, 126, "out of memory");
        close(fd);
        return;
    }
    memcpy(envp, env, sizeof(char *) * nenv);
    envp[nenv] = NULL;
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/bash", &actions, &attr, argv, envp);
    free(envp);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    int watched = -1;  // kept (close-on-exec) to watch the output's size when it is capped
    if (max_output > 0 && rc == 0) {
        watched = fd;
    } else {
        close(fd);
    }
    if (rc != 0) {
        char why[512];
        snprintf(why, sizeof why, "cannot start bash in %s: %s", dir, strerror(rc));
        reply(id, rc == ENOENT ? 127 : 126, why);
        return;
    }
    if (ntasks == cap) {
        cap = cap ? cap * 2 : 64;
        tasks = realloc(tasks, cap * sizeof *tasks);
        if (!tasks) abort();
    }
    tasks[ntasks++] = (struct task){pid, strdup(id), 0, strdup(output), watched, 0};
    started(id, pid);
}

static void kill_request(char **f, size_t nf) {
    if (nf < 2) return;
    for (size_t i = 0; i < ntasks; i++)
        if (strcmp(tasks[i].id, f[1]) == 0) stop(&tasks[i]);
}

// Processes this server did not start but adopted: what a job left behind outside its process group (setsid, a
// double fork) when its own process ended, reparented here because this server is a child subreaper. Each is
// killed with its group; returns how many there were.
static int kill_orphans(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0, pid;
    while (fscanf(f, "%d", &pid) == 1) {
        kill(-pid, SIGKILL);  // its group, if it made one (ESRCH if not)
        kill(pid, SIGKILL);
        n++;
    }
    fclose(f);
    return n;
}

// Cuts a job's output back to `max_output` bytes, with a note where it was cut, once it has grown past that
// (the job's descriptor appends: what it writes later lands after the note and is cut again at the next look).
// Tells the launcher the first time: "ID !cut BYTES".
static void check_output(struct task *t) {
    if (t->outfd < 0) return;
    struct stat st;
    long long allowed = max_output + (t->cut ? (long long)sizeof cut_note - 1 : 0);
    if (fstat(t->outfd, &st) != 0 || st.st_size <= allowed) return;
    if (ftruncate(t->outfd, max_output) != 0) return;
    (void)!write(t->outfd, cut_note, sizeof cut_note - 1);
    if (!t->cut) {
        t->cut = 1;
        char line[4096];
        int n = snprintf(line, sizeof line, "%s !cut %lld\n", t->id, max_output);
        if (n < (int)sizeof line) write_line(line, n);
    }
}

// Whether the process `pid` has `BALSAM_JOB_ID=id` in its environment (what every job's processes inherit).
static int of_job(int pid, const char *id) {
    char path[64], want[256];
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    int n = snprintf(want, sizeof want, "BALSAM_JOB_ID=%s", id);
    if (n <= 0 || n >= (int)sizeof want) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    static char env[1 << 20];
    ssize_t len = 0, r;
    while (len < (ssize_t)sizeof env - 1 && (r = read(fd, env + len, sizeof env - 1 - len)) > 0) len += r;
    close(fd);
    for (ssize_t p = 0; p < len;) {
        size_t l = strnlen(env + p, len - p);
        if (l == (size_t)n && memcmp(env + p, want, n) == 0) return 1;
        p += l + 1;
    }
    return 0;
}

// What a job left running when it ended: the rest of its process group, and the processes of its that escaped
// the group (setsid, a double fork) and were adopted here (this server is a child subreaper; its processes carry
// BALSAM_JOB_ID). All are killed, and a line at the end of the job's output says so.
static void end_leftovers(const struct task *t) {
    int left = kill(-t->pid, 0) == 0;  // anything still in its group
    kill(-t->pid, SIGKILL);
    // Killing an adopted process makes its own children ours: look again until none is left (bounded).
    for (int round = 0; round < 20; round++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
        FILE *f = fopen(path, "r");
        if (!f) break;
        int pid, found = 0;
        while (fscanf(f, "%d", &pid) == 1) {
            int ours = 0;
            for (size_t i = 0; i < ntasks; i++) ours |= tasks[i].pid == pid;
            if (ours || !of_job(pid, t->id)) continue;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            found++;
        }
        fclose(f);
        if (!found) break;
        left += found;
        // Not reaped here (a waitpid(-1) could take another job's status): the reap loop collects them.
        struct timespec pause = {0, 2000000};
        nanosleep(&pause, NULL);
    }
    if (left && t->output) {
        int fd = open(t->output, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd >= 0) {
            const char *note = "\n[balsam-task-guard: the job ended leaving processes running; they were killed]\n";
            (void)!write(fd, note, strlen(note));
            close(fd);
        }
    }
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < ntasks; i++) {
            if (tasks[i].pid != pid) continue;
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 125;
            end_leftovers(&tasks[i]);
            check_output(&tasks[i]);
            if (tasks[i].outfd >= 0) close(tasks[i].outfd);
            reply(tasks[i].id, code, NULL);
            free(tasks[i].id);
            free(tasks[i].output);
            tasks[i] = tasks[--ntasks];
            break;
        }
    }
}

// Parses complete requests at the start of buf; returns the bytes used.
static size_t handle(char *buf, size_t len) {
    size_t used = 0;
    for (;;) {
        char *nl = memchr(buf + used, '\n', len - used);
        if (!nl) return used;
        size_t size = strtoul(buf + used, NULL, 10);
        size_t body = (size_t)(nl - buf) + 1;
        if (len - body < size) return used;
        char *fields[65536];
        size_t nf = 0;
        for (size_t p = body; p < body + size && nf < 65536;) {
            fields[nf++] = buf + p;
            char *end = memchr(buf + p, '\0', body + size - p);
            if (!end) break;
            p = (size_t)(end - buf) + 1;
        }
        if (nf > 0 && strcmp(fields[0], "start") == 0) start(fields, nf);
        if (nf > 0 && strcmp(fields[0], "kill") == 0) kill_request(fields, nf);
        used = body + size;
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        puts(BALSAM_VERSION);
        return 0;
    }
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: balsam-task-guard PARENT GRACE_MS [MAX_OUTPUT_BYTES] (started by balsam-launcher)\n");
        return 64;
    }
    pid_t parent = (pid_t)atol(argv[1]);
    grace_ms = atol(argv[2]);
    max_output = argc == 4 ? atoll(argv[3]) : 0;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) return 0;  // the launcher died before the line above
    // Orphans of jobs (processes that left the job's group, then lost their parent) become this server's
    // children instead of init's, so that it can stop them when it leaves (see kill_orphans).
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigset_t handled;
    sigemptyset(&handled);
    sigaddset(&handled, SIGCHLD);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGHUP);
    sigprocmask(SIG_BLOCK, &handled, NULL);
    int sfd = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        perror("balsam-task-guard: signalfd");
        return 70;
    }
    size_t bufcap = 1 << 20, buflen = 0;
    char *buf = malloc(bufcap);
    if (!buf) return 70;
    int leaving = 0;
    for (;;) {
        long long timeout = -1, now = now_ms();
        for (size_t i = 0; i < ntasks; i++) {
            if (!tasks[i].kill_at) continue;
            if (tasks[i].kill_at <= now) {
                kill(-tasks[i].pid, SIGKILL);
                tasks[i].kill_at = now + 3600 * 1000;  // killed; just wait for it now
                continue;
            }
            long long left = tasks[i].kill_at - now;
            if (timeout < 0 || left < timeout) timeout = left;
        }
        if (max_output > 0 && ntasks > 0) {
            static long long last_check;
            if (now - last_check >= 1000) {
                for (size_t i = 0; i < ntasks; i++) check_output(&tasks[i]);
                last_check = now;
            }
            long long left = last_check + 1000 - now;
            if (timeout < 0 || left < timeout) timeout = left;
        }
        if (leaving && ntasks == 0) {
            long long until = now_ms() + 5000;
            while (kill_orphans() > 0 && now_ms() < until) {
                usleep(10000);
                while (waitpid(-1, NULL, WNOHANG) > 0) {}
            }
            return 0;
        }
        struct pollfd fds[2] = {{sfd, POLLIN, 0}, {leaving ? -1 : 0, POLLIN, 0}};
        if (poll(fds, 2, (int)timeout) < 0 && errno != EINTR) return 70;
        if (fds[0].revents & POLLIN) {
            struct signalfd_siginfo info;
            int term = 0;
            while (read(sfd, &info, sizeof info) == sizeof info)
                if (info.ssi_signo != SIGCHLD) term = 1;
            reap();
            if (term && !leaving) {
                leaving = 1;
                for (size_t i = 0; i < ntasks; i++) stop(&tasks[i]);
            }
        }
        if (!leaving && (fds[1].revents & (POLLIN | POLLHUP))) {
            if (buflen == bufcap) {
                bufcap *= 2;
                buf = realloc(buf, bufcap);
                if (!buf) abort();
            }
            ssize_t n = read(0, buf + buflen, bufcap - buflen);
            if (n <= 0) {
                if (n < 0 && errno == EINTR) continue;
                leaving = 1;  // the launcher closed its end: it is gone
                for (size_t i = 0; i < ntasks; i++) stop(&tasks[i]);
                continue;
            }
            buflen += n;
            size_t used = handle(buf, buflen);
            memmove(buf, buf + used, buflen - used);
            buflen -= used;
        }
    }
}
