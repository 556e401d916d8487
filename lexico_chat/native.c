/* lexico-chat's native CPU kernels for decode attention over sparse codes (see native.py).
 *
 * Built at first use by native.py with the system C compiler (-O3 -march=native -fopenmp) and loaded with
 * ctypes; its OpenMP calls run on the libgomp torch has already loaded (same soname), so they share torch's
 * threads; every kernel takes its thread count (torch.get_num_threads() of the caller) as its last argument.
 *
 * Codes as a LexicoLayer stores them: indices packed 12 bits each (two in three bytes) or int16; coefficients
 * float8_e4m3fn, float16, bfloat16 or float32. Every code array is addressed by byte strides over
 * (batch, kv head, token); the last axis (the s entries of one code) is contiguous.
 *
 * lexico_rope_scores: q . R(p_t) k_t for pre-RoPE key codes. Each key is rebuilt from its s atoms (rows of
 * the (N, m) fp32 atom table, each rotation pair side by side), rotated by its token's (cos, sin) with one
 * complex multiply per pair, and dotted with the G query rows of its KV head; nothing of size (T, m) is
 * written. lexico_value_weights: w[g, n] = sum_t p[g, t] * sum_j coef[t, j] [idx[t, j] == n], the attention
 * weights of compressed values in atom space (the caller multiplies w by the value atoms).
 */
#include <stdint.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#define MAX_DIM 256    /* head_dim and s at most this, head_dim a multiple of 8 (checked by the caller) */
#define TOKEN_BLOCK 256 /* tokens per parallel task of the scores kernel */

enum { CODE_FP8 = 0, CODE_FP16 = 1, CODE_BF16 = 2, CODE_FP32 = 3 };

static float fp8_table[256];

/* float8_e4m3fn -> float for every byte (NaN is never stored: the coder saturates). */
void lexico_init(void) {
    for (int byte = 0; byte < 256; byte++) {
        int exponent = (byte >> 3) & 0xF, mantissa = byte & 7;
        float magnitude = exponent ? (1.0f + mantissa / 8.0f) : mantissa / 8.0f;
        int shift = exponent ? exponent - 7 : -6;
        for (; shift > 0; shift--) magnitude *= 2.0f;
        for (; shift < 0; shift++) magnitude *= 0.5f;
        fp8_table[byte] = (byte & 0x80) ? -magnitude : magnitude;
    }
}

/* n elements of one kind as floats, one vectorisable loop per kind. */
static inline void widen(const uint8_t *p, int kind, int n, float *out) {
    if (kind == CODE_FP16) {
        int i = 0;
#ifdef __F16C__ /* eight at a time in hardware (gcc converts _Float16 one by one in software) */
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
#endif
        const _Float16 *x = (const _Float16 *)p;
        for (; i < n; i++) out[i] = (float)x[i];
    } else if (kind == CODE_FP32) {
        memcpy(out, p, sizeof(float) * (size_t)n);
    } else if (kind == CODE_FP8) {
        for (int i = 0; i < n; i++) out[i] = fp8_table[p[i]];
    } else {
        const uint16_t *x = (const uint16_t *)p;
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)x[i] << 16;
            memcpy(out + i, &u, 4);
        }
    }
}

/* One code: s indices (12-bit packed or int16) and s coefficients as int32 / float. */
static inline void load_code(const uint8_t *idx, int index_bits, const uint8_t *coef, int coef_kind, int s,
                             int32_t *ix, float *cf) {
    if (index_bits == 12) {
        for (int j = 0; j < s; j += 2) {
            const uint8_t *p = idx + 3 * (j / 2);
            ix[j] = p[0] | ((p[1] & 0xF) << 8);
            if (j + 1 < s) ix[j + 1] = (p[1] >> 4) | (p[2] << 4);
        }
    } else {
        for (int j = 0; j < s; j++) {
            uint16_t v;
            memcpy(&v, idx + 2 * j, 2);
            ix[j] = v;
        }
    }
    widen(coef, coef_kind, s, cf);
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4))); /* unaligned loads and stores */
typedef int v8i __attribute__((vector_size(32)));

/* The codes of one (batch, head): token t's indices at idx + t * i_st, coefficients at coef + t * c_st. */
typedef struct {
    const uint8_t *idx, *coef;
    int64_t i_st, c_st;
    int index_bits, coef_kind, s;
} Codes;

static inline Codes codes_at(const uint8_t *idx, int64_t i_sb, int64_t i_sh, int64_t i_st, int index_bits,
                             const uint8_t *coef, int64_t c_sb, int64_t c_sh, int64_t c_st, int coef_kind, int s,
                             int b, int h) {
    Codes c = {idx + b * i_sb + h * i_sh, coef + b * c_sb + h * c_sh, i_st, c_st, index_bits, coef_kind, s};
    return c;
}

/* Token t's vector rebuilt from its atoms (rows of the (N, m) table) into vec (m / 8 vectors); rotated by its
 * (cos, sin) pairs, side by side at turn, when turn is not NULL. m is a multiple of 8 (a constant where
 * inlined). */
static inline __attribute__((always_inline)) void build_vector(const Codes *codes, int t, const float *atoms,
                                                               const uint8_t *turn, int turn_kind, const int m,
                                                               v8 *vec) {
    const v8i pick_cos = {0, 0, 2, 2, 4, 4, 6, 6}, pick_sin = {1, 1, 3, 3, 5, 5, 7, 7};
    const v8i swap = {1, 0, 3, 2, 5, 4, 7, 6};
    const v8 sign = {-1, 1, -1, 1, -1, 1, -1, 1};
    const int lanes = m / 8, s = codes->s;
    int32_t ix[MAX_DIM];
    float cf[MAX_DIM], cs[MAX_DIM];
    load_code(codes->idx + t * codes->i_st, codes->index_bits, codes->coef + t * codes->c_st, codes->coef_kind, s,
              ix, cf);
    const v8u *first = (const v8u *)(atoms + (int64_t)ix[0] * m);
    for (int v = 0; v < lanes; v++) vec[v] = cf[0] * first[v];
    for (int j = 1; j < s; j++) {
        const v8u *atom = (const v8u *)(atoms + (int64_t)ix[j] * m);
        const float c = cf[j];
        for (int v = 0; v < lanes; v++) vec[v] += c * atom[v];
    }
    if (!turn) return;
    widen(turn, turn_kind, m, cs); /* cos_i, sin_i side by side, as the vector's pairs */
    for (int v = 0; v < lanes; v++) {
        const v8 pairs = *(const v8u *)(cs + 8 * v), k = vec[v];
        vec[v] = k * __builtin_shuffle(pairs, pick_cos) + __builtin_shuffle(k, swap) * __builtin_shuffle(pairs, pick_sin) * sign;
    }
}

/* Scores of G query rows (qh, rows of m) against tokens start..stop: out[g * o_sg + t]. */
static inline __attribute__((always_inline)) void score_block(const Codes *codes, const float *atoms,
                                                              const uint8_t *turns, int64_t r_st, int turn_kind,
                                                              const float *qh, float *oh, int64_t o_sg, int G,
                                                              int start, int stop, const int m) {
    v8 key[MAX_DIM / 8];
    for (int t = start; t < stop; t++) {
        build_vector(codes, t, atoms, turns + t * r_st, turn_kind, m, key);
        for (int g = 0; g < G; g++) {
            const v8u *row = (const v8u *)(qh + (int64_t)g * m);
            v8 acc = key[0] * row[0];
            for (int v = 1; v < m / 8; v++) acc += key[v] * row[v];
            oh[g * o_sg + t] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
        }
    }
}

/* Tokens start..stop rebuilt (and rotated when turns is not NULL) into `repeat` outputs, each (T, m) rows at
 * out + r * out_step. */
static inline __attribute__((always_inline)) void rebuild_block(const Codes *codes, const float *atoms,
                                                                const uint8_t *turns, int64_t r_st, int turn_kind,
                                                                float *out, int64_t out_step, int repeat, int start,
                                                                int stop, const int m) {
    v8 vec[MAX_DIM / 8];
    for (int t = start; t < stop; t++) {
        build_vector(codes, t, atoms, turns ? turns + t * r_st : NULL, turn_kind, m, vec);
        for (int r = 0; r < repeat; r++) {
            v8u *row = (v8u *)(out + r * out_step + (int64_t)t * m);
            for (int v = 0; v < m / 8; v++) row[v] = vec[v];
        }
    }
}

/* f(..., m) with m a compile-time constant for the common head sizes. */
#define BY_HEAD_DIM(f, m, ...)        \
    do {                              \
        if ((m) == 64)                \
            f(__VA_ARGS__, 64);       \
        else if ((m) == 128)          \
            f(__VA_ARGS__, 128);      \
        else                          \
            f(__VA_ARGS__, (m));      \
    } while (0)

void lexico_rope_scores(const float *q, int64_t q_sb, int64_t q_sh,                           /* (B, H, G, m) */
                        const uint8_t *idx, int64_t i_sb, int64_t i_sh, int64_t i_st, int index_bits,
                        const uint8_t *coef, int64_t c_sb, int64_t c_sh, int64_t c_st, int coef_kind,
                        const float *atoms,                                                     /* (N, m) */
                        const uint8_t *turns, int64_t r_sb, int64_t r_st, int turn_kind,        /* bytes */
                        float *out, int64_t o_sb, int64_t o_sh, int64_t o_sg,                   /* (B, H, G, T) */
                        int B, int H, int G, int T, int s, int m, int threads) {
    const int blocks = (T + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
    const int64_t tasks = (int64_t)B * H * blocks;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t task = 0; task < tasks; task++) {
        const int block = (int)(task % blocks), h = (int)(task / blocks % H), b = (int)(task / blocks / H);
        const int start = block * TOKEN_BLOCK, stop = start + TOKEN_BLOCK < T ? start + TOKEN_BLOCK : T;
        const Codes codes = codes_at(idx, i_sb, i_sh, i_st, index_bits, coef, c_sb, c_sh, c_st, coef_kind, s, b, h);
        BY_HEAD_DIM(score_block, m, &codes, atoms, turns + b * r_sb, r_st, turn_kind, q + b * q_sb + h * q_sh,
                    out + b * o_sb + h * o_sh, o_sg, G, start, stop);
    }
}

/* Dense vectors of T tokens: out (B, H * repeat, T, m) contiguous, KV head h's vectors written to output heads
 * h * repeat .. h * repeat + repeat - 1 (as many as the query heads it serves); rotated by their (cos, sin) when
 * turns is not NULL. */
void lexico_rebuild(const uint8_t *idx, int64_t i_sb, int64_t i_sh, int64_t i_st, int index_bits,
                    const uint8_t *coef, int64_t c_sb, int64_t c_sh, int64_t c_st, int coef_kind,
                    const float *atoms, const uint8_t *turns, int64_t r_sb, int64_t r_st, int turn_kind,
                    float *out, int repeat, int B, int H, int T, int s, int m, int threads) {
    const int blocks = (T + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
    const int64_t tasks = (int64_t)B * H * blocks, head = (int64_t)T * m;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t task = 0; task < tasks; task++) {
        const int block = (int)(task % blocks), h = (int)(task / blocks % H), b = (int)(task / blocks / H);
        const int start = block * TOKEN_BLOCK, stop = start + TOKEN_BLOCK < T ? start + TOKEN_BLOCK : T;
        const Codes codes = codes_at(idx, i_sb, i_sh, i_st, index_bits, coef, c_sb, c_sh, c_st, coef_kind, s, b, h);
        float *first = out + ((int64_t)b * H + h) * repeat * head;
        BY_HEAD_DIM(rebuild_block, m, &codes, atoms, turns ? turns + b * r_sb : NULL, r_st, turn_kind, first, head,
                    repeat, start, stop);
    }
}

void lexico_value_weights(const float *probs, int64_t p_sb, int64_t p_sh, int64_t p_sg,     /* (B, H, G, T) */
                          const uint8_t *idx, int64_t i_sb, int64_t i_sh, int64_t i_st, int index_bits,
                          const uint8_t *coef, int64_t c_sb, int64_t c_sh, int64_t c_st, int coef_kind,
                          float *w, /* (B, H, G, N) contiguous */
                          int B, int H, int G, int T, int s, int N, int threads) {
    const int64_t tasks = (int64_t)B * H;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t task = 0; task < tasks; task++) {
        const int h = (int)(task % H), b = (int)(task / H);
        const float *p = probs + b * p_sb + h * p_sh;
        const uint8_t *ih = idx + b * i_sb + h * i_sh, *ch = coef + b * c_sb + h * c_sh;
        float *rows = w + task * G * N;
        int32_t ix[MAX_DIM];
        float cf[MAX_DIM];
        memset(rows, 0, sizeof(float) * (size_t)G * (size_t)N);
        for (int t = 0; t < T; t++) {
            load_code(ih + t * i_st, index_bits, ch + t * c_st, coef_kind, s, ix, cf);
            for (int g = 0; g < G; g++) {
                const float weight = p[g * p_sg + t];
                float *row = rows + (int64_t)g * N;
                for (int j = 0; j < s; j++) row[ix[j]] += weight * cf[j];
            }
        }
    }
}

/* One step of OMP's atom selection for b rows of correlations c (row stride ldc elements; float32, or bfloat16
 * when bf16 is set): the k atoms already chosen (idx[r * ldi + 0 .. k-1]) are marked NaN, so they never win,
 * and idx[r * ldi + k] becomes the first index of the largest |c| of the row (argmax semantics: the first on
 * ties). c is scratch afterwards. */
typedef unsigned int v8u32 __attribute__((vector_size(32)));
typedef unsigned short v8u16 __attribute__((vector_size(16), aligned(2)));

static inline v8 magnitudes(const void *row, int v, int bf16) {
    const v8u32 magnitude = {0x7FFFFFFFu, 0x7FFFFFFFu, 0x7FFFFFFFu, 0x7FFFFFFFu,
                             0x7FFFFFFFu, 0x7FFFFFFFu, 0x7FFFFFFFu, 0x7FFFFFFFu};
    v8u32 bits;
    if (bf16)
        bits = __builtin_convertvector(*(const v8u16 *)((const uint16_t *)row + 8 * v), v8u32) << 16;
    else
        bits = (v8u32) * (const v8u *)((const float *)row + 8 * v);
    return (v8)(bits & magnitude);
}

static inline float magnitude_at(const void *row, int64_t n, int bf16) {
    if (!bf16) return __builtin_fabsf(((const float *)row)[n]);
    const uint32_t bits = (uint32_t)(((const uint16_t *)row)[n] & 0x7FFF) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void lexico_select_atoms(void *c, int64_t ldc, int bf16, int64_t *idx, int64_t ldi, int k, int b, int N, int threads) {
    const int lanes = N / 8;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int r = 0; r < b; r++) {
        void *row = bf16 ? (void *)((uint16_t *)c + (int64_t)r * ldc) : (void *)((float *)c + (int64_t)r * ldc);
        int64_t *chosen = idx + (int64_t)r * ldi;
        for (int j = 0; j < k; j++) {
            if (bf16)
                ((uint16_t *)row)[chosen[j]] = 0x7FC0; /* NaN */
            else
                ((float *)row)[chosen[j]] = __builtin_nanf("");
        }
        v8 best = {-1, -1, -1, -1, -1, -1, -1, -1};
        v8i where = {0, 0, 0, 0, 0, 0, 0, 0}; /* per lane: the first vector holding its best */
        for (int v = 0; v < lanes; v++) {
            const v8 x = magnitudes(row, v, bf16);
            const v8i wins = x > best; /* false for NaN (a chosen atom) and for ties: the first stays */
            best = (v8)(((v8i)x & wins) | ((v8i)best & ~wins));
            where = (v & wins) | (where & ~wins);
        }
        float top = -1.0f;
        int found = 0;
        for (int i = 0; i < 8; i++) {
            const int n = 8 * where[i] + i;
            if (best[i] > top || (best[i] == top && n < found)) top = best[i], found = n;
        }
        for (int n = 8 * lanes; n < N; n++) { /* the tail of a row whose length is not a multiple of 8 */
            const float x = magnitude_at(row, n, bf16);
            if (x > top) top = x, found = n;
        }
        chosen[k] = found;
    }
}

/* Adaptive codes (lexico_chat.cache.store.AdaptiveCodeStore) as padded codes for attention. Row r of R = batch *
 * heads holds its atoms in runs, window w's window_atoms of them from atom w * window_atoms on, token after token:
 * indices 12-bit packed (two in three bytes, 3 * atoms / 2 bytes) or int16, coefficients coef_size bytes each,
 * and 4-bit counts (count - 1, two tokens a byte, the first in the low nibble). out_idx (R, T, longest) int16 and
 * out_coef (R, T, longest) coefficients: each token's atoms first, then index 0 with coefficient 0. */
void lexico_expand(const uint8_t *idx, int64_t i_sr, int index_bits, const uint8_t *coef, int64_t c_sr,
                   int coef_size, const uint8_t *counts, int64_t n_sr, int16_t *out_idx, uint8_t *out_coef, int R,
                   int T, int longest, int window, int window_atoms, int threads) {
    const int windows = T / window;
    const int64_t tasks = (int64_t)R * windows;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t task = 0; task < tasks; task++) {
        const int r = (int)(task / windows), w = (int)(task % windows);
        const uint8_t *ir = idx + r * i_sr, *cr = coef + r * c_sr, *nr = counts + r * n_sr;
        int64_t atom = (int64_t)w * window_atoms;
        for (int t = w * window; t < (w + 1) * window; t++) {
            const int n = ((nr[t / 2] >> (4 * (t & 1))) & 0xF) + 1;
            int16_t *oi = out_idx + ((int64_t)r * T + t) * longest;
            uint8_t *oc = out_coef + ((int64_t)r * T + t) * longest * coef_size;
            for (int j = 0; j < n; j++, atom++) {
                if (index_bits == 12) {
                    const uint8_t *p = ir + 3 * (atom / 2);
                    oi[j] = (int16_t)((atom & 1) ? (p[1] >> 4) | (p[2] << 4) : p[0] | ((p[1] & 0xF) << 8));
                } else {
                    memcpy(oi + j, ir + 2 * atom, 2);
                }
            }
            memcpy(oc, cr + (atom - n) * coef_size, (size_t)n * coef_size);
            memset(oi + n, 0, sizeof(int16_t) * (size_t)(longest - n));
            memset(oc + (size_t)n * coef_size, 0, (size_t)(longest - n) * coef_size);
        }
    }
}
