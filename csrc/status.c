/* status.c - human-readable names for the LSVFS_E* status codes. */
#include "lsvfs_core.h"

const char *lsvfs_strerror(int status)
{
    switch (status) {
    case LSVFS_OK:
        return "ok";
    case LSVFS_ETRUNCATED:
        return "input ends before the structure does";
    case LSVFS_ECORRUPT:
        return "malformed bytes";
    case LSVFS_EPGNO:
        return "frame carries another page number than expected";
    case LSVFS_EFLAGS:
        return "flags not valid";
    case LSVFS_ESIZE:
        return "sizes disagree";
    case LSVFS_ENOMEM:
        return "out of memory";
    case LSVFS_ERANGE:
        return "argument or position out of range";
    case LSVFS_ENOTFOUND:
        return "no entry for that page";
    case LSVFS_ELEGACY:
        return "frame uses the legacy LZ4-frame payload";
    case LSVFS_EORDER:
        return "page numbers not strictly ascending";
    default:
        return "unknown status";
    }
}
