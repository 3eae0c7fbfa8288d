/* rlf-run: run a model exported by `rlf export RUN OUT.gguf` without Python, and print the loop trace of
 * `rlf solve`. C99, libc + libm only:
 *
 *     cc -O2 -o rlf-run runtime/rlf.c -lm
 *     ./rlf-run model.gguf "K = moon. P = K. What is P?" [--max-loops N] [--loop-clamp C] [--json]
 *
 * The same straight line as rlf/model.py, on one prompt at a time:
 *
 *     ids      = bpe(pretokenise(template(prompt)))      byte-level BPE, GPT-2 pre-tokeniser regex
 *     x_prompt = llama_blocks(embed(ids)) -> final norm  the base's first encoder_layers, run once   (T, d)
 *     x = x_prompt   (with K scratchpad rows in front when the run has them)
 *     for i in 0, 1, ...:
 *         x = x + gate * x_prompt                        Prompt Lifeline
 *         x = loop_position(x, min(i, clamp))            rotary (interleaved pairs) or learned table
 *         x = looped_blocks(x)                           loop_layers=M: the base's next M blocks, LoRA merged
 *         x = loop_norm(x + core(x))                     Mamba2 (recurrent scan) or 2-layer causal Transformer,
 *                                                        at width d or between d -> k -> d maps (core_dim=k)
 *         p = softmax([lm_head; halt_row] . head_norm(bridge(x[answer])))
 *         print loop, top-1 token, p, p(HALT); stop at <HALT>
 *
 * Weights are read in place from the mmap'd file; every offset and size in it is checked against the file size
 * before use, so a truncated or corrupt file is an error message, never a read past the mapping. Buffers are
 * allocated once per prompt, before the loop: memory does not grow with the loop count.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "unicode_ranges.h"

#define FORMAT_VERSION 1
#define SOLVE_LOOPS 64 /* rlf.model.SOLVE_LOOPS */

static const char *g_file = "";

static void die(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "rlf-run: error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void *xcalloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) die("out of memory (%zu x %zu bytes)", n, size);
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------------ GGUF reading */

enum { GT_U8, GT_I8, GT_U16, GT_I16, GT_U32, GT_I32, GT_F32, GT_BOOL, GT_STR, GT_ARR, GT_U64, GT_I64, GT_F64 };
enum { TT_F32 = 0, TT_F16 = 1, TT_Q8_0 = 8, TT_I32 = 26 };
#define QK8_0 32

typedef struct { const char *p; uint64_t n; } Str;
typedef struct { const uint8_t *base; size_t size, off; } Cursor;
typedef struct { Str key; uint32_t type; size_t off; uint32_t arr_type; uint64_t arr_n; } KV;
typedef struct { Str name; uint32_t n_dims, type; uint64_t ne[4]; uint64_t offset, nbytes; const void *data; } TensorInfo;

typedef struct {
    const uint8_t *map;
    size_t size;
    KV *kv;
    uint64_t n_kv;
    TensorInfo *ti;
    uint64_t n_ti;
} Gguf;

static void need(Cursor *c, uint64_t n, const char *what) {
    if (c->off > c->size || n > c->size - c->off)
        die("%s: truncated or corrupt GGUF: %s at byte %zu needs %llu bytes, the file has %zu", g_file, what,
            c->off, (unsigned long long)n, c->size);
}
static uint32_t rd_u32(Cursor *c, const char *what) {
    uint32_t v;
    need(c, 4, what);
    memcpy(&v, c->base + c->off, 4);
    c->off += 4;
    return v;
}
static uint64_t rd_u64(Cursor *c, const char *what) {
    uint64_t v;
    need(c, 8, what);
    memcpy(&v, c->base + c->off, 8);
    c->off += 8;
    return v;
}
static Str rd_str(Cursor *c, const char *what) {
    Str s;
    s.n = rd_u64(c, what);
    need(c, s.n, what);
    s.p = (const char *)c->base + c->off;
    c->off += s.n;
    return s;
}
static int str_eq(Str s, const char *z) { return s.n == strlen(z) && memcmp(s.p, z, s.n) == 0; }

static uint64_t scalar_size(uint32_t t) {
    static const uint64_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t <= GT_F64 ? sz[t] : 0;
}

static void skip_value(Cursor *c, uint32_t type, int depth, const char *what) {
    if (type == GT_STR) {
        rd_str(c, what);
    } else if (type == GT_ARR) {
        if (depth > 2) die("%s: corrupt GGUF: arrays nested too deep in %s", g_file, what);
        uint32_t at = rd_u32(c, what);
        uint64_t n = rd_u64(c, what);
        if (at == GT_STR || at == GT_ARR) {
            for (uint64_t i = 0; i < n; i++) skip_value(c, at, depth + 1, what);
        } else {
            uint64_t es = scalar_size(at);
            if (!es) die("%s: corrupt GGUF: unknown array element type %u in %s", g_file, at, what);
            if (n > (c->size - c->off) / es) need(c, UINT64_MAX, what);
            c->off += n * es;
        }
    } else {
        uint64_t es = scalar_size(type);
        if (!es) die("%s: corrupt GGUF: unknown value type %u in %s", g_file, type, what);
        need(c, es, what);
        c->off += es;
    }
}

static uint64_t tensor_bytes(const TensorInfo *t) {
    uint64_t n = 1;
    for (uint32_t i = 0; i < t->n_dims; i++) {
        if (t->ne[i] == 0 || t->ne[i] > (1ull << 32)) die("%s: corrupt GGUF: tensor %.*s has dimension %llu", g_file,
                                                         (int)t->name.n, t->name.p, (unsigned long long)t->ne[i]);
        if (t->ne[i] > (1ull << 40) / n) die("%s: corrupt GGUF: tensor %.*s is too large", g_file, (int)t->name.n,
                                             t->name.p);
        n *= t->ne[i];
    }
    switch (t->type) {
    case TT_F32: case TT_I32: return n * 4;
    case TT_F16: return n * 2;
    case TT_Q8_0:
        if (t->ne[0] % QK8_0) die("%s: corrupt GGUF: q8_0 tensor %.*s has rows of %llu (not whole blocks of 32)",
                                  g_file, (int)t->name.n, t->name.p, (unsigned long long)t->ne[0]);
        return n / QK8_0 * 34;
    default:
        die("%s: tensor %.*s has type %u; this runtime reads f32, f16, q8_0 and i32 (files from `rlf export`)",
            g_file, (int)t->name.n, t->name.p, t->type);
    }
    return 0;
}

static void gguf_open(Gguf *g, const char *path) {
    g_file = path;
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) die("%s: not a regular file", path);
    if (st.st_size < 24) die("%s: not a GGUF file (%lld bytes; too short for the header)", path, (long long)st.st_size);
    g->size = (size_t)st.st_size;
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) die("%s: cannot mmap (%s)", path, strerror(errno));
    g->map = m;
    Cursor c = {g->map, g->size, 0};
    if (memcmp(g->map, "GGUF", 4) != 0) die("%s: not a GGUF file (no GGUF magic)", path);
    c.off = 4;
    uint32_t version = rd_u32(&c, "the version");
    if (version != 3) die("%s: GGUF version %u; this runtime reads version 3", path, version);
    g->n_ti = rd_u64(&c, "the tensor count");
    g->n_kv = rd_u64(&c, "the metadata count");
    if (g->n_ti > g->size / 8 || g->n_kv > g->size / 8) /* each entry takes at least 8 bytes */
        die("%s: truncated or corrupt GGUF: %llu metadata entries and %llu tensors cannot fit in its %zu bytes", path,
            (unsigned long long)g->n_kv, (unsigned long long)g->n_ti, g->size);
    g->kv = xcalloc(g->n_kv, sizeof(KV));
    for (uint64_t i = 0; i < g->n_kv; i++) {
        KV *kv = &g->kv[i];
        kv->key = rd_str(&c, "a metadata key");
        kv->type = rd_u32(&c, "a metadata type");
        kv->off = c.off;
        if (kv->type == GT_ARR) {
            Cursor a = c;
            kv->arr_type = rd_u32(&a, "an array type");
            kv->arr_n = rd_u64(&a, "an array length");
        }
        char what[160];
        snprintf(what, sizeof what, "metadata %.*s", (int)(kv->key.n > 100 ? 100 : kv->key.n), kv->key.p);
        skip_value(&c, kv->type, 0, what);
    }
    uint64_t align = 32;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, "general.alignment")) {
            if (g->kv[i].type != GT_U32) die("%s: general.alignment is not a uint32", path);
            Cursor a = {g->map, g->size, g->kv[i].off};
            align = rd_u32(&a, "general.alignment");
            if (align < 4 || (align & (align - 1))) /* 4: f32 weights are read in place */
                die("%s: general.alignment %llu is not a power of 2 of at least 4", path, (unsigned long long)align);
        }
    g->ti = xcalloc(g->n_ti, sizeof(TensorInfo));
    for (uint64_t i = 0; i < g->n_ti; i++) {
        TensorInfo *t = &g->ti[i];
        t->name = rd_str(&c, "a tensor name");
        t->n_dims = rd_u32(&c, "a tensor rank");
        if (t->n_dims < 1 || t->n_dims > 4) die("%s: corrupt GGUF: tensor %.*s has %u dimensions", path,
                                                (int)t->name.n, t->name.p, t->n_dims);
        for (uint32_t k = 0; k < t->n_dims; k++) t->ne[k] = rd_u64(&c, "a tensor shape");
        for (uint32_t k = t->n_dims; k < 4; k++) t->ne[k] = 1;
        t->type = rd_u32(&c, "a tensor type");
        t->offset = rd_u64(&c, "a tensor offset");
        t->nbytes = tensor_bytes(t);
    }
    uint64_t data_start = (c.off + align - 1) / align * align;
    for (uint64_t i = 0; i < g->n_ti; i++) {
        TensorInfo *t = &g->ti[i];
        if (t->offset % align || data_start > g->size || t->offset > g->size - data_start ||
            t->nbytes > g->size - data_start - t->offset)
            die("%s: truncated or corrupt GGUF: tensor %.*s (%llu bytes at offset %llu) lies outside the file's %zu "
                "bytes", path, (int)t->name.n, t->name.p, (unsigned long long)t->nbytes,
                (unsigned long long)(data_start + t->offset), g->size);
        t->data = g->map + data_start + t->offset;
    }
}

static const KV *find_kv(const Gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}
static const KV *need_kv(const Gguf *g, const char *key, uint32_t type) {
    const KV *kv = find_kv(g, key);
    if (!kv) die("%s: metadata %s is missing (not a file written by `rlf export`?)", g_file, key);
    if (kv->type != type) die("%s: metadata %s has type %u, expected %u", g_file, key, kv->type, type);
    return kv;
}
static uint32_t meta_u32(const Gguf *g, const char *key) {
    Cursor c = {g->map, g->size, need_kv(g, key, GT_U32)->off};
    return rd_u32(&c, key);
}
static float meta_f32(const Gguf *g, const char *key) {
    Cursor c = {g->map, g->size, need_kv(g, key, GT_F32)->off};
    uint32_t u = rd_u32(&c, key);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static Str meta_str(const Gguf *g, const char *key) {
    Cursor c = {g->map, g->size, need_kv(g, key, GT_STR)->off};
    return rd_str(&c, key);
}
static char *meta_cstr(const Gguf *g, const char *key) {
    Str s = meta_str(g, key);
    char *z = xcalloc(s.n + 1, 1);
    memcpy(z, s.p, s.n);
    return z;
}
/* an array of n elements of type t: returns a cursor at its first element */
static Cursor meta_arr(const Gguf *g, const char *key, uint32_t t, uint64_t n) {
    const KV *kv = need_kv(g, key, GT_ARR);
    if (kv->arr_type != t || kv->arr_n != n)
        die("%s: metadata %s holds %llu values of type %u, expected %llu of type %u", g_file, key,
            (unsigned long long)kv->arr_n, kv->arr_type, (unsigned long long)n, t);
    Cursor c = {g->map, g->size, kv->off + 12};
    return c;
}

static const TensorInfo *find_tensor(const Gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_ti; i++)
        if (str_eq(g->ti[i].name, name)) return &g->ti[i];
    return NULL;
}

/* a weight matrix (rows x cols, row-major) stored as f32, f16 or q8_0 */
typedef struct { const void *data; uint32_t type; int rows, cols; } Mat;

static Mat get_mat(const Gguf *g, const char *name, int rows, int cols) {
    const TensorInfo *t = find_tensor(g, name);
    if (!t) die("%s: tensor %s is missing", g_file, name);
    if (t->n_dims != 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows)
        die("%s: tensor %s has shape [%llu, %llu] (ggml order), expected [%d, %d]", g_file, name,
            (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], cols, rows);
    if (t->type != TT_F32 && t->type != TT_F16 && t->type != TT_Q8_0)
        die("%s: tensor %s has type %u, expected f32, f16 or q8_0", g_file, name, t->type);
    Mat m = {t->data, t->type, rows, cols};
    return m;
}
static int has_tensor(const Gguf *g, const char *name) { return find_tensor(g, name) != NULL; }

/* an f32 tensor of n elements (any shape) */
static const float *get_f32(const Gguf *g, const char *name, uint64_t n) {
    const TensorInfo *t = find_tensor(g, name);
    if (!t) die("%s: tensor %s is missing", g_file, name);
    uint64_t have = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (t->type != TT_F32 || have != n)
        die("%s: tensor %s is %llu values of type %u, expected %llu f32", g_file, name, (unsigned long long)have,
            t->type, (unsigned long long)n);
    return (const float *)t->data;
}
static const float *opt_f32(const Gguf *g, const char *name, uint64_t n) {
    return has_tensor(g, name) ? get_f32(g, name, n) : NULL;
}

/* ------------------------------------------------------------------------------------------ math */

static float f16_table[65536];
static int f16_ready;

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static void init_f16(void) {
    if (f16_ready) return;
    for (uint32_t i = 0; i < 65536; i++) f16_table[i] = half_to_float((uint16_t)i);
    f16_ready = 1;
}

/* row r of W as f32: a pointer into the file (f32) or into buf (dequantised) */
static const float *mat_row(Mat W, int r, float *buf) {
    if (W.type == TT_F32) return (const float *)W.data + (size_t)r * W.cols;
    if (W.type == TT_F16) {
        const uint16_t *h = (const uint16_t *)W.data + (size_t)r * W.cols;
        for (int c = 0; c < W.cols; c++) buf[c] = f16_table[h[c]];
        return buf;
    }
    const uint8_t *blk = (const uint8_t *)W.data + (size_t)r * (W.cols / QK8_0) * 34;
    for (int b = 0; b < W.cols / QK8_0; b++, blk += 34) {
        uint16_t dh;
        memcpy(&dh, blk, 2);
        float d = f16_table[dh];
        for (int j = 0; j < QK8_0; j++) buf[b * QK8_0 + j] = d * (float)(int8_t)blk[2 + j];
    }
    return buf;
}

static float dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static float *g_rowbuf; /* four dequantised rows, sized to the widest matrix at load */

/* four dot products of rows w0..w3 with x: x is loaded once for the four, and the lane accumulators vectorise
 * at -O2 without reassociating a sum (4 lanes: one SSE register each; 8 with AVX, e.g. -march=native) */
#ifdef __AVX__
#define LANES 8
#else
#define LANES 4
#endif
static void dot4(const float *w0, const float *w1, const float *w2, const float *w3, const float *x, int n,
                 float *out) {
    float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) {
            float xv = x[i + k];
            a0[k] += w0[i + k] * xv;
            a1[k] += w1[i + k] * xv;
            a2[k] += w2[i + k] * xv;
            a3[k] += w3[i + k] * xv;
        }
    for (int k = 0; k + 4 < LANES; k++) { /* 8 lanes: 0..3 += 4..7 */
        a0[k] += a0[k + 4]; a1[k] += a1[k + 4]; a2[k] += a2[k + 4]; a3[k] += a3[k + 4];
    }
    float s0 = (a0[0] + a0[1]) + (a0[2] + a0[3]), s1 = (a1[0] + a1[1]) + (a1[2] + a1[3]);
    float s2 = (a2[0] + a2[1]) + (a2[2] + a2[3]), s3 = (a3[0] + a3[1]) + (a3[2] + a3[3]);
    for (; i < n; i++) { s0 += w0[i] * x[i]; s1 += w1[i] * x[i]; s2 += w2[i] * x[i]; s3 += w3[i] * x[i]; }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

/* out[t][r] = W[r] . x[t] + bias[r] for t < T; W is read once, four rows at a time */
static void matmul(float *out, const float *x, int T, Mat W, const float *bias) {
    int R = W.rows, C = W.cols, r = 0;
    for (; r + 4 <= R; r += 4) {
        const float *w0 = mat_row(W, r, g_rowbuf), *w1 = mat_row(W, r + 1, g_rowbuf + C),
                    *w2 = mat_row(W, r + 2, g_rowbuf + 2 * (size_t)C), *w3 = mat_row(W, r + 3, g_rowbuf + 3 * (size_t)C);
        for (int t = 0; t < T; t++) {
            float *o = out + (size_t)t * R + r;
            dot4(w0, w1, w2, w3, x + (size_t)t * C, C, o);
            if (bias) { o[0] += bias[r]; o[1] += bias[r + 1]; o[2] += bias[r + 2]; o[3] += bias[r + 3]; }
        }
    }
    for (; r < R; r++) {
        const float *w = mat_row(W, r, g_rowbuf);
        float b = bias ? bias[r] : 0.0f;
        for (int t = 0; t < T; t++) out[(size_t)t * R + r] = dot(w, x + (size_t)t * C, C) + b;
    }
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

static void layernorm(float *out, const float *x, const float *w, const float *b, int n, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / n + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + b[i];
}

static float silu(float x) { return x / (1.0f + expf(-x)); }
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); } /* torch's threshold 20 */
static float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

/* causal softmax attention for one head: out[t] = sum_{s<=t} softmax_s(q[t].k[s] * scale) v[s] */
static void attend(float *out, const float *q, const float *k, const float *v, int T, int hd, size_t q_stride,
                   size_t kv_stride, size_t out_stride, float *scores) {
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < T; t++) {
        float mx = -INFINITY;
        for (int s = 0; s <= t; s++) {
            scores[s] = dot(q + t * q_stride, k + s * kv_stride, hd) * scale;
            if (scores[s] > mx) mx = scores[s];
        }
        float sum = 0.0f;
        for (int s = 0; s <= t; s++) { scores[s] = expf(scores[s] - mx); sum += scores[s]; }
        float *o = out + t * out_stride;
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int s = 0; s <= t; s++) {
            float p = scores[s] / sum;
            const float *vs = v + s * kv_stride;
            for (int i = 0; i < hd; i++) o[i] += p * vs[i];
        }
    }
}

/* ------------------------------------------------------------------------------------------ tokenizer */

typedef struct { uint64_t key; int32_t rank, merged; } MergeSlot;

typedef struct {
    int n_vocab;
    Str *tokens;
    uint8_t *special; /* 1: an added token, split out of the text before BPE */
    int *specials, n_specials; /* their ids, longest first */
    int byte_ids[256];
    MergeSlot *merges;
    uint64_t merge_cap;
    char *template_;
} Tokenizer;

static uint64_t hash64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}
static const MergeSlot *merge_find(const Tokenizer *tk, int a, int b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint64_t i = hash64(key) & (tk->merge_cap - 1);; i = (i + 1) & (tk->merge_cap - 1)) {
        if (tk->merges[i].rank < 0) return NULL;
        if (tk->merges[i].key == key) return &tk->merges[i];
    }
}

static Tokenizer *g_tk_sort; /* for qsort of specials by length */
static int by_length_desc(const void *a, const void *b) {
    uint64_t la = g_tk_sort->tokens[*(const int *)a].n, lb = g_tk_sort->tokens[*(const int *)b].n;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

static void tokenizer_load(Tokenizer *tk, const Gguf *g, int n_vocab) {
    Str model = meta_str(g, "tokenizer.ggml.model"), pre = meta_str(g, "tokenizer.ggml.pre");
    if (!str_eq(model, "gpt2")) die("%s: tokenizer.ggml.model is %.*s; this runtime implements gpt2 (byte-level BPE)",
                                    g_file, (int)model.n, model.p);
    if (!str_eq(pre, "gpt2")) die("%s: tokenizer.ggml.pre is %.*s; this runtime implements the gpt2 pre-tokeniser",
                                  g_file, (int)pre.n, pre.p);
    tk->n_vocab = n_vocab;
    tk->tokens = xcalloc(n_vocab, sizeof(Str));
    Cursor c = meta_arr(g, "tokenizer.ggml.tokens", GT_STR, n_vocab);
    for (int i = 0; i < n_vocab; i++) tk->tokens[i] = rd_str(&c, "tokenizer.ggml.tokens");
    tk->special = xcalloc(n_vocab, 1);
    tk->specials = xcalloc(n_vocab, sizeof(int));
    c = meta_arr(g, "tokenizer.ggml.token_type", GT_I32, n_vocab);
    for (int i = 0; i < n_vocab; i++) {
        uint32_t t = rd_u32(&c, "tokenizer.ggml.token_type");
        if ((t == 3 || t == 4) && tk->tokens[i].n) { tk->special[i] = 1; tk->specials[tk->n_specials++] = i; }
    }
    g_tk_sort = tk;
    qsort(tk->specials, tk->n_specials, sizeof(int), by_length_desc);
    c = meta_arr(g, "rlf.tokenizer.byte_ids", GT_I32, 256);
    for (int b = 0; b < 256; b++) {
        int32_t id = (int32_t)rd_u32(&c, "rlf.tokenizer.byte_ids");
        if (id < -1 || id >= n_vocab) die("%s: rlf.tokenizer.byte_ids[%d] = %d is not a token id", g_file, b, id);
        tk->byte_ids[b] = id;
    }
    const TensorInfo *t = find_tensor(g, "tokenizer.merge_ids");
    if (!t || t->type != TT_I32 || t->n_dims != 2 || t->ne[0] != 3)
        die("%s: tensor tokenizer.merge_ids (n_merges x 3 int32) is missing or malformed", g_file);
    uint64_t n = t->ne[1];
    tk->merge_cap = 16;
    while (tk->merge_cap < 2 * n) tk->merge_cap <<= 1;
    tk->merges = xcalloc(tk->merge_cap, sizeof(MergeSlot));
    for (uint64_t i = 0; i < tk->merge_cap; i++) tk->merges[i].rank = -1;
    const int32_t *m = t->data;
    for (uint64_t r = 0; r < n; r++) {
        int32_t a = m[3 * r], b = m[3 * r + 1], ab = m[3 * r + 2];
        if (a < 0 || b < 0 || ab < 0 || a >= n_vocab || b >= n_vocab || ab >= n_vocab)
            die("%s: tokenizer.merge_ids row %llu holds an id outside the vocabulary", g_file, (unsigned long long)r);
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, i = hash64(key) & (tk->merge_cap - 1);
        while (tk->merges[i].rank >= 0 && tk->merges[i].key != key) i = (i + 1) & (tk->merge_cap - 1);
        if (tk->merges[i].rank < 0) { tk->merges[i].key = key; tk->merges[i].rank = (int32_t)r; tk->merges[i].merged = ab; }
    }
    tk->template_ = meta_cstr(g, "rlf.template");
}

static int in_ranges(uint32_t cp, const uint32_t (*r)[2], int n) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid - 1;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}
static int is_letter(uint32_t cp) { return in_ranges(cp, letter_ranges, LETTER_RANGES_N); }
static int is_number(uint32_t cp) { return in_ranges(cp, number_ranges, NUMBER_RANGES_N); }
static int is_space(uint32_t cp) { /* the Unicode White_Space property: the regex's \s */
    return (cp >= 0x9 && cp <= 0xD) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}
static int py_isspace(uint32_t cp) { return is_space(cp) || (cp >= 0x1C && cp <= 0x1F); } /* Python's str.strip */

/* decode one UTF-8 code point at s[i] (strict); returns its length, 0 if invalid */
static int utf8_next(const unsigned char *s, size_t n, size_t i, uint32_t *cp) {
    unsigned c = s[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || i + len > n) return 0;
    uint32_t v = len == 1 ? c : c & (0x7f >> len);
    for (int k = 1; k < len; k++) {
        if ((s[i + k] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i + k] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return len;
}

typedef struct { int *ids; int n, cap; } IdList;
static void ids_push(IdList *l, int id) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        int *p = realloc(l->ids, (size_t)l->cap * sizeof(int));
        if (!p) die("out of memory");
        l->ids = p;
    }
    l->ids[l->n++] = id;
}

/* byte-level BPE of one pre-token: bytes -> ids, then merge the lowest-ranked adjacent pair (leftmost) until none */
static void bpe_word(const Tokenizer *tk, const unsigned char *s, size_t n, IdList *out, int *sym) {
    int k = 0;
    for (size_t i = 0; i < n; i++)
        if (tk->byte_ids[s[i]] >= 0) sym[k++] = tk->byte_ids[s[i]]; /* a byte without a token is dropped */
    for (;;) {
        int best = -1, best_rank = INT32_MAX, merged = 0;
        for (int i = 0; i + 1 < k; i++) {
            const MergeSlot *m = merge_find(tk, sym[i], sym[i + 1]);
            if (m && m->rank < best_rank) { best_rank = m->rank; best = i; merged = m->merged; }
        }
        if (best < 0) break;
        sym[best] = merged;
        memmove(sym + best + 1, sym + best + 2, (size_t)(k - best - 2) * sizeof(int));
        k--;
    }
    for (int i = 0; i < k; i++) ids_push(out, sym[i]);
}

/* the GPT-2 pre-tokeniser regex, hand-written:
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+            */
static void pretokenise_bpe(const Tokenizer *tk, const unsigned char *s, size_t n, IdList *out) {
    uint32_t *cp = xcalloc(n + 1, sizeof(uint32_t));
    size_t *at = xcalloc(n + 2, sizeof(size_t)); /* byte offset of each code point */
    int *sym = xcalloc(n + 1, sizeof(int));
    size_t m = 0;
    for (size_t i = 0; i < n; m++) {
        int len = utf8_next(s, n, i, &cp[m]);
        if (!len) die("the prompt is not valid UTF-8 (byte %zu)", i);
        at[m] = i;
        i += len;
    }
    at[m] = n;
#define CP(j) ((j) < m ? cp[j] : 0xFFFFFFFFu)
#define KIND(c) ((c) == 0xFFFFFFFFu ? 0 : is_space(c) ? 1 : is_letter(c) ? 2 : is_number(c) ? 3 : 4)
    size_t pos = 0;
    while (pos < m) {
        size_t start = pos;
        uint32_t c = cp[pos], c1 = CP(pos + 1), c2 = CP(pos + 2);
        if (c == '\'' && (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')) {
            pos += 2;
        } else if (c == '\'' && ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))) {
            pos += 3;
        } else {
            int k = KIND(c == ' ' ? c1 : c);
            if (k >= 2) { /*  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+ */
                pos += (c == ' ') + 1;
                while (pos < m && KIND(cp[pos]) == k) pos++;
            } else {
                size_t w = 0;
                while (pos + w < m && is_space(cp[pos + w])) w++;
                if (w > 1 && pos + w < m) pos += w - 1; /* \s+(?!\S): leave the last space to the next word */
                else pos += w ? w : 1;                  /* \s+ (w == 0 cannot happen: every char has a kind) */
            }
        }
        bpe_word(tk, s + at[start], at[pos] - at[start], out, sym);
    }
#undef CP
#undef KIND
    free(cp);
    free(at);
    free(sym);
}

/* the tokenizer: added (special) tokens are split out of the raw text first (leftmost, longest), then each
 * piece is pre-tokenised and BPE'd. No BOS/EOS is added (the base tokenizer adds none). */
static void tokenize(const Tokenizer *tk, const char *text, IdList *out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text), piece = 0, i = 0;
    while (i < n) {
        int hit = -1;
        if (tk->n_specials)
            for (int k = 0; k < tk->n_specials; k++) {
                Str t = tk->tokens[tk->specials[k]];
                if (t.n <= n - i && memcmp(s + i, t.p, t.n) == 0) { hit = tk->specials[k]; break; }
            }
        if (hit < 0) { i++; continue; }
        if (i > piece) pretokenise_bpe(tk, s + piece, i - piece, out);
        ids_push(out, hit);
        i += tk->tokens[hit].n;
        piece = i;
    }
    if (n > piece) pretokenise_bpe(tk, s + piece, n - piece, out);
}

/* the text of one token as `tokenizer.decode([id]).strip()` shows it; byte-level tokens map back to bytes and
 * invalid UTF-8 becomes U+FFFD. Writes the text into buf, NUL-terminated, and returns its length (the text itself
 * may hold a NUL: token "\0"). */
static size_t token_text(const Tokenizer *tk, int id, char *buf, size_t cap) {
    static int inverse[324], ready;
    if (!ready) {
        int extra = 0;
        for (int b = 0; b < 256; b++) {
            int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            inverse[keep ? b : 256 + extra++] = b;
        }
        ready = 1;
    }
    unsigned char raw[1024];
    size_t n = 0;
    Str t = tk->tokens[id];
    if (tk->special[id]) {
        n = t.n < sizeof raw ? t.n : sizeof raw;
        memcpy(raw, t.p, n);
    } else {
        for (size_t i = 0; i < t.n && n < sizeof raw;) {
            uint32_t c;
            int len = utf8_next((const unsigned char *)t.p, t.n, i, &c);
            if (!len) { i++; continue; }
            i += len;
            raw[n++] = c < 324 ? (unsigned char)inverse[c] : '?';
        }
    }
    /* lossy UTF-8 (one U+FFFD per invalid sequence), then strip whitespace at both ends */
    uint32_t cps[1024];
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        int len = utf8_next(raw, n, i, &c);
        if (len) { cps[m++] = c; i += len; continue; }
        cps[m++] = 0xFFFD;
        unsigned lead = raw[i];
        int want = (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 1;
        i++;
        for (int k = 1; k < want && i < n && (raw[i] & 0xc0) == 0x80; k++) i++;
    }
    size_t a = 0, b = m;
    while (a < b && py_isspace(cps[a])) a++;
    while (b > a && py_isspace(cps[b - 1])) b--;
    size_t o = 0;
    for (size_t i = a; i < b && o + 5 < cap; i++) {
        uint32_t c = cps[i];
        if (c < 0x80) buf[o++] = (char)c;
        else if (c < 0x800) { buf[o++] = (char)(0xc0 | c >> 6); buf[o++] = (char)(0x80 | (c & 0x3f)); }
        else if (c < 0x10000) { buf[o++] = (char)(0xe0 | c >> 12); buf[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
                                buf[o++] = (char)(0x80 | (c & 0x3f)); }
        else { buf[o++] = (char)(0xf0 | c >> 18); buf[o++] = (char)(0x80 | ((c >> 12) & 0x3f));
               buf[o++] = (char)(0x80 | ((c >> 6) & 0x3f)); buf[o++] = (char)(0x80 | (c & 0x3f)); }
    }
    buf[o] = 0;
    return o;
}

/* ------------------------------------------------------------------------------------------ the model */

typedef struct {
    const float *attn_norm, *ffn_norm;
    Mat q, k, v, o, gate, up, down;
    const float *bq, *bk, *bv, *bo, *bgate, *bup, *bdown;
} LlamaLayer;

typedef struct {
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b, *attn_in_b, *attn_out_b, *ffn_up_b, *ffn_down_b;
    Mat attn_in, attn_out, ffn_up, ffn_down;
} CoreLayer;

typedef struct {
    /* base */
    int d, n_layers, n_heads, n_kv, head_dim, ffn, max_positions, vocab;
    float rms_eps, rope_theta;
    Mat embed;
    LlamaLayer *layers;
    const float *out_norm;
    int n_loop_layers; /* loop_layers: base blocks (LoRA merged) run in the loop before the core */
    LlamaLayer *loop_layers;
    /* head */
    Mat lm_head;
    const float *head_norm, *halt_row;
    float head_eps;
    /* loop */
    int lifeline; /* 0 none, 1 scalar, 2 vector */
    int loop_pos; /* 0 none, 1 rope, 2 learned */
    int max_loops_table, scratch, bridge_rank;
    const float *gate, *pos_embd, *scratchpad, *loop_norm;
    float loop_eps, loop_rope_base;
    Mat bridge_down, bridge_up;
    /* core */
    int core; /* 1 mamba2, 2 transformer */
    int cw;   /* the core's width: d, or k < d between core.down (d -> k) and core.up (k -> d) (core_dim=k) */
    int narrow;
    Mat core_down, core_up;
    const float *core_norm_w, *core_norm_b;
    float core_eps;
    /* mamba2 */
    int m_heads, m_hd, m_state, m_groups, m_conv, m_inner, m_convdim, m_proj;
    float ssm_eps, dt_min, dt_max;
    Mat in_proj, out_proj;
    const float *in_proj_b, *out_proj_b, *conv_w, *conv_b, *dt_bias, *A_log, *Dp, *ssm_norm;
    /* transformer */
    int t_layers, t_heads, t_ffn;
    CoreLayer *tl;
    Mat t_out;
} Model;

static int max_i(int a, int b) { return a > b ? a : b; }

/* the tensors of one Llama block, named PREFIX.I.attn_q.weight etc. */
static void load_llama_layer(const Model *M, const Gguf *g, const char *prefix, int i, LlamaLayer *L) {
    int d = M->d, qd = M->n_heads * M->head_dim, kvd = M->n_kv * M->head_dim;
    char name[128];
#define NM(fmt, ...) (snprintf(name, sizeof name, fmt, prefix, __VA_ARGS__), name)
    L->attn_norm = get_f32(g, NM("%s.%d.attn_norm.weight", i), d);
    L->ffn_norm = get_f32(g, NM("%s.%d.ffn_norm.weight", i), d);
    L->q = get_mat(g, NM("%s.%d.attn_q.weight", i), qd, d);
    L->k = get_mat(g, NM("%s.%d.attn_k.weight", i), kvd, d);
    L->v = get_mat(g, NM("%s.%d.attn_v.weight", i), kvd, d);
    L->o = get_mat(g, NM("%s.%d.attn_output.weight", i), d, qd);
    L->gate = get_mat(g, NM("%s.%d.ffn_gate.weight", i), M->ffn, d);
    L->up = get_mat(g, NM("%s.%d.ffn_up.weight", i), M->ffn, d);
    L->down = get_mat(g, NM("%s.%d.ffn_down.weight", i), d, M->ffn);
    L->bq = opt_f32(g, NM("%s.%d.attn_q.bias", i), qd);
    L->bk = opt_f32(g, NM("%s.%d.attn_k.bias", i), kvd);
    L->bv = opt_f32(g, NM("%s.%d.attn_v.bias", i), kvd);
    L->bo = opt_f32(g, NM("%s.%d.attn_output.bias", i), d);
    L->bgate = opt_f32(g, NM("%s.%d.ffn_gate.bias", i), M->ffn);
    L->bup = opt_f32(g, NM("%s.%d.ffn_up.bias", i), M->ffn);
    L->bdown = opt_f32(g, NM("%s.%d.ffn_down.bias", i), d);
#undef NM
}

static void model_load(Model *M, const Gguf *g) {
    if (!str_eq(meta_str(g, "general.architecture"), "rlf"))
        die("%s: general.architecture is not rlf; this runtime runs files written by `rlf export`", g_file);
    uint32_t v = meta_u32(g, "rlf.format_version");
    if (v != FORMAT_VERSION) die("%s: rlf.format_version %u; this runtime reads version %d (re-export the run)",
                                 g_file, v, FORMAT_VERSION);
    if (!str_eq(meta_str(g, "rlf.base.arch"), "llama")) die("%s: rlf.base.arch is not llama", g_file);
    int d = M->d = meta_u32(g, "rlf.base.d_model");
    M->n_layers = meta_u32(g, "rlf.base.n_layers");
    M->n_heads = meta_u32(g, "rlf.base.n_heads");
    M->n_kv = meta_u32(g, "rlf.base.n_kv_heads");
    M->head_dim = meta_u32(g, "rlf.base.head_dim");
    M->ffn = meta_u32(g, "rlf.base.ffn_dim");
    M->max_positions = meta_u32(g, "rlf.base.max_positions");
    M->vocab = meta_u32(g, "rlf.vocab_size");
    M->rms_eps = meta_f32(g, "rlf.base.rms_eps");
    M->rope_theta = meta_f32(g, "rlf.base.rope_theta");
    if (d < 1 || d > 65536 || M->n_layers < 1 || M->n_layers > 1024 || M->n_heads < 1 || M->n_kv < 1 ||
        M->n_heads % M->n_kv || M->head_dim < 2 || M->head_dim % 2 || M->ffn < 1 || M->vocab < 1 ||
        M->vocab > (1 << 24) || M->head_dim > 4096 || M->n_heads > 4096)
        die("%s: implausible base dimensions in the metadata", g_file);
    int qd = M->n_heads * M->head_dim;
    M->embed = get_mat(g, "token_embd.weight", M->vocab, d);
    M->out_norm = get_f32(g, "output_norm.weight", d);
    M->layers = xcalloc(M->n_layers, sizeof(LlamaLayer));
    for (int i = 0; i < M->n_layers; i++) load_llama_layer(M, g, "blk", i, &M->layers[i]);
    M->n_loop_layers = meta_u32(g, "rlf.loop.layers");
    if (M->n_loop_layers > 1024) die("%s: rlf.loop.layers is implausible", g_file);
    M->loop_layers = xcalloc(M->n_loop_layers, sizeof(LlamaLayer));
    for (int i = 0; i < M->n_loop_layers; i++) load_llama_layer(M, g, "loop_blk", i, &M->loop_layers[i]);
    char name[128];
#define NM(fmt, ...) (snprintf(name, sizeof name, fmt, __VA_ARGS__), name)
    M->lm_head = meta_u32(g, "rlf.head.tied") ? M->embed : get_mat(g, "head.output.weight", M->vocab, d);
    M->head_norm = get_f32(g, "head.norm.weight", d);
    M->halt_row = get_f32(g, "head.halt.weight", d);
    M->head_eps = meta_f32(g, "rlf.head.norm_eps");

    Str lifeline = meta_str(g, "rlf.loop.lifeline"), pos = meta_str(g, "rlf.loop.pos");
    M->lifeline = str_eq(lifeline, "vector") ? 2 : str_eq(lifeline, "scalar") ? 1 : str_eq(lifeline, "none") ? 0 : -1;
    M->loop_pos = str_eq(pos, "rope") ? 1 : str_eq(pos, "learned") ? 2 : str_eq(pos, "none") ? 0 : -1;
    if (M->lifeline < 0) die("%s: rlf.loop.lifeline %.*s is not vector, scalar or none", g_file, (int)lifeline.n, lifeline.p);
    if (M->loop_pos < 0) die("%s: rlf.loop.pos %.*s is not rope, learned or none", g_file, (int)pos.n, pos.p);
    if (M->lifeline) M->gate = get_f32(g, "loop.gate", M->lifeline == 2 ? d : 1);
    M->max_loops_table = meta_u32(g, "rlf.loop.max_loops");
    if (M->loop_pos == 2) {
        if (M->max_loops_table < 1 || M->max_loops_table > (1 << 20)) die("%s: rlf.loop.max_loops is implausible", g_file);
        M->pos_embd = get_f32(g, "loop.pos_embd", (uint64_t)M->max_loops_table * d);
    }
    M->scratch = meta_u32(g, "rlf.loop.scratchpad");
    if (M->scratch > (1 << 16)) die("%s: rlf.loop.scratchpad is implausible", g_file);
    if (M->scratch) M->scratchpad = get_f32(g, "loop.scratchpad", (uint64_t)M->scratch * d);
    M->bridge_rank = meta_u32(g, "rlf.loop.bridge_rank");
    if (M->bridge_rank > 65536) die("%s: rlf.loop.bridge_rank is implausible", g_file);
    if (M->bridge_rank) {
        M->bridge_down = get_mat(g, "loop.bridge_down.weight", M->bridge_rank, d);
        M->bridge_up = get_mat(g, "loop.bridge_up.weight", d, M->bridge_rank);
    }
    M->loop_norm = get_f32(g, "loop.norm.weight", d);
    M->loop_eps = meta_f32(g, "rlf.loop.norm_eps");
    M->loop_rope_base = meta_f32(g, "rlf.loop.rope_base");

    Str core = meta_str(g, "rlf.core.kind");
    M->core_eps = meta_f32(g, "rlf.core.norm_eps");
    int cw = M->cw = meta_u32(g, "rlf.core.width");
    if (cw < 1 || cw > d) die("%s: rlf.core.width %d is not in 1..%d", g_file, cw, d);
    M->narrow = has_tensor(g, "core.down.weight");
    if (M->narrow) {
        M->core_down = get_mat(g, "core.down.weight", cw, d);
        M->core_up = get_mat(g, "core.up.weight", d, cw);
    } else if (cw != d) {
        die("%s: rlf.core.width %d differs from d_model %d but core.down.weight is missing", g_file, cw, d);
    }
    int widest = max_i(max_i(d, M->ffn), qd);
    if (str_eq(core, "mamba2")) {
        M->core = 1;
        M->m_heads = meta_u32(g, "rlf.core.n_heads");
        M->m_hd = meta_u32(g, "rlf.core.head_dim");
        M->m_state = meta_u32(g, "rlf.core.d_state");
        M->m_groups = meta_u32(g, "rlf.core.n_groups");
        M->m_conv = meta_u32(g, "rlf.core.conv_kernel");
        M->ssm_eps = meta_f32(g, "rlf.core.ssm_norm_eps");
        M->dt_min = meta_f32(g, "rlf.core.dt_min");
        M->dt_max = meta_f32(g, "rlf.core.dt_max");
        if (M->m_heads < 1 || M->m_heads > 4096 || M->m_hd < 1 || M->m_hd > 4096 || M->m_state < 1 ||
            M->m_state > 4096 || M->m_groups < 1 || M->m_heads % M->m_groups || M->m_conv < 1 || M->m_conv > 64)
            die("%s: implausible Mamba2 core dimensions in the metadata", g_file);
        M->m_inner = M->m_heads * M->m_hd;
        M->m_convdim = M->m_inner + 2 * M->m_groups * M->m_state;
        M->m_proj = M->m_inner + M->m_convdim + M->m_heads;
        M->core_norm_w = get_f32(g, "core.norm.weight", cw);
        M->in_proj = get_mat(g, "core.in_proj.weight", M->m_proj, cw);
        M->in_proj_b = opt_f32(g, "core.in_proj.bias", M->m_proj);
        M->conv_w = get_f32(g, "core.conv1d.weight", (uint64_t)M->m_convdim * M->m_conv);
        M->conv_b = opt_f32(g, "core.conv1d.bias", M->m_convdim);
        M->dt_bias = get_f32(g, "core.dt_bias", M->m_heads);
        M->A_log = get_f32(g, "core.A_log", M->m_heads);
        M->Dp = get_f32(g, "core.D", M->m_heads);
        M->ssm_norm = get_f32(g, "core.ssm_norm.weight", M->m_inner);
        M->out_proj = get_mat(g, "core.out_proj.weight", cw, M->m_inner);
        M->out_proj_b = opt_f32(g, "core.out_proj.bias", cw);
        widest = max_i(widest, M->m_inner);
    } else if (str_eq(core, "transformer")) {
        M->core = 2;
        M->t_layers = meta_u32(g, "rlf.core.n_layers");
        M->t_heads = meta_u32(g, "rlf.core.n_heads");
        M->t_ffn = meta_u32(g, "rlf.core.ffn_dim");
        if (M->t_layers < 1 || M->t_layers > 256 || M->t_heads < 1 || cw % M->t_heads || M->t_ffn < 1)
            die("%s: implausible Transformer core dimensions in the metadata", g_file);
        M->tl = xcalloc(M->t_layers, sizeof(CoreLayer));
        for (int i = 0; i < M->t_layers; i++) {
            CoreLayer *L = &M->tl[i];
            L->norm1_w = get_f32(g, NM("core.layers.%d.norm1.weight", i), cw);
            L->norm1_b = get_f32(g, NM("core.layers.%d.norm1.bias", i), cw);
            L->norm2_w = get_f32(g, NM("core.layers.%d.norm2.weight", i), cw);
            L->norm2_b = get_f32(g, NM("core.layers.%d.norm2.bias", i), cw);
            L->attn_in = get_mat(g, NM("core.layers.%d.attn_in.weight", i), 3 * cw, cw);
            L->attn_in_b = get_f32(g, NM("core.layers.%d.attn_in.bias", i), 3 * cw);
            L->attn_out = get_mat(g, NM("core.layers.%d.attn_out.weight", i), cw, cw);
            L->attn_out_b = get_f32(g, NM("core.layers.%d.attn_out.bias", i), cw);
            L->ffn_up = get_mat(g, NM("core.layers.%d.ffn_up.weight", i), M->t_ffn, cw);
            L->ffn_up_b = get_f32(g, NM("core.layers.%d.ffn_up.bias", i), M->t_ffn);
            L->ffn_down = get_mat(g, NM("core.layers.%d.ffn_down.weight", i), cw, M->t_ffn);
            L->ffn_down_b = get_f32(g, NM("core.layers.%d.ffn_down.bias", i), cw);
        }
        M->core_norm_w = get_f32(g, "core.norm.weight", cw);
        M->core_norm_b = get_f32(g, "core.norm.bias", cw);
        M->t_out = get_mat(g, "core.out_proj.weight", cw, cw);
        widest = max_i(widest, M->t_ffn);
    } else {
        die("%s: rlf.core.kind %.*s is not supported; this runtime runs the mamba2 and transformer cores", g_file,
            (int)core.n, core.p);
    }
#undef NM
    widest = max_i(widest, M->bridge_rank);
    g_rowbuf = xcalloc(4 * (size_t)widest, sizeof(float));
    init_f16();
}

/* buffers of Llama blocks over T positions, and the rotary tables of positions 0..T-1 */
typedef struct { float *xn, *q, *k, *v, *att, *tmp, *h1, *h2, *scores, *cosv, *sinv; } LlamaBufs;

static LlamaBufs llama_bufs(const Model *M, int T) {
    int d = M->d, hd = M->head_dim, qd = M->n_heads * hd, kvd = M->n_kv * hd;
    LlamaBufs b = {xcalloc((size_t)T * d, 4), xcalloc((size_t)T * qd, 4), xcalloc((size_t)T * kvd, 4),
                   xcalloc((size_t)T * kvd, 4), xcalloc((size_t)T * qd, 4), xcalloc((size_t)T * d, 4),
                   xcalloc((size_t)T * M->ffn, 4), xcalloc((size_t)T * M->ffn, 4), xcalloc(T, 4),
                   xcalloc((size_t)T * hd / 2, 4), xcalloc((size_t)T * hd / 2, 4)};
    for (int t = 0; t < T; t++) /* rotate_half rotary embedding, as transformers' Llama: pairs (i, i + hd/2) */
        for (int i = 0; i < hd / 2; i++) {
            float inv = 1.0f / powf(M->rope_theta, (float)(2 * i) / (float)hd), a = (float)t * inv;
            b.cosv[t * hd / 2 + i] = cosf(a);
            b.sinv[t * hd / 2 + i] = sinf(a);
        }
    return b;
}
static void free_llama_bufs(LlamaBufs *b) {
    free(b->xn); free(b->q); free(b->k); free(b->v); free(b->att); free(b->tmp); free(b->h1); free(b->h2);
    free(b->scores); free(b->cosv); free(b->sinv);
}

/* one Llama block on x (T, d), causal, positions 0..T-1: x += attn(norm(x)); x += mlp(norm(x)) */
static void llama_block(const Model *M, const LlamaLayer *L, float *x, int T, LlamaBufs *b) {
    int d = M->d, hd = M->head_dim, qd = M->n_heads * hd, kvd = M->n_kv * hd, group = M->n_heads / M->n_kv;
    for (int t = 0; t < T; t++) rmsnorm(b->xn + (size_t)t * d, x + (size_t)t * d, L->attn_norm, d, M->rms_eps);
    matmul(b->q, b->xn, T, L->q, L->bq);
    matmul(b->k, b->xn, T, L->k, L->bk);
    matmul(b->v, b->xn, T, L->v, L->bv);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < M->n_heads + M->n_kv; h++) {
            float *p = h < M->n_heads ? b->q + (size_t)t * qd + h * hd : b->k + (size_t)t * kvd + (h - M->n_heads) * hd;
            for (int i = 0; i < hd / 2; i++) {
                float c = b->cosv[t * hd / 2 + i], s = b->sinv[t * hd / 2 + i], u = p[i], w = p[i + hd / 2];
                p[i] = u * c - w * s;
                p[i + hd / 2] = w * c + u * s;
            }
        }
    for (int h = 0; h < M->n_heads; h++) /* grouped-query: query head h reads key-value head h / group */
        attend(b->att + h * hd, b->q + h * hd, b->k + (h / group) * hd, b->v + (h / group) * hd, T, hd, qd, kvd, qd,
               b->scores);
    matmul(b->tmp, b->att, T, L->o, L->bo);
    for (size_t i = 0; i < (size_t)T * d; i++) x[i] += b->tmp[i];
    for (int t = 0; t < T; t++) rmsnorm(b->xn + (size_t)t * d, x + (size_t)t * d, L->ffn_norm, d, M->rms_eps);
    matmul(b->h1, b->xn, T, L->gate, L->bgate);
    matmul(b->h2, b->xn, T, L->up, L->bup);
    for (size_t i = 0; i < (size_t)T * M->ffn; i++) b->h1[i] = silu(b->h1[i]) * b->h2[i];
    matmul(b->tmp, b->h1, T, L->down, L->bdown);
    for (size_t i = 0; i < (size_t)T * d; i++) x[i] += b->tmp[i];
}

/* the base encoder: embeddings -> n_layers Llama blocks -> final norm; out is (T, d) */
static void encode(const Model *M, const int *ids, int T, float *out) {
    int d = M->d;
    LlamaBufs b = llama_bufs(M, T);
    for (int t = 0; t < T; t++) {
        const float *row = mat_row(M->embed, ids[t], g_rowbuf);
        memcpy(out + (size_t)t * d, row, d * sizeof(float));
    }
    for (int l = 0; l < M->n_layers; l++) llama_block(M, &M->layers[l], out, T, &b);
    for (int t = 0; t < T; t++) rmsnorm(out + (size_t)t * d, out + (size_t)t * d, M->out_norm, d, M->rms_eps);
    free_llama_bufs(&b);
}

/* every buffer the loop needs for a sequence of S rows, allocated once per prompt */
typedef struct { float *xn, *upd, *big, *big2, *state, *y, *att, *scores, *logits, *hv, *hb, *xc, *upd_d; } LoopBufs;

static LoopBufs loop_bufs(const Model *M, int S) {
    LoopBufs b;
    size_t d = M->d, wide = M->core == 1 ? (size_t)M->m_proj : (size_t)max_i(3 * M->d, M->t_ffn);
    b.xn = xcalloc(S * d, 4);
    b.upd = xcalloc(S * d, 4);
    b.big = xcalloc(S * wide, 4);
    b.big2 = xcalloc(S * (M->core == 1 ? (size_t)M->m_convdim : d), 4);
    b.state = M->core == 1 ? xcalloc((size_t)M->m_heads * M->m_hd * M->m_state, 4) : NULL; /* (H, P, N) */
    b.y = xcalloc(S * (M->core == 1 ? (size_t)M->m_inner : d), 4);
    b.xc = M->narrow ? xcalloc(S * d, 4) : NULL; /* the narrow core's input and the update brought back to d */
    b.upd_d = M->narrow ? xcalloc(S * d, 4) : NULL;
    b.att = xcalloc(S * d, 4);
    b.scores = xcalloc(S, 4);
    b.logits = xcalloc(M->vocab + 1, 4);
    b.hv = xcalloc(d, 4);
    b.hb = xcalloc(max_i(M->bridge_rank, 1), 4);
    return b;
}
static void free_bufs(LoopBufs *b) {
    free(b->xn); free(b->upd); free(b->big); free(b->big2); free(b->state); free(b->y); free(b->att);
    free(b->scores); free(b->logits); free(b->hv); free(b->hb); free(b->xc); free(b->upd_d);
}

/* Mamba2 core: upd = out_proj(gated_norm(ssm(conv(in_proj(norm(x)))))) with the scan as a recurrence over S:
 *   state_t = exp(A dt_t) state_{t-1} + dt_t x_t B_t^T,  y_t = state_t C_t + D x_t       (per head; O(1) memory) */
static void mamba2_core(const Model *M, const float *x, int S, LoopBufs *b) {
    int d = M->cw, H = M->m_heads, P = M->m_hd, N = M->m_state, G = M->m_groups, K = M->m_conv, DI = M->m_inner;
    int CD = M->m_convdim, PR = M->m_proj, hpg = H / G;
    for (int t = 0; t < S; t++) rmsnorm(b->xn + (size_t)t * d, x + (size_t)t * d, M->core_norm_w, d, M->core_eps);
    matmul(b->big, b->xn, S, M->in_proj, M->in_proj_b); /* (S, [z: DI | xBC: CD | dt: H]) */
    float *xbc = b->big2;
    for (int t = 0; t < S; t++) /* causal depthwise conv over time, then SiLU */
        for (int c = 0; c < CD; c++) {
            float acc = M->conv_b ? M->conv_b[c] : 0.0f;
            for (int k = 0; k < K; k++) {
                int tt = t - (K - 1) + k;
                if (tt >= 0) acc += M->conv_w[(size_t)c * K + k] * b->big[(size_t)tt * PR + DI + c];
            }
            xbc[(size_t)t * CD + c] = silu(acc);
        }
    memset(b->state, 0, (size_t)H * P * N * sizeof(float));
    for (int t = 0; t < S; t++) {
        const float *xt = xbc + (size_t)t * CD;
        for (int h = 0; h < H; h++) {
            float dt = softplus(b->big[(size_t)t * PR + DI + CD + h] + M->dt_bias[h]);
            dt = dt < M->dt_min ? M->dt_min : dt > M->dt_max ? M->dt_max : dt;
            float dA = expf(dt * -expf(M->A_log[h]));
            const float *B = xt + DI + (h / hpg) * N, *C = xt + DI + G * N + (h / hpg) * N;
            for (int p = 0; p < P; p++) {
                float xv = xt[h * P + p], *st = b->state + ((size_t)h * P + p) * N, yv = 0.0f;
                for (int n = 0; n < N; n++) {
                    st[n] = st[n] * dA + dt * xv * B[n];
                    yv += st[n] * C[n];
                }
                b->y[(size_t)t * DI + h * P + p] = yv + M->Dp[h] * xv;
            }
        }
        float *y = b->y + (size_t)t * DI;
        const float *z = b->big + (size_t)t * PR;
        for (int i = 0; i < DI; i++) y[i] *= silu(z[i]);
        for (int gi = 0; gi < G; gi++) { /* RMSNorm per group of DI / G channels */
            int gs = DI / G;
            float *yg = y + gi * gs;
            rmsnorm(yg, yg, M->ssm_norm + gi * gs, gs, M->ssm_eps);
        }
    }
    matmul(b->upd, b->y, S, M->out_proj, M->out_proj_b);
}

/* 2-layer pre-norm causal Transformer core (torch's TransformerEncoderLayer, norm_first, GELU), then
 * LayerNorm and out_proj */
static void transformer_core(const Model *M, const float *x, int S, LoopBufs *b) {
    int d = M->cw, nh = M->t_heads, hd = d / nh;
    float *h = b->y; /* the core's own residual stream (S, d) */
    memcpy(h, x, (size_t)S * d * sizeof(float));
    for (int l = 0; l < M->t_layers; l++) {
        const CoreLayer *L = &M->tl[l];
        for (int t = 0; t < S; t++) layernorm(b->xn + (size_t)t * d, h + (size_t)t * d, L->norm1_w, L->norm1_b, d, M->core_eps);
        matmul(b->big, b->xn, S, L->attn_in, L->attn_in_b); /* (S, [q | k | v]) */
        for (int hh = 0; hh < nh; hh++)
            attend(b->att + hh * hd, b->big + hh * hd, b->big + d + hh * hd, b->big + 2 * d + hh * hd, S, hd,
                   3 * d, 3 * d, d, b->scores);
        matmul(b->big2, b->att, S, L->attn_out, L->attn_out_b);
        for (size_t i = 0; i < (size_t)S * d; i++) h[i] += b->big2[i];
        for (int t = 0; t < S; t++) layernorm(b->xn + (size_t)t * d, h + (size_t)t * d, L->norm2_w, L->norm2_b, d, M->core_eps);
        matmul(b->big, b->xn, S, L->ffn_up, L->ffn_up_b);
        for (size_t i = 0; i < (size_t)S * M->t_ffn; i++) b->big[i] = gelu(b->big[i]);
        matmul(b->big2, b->big, S, L->ffn_down, L->ffn_down_b);
        for (size_t i = 0; i < (size_t)S * d; i++) h[i] += b->big2[i];
    }
    for (int t = 0; t < S; t++) layernorm(b->xn + (size_t)t * d, h + (size_t)t * d, M->core_norm_w, M->core_norm_b, d, M->core_eps);
    matmul(b->upd, b->xn, S, M->t_out, NULL);
}

typedef struct { int id; float p, p_halt; } LoopOut;

/* the loop on one prompt encoding; returns the number of loops run (the trace ends at the first <HALT>) */
static int solve(const Model *M, const float *xp, int T, int max_loops, int clamp, float gate_scale, LoopOut *out) {
    int d = M->d, K = M->scratch, S = K + T;
    float *x = xcalloc((size_t)S * d, 4);
    LoopBufs b = loop_bufs(M, S);
    LlamaBufs lb;
    if (M->n_loop_layers) lb = llama_bufs(M, S);
    for (int r = 0; r < K; r++) memcpy(x + (size_t)r * d, M->scratchpad + (size_t)r * d, d * sizeof(float));
    memcpy(x + (size_t)K * d, xp, (size_t)T * d * sizeof(float));
    int n = 0;
    for (int i = 0; i < max_loops; i++) {
        int pos = clamp >= 0 && i > clamp ? clamp : i;
        if (M->lifeline) /* x[K + t] += (gate * scale) * x_prompt[t] */
            for (int t = 0; t < T; t++)
                for (int j = 0; j < d; j++)
                    x[(size_t)(K + t) * d + j] += (M->gate[M->lifeline == 2 ? j : 0] * gate_scale) * xp[(size_t)t * d + j];
        if (M->loop_pos == 1) { /* rotary over the loop index: interleaved pairs (2j, 2j+1), angle pos * base^(-2j/d) */
            for (int j = 0; j < d / 2; j++) {
                float inv = powf(M->loop_rope_base, -((float)j * 2.0f / (float)d)), a = (float)pos * inv;
                float c = cosf(a), s = sinf(a);
                for (int r = 0; r < S; r++) {
                    float *p = x + (size_t)r * d + 2 * j, x1 = p[0], x2 = p[1];
                    p[0] = x1 * c - x2 * s;
                    p[1] = x1 * s + x2 * c;
                }
            }
        } else if (M->loop_pos == 2) {
            const float *e = M->pos_embd + (size_t)(pos < M->max_loops_table ? pos : M->max_loops_table - 1) * d;
            for (int r = 0; r < S; r++)
                for (int j = 0; j < d; j++) x[(size_t)r * d + j] += e[j];
        }
        for (int l = 0; l < M->n_loop_layers; l++) llama_block(M, &M->loop_layers[l], x, S, &lb);
        const float *core_in = x, *upd = b.upd;
        if (M->narrow) { /* core_dim: down (d -> k), the core at width k, up (k -> d) */
            matmul(b.xc, x, S, M->core_down, NULL);
            core_in = b.xc;
        }
        if (M->core == 1) mamba2_core(M, core_in, S, &b);
        else transformer_core(M, core_in, S, &b);
        if (M->narrow) {
            matmul(b.upd_d, b.upd, S, M->core_up, NULL);
            upd = b.upd_d;
        }
        for (int r = 0; r < S; r++) {
            float *row = x + (size_t)r * d;
            for (int j = 0; j < d; j++) row[j] += upd[(size_t)r * d + j];
            rmsnorm(row, row, M->loop_norm, d, M->loop_eps);
        }
        /* the head at the answer position (the last prompt token) */
        memcpy(b.hv, x + (size_t)(S - 1) * d, d * sizeof(float));
        if (M->bridge_rank) {
            matmul(b.hb, b.hv, 1, M->bridge_down, NULL);
            matmul(b.xn, b.hb, 1, M->bridge_up, NULL);
            for (int j = 0; j < d; j++) b.hv[j] += b.xn[j];
        }
        rmsnorm(b.hv, b.hv, M->head_norm, d, M->head_eps);
        matmul(b.logits, b.hv, 1, M->lm_head, NULL);
        b.logits[M->vocab] = dot(M->halt_row, b.hv, d);
        int top = 0;
        for (int v = 1; v <= M->vocab; v++)
            if (b.logits[v] > b.logits[top]) top = v;
        double sum = 0.0;
        for (int v = 0; v <= M->vocab; v++) sum += exp((double)b.logits[v] - b.logits[top]);
        out[n].id = top;
        out[n].p = (float)(1.0 / sum);
        out[n].p_halt = (float)(exp((double)b.logits[M->vocab] - b.logits[top]) / sum);
        n++;
        if (top == M->vocab) break;
    }
    free_bufs(&b);
    if (M->n_loop_layers) free_llama_bufs(&lb);
    free(x);
    return n;
}

/* ------------------------------------------------------------------------------------------ the command */

/* this process's peak resident memory: VmHWM on Linux (getrusage's ru_maxrss there keeps the high-water mark
 * of the process that exec'd us, e.g. a Python parent), ru_maxrss elsewhere */
static long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        long kb = -1;
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
        fclose(f);
        if (kb >= 0) return kb;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void usage(void) {
    fprintf(stderr,
            "usage: rlf-run MODEL.gguf [options] PROMPT...\n"
            "  Print the loop-by-loop trace of each prompt (as `rlf solve`): loop, token, p, p(HALT).\n"
            "  --max-loops N      loop limit (default %d); every prompt stops at <HALT>\n"
            "  --loop-clamp C     hold the loop position at loop C (0-based) from then on\n"
            "  --gate-scale S     scale the lifeline gate (0 severs it)\n"
            "  --prompts FILE     read prompts from FILE, one per line (in addition to PROMPT...)\n"
            "  --json             one JSON object per prompt (input ids, token ids, p, p_halt)\n"
            "  --tokenize         print the token ids of each PROMPT as given (no template) and exit\n"
            "  --tokenize-file F  the same for the NUL-separated strings in F, one line of ids each\n"
            "  --decode-all       print every token's text as the trace shows it (a JSON string a line) and exit\n"
            "  --timing           print load/encode/loop times and peak RSS to stderr\n",
            SOLVE_LOOPS);
    exit(2);
}

static long parse_int(const char *flag, const char *s, long lo) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == 0 || *end || v < lo || v > 1000000000L) die("%s %s: must be an integer >= %ld", flag, s, lo);
    return v;
}

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: cannot open (%s)", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = xcalloc(cap, 1);
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            char *p = realloc(buf, cap);
            if (!p) die("out of memory");
            buf = p;
        }
        size_t got = fread(buf + len, 1, cap - 1 - len, f);
        if (!got) break;
        len += got;
    }
    fclose(f);
    buf[len] = 0;
    *n = len;
    return buf;
}

static void json_string(const char *s, size_t n) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; p < (const unsigned char *)s + n; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p == '\n') printf("\\n");
        else if (*p == '\t') printf("\\t");
        else if (*p == '\r') printf("\\r");
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static size_t utf8_width(const char *s, size_t len) { /* code points, as Python's format width counts */
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

static int only_space(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t c;
        int len = utf8_next((const unsigned char *)s, n, i, &c);
        if (!len) die("the prompt is not valid UTF-8 (byte %zu)", i);
        if (!py_isspace(c)) return 0;
        i += len;
    }
    return 1;
}

static char *apply_template(const char *tmpl, const char *prompt) { /* replace every {prompt} */
    size_t np = strlen(prompt), n = 0;
    for (const char *p = tmpl; (p = strstr(p, "{prompt}")); p += 8) n++;
    char *out = xcalloc(strlen(tmpl) + n * np + 1, 1), *o = out;
    for (const char *p = tmpl;;) {
        const char *hit = strstr(p, "{prompt}");
        if (!hit) { strcpy(o, p); break; }
        memcpy(o, p, hit - p); o += hit - p;
        memcpy(o, prompt, np); o += np;
        p = hit + 8;
    }
    return out;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompts_file = NULL, *tokenize_file = NULL;
    int max_loops = SOLVE_LOOPS, clamp = -1, as_json = 0, tokenize_only = 0, timing = 0, decode_all = 0;
    float gate_scale = 1.0f;
    char **prompts = xcalloc(argc + 1, sizeof(char *));
    int n_prompts = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage();
        else if (!strcmp(a, "--max-loops")) { if (!has_value) usage(); max_loops = (int)parse_int(a, argv[++i], 1); }
        else if (!strcmp(a, "--loop-clamp")) { if (!has_value) usage(); clamp = (int)parse_int(a, argv[++i], 0); }
        else if (!strcmp(a, "--gate-scale")) {
            if (!has_value) usage();
            char *end;
            gate_scale = strtof(argv[++i], &end);
            if (*end || !isfinite(gate_scale)) die("--gate-scale %s: must be a number", argv[i]);
        }
        else if (!strcmp(a, "--prompts")) { if (!has_value) usage(); prompts_file = argv[++i]; }
        else if (!strcmp(a, "--tokenize-file")) { if (!has_value) usage(); tokenize_file = argv[++i]; }
        else if (!strcmp(a, "--json")) as_json = 1;
        else if (!strcmp(a, "--tokenize")) tokenize_only = 1;
        else if (!strcmp(a, "--timing")) timing = 1;
        else if (!strcmp(a, "--decode-all")) decode_all = 1;
        else if (a[0] == '-' && a[1] == '-') die("unknown option %s (see --help)", a);
        else if (!model_path) model_path = a;
        else prompts[n_prompts++] = argv[i];
    }
    if (!model_path) usage();
    double t0 = now_s();
    Gguf g;
    gguf_open(&g, model_path);
    Model M;
    memset(&M, 0, sizeof M);
    model_load(&M, &g);
    Tokenizer tk;
    memset(&tk, 0, sizeof tk);
    tokenizer_load(&tk, &g, M.vocab);
    double t_load = now_s() - t0;
    if (clamp >= 0 && M.loop_pos == 0)
        die("--loop-clamp moves the loop position, and this model has none (loop_pos=none)");

    char text[4200];
    if (decode_all) {
        for (int id = 0; id < M.vocab; id++) {
            json_string(text, token_text(&tk, id, text, sizeof text));
            putchar('\n');
        }
        return 0;
    }
    if (tokenize_file || tokenize_only) {
        IdList ids = {0};
        size_t n;
        char *buf = tokenize_file ? read_file(tokenize_file, &n) : NULL;
        for (int k = 0; !tokenize_file && k < n_prompts; k++) {
            ids.n = 0;
            tokenize(&tk, prompts[k], &ids);
            for (int i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
            putchar('\n');
        }
        for (size_t at = 0; tokenize_file && at < n;) { /* strings separated (and ended) by NUL */
            size_t len = strlen(buf + at);
            ids.n = 0;
            tokenize(&tk, buf + at, &ids);
            for (int i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
            putchar('\n');
            at += len + 1;
        }
        return 0;
    }
    if (prompts_file) {
        size_t n;
        char *buf = read_file(prompts_file, &n);
        int lines = 0;
        for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
        prompts = realloc(prompts, (size_t)(n_prompts + lines + 2) * sizeof(char *));
        if (!prompts) die("out of memory");
        int line = 0;
        for (char *p = buf; p < buf + n;) {
            char *nl = strchr(p, '\n');
            if (nl) *nl = 0;
            line++;
            if (!*p || only_space(p)) die("%s:%d: empty prompt", prompts_file, line);
            prompts[n_prompts++] = p;
            if (!nl) break;
            p = nl + 1;
        }
    }
    if (!n_prompts) die("no prompt given: rlf-run MODEL.gguf \"K = moon. P = K. What is P?\"");
    LoopOut *trace = xcalloc(max_loops, sizeof(LoopOut));
    double t_tok = 0, t_enc = 0, t_loop = 0;
    long total_loops = 0;
    for (int k = 0; k < n_prompts; k++) {
        const char *prompt = prompts[k];
        if (only_space(prompt)) die("empty prompt: give the problem text, e.g. \"K = moon. P = K. What is P?\"");
        double a = now_s();
        char *full = apply_template(tk.template_, prompt);
        IdList ids = {0};
        tokenize(&tk, full, &ids);
        free(full);
        if (ids.n == 0) die("the prompt has no tokens");
        if (ids.n > M.max_positions)
            die("prompt of %d tokens is longer than the base's limit of %d: %.60s...", ids.n, M.max_positions, prompt);
        double b = now_s();
        float *xp = xcalloc((size_t)ids.n * M.d, 4);
        encode(&M, ids.ids, ids.n, xp);
        double c = now_s();
        int n = solve(&M, xp, ids.n, max_loops, clamp, gate_scale, trace);
        double e = now_s();
        t_tok += b - a; t_enc += c - b; t_loop += e - c;
        total_loops += n;
        if (as_json) {
            printf("{\"prompt\": ");
            json_string(prompt, strlen(prompt));
            printf(", \"input_ids\": [");
            for (int i = 0; i < ids.n; i++) printf(i ? ", %d" : "%d", ids.ids[i]);
            printf("], \"halted_at\": %d, \"trace\": [", trace[n - 1].id == M.vocab ? n - 1 : -1);
            for (int i = 0; i < n; i++) {
                size_t len = trace[i].id == M.vocab ? strlen(strcpy(text, "<HALT>"))
                                                    : token_text(&tk, trace[i].id, text, sizeof text);
                printf("%s{\"loop\": %d, \"id\": %d, \"token\": ", i ? ", " : "", i + 1, trace[i].id);
                json_string(text, len);
                printf(", \"p\": %.9g, \"p_halt\": %.9g}", trace[i].p, trace[i].p_halt);
            }
            printf("]}\n");
        } else {
            printf("%s\n%4s  %-12s %6s  %7s\n", prompt, "loop", "token", "p", "p(HALT)");
            for (int i = 0; i < n; i++) {
                size_t len = trace[i].id == M.vocab ? strlen(strcpy(text, "<HALT>"))
                                                    : token_text(&tk, trace[i].id, text, sizeof text);
                size_t w = utf8_width(text, len);
                printf("%4d  ", i + 1);
                fwrite(text, 1, len, stdout);
                printf("%*s %6.3f  %7.3f\n", w < 12 ? (int)(12 - w) : 0, "", trace[i].p, trace[i].p_halt);
            }
            printf("\n");
        }
        free(ids.ids);
        free(xp);
    }
    if (timing) {
        fprintf(stderr, "timing: prompts=%d loops=%ld load_s=%.4f tokenize_s=%.4f encode_s=%.4f loop_s=%.4f "
                        "peak_rss_kb=%ld\n", n_prompts, total_loops, t_load, t_tok, t_enc, t_loop, peak_rss_kb());
    }
    return 0;
}
