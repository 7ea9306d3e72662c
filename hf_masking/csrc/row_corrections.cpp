// The sparse corrections of a mixed-mask batch, every mask's rows in one call (see row_kernel.py).
//
// y[T, out] holds x[T, in] times the shared weight W. Rows [starts[g], starts[g+1]) of x computed with
// mask g, whose masked-out weights are given by their flat positions o * in + i in the [out, in]
// orientation, grouped by output row (positions[g][crows[g][o] .. crows[g][o+1]) are row o's).
// This subtracts, in place, y[t, o] -= sum over row o's positions of W[o, i] * x[t, i].
// W is [out, in], or [in, out] where `transposed` (GPT-2's Conv1D). The weights at the positions are
// read from W itself (a mask costs 4 bytes per masked-out weight here, as in its decoded positions)
// unless `values` gives them in the positions' order: what a transposed W needs, since reading it
// along a row of the [out, in] orientation jumps a whole row of W per weight.
//
// Layout: each group's rows are transposed into a zero-padded [in, n] block, so one masked-out
// weight multiplies 16 (or 32) rows with one vector FMA. Work items are (group, output row) pairs in
// that order, so a group's block stays in cache while its rows are done; they are spread over torch's
// intra-op threads. (Output rows outside, groups inside, measured 1.4x slower: the blocks of all
// groups do not fit in L1.)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

struct Group {
  int64_t start, rows, padded, offset;
  const int32_t* crow;
  const int32_t* pos;
  const float* val;  // the weights at `pos`, in the same order; null: read them from W
};

struct Weight {
  const float* data;
  int64_t in, out;
  bool transposed;
  // The value at flat position p = o * in + i of the [out, in] orientation, and its input index i.
  inline float at(int64_t o, int32_t p) const {
    const int64_t i = p - o * in;
    return transposed ? data[i * out + o] : data[p];
  }
};

// acc[0..2*kLanes) (or [0..kLanes) when `two` is false) = sum_k val[k] * xt[col[k] * n + 0..]
template <bool two>
inline void accumulate(const Group& g, const Weight& w, const float* xt, int64_t o, float* acc) {
  const int32_t k0 = g.crow[o], k1 = g.crow[o + 1];
  const int64_t n = g.padded, row = o * w.in;
  Vec a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int32_t k = k0;
  for (; k + 1 < k1; k += 2) {  // two entries at a time: independent FMA chains
    const float u = g.val ? g.val[k] : w.at(o, g.pos[k]);
    const float v = g.val ? g.val[k + 1] : w.at(o, g.pos[k + 1]);
    const float* p = xt + (g.pos[k] - row) * n;
    const float* q = xt + (g.pos[k + 1] - row) * n;
    a0 += u * load(p);
    b0 += v * load(q);
    if (two) {
      a1 += u * load(p + kLanes);
      b1 += v * load(q + kLanes);
    }
  }
  if (k < k1) {
    const float u = g.val ? g.val[k] : w.at(o, g.pos[k]);
    const float* p = xt + (g.pos[k] - row) * n;
    a0 += u * load(p);
    if (two) a1 += u * load(p + kLanes);
  }
  a0 += b0;
  std::memcpy(acc, &a0, sizeof a0);
  if (two) {
    a1 += b1;
    std::memcpy(acc + kLanes, &a1, sizeof a1);
  }
}

}  // namespace

void subtract_row_corrections(torch::Tensor y, torch::Tensor x, torch::Tensor weight, bool transposed,
                              torch::Tensor starts, std::vector<torch::Tensor> crows,
                              std::vector<torch::Tensor> positions, std::vector<torch::Tensor> values) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.size(0) == x.size(0), "y and x must be [tokens, features]");
  TORCH_CHECK(y.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "y, x and the weight must be float32");
  TORCH_CHECK(y.is_contiguous() && x.is_contiguous() && weight.is_contiguous(), "y, x and the weight must be contiguous");
  TORCH_CHECK(y.device().is_cpu() && x.device().is_cpu() && weight.device().is_cpu(), "CPU tensors only");
  const int64_t tokens = x.size(0), in = x.size(1), out = y.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == (transposed ? in : out) && weight.size(1) == (transposed ? out : in),
              "the weight's shape does not match x and y");
  TORCH_CHECK(weight.numel() < (int64_t{1} << 31), "the weight is too large for int32 positions");
  const int64_t count = static_cast<int64_t>(crows.size());
  TORCH_CHECK(positions.size() == crows.size(), "one crow and one positions tensor per group");
  TORCH_CHECK(values.empty() || values.size() == crows.size(), "values: none, or one tensor per group");
  TORCH_CHECK(starts.scalar_type() == at::kLong && starts.dim() == 1 && starts.numel() == count + 1 &&
                  starts.is_contiguous(),
              "starts must be int64 with one more entry than groups");
  const int64_t* st = starts.data_ptr<int64_t>();
  TORCH_CHECK(st[0] >= 0 && st[count] <= tokens, "starts out of range");

  std::vector<Group> groups(count);
  int64_t total = 0;
  for (int64_t g = 0; g < count; ++g) {
    TORCH_CHECK(st[g + 1] >= st[g], "starts must not decrease");
    const auto& crow = crows[g];
    const auto& pos = positions[g];
    TORCH_CHECK(crow.scalar_type() == at::kInt && pos.scalar_type() == at::kInt, "crows and positions must be int32");
    TORCH_CHECK(crow.is_contiguous() && pos.is_contiguous() && crow.device().is_cpu() && pos.device().is_cpu(),
                "crows and positions must be contiguous CPU tensors");
    TORCH_CHECK(crow.numel() == out + 1, "a crow tensor must have out + 1 entries");
    const int32_t* c = crow.data_ptr<int32_t>();
    const int32_t* p = pos.data_ptr<int32_t>();
    TORCH_CHECK(c[0] == 0 && c[out] == pos.numel(), "row pointers do not match the positions");
    // Each position must lie in its row, [o * in, (o + 1) * in): row_kernel.row_positions builds them so
    // and checks it once per mask and layer; here, only the row pointers (cheap) are checked per call.
    for (int64_t o = 0; o < out; ++o) TORCH_CHECK(c[o] <= c[o + 1], "row pointers must not decrease");
    const int64_t rows = st[g + 1] - st[g];
    const int64_t padded = (rows + kLanes - 1) / kLanes * kLanes;
    const float* v = nullptr;
    if (!values.empty()) {
      const auto& val = values[g];
      TORCH_CHECK(val.scalar_type() == at::kFloat && val.is_contiguous() && val.device().is_cpu() &&
                      val.numel() == pos.numel(),
                  "values must be contiguous float32 CPU tensors, one per position");
      v = val.data_ptr<float>();
    }
    groups[g] = {st[g], rows, padded, total, c, p, v};
    total += padded * in;
  }
  const Weight w{weight.data_ptr<float>(), in, out, transposed};

  std::vector<float> transposed_rows(static_cast<size_t>(total));
  float* xt = transposed_rows.data();
  const float* X = x.data_ptr<float>();
  at::parallel_for(0, count * in, 64, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const Group& g = groups[item / in];
      const int64_t i = item % in;
      float* dst = xt + g.offset + i * g.padded;
      for (int64_t t = 0; t < g.rows; ++t) dst[t] = X[(g.start + t) * in + i];
      std::fill(dst + g.rows, dst + g.padded, 0.f);
    }
  });

  float* Y = y.data_ptr<float>();
  at::parallel_for(0, count * out, 16, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[2 * kLanes];
    for (int64_t item = begin; item < end; ++item) {
      const Group& g = groups[item / out];
      const int64_t o = item % out;
      float* column = Y + g.start * out + o;
      for (int64_t block = 0; block < g.padded; block += 2 * kLanes) {
        const float* xb = xt + g.offset + block;
        if (block + 2 * kLanes <= g.padded) {
          accumulate<true>(g, w, xb, o, acc);
        } else {
          accumulate<false>(g, w, xb, o, acc);
        }
        const int64_t used = std::min<int64_t>(2 * kLanes, g.rows - block);
        for (int64_t j = 0; j < used; ++j) column[(block + j) * out] -= acc[j];
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("subtract_row_corrections", &subtract_row_corrections,
        "y[t] -= x[t] (W * P_g)^T for the rows t of each group g, P_g its masked-out positions by output row");
}
