// See include/cmpi.h. The two ABIs' constants are those of their mpi.h (MPICH 4.0 and Open MPI 4.1, Debian 12;
// the MPICH ABI's are fixed by the MPICH ABI initiative); Tests/IntegrationTests/MPIABITests.swift compiles a
// program against each installed mpi.h and compares.
#define _GNU_SOURCE
#include "cmpi.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum abi { ABI_NONE, ABI_MPICH, ABI_OPENMPI };
static enum abi abi = ABI_NONE;

// The MPICH ABI's handles and constants.
enum {
    MPICH_COMM_WORLD = 0x44000000,
    MPICH_BYTE = 0x4c00010d,
    MPICH_ERRORS_RETURN = 0x54000001,
    MPICH_ANY_SOURCE = -2,
    MPICH_STATUS_SOURCE = 8,  // byte offsets of MPI_SOURCE and MPI_TAG in its MPI_Status
    MPICH_STATUS_TAG = 12,
};
#define MPICH_STATUS_IGNORE ((void *)1)
// Open MPI's: the addresses of its predefined objects, found with dlsym.
static void *ompi_comm_world, *ompi_byte, *ompi_errors_return;
enum {
    OPENMPI_ANY_SOURCE = -1,
    OPENMPI_STATUS_SOURCE = 0,
    OPENMPI_STATUS_TAG = 4,
};
#define OPENMPI_STATUS_IGNORE ((void *)0)
enum { ANY_TAG = -1, THREAD_FUNNELED = 1 };

// Large enough for either ABI's MPI_Status (20 and 24 bytes) and MPI_Request (4 and 8).
typedef struct { _Alignas(16) unsigned char bytes[64]; } status_t;

static struct {
    void *init_thread, *comm_set_errhandler, *comm_rank, *comm_size, *allgather, *isend, *test, *iprobe,
        *get_count, *recv, *abort, *finalize, *error_string;
} f;

static const char *const names[] = {
    "MPI_Init_thread", "MPI_Comm_set_errhandler", "MPI_Comm_rank", "MPI_Comm_size", "MPI_Allgather", "MPI_Isend",
    "MPI_Test", "MPI_Iprobe", "MPI_Get_count", "MPI_Recv", "MPI_Abort", "MPI_Finalize", "MPI_Error_string",
};

// Takes `library`'s functions and handles; on failure writes which one it lacks.
static int take(void *library, const char *label, char *said, int size) {
    void **slots = (void **)&f;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        slots[i] = dlsym(library, names[i]);
        if (!slots[i]) {
            snprintf(said, (size_t)size, "%s has no %s", label, names[i]);
            return -1;
        }
    }
    ompi_comm_world = dlsym(library, "ompi_mpi_comm_world");
    if (ompi_comm_world) {
        ompi_byte = dlsym(library, "ompi_mpi_byte");
        ompi_errors_return = dlsym(library, "ompi_mpi_errors_return");
        if (!ompi_byte || !ompi_errors_return) {
            snprintf(said, (size_t)size, "%s is Open MPI without its predefined objects", label);
            return -1;
        }
        abi = ABI_OPENMPI;
    } else {
        abi = ABI_MPICH;
    }
    snprintf(said, (size_t)size, "%s (%s)", label, abi == ABI_OPENMPI ? "Open MPI" : "the MPICH ABI");
    return 0;
}

// Open MPI's launcher (mpirun, prterun) gives each rank OMPI_COMM_WORLD_SIZE; other OMPI_* variables (MCA
// settings, OMPI_ALLOW_RUN_AS_ROOT) are often in a user's environment whatever MPI runs.
static int started_by_open_mpi(void) {
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    return size && *size;
}

#ifndef CMPI_DEFAULT_LIBRARY
#define CMPI_DEFAULT_LIBRARY ""
#endif

int cmpi_load(char *said, int size) {
    // RTLD_GLOBAL: Open MPI's components, opened by the library itself, resolve its symbols in the global scope.
    const char *chosen = getenv("BALSAM_MPI_LIBRARY");
    if (chosen && *chosen) {
        void *library = dlopen(chosen, RTLD_NOW | RTLD_GLOBAL);
        if (!library) {
            snprintf(said, (size_t)size, "BALSAM_MPI_LIBRARY=%s does not open: %s", chosen, dlerror());
            return -1;
        }
        return take(library, chosen, said, size);
    }
    if (dlsym(RTLD_DEFAULT, "MPI_Init_thread")) return take(RTLD_DEFAULT, "the MPI already loaded", said, size);
    const char *mpich[] = {CMPI_DEFAULT_LIBRARY, "libmpi.so.12", "libmpich.so.12", "libmpi.so.40"};
    const char *openmpi[] = {CMPI_DEFAULT_LIBRARY, "libmpi.so.40", "libmpi.so.12", "libmpich.so.12"};
    const char **order = started_by_open_mpi() ? openmpi : mpich;
    char tried[1024] = "";
    for (int i = 0; i < 4; i++) {
        if (!*order[i]) continue;
        void *library = dlopen(order[i], RTLD_NOW | RTLD_GLOBAL);
        if (library) return take(library, order[i], said, size);
        size_t used = strlen(tried);
        snprintf(tried + used, sizeof(tried) - used, "%s%s", used ? "; " : "", dlerror());
    }
    snprintf(said, (size_t)size,
             "no MPI library opens (%s): load the machine's MPI (its module) or name its library in "
             "BALSAM_MPI_LIBRARY",
             tried);
    return -1;
}

int cmpi_init(int *provided) {
    int rc = ((int (*)(int *, char ***, int, int *))f.init_thread)(NULL, NULL, THREAD_FUNNELED, provided);
    if (rc != 0) return rc;
    if (abi == ABI_MPICH)
        return ((int (*)(int, int))f.comm_set_errhandler)(MPICH_COMM_WORLD, MPICH_ERRORS_RETURN);
    return ((int (*)(void *, void *))f.comm_set_errhandler)(ompi_comm_world, ompi_errors_return);
}

int cmpi_rank(int *rank) {
    if (abi == ABI_MPICH) return ((int (*)(int, int *))f.comm_rank)(MPICH_COMM_WORLD, rank);
    return ((int (*)(void *, int *))f.comm_rank)(ompi_comm_world, rank);
}

int cmpi_size(int *size) {
    if (abi == ABI_MPICH) return ((int (*)(int, int *))f.comm_size)(MPICH_COMM_WORLD, size);
    return ((int (*)(void *, int *))f.comm_size)(ompi_comm_world, size);
}

int cmpi_allgather(const void *mine, int width, void *all) {
    if (abi == ABI_MPICH)
        return ((int (*)(const void *, int, int, void *, int, int, int))f.allgather)(
            mine, width, MPICH_BYTE, all, width, MPICH_BYTE, MPICH_COMM_WORLD);
    return ((int (*)(const void *, int, void *, void *, int, void *, void *))f.allgather)(
        mine, width, ompi_byte, all, width, ompi_byte, ompi_comm_world);
}

int cmpi_request_size(void) { return (int)sizeof(void *); }

int cmpi_isend(const void *bytes, int count, int destination, int tag, void *request) {
    if (abi == ABI_MPICH)
        return ((int (*)(const void *, int, int, int, int, int, void *))f.isend)(
            bytes, count, MPICH_BYTE, destination, tag, MPICH_COMM_WORLD, request);
    return ((int (*)(const void *, int, void *, int, int, void *, void *))f.isend)(
        bytes, count, ompi_byte, destination, tag, ompi_comm_world, request);
}

int cmpi_test(void *request, int *done) {
    return ((int (*)(void *, int *, void *))f.test)(
        request, done, abi == ABI_MPICH ? MPICH_STATUS_IGNORE : OPENMPI_STATUS_IGNORE);
}

int cmpi_iprobe(int *flag, int *source, int *tag, int *count) {
    status_t status;
    memset(&status, 0, sizeof(status));
    int rc;
    if (abi == ABI_MPICH)
        rc = ((int (*)(int, int, int, int *, void *))f.iprobe)(MPICH_ANY_SOURCE, ANY_TAG, MPICH_COMM_WORLD, flag,
                                                                &status);
    else
        rc = ((int (*)(int, int, void *, int *, void *))f.iprobe)(OPENMPI_ANY_SOURCE, ANY_TAG, ompi_comm_world,
                                                                   flag, &status);
    if (rc != 0 || !*flag) return rc;
    int source_at = abi == ABI_MPICH ? MPICH_STATUS_SOURCE : OPENMPI_STATUS_SOURCE;
    int tag_at = abi == ABI_MPICH ? MPICH_STATUS_TAG : OPENMPI_STATUS_TAG;
    memcpy(source, status.bytes + source_at, sizeof(int));
    memcpy(tag, status.bytes + tag_at, sizeof(int));
    if (abi == ABI_MPICH) return ((int (*)(void *, int, int *))f.get_count)(&status, MPICH_BYTE, count);
    return ((int (*)(void *, void *, int *))f.get_count)(&status, ompi_byte, count);
}

int cmpi_recv(void *bytes, int count, int source, int tag) {
    if (abi == ABI_MPICH)
        return ((int (*)(void *, int, int, int, int, int, void *))f.recv)(bytes, count, MPICH_BYTE, source, tag,
                                                                          MPICH_COMM_WORLD, MPICH_STATUS_IGNORE);
    return ((int (*)(void *, int, void *, int, int, void *, void *))f.recv)(bytes, count, ompi_byte, source, tag,
                                                                            ompi_comm_world, OPENMPI_STATUS_IGNORE);
}

int cmpi_abort(int code) {
    if (abi == ABI_MPICH) return ((int (*)(int, int))f.abort)(MPICH_COMM_WORLD, code);
    return ((int (*)(void *, int))f.abort)(ompi_comm_world, code);
}

int cmpi_finalize(void) { return ((int (*)(void))f.finalize)(); }

void cmpi_error_string(int code, char *text, int size) {
    char buffer[2048];  // MPI_MAX_ERROR_STRING: 512 (MPICH), 256 (Open MPI)
    int length = 0;
    if (size <= 0) return;
    if (((int (*)(int, char *, int *))f.error_string)(code, buffer, &length) != 0) length = 0;
    if (length < 0) length = 0;
    if (length >= size) length = size - 1;
    memcpy(text, buffer, (size_t)length);
    text[length] = 0;
}
