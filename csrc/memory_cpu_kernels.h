// The C++ CPU kernels of the memory ops. The per-query and per-tile math is memory_math.h, shared
// with the CUDA kernels; this file only schedules it: queries in parallel, tiles of kQueryTile
// queries as the unit of every reduction (fixed, so results do not depend on the thread count).
//
// Compiled twice, into namespace mgid::MGID_CPU_ISA_NS: memory_cpu.cpp (the baseline x86-64 / host
// ISA) and memory_cpu_avx2.cpp (the same code with AVX2 enabled); memory_cpu.cpp picks one at run
// time (cpu_isa.h). Neither enables FMA, so both compute the same floats, bit for bit.
#ifndef MGID_CPU_ISA_NS
#error "define MGID_CPU_ISA_NS before including memory_cpu_kernels.h"
#endif

namespace mgid {
namespace MGID_CPU_ISA_NS {
namespace {

template <int L>
using Lanes = std::integral_constant<int, L>;

// Calls body(Lanes<kCpuLanes>{}, n) for groups of kCpuLanes neighbouring pixels of one image and
// body(Lanes<1>{}, n) for the queries left over, covering [begin, end) in order.
template <typename Body>
void for_query_groups(int64_t begin, int64_t end, int64_t hw, const Body& body) {
  int64_t n = begin;
  while (n < end) {
    if (n + kCpuLanes <= end && n % hw + kCpuLanes <= hw) {
      body(Lanes<kCpuLanes>{}, n);
      n += kCpuLanes;
    } else {
      body(Lanes<1>{}, n);
      n += 1;
    }
  }
}

// The update's partials of tile t, from its K queries' scores (k*M + m), assignments and 1/||q||
// (``weight``, overwritten by the update weights): part_max row t and part_sum rows (t, m) (zeroed on
// entry). ``tile_queries``: the tile's queries transposed, tile_queries[k*C + c] = query k's channel c
// (as A), see transpose_query_lanes.
template <typename A>
void update_tile_partials(int64_t t, int K, const A* tile_queries, int64_t C, int M, bool max_over_assigned,
                          const A* scores, const int* assign, A* weight, A* part_max, A* part_sum) {
  for (int m = 0; m < M; ++m) part_max[t * M + m] = tile_item_max(m, K, scores, assign, M, max_over_assigned);
  for (int k = 0; k < K; ++k)
    weight[k] = tile_query_weight(scores[k * M + assign[k]], part_max[t * M + assign[k]], weight[k]);
  // Same terms, same ascending-k order per (m, c) as tile_item_channel_sum on the GPU; the loops are
  // turned around (k outer, c inner) so that each query adds to its item's row with vector
  // instructions, from the transposed copy of the tile.
  for (int k = 0; k < K; ++k) {
    A* sum_row = part_sum + (t * M + assign[k]) * C;
    const A* query_k = tile_queries + k * C;
    const A weight_k = weight[k];
    for (int64_t c = 0; c < C; ++c) sum_row[c] += weight_k * query_k[c];
  }
}

// Copies of a group's channel rows, L values each, between the NCHW tensors (row stride ``stride``)
// and a contiguous (C, L) buffer. The NCHW rows of one group are HW floats apart (4 KiB at 32x32), so
// they all fall in the same few L1 sets and evict each other between the passes over them; the
// kernels copy each group once into the buffer and run the lanes math on it (stride L): the same
// values, so the same floats.
template <int L, typename T>
void gather_lanes(const T* src, int64_t stride, int64_t C, T* dst) {
  for (int64_t c = 0; c < C; ++c)
    for (int l = 0; l < L; ++l) dst[c * L + l] = src[c * stride + l];
}
template <int L, typename T>
void scatter_lanes(const T* src, int64_t C, T* dst, int64_t stride) {
  for (int64_t c = 0; c < C; ++c)
    for (int l = 0; l < L; ++l) dst[c * stride + l] = src[c * L + l];
}

// The L queries at ``q`` (channel stride ``stride``) into rows k0.. of the tile's transposed copy
// ``tile_queries``.
template <int L, typename T, typename A>
void transpose_query_lanes(const T* q, int64_t stride, int64_t C, int k0, A* tile_queries) {
  for (int l = 0; l < L; ++l) {
    A* row = tile_queries + (static_cast<int64_t>(k0) + l) * C;
    const T* query_l = q + l;
    for (int64_t c = 0; c < C; ++c) row[c] = static_cast<A>(query_l[c * stride]);
  }
}

// col_max (M,) and sum (M, C) from the T tiles' partials, in tile order.
template <typename A>
void combine_update_partials(int64_t T, int M, int64_t C, const A* part_max, const A* part_sum, A* col_max, A* sum) {
  at::parallel_for(0, M, 1, [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) {
      const A global_max = combine_item_max(static_cast<int>(m), T, part_max, M);
      col_max[m] = global_max;
      // combine_item_channel_sum for every c at once: each tile's scale once (not once per
      // channel), the same terms added in the same tile order, a channel row at a time.
      A* sum_row = sum + m * C;
      for (int64_t c = 0; c < C; ++c) sum_row[c] = 0;
      for (int64_t t = 0; t < T; ++t) {
        const A tile_max = part_max[t * M + m];
        if (!(tile_max > neg_inf<A>())) continue;  // no query of this tile counts for item m
        const A scale = combine_tile_scale(tile_max, global_max);
        const A* part_row = part_sum + (t * M + m) * C;
        for (int64_t c = 0; c < C; ++c) sum_row[c] += part_row[c] * scale;
      }
    }
  });
}

// (compactness, separateness) from the T tiles' (sum of compactness terms, sum of hinges), summed
// in tile order; two separate 0-dim outputs (they must not alias: the schema says so), in ``dtype``.
std::tuple<at::Tensor, at::Tensor> combine_loss_partials(const at::Tensor& parts, const MemoryInputs& in,
                                                         at::ScalarType dtype) {
  const int64_t T = parts.size(0);
  at::Tensor compact, separate;
  AT_DISPATCH_FLOATING_TYPES(parts.scalar_type(), "mgid::memory_losses_combine(cpu)", [&] {
    const scalar_t* parts_data = parts.data_ptr<scalar_t>();
    scalar_t compact_sum = 0, triplet_sum = 0;
    for (int64_t t = 0; t < T; ++t) {
      compact_sum += parts_data[2 * t];
      triplet_sum += parts_data[2 * t + 1];
    }
    compact = at::scalar_tensor(compact_sum / static_cast<scalar_t>(in.N * in.C), parts.options());
    separate = at::scalar_tensor(triplet_sum / static_cast<scalar_t>(in.N), parts.options());
  });
  return {compact.to(dtype), separate.to(dtype)};
}

}  // namespace

at::Tensor memory_read_cpu(const at::Tensor& query, const at::Tensor& items, bool /*grad_through_weights*/) {
  const MemoryInputs in = prepare_memory_inputs(query, items);
  at::Tensor out = at::empty({in.B, 2 * in.C, in.H, in.W}, in.query.options());
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_read(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.N, kQueryTile, [&](int64_t begin, int64_t end) {
      A scores[kMaxItems * kCpuLanes];
      for_query_groups(begin, end, in.HW, [&](auto lanes, int64_t n) {
        constexpr int L = decltype(lanes)::value;
        const int64_t image = n / in.HW, pixel = n % in.HW;
        scalar_t* out_base = out_data + image * 2 * in.C * in.HW + pixel;
        read_forward_lanes<L>(q + query_offset(n, in.HW, in.C), out_base, out_base + in.C * in.HW, in.HW, in.C, items_t,
                              in.M, scores);
      });
    });
  });
  return out;
}

at::Tensor memory_read_backward_cpu(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& items,
                                    bool grad_through_weights) {
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const at::Tensor grad_checked = checked_read_grad(grad_out, in);
  at::Tensor dq = at::empty_like(in.query);
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_read_backward(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const scalar_t* grad_data = grad_checked.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    scalar_t* dq_data = dq.data_ptr<scalar_t>();
    at::parallel_for(0, in.N, kQueryTile, [&](int64_t begin, int64_t end) {
      A weights[kMaxItems * kCpuLanes], dscores[kMaxItems * kCpuLanes];
      for_query_groups(begin, end, in.HW, [&](auto lanes, int64_t n) {
        constexpr int L = decltype(lanes)::value;
        const int64_t image = n / in.HW, pixel = n % in.HW;
        const scalar_t* grad_base = grad_data + image * 2 * in.C * in.HW + pixel;
        const int64_t offset = query_offset(n, in.HW, in.C);
        read_backward_lanes<L>(q + offset, grad_base, grad_base + in.C * in.HW, dq_data + offset, in.HW, in.C, items_t,
                               in.M, grad_through_weights, weights, dscores);
      });
    });
  });
  return dq;
}

// Per-item column max (M,) and weighted sum (M, C) of the MNAD update, in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> memory_update_stats_cpu(const at::Tensor& query, const at::Tensor& items,
                                                           bool max_over_assigned) {
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const int64_t T = num_query_tiles(in.N);
  const auto acc_opts = in.items_t.options();
  at::Tensor part_max = at::empty({T, in.M}, acc_opts);
  at::Tensor part_sum = at::zeros({T, in.M, in.C}, acc_opts);
  at::Tensor col_max = at::empty({in.M}, acc_opts);
  at::Tensor sum = at::empty({in.M, in.C}, acc_opts);
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_update_stats(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    A* part_max_data = part_max.data_ptr<A>();
    A* part_sum_data = part_sum.data_ptr<A>();
    const int M = in.M;
    const int64_t C = in.C, HW = in.HW;
    at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
      std::vector<A> scores(static_cast<size_t>(kQueryTile) * M);
      std::vector<A> weight(kQueryTile);
      std::vector<int> assign(kQueryTile);
      std::vector<A> lane_scores(static_cast<size_t>(kCpuLanes) * M);
      std::vector<A> tile_queries(static_cast<size_t>(kQueryTile) * C);
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t n0 = t * kQueryTile;
        const int K = static_cast<int>(std::min<int64_t>(kQueryTile, in.N - n0));
        // Scores in lanes, then stored per query (k*M + m) as the GPU block keeps them.
        for_query_groups(n0, n0 + K, HW, [&](auto lanes, int64_t n) {
          constexpr int L = decltype(lanes)::value;
          const int k0 = static_cast<int>(n - n0);
          A norm[L];
          const scalar_t* query_n = q + query_offset(n, HW, C);
          lanes_inv_norm<L>(query_n, HW, C, norm, &weight[k0]);
          lanes_scores<L>(query_n, HW, C, items_t, M, &weight[k0], lane_scores.data());
          A best[L];
          lanes_argmax<L>(lane_scores.data(), M, best, &assign[k0]);
          for (int l = 0; l < L; ++l)
            for (int m = 0; m < M; ++m) scores[(k0 + l) * M + m] = lane_scores[m * L + l];
          transpose_query_lanes<L>(query_n, HW, C, k0, tile_queries.data());
        });
        update_tile_partials(t, K, tile_queries.data(), C, M, max_over_assigned, scores.data(), assign.data(),
                             weight.data(), part_max_data, part_sum_data);
      }
    });
    combine_update_partials(T, M, C, part_max_data, part_sum_data, col_max.data_ptr<A>(), sum.data_ptr<A>());
  });
  return {col_max, sum};
}

at::Tensor memory_update_cpu(const at::Tensor& query, const at::Tensor& items, bool max_over_assigned) {
  auto stats = memory_update_stats_cpu(query, items, max_over_assigned);
  const at::Tensor& sum = std::get<1>(stats);
  const at::Tensor items_acc = items.detach().to(sum.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(items_acc);
  AT_DISPATCH_FLOATING_TYPES(sum.scalar_type(), "mgid::memory_update(cpu)", [&] {
    const int64_t M = items_acc.size(0), C = items_acc.size(1);
    const scalar_t* items_data = items_acc.data_ptr<scalar_t>();
    const scalar_t* sum_data = sum.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    for (int64_t m = 0; m < M; ++m) {
      const scalar_t inv = updated_item_inv_norm(static_cast<int>(m), C, items_data, sum_data);
      for (int64_t c = 0; c < C; ++c) out_data[m * C + c] = (items_data[m * C + c] + sum_data[m * C + c]) * inv;
    }
  });
  return out.to(items.scalar_type());
}

// (compactness, separateness), 0-dim, in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> memory_losses_cpu(const at::Tensor& query, const at::Tensor& items) {
  check_loss_items(items);
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const int64_t T = num_query_tiles(in.N);
  const auto acc_opts = in.items_t.options();
  at::Tensor parts = at::empty({T, 2}, acc_opts);
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_losses(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    A* parts_data = parts.data_ptr<A>();
    at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
      A scores[kMaxItems * kCpuLanes];
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t n0 = t * kQueryTile, n1 = std::min<int64_t>(n0 + kQueryTile, in.N);
        A compact_sum = 0, triplet_sum = 0;  // summed in query order, as the GPU block's single owner does
        for_query_groups(n0, n1, in.HW, [&](auto lanes, int64_t n) {
          constexpr int L = decltype(lanes)::value;
          const scalar_t* query_n = q + query_offset(n, in.HW, in.C);
          A norm[L], inv[L];
          lanes_inv_norm<L>(query_n, in.HW, in.C, norm, inv);
          LossLanes<L, A> terms;
          loss_terms_lanes<L>(query_n, in.HW, in.C, items_t, in.M, inv, scores, &terms);
          for (int l = 0; l < L; ++l) {
            compact_sum += terms.compact[l];
            triplet_sum += terms.triplet[l];
          }
        });
        parts_data[2 * t] = compact_sum;
        parts_data[2 * t + 1] = triplet_sum;
      }
    });
  });
  return combine_loss_partials(parts, in, query.scalar_type());
}

at::Tensor memory_losses_backward_cpu(const at::Tensor& grad_compact, const at::Tensor& grad_separate,
                                      const at::Tensor& query, const at::Tensor& items) {
  const MemoryInputs in = prepare_memory_inputs(query, items);
  at::Tensor dq = at::empty_like(in.query);
  const at::Tensor loss_grads = stacked_loss_grads(grad_compact, grad_separate, in);
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_losses_backward(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    A grad_compact_term, grad_separate_term;
    mean_loss_grads(loss_grads.data_ptr<A>(), in.N, in.C, &grad_compact_term, &grad_separate_term);
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    scalar_t* dq_data = dq.data_ptr<scalar_t>();
    at::parallel_for(0, in.N, kQueryTile, [&](int64_t begin, int64_t end) {
      A scores[kMaxItems * kCpuLanes];
      for_query_groups(begin, end, in.HW, [&](auto lanes, int64_t n) {
        constexpr int L = decltype(lanes)::value;
        const int64_t offset = query_offset(n, in.HW, in.C);
        losses_backward_lanes<L>(q + offset, dq_data + offset, in.HW, in.C, items_t, in.M, grad_compact_term,
                                 grad_separate_term, scores);
      });
    });
  });
  return dq;
}

// The memory step: read, losses and the update's statistics from one pass over the queries. Each
// output equals its separate op's bit for bit (the same math in the same order, from the same
// scores). Returns (read, compactness, separateness, col_max, weighted_sum); an output not asked
// for is 0 (losses) or -inf / 0 (statistics).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> memory_step_cpu(
    const at::Tensor& query, const at::Tensor& items, bool /*grad_through_weights*/, bool max_over_assigned,
    bool with_losses, bool with_update) {
  if (with_losses) check_loss_items(items);
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const int64_t T = num_query_tiles(in.N);
  const auto acc_opts = in.items_t.options();
  at::Tensor out = at::empty({in.B, 2 * in.C, in.H, in.W}, in.query.options());
  at::Tensor parts = at::zeros({T, 2}, acc_opts);
  at::Tensor part_max = at::empty({with_update ? T : 0, in.M}, acc_opts);
  at::Tensor part_sum = at::zeros({with_update ? T : 0, in.M, in.C}, acc_opts);
  at::Tensor col_max = at::full({in.M}, -std::numeric_limits<double>::infinity(), acc_opts);
  at::Tensor sum = at::zeros({in.M, in.C}, acc_opts);
  at::Tensor top = at::empty({with_losses ? in.N : 0, 2}, in.query.options().dtype(at::kInt));
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_step(cpu)", [&] {
    int32_t* top_data = top.data_ptr<int32_t>();
    using A = at::opmath_type<scalar_t>;
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    A* parts_data = parts.data_ptr<A>();
    A* part_max_data = part_max.data_ptr<A>();
    A* part_sum_data = part_sum.data_ptr<A>();
    const int M = in.M;
    const int64_t C = in.C, HW = in.HW;
    at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
      std::vector<A> scores(with_update ? static_cast<size_t>(kQueryTile) * M : 0);
      std::vector<A> tile_queries(with_update ? static_cast<size_t>(kQueryTile) * C : 0);
      std::vector<scalar_t> query_buf(static_cast<size_t>(kCpuLanes) * C),
          out_buf(static_cast<size_t>(2 * kCpuLanes) * C);
      std::vector<A> weight(kQueryTile);
      std::vector<int> assign(kQueryTile);
      // On the stack, as in memory_read/memory_losses: the compiler then knows it aliases nothing
      // and vectorises the lanes loops (a heap buffer measured 2x slower).
      A lane_scores[kMaxItems * kCpuLanes];
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t n0 = t * kQueryTile;
        const int K = static_cast<int>(std::min<int64_t>(kQueryTile, in.N - n0));
        A compact_sum = 0, triplet_sum = 0;  // summed in query order, as memory_losses
        for_query_groups(n0, n0 + K, HW, [&](auto lanes, int64_t n) {
          constexpr int L = decltype(lanes)::value;
          const int k0 = static_cast<int>(n - n0);
          // The group's queries and outputs in contiguous (C, L) buffers (gather_lanes): stride L.
          gather_lanes<L>(q + query_offset(n, HW, C), HW, C, query_buf.data());
          const scalar_t* query_n = query_buf.data();
          constexpr int64_t buf_stride = L;
          A norm[L], inv[L];
          lanes_inv_norm<L>(query_n, buf_stride, C, norm, inv);
          lanes_scores<L>(query_n, buf_stride, C, items_t, M, inv, lane_scores);
          int top1[L];
          if (with_losses) {
            LossLanes<L, A> terms;
            loss_terms_from_scores_lanes<L>(query_n, buf_stride, C, items_t, M, inv, lane_scores, &terms);
            for (int l = 0; l < L; ++l) top1[l] = terms.top1[l];
            for (int l = 0; l < L; ++l) {
              compact_sum += terms.compact[l];
              triplet_sum += terms.triplet[l];
              top_data[2 * (n + l)] = terms.top1[l];
              top_data[2 * (n + l) + 1] = terms.top2[l];
            }
          }
          if (with_update) {
            if (with_losses) {  // the losses' top-1 is the assignment
              for (int l = 0; l < L; ++l) assign[k0 + l] = top1[l];
            } else {
              A best[L];
              lanes_argmax<L>(lane_scores, M, best, &assign[k0]);
            }
            for (int l = 0; l < L; ++l) {
              weight[k0 + l] = inv[l];
              for (int m = 0; m < M; ++m) scores[(k0 + l) * M + m] = lane_scores[m * L + l];
            }
            transpose_query_lanes<L>(query_n, buf_stride, C, k0, tile_queries.data());
          }
          const int64_t image = n / HW, pixel = n % HW;
          scalar_t* out_base = out_data + image * 2 * C * HW + pixel;
          read_from_scores_lanes<L>(query_n, out_buf.data(), out_buf.data() + C * L, buf_stride, C, items_t, M, inv,
                                    lane_scores);  // overwrites lane_scores
          scatter_lanes<L>(out_buf.data(), C, out_base, HW);
          scatter_lanes<L>(out_buf.data() + C * L, C, out_base + C * HW, HW);
        });
        parts_data[2 * t] = compact_sum;
        parts_data[2 * t + 1] = triplet_sum;
        if (with_update)
          update_tile_partials(t, K, tile_queries.data(), C, M, max_over_assigned, scores.data(), assign.data(),
                               weight.data(), part_max_data, part_sum_data);
      }
    });
    if (with_update)
      combine_update_partials(T, M, C, part_max_data, part_sum_data, col_max.data_ptr<A>(), sum.data_ptr<A>());
  });
  auto [compact, separate] = combine_loss_partials(parts, in, query.scalar_type());
  return {out, compact, separate, col_max, sum, top};
}

// Gradient on the query of the step's read and (with ``with_losses``) losses, in one pass.
at::Tensor memory_step_backward_cpu(const at::Tensor& grad_read, const at::Tensor& grad_compact,
                                    const at::Tensor& grad_separate, const at::Tensor& query, const at::Tensor& items,
                                    const at::Tensor& top, bool grad_through_weights, bool with_losses) {
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const at::Tensor top_contiguous = checked_step_top(top, in, with_losses);
  const at::Tensor grad_checked = checked_read_grad(grad_read, in);
  at::Tensor dq = at::empty_like(in.query);
  const at::Tensor loss_grads = stacked_loss_grads(grad_compact, grad_separate, in);
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_step_backward(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    A grad_compact_term, grad_separate_term;
    mean_loss_grads(loss_grads.data_ptr<A>(), in.N, in.C, &grad_compact_term, &grad_separate_term);
    const scalar_t* q = in.query.data_ptr<scalar_t>();
    const scalar_t* grad_data = grad_checked.data_ptr<scalar_t>();
    const A* items_t = in.items_t.data_ptr<A>();
    scalar_t* dq_data = dq.data_ptr<scalar_t>();
    const int32_t* top_data = top_contiguous.data_ptr<int32_t>();
    at::parallel_for(0, in.N, kQueryTile, [&](int64_t begin, int64_t end) {
      A scores[kMaxItems * kCpuLanes], weights[kMaxItems * kCpuLanes], dscores[kMaxItems * kCpuLanes];
      std::vector<A> grad_buf(static_cast<size_t>(3 * in.C) * kCpuLanes);  // step_backward_lanes' grad_buf
      const size_t group_size = static_cast<size_t>(in.C) * kCpuLanes;
      // The group's rows in contiguous (C, L) buffers, as memory_step's forward (gather_lanes).
      std::vector<scalar_t> query_buf(group_size), grad_qhat_buf(group_size),
          grad_read_buf(grad_through_weights ? group_size : 0), dq_buf(group_size);
      for_query_groups(begin, end, in.HW, [&](auto lanes, int64_t n) {
        constexpr int L = decltype(lanes)::value;
        constexpr int64_t buf_stride = L;
        const int64_t image = n / in.HW, pixel = n % in.HW;
        const scalar_t* grad_base = grad_data + image * 2 * in.C * in.HW + pixel;
        const int64_t offset = query_offset(n, in.HW, in.C);
        gather_lanes<L>(q + offset, in.HW, in.C, query_buf.data());
        gather_lanes<L>(grad_base, in.HW, in.C, grad_qhat_buf.data());
        // Without grad_through_weights the read half's gradient is never read.
        if (grad_through_weights) gather_lanes<L>(grad_base + in.C * in.HW, in.HW, in.C, grad_read_buf.data());
        const scalar_t* grad_read_lanes = grad_through_weights ? grad_read_buf.data() : grad_qhat_buf.data();
        step_backward_lanes<L>(query_buf.data(), grad_qhat_buf.data(), grad_read_lanes, dq_buf.data(), buf_stride, in.C,
                               items_t, in.M, grad_through_weights, with_losses, grad_compact_term, grad_separate_term,
                               with_losses ? top_data + 2 * n : nullptr, scores, weights, dscores, grad_buf.data());
        scatter_lanes<L>(dq_buf.data(), in.C, dq_data + offset, in.HW);
      });
    });
  });
  return dq;
}

}  // namespace MGID_CPU_ISA_NS
}  // namespace mgid
