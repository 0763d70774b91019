/* Popcount GEMM for packed binary layers: out[r][o] = popcount(op(x[r], w[o])) summed over `words` 64-bit words,
   op = xnor (+-1 inputs) or and ({0,1} inputs). Loaded with ctypes by binexp.export.popcount; it holds no Python
   API, so one build serves every Python version on the machine.

   xnor is counted as 64 * words - popcount(x ^ w) (one instruction less per word), and four output columns are
   computed per pass over a row, so each word of x is loaded once for four weights. */
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define POPCNT(v) __builtin_popcountll(v)

#ifdef __AVX2__
#include <immintrin.h>

/* below this many words per row the scalar popcnt loop was as fast (measured on the 2-core dev machine) */
#define AVX2_MIN_WORDS 32

/* Mula's AVX2 popcount: a 16-entry nibble table looked up with pshufb, bytes summed by sad against zero. Four
   output columns share each 256-bit load of x; byte counters are flushed to 64-bit lanes every 31 chunks (8 bits
   per byte per chunk at most, so they cannot overflow). Returns the number of words handled (a multiple of 4). */
static inline __m256i popcount_bytes(__m256i v) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

static inline int64_t lanes_sum(__m256i v) {
    return _mm256_extract_epi64(v, 0) + _mm256_extract_epi64(v, 1) + _mm256_extract_epi64(v, 2) +
           _mm256_extract_epi64(v, 3);
}

static int64_t block4_avx2(const uint64_t *xr, const uint64_t *w0, const uint64_t *w1, const uint64_t *w2,
                           const uint64_t *w3, int64_t words, int use_and, int32_t acc[4]) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[4] = {zero, zero, zero, zero};
    __m256i bytes[4] = {zero, zero, zero, zero};
    const uint64_t *ws[4] = {w0, w1, w2, w3};
    int64_t k = 0, pending = 0;
    for (; k + 4 <= words; k += 4) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(xr + k));
        for (int j = 0; j < 4; ++j) {
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(ws[j] + k));
            const __m256i m = use_and ? _mm256_and_si256(v, wv) : _mm256_xor_si256(v, wv);
            bytes[j] = _mm256_add_epi8(bytes[j], popcount_bytes(m));
        }
        if (++pending == 31) {
            for (int j = 0; j < 4; ++j) {
                total[j] = _mm256_add_epi64(total[j], _mm256_sad_epu8(bytes[j], zero));
                bytes[j] = zero;
            }
            pending = 0;
        }
    }
    for (int j = 0; j < 4; ++j) {
        total[j] = _mm256_add_epi64(total[j], _mm256_sad_epu8(bytes[j], zero));
        acc[j] = (int32_t)lanes_sum(total[j]);
    }
    return k;
}
#endif

/* One row of output: xnor counts are 64 * words - popcount(x ^ w), and counts are popcount(x & w). Inlined
   with a constant `use_and`, so each caller gets its own branch-free loop. */
static inline __attribute__((always_inline)) void row(const uint64_t *xr, const uint64_t *w, int32_t *orow,
                                                      int64_t cols, int64_t words, const int use_and) {
    const int32_t total = use_and ? 0 : (int32_t)(64 * words);
    const int32_t sign = use_and ? 1 : -1;
#define OP(a, b) (use_and ? ((a) & (b)) : ((a) ^ (b)))
    int64_t o = 0;
    for (; o + 4 <= cols; o += 4) {
        const uint64_t *w0 = w + o * words, *w1 = w0 + words, *w2 = w1 + words, *w3 = w2 + words;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        int64_t k = 0;
#ifdef __AVX2__
        int32_t acc[4];
        if (words >= AVX2_MIN_WORDS) {
            k = block4_avx2(xr, w0, w1, w2, w3, words, use_and, acc);
            a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
        }
#endif
        for (; k < words; ++k) {
            const uint64_t v = xr[k];
            a0 += POPCNT(OP(v, w0[k]));
            a1 += POPCNT(OP(v, w1[k]));
            a2 += POPCNT(OP(v, w2[k]));
            a3 += POPCNT(OP(v, w3[k]));
        }
        orow[o] = total + sign * a0;
        orow[o + 1] = total + sign * a1;
        orow[o + 2] = total + sign * a2;
        orow[o + 3] = total + sign * a3;
    }
    for (; o < cols; ++o) {
        const uint64_t *wo = w + o * words;
        int32_t a = 0;
        for (int64_t k = 0; k < words; ++k) a += POPCNT(OP(xr[k], wo[k]));
        orow[o] = total + sign * a;
    }
#undef OP
}

void popcount_gemm(const uint64_t *x, const uint64_t *w, int32_t *out, int64_t rows, int64_t cols, int64_t words,
                   int use_and) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        if (use_and)
            row(x + r * words, w, out + r * cols, cols, words, 1);
        else
            row(x + r * words, w, out + r * cols, cols, words, 0);
    }
}

int popcount_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* The instruction sets the compiler was told it may use (-march=native: those of the installing machine), spelled
   as Linux's /proc/cpuinfo flags: a build moved to a CPU without one of them (an install shared by the nodes of a
   mixed cluster) would die of SIGILL in its first call, so the loader checks them first. */
const char *popcount_isa(void) {
    return ""
#ifdef __POPCNT__
           " popcnt"
#endif
#ifdef __BMI2__
           " bmi2"
#endif
#ifdef __AVX__
           " avx"
#endif
#ifdef __AVX2__
           " avx2"
#endif
#ifdef __FMA__
           " fma"
#endif
#ifdef __AVX512F__
           " avx512f"
#endif
#ifdef __AVX512BW__
           " avx512bw"
#endif
#ifdef __AVX512DQ__
           " avx512dq"
#endif
#ifdef __AVX512VL__
           " avx512vl"
#endif
#ifdef __AVX512VPOPCNTDQ__
           " avx512_vpopcntdq"
#endif
        ;
}
