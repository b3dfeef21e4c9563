"""Shrink visual tokens: ``vistok.reduce(tokens, method, keep=K or ratio=r, **signals)``.

Every method is a module here that registers itself with :func:`vistok.reducers.core.register_method`;
:func:`list_methods` names them and :func:`method_info` says what each needs.
"""

from vistok.reducers.core import (
                                  Method,
                                  Reduction,
                                  TensorReduction,
                                  keep_count,
                                  list_methods,
                                  method_info,
                                  reduce,
                                  reduce_tensor,
                                  register_method,
)

__all__ = ["reduce", "list_methods", "method_info", "register_method", "Method", "Reduction", "keep_count", "reduce_tensor",
           "TensorReduction"]
