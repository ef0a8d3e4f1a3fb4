"""Layered sum-product LDPC syndrome decoder (C); see decoder.decode_from."""

import numpy as np
import numpy.typing as npt

def decode(
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    table: npt.NDArray[np.float32],
    shift: int,
    offset: int,
    settled: float,
    max_iterations: int,
    stall: int,
    messages: npt.NDArray[np.float32],
    hard: npt.NDArray[np.uint8],
    /,
) -> tuple[bool, int]: ...
