#ifndef CPOSTGRES_SHIM_H
#define CPOSTGRES_SHIM_H
// libpq, PostgreSQL's own client library: its API is plain functions, so nothing needs wrapping here.
#include <libpq-fe.h>
#endif
