// The system SQLite 3 (libsqlite3-dev), for the graph database.
#include <sqlite3.h>
