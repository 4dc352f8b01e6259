/*
 * routes.c - the API surfaces mrad serves.
 *
 * Each surface (server/api-*.c) defines its routes and handlers; this list
 * is the only place that names them all, so adding a surface touches
 * neither the plumbing (server/http.c) nor the other surfaces.
 */
#include "server/route.h"

extern const struct mrad_api mrad_api_ops, mrad_api_v1, mrad_api_kv,
    mrad_api_v2;

const struct mrad_api *const mrad_apis[] = {&mrad_api_ops, &mrad_api_v1,
                                            &mrad_api_kv, &mrad_api_v2, NULL};
