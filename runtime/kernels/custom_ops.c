/* The library's entry point: onnxruntime calls RegisterCustomOps when a session's options
 * register it, and gets the domain ai.e2edge with every e2edge CPU op. */
#include "ort_custom_op.h"

/* API version 17 (onnxruntime 1.17) is the first with KernelContext_ParallelFor. */
#define E2_ORT_API_VERSION 17

OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
  const OrtApi *api = base->GetApi(E2_ORT_API_VERSION);
  if (!api) { /* an onnxruntime older than 1.17: say so through the first API version's table */
    const OrtApi *first = base->GetApi(1);
    return first ? e2_fail(first, E2_ORT_FAIL, "e2edge's CPU kernels need onnxruntime >= 1.17") : NULL;
  }
  OrtCustomOpDomain *domain = NULL; /* lives as long as the process: sessions refer to it */
  CustomOpDomainAddFn add = (CustomOpDomainAddFn)API_FN(api, API_CustomOpDomain_Add);
  E2_TRY(((CreateCustomOpDomainFn)API_FN(api, API_CreateCustomOpDomain))("ai.e2edge", &domain));
  E2_TRY(add(domain, e2_int4_op()));
  E2_TRY(add(domain, e2_fp32_op()));
  return ((AddCustomOpDomainFn)API_FN(api, API_AddCustomOpDomain))(options, domain);
}
