// Typed handles of partdist's ops, looked up once (the C++ autograd of the families
// calls its forward and backward ops through the dispatcher with them).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

// static const c10::TypedOperatorHandle<Sig>& var(): the handle of partdist::name.
#define PARTDIST_OP(var, name, Sig)                                                         \
  static const c10::TypedOperatorHandle<Sig>& var() {                                       \
    static const auto h =                                                                   \
        c10::Dispatcher::singleton().findSchemaOrThrow("partdist::" name, "").typed<Sig>(); \
    return h;                                                                               \
  }
