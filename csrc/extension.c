/* extension.c - what lsvfs is to SQLite as an extension: the entry point
 * `load_extension` calls (apsw's SQLite exports no symbols, so its api
 * routines come from there), the one table of our PRAGMA and SQL function
 * names, and the Go VFS's SQL functions, added by an auto-extension to every
 * connection whose main database is a replica. */
#include <sqlite3ext.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lsvfs_core.h"
#include "internal.h"

/* ---- the names ------------------------------------------------------------ */

static const lsvfs_name names[] = {
    {"litestream_txid", LSVFS_PRAGMA_SETTABLE, 0, 0, NULL, "HEX|LATEST", "pin a TXID"},
    {"litestream_time", LSVFS_PRAGMA_SETTABLE, 0, 0, NULL, "TIME|LATEST",
     "time travel (RFC 3339, '5 minutes ago')"},
    {"litestream_min_txid", LSVFS_PRAGMA_SETTABLE, 0, 0, NULL, "HEX|0",
     "read at or after a TXID (a bookmark), waiting for it"},
    {"litestream_lag", LSVFS_PRAGMA, 0, 0, NULL, NULL, "seconds since the last poll"},
    {"litestream_error", LSVFS_PRAGMA, 0, 0, NULL, NULL, "why this connection's last read failed"},
    {"litestream_stats", LSVFS_PRAGMA, 0, 0, NULL, NULL, "the replica's counters, as JSON"},
    {"litestream_hydration_progress", LSVFS_PRAGMA, 0, 0, NULL, NULL,
     "how much of the snapshot the hydration file holds, 0-100"},
    {"litestream_hydration_file", LSVFS_PRAGMA, 0, 0, NULL, NULL, "the hydration file's path"},
    {"litestream_txid", LSVFS_SQL_FUNCTION, 0, 0, "litestream_txid", NULL, "the TXID read"},
    {"litestream_lag", LSVFS_SQL_FUNCTION, 0, 1, "litestream_lag", NULL, "seconds since the last poll"},
    {"litestream_time", LSVFS_SQL_FUNCTION, 0, 0, "litestream_time", NULL, "the commit time read"},
    {"litestream_set_time", LSVFS_SQL_FUNCTION, 1, 0, "litestream_time", NULL, "time travel"},
};

#define NNAMES (sizeof names / sizeof names[0])

size_t lsvfs_names(const lsvfs_name **out)
{
    *out = names;
    return NNAMES;
}

int lsvfs_is_pragma(const char *name)
{
    for (size_t i = 0; i < NNAMES; i++) {
        if (names[i].kind != LSVFS_SQL_FUNCTION && strcasecmp(names[i].name, name) == 0)
            return 1;
    }
    return 0;
}

/* ---- the Go VFS's SQL functions ----------------------------------------- */
/* Each answers like its PRAGMA, through the same code; its table entry is
 * its user data. */

static lsvfs_file *replica_file_of(const sqlite3_api_routines *api, sqlite3 *db)
{
    sqlite3_file *fp = NULL;
    if (api->file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &fp) != SQLITE_OK)
        return NULL;
    return lsvfs_file_of(fp);
}

/* A function cannot name the library it runs in without calling into that
 * library, so each library that runs the auto-extension gets a slot, and
 * each slot its own copy of the function (they differ only in the slot
 * they read the api routines from). */
#define API_SLOTS 4
static const sqlite3_api_routines *api_slots[API_SLOTS];

static void sql_answer(int slot, sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const sqlite3_api_routines *api = api_slots[slot];
    const lsvfs_name *fn = api->user_data(ctx);
    lsvfs_file *f = replica_file_of(api, api->context_db_handle(ctx));
    if (f == NULL) {
        api->result_error(ctx, "not a litestream replica connection", -1);
        return;
    }
    sqlite3_value *arg = argc > 0 ? argv[0] : NULL;
    const char *value = arg != NULL ? (const char *)api->value_text(arg) : NULL;
    if (arg != NULL && value == NULL) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s: NULL is not a time", fn->name);
        api->result_error(ctx, msg, -1);
        return;
    }
    char *result = NULL;
    int rc = lsvfs_file_pragma(f, fn->pragma, value, &result);
    if (rc != SQLITE_OK)
        api->result_error(ctx, result != NULL ? result : "litestream: not available", -1);
    else if (result == NULL)
        api->result_null(ctx);
    else if (fn->integer)
        api->result_int64(ctx, strtoll(result, NULL, 10));
    else
        api->result_text(ctx, result, -1, SQLITE_TRANSIENT);
    free(result);
}

#define SLOT_FUNCTION(n)                                                       \
    static void answer_##n(sqlite3_context *c, int argc, sqlite3_value **argv) \
    {                                                                          \
        sql_answer(n, c, argc, argv);                                          \
    }
SLOT_FUNCTION(0)
SLOT_FUNCTION(1)
SLOT_FUNCTION(2)
SLOT_FUNCTION(3)

typedef void (*sql_fn)(sqlite3_context *, int, sqlite3_value **);
static const sql_fn answer[API_SLOTS] = {answer_0, answer_1, answer_2, answer_3};

static int api_slot(const sqlite3_api_routines *api)
{
    for (int i = 0; i < API_SLOTS; i++) {
        const sqlite3_api_routines *seen = NULL;
        if (__atomic_compare_exchange_n(&api_slots[i], &seen, api, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ||
            seen == api)
            return i;
    }
    return -1;
}

/* The auto-extension: runs on every new connection of a SQLite we are
 * registered in, and adds the functions only where the main database is a
 * replica. */
int lsvfs_sql_functions_init(sqlite3 *db, char **err,
                             const sqlite3_api_routines *api)
{
    (void)err;
    if (replica_file_of(api, db) == NULL)
        return SQLITE_OK;
    int slot = api_slot(api);
    if (slot < 0)
        return SQLITE_OK; /* more SQLite libraries than slots: no functions */
    for (size_t i = 0; i < NNAMES; i++) {
        if (names[i].kind == LSVFS_SQL_FUNCTION)
            api->create_function_v2(db, names[i].name, names[i].nargs, SQLITE_UTF8,
                                    (void *)&names[i], answer[slot], NULL, NULL, NULL);
    }
    return SQLITE_OK;
}

/* ---- the loadable-extension entry point ---------------------------------- */

static void *ext_fns[LSVFS_FN_COUNT];
static int ext_loaded;

/* The entry point `load_extension` calls: it only keeps the api routines of
 * the SQLite that loaded it, for lsvfs_vfs_register to use. */
int sqlite3_lsvfs_init(sqlite3 *db, char **err,
                       const sqlite3_api_routines *api)
{
    (void)db, (void)err;
    ext_fns[LSVFS_FN_VFS_FIND] = (void *)api->vfs_find;
    ext_fns[LSVFS_FN_VFS_REGISTER] = (void *)api->vfs_register;
    ext_fns[LSVFS_FN_URI_KEY] = (void *)api->uri_key;
    ext_fns[LSVFS_FN_URI_PARAMETER] = (void *)api->uri_parameter;
    ext_fns[LSVFS_FN_MPRINTF] = (void *)api->mprintf;
    ext_fns[LSVFS_FN_FREE] = (void *)api->free;
    ext_fns[LSVFS_FN_AUTO_EXTENSION] = (void *)api->auto_extension;
    __atomic_store_n(&ext_loaded, 1, __ATOMIC_RELEASE);
    return SQLITE_OK_LOAD_PERMANENTLY;
}

int lsvfs_extension_fns(void *fns[])
{
    if (!__atomic_load_n(&ext_loaded, __ATOMIC_ACQUIRE))
        return 0;
    memcpy(fns, ext_fns, sizeof ext_fns);
    return 1;
}
