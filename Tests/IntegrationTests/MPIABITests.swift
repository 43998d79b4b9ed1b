import Foundation
import Spool
import TestSupport
import Testing

/// The launcher's C shim (Sources/CMPI) opens MPI at run time and carries each ABI's constants itself. These
/// tests hold it to the real thing: the shim compiled together with each installed MPI's own `mpi.h` (by that
/// MPI's compiler wrapper) must agree on every constant and layout it uses, and one launcher binary must refuse,
/// naming the cure, a world that is not the one its MPI launcher started.
@Suite struct MPIABITests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// Checks compiled against one MPI's header: each line a condition that must hold, printed when it does not.
    static let program = """
        #include <mpi.h>
        #include <stddef.h>
        #include <stdio.h>
        #include "cmpi.c"
        static int failed;
        #define HOLDS(c) do { if (!(c)) { printf("differs: %s\\n", #c); failed = 1; } } while (0)
        int main(void) {
            HOLDS(MPI_SUCCESS == 0);
            HOLDS(MPI_THREAD_FUNNELED == THREAD_FUNNELED);
            HOLDS(MPI_ANY_TAG == ANY_TAG);
            HOLDS(sizeof(MPI_Status) <= sizeof(status_t));
            HOLDS(sizeof(MPI_Request) <= (size_t)cmpi_request_size());
            HOLDS(sizeof(MPI_Comm) <= sizeof(void *));
        #ifdef OPEN_MPI
            HOLDS((void *)MPI_COMM_WORLD == (void *)&ompi_mpi_comm_world);
            HOLDS((void *)MPI_BYTE == (void *)&ompi_mpi_byte);
            HOLDS((void *)MPI_ERRORS_RETURN == (void *)&ompi_mpi_errors_return);
            HOLDS(MPI_ANY_SOURCE == OPENMPI_ANY_SOURCE);
            HOLDS((void *)MPI_STATUS_IGNORE == OPENMPI_STATUS_IGNORE);
            HOLDS(offsetof(MPI_Status, MPI_SOURCE) == OPENMPI_STATUS_SOURCE);
            HOLDS(offsetof(MPI_Status, MPI_TAG) == OPENMPI_STATUS_TAG);
        #else
            HOLDS(sizeof(MPI_Comm) == sizeof(int));
            HOLDS(MPI_COMM_WORLD == MPICH_COMM_WORLD);
            HOLDS(MPI_BYTE == MPICH_BYTE);
            HOLDS(MPI_ERRORS_RETURN == MPICH_ERRORS_RETURN);
            HOLDS(MPI_ANY_SOURCE == MPICH_ANY_SOURCE);
            HOLDS((void *)MPI_STATUS_IGNORE == MPICH_STATUS_IGNORE);
            HOLDS(offsetof(MPI_Status, MPI_SOURCE) == MPICH_STATUS_SOURCE);
            HOLDS(offsetof(MPI_Status, MPI_TAG) == MPICH_STATUS_TAG);
        #endif
            if (!failed) printf("agrees\\n");
            return failed;
        }
        """

    @Test(arguments: ["mpicc.openmpi", "mpicc.mpich"])
    func theShimAgreesWithEachMPIHeader(compiler: String) throws {
        let dir = try TempDir()
        try dir.file("check.c", Self.program)
        let built = try run(
            "/usr/bin/" + compiler,
            [
                "-I", Self.root + "/Sources/CMPI", "-I", Self.root + "/Sources/CMPI/include", "-o", dir.path + "/check",
                dir.path + "/check.c", "-ldl",
            ])
        #expect(built.status == 0, "\(compiler): \(built.stderr)")
        let checked = try run(dir.path + "/check", [])
        #expect(checked.status == 0 && checked.stdout == "agrees\n", "\(compiler): \(checked.stdout)")
    }

    /// Every pair of the MPI launchers here and the libraries the launcher may open: a launcher given the other
    /// family's library finds itself alone and every rank exits 69 naming BALSAM_MPI_LIBRARY; given its own, or
    /// none (it finds the one that started it, though Open MPI's settings are in the environment as users keep
    /// them), it runs (and stops at once: the site has no jobs).
    @Test(arguments: [
        ("mpiexec.mpich", "libmpich.so.12", true), ("mpiexec.mpich", "libmpi.so.40", false),
        ("mpiexec.mpich", "", true), ("mpirun", "libmpi.so.40", true), ("mpirun", "libmpich.so.12", false),
        ("mpirun", "", true),
    ])
    func aLauncherRefusesAWorldItWasNotStartedIn(starter: String, library: String, matches: Bool) throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let env = [
            "BALSAM_MPI_LIBRARY": library, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_plm_rsh_agent": "false",
        ]
        var arguments = ["-n", "2"]
        if starter == "mpirun" { arguments += ["--oversubscribe", "--bind-to", "none"] }
        let result = try run(
            "/usr/bin/" + starter,
            arguments + [
                binDirectory + "/balsam-launcher", "--site", site.root, "--idle-timeout", "0",
                "--wall-time-min", "1",
            ], env: env, timeout: 60)
        if matches {
            #expect(result.status == 0, "\(starter) with \(library): \(result.stderr)")
            #expect(result.stderr.contains(starter == "mpirun" ? "(Open MPI)" : "(the MPICH ABI)"), "\(result.stderr)")
        } else {
            #expect(result.status != 0)
            #expect(
                result.stderr.contains("sees a world of 1") && result.stderr.contains("BALSAM_MPI_LIBRARY"),
                "\(starter) with \(library): \(result.stderr)")
        }
    }
}
