/* The C floor for materializing job directories: per job, one new directory (nested like b/N) holding
 * two small files, each written under a temporary name and renamed into place. No fsync per file; one
 * syncfs at the end, as the spool does. Usage: floor ROOT N */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void put(const char *dir, const char *name, const char *text) {
    char tmp[4096], dst[4096];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0 || write(fd, text, strlen(text)) < 0 || close(fd) != 0 || rename(tmp, dst) != 0) {
        perror(dst);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: floor ROOT N\n"); return 64; }
    const char *root = argv[1];
    long n = atol(argv[2]);
    char dir[4096], spec[512];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    snprintf(dir, sizeof dir, "%s/b", root);
    if (mkdir(root, 0755) != 0 || mkdir(dir, 0755) != 0) { perror(dir); return 1; }
    for (long i = 0; i < n; i++) {
        snprintf(dir, sizeof dir, "%s/b/%ld", root, i);
        if (mkdir(dir, 0755) != 0) { perror(dir); return 1; }
        snprintf(spec, sizeof spec,
                 "{\"app\":\"hello\",\"id\":\"%026ld\",\"parameters\":{\"name\":\"n%ld\"},\"workdir\":\"b/%ld\"}\n", i, i, i);
        put(dir, "job.json", spec);
        put(dir, "state", "{\"state\":\"READY\",\"since\":\"2026-11-25T00:00:00.000Z\",\"actor\":\"floor\"}\n");
    }
    int fd = open(root, O_RDONLY | O_DIRECTORY);
    syncfs(fd);
    close(fd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%ld %.3f\n", n, s);
    return 0;
}
