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
// Threads: a small pool of its own for the RWKV-7 layer step, torch's OpenMP threads for work
// among torch's operations (see the thread pool below); the calling thread works too;
// rn_set_threads sets how many. Nothing here links OpenMP (one runtime per process is torch's business, and macOS
// compilers ship none).

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

#if defined(_MSC_VER) && !defined(__clang__)
#define RN_INLINE __forceinline
#else
#define RN_INLINE inline __attribute__((always_inline))
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

#if RN_X86
// source_row with 8 values an instruction (the same values: both conversions are exact)
RN_TARGET("avx2,fma,f16c")
void source_row_avx2(const void* src, int dtype, int64_t row, int64_t cols, float* out) {
    if (dtype == 0) return source_row(src, dtype, row, cols, out);
    const uint16_t* s = (const uint16_t*)src + row * cols;
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i*)(s + i));
        __m256 f = dtype == 1 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
        _mm256_storeu_ps(out + i, f);
    }
    for (; i < cols; i++) out[i] = dtype == 1 ? bf16_to_float(s[i]) : half_to_float(s[i]);
}
#else
void source_row_avx2(const void* src, int dtype, int64_t row, int64_t cols, float* out) {
    source_row(src, dtype, row, cols, out);
}
#endif

// ---- the thread pool ----------------------------------------------------------------------------
// A whole layer's step (rn_v7_step) runs its products on a pool of our own whose threads claim
// chunks of each job (see Pool): on a busy machine a worker that is not running holds nobody up.
// Work among torch's own operations (a product called from a layer that runs in PyTorch, prompt
// chunks' dequantisation, conversions at load) runs on torch's OpenMP threads where torch's
// runtime exports GNU's entry points (libgomp on Linux, LLVM's libomp on macOS; passed in by
// roost.engine.native): they spin a while after each of torch's operations, and a second team
// beside them costs dearly on 2 cores (RWKV-6 1.6B `cpu int8`, whose layers run in PyTorch: 174
// against 100 ms a token; prompts ~20% slower). Measured on 2 cores, v7 1.5B `cpu int4`, 2
// threads: tokens with the layer step on OpenMP's threads 72 ms quiet but 376-2600 ms beside one
// busy process; on the pool 74-80 ms quiet and ~165 ms beside it (1 thread: ~135 ms).
typedef void (*gomp_parallel_fn)(void (*)(void*), void*, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
gomp_parallel_fn g_gomp_parallel = nullptr;
std::atomic<bool> g_share_products{false};  // the layer step's products on the OpenMP threads too
omp_int_fn g_omp_thread_num = nullptr, g_omp_num_threads = nullptr;

struct Job {
    const std::function<void(int, int)>* fn;
};

void omp_trampoline(void* data) {
    const Job* job = (const Job*)data;
    (*job->fn)(g_omp_thread_num(), g_omp_num_threads());
}

// Our own pool splits each job into a few chunks per thread that the threads claim one at a time
// (the calling thread too): when the machine is busy and a worker is not running, the others do
// its share instead of waiting for it (a job ends when its chunks are done, not when every thread
// has turned up).
class Pool {
  public:
    static constexpr int CHUNKS = 4;  // chunks per thread

    ~Pool() { resize(0); }

    void resize(int extra) {  // `extra` workers beside the calling thread
        threads_ = extra + 1;
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
        uint64_t now = generation_.load();  // (a new worker waits for the next job, not the last one)
        for (int i = 0; i < extra; i++) workers_.emplace_back([this, now] { loop(now); });
    }

    int size() const { return threads_; }

    // fn(part, parts) for every part, on the OpenMP runtime's threads where the layer step shares
    // them (rn_share_products), else on the pool's own
    void run(const std::function<void(int, int)>& fn) { run_on(fn, g_share_products.load()); }

    // the same where the work sits among torch's own operations (products of layers that run in
    // PyTorch, prompt chunks, conversions at load): on the OpenMP runtime's threads where there is
    // one, which are running anyway
    void run_shared(const std::function<void(int, int)>& fn) { run_on(fn, true); }

    // on the pool's own threads, or when another caller holds the pool, on this thread alone (no
    // waiting behind another product)
    void run_on(const std::function<void(int, int)>& fn, bool openmp) {
        if (openmp && g_gomp_parallel) {
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
        const uint64_t parts = (uint64_t)size() * CHUNKS;
        uint32_t mine;
        {
            std::lock_guard<std::mutex> g(m_);
            job_.store(&fn, std::memory_order_relaxed);
            done_.store(0, std::memory_order_relaxed);
            const uint64_t gen = generation_.load() + 1;
            ticket_.store(((gen & 0xffffffffu) << 32) | (parts << 16), std::memory_order_release);
            generation_.store(gen, std::memory_order_release);  // (after the ticket: a worker that sees it finds the job)
            mine = (uint32_t)gen;
        }
        cv_.notify_all();
        work(mine);
        // the chunks others claimed: a short spin, then sleep
        for (int spin = 0; done_.load(std::memory_order_acquire) != parts; spin++) {
            if (spin > 2000) {
                std::unique_lock<std::mutex> g(m_);
                done_cv_.wait(g, [this, parts] { return done_.load(std::memory_order_acquire) == parts; });
                break;
            }
            std::this_thread::yield();
        }
    }

  private:
    // claim and run chunks of job `gen` while it has some left. The ticket holds the job's
    // generation, its number of chunks and the next chunk: a claim is one compare-and-swap, so a
    // thread that turns up late claims nothing of a finished job (and never calls its function).
    void work(uint32_t gen) {
        uint64_t t = ticket_.load(std::memory_order_acquire);
        for (;;) {
            uint64_t parts = (t >> 16) & 0xffff, next = t & 0xffff;
            if ((uint32_t)(t >> 32) != gen || next >= parts) return;
            if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
            (*job_.load(std::memory_order_acquire))((int)next, (int)parts);
            if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == parts) {
                std::lock_guard<std::mutex> g(m_);
                done_cv_.notify_all();
            }
            t = ticket_.load(std::memory_order_acquire);
        }
    }

    void loop(uint64_t seen) {
        for (;;) {
            // spin a little for the next job before sleeping: products come in quick succession
            for (int spin = 0; spin < 2000 && generation_.load(std::memory_order_acquire) == seen && !stop_.load(); spin++)
                std::this_thread::yield();
            {
                std::unique_lock<std::mutex> g(m_);
                cv_.wait(g, [&] { return stop_.load() || generation_.load() != seen; });
                if (stop_.load()) return;
                seen = generation_.load();
            }
            work((uint32_t)seen);
        }
    }

    std::vector<std::thread> workers_;
    int threads_ = 1;
    std::mutex m_, run_lock_;
    std::condition_variable cv_, done_cv_;
    std::atomic<const std::function<void(int, int)>*> job_{nullptr};
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> generation_{0};  // a new job or a resize (changed under m_)
    std::atomic<uint64_t> ticket_{0};
    std::atomic<uint64_t> done_{0};
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
    std::vector<uint8_t> u; // M x K: q + 128 (the AVX512-VNNI q8 product's unsigned operand)
};

// one block of 32 activations: q (and q + 128 into u, where given), the scale d and d times the sum of q
inline void act_block(const float* v, int8_t* q, uint8_t* u, float* d_out, float* s_out) {
    float amax = 0.f;
    for (int i = 0; i < QB; i++) amax = std::max(amax, fabsf(v[i]));
    float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
    int32_t sum = 0;
    for (int i = 0; i < QB; i++) sum += q[i] = (int8_t)round_even(v[i] * id);
    if (u)
        for (int i = 0; i < QB; i++) u[i] = (uint8_t)(q[i] + 128);
    *d_out = d;
    *s_out = d * (float)sum;
}

#if RN_X86
// the same, 8 values a vector (the same arithmetic: the same blocks)
RN_TARGET("avx2,fma,f16c")
void act_block_avx2(const float* v, int8_t* q, uint8_t* u, float* d_out, float* s_out) {
    const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 x[4];
    for (int j = 0; j < 4; j++) x[j] = _mm256_loadu_ps(v + 8 * j);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(x[0], mask), _mm256_and_ps(x[1], mask)),
                             _mm256_max_ps(_mm256_and_ps(x[2], mask), _mm256_and_ps(x[3], mask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
    const __m256 iv = _mm256_set1_ps(id);
    __m256i qi[4];
    for (int j = 0; j < 4; j++)
        qi[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(x[j], iv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i total = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // (packs work per 128-bit lane)
    _mm256_storeu_si256((__m256i*)q, b);
    if (u) _mm256_storeu_si256((__m256i*)u, _mm256_xor_si256(b, _mm256_set1_epi8((char)0x80)));
    *d_out = d;
    *s_out = d * (float)_mm_cvtsi128_si32(t);
}
#endif

enum Isa { SCALAR = 0, AVX2 = 1, AVX512_VNNI = 2, NEON = 3, NEON_DOTPROD = 4 };
int isa();

void quantize_acts(const float* x, int64_t M, int64_t K, Acts& a, bool with_unsigned) {
    const int64_t nb = K / QB;
    a.q.resize((size_t)(M * K));
    a.d.resize((size_t)(M * nb));
    a.s.resize((size_t)(M * nb));
    if (with_unsigned) a.u.resize((size_t)(M * K));
#if RN_X86
    const int use = isa();
    const bool wide = use == AVX2 || use == AVX512_VNNI;
#endif
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t at = m * K + b * QB;
            uint8_t* u = with_unsigned ? a.u.data() + at : nullptr;
#if RN_X86
            if (wide) {
                act_block_avx2(x + at, a.q.data() + at, u, &a.d[m * nb + b], &a.s[m * nb + b]);
                continue;
            }
#endif
            act_block(x + at, a.q.data() + at, u, &a.d[m * nb + b], &a.s[m * nb + b]);
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

// 32 weights of a q8 row, or of a q4 row (block b, 0..15), as signed bytes
RN_TARGET("avx2,fma,f16c")
inline __m256i load_w_avx2(int bits, const uint8_t* row, int64_t b) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i*)(row + b * QB));
    __m256i pair = _mm256_loadu_si256((const __m256i*)(row + (b >> 1) * 32));
    __m256i v = (b & 1) ? _mm256_srli_epi16(pair, 4) : pair;
    return _mm256_and_si256(v, _mm256_set1_epi8(0xf));
}

// The x86 products work on tiles: 4 weight rows x MT activation rows. Each block of the 4 rows is
// loaded and unpacked once and multiplied with every activation row of the tile, so that a batch
// of rows (API streams decoding together) costs little more than one: the weights are read once,
// the arithmetic per activation row is a few instructions a block.
constexpr int TILE_ROWS = 4;
// the weight bytes read ahead of the products (software prefetch: measured on the v7 1.5B shape's
// 8192 x 2048 matrices, larger than the caches, 2 threads: q8 15.5 -> 19.5 GB/s, q4 13.5 -> 19.5,
// against 21-22 for a plain sum of the same bytes in torch)
template <int BITS>
RN_INLINE const char* ahead(const uint8_t* row, int64_t b) {
    return (const char*)row + (BITS == 8 ? b * QB + 1024 : b * QB / 2 + 2048);
}

// the weight rows of the tile starting at r (the last rows repeated where fewer than 4 are left)
inline int tile_rows(const uint8_t* w, const uint16_t* dw, int64_t row_bytes, int64_t nb, int64_t r, int64_t r1,
                     const uint8_t** wr, const uint16_t** dr) {
    int rows = (int)std::min<int64_t>(TILE_ROWS, r1 - r);
    for (int i = 0; i < TILE_ROWS; i++) {
        int64_t ri = r + std::min(i, rows - 1);
        wr[i] = w + ri * row_bytes;
        dr[i] = dw + ri * nb;
    }
    return rows;
}

// AVX2: one block per step. q8: |x| (u8) times w with x's signs (s8), pairs summed in int16 (at most
// 2 x 127 x 127); q4: w (0..15, u8) times x (s8).
template <int BITS, int MT>
RN_TARGET("avx2,fma,f16c")
void tile_avx2(const uint8_t* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t m0, int64_t N, int64_t r,
               int64_t r1, float* y) {
    const int64_t nb = K / QB, row_bytes = BITS == 8 ? K : K / 2;
    const uint8_t* wr[TILE_ROWS];
    const uint16_t* dr[TILE_ROWS];
    const int rows = tile_rows(w, dw, row_bytes, nb, r, r1, wr, dr);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TILE_ROWS][MT];
    for (int i = 0; i < TILE_ROWS; i++)
        for (int j = 0; j < MT; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[TILE_ROWS];
        __m256 sw[TILE_ROWS];
        for (int i = 0; i < TILE_ROWS; i++) {
            if (BITS == 8 || !(b & 1)) _mm_prefetch(ahead<BITS>(wr[i], b), _MM_HINT_T0);
            wv[i] = load_w_avx2(BITS, wr[i], b);
            sw[i] = _mm256_set1_ps(_cvtsh_ss(dr[i][b]));
        }
        for (int j = 0; j < MT; j++) {
            const int64_t m = m0 + j;
            __m256i xv = _mm256_loadu_si256((const __m256i*)(a.q.data() + m * K + b * QB));
            __m256 sx = _mm256_broadcast_ss(a.d.data() + m * nb + b);
            __m256i ax = BITS == 8 ? _mm256_sign_epi8(xv, xv) : xv;
            for (int i = 0; i < TILE_ROWS; i++) {
                __m256i p16 = BITS == 8 ? _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv[i], xv))
                                        : _mm256_maddubs_epi16(wv[i], xv);
                __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[i][j] = _mm256_fmadd_ps(p, _mm256_mul_ps(sw[i], sx), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < MT; j++) y[(m0 + j) * N + r + i] = hsum256(acc[i][j]);
}

#define RN_VNNI "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"

// AVX512-VNNI: two blocks per 512-bit vector, u8 x s8 products summed in int32 (vpdpbusd)
RN_TARGET(RN_VNNI)
inline __m512i load_w_512(int bits, const uint8_t* row, int64_t b) {  // blocks b, b + 1 (b even)
    if (bits == 8) return _mm512_loadu_si512((const void*)(row + b * QB));
    __m256i pair = _mm256_loadu_si256((const __m256i*)(row + (b >> 1) * 32));
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(pair), _mm256_srli_epi16(pair, 4), 1);
    return _mm512_and_si512(v, _mm512_set1_epi8(0xf));
}

// two float scales, each across the 8 lanes of its block
RN_TARGET(RN_VNNI)
inline __m512 pair_lanes(__m128 two) {
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(two));
}

// q8: x + 128 (u8) times w (s8), minus 128 x the block's sum of w (one product per weight block,
// shared by the tile's activation rows); q4: w (0..15, u8) times x (s8).
template <int BITS, int MT>
RN_TARGET(RN_VNNI)
void tile_vnni(const uint8_t* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t m0, int64_t N, int64_t r,
               int64_t r1, float* y) {
    const int64_t nb = K / QB, row_bytes = BITS == 8 ? K : K / 2;
    const uint8_t* wr[TILE_ROWS];
    const uint16_t* dr[TILE_ROWS];
    const int rows = tile_rows(w, dw, row_bytes, nb, r, r1, wr, dr);
    const __m512i zero = _mm512_setzero_si512(), c128 = _mm512_set1_epi8((char)0x80);
    const uint8_t* xs = BITS == 8 ? a.u.data() : (const uint8_t*)a.q.data();
    __m512 acc[TILE_ROWS][MT];
    for (int i = 0; i < TILE_ROWS; i++)
        for (int j = 0; j < MT; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {  // (nb is even: cols are a multiple of 64)
        __m512i wv[TILE_ROWS], base[TILE_ROWS];
        __m512 sw[TILE_ROWS];
        for (int i = 0; i < TILE_ROWS; i++) {
            _mm_prefetch(ahead<BITS>(wr[i], b), _MM_HINT_T0);
            wv[i] = load_w_512(BITS, wr[i], b);
            base[i] = BITS == 8 ? _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c128, wv[i])) : zero;
            uint32_t two;
            memcpy(&two, dr[i] + b, 4);
            sw[i] = pair_lanes(_mm_cvtph_ps(_mm_cvtsi32_si128((int)two)));
        }
        for (int j = 0; j < MT; j++) {
            const int64_t m = m0 + j;
            __m512i xv = _mm512_loadu_si512((const void*)(xs + m * K + b * QB));
            __m512 sx = pair_lanes(_mm_castpd_ps(_mm_load_sd((const double*)(a.d.data() + m * nb + b))));
            for (int i = 0; i < TILE_ROWS; i++) {
                __m512i p = BITS == 8 ? _mm512_dpbusd_epi32(base[i], xv, wv[i]) : _mm512_dpbusd_epi32(zero, wv[i], xv);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(sw[i], sx), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < MT; j++) y[(m0 + j) * N + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

// rows [r0, r1) of the weight times activation rows 0..M-1, tile by tile
template <template <int, int> class Tile, int BITS>
void rows_tiled(const uint8_t* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N, int64_t r0,
                int64_t r1, float* y) {
    for (int64_t r = r0; r < r1; r += TILE_ROWS) {
        int64_t m0 = 0;
        for (; m0 + 4 <= M; m0 += 4) Tile<BITS, 4>::run(w, dw, K, a, m0, N, r, r1, y);
        switch (M - m0) {
            case 3: Tile<BITS, 3>::run(w, dw, K, a, m0, N, r, r1, y); break;
            case 2: Tile<BITS, 2>::run(w, dw, K, a, m0, N, r, r1, y); break;
            case 1: Tile<BITS, 1>::run(w, dw, K, a, m0, N, r, r1, y); break;
        }
    }
}

template <int BITS, int MT>
struct TileAvx2 {
    static void run(const uint8_t* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t m0, int64_t N, int64_t r,
                    int64_t r1, float* y) { tile_avx2<BITS, MT>(w, dw, K, a, m0, N, r, r1, y); }
};

template <int BITS, int MT>
struct TileVnni {
    static void run(const uint8_t* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t m0, int64_t N, int64_t r,
                    int64_t r1, float* y) { tile_vnni<BITS, MT>(w, dw, K, a, m0, N, r, r1, y); }
};

void rows_avx2(int bits, const void* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N,
               int64_t r0, int64_t r1, float* y) {
    if (bits == 8) rows_tiled<TileAvx2, 8>((const uint8_t*)w, dw, K, a, M, N, r0, r1, y);
    else rows_tiled<TileAvx2, 4>((const uint8_t*)w, dw, K, a, M, N, r0, r1, y);
}

void rows_vnni(int bits, const void* w, const uint16_t* dw, int64_t K, const Acts& a, int64_t M, int64_t N,
               int64_t r0, int64_t r1, float* y) {
    if (bits == 8) rows_tiled<TileVnni, 8>((const uint8_t*)w, dw, K, a, M, N, r0, r1, y);
    else rows_tiled<TileVnni, 4>((const uint8_t*)w, dw, K, a, M, N, r0, r1, y);
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

// The sums of a block's 32 values in one fixed order, which the AVX2 conversion below follows
// exactly (so that every instruction set makes the same blocks): 8 lanes, lane k adding values k,
// k + 8, k + 16, k + 24 in turn, then the lanes pairwise as hsum256 adds them.
inline float sum32(const float* t) {
    float l[8];
    for (int k = 0; k < 8; k++) l[k] = ((t[k] + t[k + 8]) + t[k + 16]) + t[k + 24];
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// the block's least-squares scale and offset for its values (as floats, before fp16)
inline void q4_fit_scalar(const float* v, float* scale_out, float* offset_out) {
    float lo = v[0], hi = v[0];
    for (int i = 1; i < QB; i++) { lo = std::min(lo, v[i]); hi = std::max(hi, v[i]); }
    float scale = std::max((hi - lo) / 15.f, 1e-8f), offset = lo, q[QB], t[QB];
    for (int round = 0; round < Q4_REFINE; round++) {
        float inv = 1.f / scale;
        for (int i = 0; i < QB; i++) q[i] = std::max(0.f, std::min(15.f, round_even((v[i] - offset) * inv)));
        float qm = sum32(q) / QB, wm = sum32(v) / QB;
        for (int i = 0; i < QB; i++) t[i] = (q[i] - qm) * (q[i] - qm);
        float var = sum32(t);
        for (int i = 0; i < QB; i++) t[i] = (q[i] - qm) * (v[i] - wm);
        float cov = sum32(t);
        if (var > 0.f) scale = std::max(cov / var, 1e-8f);  // (a constant block keeps its own)
        offset = wm - scale * qm;
    }
    *scale_out = scale;
    *offset_out = offset;
}

#if RN_X86
// the block's 4-bit values for scale 1 / inv and offset m, into its nibbles of the pair
RN_TARGET("avx2,fma,f16c")
void q4_values_avx2(const float* v, float m, float inv, uint8_t* pair, bool high) {
    const __m256 zero = _mm256_setzero_ps(), fifteen = _mm256_set1_ps(15.f), mv = _mm256_set1_ps(m),
                 iv = _mm256_set1_ps(inv);
    __m256i q[4];
    for (int j = 0; j < 4; j++)
        q[j] = _mm256_cvtps_epi32(_mm256_max_ps(zero, _mm256_min_ps(fifteen, _mm256_round_ps(
            _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + 8 * j), mv), iv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // (packs work per 128-bit lane)
    __m256i old = _mm256_loadu_si256((const __m256i*)pair);
    __m256i out = high ? _mm256_or_si256(_mm256_and_si256(old, _mm256_set1_epi8(0x0f)),
                                         _mm256_and_si256(_mm256_slli_epi16(b, 4), _mm256_set1_epi8((char)0xf0)))
                       : _mm256_or_si256(_mm256_and_si256(old, _mm256_set1_epi8((char)0xf0)), b);
    _mm256_storeu_si256((__m256i*)pair, out);
}
#else
void q4_values_avx2(const float*, float, float, uint8_t*, bool) {}
#endif

// a q4 block from its fitted scale and offset (rounded to fp16 here), into its nibbles of the pair
void block_q4_fitted(const float* v, float scale, float offset, uint8_t* pair, bool high, uint16_t* d_out,
                     uint16_t* m_out, bool vec) {
    uint16_t dh = float_to_half(scale), mh = float_to_half(offset);
    float d = half_to_float(dh), m = half_to_float(mh), inv = d != 0.f ? 1.f / d : 0.f;
    *d_out = dh;
    *m_out = mh;
    if (vec) return q4_values_avx2(v, m, inv, pair, high);
    for (int i = 0; i < QB; i++) {
        uint8_t qv = (uint8_t)std::max(0.f, std::min(15.f, round_even((v[i] - m) * inv)));
        pair[i] = high ? (uint8_t)((pair[i] & 0x0f) | (qv << 4)) : (uint8_t)((pair[i] & 0xf0) | qv);
    }
}

// one block, fitted alone (rows' last blocks that do not make 8: q4_fit8_avx2 takes the rest)
void block_q4(const float* v, uint8_t* pair, bool high, uint16_t* d_out, uint16_t* m_out, bool vec) {
    float scale, offset;
    q4_fit_scalar(v, &scale, &offset);
    block_q4_fitted(v, scale, offset, pair, high, d_out, m_out, vec);
}

#if RN_X86
RN_TARGET("avx2,fma,f16c")
inline void transpose8(__m256* r) {  // an 8 x 8 block of floats: r[j] lane k <- r[k] lane j
    __m256 t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xee);
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xee);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}

RN_TARGET("avx2,fma,f16c")
inline __m256 sum32_lanes(const __m256* t) {  // sum32's order, one block a lane
    __m256 l[8];
    for (int k = 0; k < 8; k++) l[k] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[k], t[k + 8]), t[k + 16]), t[k + 24]);
    return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6])),
                         _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7])));
}

// q4_fit_scalar for 8 consecutive blocks at once, a block a lane (the fit is a chain of dependent
// steps: one block at a time it waits on itself), the scalar code's operations in its order
RN_TARGET("avx2,fma,f16c")
void q4_fit8_avx2(const float* v, float* scales, float* offsets) {
    __m256 x[QB], q[QB], t[QB];
    for (int c = 0; c < 4; c++) {
        __m256 r[8];
        for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(v + k * QB + c * 8);
        transpose8(r);  // r[j], lane k: value c * 8 + j of block k
        for (int j = 0; j < 8; j++) x[c * 8 + j] = r[j];
    }
    __m256 lo = x[0], hi = x[0];
    for (int i = 1; i < QB; i++) {
        lo = _mm256_min_ps(x[i], lo);  // (x < lo ? x : lo, as std::min(lo, x))
        hi = _mm256_max_ps(x[i], hi);
    }
    const __m256 tiny = _mm256_set1_ps(1e-8f), zero = _mm256_setzero_ps(), fifteen = _mm256_set1_ps(15.f),
                 n = _mm256_set1_ps((float)QB);
    __m256 scale = _mm256_max_ps(_mm256_div_ps(_mm256_sub_ps(hi, lo), fifteen), tiny), offset = lo;
    const __m256 wm = _mm256_div_ps(sum32_lanes(x), n);
    for (int round = 0; round < Q4_REFINE; round++) {
        const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.f), scale);
        for (int i = 0; i < QB; i++)
            q[i] = _mm256_max_ps(_mm256_min_ps(_mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(x[i], offset), inv),
                                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), fifteen), zero);
        const __m256 qm = _mm256_div_ps(sum32_lanes(q), n);
        for (int i = 0; i < QB; i++) {
            __m256 dq = _mm256_sub_ps(q[i], qm);
            t[i] = _mm256_mul_ps(dq, dq);
        }
        const __m256 var = sum32_lanes(t);
        for (int i = 0; i < QB; i++) t[i] = _mm256_mul_ps(_mm256_sub_ps(q[i], qm), _mm256_sub_ps(x[i], wm));
        const __m256 cov = sum32_lanes(t);
        const __m256 fitted = _mm256_max_ps(_mm256_div_ps(cov, var), tiny);
        scale = _mm256_blendv_ps(scale, fitted, _mm256_cmp_ps(var, zero, _CMP_GT_OQ));
        offset = _mm256_sub_ps(wm, _mm256_mul_ps(scale, qm));
    }
    _mm256_storeu_ps(scales, scale);
    _mm256_storeu_ps(offsets, offset);
}
#else
void q4_fit8_avx2(const float* v, float* scales, float* offsets) {
    for (int k = 0; k < 8; k++) q4_fit_scalar(v + k * QB, scales + k, offsets + k);
}
#endif

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


// ---- one RWKV-7 layer, one token per stream (rn_v7_step) ----------------------------------------
// The whole layer in one call: generation's ~130 small operations a layer in PyTorch's eager mode
// (~1 ms a layer of dispatch on a 1.5B model) become a few loops over the channels around the
// layer's nine products. The arithmetic is that of roost.engine.arch.v7 (the reference, which the
// tests compare this with); the products are the kernels above, the low-rank pairs included.


struct Mat {  // a q8 / q4 matrix (N rows of K): what BlockLinear holds
    int64_t bits;
    const uint8_t* q;
    const uint16_t* d;
    const uint16_t* m;
    int64_t N, K;
};

struct Prod {  // y (M x N) = x (M x K) times w, transposed; acts: scratch for x in blocks
    const Mat* w;
    const float* x;
    int64_t M;
    float* y;
    Acts* acts;
};

// Several independent products as one job on the pool (one wait for the threads, not one each):
// the rows of all, in fours, split between the chunks by the bytes they read. On the pool's own
// threads, or, `shared`, on the OpenMP runtime's (see the thread pool).
void products(const Prod* ps, int n, bool shared = false) {
    const int use = isa();
    double cost[8], total = 0.0;  // the bytes of a unit (4 rows) of each, and of all
    int64_t units[8];
    for (int i = 0; i < n; i++) {
        const Mat& w = *ps[i].w;
        quantize_acts(ps[i].x, ps[i].M, w.K, *ps[i].acts, w.bits == 8 && use == AVX512_VNNI);
        units[i] = (w.N + 3) / 4;
        cost[i] = 4.0 * (double)(w.K * w.bits / 8 + (w.K / QB) * (w.bits == 4 ? 4 : 2));
        total += cost[i] * (double)units[i];
    }
    auto job = [ps, n, use, &cost, &units, total](int part, int parts) {
        const double c0 = total * part / parts, c1 = total * (part + 1) / parts;
        double base = 0.0;
        for (int i = 0; i < n; i++) {  // unit j of product i is this chunk's if its start lies in [c0, c1)
            auto first_at = [&](double c) {
                double j = std::ceil((c - base) / cost[i]);
                return (int64_t)std::min<double>((double)units[i], std::max(0.0, j));
            };
            const int64_t lo = first_at(c0), hi = part + 1 == parts ? units[i] : first_at(c1);
            base += cost[i] * (double)units[i];
            if (lo >= hi) continue;
            const Prod& p = ps[i];
            const Mat& w = *p.w;
            rows(use, (int)w.bits, w.q, w.d, w.m, w.K, *p.acts, p.M, w.N, lo * 4, std::min(w.N, hi * 4), p.y);
        }
    };
    if (shared) pool().run_shared(job);
    else pool().run(job);
}

void product(const Mat& w, const float* x, int64_t M, float* y, Acts& acts, bool shared = false) {
    Prod p{&w, x, M, y, &acts};
    products(&p, 1, shared);
}

inline float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }

void layer_norm(const float* x, const float* w, const float* b, int64_t C, float* out) {
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < C; c++) mean += x[c];
    mean /= (double)C;
    for (int64_t c = 0; c < C; c++) var += ((double)x[c] - mean) * ((double)x[c] - mean);
    var /= (double)C;
    const float mu = (float)mean, inv = (float)(1.0 / sqrt(var + 1e-5));
    for (int64_t c = 0; c < C; c++) out[c] = (x[c] - mu) * inv * w[c] + b[c];
}

// one head of the delta rule: s (N x N, [v, k]) <- s diag(w) - (s kk) (a kk)^T + v k^T, out = s r
RN_INLINE void wkv_head_body(int64_t N, const float* r, const float* w, const float* k, const float* v,
                             const float* kk, const float* a, const float* s, float* s_out, float* out) {
    float akk[256];
    for (int64_t j = 0; j < N; j++) akk[j] = a[j] * kk[j];
    for (int64_t i = 0; i < N; i++) {
        const float* row = s + i * N;
        float* nrow = s_out + i * N;
        float sk = 0.f;
        for (int64_t j = 0; j < N; j++) sk += row[j] * kk[j];
        float o = 0.f;
        const float vi = v[i];
        for (int64_t j = 0; j < N; j++) {
            float nv = row[j] * w[j] - sk * akk[j] + vi * k[j];
            nrow[j] = nv;
            o += nv * r[j];
        }
        out[i] = o;
    }
}

struct V7Heads {  // per stream b and head h: the vectors at b * C + h * N, the state at (b * H + h) * N * N
    int64_t C, H, N;
    const float *r, *w, *k, *v, *kk, *a, *s;
    float *s_out, *out;
};

RN_INLINE void wkv_heads_body(const V7Heads& p, int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; bh++) {
        const int64_t b = bh / p.H, h = bh % p.H, at = b * p.C + h * p.N, st = bh * p.N * p.N;
        wkv_head_body(p.N, p.r + at, p.w + at, p.k + at, p.v + at, p.kk + at, p.a + at, p.s + st, p.s_out + st,
                      p.out + at);
    }
}

#if RN_X86
RN_TARGET("avx2,fma,f16c")
void wkv_heads_avx2(const V7Heads& p, int64_t lo, int64_t hi) { wkv_heads_body(p, lo, hi); }
void (*const wkv_heads_wide)(const V7Heads&, int64_t, int64_t) = wkv_heads_avx2;
#else
void (*const wkv_heads_wide)(const V7Heads&, int64_t, int64_t) = nullptr;
#endif
void wkv_heads_plain(const V7Heads& p, int64_t lo, int64_t hi) { wkv_heads_body(p, lo, hi); }

// RWKV-5/6, one head: out = r (diag(u) k v^T + S), S <- diag(w) S + k v^T (S: N x N, [k, v])
RN_INLINE void wkv6_head_body(int64_t N, const float* r, const float* w, const float* k, const float* v,
                              const float* u, const float* s, float* s_out, float* out) {
    float bonus = 0.f;
    for (int64_t i = 0; i < N; i++) bonus += r[i] * u[i] * k[i];
    for (int64_t j = 0; j < N; j++) out[j] = bonus * v[j];
    for (int64_t i = 0; i < N; i++) {
        const float *row = s + i * N, ri = r[i], wi = w[i], ki = k[i];
        float* nrow = s_out + i * N;
        for (int64_t j = 0; j < N; j++) {
            out[j] += ri * row[j];
            nrow[j] = wi * row[j] + ki * v[j];
        }
    }
}

struct V6Heads {  // as V7Heads; u per channel (the heads' bonus), shared by the streams
    int64_t C, H, N;
    const float *r, *w, *k, *v, *u, *s;
    float *s_out, *out;
};

RN_INLINE void wkv6_heads_body(const V6Heads& p, int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; bh++) {
        const int64_t b = bh / p.H, h = bh % p.H, at = b * p.C + h * p.N, st = bh * p.N * p.N;
        wkv6_head_body(p.N, p.r + at, p.w + at, p.k + at, p.v + at, p.u + h * p.N, p.s + st, p.s_out + st,
                       p.out + at);
    }
}

#if RN_X86
RN_TARGET("avx2,fma,f16c")
void wkv6_heads_avx2(const V6Heads& p, int64_t lo, int64_t hi) { wkv6_heads_body(p, lo, hi); }
void (*const wkv6_heads_wide)(const V6Heads&, int64_t, int64_t) = wkv6_heads_avx2;
RN_TARGET("avx2,fma,f16c")
void rank_up_avx2(const float* h, const float* w, int64_t D, int64_t C, float* out) {
    for (int64_t c = 0; c < C; c++) out[c] = 0.f;
    for (int64_t d = 0; d < D; d++)
        for (int64_t c = 0; c < C; c++) out[c] += h[d] * w[d * C + c];
}
#else
void (*const wkv6_heads_wide)(const V6Heads&, int64_t, int64_t) = nullptr;
#endif
void wkv6_heads_plain(const V6Heads& p, int64_t lo, int64_t hi) { wkv6_heads_body(p, lo, hi); }

// out (C) = h (D) times w (D x C): RWKV-6's five small second halves of the mixes' low rank
void rank_up(const float* h, const float* w, int64_t D, int64_t C, float* out) {
#if RN_X86
    if (isa() == AVX2 || isa() == AVX512_VNNI) return rank_up_avx2(h, w, D, C, out);
#endif
    for (int64_t c = 0; c < C; c++) out[c] = 0.f;
    for (int64_t d = 0; d < D; d++)
        for (int64_t c = 0; c < C; c++) out[c] += h[d] * w[d * C + c];
}

// the wkv of every (stream, head) pair, split between the pool's threads: `wide` with AVX2 (the
// same code, compiled for it), else `plain`; the wide one is null where the build has no x86 paths
template <class Heads>
void all_heads(const Heads& heads, int64_t pairs, void (*wide)(const Heads&, int64_t, int64_t),
               void (*plain)(const Heads&, int64_t, int64_t)) {
    const auto fn = wide != nullptr && (isa() == AVX2 || isa() == AVX512_VNNI) ? wide : plain;
    pool().run([&heads, pairs, fn](int part, int parts) {
        int64_t lo, hi;
        split(pairs, part, parts, 1, &lo, &hi);
        fn(heads, lo, hi);
    });
}

// fn(b) for each of B streams: on the pool where there are several (each stream's share of the
// step's element-wise work is independent of the others'), else here
template <class F>
void per_stream(int64_t B, const F& fn) {
    if (B == 1) {
        fn(0);
        return;
    }
    pool().run([&fn, B](int part, int parts) {
        int64_t lo, hi;
        split(B, part, parts, 1, &lo, &hi);
        for (int64_t b = lo; b < hi; b++) fn(b);
    });
}

}  // namespace

// The layout of roost.engine.fused.V7Layer (a ctypes Structure: keep the two in step).
struct RnV7Layer {
    int64_t C, H, N, F, R;  // width, heads, head size, FFN width, the low-rank pairs' columns in all
    int64_t first;          // layer 0: v_first is written, not read; no value pair
    int64_t lr_at[4], lr_len[4];  // columns of the decay, rate, gate and value pairs in lr1's output
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const float* mix;  // 6 x C: x_r, x_k, x_v, x_w, x_a, x_g
    const float *w0, *a0, *v0, *k_k, *k_a, *r_k, *lnx_w, *lnx_b, *ffn_xk;
    Mat r, k, v, o, fk, fv, lr1, lr2;
};

// One token for each of B streams through one layer. x, att_x, ffn_x, v_first: B x C; s: B x H x N x N.
// New values go to the *_out arrays, which may be the inputs themselves (the state updated in place:
// each value is read before its place is written) but not x; v_first is written in layer 0
// and read in the others. Returns 0, or -1 for a layer this step does not take.
RN_API int rn_v7_step(const RnV7Layer* L, int64_t B, const float* x, float* x_out, const float* att_x,
                      float* att_x_out, const float* s, float* s_out, const float* ffn_x, float* ffn_x_out,
                      float* v_first) {
    const int64_t C = L->C, H = L->H, N = L->N, F = L->F, R = L->R;
    if (N > 256 || H * N != C) return -1;
    const int n_lr = L->first ? 3 : 4;
    thread_local std::vector<float> buf;
    thread_local Acts acts;
    // scratch: xa (B x C), mixed (7: r k v w a g, v again), r k v, h1 (n_lr B x R), lo (n_lr B x C),
    // kk a w y, big (B x F)
    buf.resize((size_t)(B * C * 15 + n_lr * B * R + n_lr * B * C + B * F));
    float* xa = buf.data();
    float* mixed = xa + B * C;  // 7 of B x C: x_r, x_k, x_v, x_w, x_a, x_g and x_v again (lr1's rows)
    float *rr = mixed + 7 * B * C, *kv = rr + B * C, *vv = kv + B * C;
    float* h1 = vv + B * C;
    float* lo = h1 + n_lr * B * R;
    float *kk = lo + n_lr * B * C, *aa = kk + B * C, *ww = aa + B * C, *y = ww + B * C;
    float* big = y + B * C;

    // time mixing: the shifted mixes
    per_stream(B, [&](int64_t b) {
        float* xn = xa + b * C;
        layer_norm(x + b * C, L->ln1_w, L->ln1_b, C, xn);
        for (int64_t c = 0; c < C; c++) {
            float d = att_x[b * C + c] - xn[c];
            for (int j = 0; j < 6; j++) mixed[(j * B + b) * C + c] = xn[c] + d * L->mix[j * C + c];
            mixed[(6 * B + b) * C + c] = mixed[(2 * B + b) * C + c];
            att_x_out[b * C + c] = xn[c];
        }
    });
    // r, k, v and the low-rank pairs' first halves: [x_w; x_a; x_g; x_v] through lr1, each input
    // keeping its own pair's columns (tanh on the decay's, sigmoid on the gate's), then through lr2
    {
        thread_local Acts more[3];
        const Prod first[4] = {{&L->r, mixed, B, rr, &acts},
                               {&L->k, mixed + B * C, B, kv, &more[0]},
                               {&L->v, mixed + 2 * B * C, B, vv, &more[1]},
                               {&L->lr1, mixed + 3 * B * C, n_lr * B, h1, &more[2]}};
        products(first, 4);
    }
    for (int i = 0; i < n_lr; i++)
        for (int64_t b = 0; b < B; b++) {
            float* row = h1 + (i * B + b) * R;
            for (int64_t c = 0; c < R; c++) {
                if (c < L->lr_at[i] || c >= L->lr_at[i] + L->lr_len[i]) row[c] = 0.f;
                else if (i == 0) row[c] = tanhf(row[c]);
                else if (i == 2) row[c] = sigmoidf(row[c]);
            }
        }
    product(L->lr2, h1, n_lr * B, lo, acts);

    // per stream (on the pool where there are several: exp and sigmoid over B x C values)
    auto mix_stream = [&](int64_t b) {
        float *r = rr + b * C, *k = kv + b * C, *v = vv + b * C;
        const float *dec = lo + b * C, *ar = lo + (B + b) * C;
        float *kkb = kk + b * C, *ab = aa + b * C, *wb = ww + b * C;
        for (int64_t c = 0; c < C; c++) {
            ab[c] = sigmoidf(L->a0[c] + ar[c]);
            kkb[c] = k[c] * L->k_k[c];
        }
        for (int64_t h = 0; h < H; h++) {  // kk: unit length per head (F.normalize, eps 1e-12)
            float n2 = 0.f;
            for (int64_t j = 0; j < N; j++) n2 += kkb[h * N + j] * kkb[h * N + j];
            float inv = 1.f / std::max(sqrtf(n2), 1e-12f);
            for (int64_t j = 0; j < N; j++) kkb[h * N + j] *= inv;
        }
        for (int64_t c = 0; c < C; c++) {
            k[c] = k[c] * (1.f + (ab[c] - 1.f) * L->k_a[c]);
            wb[c] = expf(-0.606531f * sigmoidf(L->w0[c] + dec[c]));
        }
        if (L->first) {
            memcpy(v_first + b * C, v, C * sizeof(float));
        } else {
            const float* vm = lo + (3 * B + b) * C;
            for (int64_t c = 0; c < C; c++) v[c] = v[c] + (v_first[b * C + c] - v[c]) * sigmoidf(L->v0[c] + vm[c]);
        }
    };
    per_stream(B, mix_stream);
    all_heads(V7Heads{C, H, N, rr, ww, kv, vv, kk, aa, s, s_out, y}, B * H, wkv_heads_wide, wkv_heads_plain);
    per_stream(B, [&](int64_t b) {  // group norm per head, the bonus r k r_k v, the gate
        const float *r = rr + b * C, *k = kv + b * C, *v = vv + b * C, *g = lo + (2 * B + b) * C;
        float* yb = y + b * C;
        for (int64_t h = 0; h < H; h++) {
            float* o = yb + h * N;
            double mean = 0.0, var = 0.0, bonus = 0.0;
            for (int64_t j = 0; j < N; j++) mean += o[j];
            mean /= (double)N;
            for (int64_t j = 0; j < N; j++) var += ((double)o[j] - mean) * ((double)o[j] - mean);
            var /= (double)N;
            const float mu = (float)mean, inv = (float)(1.0 / sqrt(var + 64e-5));
            for (int64_t j = 0; j < N; j++) bonus += (double)r[h * N + j] * k[h * N + j] * L->r_k[h * N + j];
            for (int64_t j = 0; j < N; j++) {
                int64_t c = h * N + j;
                o[j] = ((o[j] - mu) * inv * L->lnx_w[c] + L->lnx_b[c] + (float)bonus * v[c]) * g[c];
            }
        }
    });
    product(L->o, y, B, xa, acts);  // (xa is free again)
    // channel mixing
    per_stream(B, [&](int64_t b) {
        float* xm = x_out + b * C;
        for (int64_t c = 0; c < C; c++) xm[c] = x[b * C + c] + xa[b * C + c];
        float* xn = y + b * C;
        layer_norm(xm, L->ln2_w, L->ln2_b, C, xn);
        for (int64_t c = 0; c < C; c++) {  // (ffn_x read before ffn_x_out is written: they may be one)
            mixed[b * C + c] = xn[c] + (ffn_x[b * C + c] - xn[c]) * L->ffn_xk[c];
            ffn_x_out[b * C + c] = xn[c];
        }
    });
    product(L->fk, mixed, B, big, acts);
    for (int64_t i = 0; i < B * F; i++) {
        float t = big[i] > 0.f ? big[i] : 0.f;
        big[i] = t * t;
    }
    product(L->fv, big, B, xa, acts);
    for (int64_t i = 0; i < B * C; i++) x_out[i] += xa[i];
    return 0;
}

// The layout of roost.engine.fused.V6Layer (a ctypes Structure: keep the two in step).
struct RnV6Layer {
    int64_t C, H, N, F, D, D2;  // width, heads, head size, FFN width, the mixes' rank, the decay's rank
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const float* maa_x;   // C
    const float* maa;     // 5 x C: w, k, v, r, g
    const float* maa_w2;  // 5 x D x C
    const float *decay, *u, *lnx_w, *lnx_b;  // C each (time_decay, time_faaaa as H x N)
    const float* ffn_mix;  // 2 x C: key, receptance
    Mat k, v, r, g, o, fk, fv, fr, mw1, dw1, dw2;  // mw1: 5D x C; dw1: D2 x C; dw2: C x D2
};

// RWKV-6: one token for each of B streams through one layer, as rn_v7_step (no v_first). The
// arithmetic is roost.engine.arch.v6's (the reference the tests compare this with).
RN_API int rn_v6_step(const RnV6Layer* L, int64_t B, const float* x, float* x_out, const float* att_x,
                      float* att_x_out, const float* s, float* s_out, const float* ffn_x, float* ffn_x_out) {
    const int64_t C = L->C, H = L->H, N = L->N, F = L->F, D = L->D, D2 = L->D2;
    if (H * N != C) return -1;
    thread_local std::vector<float> buf;
    thread_local Acts acts[5];
    // scratch: xn, dx, xxx (B x C each), h5 (B x 5D), mixed (5 B x C: w k v r g), k v r g (4 B x C),
    // dh (B x D2), dec, ww, y, rr (B x C each), big (B x F)
    buf.resize((size_t)(B * C * 16 + B * 5 * D + B * D2 + B * F));
    float *xn = buf.data(), *dx = xn + B * C, *xxx = dx + B * C;
    float* h5 = xxx + B * C;
    float* mixed = h5 + B * 5 * D;
    float *kv = mixed + 5 * B * C, *vv = kv + B * C, *rv = vv + B * C, *gv = rv + B * C;
    float* dh = gv + B * C;
    float *dec = dh + B * D2, *ww = dec + B * C, *y = ww + B * C, *rr = y + B * C;
    float* big = rr + B * C;

    per_stream(B, [&](int64_t b) {  // the shift and the mixes' low-rank input
        float *n = xn + b * C, *d = dx + b * C;
        layer_norm(x + b * C, L->ln1_w, L->ln1_b, C, n);
        for (int64_t c = 0; c < C; c++) {
            d[c] = att_x[b * C + c] - n[c];
            xxx[b * C + c] = n[c] + d[c] * L->maa_x[c];
            att_x_out[b * C + c] = n[c];
        }
    });
    product(L->mw1, xxx, B, h5, acts[0]);
    per_stream(B, [&](int64_t b) {  // tanh, the five second halves, the five mixes
        float* h = h5 + b * 5 * D;
        for (int64_t i = 0; i < 5 * D; i++) h[i] = tanhf(h[i]);
        const float *n = xn + b * C, *d = dx + b * C;
        for (int j = 0; j < 5; j++) {
            float* m = mixed + (j * B + b) * C;
            rank_up(h + j * D, L->maa_w2 + j * D * C, D, C, m);
            for (int64_t c = 0; c < C; c++) m[c] = n[c] + d[c] * (L->maa[j * C + c] + m[c]);
        }
    });
    {
        const Prod first[5] = {{&L->k, mixed + B * C, B, kv, &acts[0]},
                               {&L->v, mixed + 2 * B * C, B, vv, &acts[1]},
                               {&L->r, mixed + 3 * B * C, B, rv, &acts[2]},
                               {&L->g, mixed + 4 * B * C, B, gv, &acts[3]},
                               {&L->dw1, mixed, B, dh, &acts[4]}};
        products(first, 5);
    }
    for (int64_t i = 0; i < B * D2; i++) dh[i] = tanhf(dh[i]);
    product(L->dw2, dh, B, dec, acts[0]);
    per_stream(B, [&](int64_t b) {  // the decay, the gate's silu
        for (int64_t c = 0; c < C; c++) {
            ww[b * C + c] = expf(-expf(L->decay[c] + dec[b * C + c]));
            const float g = gv[b * C + c];
            gv[b * C + c] = g * sigmoidf(g);
        }
    });
    all_heads(V6Heads{C, H, N, rv, ww, kv, vv, L->u, s, s_out, y}, B * H, wkv6_heads_wide, wkv6_heads_plain);
    per_stream(B, [&](int64_t b) {  // group norm per head, the gate
        float* yb = y + b * C;
        const float* g = gv + b * C;
        for (int64_t h = 0; h < H; h++) {
            float* o = yb + h * N;
            double mean = 0.0, var = 0.0;
            for (int64_t j = 0; j < N; j++) mean += o[j];
            mean /= (double)N;
            for (int64_t j = 0; j < N; j++) var += ((double)o[j] - mean) * ((double)o[j] - mean);
            var /= (double)N;
            const float mu = (float)mean, inv = (float)(1.0 / sqrt(var + 64e-5));
            for (int64_t j = 0; j < N; j++) {
                int64_t c = h * N + j;
                o[j] = ((o[j] - mu) * inv * L->lnx_w[c] + L->lnx_b[c]) * g[c];
            }
        }
    });
    product(L->o, y, B, dec, acts[0]);  // (dec is free again)
    // channel mixing: x + (shifted - x) * mix for the key and the receptance
    per_stream(B, [&](int64_t b) {
        float* xm = x_out + b * C;
        for (int64_t c = 0; c < C; c++) xm[c] = x[b * C + c] + dec[b * C + c];
        float* n = xn + b * C;
        layer_norm(xm, L->ln2_w, L->ln2_b, C, n);
        for (int64_t c = 0; c < C; c++) {
            const float d = ffn_x[b * C + c] - n[c];
            ffn_x_out[b * C + c] = n[c];
            mixed[b * C + c] = n[c] + d * L->ffn_mix[c];
            mixed[(B + b) * C + c] = n[c] + d * L->ffn_mix[C + c];
        }
    });
    {
        const Prod ffn[2] = {{&L->fk, mixed, B, big, &acts[0]}, {&L->fr, mixed + B * C, B, rr, &acts[1]}};
        products(ffn, 2);
    }
    for (int64_t i = 0; i < B * F; i++) {
        float t = big[i] > 0.f ? big[i] : 0.f;
        big[i] = t * t;
    }
    product(L->fv, big, B, y, acts[0]);
    for (int64_t i = 0; i < B * C; i++) x_out[i] += y[i] * sigmoidf(rr[i]);
    return 0;
}

// ---- the C interface (roost.engine.native) -----------------------------------------------------------
RN_API int rn_abi(void) { return 4; }  // bumped when a signature below changes

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

// The layer step's products (rn_v7_step) on the OpenMP runtime's threads too (1), or on the
// pool's own (0, the default: see the thread pool).
RN_API void rn_share_products(int on) { g_share_products.store(on != 0); }

// Quantise `rows` x `cols` weights (dtype 0 float32, 1 bf16, 2 fp16) to q8 or q4 (see the top and
// block_q8 / block_q4); `q` gets rows x cols (q8) or rows x cols/2 (q4) bytes, `d` rows x cols/32
// fp16 scales, `m` (q4 only) rows x cols/32 fp16 offsets. The source is only read.
RN_API void rn_quantize(int bits, const void* src, int dtype, int64_t rows, int64_t cols, uint8_t* q, uint16_t* d,
                        uint16_t* m) {
    const int64_t nb = cols / QB;
    const bool vec = isa() == AVX2 || isa() == AVX512_VNNI;
    pool().run_shared([&](int part, int parts) {
        int64_t lo, hi;
        split(rows, part, parts, 1, &lo, &hi);
        std::vector<float> row((size_t)cols);
        for (int64_t r = lo; r < hi; r++) {
            if (vec) source_row_avx2(src, dtype, r, cols, row.data());
            else source_row(src, dtype, r, cols, row.data());
            float fit_d[8], fit_m[8];
            for (int64_t b = 0; b < nb; b++) {
                const float* v = row.data() + b * QB;
                if (bits == 8) {
                    int8_t* out = (int8_t*)q + r * cols + b * QB;
                    d[r * nb + b] = vec ? block_q8_avx2(v, out) : block_q8(v, out);
                } else if (vec && b % 8 == 0 && b + 8 <= nb) {  // 8 blocks' fits at once
                    q4_fit8_avx2(v, fit_d, fit_m);
                    for (int k = 0; k < 8; k++)
                        block_q4_fitted(v + k * QB, fit_d[k], fit_m[k], q + r * (cols / 2) + ((b + k) >> 1) * 32,
                                        (b + k) & 1, d + r * nb + b + k, m + r * nb + b + k, vec);
                    b += 7;
                } else if (bits == 4) {
                    block_q4(v, q + r * (cols / 2) + (b >> 1) * 32, b & 1, d + r * nb + b, m + r * nb + b, vec);
                }
            }
        }
    });
}

// y (M x N, float32) = x (M x K, float32) times the transposed q8 / q4 weight (N x K); `m`: the q4
// offsets (null for q8).
RN_API void rn_matmul(int bits, const uint8_t* q, const uint16_t* d, const uint16_t* m, int64_t N, int64_t K,
                      const float* x, int64_t M, float* y) {
    thread_local Acts acts;  // (the caller's: each calling thread has its own; product() takes it by reference)
    product(Mat{bits, q, d, m, N, K}, x, M, y, acts, /*shared=*/true);  // (called from layers that run in PyTorch)
}

// the float32 weight a q8 / q4 matrix stands for, rows [r0, r1) (prompt chunks multiply it in
// torch, a block of rows at a time; tests); `bf16`: written as bf16 (rounded to the nearest).
RN_API void rn_dequantize(int bits, const uint8_t* q, const uint16_t* d, const uint16_t* m, int64_t K, int64_t r0,
                          int64_t r1, void* out, int bf16) {
    const int64_t nb = K / QB;
    const bool vec = isa() == AVX2 || isa() == AVX512_VNNI;
    static const bool wide = has_avx512_bf16();
    const bool row_512 = isa() == AVX512_VNNI && wide;
    pool().run_shared([&](int part, int parts) {
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
