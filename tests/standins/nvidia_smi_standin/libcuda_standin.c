/*
 * Stand-in for NVIDIA's CUDA driver library (libcuda.so.<driver version>), for the sparkfleet lab.
 *
 * The lab has no GPU. This library answers the first call every CUDA program makes, cuInit(), with
 * the result the real driver library gives in the situations the lab simulates, so that a check
 * run inside a container ("does CUDA initialise?") tells a working GPU path from a broken one:
 *
 *   0   CUDA_SUCCESS                       the container got this library and the "kernel module"
 *                                          (the stand-in driver config) has the same version.
 *   100 CUDA_ERROR_NO_DEVICE               no driver config (/etc/nvidia-smi-standin.json, or the
 *                                          file named by $NVIDIA_SMI_STANDIN_CONFIG) is readable,
 *                                          or it says "fail": true (driver not loaded). A real
 *                                          container without /dev/nvidia* gets this too.
 *   803 CUDA_ERROR_SYSTEM_DRIVER_MISMATCH  this library's version differs from the config's
 *                                          "driver_version" (the loaded kernel module): what a
 *                                          CDI spec generated before a driver update injects
 *                                          (NVIDIA/nvidia-container-toolkit#1934: nvidia-smi
 *                                          works, CUDA init fails).
 *   999 CUDA_ERROR_UNKNOWN                 the container lost its device nodes: the marker file
 *                                          /dev/.nvidia-standin-devices-lost exists (written by the
 *                                          lab host's daemon-reload simulation,
 *                                          tests/lab/spark-sim/sparklab-gpu-cgroup-reload; path
 *                                          overridable with $NVIDIA_STANDIN_DEVICES_LOST_MARKER).
 *                                          Real reports of toolkit#48/#1227 show "CUDA unknown
 *                                          error" after systemctl daemon-reload.
 *
 * Checked in that order. The codes are CUresult values from NVIDIA's cuda.h.
 *
 * The library's own version is the "X.Y.Z" after "libcuda.so." in the real path of the file it was
 * loaded from (dladdr + realpath, so loading it through the libcuda.so.1 symlink works), else the
 * version compiled in (-DSTANDIN_DRIVER_VERSION="580.95.05"). Copying the file to
 * libcuda.so.<new version> therefore "installs" a new driver's library.
 *
 * cuDriverGetVersion(int *v) sets *v to the CUDA version this library supports (1000 * major +
 * 10 * minor; 13.0 -> 13000, as the GB10's 580 driver reports) and does not need cuInit, as in the
 * real library; NULL -> 1 (CUDA_ERROR_INVALID_VALUE).
 *
 * The config parser is deliberately small: it finds "driver_version": "<string>" and
 * "fail": true in the JSON text (the file nvidia-smi's stand-in reads; see nvidia-smi).
 * Build: gcc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1 -DSTANDIN_DRIVER_VERSION='"V"' -o
 * libcuda.so.V libcuda_standin.c  (no dependency but libc; see build_libcuda.py).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef STANDIN_DRIVER_VERSION
#define STANDIN_DRIVER_VERSION "580.95.05"
#endif
#ifndef STANDIN_CUDA_VERSION
#define STANDIN_CUDA_VERSION 13000
#endif

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_SYSTEM_DRIVER_MISMATCH 803
#define CUDA_ERROR_UNKNOWN 999

#define DEFAULT_CONFIG "/etc/nvidia-smi-standin.json"
#define DEFAULT_MARKER "/dev/.nvidia-standin-devices-lost"
#define VERSION_MAX 64

static const char *env_or(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value && *value ? value : fallback;
}

/* The text of the config file (NUL-terminated, malloc'd), or NULL when it cannot be read. */
static char *read_config(void) {
    FILE *fh = fopen(env_or("NVIDIA_SMI_STANDIN_CONFIG", DEFAULT_CONFIG), "r");
    if (!fh) return NULL;
    size_t size = 0, cap = 4096;
    char *text = malloc(cap);
    while (text) {
        size_t got = fread(text + size, 1, cap - size - 1, fh);
        size += got;
        if (got == 0) break;
        if (size + 1 >= cap) {
            char *bigger = realloc(text, cap * 2);
            if (!bigger) { free(text); text = NULL; break; }
            text = bigger;
            cap *= 2;
        }
    }
    fclose(fh);
    if (text) text[size] = '\0';
    return text;
}

/* Pointer just past `"key"` and the colon after it, or NULL. */
static const char *json_value(const char *text, const char *key) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    for (const char *at = strstr(text, quoted); at; at = strstr(at + 1, quoted)) {
        const char *p = at + strlen(quoted);
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p != ':') continue;
        p++;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        return p;
    }
    return NULL;
}

/* The config's driver_version (the "kernel module"), default as nvidia-smi's stand-in has it. */
static void config_driver_version(const char *text, char *out, size_t len) {
    snprintf(out, len, "%s", "580.95.05");
    const char *p = json_value(text, "driver_version");
    if (!p || *p != '"') return;
    p++;
    const char *end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= len) return;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
}

static int config_fails(const char *text) {
    const char *p = json_value(text, "fail");
    return p && strncmp(p, "true", 4) == 0;
}

/* This library's version: from its file name when it is libcuda.so.X.Y.Z, else compiled in. */
static void library_version(char *out, size_t len) {
    snprintf(out, len, "%s", STANDIN_DRIVER_VERSION);
    Dl_info info;
    char real[PATH_MAX];
    if (!dladdr((void *)&library_version, &info) || !info.dli_fname) return;
    if (!realpath(info.dli_fname, real)) return;
    const char *base = strrchr(real, '/');
    base = base ? base + 1 : real;
    const char *prefix = "libcuda.so.";
    if (strncmp(base, prefix, strlen(prefix)) != 0) return;
    const char *version = base + strlen(prefix);
    if (strchr(version, '.') == NULL || strlen(version) >= len) return; /* libcuda.so.1 */
    snprintf(out, len, "%s", version);
}

int cuInit(unsigned int flags) {
    (void)flags;
    if (access(env_or("NVIDIA_STANDIN_DEVICES_LOST_MARKER", DEFAULT_MARKER), F_OK) == 0)
        return CUDA_ERROR_UNKNOWN;
    char *text = read_config();
    if (!text) return CUDA_ERROR_NO_DEVICE;
    int fails = config_fails(text);
    char module[VERSION_MAX], library[VERSION_MAX];
    config_driver_version(text, module, sizeof module);
    free(text);
    if (fails) return CUDA_ERROR_NO_DEVICE;
    library_version(library, sizeof library);
    if (strcmp(module, library) != 0) return CUDA_ERROR_SYSTEM_DRIVER_MISMATCH;
    return CUDA_SUCCESS;
}

int cuDriverGetVersion(int *driver_version) {
    if (!driver_version) return CUDA_ERROR_INVALID_VALUE;
    *driver_version = STANDIN_CUDA_VERSION;
    return CUDA_SUCCESS;
}
