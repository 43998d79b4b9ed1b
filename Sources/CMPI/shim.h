// The launcher's MPI calls, behind functions that take and return only C's own types: MPI's handles differ
// between the two families the launcher builds against (pointers in Open MPI, `int` in MPICH, Cray MPICH, Intel
// MPI and MVAPICH; reference/platform-facts.md D.3), and Open MPI's are cast macros Swift cannot import. So Swift
// never sees MPI_Comm, MPI_Datatype or MPI_Request: every call is on MPI_COMM_WORLD with bytes, and a request
// lives in storage of `cmpi_request_size()` bytes that the caller owns. Each function returns MPI's code.
#include <stddef.h>
#include <mpi.h>

// MPI_Init_thread with MPI_THREAD_FUNNELED (one thread makes every call), then errors returned, not fatal.
static inline int cmpi_init(int *provided) {
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, provided);
    return rc != MPI_SUCCESS ? rc : MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}
static inline int cmpi_rank(int *rank) { return MPI_Comm_rank(MPI_COMM_WORLD, rank); }
static inline int cmpi_size(int *size) { return MPI_Comm_size(MPI_COMM_WORLD, size); }
// Every rank's `width` bytes, in rank order.
static inline int cmpi_allgather(const void *mine, int width, void *all) {
    return MPI_Allgather(mine, width, MPI_BYTE, all, width, MPI_BYTE, MPI_COMM_WORLD);
}
// An MPI_Request's size: the caller allocates a request's storage.
static inline int cmpi_request_size(void) { return (int)sizeof(MPI_Request); }
static inline int cmpi_isend(const void *bytes, int count, int destination, int tag, void *request) {
    return MPI_Isend(bytes, count, MPI_BYTE, destination, tag, MPI_COMM_WORLD, (MPI_Request *)request);
}
// Whether the send in `request` is done (then `*done` is non-zero and MPI has let go of its buffer).
static inline int cmpi_test(void *request, int *done) {
    return MPI_Test((MPI_Request *)request, done, MPI_STATUS_IGNORE);
}
// Whether a message from anyone is waiting (`*flag`), and then its source, tag and size in bytes.
static inline int cmpi_iprobe(int *flag, int *source, int *tag, int *count) {
    MPI_Status status;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, flag, &status);
    if (rc != MPI_SUCCESS || !*flag) return rc;
    *source = status.MPI_SOURCE;
    *tag = status.MPI_TAG;
    return MPI_Get_count(&status, MPI_BYTE, count);
}
static inline int cmpi_recv(void *bytes, int count, int source, int tag) {
    return MPI_Recv(bytes, count, MPI_BYTE, source, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}
static inline int cmpi_abort(int code) { return MPI_Abort(MPI_COMM_WORLD, code); }
static inline int cmpi_success(void) { return MPI_SUCCESS; }
// MPI's words for a code, at most `size` bytes with the NUL.
static inline void cmpi_error_string(int code, char *text, int size) {
    char buffer[MPI_MAX_ERROR_STRING + 1];
    int length = 0;
    if (MPI_Error_string(code, buffer, &length) != MPI_SUCCESS) length = 0;
    if (length >= size) length = size - 1;
    for (int i = 0; i < length; i++) text[i] = buffer[i];
    text[length < 0 ? 0 : length] = 0;
}
