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

static void row_xor(const uint64_t *xr, const uint64_t *w, int32_t *orow, int64_t cols, int64_t words) {
    const int32_t total = (int32_t)(64 * words);
    int64_t o = 0;
    for (; o + 4 <= cols; o += 4) {
        const uint64_t *w0 = w + o * words, *w1 = w0 + words, *w2 = w1 + words, *w3 = w2 + words;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (int64_t k = 0; k < words; ++k) {
            const uint64_t v = xr[k];
            a0 += POPCNT(v ^ w0[k]);
            a1 += POPCNT(v ^ w1[k]);
            a2 += POPCNT(v ^ w2[k]);
            a3 += POPCNT(v ^ w3[k]);
        }
        orow[o] = total - a0;
        orow[o + 1] = total - a1;
        orow[o + 2] = total - a2;
        orow[o + 3] = total - a3;
    }
    for (; o < cols; ++o) {
        const uint64_t *wo = w + o * words;
        int32_t a = 0;
        for (int64_t k = 0; k < words; ++k) a += POPCNT(xr[k] ^ wo[k]);
        orow[o] = total - a;
    }
}

static void row_and(const uint64_t *xr, const uint64_t *w, int32_t *orow, int64_t cols, int64_t words) {
    int64_t o = 0;
    for (; o + 4 <= cols; o += 4) {
        const uint64_t *w0 = w + o * words, *w1 = w0 + words, *w2 = w1 + words, *w3 = w2 + words;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (int64_t k = 0; k < words; ++k) {
            const uint64_t v = xr[k];
            a0 += POPCNT(v & w0[k]);
            a1 += POPCNT(v & w1[k]);
            a2 += POPCNT(v & w2[k]);
            a3 += POPCNT(v & w3[k]);
        }
        orow[o] = a0;
        orow[o + 1] = a1;
        orow[o + 2] = a2;
        orow[o + 3] = a3;
    }
    for (; o < cols; ++o) {
        const uint64_t *wo = w + o * words;
        int32_t a = 0;
        for (int64_t k = 0; k < words; ++k) a += POPCNT(xr[k] & wo[k]);
        orow[o] = a;
    }
}

void popcount_gemm(const uint64_t *x, const uint64_t *w, int32_t *out, int64_t rows, int64_t cols, int64_t words,
                   int use_and) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        if (use_and)
            row_and(x + r * words, w, out + r * cols, cols, words);
        else
            row_xor(x + r * words, w, out + r * cols, cols, words);
    }
}

int popcount_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
