// swift-tools-version: 6.1
import PackageDescription

/// The MPI library the launcher tries first, for those who build from source for one machine: `BALSAM_MPI_LIBRARY`
/// in the environment of `swift build` (a path or a soname). Whatever it says, the launcher opens its MPI at run
/// time (balsam-launcher(1), MPI LIBRARY), so a build needs no MPI at all.
let mpiDefaultLibrary: [CSetting] =
    (Context.environment["BALSAM_MPI_LIBRARY"]).flatMap { $0.isEmpty ? nil : $0 }
    .map { [.define("CMPI_DEFAULT_LIBRARY", to: "\"\($0)\"")] } ?? []

let package = Package(
    name: "balsam-swift",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Spool", targets: ["Spool"]),
        // For bench/json's push case (a package of its own that reads a push as the server does).
        .library(name: "Wire", targets: ["Wire"]),
        .executable(name: "balsam", targets: ["balsam"]),
        .executable(name: "balsam-submit", targets: ["balsam-submit"]),
        .executable(name: "balsam-watch", targets: ["balsam-watch"]),
        .executable(name: "balsam-launcher", targets: ["balsam-launcher"]),
        .executable(name: "balsam-task-guard", targets: ["balsam-task-guard"]),
        .executable(name: "balsam-bind", targets: ["balsam-bind"]),
        .executable(name: "balsam-server", targets: ["balsam-server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // The server's HTTP layer. No traits: swift-configuration and full Foundation are not needed, and the
        // clean build stays near 85 s for Hummingbird and SwiftNIO (measured; see docs/design-notes.md).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        // Already built for Hummingbird; the server takes its thread pool for the databases' blocking calls.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // Already built for Hummingbird: its HTTP parts, for the server's connection guard.
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
    ],
    targets: [
        // Linux calls Swift's Glibc module does not import (renameat2, syncfs).
        .target(name: "CLinux"),
        // The on-disk contract: site, apps, jobs, states, submission, queries.
        .target(
            name: "Spool",
            dependencies: [
                "CLinux",
                .product(name: "Yams", package: "Yams"),
            ],
            // The site's Python runner, written into each site that has Python apps (SITE/lib/).
            resources: [
                .embedInCode("Python/balsam_runner.py"),
                // The platform presets (balsam(1), PLATFORM PRESETS), one directory each.
                .embedInCode("Platforms/local/local.yml"),
                .embedInCode("Platforms/generic-slurm/generic-slurm.yml"),
                .embedInCode("Platforms/generic-pbs/generic-pbs.yml"),
                .embedInCode("Platforms/polaris/polaris.yml"),
                .embedInCode("Platforms/aurora/aurora.yml"),
                .embedInCode("Platforms/perlmutter-cpu/perlmutter-cpu.yml"),
                .embedInCode("Platforms/perlmutter-gpu/perlmutter-gpu.yml"),
                .embedInCode("Platforms/frontier/frontier.yml"),
            ]
        ),
        // What the executables share: site option, error-to-exit-status mapping, output helpers.
        .target(
            name: "BalsamCLI",
            dependencies: [
                "Spool",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Short-lived child processes (hooks, scheduler commands): process groups, deadlines, bounded output.
        .target(name: "Processes", dependencies: ["Spool"]),
        // Batch schedulers (Slurm, PBS, LSF, Cobalt, local), the scheduler service and the elastic queue.
        .target(
            name: "Batch",
            dependencies: ["Processes", "Spool", .product(name: "Logging", package: "swift-log")]
        ),
        // Stage-in and stage-out: the transfer service and its backends (local copies, rsync over ssh, Globus).
        .target(
            name: "Transfers",
            dependencies: ["CLinux", "Processes", "Spool", .product(name: "Logging", package: "swift-log")]
        ),
        // The watcher's lifecycle services: ingest, dependencies, stages, hooks, policies, leases, cleanup.
        .target(
            name: "Lifecycle",
            dependencies: [
                "Batch", "Processes", "Spool", "Sync", "Transfers",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "balsam-watch",
            dependencies: [
                "BalsamCLI", "Lifecycle", "Spool",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // MPI, as Swift sees it: the launcher's calls behind functions of C's own types, the machine's MPI library
        // opened at run time (either ABI: the MPICH family's `int` handles, Open MPI's pointers).
        .target(name: "CMPI", cSettings: mpiDefaultLibrary, linkerSettings: [.linkedLibrary("dl")]),
        // Runs one job for the launcher and stops it with its launcher (a small C program: spawned per job).
        // Linked statically: it is exec'd once per job, and a dynamic one spent most of its time in the loader.
        .executableTarget(name: "balsam-task-guard", linkerSettings: [.unsafeFlags(["-static-executable"])]),
        // Gives each rank of a multi-rank job its own devices and CPUs, then becomes the job's command (static:
        // exec'd once per rank).
        .executableTarget(name: "balsam-bind", linkerSettings: [.unsafeFlags(["-static-executable"])]),
        // The launcher: node discovery, placement, claiming and recording, task running, rank roles, and the one
        // wrapper over MPI (the only module that imports CMPI).
        .target(
            name: "MPILauncher",
            dependencies: ["CMPI", "Spool", .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "balsam-launcher",
            dependencies: [
                "BalsamCLI", "MPILauncher", "Spool",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What the server and the site say to each other: the job as the API shows it, the push and its reply,
        // refusals with codes, times, and the field-checking reader every message goes through.
        .target(name: "Wire", dependencies: ["Spool"]),
        // The server's C libraries, from Debian: SQLite (embedded store), libpq (PostgreSQL), libcrypto (secrets).
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CPostgres", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // The REST control plane: the original Balsam API over one store interface (SQLite or PostgreSQL).
        .target(
            name: "Server",
            dependencies: [
                "CCrypto", "CPostgres", "CSQLite", "Spool", "Wire",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "balsam-server",
            dependencies: [
                "BalsamCLI", "Server", "Spool", "Wire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // libcurl, for the sync's HTTP client (the only module that links it).
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The site's side of the server: the HTTP client, the client file, login (and, next, the sync service).
        .target(name: "Sync", dependencies: ["CCurl", "Spool", "Wire", .product(name: "Yams", package: "Yams")]),
        .executableTarget(name: "balsam", dependencies: ["Batch", "BalsamCLI", "Processes", "Spool", "Sync"]),
        .executableTarget(name: "balsam-submit", dependencies: ["BalsamCLI", "Spool"]),
        // bench/fleet-bench's sites: many sites in one process, each written to and pushed by the site's own code.
        .executableTarget(
            name: "fleet-driver",
            dependencies: ["Spool", "Sync", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "bench/FleetDriver"
        ),
        // Temporary sites, small filesystems, running the built binaries.
        .target(name: "TestSupport", dependencies: ["Spool"], path: "Tests/TestSupport"),
        .testTarget(name: "SpoolTests", dependencies: ["Spool", "TestSupport"]),
        .testTarget(name: "ProcessesTests", dependencies: ["Processes", "Spool", "TestSupport"]),
        .testTarget(name: "LifecycleTests", dependencies: ["Lifecycle", "Spool", "TestSupport"]),
        .testTarget(name: "MPILauncherTests", dependencies: ["MPILauncher", "Spool", "TestSupport"]),
        .testTarget(name: "BatchTests", dependencies: ["Batch", "Spool", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["BalsamCLI", "Spool", "TestSupport", .product(name: "Logging", package: "swift-log")]),
        .testTarget(
            name: "ServerTests",
            dependencies: [
                "Server", "Spool", "Sync", "TestSupport", "Wire", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ], exclude: ["Fixtures"]),
        .testTarget(name: "WireTests", dependencies: ["Spool", "Wire"]),
    ]
)

for target in package.targets
where target.type != .system && !["CLinux", "CMPI", "balsam-task-guard", "balsam-bind"].contains(target.name) {
    target.swiftSettings =
        (target.swiftSettings ?? []) + [
            .enableUpcomingFeature("ExistentialAny"),
            .enableUpcomingFeature("MemberImportVisibility"),
        ]
}
