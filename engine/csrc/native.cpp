// Roost's compiled CPU kernels: block-quantised matrix products for `cpu int8` and `cpu int4`.
//
// Built ahead of time (when the wheel or the bundle is built: setup.py), never on the user's
// machine; loaded by roost.engine.native with ctypes (a C ABI, no Python API beyond the module's
// empty init). One binary serves every CPU of its architecture: each kernel is compiled for
// several instruction sets (function target attributes) and the best one this CPU has is chosen
// at run time. Where this library is missing or fails its self-test, the engine runs its PyTorch
// path, which stays the reference.
//
// Formats (a weight is rows x cols, cols a multiple of 64; blocks of 32 weights along a row):
//   q8: int8 values (rows x cols), one fp16 scale per block: w = q * d.
//   q4: 4-bit values in pairs of blocks (rows x cols/2 bytes): byte j of a pair (32 bytes) holds
//       weight j of the pair in its low nibble and weight 32 + j in its high nibble; one fp16
//       scale and one fp16 offset per block: w = q * d + m (q in 0..15; as llama.cpp's q4_1).
// Activations are quantised per block of 32 to int8 with a float scale (as llama.cpp's q8_0):
// a product's error is that of 8-bit activations with a scale per 32 values.
//
// Threads: a small pool of its own (no OpenMP: one runtime per process is torch's business, and
// macOS compilers ship none). The calling thread works too; rn_set_threads sets how many.

#include <stdint.h>
#include <string.h>
#include <math.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RN_X86 1
#include <immintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#define RN_TARGET(x)
#else
#define RN_TARGET(x) __attribute__((target(x)))
#endif
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define RN_ARM 1
#include <arm_neon.h>
#endif

#ifndef RN_NO_PYTHON  // (a build without Python: the kernels' own tests on other architectures)
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#if defined(_WIN32)
#define RN_API extern "C" __declspec(dllexport)
#else
#define RN_API extern "C" __attribute__((visibility("default")))
#endif

namespace {

constexpr int QB = 32;  // weights per block
constexpr int Q4_REFINE = 2;  // least-squares rounds fitting each 4-bit block's scale and offset

// ---- fp16 <-> float, portable (the kernels convert with the CPU's instructions where they can) ----
inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

// round to the nearest integer, ties to even (the default rounding mode), for |v| < 2^22: plain
// arithmetic, where rintf is a library call on x86-64 CPUs without SSE4.1 in the baseline
inline float round_even(float v) {
    const float magic = 12582912.f;  // 1.5 * 2^23 (IEEE arithmetic: not folded without -ffast-math)
    return (v + magic) - magic;
}

inline float bf16_to_float(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// a row of the source weight in float32, whatever its type (0: float32, 1: bf16, 2: fp16)
inline void source_row(const void* src, int dtype, int64_t row, int64_t cols, float* out) {
    if (dtype == 0) {
        memcpy(out, (const float*)src + row * cols, cols * sizeof(float));
    } else {
        const uint16_t* s = (const uint16_t*)src + row * cols;
        for (int64_t i = 0; i < cols; i++) out[i] = dtype == 1 ? bf16_to_float(s[i]) : half_to_float(s[i]);
    }
}

// ---- the thread pool ----------------------------------------------------------------------------
// Where torch runs on an OpenMP runtime that exports GNU's entry points (libgomp on Linux, LLVM's
// libomp on macOS), products run on that runtime's threads (roost.engine.native passes its
// functions in): one team of threads in the process, so that torch's threads, which spin a while
// after each of torch's own operations, never compete with a second team of ours for the cores
// (measured: our own pool beside torch's 2 threads made a 2-core machine's tokens 1.9x slower).
// Elsewhere (Windows), a small pool of our own.
typedef void (*gomp_parallel_fn)(void (*)(void*), void*, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
gomp_parallel_fn g_gomp_parallel = nullptr;
omp_int_fn g_omp_thread_num = nullptr, g_omp_num_threads = nullptr;

struct Job {
    const std::function<void(int, int)>* fn;
};

void omp_trampoline(void* data) {
    const Job* job = (const Job*)data;
    (*job->fn)(g_omp_thread_num(), g_omp_num_threads());
}

class Pool {
  public:
    ~Pool() { resize(0); }

    void resize(int extra) {  // `extra` workers beside the calling thread
        threads_ = extra + 1;
        if (g_gomp_parallel) extra = 0;  // (the OpenMP runtime's threads work instead)
        std::lock_guard<std::mutex> busy(run_lock_);
        {
            std::lock_guard<std::mutex> g(m_);
            stop_.store(true);
            generation_++;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
        workers_.clear();
        stop_.store(false);
        uint64_t now = generation_;  // (a new worker waits for the next job, not the last one)
        for (int i = 0; i < extra; i++) workers_.emplace_back([this, i, now] { loop(i + 1, now); });
    }

    int size() const { return threads_; }

    // fn(part, parts) on every thread of the pool; when another caller holds the pool, on this
    // thread alone (no waiting behind another product)
    void run(const std::function<void(int, int)>& fn) {
        if (g_gomp_parallel) {
            Job job{&fn};
            if (threads_ > 1) g_gomp_parallel(omp_trampoline, &job, (unsigned)threads_, 0);
            else fn(0, 1);
            return;
        }
        std::unique_lock<std::mutex> busy(run_lock_, std::try_to_lock);
        if (!busy.owns_lock() || workers_.empty()) {
            fn(0, 1);
            return;
        }
        int parts = size();
        {
            std::lock_guard<std::mutex> g(m_);
            job_ = &fn;
            parts_ = parts;
            pending_.store(parts - 1, std::memory_order_relaxed);
            generation_++;
            published_.store(generation_, std::memory_order_release);
        }
        cv_.notify_all();
        fn(0, parts);
        // the others: a short spin, then sleep (a product takes tens of microseconds to milliseconds)
        for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; spin++) {
            if (spin > 2000) {
                std::unique_lock<std::mutex> g(m_);
                done_cv_.wait(g, [this] { return pending_.load(std::memory_order_acquire) == 0; });
                break;
            }
            std::this_thread::yield();
        }
    }

  private:
    void loop(int index, uint64_t seen) {
        for (;;) {
            // spin a little for the next job before sleeping: products come in quick succession
            for (int spin = 0; spin < 2000 && published_.load(std::memory_order_acquire) == seen && !stop_.load(); spin++)
                std::this_thread::yield();
            const std::function<void(int, int)>* job;
            int parts;
            {
                std::unique_lock<std::mutex> g(m_);
                cv_.wait(g, [&] { return stop_.load() || generation_ != seen; });
                if (stop_.load()) return;
                seen = generation_;
                job = job_;
                parts = parts_;
            }
            if (index < parts) (*job)(index, parts);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> g(m_);
                done_cv_.notify_all();
            }
        }
    }

    std::vector<std::thread> workers_;
    int threads_ = 1;
    std::mutex m_, run_lock_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(int, int)>* job_ = nullptr;
    int parts_ = 1;
    std::atomic<bool> stop_{false};
    uint64_t generation_ = 0;
    std::atomic<uint64_t> published_{0};
    std::atomic<int> pending_{0};
};

Pool& pool() {
    static Pool p;
    return p;
}

// rows [lo, hi) of `n` for part `i` of `parts`, in multiples of `step`
inline void split(int64_t n, int i, int parts, int64_t step, int64_t* lo, int64_t* hi) {
    int64_t units = (n + step - 1) / step;
    *lo = std::min(n, units * i / parts * step);
    *hi = std::min(n, units * (i + 1) / parts * step);
}

// ---- activations: per block of 32, int8 with a float scale ---------------------------------------
// Kept as |x| (u8) and sign-adjusted later: the x86 kernels multiply u8 x s8.
struct Acts {
    std::vector<int8_t> q;  // M x K
    std::vector<float> d;   // M x K/32
    std::vector<float> s;   // M x K/32: d times the block's sum of q (the q4 offsets' term)
};

void quantize_acts(const float* x, int64_t M, int64_t K, Acts& a) {
    int64_t nb = K / QB;
    a.q.resize((size_t)(M * K));
    a.d.resize((size_t)(M * nb));
    a.s.resize((size_t)(M * nb));
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < nb; b++) {
            const float* v = x + m * K + b * QB;
            float amax = 0.f;
            for (int i = 0; i < QB; i++) amax = std::max(amax, fabsf(v[i]));
            float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
            a.d[m * nb + b] = d;
            int8_t* q = a.q.data() + m * K + b * QB;
            int32_t sum = 0;
            for (int i = 0; i < QB; i++) sum += q[i] = (int8_t)round_even(v[i] * id);
            a.s[m * nb + b] = d * (float)sum;
        }
    }
}

// ---- the products: y[m, r] = sum_b d_w[r, b] d_x[m, b] sum_i q_w[r, b, i] q_x[m, b, i] -------------
// Each kernel does rows [r0, r1) of the weight for every activation row m.

inline int q4_value(const uint8_t* row, int64_t k) {  // weight k of a q4 row, 0..15
    int64_t pair = k / 64, j = k % 64;
    uint8_t byte = row[pair * 32 + (j & 31)];
    return j < 32 ? (byte & 0xf) : (byte >> 4);
}

void rows_scalar(int bits, const void* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N,
                 int64_t r0, int64_t r1, float* y) {
    int64_t nb = K / QB;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t m = 0; m < M; m++) {
            const int8_t* xq = a.q.data() + m * K;
            float acc = 0.f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t s = 0;
                if (bits == 8) {
                    const int8_t* wr = (const int8_t*)w + r * K + b * QB;
                    for (int i = 0; i < QB; i++) s += wr[i] * xq[b * QB + i];
                } else {
                    const uint8_t* wr = (const uint8_t*)w + r * (K / 2);
                    for (int i = 0; i < QB; i++) s += q4_value(wr, b * QB + i) * xq[b * QB + i];
                }
                acc += (float)s * half_to_float(dw[r * nb + b]) * a.d[m * nb + b];
            }
            y[m * N + r] = acc;
        }
    }
}

#if RN_X86
RN_TARGET("avx2,fma,f16c")
inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// the combined scales d_w[r, b] * d_x[m, b] of one weight row and one activation row
RN_TARGET("avx2,fma,f16c")
inline void scales_avx2(const uint16_t* dw, const float* dx, int64_t nb, float* out) {
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8)
        _mm256_storeu_ps(out + b, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(dw + b))),
                                                _mm256_loadu_ps(dx + b)));
    for (; b < nb; b++) out[b] = _cvtsh_ss(dw[b]) * dx[b];
}

// 32 weights of a q8 row, or of a q4 row (block b, 0..15), as signed bytes
RN_TARGET("avx2,fma,f16c")
inline __m256i load_w_avx2(int bits, const uint8_t* row, int64_t b) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i*)(row + b * QB));
    __m256i pair = _mm256_loadu_si256((const __m256i*)(row + (b >> 1) * 32));
    __m256i v = (b & 1) ? _mm256_srli_epi16(pair, 4) : pair;
    return _mm256_and_si256(v, _mm256_set1_epi8(0xf));
}

RN_TARGET("avx2,fma,f16c")
void rows_avx2(int bits, const void* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N,
               int64_t r0, int64_t r1, float* y) {
    const int64_t nb = K / QB, row_bytes = bits == 8 ? K : K / 2;
    const __m256i ones = _mm256_set1_epi16(1);
    std::vector<float> sc((size_t)(4 * nb));
    int64_t r = r0;
    for (; r < r1; r += 4) {
        int rows = (int)std::min<int64_t>(4, r1 - r);
        for (int64_t m = 0; m < M; m++) {
            const int8_t* xq = a.q.data() + m * K;
            for (int i = 0; i < rows; i++) scales_avx2(dw + (r + i) * nb, a.d.data() + m * nb, nb, sc.data() + i * nb);
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t b = 0; b < nb; b++) {
                __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + b * QB));
                __m256i ax = _mm256_sign_epi8(xv, xv);
                for (int i = 0; i < rows; i++) {  // (u8 |x| times s8 w*sign(x): pairs fit int16, 2 x 127 x 127)
                    __m256i wv = load_w_avx2(bits, (const uint8_t*)w + (r + i) * row_bytes, b);
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv)), ones);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(sc.data() + i * nb + b), acc[i]);
                }
            }
            for (int i = 0; i < rows; i++) y[m * N + r + i] = hsum256(acc[i]);
        }
    }
}

// AVX512-VNNI: two blocks per 512-bit vector, u8 x s8 products summed in int32 (vpdpbusd)
RN_TARGET("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
inline __m512i load_w_512(int bits, const uint8_t* row, int64_t b) {  // blocks b, b + 1 (b even)
    if (bits == 8) return _mm512_loadu_si512((const void*)(row + b * QB));
    __m256i pair = _mm256_loadu_si256((const __m256i*)(row + (b >> 1) * 32));
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(pair), _mm256_srli_epi16(pair, 4), 1);
    return _mm512_and_si512(v, _mm512_set1_epi8(0xf));
}

RN_TARGET("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
void rows_vnni(int bits, const void* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N,
               int64_t r0, int64_t r1, float* y) {
    const int64_t nb = K / QB, row_bytes = bits == 8 ? K : K / 2;
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    std::vector<float> sc((size_t)(4 * nb));
    for (int64_t r = r0; r < r1; r += 4) {
        int rows = (int)std::min<int64_t>(4, r1 - r);
        for (int64_t m = 0; m < M; m++) {
            const int8_t* xq = a.q.data() + m * K;
            for (int i = 0; i < rows; i++) scales_avx2(dw + (r + i) * nb, a.d.data() + m * nb, nb, sc.data() + i * nb);
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int64_t b = 0; b < nb; b += 2) {  // (nb is even: cols are a multiple of 64)
                __m512i xv = _mm512_loadu_si512((const void*)(xq + b * QB));
                __m512i ax = _mm512_abs_epi8(xv);
                __mmask64 neg = _mm512_movepi8_mask(xv);
                for (int i = 0; i < rows; i++) {
                    __m512i wv = load_w_512(bits, (const uint8_t*)w + (r + i) * row_bytes, b);
                    wv = _mm512_mask_sub_epi8(wv, neg, _mm512_setzero_si512(), wv);
                    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, wv);
                    __m512 s = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(
                        _mm_castpd_ps(_mm_load_sd((const double*)(sc.data() + i * nb + b)))));
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[i]);
                }
            }
            for (int i = 0; i < rows; i++) y[m * N + r + i] = _mm512_reduce_add_ps(acc[i]);
        }
    }
}
#endif  // RN_X86

#if RN_ARM
inline int8x16_t q4_neon(uint8x16_t v, bool high) {
    return vreinterpretq_s8_u8(high ? vshrq_n_u8(v, 4) : vandq_u8(v, vdupq_n_u8(0xf)));
}

void rows_neon(int bits, const void* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N,
               int64_t r0, int64_t r1, float* y) {
    const int64_t nb = K / QB, row_bytes = bits == 8 ? K : K / 2;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t* wr = (const uint8_t*)w + r * row_bytes;
        for (int64_t m = 0; m < M; m++) {
            const int8_t* xq = a.q.data() + m * K;
            float32x4_t acc = vdupq_n_f32(0.f);
            for (int64_t b = 0; b < nb; b++) {
                int8x16_t w0, w1;
                if (bits == 8) {
                    w0 = vld1q_s8((const int8_t*)wr + b * QB);
                    w1 = vld1q_s8((const int8_t*)wr + b * QB + 16);
                } else {
                    const uint8_t* pair = wr + (b >> 1) * 32;
                    w0 = q4_neon(vld1q_u8(pair), b & 1);
                    w1 = q4_neon(vld1q_u8(pair + 16), b & 1);
                }
                int8x16_t x0 = vld1q_s8(xq + b * QB), x1 = vld1q_s8(xq + b * QB + 16);
#if defined(__ARM_FEATURE_DOTPROD)
                int32x4_t s = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
                int16x8_t p = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
                p = vmlal_s8(p, vget_high_s8(w0), vget_high_s8(x0));  // (two products of 127 x 127 fit int16)
                int32x4_t s = vpaddlq_s16(p);
                int16x8_t p1 = vmull_s8(vget_low_s8(w1), vget_low_s8(x1));
                p1 = vmlal_s8(p1, vget_high_s8(w1), vget_high_s8(x1));
                s = vpadalq_s16(s, p1);
#endif
                float scale = half_to_float(dw[r * nb + b]) * a.d[m * nb + b];
                acc = vmlaq_n_f32(acc, vcvtq_f32_s32(s), scale);
            }
            y[m * N + r] = vaddvq_f32(acc);
        }
    }
}
#endif  // RN_ARM

// ---- the q4 offsets' term: sum_b m[b] * sx[b], m in fp16 --------------------------------------------
float offsets_scalar(const uint16_t* m, const float* sx, int64_t nb) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t b = 0; b < nb; b++) acc[b & 3] += half_to_float(m[b]) * sx[b];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

#if RN_X86
RN_TARGET("avx2,fma,f16c")
float offsets_fast(const uint16_t* m, const float* sx, int64_t nb) {
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m + b))), _mm256_loadu_ps(sx + b), acc);
    float out = hsum256(acc);
    for (; b < nb; b++) out += _cvtsh_ss(m[b]) * sx[b];
    return out;
}
#elif RN_ARM
float offsets_fast(const uint16_t* m, const float* sx, int64_t nb) {
    float32x4_t acc = vdupq_n_f32(0.f);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4)
        acc = vfmaq_f32(acc, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(m + b))), vld1q_f32(sx + b));
    float out = vaddvq_f32(acc);
    for (; b < nb; b++) out += half_to_float(m[b]) * sx[b];
    return out;
}
#else
float offsets_fast(const uint16_t* m, const float* sx, int64_t nb) { return offsets_scalar(m, sx, nb); }
#endif

// ---- which kernel this CPU runs ------------------------------------------------------------------
enum Isa { SCALAR = 0, AVX2 = 1, AVX512_VNNI = 2, NEON = 3, NEON_DOTPROD = 4 };

#if RN_X86
#if defined(_MSC_VER) && !defined(__clang__)
bool os_saves_avx512() { return (_xgetbv(0) & 0xe6) == 0xe6; }
int best_isa() {
    int r[4];
    __cpuid(r, 0);
    if (r[0] < 7) return SCALAR;
    __cpuid(r, 1);
    bool fma = r[2] & (1 << 12), f16c = r[2] & (1 << 29), osx = r[2] & (1 << 27);
    if (!osx || (_xgetbv(0) & 6) != 6) return SCALAR;
    __cpuidex(r, 7, 0);
    bool avx2 = r[1] & (1 << 5), f = r[1] & (1 << 16), bw = r[1] & (1 << 30), vl = r[1] & (1u << 31),
         vnni = r[2] & (1 << 11);
    if (avx2 && fma && f16c && f && bw && vl && vnni && os_saves_avx512()) return AVX512_VNNI;
    return avx2 && fma && f16c ? AVX2 : SCALAR;
}
#else
int best_isa() {
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        return AVX512_VNNI;
    return avx2 ? AVX2 : SCALAR;
}
#endif
#elif RN_ARM
int best_isa() {
#if defined(__ARM_FEATURE_DOTPROD)
    return NEON_DOTPROD;
#else
    return NEON;
#endif
}
#else
int best_isa() { return SCALAR; }
#endif

std::atomic<int> g_isa{-1};

int isa() {
    int v = g_isa.load();
    if (v < 0) g_isa.store(v = best_isa());
    return v;
}

void rows(int use, int bits, const void* w, const uint16_t* dw, const uint16_t* mw, int64_t K, const Acts& a,
          int64_t M, int64_t N, int64_t r0, int64_t r1, float* y) {
#if RN_X86
    if (use == AVX512_VNNI) rows_vnni(bits, w, dw, K, a, M, N, r0, r1, y);
    else if (use == AVX2) rows_avx2(bits, w, dw, K, a, M, N, r0, r1, y);
    else
#endif
#if RN_ARM
    if (use == NEON || use == NEON_DOTPROD) rows_neon(bits, w, dw, K, a, M, N, r0, r1, y);
    else
#endif
    rows_scalar(bits, w, dw, K, a, M, N, r0, r1, y);
    if (bits != 4 || !mw) return;
    const int64_t nb = K / QB;  // the offsets: y += sum_b m_w[r, b] d_x[m, b] sum_i q_x[m, b, i]
    for (int64_t r = r0; r < r1; r++)
        for (int64_t m = 0; m < M; m++)
            y[m * N + r] += use == SCALAR ? offsets_scalar(mw + r * nb, a.s.data() + m * nb, nb)
                                          : offsets_fast(mw + r * nb, a.s.data() + m * nb, nb);
}


// ---- weights into blocks (rn_quantize) ------------------------------------------------------------
// q8: scale max|w| / 127 (rounded to fp16), values rounded to the nearest. q4: w ~ q d + m, q in
// 0..15: from the block's range (m its least value, d a fifteenth of the range), then Q4_REFINE
// times the scale and offset that fit those integers by least squares, each round's integers
// rounded again (as the PyTorch path's 4-bit groups do: 7.4% of the weights' norm for Gaussian
// weights, against 8.1% for llama.cpp-style q4_0 blocks with a searched scale); the scale and
// offset are rounded to fp16 before the integers are chosen for them.
uint16_t block_q8(const float* v, int8_t* out) {
    float amax = 0.f;
    for (int i = 0; i < QB; i++) amax = std::max(amax, fabsf(v[i]));
    uint16_t h = float_to_half(amax / 127.f);
    float s = half_to_float(h), inv = s > 0.f ? 1.f / s : 0.f;
    for (int i = 0; i < QB; i++) out[i] = (int8_t)std::max(-127.f, std::min(127.f, round_even(v[i] * inv)));
    return h;
}

void block_q4(const float* v, uint8_t* pair, bool high, uint16_t* d_out, uint16_t* m_out) {
    float lo = v[0], hi = v[0];
    for (int i = 1; i < QB; i++) { lo = std::min(lo, v[i]); hi = std::max(hi, v[i]); }
    float scale = std::max((hi - lo) / 15.f, 1e-8f), offset = lo, q[QB];
    for (int round = 0; round < Q4_REFINE; round++) {
        float inv = 1.f / scale, qm = 0.f, wm = 0.f;
        for (int i = 0; i < QB; i++) {
            q[i] = std::max(0.f, std::min(15.f, round_even((v[i] - offset) * inv)));
            qm += q[i];
            wm += v[i];
        }
        qm /= QB;
        wm /= QB;
        float var = 0.f, cov = 0.f;
        for (int i = 0; i < QB; i++) {
            var += (q[i] - qm) * (q[i] - qm);
            cov += (q[i] - qm) * (v[i] - wm);
        }
        if (var > 0.f) scale = std::max(cov / var, 1e-8f);  // (a constant block keeps its own)
        offset = wm - scale * qm;
    }
    uint16_t dh = float_to_half(scale), mh = float_to_half(offset);
    float d = half_to_float(dh), m = half_to_float(mh), inv = d != 0.f ? 1.f / d : 0.f;
    for (int i = 0; i < QB; i++) {
        uint8_t qv = (uint8_t)std::max(0.f, std::min(15.f, round_even((v[i] - m) * inv)));
        pair[i] = high ? (uint8_t)((pair[i] & 0x0f) | (qv << 4)) : (uint8_t)((pair[i] & 0xf0) | qv);
    }
    *d_out = dh;
    *m_out = mh;
}

#if RN_X86
RN_TARGET("avx2,fma,f16c")
inline float hmax_abs(const float* v) {
    const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v), mask), _mm256_and_ps(_mm256_loadu_ps(v + 8), mask)),
                             _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v + 16), mask), _mm256_and_ps(_mm256_loadu_ps(v + 24), mask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

RN_TARGET("avx2,fma,f16c")
uint16_t block_q8_avx2(const float* v, int8_t* out) {
    uint16_t h = float_to_half(hmax_abs(v) / 127.f);
    float s = half_to_float(h);
    __m256 inv = _mm256_set1_ps(s > 0.f ? 1.f / s : 0.f), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    __m256i q[4];
    for (int j = 0; j < 4; j++)
        q[j] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(
            _mm256_mul_ps(_mm256_loadu_ps(v + 8 * j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    // (the packs work per 128-bit lane: put the 4-byte groups back in order)
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)out, p);
    return h;
}
#else
uint16_t block_q8_avx2(const float* v, int8_t* out) { return block_q8(v, out); }
#endif

#if RN_X86
// one block of a q8 / q4 row dequantised (scale s) into `out` at element `at`, float32 or bf16
RN_TARGET("avx2,fma,f16c")
void dequant_block_avx2(int bits, const uint8_t* q, int64_t r, int64_t K, int64_t b, float s, float off, void* out,
                        int64_t at, int bf16) {
    __m256i v = load_w_avx2(bits, q + r * (bits == 8 ? K : K / 2), b);  // 32 signed bytes
    __m256 sc = _mm256_set1_ps(s), of = _mm256_set1_ps(off);
    __m256 f[4];
    for (int j = 0; j < 4; j++) {
        __m128i part = j < 2 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
        if (j & 1) part = _mm_srli_si128(part, 8);
        f[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part)), sc, of);
    }
    if (!bf16) {
        for (int j = 0; j < 4; j++) _mm256_storeu_ps((float*)out + at + 8 * j, f[j]);
        return;
    }
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    for (int j = 0; j < 4; j += 2) {  // round to the nearest even, keep the high halves
        __m256i a = _mm256_castps_si256(f[j]), c = _mm256_castps_si256(f[j + 1]);
        a = _mm256_srli_epi32(_mm256_add_epi32(a, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(a, 16), one))), 16);
        c = _mm256_srli_epi32(_mm256_add_epi32(c, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(c, 16), one))), 16);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, c), 0xd8);  // (packs per 128-bit lane)
        _mm256_storeu_si256((__m256i*)((uint16_t*)out + at + 8 * j), p);
    }
}
#else
void dequant_block_avx2(int, const uint8_t*, int64_t, int64_t, int64_t, float, float, void*, int64_t, int) {}
#endif

#if RN_X86
// a whole row of a q8 / q4 matrix dequantised with AVX-512 (16 values an instruction), into float32
// or, on CPUs with AVX512-BF16, bf16 (prompt chunks: the conversion is most of their cost)
RN_TARGET("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")
void dequant_row_512(int bits, const uint8_t* q, const uint16_t* d, const uint16_t* m, int64_t r, int64_t K,
                     void* out, int64_t at, int bf16) {
    const int64_t nb = K / QB;
    const uint8_t* row = q + r * (bits == 8 ? K : K / 2);
    for (int64_t b = 0; b < nb; b++) {
        __m256i v = load_w_avx2(bits, row, b);
        __m512 sc = _mm512_set1_ps(_cvtsh_ss(d[r * nb + b]));
        __m512 of = _mm512_set1_ps(bits == 4 && m ? _cvtsh_ss(m[r * nb + b]) : 0.f);
        __m512 lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v))), sc, of);
        __m512 hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1))), sc, of);
        int64_t o = at + b * QB;
        if (bf16) {
            _mm512_storeu_si512((void*)((uint16_t*)out + o), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        } else {
            _mm512_storeu_ps((float*)out + o, lo);
            _mm512_storeu_ps((float*)out + o + 16, hi);
        }
    }
}
#else
void dequant_row_512(int, const uint8_t*, const uint16_t*, const uint16_t*, int64_t, int64_t, void*, int64_t, int) {}
#endif

bool has_avx512_bf16() {
#if RN_X86 && !(defined(_MSC_VER) && !defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#else
    return false;
#endif
}

}  // namespace

// ---- the C interface (roost.engine.native) -----------------------------------------------------------
RN_API int rn_abi(void) { return 2; }  // bumped when a signature below changes

RN_API int rn_isa(void) { return isa(); }

// force an instruction set (tests compare each with the portable one); -1: the best again.
// Returns the one in use (a set this CPU lacks is refused: the best stays).
RN_API int rn_use_isa(int want) {
    int best = best_isa();
    if (want < 0) want = best;
    bool ok = want == SCALAR || want == best || (best == AVX512_VNNI && want == AVX2) ||
              (best == NEON_DOTPROD && want == NEON);
    g_isa.store(ok ? want : best);
    return g_isa.load();
}

RN_API void rn_set_threads(int n) { pool().resize(std::max(1, n) - 1); }

// Run products on the OpenMP runtime torch uses (GOMP_parallel, omp_get_thread_num,
// omp_get_num_threads of that runtime; nulls: our own pool again). Before rn_set_threads.
RN_API void rn_use_openmp(void* parallel, void* thread_num, void* num_threads) {
    bool on = parallel && thread_num && num_threads;
    g_gomp_parallel = on ? (gomp_parallel_fn)parallel : nullptr;
    g_omp_thread_num = on ? (omp_int_fn)thread_num : nullptr;
    g_omp_num_threads = on ? (omp_int_fn)num_threads : nullptr;
    pool().resize(pool().size() - 1);
}

RN_API int rn_threads(void) { return pool().size(); }

// Quantise `rows` x `cols` weights (dtype 0 float32, 1 bf16, 2 fp16) to q8 or q4 (see the top and
// block_q8 / block_q4); `q` gets rows x cols (q8) or rows x cols/2 (q4) bytes, `d` rows x cols/32
// fp16 scales, `m` (q4 only) rows x cols/32 fp16 offsets. The source is only read.
RN_API void rn_quantize(int bits, const void* src, int dtype, int64_t rows, int64_t cols, uint8_t* q, uint16_t* d,
                        uint16_t* m) {
    const int64_t nb = cols / QB;
    const bool vec = isa() == AVX2 || isa() == AVX512_VNNI;
    pool().run([&](int part, int parts) {
        int64_t lo, hi;
        split(rows, part, parts, 1, &lo, &hi);
        std::vector<float> row((size_t)cols);
        for (int64_t r = lo; r < hi; r++) {
            source_row(src, dtype, r, cols, row.data());
            for (int64_t b = 0; b < nb; b++) {
                const float* v = row.data() + b * QB;
                if (bits == 8) {
                    int8_t* out = (int8_t*)q + r * cols + b * QB;
                    d[r * nb + b] = vec ? block_q8_avx2(v, out) : block_q8(v, out);
                } else {
                    block_q4(v, q + r * (cols / 2) + (b >> 1) * 32, b & 1, d + r * nb + b, m + r * nb + b);
                }
            }
        }
    });
}

// y (M x N, float32) = x (M x K, float32) times the transposed q8 / q4 weight (N x K); `m`: the q4
// offsets (null for q8).
RN_API void rn_matmul(int bits, const uint8_t* q, const uint16_t* d, const uint16_t* m, int64_t N, int64_t K,
                      const float* x, int64_t M, float* y) {
    thread_local Acts mine;  // (the caller's: each calling thread has its own)
    Acts& acts = mine;  // captured by reference below: inside a lambda the name `mine` would be
                        // the worker thread's own, empty one
    quantize_acts(x, M, K, acts);
    int use = isa();
    pool().run([&acts, use, bits, q, d, m, K, M, N, y](int part, int parts) {
        int64_t lo, hi;
        split(N, part, parts, 4, &lo, &hi);
        if (lo < hi) rows(use, bits, q, d, m, K, acts, M, N, lo, hi, y);
    });
}

// the float32 weight a q8 / q4 matrix stands for, rows [r0, r1) (prompt chunks multiply it in
// torch, a block of rows at a time; tests); `bf16`: written as bf16 (rounded to the nearest).
RN_API void rn_dequantize(int bits, const uint8_t* q, const uint16_t* d, const uint16_t* m, int64_t K, int64_t r0,
                          int64_t r1, void* out, int bf16) {
    const int64_t nb = K / QB;
    const bool vec = isa() == AVX2 || isa() == AVX512_VNNI;
    static const bool wide = has_avx512_bf16();
    const bool row_512 = isa() == AVX512_VNNI && wide;
    pool().run([&](int part, int parts) {
        int64_t lo, hi;
        split(r1 - r0, part, parts, 1, &lo, &hi);
        float o[QB];
        if (row_512) {
            for (int64_t r = r0 + lo; r < r0 + hi; r++) dequant_row_512(bits, q, d, m, r, K, out, (r - r0) * K, bf16);
            return;
        }
        for (int64_t r = r0 + lo; r < r0 + hi; r++)
            for (int64_t b = 0; b < nb; b++) {
                float s = half_to_float(d[r * nb + b]), off = bits == 4 && m ? half_to_float(m[r * nb + b]) : 0.f;
                int64_t at = (r - r0) * K + b * QB;
                if (vec) {
                    dequant_block_avx2(bits, q, r, K, b, s, off, out, at, bf16);
                    continue;
                }
                if (bits == 8) {
                    const int8_t* v = (const int8_t*)q + r * K + b * QB;
                    for (int i = 0; i < QB; i++) o[i] = (float)v[i] * s;
                } else {
                    const uint8_t* pair = q + r * (K / 2) + (b >> 1) * 32;
                    for (int i = 0; i < QB; i++) o[i] = (float)((b & 1) ? pair[i] >> 4 : pair[i] & 0xf) * s + off;
                }
                if (!bf16) {
                    memcpy((float*)out + at, o, sizeof(o));
                    continue;
                }
                uint16_t* h = (uint16_t*)out + at;
                for (int i = 0; i < QB; i++) {  // (finite values: round to nearest even)
                    uint32_t x;
                    memcpy(&x, o + i, 4);
                    h[i] = (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
                }
            }
    });
}

#ifndef RN_NO_PYTHON
// an importable module, so that the build and the bundles treat the library as Python's own
static struct PyModuleDef rn_module = {PyModuleDef_HEAD_INIT, "_native", "Roost's compiled CPU kernels (loaded with ctypes)", -1,
                                       nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&rn_module); }
#endif
