# Spack recipe for Balsam for Swift, built from source. packaging/spack is a Spack repository (namespace balsam):
#   spack repo add /path/to/checkout/packaging/spack
#   spack install balsam-swift@main
# builds the checkout it sits in; BALSAM_SWIFT_GIT names another clone (a facility's mirror) when Spack runs.
# Swift is not a Spack package: the build uses the `swift` on PATH (a facility's Swift module, or the toolchain from
# swift.org, 6.1 or later). The C libraries come from Spack; MPI is needed only at run time (the launcher opens the
# MPI that starts it: Cray MPICH, MPICH, Intel MPI, MVAPICH or Open MPI; balsam-launcher(1), MPI LIBRARY).
import os
import shutil

from spack.package import *


class BalsamSwift(Package):
    """A high-throughput workflow system for HPC that speaks the original Balsam's API: jobs are directories in
    a spool, a watcher drives their lifecycle, an MPI launcher runs them inside batch allocations, and a REST
    server mirrors sites for the original Python client."""

    homepage = "https://github.com/argonne-lcf/balsam"
    # The checkout this recipe sits in (packaging/spack/packages/balsam-swift/package.py), or BALSAM_SWIFT_GIT.
    git = os.environ.get("BALSAM_SWIFT_GIT") or "file://" + os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    )

    license("BSD-3-Clause")

    version("main", branch="main")
    version("0.9.0", tag="v0.9.0")

    variant("server", default=True, description="Build balsam-server (needs libpq and OpenSSL)")

    depends_on("pkgconfig", type="build")
    depends_on("curl")
    depends_on("sqlite@3:")
    depends_on("openssl@1.1:", when="+server")
    depends_on("postgresql", when="+server")
    depends_on("mpi", type="run")

    commands = ["balsam", "balsam-submit", "balsam-watch", "balsam-launcher", "balsam-task-guard", "balsam-bind"]

    def install(self, spec, prefix):
        swift = which("swift")
        if swift is None:
            raise InstallError("balsam-swift needs a Swift toolchain (6.1 or later) on PATH to build")
        products = list(self.commands) + (["balsam-server"] if spec.satisfies("+server") else [])
        for product in products:
            swift("build", "-c", "release", "--static-swift-stdlib", "--product", product)
        built = swift("build", "-c", "release", "--static-swift-stdlib", "--show-bin-path", output=str).strip()
        mkdirp(prefix.bin)
        for product in products:
            install(join_path(built, product), prefix.bin)
        for section in ("1", "5", "8"):
            pages = [page for page in os.listdir("man") if page.endswith("." + section)]
            target = join_path(prefix.share.man, "man" + section)
            mkdirp(target)
            for page in pages:
                install(join_path("man", page), target)
        mkdirp(prefix.share.balsam)
        install("LICENSE", prefix.share.balsam)
        install("VERSION", prefix.share.balsam)
        shutil.copy("packaging/lmod/balsam.lua", join_path(prefix.share.balsam, "balsam.lua"))
