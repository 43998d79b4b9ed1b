// balsam-bind [--variable NAME] [--devices LISTS] [--tiles N] [--cpus LISTS] -- COMMAND [ARGUMENT...]
//
// The per-rank step of a multi-rank job: the MPI launcher (mpiexec, srun, mpirun) starts this on every rank, and
// it gives the rank its own devices and CPUs, then becomes COMMAND (exec). The launcher of Balsam writes it into
// the launch line (balsam-launcher(1), BINDING RANKS): the MPI launcher's own binding is off, so the two never
// fight.
//
// LISTS holds one list per local rank of the node, separated by ';' (rank k takes list k, modulo their number);
// a list is comma-separated: device IDs ("3", "0.1") for --devices, CPU IDs or ranges ("8-15,72-79") for --cpus.
// The local rank is the first of PALS_LOCAL_RANKID (Cray PALS), SLURM_LOCALID (srun), MPI_LOCALRANKID (Hydra),
// OMPI_COMM_WORLD_LOCAL_RANK (Open MPI), PMI_LOCAL_RANK that is set.
//
// Devices: NAME (e.g. CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, ZE_AFFINITY_MASK) is set to the rank's list,
// and every other device-selecting variable the process manager may have set is removed, so the rank sees its
// devices through one variable. With ZE_AFFINITY_MASK, IDs "CARD.TILE" become flat indexes CARD * N + TILE
// (--tiles N) when ZE_FLAT_DEVICE_HIERARCHY is FLAT (each tile a device of its own). An empty list (a rank with
// no device) removes them all.
// CPUs: the rank is bound to its list (sched_setaffinity); BALSAM_RANK_CPUS says the list. A binding the kernel
// refuses (CPUs this node does not have) is reported on standard error and the command runs unbound.
// BALSAM_LOCAL_RANK is set to the local rank.
//
// Exit status: COMMAND's (this process becomes it); 64 for bad arguments, 70 when a rank of several cannot
// tell its local rank, 127 when COMMAND cannot be run.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The repository's VERSION (a test keeps them equal, with BalsamVersion.string).
#define BALSAM_VERSION "0.9.0"

static const char *const rank_variables[] = {
    "PALS_LOCAL_RANKID", "SLURM_LOCALID", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
};
static const char *const device_variables[] = {
    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ZE_AFFINITY_MASK",
};

static int usage(void) {
    fprintf(stderr, "usage: balsam-bind [--variable NAME] [--devices LISTS] [--tiles N] [--cpus LISTS] -- COMMAND "
                    "[ARGUMENT...]\n");
    return 64;
}

// The number of ';'-separated lists in `lists`.
static int count_lists(const char *lists) {
    int n = 1;
    for (const char *p = lists; *p; p++) n += *p == ';';
    return n;
}

// List `k` of `lists` (a new string).
static char *list_at(const char *lists, int k) {
    const char *start = lists;
    for (int i = 0; i < k; i++) start = strchr(start, ';') + 1;
    const char *end = strchr(start, ';');
    size_t length = end ? (size_t)(end - start) : strlen(start);
    char *out = malloc(length + 1);
    if (!out) exit(71);
    memcpy(out, start, length);
    out[length] = 0;
    return out;
}

// "0.1,2.0" with N tiles per card -> "1,4"; IDs without a tile stay.
static char *flatten(const char *list, int tiles) {
    size_t size = strlen(list) * 4 + 16;
    char *out = malloc(size);
    if (!out) exit(71);
    out[0] = 0;
    char *copy = strdup(list), *save = NULL;
    for (char *id = strtok_r(copy, ",", &save); id; id = strtok_r(NULL, ",", &save)) {
        char *dot = strchr(id, '.');
        size_t used = strlen(out);
        if (dot) {
            long card = strtol(id, NULL, 10), tile = strtol(dot + 1, NULL, 10);
            snprintf(out + used, size - used, "%s%ld", used ? "," : "", card * tiles + tile);
        } else {
            snprintf(out + used, size - used, "%s%s", used ? "," : "", id);
        }
    }
    free(copy);
    return out;
}

// Binds this process to the CPUs of `list`; 0, or the errno of the refusal (EINVAL for a malformed list).
static int bind_cpus(const char *list) {
    cpu_set_t set;
    CPU_ZERO(&set);
    char *copy = strdup(list), *save = NULL;
    int malformed = 0;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *end;
        long low = strtol(item, &end, 10), high = low;
        if (end == item) malformed = 1;
        if (*end == '-') high = strtol(end + 1, &end, 10);
        if (*end || low < 0 || high < low || high >= CPU_SETSIZE) malformed = 1;
        for (long c = low; !malformed && c <= high; c++) CPU_SET((int)c, &set);
    }
    free(copy);
    if (malformed || CPU_COUNT(&set) == 0) return EINVAL;
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : errno;
}

int main(int argc, char **argv) {
    const char *variable = NULL, *devices = NULL, *cpus = NULL;
    int tiles = 1, i = 1;
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("%s\n", BALSAM_VERSION);
        return 0;
    }
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc) return usage();
        if (strcmp(argv[i], "--variable") == 0) variable = argv[i + 1];
        else if (strcmp(argv[i], "--devices") == 0) devices = argv[i + 1];
        else if (strcmp(argv[i], "--cpus") == 0) cpus = argv[i + 1];
        else if (strcmp(argv[i], "--tiles") == 0) tiles = atoi(argv[i + 1]);
        else return usage();
    }
    if (i + 1 >= argc || (devices && !variable) || tiles < 1) return usage();
    char **command = argv + i + 1;

    int lists = 1;
    if (devices) lists = count_lists(devices);
    if (cpus && count_lists(cpus) > lists) lists = count_lists(cpus);
    long rank = 0;
    const char *said = NULL;
    for (size_t v = 0; v < sizeof(rank_variables) / sizeof(rank_variables[0]) && !said; v++) {
        const char *value = getenv(rank_variables[v]);
        if (value && *value) said = value;
    }
    if (said) {
        char *end;
        rank = strtol(said, &end, 10);
        if (*end || rank < 0) said = NULL;
    }
    if (!said && lists > 1) {
        fprintf(stderr, "balsam-bind: cannot tell this rank's local rank: none of PALS_LOCAL_RANKID, "
                        "SLURM_LOCALID, MPI_LOCALRANKID, OMPI_COMM_WORLD_LOCAL_RANK, PMI_LOCAL_RANK is set\n");
        return 70;
    }
    char text[32];
    snprintf(text, sizeof(text), "%ld", rank);
    setenv("BALSAM_LOCAL_RANK", text, 1);

    if (devices) {
        char *mine = list_at(devices, (int)(rank % count_lists(devices)));
        for (size_t v = 0; v < sizeof(device_variables) / sizeof(device_variables[0]); v++)
            if (strcmp(device_variables[v], variable) != 0) unsetenv(device_variables[v]);
        const char *hierarchy = getenv("ZE_FLAT_DEVICE_HIERARCHY");
        if (!*mine) {
            unsetenv(variable);
        } else if (strcmp(variable, "ZE_AFFINITY_MASK") == 0 && hierarchy && strcmp(hierarchy, "FLAT") == 0) {
            setenv(variable, flatten(mine, tiles), 1);
        } else {
            setenv(variable, mine, 1);
        }
    }
    if (cpus) {
        char *mine = list_at(cpus, (int)(rank % count_lists(cpus)));
        if (*mine) {
            int refused = bind_cpus(mine);
            if (refused)
                fprintf(stderr, "balsam-bind: rank %ld runs unbound: cannot bind it to CPUs %s: %s\n", rank, mine,
                        strerror(refused));
            setenv("BALSAM_RANK_CPUS", mine, 1);
        }
    }
    execvp(command[0], command);
    fprintf(stderr, "balsam-bind: cannot run %s: %s\n", command[0], strerror(errno));
    return 127;
}
