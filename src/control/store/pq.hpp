#pragma once
// libpq, loaded when a PostgreSQL database is first used rather than linked into the binary.
//
// libpq pulls in LDAP, Kerberos, SASL, GnuTLS and p11-kit, whose loading and constructors cost
// every process about 3 MB of resident memory — a worker, or a control plane on SQLite, that
// never talks to PostgreSQL included (idle worker RSS: docs/benchmarks.md). Only the types and
// prototypes come from the header; calls go through pq::api().
#include <libpq-fe.h>

namespace ag::pq {

struct Api {
#define AG_PQ_FUNCTIONS(X)                                                                                       \
  X(PQclear) X(PQcmdTuples) X(PQconnectdb) X(PQconsumeInput) X(PQerrorMessage) X(PQexec) X(PQexecPrepared)     \
  X(PQfinish) X(PQfreemem) X(PQgetisnull) X(PQgetlength) X(PQgetvalue) X(PQnfields) X(PQnotifies) X(PQntuples) \
  X(PQprepare) X(PQreset) X(PQresultErrorField) X(PQresultErrorMessage) X(PQresultStatus) X(PQsocket)           \
  X(PQstatus)
#define AG_PQ_MEMBER(name) decltype(&::name) name = nullptr;
  AG_PQ_FUNCTIONS(AG_PQ_MEMBER)
#undef AG_PQ_MEMBER
};

// Loads libpq.so.5 on first use (thread-safe); throws std::runtime_error naming the library
// when it or one of its functions cannot be found.
const Api& api();

}  // namespace ag::pq
