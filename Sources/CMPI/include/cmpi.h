// The launcher's MPI calls, found at run time: the machine's MPI library is opened with dlopen when the launcher
// starts (cmpi_load), so one launcher binary runs under any MPI of either ABI (reference/platform-facts.md D.3):
//   - the MPICH ABI (libmpi.so.12: Cray MPICH, Intel MPI, MPICH, MVAPICH; Debian calls it libmpich.so.12),
//     where handles are `int` constants;
//   - Open MPI (libmpi.so.40), where handles are the addresses of the library's own objects.
// Swift never sees an MPI handle: every call is on MPI_COMM_WORLD with bytes, and a request lives in storage of
// `cmpi_request_size()` bytes that the caller owns. Each function returns MPI's code (MPI_SUCCESS is 0 in both).
#ifndef CMPI_H
#define CMPI_H

// Opens the MPI library and finds its functions. The library is, in order: the one named by
// BALSAM_MPI_LIBRARY (a path or a soname); one already in the process (linked or preloaded); else the first of
// libmpi.so.12, libmpich.so.12 and libmpi.so.40 that opens (libmpi.so.40 first when Open MPI's launcher started
// this process, as its OMPI_COMM_WORLD_SIZE says). On success returns 0 and writes what was loaded to `said` (at most
// `size` bytes with the NUL); on failure returns -1 and writes why, naming every library tried.
int cmpi_load(char *said, int size);
// MPI_Init_thread with MPI_THREAD_FUNNELED (one thread makes every call), then errors returned, not fatal.
int cmpi_init(int *provided);
int cmpi_rank(int *rank);
int cmpi_size(int *size);
// Every rank's `width` bytes, in rank order.
int cmpi_allgather(const void *mine, int width, void *all);
// An MPI_Request's size (the larger of the two ABIs'): the caller allocates a request's storage.
int cmpi_request_size(void);
int cmpi_isend(const void *bytes, int count, int destination, int tag, void *request);
// Whether the send in `request` is done (then `*done` is non-zero and MPI has let go of its buffer).
int cmpi_test(void *request, int *done);
// Whether a message from anyone is waiting (`*flag`), and then its source, tag and size in bytes.
int cmpi_iprobe(int *flag, int *source, int *tag, int *count);
int cmpi_recv(void *bytes, int count, int source, int tag);
int cmpi_abort(int code);
int cmpi_finalize(void);
// MPI's words for a code, at most `size` bytes with the NUL.
void cmpi_error_string(int code, char *text, int size);

#endif
