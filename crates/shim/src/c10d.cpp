// C ABI over c10d's TCPStore, PrefixStore and ProcessGroupGloo (ProcessGroupNCCL where built
// with LORAPLUS_DIST_NCCL). Only c10d's own classes are used here: every Gloo type that
// ProcessGroupGloo.hpp names sits behind a std::shared_ptr, and nothing below constructs,
// copies or calls into a Gloo object, so the (older) Gloo headers we compile against decide
// no layout and inline no code.
//
// Every function returns NULL on success or a malloc'd error message (free with
// lpd_free_error). C++ exceptions never cross into Rust.

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LORAPLUS_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "guard.h"

namespace {

using loraplus_shim::dup_message;
using loraplus_shim::guarded;

void wait_work(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  work->wait(std::chrono::milliseconds(timeout_ms));
}

std::vector<at::Tensor> tensor_vec(at::Tensor** tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);  // a reference-counted handle: no data copy
  }
  return out;
}

}  // namespace

struct lpd_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct lpd_pg {
  c10::intrusive_ptr<c10d::Backend> backend;
};

extern "C" {

void lpd_free_error(char* msg) { std::free(msg); }

int lpd_has_nccl() {
#ifdef LORAPLUS_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

char* lpd_store_new(const char* host, uint16_t port, int64_t world_size, int is_server,
                    int64_t timeout_ms, const char* prefix, lpd_store** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    if (world_size > 0) {
      opts.numWorkers = static_cast<size_t>(world_size);
    }
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    opts.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    *out = new lpd_store{std::move(store)};
  });
}

void lpd_store_free(lpd_store* store) { delete store; }

char* lpd_store_set(lpd_store* store, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] { store->store->set(key, std::vector<uint8_t>(value, value + len)); });
}

// Gets a key, waiting up to the store's timeout for it to be set. The value is malloc'd.
char* lpd_store_get(lpd_store* store, const char* key, uint8_t** value, size_t* len) {
  return guarded([&] {
    std::vector<uint8_t> v = store->store->get(key);
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (*value == nullptr) {
      throw std::runtime_error("out of memory");
    }
    if (!v.empty()) {
      std::memcpy(*value, v.data(), v.size());
    }
  });
}

void lpd_free_bytes(uint8_t* value) { std::free(value); }

char* lpd_store_add(lpd_store* store, const char* key, int64_t delta, int64_t* result) {
  return guarded([&] { *result = store->store->add(key, delta); });
}

char* lpd_store_check(lpd_store* store, const char* key, int* present) {
  return guarded([&] { *present = store->store->check({std::string(key)}) ? 1 : 0; });
}

// A Gloo group on a prefix of `store`. `hostname` (nullable) is the address this rank binds
// its Gloo device to; NULL lets c10d choose (GLOO_SOCKET_IFNAME, else the hostname's address,
// else loopback), as torch.distributed does.
char* lpd_pg_new_gloo(lpd_store* store, const char* prefix, int rank, int size,
                      int64_t timeout_ms, const char* hostname, int threads, lpd_pg** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> opts;
    if (hostname != nullptr) {
      opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
    } else {
      opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
    }
    if (threads > 0) {
      opts->threads = threads;
    }
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, rank, size, opts);
    *out = new lpd_pg{pg};
  });
}

char* lpd_pg_new_nccl(lpd_store* store, const char* prefix, int rank, int size,
                      int64_t timeout_ms, lpd_pg** out) {
#ifdef LORAPLUS_DIST_NCCL
  return guarded([&] {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, rank, size, opts);
    *out = new lpd_pg{pg};
  });
#else
  (void)store;
  (void)prefix;
  (void)rank;
  (void)size;
  (void)timeout_ms;
  (void)out;
  return dup_message("this build of loraplus-dist has no NCCL support");
#endif
}

void lpd_pg_free(lpd_pg* pg) {
  if (pg == nullptr) {
    return;
  }
  try {
    pg->backend->shutdown();
  } catch (...) {
    // Best effort: the destructor below still releases what it can.
  }
  delete pg;
}

// In-place sum (op 0) / max (op 1) / min (op 2) over all ranks, each tensor separately.
char* lpd_pg_allreduce(lpd_pg* pg, at::Tensor** tensors, size_t n, int op, int64_t timeout_ms) {
  return guarded([&] {
    c10d::AllreduceOptions opts;
    switch (op) {
      case 0: opts.reduceOp = c10d::ReduceOp::SUM; break;
      case 1: opts.reduceOp = c10d::ReduceOp::MAX; break;
      case 2: opts.reduceOp = c10d::ReduceOp::MIN; break;
      default: throw std::invalid_argument("unknown reduce op " + std::to_string(op));
    }
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      wait_work(pg->backend->allreduce(one, opts), timeout_ms);
    }
  });
}

// In-place sum of several tensors of one dtype in one collective.
char* lpd_pg_allreduce_coalesced(lpd_pg* pg, at::Tensor** tensors, size_t n,
                                 int64_t timeout_ms) {
  return guarded([&] {
    c10d::AllreduceCoalescedOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto v = tensor_vec(tensors, n);
    wait_work(pg->backend->allreduce_coalesced(v, opts), timeout_ms);
  });
}

char* lpd_pg_broadcast(lpd_pg* pg, at::Tensor* tensor, int root, int64_t timeout_ms) {
  return guarded([&] {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    std::vector<at::Tensor> v{*tensor};
    wait_work(pg->backend->broadcast(v, opts), timeout_ms);
  });
}

// outputs: `size` tensors shaped like input, filled with every rank's input in rank order.
char* lpd_pg_allgather(lpd_pg* pg, at::Tensor* input, at::Tensor** outputs, size_t n,
                       int64_t timeout_ms) {
  return guarded([&] {
    c10d::AllgatherOptions opts;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    std::vector<std::vector<at::Tensor>> outs{tensor_vec(outputs, n)};
    std::vector<at::Tensor> ins{*input};
    wait_work(pg->backend->allgather(outs, ins, opts), timeout_ms);
  });
}

char* lpd_pg_barrier(lpd_pg* pg, int64_t timeout_ms) {
  return guarded([&] {
    c10d::BarrierOptions opts;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    wait_work(pg->backend->barrier(opts), timeout_ms);
  });
}

}  // extern "C"
