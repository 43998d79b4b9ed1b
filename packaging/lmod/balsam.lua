-- Lmod module file for Balsam for Swift. install.sh puts it at PREFIX/share/modulefiles/balsam/VERSION.lua; then
--   module use PREFIX/share/modulefiles
--   module load balsam
-- puts the commands on PATH and their man pages on MANPATH. The prefix is found from this file's own place, so
-- the file needs no editing wherever the bundle is installed.
local file = myFileName()
local prefix = file:match("^(.*)/share/modulefiles/[^/]+/[^/]+%.lua$")
if not prefix then
    LmodError("balsam: this module file must sit at PREFIX/share/modulefiles/balsam/VERSION.lua, not " .. file)
end
local version = myModuleVersion()

whatis("Name: balsam")
whatis("Version: " .. version)
whatis("Description: high-throughput workflows on HPC: a spool of jobs, a watcher, an MPI launcher, a REST server")
whatis("URL: https://github.com/argonne-lcf/balsam (the original, whose API it speaks)")
help([[
Balsam for Swift ]] .. version .. [[ under ]] .. prefix .. [[

Commands: balsam, balsam-submit, balsam-watch, balsam-launcher, balsam-server.
Start with: man balsam. The launcher opens the MPI that starts it (load the machine's MPI module first);
BALSAM_MPI_LIBRARY names another (man balsam-launcher, MPI LIBRARY).
]])

family("balsam")
prepend_path("PATH", pathJoin(prefix, "bin"))
prepend_path("MANPATH", pathJoin(prefix, "share/man"))
setenv("BALSAM_ROOT", prefix)
